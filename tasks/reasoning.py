"""Prompts labelled with their reasoning tree (Hou et al. 2023, MechanisticProbe).

A :class:`ReasoningPrompt` is a list of statements (numbers of a k-th-smallest list, facts of
a ProofWriter theory) between a prefix and a question. Each statement carries two labels:
``useful`` (the answer depends on it) and ``step`` (the reasoning step that uses it, 1 = the
leaves of the tree, the answer's own statement last; 0 = not used). Texts are rendered from
the statements, so corrupted variants (shuffled, dropped) keep their labels aligned.

Files: ProofWriter- and ARC-style data are read from local JSON Lines or CSV files with
``datasets`` (no network); the expected columns are in :func:`load_reasoning`.
"""
from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import Example, TaskData, TaskError, TaskInfo, check_choice, check_range, read_rows, register

CORRUPTIONS = ("shuffle", "drop", "perturb", "negate")


@dataclass(frozen=True)
class Statement:
    """One statement of a prompt with its reasoning-tree labels."""

    text: str
    useful: bool = False
    step: int = 0  # 0 = not used; 1.. = the reasoning step that uses it


@dataclass(frozen=True)
class ReasoningPrompt:
    """``prefix``, then ``lead`` (where there is a prefix), the statements joined by ``sep``, then
    " " and ``question``; the answer follows. ``group``: the set the prompt is probed in (the
    repository's ProofWriter protocol probes each number of statements m apart,
    :func:`load_reasoning` with ``by_size``); None: one probe over all prompts. ``joined``: the
    answer continues the prompt's last word, scored as its own token without a space (see
    :class:`~nnsight_reasoning.tasks.PromptPair`). ``scored_as``: (sep, question) of another
    rendering the answer is scored after (:attr:`scored_text`); None: :attr:`text`.
    ``special_tokens``: the tokenizer's special tokens (<bos>) go before the text; False for
    MechanisticProbe's repository rendering, which it tokenises with ``add_special_tokens=False``
    (``src/rtask/proofwriter_probe.py:99, 151``, ``src/llama.py:39``): on LLaMA the <bos> would
    be an attention sink the repository's input does not have."""

    statements: tuple[Statement, ...]
    answer: str
    prefix: str = ""
    question: str = ""
    sep: str = " "
    lead: str = " "
    group: int | None = None
    joined: bool = False
    scored_as: tuple[str, str] | None = None
    special_tokens: bool = True

    @property
    def text(self) -> str:
        return self._render()[0]

    @property
    def scored_text(self) -> str:
        """The text whose next token is scored for accuracy (``evaluate``, ``robustness``, ``prune``): :attr:`text`,
        or where ``scored_as`` = (sep, question) is set, the same prefix and statements joined by
        ``sep``, then " " and that question: MechanisticProbe scores its answers after another
        rendering than the one it probes (``src/llama.py:33``: "{theory} {question}: True or False?")."""
        if self.scored_as is None:
            return self.text
        sep, question = self.scored_as
        return replace(self, sep=sep, question=question, scored_as=None).text

    def spans(self) -> list[tuple[int, int]]:
        """Character span ``[start, end)`` of each statement in :attr:`text`."""
        return self._render()[1]

    def _render(self) -> tuple[str, list[tuple[int, int]]]:
        text, spans = self.prefix, []
        for i, s in enumerate(self.statements):
            if text:
                text += self.sep if i else self.lead
            spans.append((len(text), len(text) + len(s.text)))
            text += s.text
        if self.question:
            text += (" " if text else "") + self.question
        return text, spans


@dataclass(frozen=True, repr=False)
class ReasoningPrompts(TaskData):
    """Labelled prompts plus the settings that made them (stored in results as ``task_params``).

    ``labelled`` is False when the source (a file without label columns) had no labels:
    attention patterns still work, the probe refuses.
    """

    _items: ClassVar[str] = "prompts"
    made_by: ClassVar[str] = "nr.tasks.kth_smallest(...) or nr.tasks.load_reasoning(...)"
    task: str
    params: dict[str, Any]
    prompts: tuple[ReasoningPrompt, ...]
    labelled: bool = True

    @property
    def n_steps(self) -> int:
        return max((s.step for p in self.prompts for s in p.statements), default=0)

    def __repr__(self) -> str:
        return f"ReasoningPrompts(task={self.task!r}, n={len(self)}, steps={self.n_steps}, params={self.params_json()})"


def special_tokens_of(prompts: Sequence[Any]) -> list[bool]:
    """Per prompt, whether its text is tokenised with the tokenizer's special tokens
    (:attr:`ReasoningPrompt.special_tokens`; True for any other kind of prompt)."""
    return [getattr(p, "special_tokens", True) for p in prompts]


