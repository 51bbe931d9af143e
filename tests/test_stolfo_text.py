"""lm-arithmetic's own prompt strings (``text="repository"``, ``interventions/intervention.py:220-269``)
for subword tokenizers: the strings against the repository's templates written out again here,
the exemplars' newlines and arabic numerals, the token roles against the repository's own way of
finding operand and operator positions (``interventions/__init__.py:105-127``), and a patching run
through the CLI on a tiny model with a byte-level BPE."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import nnsight_reasoning as nr
from nnsight_reasoning.tasks import TaskError
from nnsight_reasoning.tasks.arithmetic import token_roles

from .clirun import in_process as reason_interp
from .conftest import tiny_bpe_llama

# interventions/intervention.py:220-243 at 85818c4, as the repository writes them
REPOSITORY = {
    "+": ["Q: How much is {x} plus {y}? A:", "Q: What is {x} plus {y}? A:", "Q: What is the result of {x} plus {y}? A:",
          "Q: What is the sum of {x} and {y}? A:", "The sum of {x} and {y} is", "{x} + {y} ="],
    "-": ["Q: How much is {x} minus {y}? A:", "Q: What is {x} minus {y}? A:",
          "Q: What is the result of {x} minus {y}? A:", "Q: What is the difference between {x} and {y}? A:",
          "The difference between {x} and {y} is", "{x} - {y} ="],
    "*": ["Q: How much is {x} times {y}? A:", "Q: What is {x} times {y}? A:",
          "Q: What is the result of {x} times {y}? A:", "Q: What is the product of {x} and {y}? A:",
          "The product of {x} and {y} is", "{x} * {y} ="],
    "/": ["Q: How much is {x} over {y}? A:", "Q: What is {x} over {y}? A:", "Q: What is the result of {x} over {y}? A:",
          "Q: What is the ratio between {x} and {y}? A:", "The ratio of {x} and {y} is", "{x} / {y} ="],
}
WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "over"}
# interventions/entity_intervention.py:50-57 ({class} written {cls})
RETRIEVAL = ["Q: I have {x} {e1} and {y} {e2}. How many {cls} do I have? A:",
             "Q: Paul has {x} {e1} and {y} {e2}. How many {cls} does Paul have? A:",
             "Q: I can see {x} {e1} and {y} {e2}. How many {cls} are there? A:",
             "Q: I have {x} {e1} and {y} {e2}. How many {cls} are there? A:",
             "Q: Alice received {x} {e1} and {y} {e2}. How many {cls} did she receive? A:",
             "Q: Mark bought {x} {e1} and {y} {e2}. How many {cls} did he buy? A:",
             "Q: Jasmin sold {x} {e1} and {y} {e2}. How many {cls} did she sell? A:",
             "Q: Sarah owns {x} {e1} and {y} {e2}. How many {cls} does she own? A:"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """A tiny Llama with a byte-level BPE trained on the repository's strings (numbers 1-20 and
    their results, in numerals and words, exemplars on their own lines), so "?" and ":" sit beside
    words as in GPT-2."""
    from nnsight_reasoning.tasks.arithmetic import number_word

    corpus = []
    for (op, ts), x, y in itertools.product(REPOSITORY.items(), range(1, 21), range(1, 21)):
        for t in ts:
            corpus.append(t.format(x=x, y=y) + f" {x + y}\n" + t.format(x=y, y=x) + f" {abs(x - y)}")
            corpus.append(t.format(x=number_word(x), y=number_word(y)) + f" {number_word(x + y)}")
    things = nr.tasks.words.THINGS
    for t, (a, b), n in itertools.product(RETRIEVAL, itertools.combinations(range(len(things)), 2), range(0, 21, 4)):
        corpus.append(t.format(x=n, y=n + 1, e1=things[a][1], e2=things[b][1], cls=things[a][1]) + f" {n}\n"
                      + t.format(x=1, y=n, e1=things[a][0], e2=things[b][1], cls=things[b][1]))
    return tiny_bpe_llama(tmp_path_factory.mktemp("stolfo_bpe"), corpus)


def _solve(op: str, x: int, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]


def test_repository_text_is_the_repository_s_strings(bpe_dir):
    """Every query is one of the repository's templates with the pair's operands; exemplars
    are its template solved, one per line, in arabic numerals even when the query is in words."""
    tok = nr.load_model(str(bpe_dir)).tokenizer
    pairs = nr.tasks.arithmetic(n_prompts=24, templates="stolfo", text="repository", operations="+-*/", n_shots=2,
                                tokenizer=tok, seed=3)
    assert pairs.params["text"] == "repository"
    for i, p in enumerate(pairs):
        op = "+-*/"[(i // 6) % 4]  # the repository's loop: a block per operator, every template in each
        template = REPOSITORY[op][i % 6]
        for text, answer in ((p.base, p.base_answer), (p.source, p.source_answer)):
            *shots, query = text.split("\n")
            assert len(shots) == 2
            hits = [(x, y) for x in range(1, 21) for y in range(1, 21) if template.format(x=x, y=y) == query]
            assert len(hits) == 1 and str(_solve(op, *hits[0])) == answer, (query, answer)
            for line in shots:
                shot = [(x, y) for x in range(1, 21) for y in range(1, 21)
                        if line == template.format(x=x, y=y) + f" {_solve(op, x, y)}"]
                assert len(shot) == 1, line
    words = nr.tasks.arithmetic(n_prompts=5, templates="stolfo", text="repository", representation="words",
                                n_shots=1, tokenizer=tok, seed=1)
    for p in words:
        shot, query = p.base.split("\n")
        assert any(c.isdigit() for c in shot) and not any(c.isdigit() for c in query)  # intervention.py:263-277
    # the default text is the toolkit's spaced one: the same draw, other strings
    spaced = nr.tasks.arithmetic(n_prompts=24, templates="stolfo", operations="+-*/", seed=3)
    assert "text" not in spaced.params and spaced.pairs[0].base.endswith(" ? A :")


def test_token_roles_find_what_the_repository_finds(bpe_dir):
    """On the BPE tokens, operand 2 is the last occurrence of " y", operand 1 the last " x" before
    it, the operator the last operator word (``set_position_of_tokens``); every token through the
    exemplars' last newline is "shots", the final one "last"."""
    tok = nr.load_model(str(bpe_dir)).tokenizer
    pairs = nr.tasks.arithmetic(n_prompts=24, templates="stolfo", text="repository", operations="+-*/", n_shots=1,
                                tokenizer=tok, seed=5)
    checked = 0
    for i, p in enumerate(pairs):
        op = "+-*/"[(i // 6) % 4]
        ids = tok(p.base)["input_ids"]
        tokens = tok.convert_ids_to_tokens(ids)
        roles = token_roles(tokens)
        x, y = [int(w) for w in p.base.split("\n")[-1].replace("?", " ").split() if w.isdigit()]
        one = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        x_tok, y_tok = one(" " + str(x)), one(" " + str(y))
        if i % 6 == 5:  # the symbolic template starts its line: no space before x (the repository's "\n" prefix)
            x_tok = one(str(x))
        if len(x_tok) != 1 or len(y_tok) != 1:
            continue  # the repository asserts one token each
        op2 = max(k for k, t in enumerate(ids) if t == y_tok[0])
        op1 = max(k for k, t in enumerate(ids[:op2]) if t == x_tok[0])
        word = op if i % 6 == 5 else ({"+": "sum", "-": "difference", "*": "product", "/": "ratio"}[op]
                                      if i % 6 in (3, 4) else WORDS[op])
        op_tok = one(" " + word)
        operator = max(k for k, t in enumerate(ids) if t == op_tok[0])
        newline = max(k for k, t in enumerate(tokens) if "Ċ" in t)
        assert (roles[op1], roles[op2], roles[operator]) == ("operand 1", "operand 2", "operator"), (p.base, roles)
        assert set(roles[:newline + 1]) == {"shots"} and "shots" not in roles[newline + 1:]
        assert roles[-1] == "last" and roles.count("operand 1") == 1 and roles.count("operand 2") == 1
        checked += 1
    assert checked >= 20


def test_repository_text_patches_through_the_cli(bpe_dir, tmp_path):
    out = tmp_path / "p.nc"
    r = reason_interp(["patch", "--model", str(bpe_dir), "--task", "arithmetic", "--template", "stolfo",
                       "--param", "text=repository", "--param", "n_shots=1", "--param", "operations=+-*/",
                       "--n-prompts", "8", "--positions", "all", "--site", "mlp", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = nr.load_result(out)
    assert ds.attrs["task_params"].count('"text": "repository"') == 1
    roles = nr.by_token_role(ds)
    assert {"shots", "operand 1", "operator", "operand 2", "last"} <= set(roles["role"].values)
    assert np.isfinite(roles["mlp"].sel(role="operand 2")).all()


def test_repository_text_refuses_what_it_cannot_write():
    with pytest.raises(TaskError, match="needs a tokenizer that reads"):
        nr.tasks.arithmetic(n_prompts=2, templates="stolfo", text="repository")  # the embedded word-level tokenizer
    with pytest.raises(TaskError, match="use templates='stolfo'"):
        nr.tasks.arithmetic(n_prompts=2, text="repository")
    with pytest.raises(TaskError, match="text must be one of"):
        nr.tasks.arithmetic(n_prompts=2, templates="stolfo", text="verbatim")
    r = reason_interp(["patch", "--task", "arithmetic", "--template", "stolfo", "--param", "text=repository",
                       "--no-progress"])
    assert r.exit_code == 2 and "needs a tokenizer that reads" in r.stderr


def test_number_retrieval_repository_text(bpe_dir):
    """Number retrieval (type 11) in the repository's strings: the query is its template with the
    pair's things and counts, exemplars end with a newline; e_q is the thing asked about."""
    from nnsight_reasoning.tasks.recall import retrieval_roles

    tok = nr.load_model(str(bpe_dir)).tokenizer
    pairs = nr.tasks.get_task("number_retrieval").pairs(n_prompts=16, seed=2, tokenizer=tok, text="repository",
                                                        n_shots=1)
    assert pairs.params["text"] == "repository"
    things = nr.tasks.words.THINGS
    names = {w for pair in things for w in pair}
    for k, p in enumerate(pairs):
        template = RETRIEVAL[k % 8]
        for text, asked in ((p.base, 0), (p.source, 1)):
            shot, query = text.split("\n")
            head, question = query.split(". How many ")
            assert query.startswith(template.split("{x}")[0]) and question.endswith(template.split("{cls}")[1])
            counts = [w for w in head.split() if w.isdigit()]
            assert counts[asked] == (p.base_answer, p.source_answer)[asked]
            asked_thing = question.split()[0]  # the question names the plural; a count of 1 the singular
            plural = {w: pl for sg, pl in things for w in (sg, pl)}
            assert asked_thing in names and asked_thing in [plural.get(w) for w in head.split()]
            assert shot.startswith(template.split("{x}")[0]) and shot.split()[-1].isdigit()
            tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
            roles = retrieval_roles(tokens)
            e_q = [t for t, r in zip(tokens, roles) if r.startswith("e_q")]
            assert "".join(e_q).replace("Ġ", " ").strip() == asked_thing
            newline = max(i for i, t in enumerate(tokens) if "Ċ" in t)
            assert set(roles[:newline + 1]) == {"shots"} and roles[newline + 1] != "shots"
    assert any("Jasmin sold" in p.base for p in pairs)
    with pytest.raises(TaskError, match="needs a tokenizer that reads"):
        nr.tasks.get_task("number_retrieval").pairs(n_prompts=2, text="repository")


def test_repository_text_is_read_from_its_query_line():
    """The exemplars' newline ends them for every reader: the operator and the ×1 filter read
    the query (text_words), token roles start after a SentencePiece "<0x0A>" too."""
    from nnsight_reasoning.tasks.arithmetic import multiplies_by_one, operator_of, text_words

    text = "Q: How much is 3 times 4? A: 12\nQ: How much is 7 times 1? A:"
    assert operator_of(text_words(text)) == "*" and multiplies_by_one(text)
    assert operator_of(text_words("Q: How much is 3 times 4? A: 12\nQ: How much is 7 plus 1? A:")) == "+"
    assert not multiplies_by_one("Q: How much is 3 times 1? A: 3\nQ: How much is 7 times 2? A:")
    pieces = ["<s>", "▁Q", ":", "▁How", "▁much", "▁is", "▁", "3", "▁plus", "▁", "4", "?", "▁A", ":", "▁", "7",
              "<0x0A>", "Q", ":", "▁How", "▁much", "▁is", "▁", "2", "▁plus", "▁", "5", "?", "▁A", ":"]
    roles = token_roles(pieces)
    assert set(roles[:17]) == {"shots"} and roles[23] == "operand 1" and roles[24] == "operator"
    assert roles[26] == "operand 2" and roles[-1] == "last"


def test_repository_text_with_exemplars_needs_newlines():
    """The embedded word-level tokenizer drops the newline: exemplars would run into the query,
    even in the templates without "?" or ":" (stolfo:4, stolfo:5)."""
    with pytest.raises(TaskError, match="ends each exemplar with a newline, which this tokenizer drops"):
        nr.tasks.arithmetic(n_prompts=2, templates=["stolfo:5"], text="repository", n_shots=1)
    with pytest.raises(TaskError, match="drops the newline"):
        nr.tasks.get_task("number_retrieval").pairs(n_prompts=2, text="repository", n_shots=1)
    assert len(nr.tasks.arithmetic(n_prompts=2, templates=["stolfo:5"], text="repository")) == 2  # no exemplar
