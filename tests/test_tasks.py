"""Task generators: determinism, intervention semantics, alignment, clear errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nnsight_reasoning as nr
from nnsight_reasoning.tasks import TaskError, get_task
from nnsight_reasoning.tasks.arithmetic import STOLFO_TEMPLATES, evaluate_expr, is_heldout, number_word

NUM = re.compile(r"\b\d+\b")


def _problem(text: str) -> tuple[list[int], list[str]]:
    """Operands and operators of the queried (last) problem of an arabic prompt."""
    last = text.split(" . ")[-1]
    nums = [int(x) for x in NUM.findall(last)]
    ops = re.findall(r" ([+-]) ", last)
    return nums, ops


def _stolfo(text: str) -> tuple[str, int, list[int]]:
    """(operator, template index, operands) of a prompt in one of lm-arithmetic's templates."""
    for op, templates in STOLFO_TEMPLATES.items():
        for k, t in enumerate(templates):
            pattern = re.escape(t).replace(re.escape("{x}"), r"(\d+)").replace(re.escape("{y}"), r"(\d+)")
            if m := re.fullmatch(pattern, text):
                return op, k, [int(m[1]), int(m[2])]
    raise AssertionError(f"not an lm-arithmetic template: {text!r}")


def test_same_seed_same_prompts_and_different_seed_differs():
    a = nr.tasks.arithmetic(n_prompts=20, seed=5)
    b = nr.tasks.arithmetic(n_prompts=20, seed=5)
    c = nr.tasks.arithmetic(n_prompts=20, seed=6)
    assert a.pairs == b.pairs and a.pairs != c.pairs
    assert a.params["seed"] == 5 and len(a) == 20


@pytest.mark.parametrize("n_operands", [2, 3])
def test_operands_intervention(n_operands):
    for p in nr.tasks.arithmetic("operands", n_prompts=40, n_operands=n_operands, seed=1):
        (x, ox), (y, oy) = _problem(p.base), _problem(p.source)
        assert len(x) == n_operands and ox == oy and x != y
        assert evaluate_expr(x, ox) == int(p.base_answer) and evaluate_expr(y, oy) == int(p.source_answer)
        assert p.base_answer != p.source_answer
        assert all(1 <= v <= 20 for v in x + y) and int(p.base_answer) >= 0


def test_same_result_intervention():
    for p in nr.tasks.arithmetic("same_result", n_prompts=40, seed=2):
        (x, ox), (y, oy) = _problem(p.base), _problem(p.source)
        assert x != y and ox == oy and p.base_answer == p.source_answer == str(evaluate_expr(x, ox))


def test_same_result_sources_are_every_other_tuple_with_the_result_and_times_over_do_not_run_out():
    """The source is drawn among every operand tuple with the base's result (lm-arithmetic redraws
    it until the result matches, intervention.py:44-67), so x and / pairs are found, not hit by chance."""
    import itertools

    from nnsight_reasoning.tasks.arithmetic import is_heldout, same_result_operands

    for result, ops, max_n, split in ((12, "*", 20, "all"), (3, "/", 30, "all"), (7, "+-", 9, "all"),
                                      (10, "+", 40, "heldout"), (0, "-", 5, "train")):
        brute = [list(t) for t in itertools.product(range(1, max_n + 1), repeat=len(ops) + 1)
                 if evaluate_expr(t, ops) == result and (split == "all" or is_heldout(t) == (split == "heldout"))]
        assert sorted(same_result_operands(result, ops, max_n, split)) == sorted(brute) and brute
    pairs = nr.tasks.arithmetic("same_result", n_prompts=48, operations="*/", seed=0, templates=["{expr} ="])
    assert {p.base.split()[1] for p in pairs} == set("*/")
    for p in pairs:
        (x, op, y, _), (x2, op2, y2, _) = p.base.split(), p.source.split()
        assert (x, y) != (x2, y2) and op == op2
        assert p.base_answer == p.source_answer == str(evaluate_expr([int(x2), int(y2)], [op]))