def scored_text_coords(named: dict[str, tuple[Sequence[ReasoningPrompt], str]]) -> dict[str, tuple]:
    """Result coordinates (dim ``prompt``) holding each list's :attr:`ReasoningPrompt.scored_text`:
    ``{name: (prompts, long_name)}`` → ``{name: ("prompt", texts, {"long_name": ...})}``, or ``{}``
    where every prompt is scored after its own text (only the repository's accuracy prompt differs)."""
    if not any(p.scored_text != p.text for prompts, _ in named.values() for p in prompts):
        return {}
    return {name: ("prompt", np.array([p.scored_text for p in prompts], dtype=object), {"long_name": long_name})
            for name, (prompts, long_name) in named.items()}


def corrupted(prompts: Sequence[ReasoningPrompt], mode: str, n: int = 1, seed: int = 0,
              strict: bool = True) -> list[ReasoningPrompt]:
    """Corrupted copies for the robustness experiment (answers stay correct).

    ``shuffle``: statements in a random order; ``drop``: remove ``n`` statements that are not
    useful; ``negate``: rewrite ``n`` statements that are not useful as "That … is false." (the
    repository's counterfactual corruption, ``corrput_func(..., "counter")``: the answer does not
    depend on them, so it stays right). ``perturb`` changes statement contents and so the
    answer: only tasks that can recompute it offer it (``kth_smallest``). A prompt with fewer
    than ``n`` statements outside the proof is refused, or with ``strict`` False left as it is.
    """
    check_choice("corrupt", mode, CORRUPTIONS)
    if mode == "perturb":
        raise TaskError("corrupt='perturb' needs a task that can recompute the answer (kth_smallest); "
                        "for data files use shuffle, drop or negate")
    check_range("n_corrupt", n, 1)
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(prompts):
        st = list(p.statements)
        if mode == "shuffle":
            rng.shuffle(st)
        else:
            useless = [j for j, s in enumerate(st) if not s.useful]
            if len(useless) < n:
                if not strict:
                    out.append(p)
                    continue
                raise TaskError(f"prompt {i} has {len(useless)} useless statements; cannot {mode} {n} "
                                f"(lower n_corrupt)")
            chosen = set(rng.sample(useless, n))
            if mode == "drop":
                st = [s for j, s in enumerate(st) if j not in chosen]
            else:
                st = [replace(s, text=f"That {s.text.strip().rstrip('.').strip()} is false.") if j in chosen else s
                      for j, s in enumerate(st)]
        out.append(replace(p, statements=tuple(st)))
    return out


# --------------------------------------------------------------------------- files
STYLES = {
    # style: (statements column, question column, answer column, prefix, question template)
    "proofwriter": ("statements", "question", "answer", "", "Question : {question} Answer :"),
    "arc": ("facts", "question", "answer", "", "Question : {question} {choices} Answer :"),
}


def _as_list(value: Any, column: str, row: int) -> list:
    if isinstance(value, str):  # CSV cells hold JSON lists
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskError(f"row {row}: column {column!r} must be a JSON list (got {value[:40]!r})") from None
    if not isinstance(value, list):
        raise TaskError(f"row {row}: column {column!r} must be a list (got {type(value).__name__})")
    return value


