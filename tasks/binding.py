"""Entity-attribute binding in context (Feng & Steinhardt 2024).

"Alice lives in Paris . Bob lives in Rome . Bob lives in" -> "Rome".

:func:`binding_examples` gives plain prompts (``evaluate --task binding``);
:func:`binding_contexts` gives the contexts of the binding-ID experiments (``nr.binding``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .base import Example, TaskData, TaskError, TaskInfo, check_range, register
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


def sample_contexts(n: int, n_pairs: int = 2, seed: int = 0) -> list[BindingContext]:
    """``n`` contexts of ``n_pairs`` distinct names and distinct cities (seeded)."""
    check_range("n", n, 1)
    check_range("n_pairs", n_pairs, 2, len(CITIES))
    rng = random.Random(seed)
    return [BindingContext(tuple(rng.sample(NAMES, n_pairs)), tuple(rng.sample(CITIES, n_pairs))) for _ in range(n)]


@dataclass(frozen=True, repr=False)
class BindingContexts(TaskData):
    """The data of a binding-ID run (``nr.binding``): the measured ``contexts`` and the
    ``estimate`` contexts over which the binding-ID difference vectors are averaged (an
    independent draw, seed ``seed + 1``). Iterates over ``contexts``; ``params`` (with
    ``seed``) are stored in results as ``task_params``."""

    _items: ClassVar[str] = "contexts"
    task: str
    params: dict[str, Any]
    contexts: tuple[BindingContext, ...]
    estimate: tuple[BindingContext, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.contexts[0].entities)

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def __repr__(self) -> str:
        return f"BindingContexts(n={len(self)}, n_estimate={len(self.estimate)}, params={self.params})"


def binding_contexts(n_contexts: int = 200, n_pairs: int = 2, n_estimate: int = 200, seed: int = 0) -> BindingContexts:
    """``n_contexts`` contexts of ``n_pairs`` entity–city statements (seed ``seed``) and
    ``n_estimate`` other contexts (seed ``seed + 1``) for the binding-ID vectors."""
    if isinstance(n_pairs, int) and n_pairs < 2:
        raise TaskError(f"binding needs at least 2 pairs per context (got {n_pairs})")
    check_range("n_contexts", n_contexts, 1)
    check_range("n_estimate", n_estimate, 1)
    contexts = sample_contexts(n_contexts, n_pairs, seed)
    estimate = sample_contexts(n_estimate, n_pairs, seed + 1)
    params = {"n_contexts": n_contexts, "n_pairs": n_pairs, "n_estimate": n_estimate, "seed": seed}
    return BindingContexts("binding", params, tuple(contexts), tuple(estimate))
