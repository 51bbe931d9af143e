"""Task generators: determinism, intervention semantics, alignment, clear errors."""
from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nnsight_reasoning as nr
from nnsight_reasoning.tasks import TaskError, get_task
from nnsight_reasoning.tasks.arithmetic import evaluate_expr, is_heldout, number_word

NUM = re.compile(r"\b\d+\b")


def _problem(text: str) -> tuple[list[int], list[str]]:
    """Operands and operators of the queried (last) problem of an arabic prompt."""
    last = text.split(" . ")[-1]
    nums = [int(x) for x in NUM.findall(last)]
    ops = re.findall(r" ([+-]) ", last)
    return nums, ops


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


def test_operation_intervention():
    for p in nr.tasks.arithmetic("operation", n_prompts=40, seed=3):
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
    ({"n_prompts": 0}, "n_prompts must be >= 1"),
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
