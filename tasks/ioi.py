"""Indirect-object identification (Wang et al. 2022; Tigges et al. 2024 over training).

"When Mary and John went to the store , John gave a drink to" -> "Mary".

Patching pairs (``ioi``) corrupt the second mention of the subject (S2), keeping every token
position: ``flip`` names the indirect object there instead ("…, Mary gave a drink to" ->
"John", the other name), ``abc`` a third name ("…, Tom gave a drink to"; its source answer is
the base prompt's subject, so the metric measures the shift from IO to S as in Wang et al.).
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, PromptPair, PromptPairs, TaskError, TaskInfo, check_choice, generate_aligned, register
from .words import NAMES, OBJECTS, PLACES

IOI_TEMPLATES = (
    "When {A} and {B} went to the {place} , {B} gave a {object} to",
    "Then , {A} and {B} had a long talk . {B} handed the {object} to",
    "After {A} and {B} met at the {place} , {B} gave the {object} to",
)


def sample_ioi(rng: random.Random, template: str) -> Example:
    a, b = rng.sample(NAMES, 2)
    prompt = template.format(A=a, B=b, place=rng.choice(PLACES), object=rng.choice(OBJECTS))
    return Example(prompt, a)


def ioi_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, corruption: str | None = None,
                 n_prompts: int | None = None) -> list[Example]:
    """``n`` IOI prompts, templates used in turn; the answer is the indirect object."""
    if corruption is not None:
        raise TaskError("corruption applies to patching pairs (reason-interp patch --task ioi)")
    rng = random.Random(seed)
    return [sample_ioi(rng, IOI_TEMPLATES[i % len(IOI_TEMPLATES)]) for i in range(n)]


CORRUPTIONS = ("flip", "abc")


def ioi(n_prompts: int = 64, corruption: str = "flip", seed: int = 0, tokenizer: Any | None = None) -> PromptPairs:
    """IOI prompt pairs: the base is a clean IOI prompt, the source corrupts S2 (see module doc)."""
    check_choice("corruption", corruption, CORRUPTIONS)

    def sample(rng: random.Random, i: int) -> PromptPair:
        template = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        a, b, c = rng.sample(NAMES, 3)
        fill = dict(place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        base = template.format(A=a, B=b, **fill)
        s2 = a if corruption == "flip" else c
        head, tail = template.rsplit("{B}", 1)  # the last {B} is S2
        source = (head + s2 + tail).format(A=a, B=b, **fill)
        return PromptPair(base, source, a, b)

    pairs = generate_aligned(sample, n_prompts, seed, tokenizer, "names must be single tokens for this tokenizer")
    return PromptPairs("ioi", dict(n_prompts=n_prompts, corruption=corruption, seed=seed), pairs)


register(TaskInfo("ioi", "indirect-object identification (Wang et al. 2022)", ioi, ioi_examples,
                  {"n_prompts": (64, "number of pairs (patch)"),
                   "corruption": ("flip", "patch pairs: flip (S2 -> IO) | abc (S2 -> a third name)"),
                   "seed": (0, "random seed")}))
