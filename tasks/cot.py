"""Chain-of-thought arithmetic prompts in named variants (Rai & Yao 2024, "An investigation of
neuron activation as a unified lens to explain chain-of-thought eliciting arithmetic reasoning").

The variants follow neuron-analysis-cot-arithmetic-reasoning's prompt files: ``data/prompts/
cot_prompt.txt:1-60`` (full), ``text_only.txt:1-60``, ``equation_only.txt:1-35`` and ``data/prompts.py:35-59``
(``std_prompts``, no CoT); their exemplars are GSM8K problems in "Question: … The answer is N." blocks.

A problem is a question plus worked steps; each step is a sentence with the equation it
computes. A prompt is ``n_shots`` solved exemplars and one query, all in one variant:

- ``full``: each step's sentence and its equation ("Tom gave Mary 3 ball , 5 + 3 = 8 ."),
  then "The result is 8 ." (GSM8K: the worked solution without calculator annotations, then
  "The answer is 72 .").
- ``text_only``: the sentences with the equations' results stated in words instead
  ("Tom gave Mary 3 ball , Mary had 8 ball ."); GSM8K: inline equations replaced by their
  results.
- ``equation_only``: the equations alone ("5 + 3 = 8 .").
- ``no_cot``: no steps, only "The result is 8 .".

The query is cut where its variant first states the final answer, so that answer is the
next token: ``full`` and ``equation_only`` end at the last equation's "=", ``text_only`` at
the last sentence's "… Mary had", ``no_cot`` at "The result is". The same problems and the
same exemplars are used for every variant (same seed), so variants differ only in format.

Sources: :func:`cot_arithmetic` generates problems from the embedded model's vocabulary;
:func:`load_gsm8k` reads GSM8K-style JSON Lines (``question``/``answer`` columns with
``<<a*b=c>>`` annotations and a final ``#### N``) with ``datasets``. :func:`cot_variants`
gives the same problems in several variants at once (the data of ``nr.neurons``).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .base import (Example, Examples, TaskError, TaskInfo, check_choice, check_range, json_lines, register,
                   single_token_id)
from .words import NAMES, OBJECTS

VARIANTS = ("full", "text_only", "equation_only", "no_cot")
# the words the synthetic problems use (the embedded tokenizer is built to contain them)
VOCABULARY = frozenset("Q A : . , ? had gave What is the result The = + -".split()) | set(NAMES) | set(OBJECTS)


@dataclass(frozen=True)
class Step:
    """One worked step as each variant writes it (each ends with the step's result)."""

    full: str
    text_only: str
    equation_only: str
    result: str


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[Step, ...]
    answer: str
    phrase: str = "The result is"  # how the final answer is introduced


@dataclass(frozen=True)
class CotPrompt:
    """A prompt in one variant, its answer (the next token) and the problem it came from."""

    prompt: str
    answer: str
    variant: str
    problem: int


def _step(s: Step, variant: str) -> str:
    return f"{getattr(s, variant)} ."


def solution(p: Problem, variant: str) -> str:
    """The full worked solution of ``p`` in ``variant`` (as the exemplars show it)."""
    steps = [] if variant == "no_cot" else [_step(s, variant) for s in p.steps]
    return " ".join(steps + [f"{p.phrase} {p.answer} ."])


def query(p: Problem, variant: str) -> str:
    """The solution of ``p`` in ``variant`` cut just before it first states the answer: before
    the answer's last occurrence in the last step (its result), else at the final phrase."""
    if variant == "no_cot":
        return p.phrase
    done = " ".join(_step(s, variant) for s in p.steps[:-1])
    last = _step(p.steps[-1], variant)
    hit = [m.start() for m in re.finditer(rf" {re.escape(p.answer)}(?!\d|[.,]\d)", last)]
    tail = last[: hit[-1]] if hit else f"{last} {p.phrase}"
    return f"{done} {tail}".strip()


def render(problems: Sequence[Problem], n_shots: int, variant: str, seed: int) -> list[CotPrompt]:
    """Each problem as a query after ``n_shots`` other problems as exemplars (seeded choice,
    the same for every variant)."""
    check_choice("variant", variant, VARIANTS)
    if len(problems) <= n_shots:
        raise TaskError(f"need more than n_shots={n_shots} problems to draw exemplars from (got {len(problems)})")
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(problems):
        shots = rng.sample([j for j in range(len(problems)) if j != i], n_shots)
        text = " ".join(f"Q : {problems[j].question} A : {solution(problems[j], variant)}" for j in shots)
        out.append(CotPrompt(f"{text} Q : {p.question} A : {query(p, variant)}".strip(), p.answer, variant, i))
    return out


# --------------------------------------------------------------------------- synthetic problems
def _event(rng: random.Random, owner: str, obj: str, amount: int, plus: bool) -> str:
    other = rng.choice([n for n in NAMES if n != owner])
    return f"{other} gave {owner} {amount} {obj}" if plus else f"{owner} gave {other} {amount} {obj}"


def sample_problem(rng: random.Random, n_steps: int, max_n: int) -> Problem:
    """A word problem in the embedded vocabulary: someone had x things, then 1–2 transfers."""
    owner, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    total = rng.randint(2, max_n)
    sentences, steps = [f"{owner} had {total} {obj}"], []
    for _ in range(n_steps):
        plus = (rng.random() < 0.5 or total < 2) and total < 99  # results stay one token (0..99)
        amount = rng.randint(1, min(max_n, 99 - total) if plus else total - 1)
        new = total + amount if plus else total - amount
        event = _event(rng, owner, obj, amount, plus)
        sentences.append(event)
        equation = f"{total} {'+' if plus else '-'} {amount} = {new}"
        steps.append(Step(f"{event} , {equation}", f"{event} , {owner} had {new} {obj}", equation, str(new)))
        total = new
    question = " . ".join(sentences) + " . What is the result ?"
    return Problem(question, tuple(steps), str(total))


def cot_arithmetic(n_prompts: int = 200, variant: str = "full", *, n_shots: int = 1, n_steps: int = 2,
                   max_n: int = 20, seed: int = 0, tokenizer: Any | None = None) -> list[CotPrompt]:
    """``n_prompts`` synthetic word problems as ``variant`` prompts (see module doc)."""
    check_range("n_prompts", n_prompts, 1)
    check_range("n_shots", n_shots, 0, 8)
    check_range("n_steps", n_steps, 1, 3)
    check_range("max_n", max_n, 2, 30)
    check_choice("variant", variant, VARIANTS)
    rng = random.Random(seed)
    problems = [sample_problem(rng, n_steps, max_n) for _ in range(n_prompts + n_shots)]
    return render(problems, n_shots, variant, seed)[:n_prompts]


def cot_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, variant: str = "full", n_shots: int = 1,
                 n_steps: int = 2, max_n: int = 20) -> list[Example]:
    """:func:`cot_arithmetic` as plain examples (``evaluate --task cot_arithmetic``)."""
    return [Example(p.prompt, p.answer) for p in cot_arithmetic(n, variant, n_shots=n_shots, n_steps=n_steps,
                                                                 max_n=max_n, seed=seed, tokenizer=tokenizer)]


