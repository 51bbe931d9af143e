"""Chain-of-thought prompts the model completes itself (Rai & Yao 2024, the repository's
``gsm8k_inference.py`` and ``data/prompts/``).

A prompt is a file of solved exemplars followed by one question; the model *generates* its
own chain of thought and its answer, which :func:`parse_answer` reads. The prompt types are
the repository's (:data:`PROMPT_TYPES`): each is an exemplar file named as in its
``data/prompts/`` directory (``cot_prompt.txt``, ``text_only.txt``, ``equation_only.txt``,
``add_only.txt``, ``mult_only.txt``, ``incorrect_label.txt``, ``incorrect_ood_label.txt``;
``repeat.txt`` and ``standard.txt`` hold its ``data/prompts.py`` strings ``repeat_prompts``
and ``std_prompts``), plus ``zero_shot`` (no file). Files are read as the repository reads
them (``scripts/utils.py:read_file``: each line stripped, joined by newlines, then a blank
line), so its directory can be used as it is: ``prompts_dir="…/neuron-analysis-cot-arithmetic-
reasoning/data/prompts"`` with ``style="repository"``.

A :class:`PromptStyle` is the text around the exemplars: the repository's (``"Question: "``,
then ``"\\nLet's think step by step\\n"``, or a blank line for ``equation_only``; answers as
"The answer is N.") or the embedded model's (``"Q : "`` … ``"A :"``, "The result is N ."),
whose vocabulary has no "Let's". The toolkit ships exemplar files for the embedded style
(``prompts/embedded/``, two exemplars each: the embedded model's context is 256 tokens), built
from :func:`cot.sample_problem`'s word problems; ``mult_only`` has none there (that
vocabulary has no ×).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .base import TaskError, check_range
from .cot import Problem, load_gsm8k_problems, sample_problem

#: prompt type -> exemplar file (None: no exemplars)
PROMPT_TYPES: dict[str, str | None] = {
    "cot": "cot_prompt.txt", "text_only": "text_only.txt", "equation_only": "equation_only.txt",
    "add_only": "add_only.txt", "mult_only": "mult_only.txt", "incorrect_label": "incorrect_label.txt",
    "incorrect_ood_label": "incorrect_ood_label.txt", "repeat": "repeat.txt", "standard": "standard.txt",
    "zero_shot": None,
}
SHIPPED = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class PromptStyle:
    """The text around the exemplars: ``question`` starts each question; ``trigger`` follows the
    asked question (``bare`` instead for the prompt types in ``bare_types``); ``phrase``
    introduces the answer; ``stop`` starts the next exemplar (generation past it is not read);
    ``zero_shot`` is the zero-shot type's prompt before its trigger, ``zero_shot_trigger`` the
    default trigger ("Let's think step by step."), joined by a space. ``answer_prompt``: the zero-shot
    type's second question, asked after the model's reasoning up to ``zero_shot_stop`` (the
    repository's "Therefore, the answer (arabic numerals) is"); empty: no second question, the
    last number of the reasoning is read. ``strict``: an answer is read only after the phrase and
    must end in a number, as the repository reads it (else the lenient fallbacks of
    :func:`parse_answer`)."""

    name: str
    question: str
    trigger: str
    bare: str
    bare_types: tuple[str, ...]
    phrase: str
    stop: str
    zero_shot: str
    zero_shot_trigger: str = ""
    answer_prompt: str = ""
    zero_shot_stop: str = ""
    strict: bool = False


STYLES = {
    # gsm8k_inference.py:run_inference and the zero-shot "Q: … A: Let's think step by step."
    # its zero-shot answers: gsm8k_inference.py:164-186 (clean_cot_pred_answers) and :38-55 (extract_pred_answers)
    "repository": PromptStyle("repository", "Question: ", "\nLet's think step by step\n", "\n\n", ("equation_only",),
                              "The answer is", "\n\nQuestion:", "Q: {question} A:", "Let's think step by step.",
                              " Therefore, the answer (arabic numerals) is ", "\nQ:", strict=True),
    "embedded": PromptStyle("embedded", "Q : ", "\nA :", "\nA :", (), "The result is", "Q :", "Q : {question} A :"),
}


@dataclass(frozen=True)
class GenPrompt:
    """A prompt the model completes: ``answer`` is the gold final number (a string),
    ``variant`` the prompt type, ``problem`` the index of the question (the same in every
    variant)."""

    prompt: str
    answer: str
    variant: str
    problem: int


@dataclass(frozen=True)
class CotGeneration:
    """The same questions under several prompt types (the data of ``nr.cot_generation``):
    ``prompts[v]`` holds type ``v``'s prompts, question k at index k in each; ``style`` says
    how to read the answers."""

    made_by: ClassVar[str] = "nr.tasks.cot_generation(...)"
    task: str
    params: dict[str, Any]
    prompts: dict[str, tuple[GenPrompt, ...]]
    style: PromptStyle

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.prompts)

    def __len__(self) -> int:
        return len(next(iter(self.prompts.values())))

    def __repr__(self) -> str:
        return f"CotGeneration(n={len(self)}, variants={list(self.prompts)}, style={self.style.name!r})"


def prompt_type(variant: str) -> str:
    """The prompt type's name: ``variant`` itself, or for an exemplar file (``….txt``) its stem, as
    the repository names a ``--prompt`` file's results (``gsm8k_inference.py:244``)."""
    return Path(variant).stem if variant.endswith(".txt") else variant


def read_exemplars(variant: str, prompts_dir: str | Path | None = None, style: str = "embedded") -> str:
    """The exemplar text of prompt type ``variant``: its file in ``prompts_dir`` (default the
    shipped files of ``style``) read as the repository does, '' for ``zero_shot``. A ``variant``
    ending in ".txt" is an exemplar file of its own (a path, or a name in ``prompts_dir``), as the
    repository's ``--prompt FILE.txt`` takes any file (``gsm8k_inference.py:239-244``): e.g. its
    ``data/prompts.py`` strings ``cot_prompts`` (Wei et al.'s exemplars) or ``recall_infer_prompt``
    written to a file."""
    if variant.endswith(".txt"):
        given = Path(variant)
        path = given if given.is_file() or prompts_dir is None else Path(prompts_dir) / variant
    elif variant not in PROMPT_TYPES:
        raise TaskError(f"unknown prompt type {variant!r}; choose from: {', '.join(PROMPT_TYPES)}, or an exemplar "
                        f"file FILE.txt")
    elif PROMPT_TYPES[variant] is None:
        return ""
    else:
        path = (Path(prompts_dir) if prompts_dir is not None else SHIPPED / style) / PROMPT_TYPES[variant]
    if not path.is_file():
        if variant.endswith(".txt"):
            raise TaskError(f"no exemplar file {variant}{'' if prompts_dir is None else f' (nor {path})'}")
        where = "" if prompts_dir is not None else f" (the {style} style ships no {path.name}; pass prompts_dir)"
        raise TaskError(f"no exemplar file {path}{where}; a prompts directory holds the repository's "
                        f"data/prompts/*.txt files")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise TaskError(f"{path} is not UTF-8 text (an exemplar file is plain text)") from None
    if not any(lines):
        raise TaskError(f"{path} is empty; it should hold solved exemplars")
    return "\n".join(lines) + "\n\n"


def build_prompt(exemplars: str, question: str, variant: str, style: PromptStyle, trigger: str | None = None) -> str:
    """The prompt of ``question`` after ``exemplars`` (``gsm8k_inference.py:run_inference``:
    whitespace runs in the question collapsed to one space). ``trigger``: the zero-shot type's
    text after "A:" (default the style's; "" none)."""
    question = " ".join(question.split())
    if variant == "zero_shot":
        trigger = style.zero_shot_trigger if trigger is None else trigger
        return style.zero_shot.format(question=question) + (f" {trigger}" if trigger else "")
    end = style.bare if variant in style.bare_types else style.trigger
    return f"{exemplars}{style.question}{question}{end}"


_NOT_NUMBER = re.compile(r"[a-zA-Z%$=\-.]")


def parse_answer(generated: str, style: PromptStyle) -> int | None:
    """The number the model answered in its ``generated`` text (the prompt not included), or
    None. A ``strict`` style (``repository``) reads it as the repository's
    ``extract_cot_with_example_pred_answers`` does (``gsm8k_inference.py:100-120``): the text
    after the first "phrase " (the generated one: the repository's piece 9, after its eight
    exemplars'), up to the next exemplar's start, letters and ``% $ = - .`` blanked, commas
    removed; its last word, which must be a number (else None, the repository's 234234, always
    wrong). Otherwise the last number in that text, and failing a phrase a GSM8K ``#### N``, else
    the last number before the next exemplar (zero-shot answers in a style without a second
    question; with one, :func:`zero_shot_followup` and :func:`parse_zero_shot`)."""
    if style.strict:
        pieces = generated.split(style.phrase + " ")
        if len(pieces) < 2:
            return None
        return _last_word_number(pieces[1].split(style.stop)[0], _NOT_NUMBER)
    text = generated.split(style.stop)[0] if style.stop.strip() else generated
    if style.phrase in text:  # up to a second phrase too (the repository reads one split piece)
        text = text.split(style.phrase)[1]
    elif "####" in text:
        text = text.split("####", 1)[1].split("\n")[0]
    words = _NOT_NUMBER.sub(" ", text).replace(",", "").split()
    numbers = [w for w in words if re.fullmatch(r"\d+", w)]
    return int(numbers[-1]) if numbers else None


def zero_shot_followup(prompt: str, generated: str, style: PromptStyle) -> str:
    """The zero-shot type's second prompt (the repository's ``clean_cot_pred_answers``): the
    prompt and the model's reasoning up to ``zero_shot_stop``, stripped, then the second
    question."""
    return (prompt + generated).split(style.zero_shot_stop)[0].strip() + style.answer_prompt


def parse_zero_shot(generated: str) -> int | None:
    """The number answered to the zero-shot second question (the repository's
    ``extract_pred_answers``: the text up to ".\n", letters and ``% $ = -`` blanked, commas
    removed, the last word as a number); None where there is none (the repository scores 0)."""
    return _last_word_number(generated.split(".\n")[0], _NOT_NUMBER_ZERO_SHOT)


_NOT_NUMBER_ZERO_SHOT = re.compile(r"[a-zA-Z%$=\-]")


def _last_word_number(text: str, blank: re.Pattern) -> int | None:
    """The repository's reading of an answer text: ``blank``'s characters blanked, commas
    removed, the last word as a number (``int(float(w))``); None where it is not one (the
    repository's bare ``except`` scores it wrong)."""
    words = blank.sub(" ", text).replace(",", "").split()
    try:
        return int(float(words[-1]))
    except (IndexError, ValueError, OverflowError):
        return None


def cot_generation(n_prompts: int = 50, variants: Sequence[str] = ("cot", "equation_only", "text_only"), *,
                   style: str = "embedded", prompts_dir: str | Path | None = None, data: str | Path | None = None,
                   n_steps: int = 2, trigger: str | None = None, seed: int = 0) -> CotGeneration:
    """``n_prompts`` questions under each prompt type of ``variants`` (in that order).

    ``trigger``: the zero-shot prompt's text after "A:" (``zero_shot`` only). Default the
    style's: the repository style's "Let's think step by step." (``algorithm_one.py:58``); its
    accuracy script appends its ``--prompt`` flag instead (``gsm8k_inference.py:204``; its
    README's "Let's think step by step", without the period). The embedded style has none.

    Questions: synthetic word problems (:func:`cot.sample_problem`, ``n_steps`` each, in the
    embedded vocabulary) or, with ``data``, the first ``n_prompts`` rows of a GSM8K-style JSON
    Lines file (the repository reads ``data/test.jsonl``). Exemplars: ``prompts_dir`` (the
    repository's layout) or the files shipped for ``style``.
    """
    check_range("n_prompts", n_prompts, 1)
    if style not in STYLES:
        raise TaskError(f"unknown prompt style {style!r}; choose from: {', '.join(STYLES)}")
    given = list(dict.fromkeys([variants] if isinstance(variants, str) else variants))
    if not given:
        raise TaskError(f"give at least one prompt type; choose from: {', '.join(PROMPT_TYPES)}, or FILE.txt")
    names = [prompt_type(v) for v in given]
    if any(v.endswith(".txt") and PROMPT_TYPES.get(prompt_type(v), "") is None for v in given):
        raise TaskError("an exemplar file named zero_shot.txt would be taken for the zero-shot prompt type (which has "
                        "no exemplars): rename it")
    if len(set(names)) != len(names):
        raise TaskError(f"two prompt types share a name ({', '.join(given)}): exemplar files are named by their stem")
    if trigger is not None and "zero_shot" not in names:
        raise TaskError("trigger is the zero-shot prompt's text (a string); add zero_shot to the prompt types")
    if trigger is not None and not isinstance(trigger, str):
        raise TaskError(f"trigger must be a string (got {trigger!r})")
    exemplars = {prompt_type(v): read_exemplars(v, prompts_dir, style) for v in given}
    if data is not None:
        problems: list[Problem] = load_gsm8k_problems(data, need_steps=False)[:n_prompts]
    else:
        check_range("n_steps", n_steps, 1, 3)
        rng = random.Random(seed)
        problems = [sample_problem(rng, n_steps, 20) for _ in range(n_prompts)]
    st = STYLES[style]
    sets = {v: tuple(GenPrompt(build_prompt(exemplars[v], p.question, v, st, trigger), p.answer, v, k)
                     for k, p in enumerate(problems)) for v in names}
    files = {prompt_type(v): v for v in given if v.endswith(".txt")}
    params = {"n_prompts": len(problems), "variants": names, "style": style, "n_steps": n_steps, "seed": seed,
              **({"prompt_files": files} if files else {}),
              "prompts_dir": str(prompts_dir) if prompts_dir is not None else f"shipped:{style}",
              "source": str(data) if data is not None else "synthetic", **({"trigger": trigger} if trigger is not None
                                                                           else {})}
    return CotGeneration("cot_generation", params, sets, st)
