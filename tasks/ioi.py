"""Indirect-object identification (Wang et al. 2022; Tigges et al. 2024 over training).

"When Mary and John went to the store , John gave a drink to" -> "Mary".
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, TaskInfo, register
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


def ioi_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None) -> list[Example]:
    """``n`` IOI prompts, templates used in turn; the answer is the indirect object."""
    rng = random.Random(seed)
    return [sample_ioi(rng, IOI_TEMPLATES[i % len(IOI_TEMPLATES)]) for i in range(n)]


register(TaskInfo("ioi", "indirect-object identification (Wang et al. 2022)", None, ioi_examples,
                  {"seed": (0, "random seed")}))
