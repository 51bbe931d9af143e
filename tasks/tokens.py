"""Token-level data: repeated random tokens (the input of ``nr.head_scores``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import TaskData, TaskError, check_range, default_tokenizer


@dataclass(frozen=True, repr=False)
class TokenSequences(TaskData):
    """Token-id sequences (``ids``: one tuple per sequence) with the settings that made them
    (stored in results as ``task_params``, ``seq_len`` among them)."""

    _items: ClassVar[str] = "ids"
    task: str
    params: dict[str, Any]
    ids: tuple[tuple[int, ...], ...]

    @property
    def seq_len(self) -> int:
        return int(self.params["seq_len"])


class RepeatedTokens(TokenSequences):
    """Token-id sequences ``<bos> x_1 … x_n x_1 … x_n`` (from :func:`repeated_tokens`): one
    tuple of ``1 + 2·seq_len`` token ids per sequence; ``seq_len`` is n."""

    made_by: ClassVar[str] = "nr.tasks.repeated_tokens(n_sequences, seq_len, seed, tokenizer=model.tokenizer)"



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
    made_by: ClassVar[str] = "nr.tasks.ordinal_sequences()"
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


class TextSequences(TokenSequences):
    """Token-id sequences of running text, each ``seq_len`` tokens starting with the tokenizer's
    bos (or eos) token (from :func:`text_sequences`)."""

    made_by: ClassVar[str] = "nr.tasks.text_sequences(n_sequences, seq_len, tokenizer=model.tokenizer)"


# the embedded vocabulary's documents: its tasks' prompts with their answers, in turn
_DOCUMENT_TASKS = ("ioi", "arithmetic", "factual_recall", "sentiment", "greater_than")


def text_sequences(n_sequences: int = 100, seq_len: int = 61, seed: int = 0, tokenizer: Any | None = None,
                   source: str | None = None, column: str = "text", split: str = "train") -> TextSequences:
    """``n_sequences`` sequences of ``seq_len`` tokens of text: ``<bos>`` then the text's first
    ``seq_len − 1`` tokens. ``source``: a local ``.jsonl``/``.json``/``.csv``/``.tsv`` file or a
    Hugging Face dataset id (``"stas/openwebtext-10k"``, circuits-over-time's CSPA data; the Hub
    needs a connection) whose ``column`` holds the texts: they are shuffled with ``seed`` and
    the first ``n_sequences`` long enough are kept (the repository keeps texts of more than 1000
    tokens). Without ``source`` (offline): documents made of the toolkit's task prompts with
    their answers (IOI, arithmetic, factual recall, sentiment, greater-than), drawn at random with
    ``seed``, in the embedded model's vocabulary.

    >>> seqs = nr.tasks.text_sequences(n_sequences=100, seq_len=61)
    """
    from .base import examples, read_rows

    check_range("n_sequences", n_sequences, 1)
    check_range("seq_len", seq_len, 4)
    check_range("seed", seed, 0)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if first is None:
        raise TaskError("text sequences start with the tokenizer's bos (or eos) token; it has neither")

    def body(text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(t) for t in ids]

    rows: list[tuple[int, ...]] = []
    if source is not None:
        table = read_rows(source, split, what=f"a {column!r} column of texts")
        if column not in table.column_names:
            raise TaskError(f"{source}: no column {column!r} (it has {', '.join(table.column_names)}); pass --column")
        order = np.random.default_rng(seed).permutation(len(table))
        for i in order:
            ids = body(str(table[int(i)][column]))
            if len(ids) >= seq_len - 1:
                rows.append(tuple([first] + ids[:seq_len - 1]))
                if len(rows) == n_sequences:
                    break
        if len(rows) < n_sequences:
            raise TaskError(f"{source}: only {len(rows)} texts have {seq_len - 1} tokens or more; lower "
                            f"n_sequences or seq_len")
    else:
        per_task = max(8, (n_sequences * seq_len) // 20 // len(_DOCUMENT_TASKS) + 8)
        pools = [[f"{e.prompt} {e.answer}" for e in examples(t, per_task, seed=seed + k, tokenizer=tokenizer)]
                 for k, t in enumerate(_DOCUMENT_TASKS)]
        rng = np.random.default_rng(seed)
        for _ in range(n_sequences):
            ids: list[int] = []
            while len(ids) < seq_len - 1:
                pool = pools[int(rng.integers(len(pools)))]
                ids += body(pool[int(rng.integers(len(pool)))] + " .")
            rows.append(tuple([first] + ids[:seq_len - 1]))
    params = {"n_sequences": n_sequences, "seq_len": seq_len, "seed": seed, "source": source or "tasks"}
    if source is not None:
        params.update(column=column, split=split)
    return TextSequences("text", params, tuple(rows))