def load_reasoning(path: str | Path | None = None, style: str = "proofwriter", *, n_prompts: int | None = None,
                   corrupt: str | None = None, n_corrupt: int = 1, seed: int = 0, max_depth: int | None = None,
                   n_shots: int = 0, form: str = "toolkit", by_size: Sequence[int] | str | None = None,
                   min_depth: int | None = None) -> ReasoningPrompts:
    """Read labelled reasoning prompts from a local ``.jsonl``/``.json`` or ``.csv`` file.

    A ``proofwriter`` file may also be one of ProofWriter's published ``meta-*.jsonl`` files
    (rows with ``theory``, ``triples``, ``rules``, ``questions``): see
    :func:`proofwriter_questions`; an ``arc`` file one of STREET's reasoning-annotated ARC files
    (rows with ``textual_logical_units``, ``reasoning_graph_edges``): see :func:`arc_questions`.
    ``max_depth`` and ``n_shots`` apply to those only; ``form`` (the repository's prompt text) to
    both; ``by_size`` (its per-m probing sets) and ``min_depth`` to ProofWriter's, which ``path``
    may also name as a folder (its ``CWA`` folder: the repository's depths' train, dev and test
    pooled). ``min_depth=1, max_depth=1`` is the pool its robustness experiment samples. An ARC
    ``path`` may be STREET's folder (``reasoning_annotated_{train,dev,test}.jsonl``, pooled);
    with ``form="repository"`` its prompts are probed per proof depth (``group``), depth <= 2.

    Columns (CSV cells with lists hold JSON):

    - ``proofwriter``: ``statements`` (list of str), ``question`` (str), ``answer`` (str);
      optional ``useful`` (list of 0/1) and ``steps`` (list of int, 0 = not used) per statement.
    - ``arc``: ``facts`` (list of str), ``question`` (str), ``answer`` (str, e.g. the choice
      label); optional ``choices`` (list of str, rendered "A ) ... B ) ..."), ``useful``, ``steps``.

    Without ``useful`` a statement is useful where its step is > 0; without ``steps`` a
    useful statement is step 1. Without either column the prompts are unlabelled. ``n_prompts`` keeps the first N rows.
    """
    check_choice("style", style, list(STYLES))
    if path is None:
        raise TaskError(f"task {style!r} reads a local file: give path=FILE (CLI: --data FILE; evaluate: --param path=FILE)")
    path = Path(path)
    if style == "proofwriter" and (path.is_dir() or path.is_file() and _is_published_proofwriter(path)):
        out = proofwriter_questions(path, n_prompts=n_prompts, max_depth=max_depth, n_shots=n_shots, seed=seed,
                                    form=form, by_size=by_size, min_depth=min_depth)
        sized = {} if by_size is None else {"by_size": ",".join(map(str, _sizes(by_size))), "group": GROUP_NAME}
        if by_size is not None and max_depth is None:
            max_depth = 1  # the protocol's
        if min_depth is not None:
            sized["min_depth"] = min_depth
        return _finish(out, path, style, corrupt, n_corrupt, seed, True, max_depth=max_depth, n_shots=n_shots,
                       format="proofwriter_published", form=form, **sized)
    if style == "arc" and (path.is_dir() or path.is_file() and _is_published_arc(path)) and by_size is None \
            and min_depth is None:
        check_choice("form", form, FORMS)
        if form == "repository" and max_depth is None:
            max_depth = 2  # the repository probes depth <= 2 (arc_probe.py:180)
        out = arc_questions(path, n_prompts=n_prompts, max_depth=max_depth, n_shots=n_shots, seed=seed, form=form)
        grouped = {"group": ARC_GROUP_NAME} if form == "repository" else {}
        return _finish(out, path, style, corrupt, n_corrupt, seed, True, max_depth=max_depth, n_shots=n_shots,
                       format="arc_street", form=form, **grouped)
    if not path.is_file():
        raise TaskError(f"no such data file: {path}")
    if form != "toolkit" or by_size is not None or min_depth is not None:
        raise TaskError(f"form applies to ProofWriter's and ARC's (STREET) published files, by_size and min_depth to "
                        f"ProofWriter's; {path.name} is not one")
    if max_depth is not None or n_shots:
        raise TaskError(f"max_depth and n_shots apply to the published ProofWriter and ARC (STREET) files; "
                        f"{path.name} is not one")
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise TaskError(f"{path.name}: use a .jsonl, .json or .csv file")
    rows = read_rows(path, what=f"columns: see `reason-interp tasks {style}`")
    col_st, col_q, col_a, prefix, template = STYLES[style]
    missing = [c for c in (col_st, col_q, col_a) if c not in rows.column_names]
    if missing:
        raise TaskError(f"{path.name} lacks column(s) {', '.join(missing)} for style {style!r}; "
                        f"it has: {', '.join(rows.column_names)}")
    labelled = "useful" in rows.column_names or "steps" in rows.column_names
    out = []
    for r, row in enumerate(rows):
        if n_prompts is not None and r >= n_prompts:
            break
        texts = [str(t).strip() for t in _as_list(row[col_st], col_st, r)]
        useful = _as_list(row["useful"], "useful", r) if row.get("useful") is not None else None
        steps = _as_list(row["steps"], "steps", r) if row.get("steps") is not None else None
        if useful is None:
            useful = [s > 0 for s in steps] if steps is not None else [False] * len(texts)
        if steps is None:
            steps = [int(bool(u)) for u in useful]
        if not (len(texts) == len(steps) == len(useful)) or not texts:
            raise TaskError(f"row {r}: {col_st}, useful and steps must be non-empty lists of one length")
        bad = [j for j, (u, s) in enumerate(zip(useful, steps)) if bool(u) != (int(s) > 0)]
        if labelled and bad:
            raise TaskError(f"row {r}: statement {bad[0]} has useful={useful[bad[0]]} but step={steps[bad[0]]}; "
                            f"useful statements have step >= 1, the others step 0")
        choices = ""
        if row.get("choices"):
            choices = " ".join(f"{chr(65 + i)} ) {c}" for i, c in enumerate(_as_list(row["choices"], "choices", r)))
        question = template.format(question=str(row[col_q]).strip(), choices=choices).replace("  ", " ")
        out.append(ReasoningPrompt(tuple(Statement(t, bool(u), int(s)) for t, u, s in zip(texts, useful, steps)),
                                   str(row[col_a]).strip(), prefix, question))
    return _finish(out, path, style, corrupt, n_corrupt, seed, labelled)


