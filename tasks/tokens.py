"""Token-level data: repeated random tokens (the input of ``nr.head_scores``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import TaskData, TaskError, check_range, default_tokenizer


@dataclass(frozen=True, repr=False)
class RepeatedTokens(TaskData):
    """Token-id sequences ``<bos> x_1 … x_n x_1 … x_n`` (from :func:`repeated_tokens`), with the
    settings that made them (stored in results as ``task_params``).

    ``ids`` holds one tuple of ``1 + 2·seq_len`` token ids per sequence; ``seq_len`` is n.
    """

    _items: ClassVar[str] = "ids"
    task: str
    params: dict[str, Any]
    ids: tuple[tuple[int, ...], ...]

    @property
    def seq_len(self) -> int:
        return int(self.params["seq_len"])



def repeated_tokens(n_sequences: int = 32, seq_len: int = 20, seed: int = 0,
                    tokenizer: Any | None = None) -> RepeatedTokens:
    """``n_sequences`` sequences ``<bos> x x`` (``<eos>`` where the tokenizer has no bos): x is
    ``seq_len`` tokens drawn uniformly without replacement from the tokenizer's non-special
    tokens (the embedded model's tokenizer by default; pass ``model.tokenizer`` for another
    model). The same seed and tokenizer always give the same ids.

    >>> seqs = nr.tasks.repeated_tokens(n_sequences=8, seq_len=10, seed=0)
    >>> ds = nr.head_scores(model, seqs)
    """
    check_range("n_sequences", n_sequences, 1)
    check_range("seed", seed, 0)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    special = set(tokenizer.all_special_ids)
    pool = np.array([i for i in range(len(tokenizer)) if i not in special])
    if not isinstance(seq_len, int) or seq_len < 2 or seq_len > len(pool):
        raise TaskError(f"seq_len must be between 2 and {len(pool)} (the tokenizer's ordinary tokens; got {seq_len!r})")
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if first is None:
        raise TaskError("repeated tokens start each sequence with the tokenizer's bos (or eos) token; it has neither")
    rng = np.random.default_rng(seed)
    x = np.stack([rng.choice(pool, seq_len, replace=False) for _ in range(n_sequences)])
    ids = np.concatenate([np.full((n_sequences, 1), first), x, x], 1)
    return RepeatedTokens("repeated_random_tokens", {"n_sequences": n_sequences, "seq_len": seq_len, "seed": seed},
                          tuple(tuple(int(t) for t in row) for row in ids))
