"""Arithmetic prompt pairs for causal mediation (Stolfo, Belinkov & Sachan, EMNLP 2023).

Three interventions on a base prompt p1 (answer r1) and a source prompt p2 (answer r2):

``operands``     operands differ, operators equal, r1 != r2   ("2 + 3 =" vs "4 + 5 =")
``same_result``  operands differ, result equal (r1 == r2)      ("2 + 3 =" vs "4 + 1 =")
``operation``    operands equal, every operator flipped        ("3 + 1 =" vs "3 - 1 =")

``operations`` chooses the operators among + - * / (lm-arithmetic's four). Products and
quotients take two operands; a quotient must be exact (the repository keeps only integer
results the same way). The default is "+-" (pass ``operations="+-*/"`` with the repository's
templates for its four operators). With the repository's templates (``templates="stolfo"`` or
``stolfo:K``) the operands and same-result pairs follow its loop (``intervention.py``
:248-261): pair i takes operator i // T in turn (T templates) and template i mod T; with the
toolkit's templates the operator is drawn with the operands, so operators with fewer valid
operands, - * and /, come up less often. A same-result source is drawn among every other
operand tuple with the base's result (the repository redraws it until the result matches,
:44-67). The two-operand ``operation`` intervention is built as lm-arithmetic builds it
(``interventions/intervention.py`` :307-399): all four operators, op1 in turn, op2 drawn once
from the three others and the operands redrawn until both results fit, both results in 1..max_n-1
(``generate_operands_pair_two_ops``, :74-101), the source prompt in op2's template of the same
index, and the source prompt's exemplars solved in op2 (the base prompt's in op1). With three
operands every + and - is flipped and exemplars are shared.

Operands are drawn from 1..max_n; results must be >= 0 and, with ``max_result``, at most
that: the repository bounds the result by ``max_n`` for GPT-J and Pythia, and for LLaMA-style
tokenisers that split numbers into digits it takes operands up to 300 with one-digit results
(``max_n=300, max_result=8``: the repository's results 1..8, "164 - 159 =" answered by one
token; results of 0 stay allowed here).

Departures from lm-arithmetic (``interventions/intervention.py``): results may be 0 and are
bounded by the tokenizer (an answer must be one token; 0..99 for the embedded model), not by
``max_n``; number words are one hyphenated token ("twenty-three", the repository writes
"twenty three"); exemplars end with " . " rather than a newline; punctuation is a separate
word ("Q : What is 3 plus 5 ? A :"), as the embedded word-level tokenizer splits text. Each pair
draws its own exemplars (the repository one set per operator and template); base and source
share them, as in the repository, except in the operation intervention. In the operation
intervention the repository means op2's exemplars to carry op2's results, but reuses op1's result by a slip
(``intervention.py:364``: ``base_tuple`` for ``base_tuple2``, giving "3 - 1 = 4"); here they
are solved correctly. The repository also keeps pairs whose two results are equal; here the
two answers always differ, since the indirect effect is about moving r1 to r2.
"""
from __future__ import annotations

import functools
import itertools
import random
import re
import zlib
from typing import Any, Sequence

from .base import (
    Example,
    PromptPair,
    PromptPairs,
    TaskError,
    TaskInfo,
    check_choice,
    check_range,
    generate_aligned,
    keeps_newlines,
    register,
)