def _finish(out: list[ReasoningPrompt], path: Path, style: str, corrupt: str | None, n_corrupt: int, seed: int,
            labelled: bool, **extra: Any) -> ReasoningPrompts:
    if not out:
        raise TaskError(f"{path.name} has no rows")
    if corrupt is not None:
        out = corrupted(out, corrupt, n_corrupt, seed)
    params = {"path": str(path), "style": style, "n_prompts": len(out), "corrupt": corrupt,
              "n_corrupt": n_corrupt, "seed": seed, **extra}
    return ReasoningPrompts(style, params, tuple(out), labelled)


# --------------------------------------------------------------------------- ProofWriter's own files
def _is_published_proofwriter(path: Path) -> bool:
    """Whether ``path`` is ProofWriter's published JSON Lines (``theory`` and ``questions`` per row)."""
    row = _first_row(path)
    return isinstance(row, dict) and "questions" in row and "triples" in row


def parse_proof(proof: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The statement ids and the (premise, conclusion) edges of one ProofWriter proof string.

    ``"[(((triple1 triple2) -> rule1))]"``: rule1 applies to triple1 and triple2;
    ``"[(((((triple6) -> rule2) triple3) -> rule1))]"``: rule2 applies to triple6, then rule1 to
    rule2's conclusion and triple3; ``"[(triple4)]"``: the fact itself (depth 0). A group
    ``( … )`` followed by ``-> X`` makes every id of the group a premise of X, whose conclusion
    then stands for the group."""
    import re

    tokens = re.findall(r"\(|\)|->|[A-Za-z]+\d+", proof)
    stack: list[list] = [[]]
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    arrow = False

    def flat(items):
        for x in items:
            yield from (flat(x) if isinstance(x, list) else (x,))

    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) < 2:
                raise TaskError(f"unbalanced proof {proof!r}")
            done = stack.pop()
            stack[-1].append(done[0] if len(done) == 1 else done)
        elif tok == "->":
            arrow = True
        else:
            if tok not in nodes:
                nodes.append(tok)
            if arrow:  # the group so far are the premises of this rule; its conclusion replaces them
                edges += [(a, tok) for a in flat(stack[-1]) if (a, tok) not in edges]
                stack[-1][:] = [tok]
                arrow = False
            else:
                stack[-1].append(tok)
    if len(stack) != 1 or not nodes:
        raise TaskError(f"cannot parse proof {proof!r}")
    return nodes, edges


def proof_steps(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Reasoning step of each proof node: 1 + (depth − its longest path to the conclusion), so
    the leaves of the deepest branch are step 1 and the final rule is step depth + 1 (the
    repository's ``label_parser`` class, 1-based)."""
    out_edges: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        out_edges[a].append(b)
    dist: dict[str, int] = {}

    def longest(n: str, seen: tuple = ()) -> int:
        if n in seen:
            raise TaskError(f"the proof has a cycle through {n}")
        if n not in dist:
            dist[n] = max((1 + longest(m, seen + (n,)) for m in out_edges[n]), default=0)
        return dist[n]

    depth = max(longest(n) for n in nodes)
    return {n: depth - dist[n] + 1 for n in nodes}


FORMS = ("toolkit", "repository")
# the repository's numbers of statements m, one probe each (src/rtask/proofwriter_probe.py:193)
SIZES = (1, 2, 4, 8, 12, 16, 20, 24)
PER_SIZE = 1024  # its data_num (proofwriter_probe.py:194)
GROUP_NAME = ("statements in the context, m (the repository's ProofWriter probe, proofwriter_probe.py:193-209; "
              "m = 1 holds its depth-0 questions, whatever their context)")


# the folders of ProofWriter's CWA folder the repository reads (src/utils.py:451; not depth-3ext,
# depth-3ext-NatLang, NatLang or birds-electricity, which repeat or paraphrase these theories)
DEPTH_FOLDERS = ("depth-0", "depth-1", "depth-2", "depth-3", "depth-5")


def proofwriter_files(path: str | Path) -> list[Path]:
    """The published files a path stands for: the file itself, or for a folder its
    ``meta-{test,dev,train}.jsonl`` and those of the repository's ``depth-N`` folders
    (:data:`DEPTH_FOLDERS`; ProofWriter's ``CWA`` folder), in the order its probe pools them:
    every test file, then every dev file, then every train file, each in the folders' order
    (``src/utils.py:450-548``, ``proofwriter_probe.py:192``: ``test_dict[d] + dev_dict[d] +
    train_dict[d]``), so that ``by_size`` with its seed (42) draws its very sets."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TaskError(f"no such data file or folder: {path}")
    folders = [path, *(path / d for d in DEPTH_FOLDERS if (path / d).is_dir())]
    files = [d / f"meta-{s}.jsonl" for s in ("test", "dev", "train") for d in folders]
    files = [f for f in files if f.is_file()]
    if not files:
        raise TaskError(f"{path} holds no meta-train/dev/test.jsonl (nor {', '.join(DEPTH_FOLDERS)} folders with "
                        f"them): give ProofWriter's CWA folder, one of its depth-N folders, or one file")
    return files


def proofwriter_questions(path: str | Path, *, n_prompts: int | None = None, max_depth: int | None = None,
                          n_shots: int = 0, seed: int = 0, form: str = "toolkit",
                          by_size: Sequence[int] | None = None, min_depth: int | None = None) -> list[ReasoningPrompt]:
    """Labelled prompts from ProofWriter's published files (``meta-{train,dev,test}.jsonl`` of a
    ``depth-N`` folder, or a folder of them: :func:`proofwriter_files`): one prompt per question
    that has a proof, as the repository's ``preprocess_proofwriter`` and probe script keep them
    (no ``NAF`` — negation as failure —, a single proof, no ``OR``:
    ``src/rtask/proofwriter_probe.py:192, 259``); a proof that applies one rule twice (its
    statement would sit at two steps) is left out too.

    Statements are the theory's ``triples`` then its ``rules`` (in the file's order), useful
    where the proof names them, with :func:`proof_steps` as steps; the answer is "True"/"False".
    ``max_depth`` keeps questions of ``QDep`` ≤ it (the repository probes depth ≤ 1), ``min_depth``
    those of ``QDep`` ≥ it (its robustness experiment samples depth 1 alone, ``:259``).
    ``n_shots`` prepends that many other questions with their theory and answer, so the
    statements probed are the last theory's.

    ``form``: "toolkit" renders "{statements joined by spaces} Question : {question} Answer :",
    shots drawn with ``seed`` from the questions kept, distinct; "repository" renders as its probe
    (``proofwriter_probe.py:79-93``): the statements joined with nothing between them, then
    " {question} True or False?", after shots "{theory} {question}: True or False?{answer}" each
    ending a line, drawn with replacement from every question with a proof (any depth, ``OR``
    kept), as ``random.choices(train_data, k=icl_num)`` draws them; its answers are scored after
    its evaluator's text (``src/llama.py:33``), each prompt's ``scored_text``: the same shots,
    the statements joined by spaces, then " {question}: True or False?".

    ``by_size``: the repository's probing sets (``proofwriter_probe.py:192-209``): questions of
    depth ≤ 1, those of depth 1 grouped by their number of statements m (triples + rules), those
    of depth 0 in group 1; each depth shuffled with ``seed`` and its questions dealt into the
    listed groups, at most ``n_prompts`` per group (default 1024, its ``data_num``), keeping a
    question only if its proof names at least depth + 1 statements (``:200``). Each prompt's
    ``group`` is its m; the prompts come group by group, smallest m first.
    """
    check_choice("form", form, FORMS)
    if by_size is not None:
        by_size = _sizes(by_size)
        if max_depth not in (None, 0, 1):
            raise TaskError(f"by_size follows the repository's depth <= 1 protocol; max_depth must be 0 or 1 "
                            f"(got {max_depth})")
        max_depth = 1 if max_depth is None else max_depth
    files = proofwriter_files(path)
    items, shot_pool = [], []
    for f in files:
        for r, row in enumerate(_read_jsonl(f)):
            try:
                texts = {k: v["text"] for k, v in row["triples"].items()}
                texts.update({k: v["text"] for k, v in row["rules"].items()})
                questions = row["questions"]
            except (KeyError, TypeError, AttributeError):
                raise TaskError(f"{f.name}, row {r}: a ProofWriter row needs triples/rules with 'text' and "
                                f"questions") from None
            theory = str(row.get("theory", " ".join(texts.values())))
            for qid, q in questions.items():
                proof = str(q.get("proofs", ""))
                if q.get("QLen", "") == "" or "NAF" in proof or not proof.strip():
                    continue  # no proof (unknown under CWA) or negation as failure
                answer = "True" if q["answer"] in (True, "True", "true") else "False"
                question = str(q["question"]).strip()
                shot_pool.append((theory, question, answer))  # the repository's in-context pool keeps OR proofs
                depth = int(q.get("QDep", 0))
                if "OR" in proof or (max_depth is not None and depth > max_depth) or \
                        (min_depth is not None and depth < min_depth):
                    continue  # several proofs, or a depth not asked for
                nodes, edges = parse_proof(proof)
                unknown = [n for n in nodes if n not in texts]
                if unknown:
                    raise TaskError(f"{f.name}, row {r}, {qid}: the proof names {unknown[0]}, which the theory lacks")
                try:
                    steps = proof_steps(nodes, edges)
                except TaskError:  # a rule applied twice in one chain: one statement at two steps, no single label
                    continue
                statements = tuple(Statement(t, k in steps, steps.get(k, 0)) for k, t in texts.items())
                items.append((statements, question, answer, depth))
    where = files[0].name if len(files) == 1 else str(path)
    if not items:
        raise TaskError(f"{where} has no question with a single proof"
                        + (f" of depth <= {max_depth}" if max_depth is not None else "")
                        + (f" and >= {min_depth}" if min_depth is not None else ""))
    groups: list[int | None] = [None] * len(items)
    if by_size is not None:
        items, groups = _by_size(items, by_size, PER_SIZE if n_prompts is None else n_prompts, seed, where)
        n_prompts = None
    if form == "toolkit":
        template = STYLES["proofwriter"][4]
        out = _with_shots([(st, template.format(question=q), a) for st, q, a, _ in items], n_prompts, n_shots, seed)
    else:
        out = _repository_shots(items[:n_prompts], shot_pool, n_shots, seed)
    return [replace(p, group=g) for p, g in zip(out, groups)]


def _sizes(by_size: Sequence[int] | str) -> tuple[int, ...]:
    """The groups asked for, ascending ("repository": the repository's eight)."""
    if isinstance(by_size, str) and by_size.strip() == "repository":
        return SIZES
    values = [by_size] if isinstance(by_size, (int, str)) else list(by_size)
    try:
        sizes = [int(v) for part in values for v in (str(part).split(",") if isinstance(part, str) else [part])]
    except ValueError:
        raise TaskError(f"by_size must be statement counts such as 1,2,4,8 or 'repository' (got {by_size!r})") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise TaskError(f"by_size must be distinct statement counts >= 1 (got {by_size!r})")
    return tuple(sorted(sizes))


def _by_size(items: list[tuple], sizes: tuple[int, ...], per: int, seed: int, where: str
             ) -> tuple[list[tuple], list[int | None]]:
    """The repository's sampling (``proofwriter_probe.py:195-209``): depth 0 then depth 1, each
    shuffled, dealt into groups of m (depth 0: group 1) while a group has fewer than ``per``."""
    check_range("n_prompts", per, 1)
    rng = random.Random(seed)
    chosen: dict[int, list[tuple]] = {m: [] for m in sizes}
    for depth in (0, 1):
        pool = [it for it in items if it[3] == depth]
        rng.shuffle(pool)
        for it in pool:
            if sum(s.useful for s in it[0]) < depth + 1:
                continue  # the proof must name a statement per label column (its :200 check)
            m = 1 if depth == 0 else len(it[0])
            if m in chosen and len(chosen[m]) < per:
                chosen[m].append(it)
    if not any(chosen.values()):
        raise TaskError(f"{where} has no depth-0/1 question in the groups m = {', '.join(map(str, sizes))}")
    empty = [str(m) for m in sizes if not chosen[m]]
    if empty:  # the repository would fail on an empty set; here the other groups are probed, and this is said
        warnings.warn(f"{where}: no depth-0/1 question for m = {', '.join(empty)}; those groups are left out",
                      stacklevel=3)
    out = [(it, m) for m in sizes for it in chosen[m]]
    return [it for it, _ in out], [m for _, m in out]


def _repository_shots(items: list[tuple], pool: list[tuple], n_shots: int, seed: int) -> list[ReasoningPrompt]:
    """Prompts as the repository's probe renders them (``proofwriter_probe.py:79-93``): shots
    "{theory} {question}: True or False?{answer}\\n" drawn with replacement from ``pool``, the
    statements with nothing between them, then " {question} True or False?"."""
    check_range("n_shots", n_shots, 0)
    rng = random.Random(seed)
    out = []
    for statements, question, answer, _ in items:
        shots = "".join(f"{t} {q}: True or False?{a}\n" for t, q, a in rng.choices(pool, k=n_shots))
        # scored as the repository's evaluator renders it: the theory (its statements joined by spaces), then
        # "{question}: True or False?" (src/llama.py:33; shots are the probe's here, not a second draw)
        out.append(ReasoningPrompt(statements, answer, shots, f"{question} True or False?", sep="", lead="",
                                   scored_as=(" ", f"{question}: True or False?"), special_tokens=False))
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path.name}, line {line_no}: not JSON ({e.msg})") from None
    return rows


