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


# get_new_successor_head_scores_over_time.py's ordinal lists: (cyclic, words); a cyclic list's
# last word is followed by its first
_ORDINALS = {
    "numbers_1_200": (False, [str(i) for i in range(1, 201)]),
    "number_words_1_20": (False, ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                                  "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                                  "eighteen", "nineteen", "twenty"]),
    "cardinal_words_1_10": (False, ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                                    "ninth", "tenth"]),
    "days": (True, ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
    "days_short": (True, ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]),
    "months": (True, ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                      "October", "November", "December"]),
    "months_short": (True, ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]),
    "letters": (False, list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
    "numerals": (False, ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV",
                         "XV", "XVI", "XVII", "XVIII", "XIX", "XX"]),
}


@dataclass(frozen=True, repr=False)
class OrdinalSequences(TaskData):
    """Ordered word lists (``lists``: (name, words) pairs) whose consecutive words are
    (input, successor) examples; from :func:`ordinal_sequences`."""

    _items: ClassVar[str] = "lists"
    task: str
    params: dict[str, Any]
    lists: tuple[tuple[str, tuple[str, ...]], ...]


def ordinal_sequences(variants: bool = True) -> OrdinalSequences:
    """The ordinal lists of Tigges et al.'s successor-head score
    (``get_new_successor_head_scores_over_time.py``, after Gould et al. 2023): numbers 1–200,
    number words, cardinal words, days, months (cyclic: the first follows the last), their
    short forms, letters and Roman numerals; with ``variants`` also, as there, each list with
    its capitalisation inverted and/or a space before every word (letters and numerals: the
    space only). Words a tokenizer splits are left out by the score, not here."""
    lists = []
    for name, (cyclic, words) in _ORDINALS.items():
        forms = [(name, words)]
        if variants:
            for invert in (True, False):
                if name in ("letters", "numerals") and invert:
                    continue
                for space in (True, False):
                    if not space and not invert:
                        continue
                    w = [x[0].lower() + x[1:] if x[0].isupper() else x[0].upper() + x[1:] for x in words] if invert \
                        else list(words)
                    w = [" " + x for x in w] if space else w
                    forms.append((f"{'inverted_capital_' if invert else ''}{'space_' if space else ''}{name}", w))
        for n, w in forms:
            lists.append((n, tuple(w + w[:1] if cyclic else w)))
    return OrdinalSequences("ordinal_sequences", {"variants": variants}, tuple(lists))