def test_default_prompts_are_pinned():
    """The README's and the docs' numbers, and the embedded model's training data
    (scripts/train_embedded.py calls sample_retrieval), rest on these exact draws: an option
    added to a task must leave its defaults' random stream alone."""
    import random

    from nnsight_reasoning.tasks.recall import RETRIEVAL_TEMPLATES, sample_retrieval

    as_tuple = lambda p: (p.base, p.source, p.base_answer, p.source_answer)  # noqa: E731
    assert [as_tuple(p) for p in nr.tasks.arithmetic(n_prompts=3, seed=0)] == [
        ("13 + 14 =", "9 + 17 =", "27", "26"), ("Q : What is 16 - 13 ? A :", "Q : What is 16 - 12 ? A :", "3", "4"),
        ("The result of 19 + 7 is", "The result of 10 + 5 is", "26", "15")]
    retrieval = get_task("number_retrieval")
    assert as_tuple(retrieval.pairs(n_prompts=1, seed=0)[0]) == (
        "Q : I have 13 horses and 1 potato . How many horses do I have ? A :",
        "Q : I have 13 horses and 1 potato . How many potatoes do I have ? A :", "13", "1")
    assert [(e.prompt, e.answer) for e in retrieval.examples(n=2, seed=0)][1] == (
        "Q : Paul has 12 cats and 9 bikes . How many bikes does Paul have ? A :", "9")
    rng = random.Random(0)
    assert sample_retrieval(rng, RETRIEVAL_TEMPLATES[0], 30).prompt == \
        "Q : I have 24 horses and 28 potatoes . How many horses do I have ? A :"
    assert rng.random() == 0.25891675029296335  # and leaves the stream where it did


def test_same_result_sources_are_uniform_over_the_other_tuples():
    """Base fixed, the source is each other tuple with the base's result about equally often."""
    import collections
    import random

    from nnsight_reasoning.tasks.arithmetic import _sample_pair, same_result_operands

    rng, seen = random.Random(0), collections.Counter()
    params = dict(intervention_type="same_result", n_operands=2, max_n=12, representation="arabic", split="all",
                  n_shots=0, operations="*")
    for _ in range(20_000):  # the base 4 * 6 about 1 in 144
        p = _sample_pair(rng, 0, params, ["{expr} ="])
        if p is not None and p.base == "4 * 6 =":
            seen[p.source] += 1
    others = {f"{x} * {y} =" for x, y in same_result_operands(24, "*", 12) if (x, y) != (4, 6)}
    assert set(seen) == others and len(others) == 5  # 2·12, 3·8, 6·4, 8·3, 12·2
    assert max(seen.values()) < 2 * min(seen.values())  # ~28 each; "always the first" fails here
    with pytest.raises(TaskError, match="products and quotients take two operands"):
        same_result_operands(0, "-*", 20)