def _with_shots(items: list[tuple], n_prompts: int | None, n_shots: int, seed: int) -> list[ReasoningPrompt]:
    """Prompts from (statements, question text, answer) items, each after ``n_shots`` other items
    with their answers (drawn with ``seed``), as the repository's in-context examples."""
    check_range("n_shots", n_shots, 0, len(items) - 1)
    rng = random.Random(seed)
    out = []
    for i, (statements, question, answer) in enumerate(items[:n_prompts]):
        picked: list[int] = []
        while len(picked) < n_shots:  # distinct other items, without listing all of them per prompt
            j = rng.randrange(len(items))
            if j != i and j not in picked:
                picked.append(j)
        shots = [items[j] for j in picked]
        prefix = " ".join(" ".join(s.text for s in st) + " " + q + " " + a for st, q, a in shots)
        out.append(ReasoningPrompt(statements, answer, prefix, question))
    return out


def _is_published_arc(path: Path) -> bool:
    """Whether ``path`` is ARC's reasoning-annotated JSON Lines from STREET (Ribeiro et al. 2023),
    which the repository reads: ``textual_logical_units`` and ``reasoning_graph_edges`` per row."""
    row = _first_row(path)
    return isinstance(row, dict) and "textual_logical_units" in row and "reasoning_graph_edges" in row


