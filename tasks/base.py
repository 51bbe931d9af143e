"""Prompt-pair containers, the task registry and tokenizer alignment.

A task is a seeded generator of frozen :class:`PromptPair` objects. Pairs are checked
against a tokenizer (the embedded model's unless one is given): base and source prompts
must have the same token length and every answer must be one in-vocabulary token. Pairs
that fail are regenerated, never padded or truncated.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence


from nnsight_reasoning.errors import RunError, UsageError, checked_int


class TaskError(UsageError):
    """Bad task name or parameter; the message says how to fix it."""


@dataclass(frozen=True)
class PromptPair:
    """A base prompt and a source (counterfactual) prompt with their answers.

    ``alternatives`` are further correct answers of the base prompt and ``distractors`` its
    wrong ones, for tasks with answer sets (greater-than: every later year against the start
    year and every earlier one; sentiment: the two classes' words): ``nr.circuit`` then scores
    Tigges et al.'s set metrics; patching uses ``base_answer`` and ``source_answer`` only.

    ``joined``: the answers continue the prompt's last word, with no space before them
    (greater-than's "… to the year 17" → "32"); an answer is then the one token of the answer
    itself (:func:`joined_token_id`), not of " " + answer."""

    base: str
    source: str
    base_answer: str
    source_answer: str
    alternatives: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    joined: bool = False

    def __post_init__(self) -> None:
        for name in ("base", "source", "base_answer", "source_answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise TaskError(f"PromptPair.{name} must be a non-empty string")
        for name in ("alternatives", "distractors"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(a, str) and a.strip() for a in value):
                raise TaskError(f"PromptPair.{name} must be a tuple of non-empty strings")


@dataclass(frozen=True)
class Example:
    """One prompt with its correct next-token answer (for evaluation and training).

    ``alternatives`` are further correct answers where a task has a set of them (greater-than:
    every later year; sentiment: every word of the class); ``nr.evaluate`` then scores the set.
    ``distractors`` are the wrong answers a task compares them with (IOI: the subject;
    greater-than: the start year and every earlier one; sentiment: the other class's words):
    ``nr.evaluate`` then adds Tigges et al.'s logit and probability differences.
    ``joined``: the answers continue the prompt's last word (see :class:`PromptPair`).
    """

    prompt: str
    answer: str
    alternatives: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    joined: bool = False

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer, then the alternatives."""
        return (self.answer, *self.alternatives)


class TaskData(Sequence):
    """What every task's data container shares: a frozen dataclass (declared with
    ``repr=False``) with ``task``, ``params`` (JSON-able settings, with ``seed``; stored in
    results as ``task_params``) and its items in the field named by ``_items``, of which it is
    a sequence."""

    _items: ClassVar[str]
    made_by: ClassVar[str] = ""  # the generators that make it, named in an experiment's error for other data
    task: str
    params: dict[str, Any]

    def __len__(self) -> int:
        return len(getattr(self, self._items))

    def __getitem__(self, i):  # type: ignore[override]
        return getattr(self, self._items)[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(getattr(self, self._items))

    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, n={len(self)}, params={self.params_json()})"


@dataclass(frozen=True, repr=False)
class PromptPairs(TaskData):
    """An ordered, immutable set of prompt pairs plus the task settings that made them.

    ``params`` holds JSON-serialisable task parameters (including ``seed``); they are stored
    in every result file as ``attrs["task_params"]``.
    """

    _items: ClassVar[str] = "pairs"
    made_by: ClassVar[str] = ("nr.tasks.arithmetic(...), nr.tasks.ioi(...), nr.tasks.kth_smallest_pairs(...) or any "
                              "task's pairs (nr.tasks.get_task(name).pairs)")
    task: str
    params: dict[str, Any]
    pairs: tuple[PromptPair, ...]


@dataclass(frozen=True, repr=False)
class Examples(TaskData):
    """Prompts with their next-token answers plus the task settings that made them (stored in
    results as ``task_params``); from :func:`examples`."""

    _items: ClassVar[str] = "examples"
    made_by: ClassVar[str] = 'nr.tasks.examples("arithmetic", n_prompts=200)'
    task: str
    params: dict[str, Any]
    examples: tuple[Example, ...]


def examples(task: str = "arithmetic", n_prompts: int = 200, *, seed: int = 0, tokenizer: Any | None = None,
             **params: Any) -> Examples:
    """``n_prompts`` prompts of ``task`` with their answers (seeded), e.g. for ``nr.evaluate``.

    ``params`` are the task's parameters (``reason-interp tasks NAME`` lists them); answers
    are checked against ``tokenizer`` (the embedded model's by default) where the task does.
    """
    info = get_task(task)
    info.check_params({**params, "seed": seed})
    check_range("n_prompts", n_prompts, 1)
    items = info.examples(n=n_prompts, seed=seed, tokenizer=tokenizer, **params)
    return Examples(task, {**params, "n_prompts": n_prompts, "seed": seed}, tuple(items))


# --------------------------------------------------------------------------- tokenizer
def single_token_id(tokenizer: Any, answer: str) -> int | None:
    """Token id of ``" " + answer`` if it is exactly one known token, else None."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return ids[0]


def joined_token_id(tokenizer: Any, answer: str) -> int | None:
    """Token id of ``answer`` itself, with no space before it, if it is exactly one known token,
    else None: the answer of a prompt whose last word it continues (greater-than's "32" after
    "17", as circuits-over-time's ``get_year_indices`` reads it; GPT-2 and Pythia write "32" and
    " 32" as different tokens)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return ids[0]


def joined_answers(items: Sequence[Any]) -> bool:
    """Whether the answers of ``items`` (prompt pairs or examples) continue their prompts' last
    word (``joined``, greater-than's years); one convention for all, else a one-line error."""
    kinds = {bool(getattr(p, "joined", False)) for p in items}
    if len(kinds) > 1:
        raise UsageError("these items mix answers that follow a space with answers that continue the prompt's last "
                         "word (joined=True); score them separately")
    return kinds == {True}


def spaced_answer_id(tokenizer: Any, answer: str) -> int | None:
    """For a tokenizer that writes the space before ``answer`` as a token of its own (LLaMA's
    SentencePiece with split digits: " 5" is "▁", "5"; LLaMA-3's digit groups), the one token
    that follows that space, else None (also None where " " + answer is itself one token). Such
    an answer is scored after a prompt ending with the space token (:func:`space_token_id`), as
    lm-arithmetic scores LLaMA (``interventions/__init__.py:54-61``)."""
    if single_token_id(tokenizer, answer) is not None:
        return None
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    pre = tokenizer("x ", add_special_tokens=False)["input_ids"]
    full = tokenizer("x " + answer, add_special_tokens=False)["input_ids"]
    # the trailing space must be a token of its own (a word-level tokenizer drops it), and the
    # answer one known token after it
    if (len(pre) != len(bare) + 1 or len(full) != len(pre) + 1 or full[:len(pre)] != pre
            or full[-1] == getattr(tokenizer, "unk_token_id", None)):
        return None
    return full[-1]


def keeps_newlines(tokenizer: Any | None) -> bool:
    """Whether ``tokenizer`` (default: the embedded model's) writes a line break as a token
    (GPT-2's "Ċ", SentencePiece's "<0x0A>"), not as a mere word boundary (a word-level vocabulary)."""
    tok = tokenizer if tokenizer is not None else default_tokenizer()
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return count("a\nb") > count("a b")


def space_token_id(tokenizer: Any) -> int:
    """The token a trailing space is written as (the last token of "x "): what a prompt ends
    with before a :func:`spaced_answer_id` answer."""
    return tokenizer("x ", add_special_tokens=False)["input_ids"][-1]


def group_by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by equal token length, shortest first: batches that need no padding."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [groups[n] for n in sorted(groups)]


def default_tokenizer():
    """The embedded model's tokenizer (loaded from package data, never the network)."""
    from nnsight_reasoning.embedded import load_tokenizer

    return load_tokenizer()


class Aligner:
    """Checks prompts and answers against one tokenizer, with a small cache."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.unk = getattr(self.tokenizer, "unk_token_id", None)

    def prompt_len(self, text: str) -> int | None:
        """Token length of a prompt, or None if it contains an out-of-vocabulary word."""
        ids = self.tokenizer(text)["input_ids"]
        if self.unk is not None and self.unk in ids:
            return None
        return len(ids)

    def is_single_token(self, answer: str) -> bool:
        """One token after a space: " " + answer, or the token after a space token of its own
        (:func:`spaced_answer_id`; a pair's two answers are digits alike, so they agree)."""
        return (single_token_id(self.tokenizer, answer) is not None
                or spaced_answer_id(self.tokenizer, answer) is not None)

    def pair_ok(self, pair: PromptPair) -> bool:
        n = self.prompt_len(pair.base)
        return (
            n is not None
            and n == self.prompt_len(pair.source)
            and self.is_single_token(pair.base_answer)
            and self.is_single_token(pair.source_answer)
        )


def check_vocabulary(items: Sequence[Example], tokenizer: Any | None, hint: str) -> list[Example]:
    """``items`` if every prompt is in ``tokenizer``'s vocabulary (the embedded model's when None)
    and every answer one token, else a one-line error ending in ``hint``: for tasks whose words
    only subword tokenizers cover, so that ``evaluate`` never scores prompts of unknown words."""
    aligner = Aligner(tokenizer)
    for k, e in enumerate(items):
        if aligner.prompt_len(e.prompt) is None or not aligner.is_single_token(e.answer):
            raise TaskError(f"prompt {k} has words outside this tokenizer's vocabulary or a multi-token answer "
                            f"({e.prompt!r} -> {e.answer!r}); {hint}")
    return list(items)


def generate_aligned(
    sample: Callable[[random.Random, int], PromptPair | None],
    n: int,
    seed: int,
    tokenizer: Any | None,
    hint: str,
    max_tries_per_pair: int = 200,
) -> tuple[PromptPair, ...]:
    """Draw ``n`` pairs with ``sample(rng, i)``; redraw any that do not align.

    ``sample`` returns None when its draw violates the task's own constraints. The same
    seed and tokenizer always give the same pairs.
    """
    n = checked_int("n_prompts", n, 1, error=TaskError)
    rng = random.Random(seed)
    aligner = Aligner(tokenizer)
    out: list[PromptPair] = []
    for i in range(n):
        for _ in range(max_tries_per_pair):
            pair = sample(rng, i)
            if pair is not None and aligner.pair_ok(pair):
                out.append(pair)
                break
        else:
            raise TaskError(
                f"could not generate aligned pair {i} in {max_tries_per_pair} tries "
                f"(prompts must match in token length, answers be single in-vocabulary "
                f"tokens); {hint}"
            )
    return tuple(out)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TaskInfo:
    """Registry entry: the pair generator, an example generator, the labelled-prompt
    generator (reasoning-tree tasks) and parameter docs."""

    name: str
    summary: str
    pairs: Callable[..., PromptPairs] | None
    examples: Callable[..., list[Example]]
    params: dict[str, tuple[Any, str]]  # name -> (default, help)
    labelled: Callable[..., Any] | None = None  # -> ReasoningPrompts (attention, probe)
    roles: Callable[[Sequence[str]], list[str]] | None = None  # a prompt's tokens -> their roles (by_token_role)
    role_order: tuple[str, ...] = ()  # the roles in reading order

    def check_params(self, params: dict[str, Any]) -> None:
        """Refuse parameter names the task does not know (instead of a TypeError later)."""
        for k in params:
            if k not in self.params:
                raise TaskError(f"unexpected keyword {k!r} for task {self.name!r}; "
                                f"its parameters: {', '.join(self.params)}")


TASKS: dict[str, TaskInfo] = {}


def register(info: TaskInfo) -> TaskInfo:
    TASKS[info.name] = info
    return info


#: Other names a task answers to (lm-arithmetic's README calls type 20 "factual").
ALIASES = {"factual": "factual_recall"}


def get_task(name: str) -> TaskInfo:
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise TaskError(f"{name} must be one of {list(choices)} (got {value!r})")


def check_range(name: str, value: int, lo: int, hi: int | None = None) -> None:
    """A TaskError unless ``value`` is an integer (numpy's too; not a bool) in ``lo``..``hi``."""
    checked_int(name, value, lo, hi, bound=None if hi is None else f"between {lo} and {hi}", error=TaskError)


def json_lines(path: Any, what: str) -> list[tuple[int, dict]]:
    """The objects of a JSON Lines file, one per non-empty line, each with its 1-based line
    number (a file holding one JSON array of objects is read too, numbered by position). A file
    that is not UTF-8 text, is empty, or has a line that is not a JSON object is refused naming
    the file and the line; ``what`` says what the rows should hold."""
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is allowed
    except UnicodeDecodeError:
        raise TaskError(f"{path.name} is not UTF-8 text: expected {what}, one JSON object per line") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path.name} line {e.lineno} is not JSON ({e.msg}): expected {what}") from None
        if not all(isinstance(r, dict) for r in rows):
            raise TaskError(f"{path.name} holds a JSON array of other things than objects: expected {what}")
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        # "\n" only: JSON strings may hold U+2028 and other characters that splitlines() breaks at
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path.name} line {n} is not JSON ({e.msg}): expected {what}, one JSON object "
                                "per line") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path.name} line {n} is a JSON {type(row).__name__}, not an object: "
                                f"expected {what}")
            numbered.append((n, row))
    if not numbered:
        raise TaskError(f"{path.name} is empty: expected {what}, one JSON object per line")
    return numbered