INTERVENTIONS = ("operands", "same_result", "operation")
REPRESENTATIONS = ("arabic", "words")
TEMPLATES: tuple[str, ...] = (
    "{expr} =",
    "Q : What is {expr} ? A :",
    "The result of {expr} is",
    "{expr} equals",
)
SHOT_SEPARATOR = " . "
# lm-arithmetic's two-operand template families, as the repository writes them
# (interventions/intervention.py:220-243; operator words :244, operand and result ranges :29-71), one
# list per operator in the repository's order; the last is the symbolic one, which the repository
# drops for number words. TEXTS: "repository" renders these strings; "toolkit" (the default) the same
# with "?" and ":" as words of their own ("? A :"), as the embedded model's tokenizer splits.
TEXTS = ("toolkit", "repository")
_WORD = {"+": "plus", "-": "minus", "*": "times", "/": "over"}  # also the operators of representation="words"
_NOUN = {"+": ("sum of", "The sum of {x} and {y} is"), "-": ("difference between", "The difference between {x} and {y} is"),
         "*": ("product of", "The product of {x} and {y} is"), "/": ("ratio between", "The ratio of {x} and {y} is")}
STOLFO_TEXT: dict[str, tuple[str, ...]] = {
    op: ("Q: How much is {x} %s {y}? A:" % w, "Q: What is {x} %s {y}? A:" % w,
         "Q: What is the result of {x} %s {y}? A:" % w, "Q: What is the %s {x} and {y}? A:" % _NOUN[op][0],
         _NOUN[op][1], "{x} %s {y} =" % op)
    for op, w in _WORD.items()}
STOLFO_TEMPLATES: dict[str, tuple[str, ...]] = {
    op: tuple(re.sub(r"(?<! )([?:])", r" \1", t) for t in ts) for op, ts in STOLFO_TEXT.items()}
REPOSITORY_SHOT_END = "\n"  # the repository ends each exemplar with a newline (intervention.py:268)
STOLFO_TEMPLATES_FLAT = tuple(t for ts in STOLFO_TEMPLATES.values() for t in ts)
OPERATIONS = "+-*/"
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MAX_WORD_NUMBER = 99


def number_word(n: int) -> str | None:
    """English word for 0..99 as one whitespace-free token ("twenty-three"); None beyond."""
    if not 0 <= n <= MAX_WORD_NUMBER:
        return None
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


def is_heldout(operands: Sequence[int]) -> bool:
    """Fixed ~10 % split of operand tuples never shown to the embedded model in training."""
    return zlib.crc32(",".join(map(str, operands)).encode()) % 10 == 0