def _first_row(path: Path) -> Any:
    if path.suffix.lower() != ".jsonl":
        return None
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        return json.loads(first)
    except json.JSONDecodeError:
        return None


ARC_SPLITS = ("train", "dev", "test")
ARC_GROUP_NAME = ("proof depth (the repository's ARC probe, one probe per depth <= 2 over train, dev and test "
                  "pooled: arc_probe.py:180)")


def _arc_files(path: Path) -> list[Path]:
    """STREET's ARC files: ``path`` itself, or a folder's reasoning_annotated_{train,dev,test}.jsonl
    (the repository's ``preprocess_arc``, ``src/utils.py:550-692``), train first."""
    if path.is_file():
        return [path]
    files = [path / f"reasoning_annotated_{s}.jsonl" for s in ARC_SPLITS]
    if not any(f.is_file() for f in files):
        raise TaskError(f"{path} holds no reasoning_annotated_train/dev/test.jsonl (STREET's ARC files)")
    return [f for f in files if f.is_file()]


def arc_questions(path: str | Path, *, n_prompts: int | None = None, max_depth: int | None = None,
                  n_shots: int = 0, seed: int = 0, form: str = "toolkit") -> list[ReasoningPrompt]:
    """Labelled prompts from ARC's reasoning-annotated files of STREET
    (``reasoning_annotated_{train,dev,test}.jsonl``), as the repository's ``preprocess_arc``
    reads them: the textual logical units are the statements (in id order) but for the one
    that says "The answer is …"; the reasoning graph's edges between them (both ends before the
    answer unit) are the proof. A unit in the graph is useful, with :func:`proof_steps` as its
    step (the whole graph: the repository keeps its longest path as a chain, and its parser of
    that chain keeps only the first step, so every later unit lands in the final step's class); the others are
    not used. The question is "Question : {question} {options} Answer :", the answer the
    first of ``answer``. ``max_depth``, ``n_shots``: as :func:`proofwriter_questions` (the
    repository probes depth ≤ 2).

    ``form="repository"`` renders as the repository's ARC probe (``arc_probe.py:66-93``): the
    units with nothing between them, then " " and the question with its options appended
    (``question + " ".join(options)``, ``src/utils.py:576``); ``n_shots`` shots
    "{context} {question}{answer}\\n" drawn with replacement from the train split (the folder's
    train file; a single file's own rows) before it; no special tokens; each prompt's ``group``
    its proof depth (the longest chain of the graph's edges, ``dag_longest_path``), all splits
    pooled, as the repository probes each depth apart; ``n_prompts`` then counts per depth (a
    seeded sample where a depth has more; None: every question, as the repository probes).
    """
    path = Path(path)
    check_choice("form", form, FORMS)
    files = _arc_files(path)
    items, shots_pool = [], []
    rows = [(f, r, row) for f in files for r, row in enumerate(_read_jsonl(f))]
    for f, r, row in rows:
        try:
            units = {str(k): str(v).strip() for k, v in row["textual_logical_units"].items()}
            edges_in = row["reasoning_graph_edges"]
            answer = row["answer"][0] if isinstance(row["answer"], list) else row["answer"]
            question, options = str(row["question"]).strip(), row.get("options", [])
        except (KeyError, TypeError, AttributeError, IndexError):
            raise TaskError(f"{f.name}, row {r}: an ARC (STREET) row needs textual_logical_units (id -> text), "
                            f"reasoning_graph_edges, question and answer") from None
        # as preprocess_arc (src/utils.py:566-571): every "The answer is" unit left out, the last one the cut
        answers = [k for k, v in units.items() if "The answer is" in v]
        cut = int(answers[-1]) if answers else max(map(int, units)) + 1
        edges = []
        for e in edges_in:
            for a in e["antecedents"]:
                if int(a) < cut and int(e["consequent"]) < cut and (str(a), str(e["consequent"])) not in edges:
                    edges.append((str(a), str(e["consequent"])))
        nodes = list(dict.fromkeys(n for edge in edges for n in edge))
        steps = proof_steps(nodes, edges) if nodes else {}
        depth = max(steps.values(), default=1) - 1  # the longest chain's edges
        repo_question = str(row["question"]) + " ".join(str(o) for o in options)  # src/utils.py:576, as it is
        if f.name == "reasoning_annotated_train.jsonl" or path.is_file():  # shots from the train split
            shots_pool.append((str(row.get("context", "")), repo_question, str(answer)))
        if max_depth is not None and depth > max_depth:
            continue
        statements = tuple(Statement(t, k in steps, steps.get(k, 0))
                           for k, t in sorted(units.items(), key=lambda kv: int(kv[0])) if k not in answers)
        if form == "repository":  # the units as they are, nothing between them (arc_probe.py:79-85)
            raw = {str(k): str(v) for k, v in row["textual_logical_units"].items()}
            statements = tuple(replace(s, text=raw[k]) for s, k in zip(
                statements, [k for k in sorted(units, key=int) if k not in answers]))
            items.append((statements, repo_question, str(answer).strip(), depth))
            continue
        opts = " ".join(str(o).strip() for o in options)
        template = STYLES["arc"][4]
        items.append((statements, template.format(question=question, choices=opts).replace("  ", " "),
                      str(answer).strip()))
    if not items:
        raise TaskError(f"{path.name} has no question" + (f" of depth <= {max_depth}" if max_depth is not None else ""))
    if form == "repository":
        return _arc_repository_prompts(_per_depth(items, n_prompts, seed), shots_pool, n_shots, seed)
    return _with_shots(items, n_prompts, n_shots, seed)


