"""binding-iclr's multiple-choice task (Feng & Steinhardt 2024; ``coref/datasets/mcq_sst.py``,
template ``REVERSED``, the one ``scripts/run_experiment.py:813-834`` runs): the options of a
question are bound to letters in context, and the model answers with a letter.

    Classify the review using the following options:
    C. Positive
    A. Negative
    Review: a gripping , funny film .
    Answer:

Per context (the repository's ``prompt_id``): the two options (SST-2's "Negative" and
"Positive", in a random order) get two distinct letters drawn from A–E, and query q asks
about a review whose sentiment is statement q's option (so the right answer is statement
q's letter). The *source* context states the same options in the same order with the two
letters exchanged (the repository's ``default_context(labels=[1, 0], options=[0, 1])``).

Reviews come from SST-2 (``sentence``, ``label``: 0 negative, 1 positive): the Hub's
``stanfordnlp/sst2`` (the repository's ``datasets.load_dataset("sst2")``, train split) or a
local ``.jsonl``/``.csv``/``.tsv`` file with those columns (GLUE's ``SST-2/train.tsv`` as it is).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .base import TaskData, TaskError, check_range, read_rows

OPTIONS = ("Negative", "Positive")  # SST2_LABELS[0]: SST-2's label 0 and 1
LABELS = ("A", "B", "C", "D", "E")  # the repository's MCQ_SST letters
TEMPLATE = "Classify the review using the following options:{context}\nReview: {question}\nAnswer:"
STATEMENT = "\n{label}. {option}"
HUB_ID = "stanfordnlp/sst2"


@dataclass(frozen=True)
class McqContext:
    """Two statements "letter. option" and, per query q, a review whose sentiment is statement
    q's option. ``labels[j]``, ``options[j]``: statement j's letter and option text;
    ``reviews[q]``: query q's review."""

    labels: tuple[str, str]
    options: tuple[str, str]
    reviews: tuple[str, str]

    def statements(self, swapped: bool = False) -> list[str]:
        labels = self.labels[::-1] if swapped else self.labels
        return [STATEMENT.format(label=lab, option=opt) for lab, opt in zip(labels, self.options)]

    def text(self, query: int, swapped: bool = False) -> str:
        """The prompt of query ``query``; ``swapped``: the source context (letters exchanged)."""
        return TEMPLATE.format(context="".join(self.statements(swapped)), question=self.reviews[query])

    def statement_spans(self, swapped: bool = False) -> list[tuple[int, int]]:
        """Character span [start, end) of each statement in :meth:`text` (the same for every
        query: the statements come before the review)."""
        start = TEMPLATE.index("{context}")
        spans = []
        for s in self.statements(swapped):
            spans.append((start, start + len(s)))
            start += len(s)
        return spans

    @property
    def answers(self) -> tuple[str, str]:
        """Query q's answer: statement q's letter."""
        return self.labels


@dataclass(frozen=True, repr=False)
class McqContexts(TaskData):
    """The data of binding-iclr's MCQ test (``nr.binding(..., measure="mcq")``)."""

    _items: ClassVar[str] = "contexts"
    made_by: ClassVar[str] = "nr.tasks.mcq_contexts(...)"
    task: str
    params: dict[str, Any]
    contexts: tuple[McqContext, ...]

    def __repr__(self) -> str:
        return f"McqContexts(n={len(self)}, params={self.params})"


def mcq_contexts(n_contexts: int = 100, seed: int = 0, data: str = HUB_ID, *, split: str = "train",
                 options: Sequence[str] = OPTIONS, labels: Sequence[str] = LABELS) -> McqContexts:
    """``n_contexts`` seeded MCQ contexts over the reviews of ``data`` (an SST-2 file, or a Hub
    dataset id with columns ``sentence`` and ``label``; ``split`` for the Hub)."""
    check_range("n_contexts", n_contexts, 1)
    if len(options) != 2 or len(set(labels)) < 2:
        raise TaskError(f"MCQ needs 2 options and at least 2 distinct letters (got {list(options)}, {list(labels)})")
    rows = read_rows(data, split, what="SST-2 rows: columns sentence and label (0 negative, 1 positive)")
    missing = {"sentence", "label"} - set(rows.column_names)
    if missing:
        raise TaskError(f"{data}: lacks column(s) {sorted(missing)}; SST-2 rows have sentence and label "
                        f"(it has: {', '.join(rows.column_names)})")
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for r in rows:
        text = str(r["sentence"]).strip()
        if text and r["label"] in by_class:
            by_class[int(r["label"])].append(text)
    if not all(by_class.values()):
        raise TaskError(f"{data}: needs reviews of both labels 0 and 1 (got {[len(v) for v in by_class.values()]})")
    rng = random.Random(seed)
    contexts = []
    for _ in range(n_contexts):
        order = rng.sample([0, 1], 2)  # the repository's opt_perm
        letters = tuple(rng.sample(list(labels), 2))  # its label_perm[:2]
        contexts.append(McqContext(letters, tuple(options[o] for o in order),
                                   tuple(rng.choice(by_class[o]) for o in order)))
    return McqContexts("mcq", {"n_contexts": n_contexts, "seed": seed, "data": str(data), "split": split},
                       tuple(contexts))