def evaluate_expr(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Left to right; only + and - chain (products and quotients have two operands)."""
    total = operands[0]
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            total *= x
        elif op == "/":
            total = total // x if total % x == 0 else -1  # inexact quotients are refused (< 0)
        else:
            total = total + x if op == "+" else total - x
    return total


def render_number(n: int, representation: str) -> str | None:
    return str(n) if representation == "arabic" else number_word(n)


def render_problem(operands: Sequence[int], ops: Sequence[str], template: str, representation: str,
                   text: str = "toolkit") -> str | None:
    """The problem in ``template``: a string with "{expr}", or "stolfo:K", the repository's
    K-th two-operand template of the problem's operator (``STOLFO_TEMPLATES``, or with
    ``text="repository"`` its own strings, ``STOLFO_TEXT``)."""
    words = [render_number(x, representation) for x in operands]
    if any(w is None for w in words):
        return None
    if template.startswith("stolfo:"):
        family = STOLFO_TEXT if text == "repository" else STOLFO_TEMPLATES
        return family[ops[0]][int(template[7:])].format(x=words[0], y=words[1])
    parts = [words[0]]
    for op, w in zip(ops, words[1:]):
        parts += [_WORD[op] if representation == "words" else op, w]  # lm-arithmetic's operator words
    return template.format(expr=" ".join(parts))  # type: ignore[arg-type]


def sample_problem(rng: random.Random, n_operands: int, max_n: int, split: str = "all",
                   ops: Sequence[str] | None = None, operations: str = "+-",
                   max_result: int | None = None, min_result: int = 0) -> tuple[list[int], list[str], int]:
    """Draw (operands, operators, result) with ``min_result`` <= result (<= ``max_result``),
    respecting the held-out split; operators from ``operations`` (3 operands: its + and -)."""
    pool = operations if n_operands == 2 else "".join(o for o in operations if o in "+-")
    for _ in range(100_000):
        operands = [rng.randint(1, max_n) for _ in range(n_operands)]
        o = list(ops) if ops is not None else [rng.choice(pool) for _ in range(n_operands - 1)]
        if split != "all" and is_heldout(operands) != (split == "heldout"):
            continue
        result = evaluate_expr(operands, o)
        if result >= min_result and (max_result is None or result <= max_result):
            return operands, o, result
    bound = "" if max_result is None else f" and <= max_result={max_result}"
    raise TaskError(f"no {n_operands}-operand problem with operators {''.join(ops or pool)!r} and operands "
                    f"1..{max_n} has an integer result >= {min_result}{bound} in the {split!r} split; raise max_n "
                    f"or max_result, or add '+'")


def same_result_operands(result: int, ops: Sequence[str], max_n: int, split: str = "all") -> list[list[int]]:
    """Every operand tuple in 1..``max_n`` (of ``split``) whose problem with operators ``ops``
    equals ``result``: all operands but the last enumerated, the last solved for. ``ops``: one
    operator of + - * /, or a chain of + and - (as :func:`evaluate_expr` takes them)."""
    if len(ops) > 1 and set(ops) - set("+-"):
        raise TaskError(f"products and quotients take two operands; chain only + and - (got {''.join(ops)!r})")
    return [list(t) for t in _same_result(result, tuple(ops), max_n, split)]


@functools.lru_cache(maxsize=4096)  # 3 operands enumerate max_n**2 heads: reused across a task's pairs
def _same_result(result: int, ops: tuple[str, ...], max_n: int, split: str) -> tuple[tuple[int, ...], ...]:
    out = []
    for head in itertools.product(range(1, max_n + 1), repeat=len(ops)):
        partial, op = evaluate_expr(head, ops[:-1]), ops[-1]
        if op in "+-":
            last = result - partial if op == "+" else partial - result
        else:  # two operands: partial is the first, >= 1; inexact solutions fail the check below
            last = result // partial if op == "*" else partial // max(result, 1)
        operands = [*head, last]
        if 1 <= last <= max_n and evaluate_expr(operands, ops) == result \
                and (split == "all" or is_heldout(operands) == (split == "heldout")):
            out.append(tuple(operands))
    return tuple(out)


def repository_design(templates: Sequence[str]) -> bool:
    """Whether ``templates`` are all lm-arithmetic's (``stolfo:K``): pairs are then drawn in its
    loop over (operator, template), each operator in turn."""
    return all(t.startswith("stolfo:") for t in templates)


def _shots(rng: random.Random, n_shots: int, n_operands: int, max_n: int, template: str,
           representation: str, split: str, operations: str = "+-", max_result: int | None = None,
           text: str = "toolkit") -> str | None:
    """``n_shots`` solved exemplars, each ended by " . "; with ``text="repository"`` each ended by a
    newline and in arabic numerals whatever the representation, as the repository writes them
    (``intervention.py:263-269``: its exemplars are formatted before the query's numbers become words)."""
    if text == "repository":
        representation = "arabic"
    lines = []
    for _ in range(n_shots):
        operands, ops, result = sample_problem(rng, n_operands, max_n, split, operations=operations,
                                               max_result=max_result)
        problem = render_problem(operands, ops, template, representation, text)
        ans = render_number(result, representation)
        if problem is None or ans is None:
            return None
        lines.append(f"{problem} {ans}")
    end = REPOSITORY_SHOT_END if text == "repository" else SHOT_SEPARATOR
    return "".join(line + end for line in lines)


_OPERAND_TRIES = 2_000  # operand draws for one pair of operators before op2 is drawn again


def _swap(rng: random.Random, op: str, operations: str) -> str:
    """Another operator of ``operations`` (+ and - swap for each other without a draw)."""
    others = [o for o in (operations if len(operations) > 1 else "+-") if o != op] or ["-" if op == "+" else "+"]
    return others[0] if len(others) == 1 else rng.choice(others)


def _sample_pair(rng: random.Random, i: int, p: dict[str, Any], templates: Sequence[str]) -> PromptPair | None:
    template = templates[i % len(templates)]
    n, m, rep, split = p["n_operands"], p["max_n"], p["representation"], p["split"]
    ops, top = p.get("operations", "+-"), p.get("max_result")
    kind = p["intervention_type"]
    if kind == "operation" and n == 2:
        # lm-arithmetic's loop (intervention.py:349-353): op1 in turn over the operators (a block
        # of pairs per operator, every template in each), op2 drawn once, and only the operands
        # redrawn until both results fit (:84-92). Redrawing the operators with the operands
        # would under-draw the operator pairs with few valid operands (x and /).
        op1 = ops[(i // len(templates)) % len(ops)]
        op2 = _swap(rng, op1, ops)
        for _ in range(_OPERAND_TRIES):
            a_ops, a_ops_list, r1 = sample_problem(rng, n, m, split, ops=[op1], max_result=top, min_result=1)
            b_operands, b_ops = a_ops, [op2]
            r2 = evaluate_expr(b_operands, b_ops)
            if 1 <= r2 != r1 and (top is None or r2 <= top):
                break
        else:  # no operands fit these two operators (small max_n): the pair is drawn again, op2 too
            return None
    elif kind == "operation":  # three operands: every + and - flipped
        a_ops, a_ops_list, r1 = sample_problem(rng, n, m, split, operations=ops, max_result=top, min_result=1)
        b_operands, b_ops = a_ops, [_swap(rng, o, "+-") for o in a_ops_list]
        r2 = evaluate_expr(b_operands, b_ops)
        if r2 < 1 or r2 == r1 or (top is not None and r2 > top):
            return None
    else:
        # With the repository's templates, its loop (intervention.py:248-261): the operator in turn,
        # a block of pairs per operator with every template in each, as the operation intervention;
        # otherwise the operator is drawn with the operands.
        op = [ops[(i // len(templates)) % len(ops)]] if n == 2 and repository_design(templates) else None
        a_ops, a_ops_list, r1 = sample_problem(rng, n, m, split, ops=op, operations=ops, max_result=top)
        if kind == "same_result":
            # the base's result kept, the source drawn among every other operand tuple with that
            # result (lm-arithmetic redraws it until the result matches, :44-67); none: redraw the base
            others = [x for x in same_result_operands(r1, a_ops_list, m, split) if x != a_ops]
            if not others:
                return None
            b_operands, b_ops, r2 = rng.choice(others), a_ops_list, r1
        else:
            b_operands, b_ops, r2 = sample_problem(rng, n, m, split, ops=a_ops_list, max_result=top)
            if b_operands == a_ops or r2 == r1:
                return None
    # exemplars are solved in the query's operator (lm-arithmetic's shots use the query's
    # template): shared by the pair, except the operation intervention's, one set per operator
    text = p.get("text", "toolkit")
    shots = lambda operator: _shots(rng, p["n_shots"], n, m, template, rep, split, operator, top, text)  # noqa: E731
    prefix = shots(a_ops_list[0] if n == 2 else ops)
    source_prefix = shots(b_ops[0]) if kind == "operation" and n == 2 else prefix
    base = render_problem(a_ops, a_ops_list, template, rep, text)
    source = render_problem(b_operands, b_ops, template, rep, text)
    ra, rb = render_number(r1, rep), render_number(r2, rep)
    if None in (prefix, source_prefix, base, source, ra, rb):
        return None
    return PromptPair(prefix + base, source_prefix + source, ra, rb)  # type: ignore[operator, arg-type]


def _n_stolfo(representation: str) -> int:
    """lm-arithmetic's templates per operator: six, five with number words (no symbolic one)."""
    return 5 if representation == "words" else 6


def default_operations(intervention_type: str, n_operands: int) -> str:
    """The repository's four operators for the two-operand operation intervention, else "+-"."""
    return OPERATIONS if intervention_type == "operation" and n_operands == 2 else "+-"


def _check(intervention_type: str, n_operands: int, n_shots: int, max_n: int, representation: str,
           templates: Sequence[str] | None, split: str, operations: str = "+-",
           max_result: int | None = None) -> list[str]:
    check_choice("intervention_type", intervention_type, INTERVENTIONS)
    if max_result is not None:
        check_range("max_result", max_result, 1)
    if not isinstance(operations, str) or not operations or set(operations) - set(OPERATIONS) \
            or len(set(operations)) != len(operations):
        raise TaskError(f"operations must be distinct characters of {OPERATIONS!r}, e.g. '+-' or '*/' "
                        f"(got {operations!r})")
    if n_operands == 3 and not set(operations) & set("+-"):
        raise TaskError("three-operand problems chain + and -; include one of them in operations")
    check_choice("representation", representation, REPRESENTATIONS)
    check_choice("split", split, ("all", "train", "heldout"))
    check_range("n_operands", n_operands, 2, 3)
    check_range("n_shots", n_shots, 0, 8)
    check_range("max_n", max_n, 1)
    if intervention_type in ("operands", "same_result") and max_n < 2:
        raise TaskError(f"intervention_type={intervention_type!r} needs max_n >= 2 so operands can differ")
    if representation == "words" and max_n > MAX_WORD_NUMBER:
        raise TaskError(f"representation='words' supports numbers up to {MAX_WORD_NUMBER}; lower max_n")
    if templates is not None and not isinstance(templates, str) and list(templates) == ["stolfo"]:
        templates = "stolfo"  # the CLI's --template stolfo
    n_stolfo = _n_stolfo(representation)
    if templates == "stolfo" or (not isinstance(templates, str) and any(str(t).startswith("stolfo") for t in
                                                                        templates or ())):
        if n_operands != 2:
            raise TaskError("templates='stolfo' are lm-arithmetic's two-operand templates; use n_operands=2")
    if templates == "stolfo":  # the repository's families (template_type=all)
        return [f"stolfo:{k}" for k in range(n_stolfo)]
    if isinstance(templates, str):
        raise TaskError(f"templates must be a list of strings with '{{expr}}', or 'stolfo' (got {templates!r})")
    tpl = list(templates) if templates else list(TEMPLATES)
    for t in tpl:
        if t.startswith("stolfo:"):  # the repository's template_type=K
            if t[7:] not in [str(k) for k in range(n_stolfo)]:
                raise TaskError(f"template {t!r}: lm-arithmetic has templates stolfo:0..stolfo:{n_stolfo - 1} "
                                f"with {representation} numbers")
        elif "{expr}" not in t:
            raise TaskError(f"template {t!r} must contain '{{expr}}' where the problem goes, or be stolfo:K")
    return tpl


def arithmetic(
    intervention_type: str = "operands",
    n_prompts: int = 64,
    n_operands: int = 2,
    n_shots: int = 0,
    max_n: int = 20,
    representation: str = "arabic",
    templates: Sequence[str] | str | None = None,
    split: str = "all",
    seed: int = 0,
    tokenizer: Any | None = None,
    operations: str | None = None,
    max_result: int | None = None,
    text: str = "toolkit",
) -> PromptPairs:
    """Aligned base/source arithmetic prompt pairs.

    Parameters
    ----------
    intervention_type : "operands" | "same_result" | "operation"
    n_prompts : number of pairs; templates are used in turn (pair i gets template i mod T).
    n_operands : 2 or 3.   n_shots : solved exemplars before the query (shared by the pair).
    max_n : largest operand (operands are 1..max_n; results are >= 0).
    representation : "arabic" ("3 + 5 =") or "words" ("three plus five =").
    templates : strings with "{expr}"; default: the four built-in templates. "stolfo": the
        repository's six two-operand templates per operator (five with number words), e.g.
        "Q : What is the sum of 3 and 5 ? A :"; with T of them, pair i uses template i mod T of
        operator i // T (in turn over ``operations``), as the repository loops over (operator, template).
    split : "all", "train" or "heldout" operand tuples (the embedded model never saw "heldout").
    operations : operators to draw from, among "+-*/"; default "+-", and "+-*/" for the
        two-operand operation intervention (see module doc).
    max_result : largest result (default: any the tokenizer has as one token; for the
        two-operand operation intervention max_n - 1, as the repository, results >= 1); with
        ``max_n=300, max_result=8``, lm-arithmetic's setting for digit-splitting tokenisers.
    text : with the repository's templates, "toolkit" ("Q : How much is 3 plus 5 ? A :",
        exemplars ended by " . ") or "repository", its own strings ("Q: How much is 3 plus 5? A:",
        exemplars ended by a newline and written in arabic numerals, ``intervention.py:220-269``),
        for subword tokenizers (GPT-2, GPT-J, Pythia, LLaMA); the embedded model's tokenizer has
        no "Q:" or newline and refuses them.
    seed : same seed and tokenizer give the same pairs.
    tokenizer : HF tokenizer the pairs must align with; default the embedded model's.
    """
    if operations is None:
        operations = default_operations(intervention_type, n_operands)
    if max_result is None and intervention_type == "operation" and n_operands == 2:
        max_result = max_n - 1  # the repository's range for both results of an operation pair
    tpl = _check(intervention_type, n_operands, n_shots, max_n, representation, templates, split, operations,
                 max_result)
    check_choice("text", text, TEXTS)
    if text == "repository" and not repository_design(tpl):
        raise TaskError("text='repository' writes lm-arithmetic's own strings; use templates='stolfo' (or stolfo:K)")
    if text == "repository" and n_shots and not keeps_newlines(tokenizer):
        raise TaskError("text='repository' ends each exemplar with a newline, which this tokenizer drops (the "
                        "embedded model's): use a subword tokenizer (GPT-2, GPT-J, Pythia, LLaMA: --model) or "
                        "text='toolkit'")
    params = dict(intervention_type=intervention_type, n_prompts=n_prompts, n_operands=n_operands,
                  n_shots=n_shots, max_n=max_n, representation=representation, templates=tpl,
                  split=split, seed=seed)
    if operations != "+-":  # default runs keep the task_params they always had
        params["operations"] = operations
    if max_result is not None:
        params["max_result"] = max_result
    if text != "toolkit":  # default runs keep the task_params they always had
        params["text"] = text
    if tpl == [f"stolfo:{k}" for k in range(_n_stolfo(representation))]:
        params["templates"] = "stolfo"  # replayable: arithmetic(**params) draws the same pairs
    hint = ("try a smaller max_n (answers must be single tokens, e.g. <= 99 for the embedded "
            "model) or another intervention_type")
    if text == "repository":
        hint = ("text='repository' needs a tokenizer that reads '?' and ':' attached to words and newlines "
                "(GPT-2, GPT-J, Pythia, LLaMA: --model); the embedded model reads text='toolkit'; or " + hint)
    pairs = generate_aligned(lambda rng, i: _sample_pair(rng, i, params, tpl), n_prompts, seed, tokenizer, hint)
    return PromptPairs("arithmetic", params, pairs)


#: Token roles of a prompt, in reading order (lm-arithmetic's position classes,
#: ``notebooks/plot-all-tokens.ipynb`` ``add_position_class``, lines 23-53 of its JSON, with the
#: older helper's operator class, ``notebooks_utils.py:371-394``).
ROLES = ("shots", "early", "operand 1", "operator", "middle", "operand 2", "middle 2", "operand 3", "late", "last")
# operator tokens -> the operator: the symbols, the template words and nouns ("sum" of "sum of")
_OPERATOR_OF = {**{o: o for o in OPERATIONS}, **{w: o for o, w in _WORD.items()},
                **{noun.split()[0]: o for o, (noun, _) in _NOUN.items()}}


def _word(token: str) -> str:
    """A token without its tokenizer's word-start mark (GPT-2's Ġ, SentencePiece's ▁)."""
    return token.replace("Ġ", "").replace("▁", "").strip()


def _is_newline(token: str) -> bool:
    """Whether a token is line breaks only ("\\n", byte-level BPE's "Ċ", SentencePiece's "<0x0A>")."""
    return bool(token) and (set(token) <= {"\n", "Ċ"} or token == "<0x0A>")


def token_words(tokens: Sequence[str]) -> tuple[list[str], int]:
    """Each token's word (:func:`_word`) and the prompt's length without its padding ("" tokens)."""
    return [_word(t) for t in tokens], max((i + 1 for i, t in enumerate(tokens) if t), default=0)


def token_roles(tokens: Sequence[str]) -> list[str]:
    """The role of each token of an arithmetic prompt. The query is the last problem, after
    the exemplars' " . " (or, in the repository's text, their newline); the exemplars are
    "shots". In the query: "operand 1/2/3" (every token of the number, for tokenisers that
    split digits or number words; the repository marks the last one), "operator" (+ - * / or its word, "sum of"…), "last" (the final
    token), and "early" / "middle" / "late" for the other tokens before the first operand,
    between operands, and after the last; with three operands the tokens between the second
    and the third are "middle 2" (the repository's "Between Operands 1/2",
    ``add_position_class_3_ops``, JSON lines 88-121). Padding ("") gets "".
    """
    words, n = token_words(tokens)
    # the query starts after the last exemplar's end: " . ", or the repository's newline (GPT-2's
    # "Ċ", SentencePiece's "<0x0A>")
    start = max((i + 1 for i, (w, t) in enumerate(zip(words[:n], tokens)) if w == "." or _is_newline(t)), default=0)
    is_number = [w.isdigit() or (w.replace("-", "").isalpha() and _word_value(w) is not None) for w in words]
    # a BPE tokenizer splits "twenty-one" into "twenty", "-", "one": the hyphen belongs to the number
    linked = [0 < i < n - 1 and w == "-" and is_number[i - 1] and is_number[i + 1] and not words[i - 1].isdigit()
              for i, w in enumerate(words)]
    groups: list[list[int]] = []
    for i in range(start, n):
        if is_number[i] or linked[i]:
            joined = groups and groups[-1][-1] == i - 1 and (
                linked[i] or linked[i - 1] or (words[i].isdigit() and words[i - 1].isdigit()))
            if joined:
                groups[-1].append(i)  # digits, or the parts of a hyphenated number word
            else:
                groups.append([i])
    roles = [""] * len(tokens)
    first = groups[0][0] if groups else n
    last_operand = groups[-1][-1] if groups else n
    second = groups[1][-1] if len(groups) > 2 else n  # three operands: after the second is "middle 2"
    for i in range(n):
        roles[i] = ("shots" if i < start else "early" if i < first else "late" if i > last_operand
                    else "middle 2" if i > second else "middle")
    for k, g in enumerate(groups[:3]):
        for i in g:
            roles[i] = f"operand {k + 1}"
    for i in range(start, n):
        if words[i] in _OPERATOR_OF and not roles[i].startswith("operand"):
            roles[i] = "operator"
    if n:
        roles[n - 1] = "last"
    return roles


def operator_of(tokens: Sequence[str]) -> str:
    """The operator of an arithmetic prompt's query ("+", "-", "*", "/"; "" if none, several
    joined for three operands), read from its operator tokens (see :func:`token_roles`)."""
    return "".join(_OPERATOR_OF[_word(t)] for t, r in zip(tokens, token_roles(tokens)) if r == "operator")


def query_operands(tokens: Sequence[str]) -> list[int]:
    """The operands of an arithmetic prompt's query, in order, read from its "operand k" tokens
    (:func:`token_roles`): digits joined, number words valued (None-free: a group that is no
    number is skipped)."""
    words, _ = token_words(tokens)
    groups: dict[str, str] = {}
    for w, r in zip(words, token_roles(tokens)):
        if r.startswith("operand"):
            so_far = groups.get(r, "")
            # digits join; the parts of a number word split by a tokenizer ("twenty", "-", "one") join by one "-"
            joint = "" if w.isdigit() or w == "-" or not so_far or so_far.endswith("-") else "-"
            groups[r] = so_far + joint + w
    values = [int(g) if g.isdigit() else _word_value(g.strip("-")) for g in groups.values()]
    return [v for v in values if v is not None]


def text_words(text: str) -> list[str]:
    """A prompt's text as the words :func:`token_roles` reads: words (hyphenated number words
    whole) and each punctuation mark on its own ("7*1?" is "7", "*", "1", "?"). A minus between
    digits with no spaces ("7-1") reads as one word, as a hyphenated number word does. A line
    break is a word of its own: it ends an exemplar in the repository's text."""
    return re.findall(r"\w+(?:-\w+)*|[^\w\s]|\n", text)


def multiplies_by_one(text: str) -> bool:
    """Whether a prompt's query is a multiplication with an operand 1 (lm-arithmetic's
    ``mult_by_1_filter``, ``notebooks_utils.py:286-297``; see
    :func:`nnsight_reasoning.experiments.patch_analysis.drop_mult_by_one`)."""
    words = text_words(text)
    return operator_of(words) == "*" and 1 in query_operands(words)


def _word_value(w: str) -> int | None:
    for k in range(MAX_WORD_NUMBER + 1):
        if number_word(k) == w:
            return k
    return None


def arithmetic_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, **params: Any) -> list[Example]:
    """Single prompts (the base side of ``arithmetic`` pairs) for accuracy evaluation."""
    pairs = arithmetic(n_prompts=n, seed=seed, tokenizer=tokenizer, **params)
    return [Example(p.base, p.base_answer) for p in pairs]


PARAMS = {
    "intervention_type": ("operands", "operands | same_result | operation"),
    "n_prompts": (64, "number of prompt pairs"),
    "n_operands": (2, "operands per problem: 2 or 3"),
    "n_shots": (0, "solved exemplars before the query, shared by base and source"),
    "max_n": (20, "largest operand; operands are 1..max_n, results >= 0"),
    "representation": ("arabic", "arabic ('3 + 5 =') or words ('three plus five =')"),
    "templates": (list(TEMPLATES), "prompt templates containing {expr}, or \"stolfo\" (lm-arithmetic's); used in turn"),
    "operations": ("+-", "operators among + - * / (products and quotients: 2 operands, exact quotients); "
                         "the 2-operand operation intervention defaults to +-*/"),
    "max_result": (None, "largest result (default: any single-token answer); max_n=300 max_result=8 is "
                         "lm-arithmetic's setting for digit-splitting tokenizers"),
    "split": ("all", "operand tuples: all | train | heldout (never seen by the embedded model)"),
    "text": ("toolkit", "with --template stolfo: toolkit ('Q : How much is 3 plus 5 ? A :') | repository (its own "
                        "strings, 'Q: How much is 3 plus 5? A:', exemplars on their own lines; subword tokenizers)"),
    "seed": (0, "random seed; same seed -> same prompts"),
}
register(TaskInfo("arithmetic", "arithmetic causal mediation pairs (Stolfo et al. 2023)",
                  arithmetic, arithmetic_examples, PARAMS, roles=token_roles, role_order=ROLES))