def _per_depth(items: list[tuple], n_prompts: int | None, seed: int) -> list[tuple]:
    """At most ``n_prompts`` items of each depth (the last field), a seeded sample where a depth has
    more, in their order; all with None (the repository probes every question)."""
    if n_prompts is None:
        return items
    rng = random.Random(seed)
    keep: set[int] = set()
    for depth in sorted({it[-1] for it in items}):
        at = [i for i, it in enumerate(items) if it[-1] == depth]
        keep.update(at if len(at) <= n_prompts else rng.sample(at, n_prompts))
    return [it for i, it in enumerate(items) if i in keep]


def _arc_repository_prompts(items: list[tuple], pool: list[tuple], n_shots: int, seed: int) -> list[ReasoningPrompt]:
    """ARC prompts as the repository's probe renders them (``arc_probe.py:66-93``): shots
    "{context} {question}{answer}\\n" drawn with replacement from ``pool`` (the train split), the
    units with nothing between them, then " {question}"; tokenised without special tokens; the
    group is the proof depth."""
    check_range("n_shots", n_shots, 0)
    if n_shots and not pool:
        raise TaskError("n_shots needs the train split (reasoning_annotated_train.jsonl) to draw shots from")
    rng = random.Random(seed)
    out = []
    for statements, question, answer, depth in items:
        shots = "".join(f"{c} {q}{a}\n" for c, q, a in rng.choices(pool, k=n_shots)) if n_shots else ""
        out.append(ReasoningPrompt(statements, answer, shots, question, sep="", lead="", group=depth,
                                   special_tokens=False))
    return out