# --------------------------------------------------------------------------- GSM8K files
_ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
_INLINE_EQ = re.compile(r"[$\d.,]+(?:\s*[-+*/x×]\s*[$\d.,]+)+\s*=\s*")


def parse_gsm8k(question: str, answer: str, phrase: str = "The answer is") -> Problem:
    """A GSM8K row as a :class:`Problem`: one step per solution line that has calculator
    annotations. ``full`` is the line without them (its inline equations stay), ``text_only``
    the line with inline equations replaced by their results, ``equation_only`` the
    annotations ("48/2 = 24")."""
    lines = [ln.strip() for ln in answer.split("\n") if ln.strip()]
    final = _final_answer(answer)
    steps = []
    for ln in lines[:-1]:
        eqs = _ANNOTATION.findall(ln)
        if not eqs:
            continue
        text = _ANNOTATION.sub("", ln).rstrip(".").strip()
        eq = " , ".join(f"{a.strip()} = {b.strip()}" for a, b in eqs)
        steps.append(Step(text, _INLINE_EQ.sub("", text), eq, eqs[-1][1].strip()))
    if not steps:
        raise TaskError("a GSM8K answer needs at least one <<a=b>> annotated step")
    return Problem(question.strip(), tuple(steps), final, phrase)


def load_gsm8k_problems(path: str | Path, need_steps: bool = True) -> list[Problem]:
    """The rows of a GSM8K-style JSON Lines file (columns ``question``, ``answer``) as
    :class:`Problem` s. ``need_steps``: every answer needs ``<<a=b>>`` annotated steps (the
    variants are built from them); without, a row needs only its final ``#### N`` (for
    prompts the model completes itself)."""
    path = Path(path)
    what = "GSM8K-style JSON Lines with question/answer columns"
    if not path.is_file():
        raise TaskError(f"no such file: {path} ({what})")
    problems = []
    for line, r in json_lines(path, what):
        missing = {"question", "answer"} - set(r)
        if missing:
            raise TaskError(f"{path.name} line {line} lacks {sorted(missing)}: GSM8K files have question and answer")
        if not all(isinstance(r[c], str) for c in ("question", "answer")):
            raise TaskError(f"{path.name} line {line}: question and answer must be strings")
        try:
            problems.append(parse_gsm8k(r["question"], r["answer"]) if need_steps else
                            Problem(r["question"].strip(), (), _final_answer(r["answer"]), "The answer is"))
        except TaskError as e:
            raise TaskError(f"{path.name} line {line}: {e}") from None
    return problems


