"""Indirect-object identification (Wang et al. 2022; Tigges et al. 2024 over training).

"Then , Mary and John went to the store . John gave a drink to" -> "Mary".

Templates are Wang et al.'s fifteen (as Tigges et al. use them through the IOI dataset of
``path_patching``; listed in circuits-over-time's ``circuit_sketches/ioi_dataset.py``, whose file index
gives no line numbers), in the embedded vocabulary. ``order`` puts the indirect object (IO)
first ("ABBA": "When Mary and John …, John gave … to" -> Mary) or the subject first
("BABA": "When John and Mary …, John gave … to" -> Mary); "mixed" (Tigges et al.'s
``prompt_type="mixed"``) alternates the two. The answer is the name that occurs once either
way, but which position it holds is not fixed, so a model that always names the first (or
second) name fails half of the mixed prompts. Departures: Tigges et al.'s "mixed" draws 70
prompts from the first seven templates of each order, shuffled; here prompt i uses template
i mod 15 and the orders alternate. Places and objects are the embedded vocabulary's.

Patching pairs (``ioi``) corrupt the second mention of the subject (S2), keeping every token
position: ``flip`` names the indirect object there instead ("…, Mary gave a drink to" ->
"John", the other name), ``abc`` a third name ("…, Tom gave a drink to"; its source answer is
the base prompt's subject, so the metric measures the shift from IO to S as in Wang et al.).
``swap`` instead trades the places of IO and S1 and keeps S2 ("When John and Mary …, John
gave … to" for "When Mary and John …, John gave … to"): circuits-over-time's
``token_same_pos_oppo`` (ABB->BAB, BAB->ABB), the corruption whose path-patching effect marks
S-inhibition heads (``utils/component_evaluation.py``); the source answer is the subject, as
``abc``.
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, PromptPair, PromptPairs, TaskError, TaskInfo, check_choice, generate_aligned, register
from .words import NAMES, OBJECTS, PLACES

# {A} = IO, {B} = S; "{first} and {second}" is where ABBA and BABA differ.
IOI_TEMPLATES = (
    "Then , {first} and {second} went to the {place} . {B} gave a {object} to",
    "Then , {first} and {second} had a lot of fun at the {place} . {B} gave a {object} to",
    "Then , {first} and {second} were working at the {place} . {B} decided to give a {object} to",
    "Then , {first} and {second} were thinking about going to the {place} . {B} wanted to give a {object} to",
    "Then , {first} and {second} had a long argument , and afterwards {B} said to",
    "After {first} and {second} went to the {place} , {B} gave a {object} to",
    "When {first} and {second} got a {object} at the {place} , {B} decided to give it to",
    "When {first} and {second} got a {object} at the {place} , {B} decided to give the {object} to",
    "While {first} and {second} were working at the {place} , {B} gave a {object} to",
    "While {first} and {second} were commuting to the {place} , {B} gave a {object} to",
    "After the lunch , {first} and {second} went to the {place} . {B} gave a {object} to",
    "Afterwards , {first} and {second} went to the {place} . {B} gave a {object} to",
    "Then , {first} and {second} had a long argument . Afterwards {B} said to",
    "The {place} {first} and {second} went to had a {object} . {B} gave it to",
    "Friends {first} and {second} found a {object} at the {place} . {B} gave it to",
)
ORDERS = ("mixed", "ABBA", "BABA")


def fill(template: str, io: str, s: str, order: str, **words: str) -> str:
    """``template`` with IO ``io`` and subject ``s``; ``order`` "ABBA" names IO first."""
    first, second = (io, s) if order == "ABBA" else (s, io)
    return template.format(first=first, second=second, A=io, B=s, **words)


def _order(order: str, i: int) -> str:
    return order if order != "mixed" else ORDERS[1 + i % 2]


def sample_ioi(rng: random.Random, template: str, order: str = "ABBA") -> Example:
    a, b = rng.sample(NAMES, 2)
    # the subject is the wrong answer Tigges et al.'s logit difference subtracts
    return Example(fill(template, a, b, order, place=rng.choice(PLACES), object=rng.choice(OBJECTS)), a,
                   distractors=(b,))


def ioi_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, corruption: str | None = None,
                 order: str = "mixed") -> list[Example]:
    """``n`` IOI prompts, templates used in turn (and orders, when mixed); the answer is the
    indirect object."""
    if corruption is not None:
        raise TaskError("corruption applies to patching pairs (reason-interp patch --task ioi)")
    check_choice("order", order, ORDERS)
    rng = random.Random(seed)
    return [sample_ioi(rng, IOI_TEMPLATES[i % len(IOI_TEMPLATES)], _order(order, i))
            for i in range(n)]


CORRUPTIONS = ("flip", "abc", "swap")


def ioi(n_prompts: int = 64, corruption: str = "flip", seed: int = 0, tokenizer: Any | None = None,
        order: str = "mixed") -> PromptPairs:
    """IOI prompt pairs: the base is a clean IOI prompt, the source corrupts S2 (``flip``, ``abc``)
    or swaps IO and S1 (``swap``; see the module doc);
    ``order``: "mixed" (ABBA and BABA in turn, as Tigges et al.), "ABBA" or "BABA"."""
    check_choice("corruption", corruption, CORRUPTIONS)
    check_choice("order", order, ORDERS)

    def sample(rng: random.Random, i: int) -> PromptPair:
        template = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        a, b, c = rng.sample(NAMES, 3)
        words = dict(place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        o = _order(order, i)
        base = fill(template, a, b, o, **words)
        if corruption == "swap":  # IO and S1 trade places; S2 stays
            source = fill(template, a, b, "BABA" if o == "ABBA" else "ABBA", **words)
        else:
            s2 = a if corruption == "flip" else c
            head, tail = template.rsplit("{B}", 1)  # the last {B} is S2
            source = fill(head + s2 + tail, a, b, o, **words)
        return PromptPair(base, source, a, b)

    pairs = generate_aligned(sample, n_prompts, seed, tokenizer, "names must be single tokens for this tokenizer")
    return PromptPairs("ioi", dict(n_prompts=n_prompts, corruption=corruption, order=order, seed=seed), pairs)


register(TaskInfo("ioi", "indirect-object identification (Wang et al. 2022)", ioi, ioi_examples,
                  {"n_prompts": (64, "number of pairs (patch)"),
                   "corruption": ("flip", "patch pairs: flip (S2 -> IO) | abc (S2 -> a third name) | swap (IO and S1 trade places)"),
                   "order": ("mixed", "ABBA (IO named first) | BABA (subject first) | mixed (both in turn)"),
                   "seed": (0, "random seed")}))