def _file_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, style: str = "proofwriter",
                   **params: Any) -> list[Example]:
    return [Example(p.scored_text, p.answer) for p in load_reasoning(style=style, n_prompts=n, seed=seed, **params)]


for _style, _summary, _columns in (
        ("proofwriter", "ProofWriter-style theories from a local .jsonl/.csv (Hou et al. 2023)",
         "statements (list), question, answer; optional useful (0/1 list), steps (int list, 0 = unused)"),
        ("arc", "ARC-style questions with supporting facts from a local .jsonl/.csv",
         "facts (list), question, answer; optional choices (list), useful (0/1 list), steps (int list)")):
    register(TaskInfo(
        _style, _summary, None,
        lambda n=200, seed=0, tokenizer=None, _s=_style, **kw: _file_examples(n, seed, tokenizer, _s, **kw),
        {"path": (None, f"local .jsonl/.json/.csv file (required; CLI --data); columns: {_columns}; "
                        f"CSV cells with lists hold JSON"),
         "corrupt": (None, "shuffle | drop | negate"), "n_corrupt": (1, "statements dropped or negated"),
         "seed": (0, "random seed"),
         "max_depth": (None, "published ProofWriter / ARC (STREET) files: questions of proof depth <= this"),
         "n_shots": (0, "published ProofWriter / ARC (STREET) files: in-context questions before the prompt"),
         **({"min_depth": (None, "published ProofWriter files: questions of proof depth >= this (min_depth=1 "
                                 "max_depth=1: the repository's robustness pool)")} if _style == "proofwriter" else {}),
         **({"form": ("toolkit", "published ProofWriter files: toolkit ('Question : … Answer :') | repository "
                                 "(its probe's text: statements unseparated, '… True or False?'; answers scored "
                                 "after its evaluator's '{theory} {question}: True or False?')"),
             "by_size": (None, "published ProofWriter files (or their CWA folder): the repository's per-m probing "
                               "sets, e.g. 1,2,4,8 or 'repository' (1,2,4,…,24); --n-prompts is then per group")}
            if _style == "proofwriter" else {}),
         **({"form": ("toolkit", "ARC (STREET) files or their folder: toolkit ('Question : … Answer :') | repository "
                                 "(its probe's protocol: train, dev and test pooled, one probe per proof depth <= 2, "
                                 "units unseparated, shots from the train split)")} if _style == "arc" else {})},
        labelled=lambda n_prompts=None, seed=0, _s=_style, **kw: load_reasoning(style=_s, n_prompts=n_prompts,
                                                                               seed=seed, **kw)))
