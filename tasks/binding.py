"""Entity-attribute binding in context (Feng & Steinhardt 2024).

"Alice lives in Paris . Bob lives in Rome . Bob lives in" -> "Rome".
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from .base import Example, TaskInfo, check_range, register
from .words import CITIES, NAMES


def sample_binding(rng: random.Random, n_pairs: int) -> Example:
    names = rng.sample(NAMES, n_pairs)
    cities = rng.sample(CITIES, n_pairs)
    context = " ".join(f"{e} lives in {a} ." for e, a in zip(names, cities))
    q = rng.randrange(n_pairs)
    return Example(f"{context} {names[q]} lives in", cities[q])


def binding_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None,
                     n_pairs: int = 2) -> list[Example]:
    """``n`` binding prompts with ``n_pairs`` entity-city statements; one entity is queried."""
    check_range("n_pairs", n_pairs, 2, len(CITIES))
    rng = random.Random(seed)
    return [sample_binding(rng, n_pairs) for _ in range(n)]


register(TaskInfo("binding", "entity-attribute binding (Feng & Steinhardt 2024)", None, binding_examples,
                  {"n_pairs": (2, "entity-attribute statements in the context"), "seed": (0, "random seed")}))


@dataclass(frozen=True)
class BindingContext:
    """n entity–attribute statements in order; ``text(query)`` asks for entity ``query``'s
    attribute, ``text(query, order)`` states the pairs in another order."""

    entities: tuple[str, ...]
    attributes: tuple[str, ...]

    def text(self, query: int, order: Sequence[int] | None = None, entity: str | None = None) -> str:
        order = range(len(self.entities)) if order is None else order
        context = " ".join(f"{self.entities[k]} lives in {self.attributes[k]} ." for k in order)
        return f"{context} {self.entities[query] if entity is None else entity} lives in"


def binding_contexts(n: int, n_pairs: int = 2, seed: int = 0) -> list[BindingContext]:
    """``n`` contexts of ``n_pairs`` distinct names and distinct cities (seeded)."""
    check_range("n", n, 1)
    check_range("n_pairs", n_pairs, 2, len(CITIES))
    rng = random.Random(seed)
    return [BindingContext(tuple(rng.sample(NAMES, n_pairs)), tuple(rng.sample(CITIES, n_pairs))) for _ in range(n)]