def read_rows(source: Any, split: str = "train", *, what: str = "rows") -> Any:
    """A table of rows (a ``datasets.Dataset``) from a local ``.jsonl``/``.json``/``.csv``/``.tsv``
    file, or from a Hugging Face Hub dataset id (``"stanfordnlp/sst2"``: the Hub needs a
    connection; ``split`` picks the split). ``what`` names the expected columns in errors."""
    from pathlib import Path

    import datasets

    path = Path(str(source))
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}.get(path.suffix.lower())
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per tiny local file would bury ours
    try:
        if kind is not None:
            if not path.is_file():
                raise TaskError(f"no such file: {path} ({what})")
            if path.suffix.lower() == ".jsonl":  # read once, here: a malformed line is named (datasets says "error")
                return datasets.Dataset.from_list([row for _, row in json_lines(path, what)])
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(kind, data_files=str(path), split="train", **extra)
        if path.exists():
            raise TaskError(f"{path.name}: use a .jsonl, .json, .csv or .tsv file ({what})")
        if (str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1
                or path.suffix.lower() in (".txt", ".parquet", ".arrow", ".gz", ".xz", ".bz2", ".zip")):
            # no Hub id looks like this (owner/name): a local file that is not there
            raise TaskError(f"no such file: {path} ({what})")
        from huggingface_hub.utils import logging as hub_logging

        level = hub_logging.get_verbosity()
        hub_logging.set_verbosity_error()  # its retry warnings (one per attempt) would bury the one-line error
        try:
            return datasets.load_dataset(str(source), split=split)
        finally:
            hub_logging.set_verbosity(level)
    except TaskError:
        raise
    except ConnectionError:  # the Hub unreachable: a failure at run time (exit 1), not bad usage
        raise RunError(f"cannot reach the Hugging Face Hub for {source!r}; connect, or pass a local file "
                       f"({what})") from None
    except Exception as e:  # datasets raises several types for malformed files and unreachable hubs
        where = f"{path.name} as {kind.upper()}" if kind else f"the Hub dataset {source!r} (split {split!r})"
        raise TaskError(f"cannot read {where} ({type(e).__name__}); check the file or pass a local file "
                        f"({what})") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