def _final_answer(answer: str) -> str:
    lines = [ln.strip() for ln in answer.split("\n") if ln.strip()]
    if not lines or not lines[-1].startswith("####"):
        raise TaskError(f"a GSM8K answer ends with '#### N' (got {answer[-40:]!r})")
    return lines[-1][4:].strip().replace(",", "")


def load_gsm8k(path: str | Path, variant: str = "full", *, n_prompts: int | None = None, n_shots: int = 2,
               seed: int = 0, tokenizer: Any | None = None) -> list[CotPrompt]:
    """GSM8K-style problems from a local JSON Lines file (columns ``question``, ``answer``),
    as ``variant`` prompts. With ``tokenizer``, problems whose answer is not a single token
    are left out (the measurements need the answer to be the next token)."""
    problems = load_gsm8k_problems(path)
    if tokenizer is not None:
        problems = [p for p in problems if single_token_id(tokenizer, p.answer) is not None]
    prompts = render(problems, n_shots, variant, seed)
    return prompts[:n_prompts] if n_prompts else prompts


# --------------------------------------------------------------------------- variants together
@dataclass(frozen=True)
class CotVariants:
    """The same problems in several variants (the data of ``nr.neurons``): ``prompts[v]`` holds
    variant ``v``'s prompts, problem k at index k in every variant. ``params`` (with ``seed``)
    are stored in results as ``task_params``."""

    made_by: ClassVar[str] = "nr.tasks.cot_variants(...)"
    task: str
    params: dict[str, Any]
    prompts: dict[str, tuple[CotPrompt, ...]]

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.prompts)

    def variant(self, name: str) -> Examples:
        """One variant's prompts with this object's task and params (plus ``variant``), for
        ``nr.evaluate`` or the neuron experiments that take one prompt set."""
        if name not in self.prompts:
            raise TaskError(f"variant {name!r} is not in this data (it has {', '.join(self.prompts)})")
        return Examples(self.task, {**self.params, "variant": name}, self.prompts[name])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(next(iter(self.prompts.values())))

    def __repr__(self) -> str:
        return f"CotVariants(n={len(self)}, variants={list(self.prompts)}, params={self.params})"