@pytest.mark.parametrize("kind", ["operands", "same_result"])
def test_repository_templates_loop_over_operator_and_template(kind):
    """With lm-arithmetic's templates, its loop (intervention.py:248-261): every (operator, template)
    gets the same number of pairs, operators in blocks; with the toolkit's templates the operator is
    drawn with the operands (+ more often than -, whose results must stay >= 0)."""
    import collections

    pairs = nr.tasks.arithmetic(kind, n_prompts=96, operations="+-*/", templates="stolfo", seed=1)
    cells = collections.Counter()
    for i, p in enumerate(pairs):
        (op, k, x), (op_s, k_s, y) = _stolfo(p.base), _stolfo(p.source)
        assert (op, k) == (op_s, k_s) == ("+-*/"[(i // 6) % 4], i % 6) and x != y
        assert int(p.base_answer) == evaluate_expr(x, [op]) and int(p.source_answer) == evaluate_expr(y, [op])
        assert (p.base_answer == p.source_answer) == (kind == "same_result")
        cells[op, k] += 1
    assert set(cells.values()) == {4} and len(cells) == 24
    drawn = collections.Counter(_problem(p.base)[1][0] for p in nr.tasks.arithmetic(kind, n_prompts=200, seed=1))
    assert drawn["+"] > drawn["-"] > 0


def test_operation_intervention():
    for p in nr.tasks.arithmetic("operation", n_prompts=40, seed=3, operations="+-"):
        (x, ox), (y, oy) = _problem(p.base), _problem(p.source)
        assert x == y and all(a != b for a, b in zip(ox, oy))
        assert p.base_answer != p.source_answer
        assert int(p.source_answer) == evaluate_expr(y, oy) >= 0


def test_templates_used_in_turn_and_pairs_aligned(embedded_tokenizer):
    pairs = nr.tasks.arithmetic(n_prompts=8, seed=0)
    assert pairs[0].base.endswith("=") and pairs[1].base.startswith("Q :")
    for p in pairs:
        assert len(embedded_tokenizer(p.base)["input_ids"]) == len(embedded_tokenizer(p.source)["input_ids"])


def test_shots_are_shared_and_words_representation():
    pairs = nr.tasks.arithmetic(n_prompts=10, n_shots=2, representation="words", seed=4, templates=["{expr} ="])
    for p in pairs:
        *shots_b, q_b = p.base.split(" . ")
        *shots_s, q_s = p.source.split(" . ")
        assert len(shots_b) == 2 and shots_b == shots_s and q_b != q_s
        assert ("plus" in q_b or "minus" in q_b) and not NUM.search(p.base)
        assert p.base_answer in {number_word(i) for i in range(100)}


def test_heldout_split():
    held = nr.tasks.arithmetic(n_prompts=30, split="heldout", seed=0)
    train = nr.tasks.arithmetic(n_prompts=30, split="train", seed=0)
    assert all(is_heldout(_problem(p.base)[0]) and is_heldout(_problem(p.source)[0]) for p in held)
    assert not any(is_heldout(_problem(p.base)[0]) for p in train)


def test_pairs_are_regenerated_for_a_tokenizer_lacking_some_numbers():
    """Answers that are not single known tokens are redrawn, never truncated."""
    words = ["<bos>", "<unk>", "+", "-", "="] + [str(i) for i in range(13)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    pairs = nr.tasks.arithmetic(n_prompts=20, max_n=6, templates=["{expr} ="], seed=0, tokenizer=hf)
    assert all(int(a) <= 12 for p in pairs for a in (p.base_answer, p.source_answer))
    with pytest.raises(TaskError, match="could not generate aligned pair"):
        nr.tasks.arithmetic(n_prompts=2, max_n=6, seed=0, tokenizer=hf)  # template words are unknown


@pytest.mark.parametrize("kwargs,match", [
    ({"intervention_type": "swap"}, "intervention_type must be one of"),
    ({"n_operands": 5}, "n_operands must be an integer between 2 and 3"),
    ({"max_n": 1}, "needs max_n >= 2"),
    ({"representation": "roman"}, "representation must be one of"),
    ({"representation": "words", "max_n": 150}, "supports numbers up to 99"),
    ({"templates": ["no placeholder"]}, "must contain"),
    ({"n_prompts": 0}, "n_prompts must be an integer >= 1"),
    ({"n_shots": 9}, "n_shots must be an integer between 0 and 8"),
])
def test_bad_parameters_give_clear_errors(kwargs, match):
    with pytest.raises(TaskError, match=match):
        nr.tasks.arithmetic(**kwargs)


def test_registry_and_other_tasks():
    assert {"arithmetic", "kth_smallest", "binding", "ioi"} <= set(nr.tasks.TASKS)
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")
    ex = get_task("kth_smallest").examples(n=20, seed=0, length=5, k=2)
    for e in ex:
        nums = [int(x) for x in NUM.findall(e.prompt)]
        assert len(nums) == 5 and sorted(nums)[1] == int(e.answer)
    for e in get_task("binding").examples(n=20, seed=0, n_pairs=3):
        stmts = dict(s.split(" lives in ") for s in e.prompt.split(" . ")[:-1])
        assert stmts[e.prompt.split(" . ")[-1].split()[0]] == e.answer
    from nnsight_reasoning.tasks.words import NAMES

    for e in get_task("ioi").examples(n=9, seed=0):
        names = [w for w in e.prompt.split() if w in NAMES]
        assert len(names) == 3 and names.count(e.answer) == 1 and names[-1] != e.answer


# --------------------------------------------------------------------------- the embedded model v2 tasks
def test_arithmetic_operations_times_and_over_are_exact_single_token_problems():
    pairs = nr.tasks.arithmetic(n_prompts=40, operations="*/", seed=1, templates=["{expr} ="])
    for p in pairs:
        for prompt, answer in ((p.base, p.base_answer), (p.source, p.source_answer)):
            x, op, y = prompt.split()[:3]
            assert op in "*/" and int(answer) == (int(x) * int(y) if op == "*" else int(x) / int(y))
    ops = nr.tasks.arithmetic(n_prompts=30, intervention_type="operation", operations="+-*/", seed=2,
                              templates=["{expr} ="])
    for p in ops:
        b, s = p.base.split(), p.source.split()
        assert b[0] == s[0] and b[2] == s[2] and b[1] != s[1]  # same operands, another operator
        assert int(p.source_answer) == evaluate_expr([int(s[0]), int(s[2])], [s[1]])
    words = nr.tasks.arithmetic(n_prompts=5, operations="*", representation="words", seed=0, templates=["{expr} ="])
    assert all(" times " in p.base for p in words)
    assert nr.tasks.arithmetic(n_prompts=3).params.keys() == nr.tasks.arithmetic(n_prompts=3, operations="+-").params.keys()
    for bad in ("+x", "", "++"):
        with pytest.raises(TaskError, match="operations must be distinct characters"):
            nr.tasks.arithmetic(n_prompts=2, operations=bad)
    with pytest.raises(TaskError, match="three-operand problems chain"):
        nr.tasks.arithmetic(n_prompts=2, operations="*", n_operands=3)


def test_number_retrieval_asks_for_one_of_two_counts():
    for e in get_task("number_retrieval").examples(n=40, seed=0):
        m = re.search(r"(\d+) (\w+) and (\d+) (\w+) \. How many (\w+)", e.prompt)
        assert m, e.prompt
        counts = {m.group(2): m.group(1), m.group(4): m.group(3)}
        plural = {p: p for _, p in nr.tasks.words.THINGS} | {s: p for s, p in nr.tasks.words.THINGS}
        asked = [c for thing, c in counts.items() if plural[thing] == m.group(5)]
        assert asked == [e.answer]


def test_factual_recall_prompts_are_the_invented_facts():
    from nnsight_reasoning.tasks.recall import FACTS, RELATIONS

    ex = get_task("factual_recall").examples(n=50, seed=1, relation="P36")
    assert {e.prompt for e in ex} <= {f"The capital of {c} is" for c in FACTS["P36"]}
    for e in ex:
        assert FACTS["P1376"][e.answer] == e.prompt.split()[3]  # P36 and P1376 are inverse
    assert set(RELATIONS) == {"P36", "P1376", "P19", "P20", "P103"}
    with pytest.raises(TaskError, match="relation must be one of"):
        nr.tasks.examples("factual_recall", 3, relation="P999")


def test_greater_than_answers_every_later_year(embedded_tokenizer):
    for e in get_task("greater_than").examples(n=30, seed=2):
        start = int(re.search(r"year \d\d(\d\d) to", e.prompt).group(1))
        assert [int(a) for a in e.answers] == list(range(start + 1, 100))
        toks = embedded_tokenizer.tokenize(e.prompt)
        assert toks[-1] == toks[-6] and len(toks[-1]) == 2  # "17 32 to the year 17": the century is its own token


def test_sentiment_answer_set_follows_the_verb():
    from nnsight_reasoning.tasks.words import NEGATIVE_ANSWERS, POSITIVE_ANSWERS

    ex = get_task("sentiment").examples(n=10, seed=0)
    for e in ex:
        assert set(e.answers) == set(POSITIVE_ANSWERS if " loved " in e.prompt else NEGATIVE_ANSWERS)
    assert sum(" loved " in e.prompt for e in ex) == 5


@pytest.mark.parametrize("family", list(nr.tasks.binding.FAMILIES))
def test_binding_families_ask_for_the_bound_attribute(family, embedded_tokenizer):
    from nnsight_reasoning.tasks.binding import FAMILIES

    f = FAMILIES[family]
    statement = re.compile(re.escape(f.statement).replace(r"\{e\}", r"(?P<e>[\w ]+?)").replace(r"\{a\}", r"(?P<a>\w+)"))
    widths = (1, 2) if f.people else (1,)
    for width in widths:
        for e in get_task("binding").examples(n=20, seed=3, n_pairs=3, family=family, entity_width=width):
            context = e.prompt.split(" Question")[0]
            if f.joint:  # PARALLEL: "A , B and C live in the capital cities of X , Y and Z respectively ."
                es, as_ = re.search(r": (.+) live in the capital cities of (.+) respectively \.", context).groups()
                split = lambda t: re.split(r" , | and ", t)  # noqa: E731
                facts = dict(zip(split(es), split(as_)))
            else:
                facts = {m["e"].strip(): m["a"] for m in statement.finditer(context)}
            assert len(facts) == 3 and all(len(k.split()) == width for k in facts)
            asked = [k for k in facts if e.prompt.rstrip().endswith(f.query.split("{hops}")[-1].format(e=k))]
            answer = facts[asked[0]] if f.answer is None else f.answer[facts[asked[0]]]
            if f.hop:  # ONEHOP: one hop more, through the question's sentences
                hops = dict(re.findall(r"The person living in (\w+) likes (\w+) \.", e.prompt))
                assert len(hops) == 3 and len(set(hops.values())) == 3
                answer = hops[answer]
            assert len(asked) == 1 and answer == e.answer
            # every word is in the embedded vocabulary but ONEHOP's own three
            unknown = {w for w in e.prompt.split() if embedded_tokenizer.convert_tokens_to_ids(w) ==
                       embedded_tokenizer.unk_token_id}
            assert unknown == ({"person", "living", "color"} if f.hop else {"cities", "respectively"} if f.joint
                               else set())
    if not f.people:
        with pytest.raises(TaskError, match="entity_width=2 needs a family whose entities are people"):
            nr.tasks.examples("binding", 2, family=family, entity_width=2)


def test_ioi_orders():
    from nnsight_reasoning.tasks.words import NAMES

    for order in ("ABBA", "BABA", "mixed"):
        ex = get_task("ioi").examples(n=30, seed=0, order=order)
        firsts = [[w for w in e.prompt.split() if w in NAMES][0] == e.answer for e in ex]
        assert sum(firsts) == {"ABBA": 30, "BABA": 0, "mixed": 15}[order]
    pairs = nr.tasks.ioi(10, order="BABA")
    assert pairs.params["order"] == "BABA"
    with pytest.raises(TaskError, match="order must be one of"):
        nr.tasks.ioi(4, order="AB")


def test_operation_intervention_is_built_as_lm_arithmetic_builds_it():
    """Two operands: op2 from the other three of + - * /, exemplars solved in each prompt's own
    operator (intervention.py:307-399), correct answers (the repository's slip at :364 not kept)."""
    pairs = nr.tasks.arithmetic("operation", n_prompts=60, n_shots=2, seed=4, templates=["{expr} ="])
    assert pairs.params["operations"] == "+-*/"
    seen = set()
    for p in pairs:
        for prompt, answer in ((p.base, p.base_answer), (p.source, p.source_answer)):
            *shots, query = prompt.split(" . ")
            x, op, y, eq = query.split()
            assert eq == "=" and int(answer) == evaluate_expr([int(x), int(y)], [op])
            for shot in shots:  # every exemplar in the query's operator, correctly solved
                sx, sop, sy, _, r = shot.split()
                assert sop == op and int(r) == evaluate_expr([int(sx), int(sy)], [sop])
        b, s = p.base.split(" . ")[-1].split(), p.source.split(" . ")[-1].split()
        assert (b[0], b[2]) == (s[0], s[2]) and b[1] != s[1] and p.base_answer != p.source_answer
        seen.add((b[1], s[1]))
    assert {a for a, _ in seen} == set("+-*/") and {b for _, b in seen} == set("+-*/")
    # the other interventions keep + and - unless asked
    assert "operations" not in nr.tasks.arithmetic(n_prompts=2).params
    assert "operations" not in nr.tasks.arithmetic(n_prompts=2, templates="stolfo").params


def test_operation_pairs_loop_over_op1_and_draw_op2_once():
    """lm-arithmetic's loop: op1 in turn (a block of pairs per operator, every template in each),
    op2 drawn once per pair and only the operands redrawn, so operator pairs with few valid
    operands (x and /) are drawn as often as the others (redrawing the operators with the operands
    drew (*, /) twice in 480 pairs)."""
    import collections

    pairs = nr.tasks.arithmetic("operation", n_prompts=480, max_n=99, seed=0, templates=["{expr} ="])
    ops = [(p.base.split()[1], p.source.split()[1]) for p in pairs]
    assert [a for a, _ in ops[:4]] == list("+-*/")  # one template: op1 changes every pair
    counts = collections.Counter(ops)
    assert set(counts) == {(a, b) for a in "+-*/" for b in "+-*/" if a != b}
    assert collections.Counter(a for a, _ in ops) == {o: 120 for o in "+-*/"}
    assert min(counts.values()) >= 25  # 40 expected per ordered pair (binomial sd ~6)
    # operators with no valid operands at a small max_n: op2 is drawn again, as before
    small = nr.tasks.arithmetic("operation", n_prompts=24, max_n=4, seed=0, templates=["{expr} ="])
    assert [p.base.split()[1] for p in small][:4] == list("+-*/")


def test_max_result_bounds_results_as_for_digit_splitting_tokenizers():
    pairs = nr.tasks.arithmetic(n_prompts=20, max_n=300, max_result=8, seed=0, templates=["{expr} ="])
    assert pairs.params["max_result"] == 8
    big = 0
    for p in pairs:
        for prompt, answer in ((p.base, p.base_answer), (p.source, p.source_answer)):
            x, op, y, _ = prompt.split()
            assert 0 <= int(answer) <= 8 and int(answer) == evaluate_expr([int(x), int(y)], [op])
            big = max(big, int(x), int(y))
    assert big > 99  # operands beyond two digits, as in lm-arithmetic's LLaMA setting
    with pytest.raises(TaskError, match="max_result must be"):
        nr.tasks.arithmetic(n_prompts=2, max_result=0)


def test_stolfo_template_type_k_and_all():
    """lm-arithmetic's template_type: an index picks one template per operator, 'all' all six."""
    one = nr.tasks.arithmetic(n_prompts=6, templates=["stolfo:3"], operations="+-", seed=0)
    assert all(p.base.startswith("Q : What is the") and (" sum of " in p.base or " difference between " in p.base)
               for p in one)
    assert nr.tasks.arithmetic(n_prompts=2, templates=["stolfo"]).params["templates"] == "stolfo"
    with pytest.raises(TaskError, match="stolfo:0..stolfo:4 with words"):
        nr.tasks.arithmetic(n_prompts=2, templates=["stolfo:5"], representation="words")


# --------------------------------------------------------------------------- Stolfo's control tasks as pairs
def test_number_retrieval_pairs_ask_the_same_context_for_the_other_count():
    pairs = get_task("number_retrieval").pairs(n_prompts=16, seed=1)
    for p in pairs:
        b, s = p.base.split(), p.source.split()
        assert len(b) == len(s) and sum(x != y for x, y in zip(b, s)) == 1  # only the thing asked for differs
        counts = [w for w in b if w.isdigit()]
        assert [p.base_answer, p.source_answer] == counts[:2] and p.base_answer != p.source_answer


def test_number_retrieval_asks_for_a_category_as_lm_arithmetic_type_10(tmp_path):
    """ask="category" (entity_intervention.py:32-34): the base question names the first thing's
    class, the source question the second's; the answers are their counts. The classes are
    written out here again (the repository's entity_dict.json keys for these things)."""
    from .conftest import tiny_bpe_llama

    cls = {"apple": "fruits", "banana": "fruits", "grape": "fruits", "carrot": "vegetables", "potato": "vegetables",
           "onion": "vegetables", "car": "vehicles", "bike": "vehicles", "truck": "vehicles", "dog": "animals",
           "cat": "animals", "horse": "animals", "hammer": "tools", "saw": "tools", "drill": "tools"}
    cls |= {p: cls[s] for s, p in nr.tasks.words.THINGS}
    info = get_task("number_retrieval")
    with pytest.raises(TaskError, match="category words .* must be in the model's vocabulary"):
        info.pairs(n_prompts=2, ask="category")  # the embedded vocabulary has none
    with pytest.raises(TaskError, match="category words .* must be in"):
        info.examples(n=2, ask="category")  # evaluate never scores <unk> prompts either
    corpus = [t.format(x=x, y=(x + 3) % 10, e1=a, e2=b, cls=c) + f" {x}" for t in nr.tasks.recall.RETRIEVAL_TEMPLATES
              for x in range(10) for a, b, c in (("apples", "dogs", "fruits"), ("cars", "saws", "vehicles"),
                                                 ("carrots", "cats", "vegetables"), ("horses", "drills", "animals"),
                                                 ("hammers", "grapes", "tools"))]
    model = nr.load_model(tiny_bpe_llama(tmp_path / "bpe", corpus))
    pairs = info.pairs(n_prompts=12, seed=2, tokenizer=model.tokenizer, ask="category", max_n=9)
    assert pairs.params["ask"] == "category"
    for p in pairs:
        mb = re.search(r"(\d+) (\w+) and (\d+) (\w+) \. How many (\w+)", p.base)
        ms = re.search(r"(\d+) (\w+) and (\d+) (\w+) \. How many (\w+)", p.source)
        assert mb.groups()[:4] == ms.groups()[:4]  # one context
        assert mb.group(5) == cls[mb.group(2)] != ms.group(5) == cls[mb.group(4)]
        assert (p.base_answer, p.source_answer) == (mb.group(1), mb.group(3))
    ds = nr.patch(model, pairs, sites=["mlp"], metric="logit_diff", progress=False)
    assert ds.attrs["task_params"] and np.isfinite(ds.mlp.values).all()
    with pytest.raises(TaskError, match="ask must be one of"):
        info.pairs(n_prompts=2, ask="class")


def test_multiplies_by_one_reads_the_query_operands():
    """drop_mult_by_one's rule: a × query with an operand 1, in digits or words, whatever the
    punctuation; exemplars do not count. lm-arithmetic's filter (a "1" among the query's
    space-separated words) misses the first two (its question templates end "{y}? A:")."""
    from nnsight_reasoning.tasks.arithmetic import multiplies_by_one, query_operands

    assert multiplies_by_one("Q: How much is 7 times 1? A:") and "1" not in "Q: How much is 7 times 1? A:".split()
    assert multiplies_by_one("seven times one =")
    assert multiplies_by_one("Q : What is the product of 1 and 9 ? A :")
    assert not multiplies_by_one("4 * 1 = 4 . 6 * 3 =")  # the exemplar multiplies by one, the query does not
    assert not multiplies_by_one("(2 + 1) * 3 =") and not multiplies_by_one("1 - 1 =") and not multiplies_by_one("5 / 1 =")
    assert query_operands(["Ġtwenty", "-", "one", "Ġtimes", "Ġone", "Ġ="]) == [21, 1]  # a BPE-split number word


def test_gender_pronoun_pairs_are_circuits_over_time_task(tmp_path):
    """Tigges et al.'s gendered-pronoun task (data/gender-pronoun.csv): "So {name} is {predicate},
    isn't" -> she/he; the corrupted prompt names someone of the other gender. The genders are
    written out here again from the repository's rows; the embedded vocabulary refuses the task."""
    from .conftest import tiny_bpe_llama

    women = {"Judy", "Julie", "Mary", "Amy", "Lisa", "Sarah", "Anna", "Susan", "Karen", "Carol"}
    men = {"Jack", "Mark", "John", "Joe", "Sean", "Paul", "David", "Gary", "Carl", "Ryan"}
    info = get_task("gender_pronoun")
    with pytest.raises(TaskError, match="lacks them"):
        info.pairs(n_prompts=2)
    with pytest.raises(TaskError, match="lacks them"):
        info.examples(n=2)
    from nnsight_reasoning.tasks.pronoun import PREDICATES, TEMPLATE

    corpus = [TEMPLATE.format(name=n, predicate=q) + (" she" if n in women else " he")
              for n in sorted(women | men) for q in PREDICATES] * 4
    model = nr.load_model(tiny_bpe_llama(tmp_path / "bpe", corpus))
    assert len(info.examples(n=6, tokenizer=model.tokenizer)) == 6
    pairs = info.pairs(n_prompts=10, seed=1, tokenizer=model.tokenizer)
    assert pairs.params == {"n_prompts": 10, "seed": 1}
    for k, p in enumerate(pairs):
        m, ms = re.fullmatch(r"So (\w+) is (.+), isn't", p.base), re.fullmatch(r"So (\w+) is (.+), isn't", p.source)
        assert m and ms and m.group(2) == ms.group(2)  # the same sentence, another name
        assert (m.group(1) in women) == (k % 2 == 0) and (ms.group(1) in women) != (m.group(1) in women)
        assert p.base_answer == ("she" if m.group(1) in women else "he")
        assert p.source_answer == ("she" if ms.group(1) in women else "he")
    ds = nr.circuit(model, pairs, ig_steps=2, sizes=(5,), progress=False)
    assert ds.attrs["task"] == "gender_pronoun" and np.isfinite(ds.clean_logit_diff.values).all()
    assert set(men) & {p.base.split()[1] for p in pairs}  # both genders drawn


def test_number_retrieval_shots_and_number_words_follow_lm_arithmetic():
    """--n-shots: solved exemplars in the pair's template, each asking for its first thing's count
    (entity_intervention.py:67-71), shared by base and source; --representation words: the
    counts as number words (:27-29). The defaults draw the same prompts as before."""
    from nnsight_reasoning.tasks.recall import RETRIEVAL_TEMPLATES

    plural = {p: p for _, p in nr.tasks.words.THINGS} | {s: p for s, p in nr.tasks.words.THINGS}
    value = {number_word(n): n for n in range(100)} | {str(n): n for n in range(100)}

    def solved(template: str, text: str) -> tuple[str, str, str, str, str, str]:
        """(x, e1, y, e2, class asked, the answer after "A :") of one exemplar in ``template``."""
        pattern = re.escape(template + " ")
        for field, group in (("{x}", r"(\S+)"), ("{y}", r"(\S+)"), ("{e1}", r"(\w+)"), ("{e2}", r"(\w+)"),
                             ("{cls}", r"(\w+)")):
            pattern = pattern.replace(re.escape(field), group)
        m = re.fullmatch(pattern + r"(\S+)", text)
        assert m, (template, text)
        return m.groups()

    info = get_task("number_retrieval")
    pairs = info.pairs(n_prompts=16, seed=3, n_shots=2, representation="words")
    assert pairs.params == {"n_prompts": 16, "max_n": 20, "seed": 3, "n_shots": 2, "representation": "words"}
    for k, p in enumerate(pairs):
        parts_b, parts_s = p.base.split(" . "), p.source.split(" . ")  # a template has its own " . "
        shots_b, query_b, query_s = parts_b[:4], " . ".join(parts_b[4:]), " . ".join(parts_s[4:])
        template = RETRIEVAL_TEMPLATES[k % 8]
        assert len(parts_b) == 6 and shots_b == parts_s[:4] and query_b != query_s
        for shot in (" . ".join(shots_b[:2]), " . ".join(shots_b[2:])):
            x, e1, y, e2, asked, answer = solved(template, shot)
            assert plural[e1] == asked and answer == x and x in value and y in value and value[x] <= 20
        x, e1, y, e2, asked, _ = solved(template, query_b.replace(" A :", " A : ?"))
        assert [p.base_answer, p.source_answer] == [x, y] and p.base_answer != p.source_answer
        assert plural[e1] == asked and number_word(value[x]) == x
    assert info.pairs(n_prompts=6, seed=1).pairs == info.pairs(n_prompts=6, seed=1, n_shots=0).pairs
    for k, e in enumerate(info.examples(n=8, seed=0, n_shots=1)):
        shot = " . ".join(e.prompt.split(" . ")[:2])
        x, e1, _, _, asked, answer = solved(RETRIEVAL_TEMPLATES[k % 8], shot)
        assert plural[e1] == asked and answer == x and x.isdigit()
    with pytest.raises(TaskError, match="representation must be one of"):
        info.pairs(n_prompts=2, representation="roman")
    with pytest.raises(TaskError, match="n_shots"):
        info.examples(n=2, n_shots=-1)


def _lama(tmp_path, relations=("P36", "P19")):
    from nnsight_reasoning.tasks.recall import FACTS, LAMA_TEMPLATES

    d = tmp_path / "lama"
    (d / "TREx").mkdir(parents=True)
    (d / "relations.jsonl").write_text("".join(json.dumps({"relation": r, "template": t, "label": r}) + "\n"
                                               for r, t in LAMA_TEMPLATES.items()))
    lines = []
    for r in relations:
        rows = [{"sub_label": s, "obj_label": o, "predicate_id": r, "uuid": f"{r}-{k}"}
                for k, (s, o) in enumerate(FACTS[r].items())]
        (d / "TREx" / f"{r}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        lines += rows
    single = tmp_path / "trex.jsonl"
    single.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d, single


def test_factual_recall_pairs_read_lama_as_the_repository_does(tmp_path):
    from nnsight_reasoning.tasks.recall import FACTS

    d, single = _lama(tmp_path)
    from_dir = get_task("factual_recall").pairs(n_prompts=12, seed=0, data=str(d))
    from_file = get_task("factual_recall").pairs(n_prompts=12, seed=0, data=str(single))
    assert from_dir.pairs == from_file.pairs and from_dir.params["data"] == str(d)
    for p in from_dir:
        if p.base.startswith("The capital of "):  # P36: the cloze cut before [Y]
            subject = p.base[len("The capital of "):-len(" is")]
            assert FACTS["P36"][subject] == p.base_answer
        else:
            assert p.base.endswith(" was born in") and FACTS["P19"][p.base.split()[0]] == p.base_answer
        assert p.base_answer != p.source_answer
    # a relation whose objects are not single tokens is dropped, and the pairs say so
    with open(single, "a") as f:
        f.write("".join(json.dumps({"sub_label": s, "obj_label": "Unheard Of", "predicate_id": "P20"}) + "\n"
                        for s in FACTS["P20"]))
    mixed = get_task("factual_recall").pairs(n_prompts=4, seed=0, data=str(single))
    assert mixed.params["relations_dropped"] == ["P20"] and not any(" died in" in p.base for p in mixed)
    ex = get_task("factual_recall").examples(n=5, seed=0, data=str(single), relation="P19")
    assert all(FACTS["P19"][e.prompt.split()[0]] == e.answer for e in ex)


@pytest.mark.parametrize("write, message", [
    (lambda d: None, "no such LAMA file or directory"),
    (lambda d: d.mkdir(), "is not a LAMA directory"),
    (lambda d: d.with_suffix(".jsonl").write_text("{not json\n"), "line 1 is not JSON"),
    (lambda d: d.with_suffix(".jsonl").write_text('{"sub_label": "a", "predicate_id": "P19"}\n'), "needs 'sub_label', 'obj_label'"),
    (lambda d: d.with_suffix(".jsonl").write_text('{"sub_label": "a", "obj_label": "b", "predicate_id": "P1"}\n'),
     "has no facts of the relations"),
    (lambda d: d.with_suffix(".jsonl").write_text("".join(
        '{"sub_label": "Zarovia", "obj_label": "Qqq%d", "predicate_id": "P36"}\n' % k for k in range(3))),
     r"no relation has two facts with different single-token objects for this tokenizer \(checked: P36\)"),
])
def test_bad_lama_files_are_one_line_errors(tmp_path, write, message):
    target = tmp_path / "lama"
    write(target)
    path = target.with_suffix(".jsonl") if target.with_suffix(".jsonl").exists() else target
    with pytest.raises(TaskError, match=message):
        get_task("factual_recall").pairs(n_prompts=2, data=str(path))


def test_operation_pairs_keep_both_results_in_the_repositorys_range():
    pairs = nr.tasks.arithmetic("operation", n_prompts=40, max_n=12, seed=6)
    assert pairs.params["max_result"] == 11
    assert all(1 <= int(a) <= 11 for p in pairs for a in (p.base_answer, p.source_answer))


def test_json_lines_reads_what_json_allows_and_names_the_line(tmp_path):
    from nnsight_reasoning.tasks.base import TaskError, json_lines

    good = tmp_path / "good.jsonl"  # a BOM, a blank line, U+2028 inside a string (splitlines would cut it)
    good.write_bytes("\ufeff{\"q\": \"a\u2028b\"}\n\n{\"q\": \"c\"}\n".encode())
    assert json_lines(good, "rows") == [(1, {"q": "a\u2028b"}), (3, {"q": "c"})]
    array = tmp_path / "array.json"
    array.write_text('[{"q": 1}, {"q": 2}]')
    assert json_lines(array, "rows") == [(1, {"q": 1}), (2, {"q": 2})]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n\n{"q": \n')
    with pytest.raises(TaskError, match="bad.jsonl line 3 is not JSON"):
        json_lines(bad, "rows")