def cot_variants(n_prompts: int = 200, variants: Sequence[str] = VARIANTS, *, n_shots: int = 1, n_steps: int = 2,
                 seed: int = 0, data: str | Path | None = None, tokenizer: Any | None = None) -> CotVariants:
    """``n_prompts`` problems in each of ``variants`` (in that order, duplicates dropped).

    The problems are synthetic (:func:`cot_arithmetic`, ``n_steps`` per problem) or, with
    ``data``, read from a GSM8K-style JSON Lines file (:func:`load_gsm8k`; with ``tokenizer``,
    problems whose answer is not one token are left out); each prompt follows ``n_shots``
    solved exemplars of the same variant.
    """
    names = list(dict.fromkeys([variants] if isinstance(variants, str) else variants))
    if not names:
        raise TaskError(f"give at least one variant; choose from: {', '.join(VARIANTS)}")
    for v in names:
        if v not in VARIANTS:
            raise TaskError(f"unknown variant {v!r}; choose from: {', '.join(VARIANTS)}")
    if data is not None:
        sets = {v: load_gsm8k(data, v, n_prompts=n_prompts, n_shots=n_shots, seed=seed, tokenizer=tokenizer)
                for v in names}
    else:
        sets = {v: cot_arithmetic(n_prompts, v, n_shots=n_shots, n_steps=n_steps, seed=seed, tokenizer=tokenizer)
                for v in names}
    params = {"n_prompts": n_prompts, "variants": names, "n_shots": n_shots, "n_steps": n_steps, "seed": seed,
              "source": str(data) if data is not None else "synthetic"}
    return CotVariants("cot_arithmetic", params, {v: tuple(p) for v, p in sets.items()})


def solution_example(rng: random.Random, variant: str = "mixed", max_shots: int = 2, n_steps: int = 0,
                     max_n: int = 20) -> Example:
    """One example of :func:`cot_solution_examples` drawn from ``rng`` (the embedded model's
    training script draws its chain-of-thought sequences with it)."""
    v = rng.choice(["full", "equation_only"]) if variant == "mixed" else variant
    shots = [sample_problem(rng, n_steps or rng.randint(1, 3), max_n) for _ in range(rng.randint(0, max_shots))]
    p = sample_problem(rng, n_steps or rng.randint(1, 3), max_n)
    text = " ".join(f"Q : {s.question} A : {solution(s, v)}" for s in shots)
    return Example(f"{text} Q : {p.question} A :".strip(), solution(p, v))


def cot_solution_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, variant: str = "mixed",
                          max_shots: int = 2, n_steps: int = 0, max_n: int = 20) -> list[Example]:
    """Word problems whose answer is the whole worked solution (several tokens): 0 to
    ``max_shots`` solved exemplars (drawn per example), then "Q : … A :", answered by "step . …
    The result is N .". The data for
    teaching a model to write its own chain of thought (``nr.finetune(model, "cot_solution")``,
    then ``nr.cot_generation``). ``variant``: full, equation_only, or "mixed" (one of the two
    per example, the variants the embedded model learnt); ``n_steps``: steps per problem, 0 for
    1–3 at random."""
    check_choice("variant", variant, ("mixed", "full", "equation_only", "text_only"))
    check_range("max_shots", max_shots, 0, 3)
    check_range("n_steps", n_steps, 0, 3)
    check_range("max_n", max_n, 2, 30)
    rng = random.Random(seed)
    return [solution_example(rng, variant, max_shots, n_steps, max_n) for _ in range(n)]


register(TaskInfo("cot_solution", "word problems answered by their whole worked solution (fine-tuning data for "
                  "chain-of-thought generation)", None, cot_solution_examples,
                  {"variant": ("mixed", "full, equation_only, text_only or mixed (full or equation_only)"),
                   "max_shots": (2, "solved exemplars, 0 to this many per example"),
                   "n_steps": (0, "steps per problem (0: 1-3 at random)"),
                   "max_n": (20, "largest number drawn"), "seed": (0, "random seed")}))
register(TaskInfo("cot_arithmetic", "chain-of-thought word problems in prompt variants (Rai & Yao 2024)", None,
                  cot_examples,
                  {"variant": ("full", f"one of {', '.join(VARIANTS)}"), "n_shots": (1, "solved exemplars"),
                   "n_steps": (2, "steps per problem (1–3)"), "max_n": (20, "largest number drawn"),
                   "seed": (0, "random seed")}))
