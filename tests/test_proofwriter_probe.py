"""MechanisticProbe's ProofWriter protocol (``src/rtask/proofwriter_probe.py:181-221``): the per-m
probing sets drawn from ProofWriter's published files, the repository's prompt text, and one
probe per m, against an independent reading of the files and a hook-free recomputation of the
features and the kNN on a tiny Llama with a byte-level BPE."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.probe import fold_of_prompt
from nnsight_reasoning.tasks.base import TaskError

from .clirun import in_process as reason_interp
from .conftest import eager_hf, tiny_bpe_llama, write_proofwriter_theories
from .test_probe import _knn_predict, _macro_f1

DATA = Path(__file__).parent / "data"


FOLDERS = ("depth-0", "depth-1", "depth-2", "depth-3", "depth-5")  # src/utils.py:451, the repository's list


def _odd_row() -> dict:
    """A theory whose questions the probe must leave out (a proof with OR, none, or naming fewer
    statements than depth + 1) or keep for shots only (OR)."""
    texts = {"triple1": {"text": "Gary is cold."}, "triple2": {"text": "Gary is big."}}
    rules = {"rule1": {"text": "If someone is cold then they are red."}}
    qs = {"Q1": {"question": "Gary is red.", "answer": True, "QDep": 1, "QLen": 2,
                 "proofs": "[(((triple1) -> rule1)) OR (((triple2) -> rule1))]"},
          "Q2": {"question": "Gary is blue.", "answer": False, "QDep": 1, "QLen": "", "proofs": "[@0: Gary is blue.]"},
          "Q3": {"question": "Gary is big.", "answer": True, "QDep": 1, "QLen": 1, "proofs": "[(triple2)]"}}
    return {"id": "odd", "theory": "Gary is cold. Gary is big. If someone is cold then they are red.",
            "triples": texts, "rules": rules, "questions": qs}


@pytest.fixture(scope="module")
def cwa(tmp_path_factory) -> Path:
    """A ProofWriter ``CWA`` folder: depth-1 theories of 2, 4 and 8 statements and depth-0
    theories of 4, each with train/dev/test splits; a theory with an OR proof, one without a
    proof and one too short; and a ``depth-3ext`` folder the repository does not read."""
    root = tmp_path_factory.mktemp("proofwriter") / "CWA"
    write_proofwriter_theories(root / "depth-1", 90, (2, 4, 8), seed=0)
    write_proofwriter_theories(root / "depth-0", 12, (4,), seed=1)
    write_proofwriter_theories(root / "depth-3ext", 30, (4,), seed=2)
    with (root / "depth-1" / "meta-dev.jsonl").open("a") as f:
        f.write(json.dumps(_odd_row()) + "\n")
    return root


def _questions(root: Path, short: bool = False) -> list[dict]:
    """Every question the protocol may draw, read straight from the repository's folders in its
    order (test, dev, train, each over FOLDERS): (depth, m, theory row, question) for depth <= 1
    with a proof, no NAF and no OR, whose proof names at least depth + 1 statements (``short``:
    those that do not too, which the repository's pools hold until it deals them, :200)."""
    out = []
    for split in ("test", "dev", "train"):
        for folder in ("", *FOLDERS):
            f = root / folder / f"meta-{split}.jsonl"
            if not f.is_file():
                continue
            for line in f.read_text().splitlines():
                row = json.loads(line)
                for q in row["questions"].values():
                    if q["QLen"] == "" or "NAF" in q["proofs"] or "OR" in q["proofs"] or q["QDep"] > 1:
                        continue
                    enough = len(set(re.findall(r"(?:triple|rule)\d+", q["proofs"]))) >= q["QDep"] + 1
                    if enough or short:
                        out.append({"depth": q["QDep"], "m": len(row["triples"]) + len(row["rules"]), "row": row,
                                    "q": q, "enough": enough})
    return out


def test_seed_42_draws_the_repository_s_very_sets(cwa):
    """proofwriter_probe.py:192-209 written out again: random.seed(42) (fix_seed), depth 0's pool
    then depth 1's (test + dev + train, the depth folders in order) shuffled, questions dealt
    into m's (depth 0: m = 1) until a set has N; the toolkit's sets, prompt for prompt."""
    import random

    rng = random.Random(42)
    want: dict[int, list[str]] = {m: [] for m in (1, 2, 4, 8)}
    qs = _questions(cwa, short=True)
    assert not all(q["enough"] for q in qs)  # the fixture's short proof is in the pool
    for depth in (0, 1):
        pool = [q for q in qs if q["depth"] == depth]
        rng.shuffle(pool)
        for q in pool:
            m = 1 if depth == 0 else q["m"]
            if q["enough"] and m in want and len(want[m]) < 10:
                want[m].append(q["q"]["question"] + "|" + q["row"]["theory"])
    got = nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", n_prompts=10, seed=42)
    for m in want:
        texts = [p.question.removeprefix("Question : ").removesuffix(" Answer :") + "|"
                 + " ".join(s.text for s in p.statements) for p in got if p.group == m]
        assert texts == want[m], m


def test_the_robustness_pool_and_the_shots_pool(cwa, tmp_path):
    """min_depth=1, max_depth=1 is the repository's robustness pool (:259: every depth-1 question
    without OR, whatever its m or proof size); shots are drawn with replacement from every
    question with a proof, OR proofs included (random.choices(train_data), :81)."""
    pool = nr.tasks.load_reasoning(cwa, min_depth=1, max_depth=1)
    assert pool.params["min_depth"] == 1 and all(p.group is None for p in pool)
    assert len(pool) == sum(q["depth"] == 1 for q in _questions(cwa, short=True))
    one = tmp_path / "meta-test.jsonl"
    one.write_text(json.dumps(_odd_row()) + "\n")
    shots = nr.tasks.load_reasoning(one, form="repository", n_shots=6, seed=0)
    assert [p.question for p in shots] == ["Gary is big. True or False?"]  # OR and no-proof questions are not probed
    lines = shots.prompts[0].prefix.splitlines()
    assert len(lines) == 6 and len(set(lines)) == 2  # two questions to draw from: repeats
    assert any(line.endswith("Gary is red.: True or False?True") for line in lines)  # the OR question


def test_by_size_draws_the_repository_s_sets_from_every_split_and_depth(cwa):
    """proofwriter_probe.py:192-209: train, dev and test of every depth folder pooled; depth-0
    questions in m = 1, depth-1 questions by their statement count; at most N per m."""
    qs = _questions(cwa)
    per_m = Counter(1 if q["depth"] == 0 else q["m"] for q in qs)
    assert per_m[1] > 12 and all(per_m[m] > 5 for m in (2, 4, 8))  # the files cover every group
    ds = nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", n_prompts=12)
    got = Counter(p.group for p in ds)
    assert got == {m: min(12, per_m[m]) for m in (1, 2, 4, 8)}
    assert [p.group for p in ds] == sorted(p.group for p in ds)  # group by group, smallest m first
    assert ds.params["by_size"] == "1,2,4,8" and ds.params["max_depth"] == 1 and ds.params["form"] == "toolkit"
    for p in ds:
        useful = [s for s in p.statements if s.useful]
        if p.group == 1:  # a depth-0 question: the fact itself, whatever the theory's size
            assert len(useful) == 1 and useful[0].step == 1
        else:  # a depth-1 question: a fact (step 1), then the rule (step 2)
            assert len(p.statements) == p.group and sorted(s.step for s in useful) == [1, 2]
    with pytest.warns(UserWarning, match="no depth-0/1 question for m = 12, 16, 20, 24; those groups are left out"):
        every = nr.tasks.load_reasoning(cwa, by_size="repository", n_prompts=1000)  # no group left out
    assert Counter(p.group for p in every) == {m: per_m[m] for m in (1, 2, 4, 8)}
    assert every.params["by_size"] == "1,2,4,8,12,16,20,24"
    # the draw is seeded: same seed, same prompts; another seed, another subset
    again = nr.tasks.load_reasoning(cwa, by_size=[8, 1, 2, 4], n_prompts=12)
    assert again.prompts == ds.prompts
    assert nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", n_prompts=12, seed=1).prompts != ds.prompts
    one = nr.tasks.load_reasoning(cwa / "depth-0", by_size="1")  # one depth folder: its own splits
    assert len(one) == sum(q["depth"] == 0 for q in _questions(cwa / "depth-0"))


def test_repository_form_renders_the_probe_s_text(cwa):
    """proofwriter_probe.py:79-93: shots "{theory} {question}: True or False?{answer}\\n", the
    statements with nothing between them, then " {question} True or False?"."""
    ds = nr.tasks.load_reasoning(cwa, by_size="4", n_prompts=5, form="repository", n_shots=2, seed=3)
    by_question = {}
    for q in _questions(cwa):
        if q["depth"] == 1 and q["m"] == 4:
            row = q["row"]
            texts = [v["text"] for v in [*row["triples"].values(), *row["rules"].values()]]
            by_question.setdefault(q["q"]["question"], []).append("".join(texts))
    shot_lines = {f"{row['theory']} {q['question']}: True or False?{q['answer']}"  # any depth; OR kept, NAF not
                  for f in cwa.rglob("meta-*.jsonl") for row in map(json.loads, f.read_text().splitlines())
                  for q in row["questions"].values() if q["QLen"] != "" and "NAF" not in q["proofs"]}
    for p in ds:
        shots, rest = p.text.rsplit("\n", 1)
        context = next(c for q, cs in by_question.items() for c in cs if rest == f"{c} {q} True or False?")
        assert rest == context + " " + p.question and p.question.endswith(" True or False?")
        lines = shots.split("\n")
        assert len(lines) == 2
        assert all(line in shot_lines for line in lines), lines
        for s, (lo, hi) in zip(p.statements, p.spans()):
            assert p.text[lo:hi] == s.text
    toolkit = nr.tasks.load_reasoning(cwa, by_size="4", n_prompts=5, seed=3)
    assert [p.statements for p in toolkit] == [p.statements for p in ds]  # one draw, two renderings
    assert all(p.text.endswith(" Answer :") and " Question : " in p.text for p in toolkit)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(by_size="1,2", max_depth=2), "max_depth must be 0 or 1"),
    (dict(by_size="0"), "distinct statement counts >= 1"),
    (dict(by_size="1,1"), "distinct statement counts >= 1"),
    (dict(by_size="four"), "statement counts such as"),
    (dict(by_size="3,5"), "no depth-0/1 question in the groups m = 3, 5"),
    (dict(form="llama"), "form"),
    (dict(by_size="1", n_prompts=0), "n_prompts"),
])
def test_by_size_refuses_bad_options(cwa, kwargs, msg):
    with pytest.raises(TaskError, match=msg):
        nr.tasks.load_reasoning(cwa, **kwargs)


def test_by_size_needs_published_files(tmp_path):
    with pytest.raises(TaskError, match="by_size and min_depth to ProofWriter's; proofwriter.jsonl is not one"):
        nr.tasks.load_reasoning(DATA / "proofwriter.jsonl", by_size="1")
    with pytest.raises(TaskError, match="by_size and min_depth to ProofWriter's"):
        nr.tasks.load_reasoning(DATA / "arc_street.jsonl", "arc", by_size="1")
    with pytest.raises(TaskError, match="form applies to ProofWriter's and ARC's"):
        nr.tasks.load_reasoning(DATA / "arc.jsonl", "arc", form="repository")
    with pytest.raises(TaskError, match="holds no reasoning_annotated_train/dev/test.jsonl"):
        nr.tasks.load_reasoning(tmp_path, "arc")
    with pytest.raises(TaskError, match="holds no meta-train/dev/test.jsonl"):
        nr.tasks.load_reasoning(tmp_path)
    with pytest.raises(TaskError, match="no such data file"):
        nr.tasks.load_reasoning(tmp_path / "missing", by_size="1")


@pytest.fixture(scope="module")
def tiny_llama(cwa, tmp_path_factory) -> Path:
    """A tiny random Llama (the repository probes LLaMA-7B) of 3 layers with a byte-level BPE
    trained on the theories, so words are tokens and a statement's tokens alone are its tokens
    in context; its tokenizer puts <s> first, as LLaMA's does, which the repository's input
    leaves out (``add_special_tokens=False``) and so must the repository form's here."""
    texts = [p.text for p in nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", form="repository", n_shots=1)]
    torch.manual_seed(0)
    return tiny_bpe_llama(tmp_path_factory.mktemp("tiny_llama_bpe"), texts, n_layers=3, vocab_size=400,
                          positions=512, bos=True)


def _reference_features(hf, tok, prompts) -> np.ndarray:
    """(statements, L, 1): the repository's in-context features (proofwriter_probe.py:79-106) with
    plain HF attentions: per layer the max over the question's tokens (after the last statement)
    of the attention to each token, the mean over heads, the mean over a statement's tokens,
    statements found by counting each statement's tokens alone after the shots' tokens."""
    out = []
    for p in prompts:
        bounds = [len(tok(p.prefix, add_special_tokens=False)["input_ids"])]
        for s in p.statements:
            bounds.append(bounds[-1] + len(tok(s.text, add_special_tokens=False)["input_ids"]))
        ids = torch.tensor([tok(p.text, add_special_tokens=False)["input_ids"]])  # proofwriter_probe.py:99
        with torch.no_grad():
            att = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].double().numpy()  # (L, H, T, T)
        flow = att[:, :, bounds[-1]:, :bounds[-1]].max(2).mean(1)  # (L, context tokens)
        out.append(np.stack([flow[:, bounds[j]:bounds[j + 1]].mean(-1) for j in range(len(p.statements))])[..., None])
    return np.concatenate(out)


def _group_f1(feats, plist, group, name, folds, seed):
    """{layer or "all": macro F1} of the numpy kNN (k = 4, Manhattan, layers 0..l) on ``group``'s
    prompts alone, folds drawn from them; None where the labels have one class."""
    owner = np.repeat(np.arange(len(plist)), [len(p.statements) for p in plist])
    useful = np.array([s.useful for p in plist for s in p.statements]).astype(int)
    members = [i for i, p in enumerate(plist) if p.group == group]
    rows = np.isin(owner, members)
    fold_of = dict(zip(members, fold_of_prompt(len(members), folds, seed)))
    fold = np.array([fold_of[i] for i in owner[rows]])
    y = useful[rows] if name == "useful" else np.array([s.step for p in plist for s in p.statements])[rows]
    keep = np.ones(rows.sum(), bool) if name == "useful" else useful[rows] == 1
    x_all, yk, fk = feats[rows][keep], y[keep], fold[keep]
    if len(np.unique(yk)) < 2:
        return None
    out = {}
    for li in [*range(feats.shape[1]), "all"]:
        x = (x_all if li == "all" else x_all[:, :li + 1]).reshape(len(yk), -1)
        pred = np.empty_like(yk)
        for k in range(folds):
            pred[fk == k] = _knn_predict(x[fk != k], yk[fk != k], x[fk == k], 4, "manhattan")
        out[li] = _macro_f1(yk, pred)
    return out


def test_probe_per_group_matches_an_independent_computation(cwa, tiny_llama, tmp_path):
    """One probe per m (proofwriter_probe.py:119-123) with the repository's ProofWriter features
    (the question's tokens by max, head mean, statement mean, no normalisation, Manhattan): each
    group's F1 per layer and on all layers, the model's and the random baseline's, against a
    numpy kNN on hook-free features, its folds drawn from its own prompts; a probe with one
    class in a group is NaN. Then the per-m table and figure, and the CLI."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from nnsight_reasoning.experiments.probe import summarize
    from nnsight_reasoning.plotting.attention import probe_figure

    prompts = nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", n_prompts=10, form="repository", n_shots=1, seed=5)
    model = nr.load_model(str(tiny_llama))
    ds = nr.probe(model, prompts, baseline="random", query="question_max", statement_pool="mean", normalise=False,
                  distance="manhattan", n_neighbors=4, folds=2, seed=5, progress=False)
    nr.testing.assert_valid_result(ds)
    assert list(ds["group"].values) == [1, 2, 4, 8] and ds["f1"].dims == ("group", "probe", "layer")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    feats = _reference_features(AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager").eval(),
                                tok, prompts)
    torch.manual_seed(5)  # the random baseline: the config initialised from the seed
    random_init = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama), attn_implementation="eager")
    base_feats = _reference_features(random_init.eval(), tok, prompts)
    plist = list(prompts)
    for g in (1, 2, 4, 8):
        assert int(ds["group_prompts"].sel(group=g)) == sum(p.group == g for p in plist)
        for name in ("useful", "step"):
            got = ds.sel(group=g, probe=name)
            for prefix, f in (("", feats), ("baseline_", base_feats)):
                want = _group_f1(f, plist, g, name, 2, 5)
                if want is None:  # m = 1: every useful fact is step 1; m = 2: both statements useful
                    assert (g, name) in ((1, "step"), (2, "useful"))
                    assert np.isnan(got[f"{prefix}f1"]).all() and np.isnan(float(got[f"{prefix}f1_all"]))
                    continue
                for li, value in want.items():
                    v = got[f"{prefix}f1_all"] if li == "all" else got[f"{prefix}f1"].sel(layer=li)
                    assert float(v) == pytest.approx(value, abs=1e-9), (g, name, prefix, li)
    # the per-m table and the figure show all layers' F1 of each group
    table = summarize(ds)[-1]
    rows = list(zip(*[list(c.cells) for c in table.columns]))
    f1 = lambda g, p: f"{float(ds.f1_all.sel(group=g, probe=p)):.3f}"  # noqa: E731
    assert [(r[0], r[2], r[3]) for r in rows[:4]] == [("1", "useful", f1(1, "useful")), ("1", "step", "nan"),
                                                      ("2", "useful", "nan"), ("2", "step", f1(2, "step"))]
    fig = probe_figure(ds)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), ds.f1_all.sel(probe="useful").values)
    np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), ds.baseline_f1_all.sel(probe="step").values)
    # the CLI: the same sets and probe, a group dim in the file, a per-m table and figure
    out = tmp_path / "pw.nc"
    r = reason_interp(["probe", "--model", str(tiny_llama), "--task", "proofwriter", "--data", str(cwa),
                       "--param", "by_size=1,2,4,8", "--param", "form=repository", "--param", "n_shots=1",
                       "--n-prompts", "10", "--query", "question_max", "--statement-pool", "mean", "--no-normalise",
                       "--distance", "manhattan", "--n-neighbors", "4", "--folds", "2", "--seed", "5",
                       "--baseline", "random", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "per group" in r.output
    back = nr.load_result(out)
    np.testing.assert_allclose(back["f1_all"].values, ds["f1_all"].values, equal_nan=True)
    np.testing.assert_allclose(back["baseline_f1_all"].values, ds["baseline_f1_all"].values, equal_nan=True)
    assert reason_interp(["plot", str(out), "--out", str(tmp_path / "pw.png")]).exit_code == 0


def test_repository_form_scores_answers_after_the_evaluator_s_prompt(cwa, tiny_llama):
    """The repository probes one rendering and scores answers after another (src/llama.py:33:
    "{theory} {question}: True or False?", its theory's sentences joined by spaces): the scored
    text is checked against the file's theory, and robustness's accuracy (clean and negated,
    choices True/False) and evaluate's against plain HF logits after it."""
    from transformers import AutoTokenizer

    from nnsight_reasoning.tasks.reasoning import corrupted

    prompts = nr.tasks.load_reasoning(cwa, min_depth=1, max_depth=1, form="repository", n_shots=1, n_prompts=16,
                                      seed=2)
    theories: dict[str, set[str]] = {}
    for q in _questions(cwa):
        theories.setdefault(q["q"]["question"], set()).add(q["row"]["theory"])
    for p in prompts:
        question = p.question.removesuffix(" True or False?")
        assert p.text == p.prefix + "".join(s.text for s in p.statements) + f" {question} True or False?"
        body = p.scored_text.removeprefix(p.prefix)
        assert body.endswith(f" {question}: True or False?")
        assert body.removesuffix(f" {question}: True or False?") in theories[question]
    # on rows in ProofWriter's published format (tests/data) the theory is the file's own string, not rebuilt
    rows = [json.loads(line) for line in (DATA / "proofwriter_meta.jsonl").read_text().splitlines()]
    published = nr.tasks.load_reasoning(DATA / "proofwriter_meta.jsonl", form="repository")
    assert len(published) >= 3
    for p in published:
        question = p.question.removesuffix(" True or False?")
        assert p.scored_text in {f"{r['theory']} {question}: True or False?" for r in rows
                                 if any(q["question"] == question for q in r["questions"].values())}
    model = nr.load_model(str(tiny_llama))
    ds = nr.robustness(model, prompts, corrupt="negate", n_subsets=2, subset_size=(8, 12),
                       baseline="none", n_neighbors=2, folds=2, choices=("True", "False"), progress=False)
    bad = corrupted(list(prompts), "negate", 1, 0, strict=False)
    assert sum(a.statements != b.statements for a, b in zip(prompts, bad)) >= 8  # most prompts are negated
    tok, hf = AutoTokenizer.from_pretrained(tiny_llama), eager_hf(tiny_llama)
    cand = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in ("True", "False")]
    assert all(len(c) == 1 for c in cand)
    for data, var in ((list(prompts), "correct"), (bad, "correct_corrupt")):
        texts = [p.prefix + " ".join(s.text for s in p.statements) + " " + p.question.replace(" True or", ": True or")
                 for p in data]
        assert list(ds["scored_text" if var == "correct" else "corrupted_scored_text"].values) == texts
        with torch.no_grad():
            # src/llama.py:39: no special tokens
            last = torch.stack([hf(torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])).logits[0, -1]
                                for t in texts])
        best = last[:, [c[0] for c in cand]].argmax(-1).numpy()
        np.testing.assert_array_equal(ds[var].values, best == np.array([p.answer != "True" for p in data]))
        if var == "correct":  # prune scores the same text: its unpruned P(answer) over the whole vocabulary
            pr = nr.prune(model, prompts, orderings=("random",), fractions=(0.5,), n_random=1, progress=False)
            assert list(pr["scored_text"].values) == texts
            p_answer = last.softmax(-1)[torch.arange(len(data)), [cand[p.answer != "True"][0] for p in data]]
            assert float(pr["p_answer_unpruned"]) == pytest.approx(float(p_answer.mean()), abs=1e-6)
    assert list(ds["text"].values) == [p.text for p in prompts]  # the probe reads the probe's text
    examples = nr.tasks.get_task("proofwriter").examples(n=16, seed=2, path=cwa, min_depth=1, max_depth=1,
                                                         form="repository", n_shots=1)  # as `evaluate --task` makes them
    ev = nr.evaluate(str(tiny_llama), examples, progress=False)
    assert list(ev["text"].values) == [p.scored_text for p in prompts]


def test_probe_refuses_groups_it_cannot_score(cwa, embedded_model):
    prompts = nr.tasks.load_reasoning(cwa, by_size="1,4", n_prompts=10)
    small = [p for p in prompts if p.group == 1] + [p for p in prompts if p.group == 4][:3]
    with pytest.raises(UsageError, match="at least 2 prompts per fold in group 4"):
        nr.probe(embedded_model, small, baseline="none", progress=False)
    from dataclasses import replace

    mixed = list(prompts)[:-1] + [replace(list(prompts)[-1], group=None)]
    with pytest.raises(UsageError, match="some prompts have a group and some do not"):
        nr.probe(embedded_model, mixed, baseline="none", progress=False)
    with pytest.raises(UsageError, match="robustness draws its subsets from one set; these prompts are in groups 1, 4"):
        nr.robustness(embedded_model, prompts, corrupt="negate", progress=False)


def _street_rows(n: int) -> list[dict]:
    """``n`` STREET rows of depth 1 and ``n`` of depth 2, built from tests/data/arc_street.jsonl's two
    by renaming the plant and the ice (new words for the tokenizer, the same graphs)."""
    import json

    base = [json.loads(line) for line in (DATA / "arc_street.jsonl").read_text().splitlines()]
    names = ["cactus", "fern", "tulip", "oak", "moss", "vine", "rose", "palm", "ivy", "reed", "sage", "mint"]
    out = []
    for i in range(n):
        for row, old in zip(base, ("cactus", "ice")):
            new = names[i % len(names)] if old == "cactus" else f"{names[i % len(names)]} frost"
            out.append(json.loads(json.dumps(row).replace(old, new)) | {"id": f"{row['id']}-{i}"})
    return out


def _longest_chain(row: dict) -> int:
    """Edges of the longest path in the row's reasoning graph below the answer unit (networkx's
    dag_longest_path, as the repository's preprocess_arc takes it), by a plain DFS."""
    units = row["textual_logical_units"]
    cut = int(next(k for k, v in units.items() if "The answer is" in v))
    edges = {(a, e["consequent"]) for e in row["reasoning_graph_edges"] for a in e["antecedents"]
             if int(a) < cut and int(e["consequent"]) < cut}

    def longest(node: str) -> int:
        return max((1 + longest(b) for a, b in edges if a == node), default=0)

    return max(longest(a) for a, _ in edges)


def test_arc_repository_protocol_pools_the_splits_and_probes_each_depth(tmp_path, tiny_llama):
    """MechanisticProbe's ARC probe (arc_probe.py:66-93, 180; src/utils.py:550-692): train, dev and
    test pooled, depth <= 2, one probe per depth; the units with nothing between them, then " "
    and the question with its options appended; shots "{context} {question}{answer}\\n" from the
    train split; no special tokens (the tiny Llama puts <s> first, as LLaMA does)."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "arc"
    folder.mkdir()
    splits = {s: _street_rows(4) for s in ("train", "dev", "test")}
    for s, rows in splits.items():
        (folder / f"reasoning_annotated_{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = nr.tasks.load_reasoning(folder, "arc", form="repository", n_prompts=None)
    pooled = [r for s in ("train", "dev", "test") for r in splits[s]]
    assert len(prompts) == len(pooled) and prompts.params["form"] == "repository" and prompts.params["max_depth"] == 2
    for p, row in zip(prompts, pooled):
        units = row["textual_logical_units"]
        body = "".join(v for k, v in units.items() if "The answer is" not in v)
        assert p.text == body + " " + row["question"] + " ".join(row["options"])
        assert p.group == _longest_chain(row) and p.special_tokens is False and p.answer == row["answer"][0]
    assert sorted({p.group for p in prompts}) == [1, 2]
    shots = nr.tasks.load_reasoning(folder, "arc", form="repository", n_shots=2, seed=3)
    train_shots = {f"{r['context']} {r['question']}{' '.join(r['options'])}{r['answer'][0]}\n" for r in splits["train"]}
    for p, plain in zip(shots, prompts):
        assert p.text.endswith(plain.text) and p.prefix.count("\n") == 2
        assert all(line + "\n" in train_shots for line in p.prefix.splitlines())
    # n_prompts counts per depth: a seeded sample of each, from every split, in the pooled order
    few = nr.tasks.load_reasoning(folder, "arc", form="repository", n_prompts=5, seed=2)
    assert [sum(p.group == g for p in few) for g in (1, 2)] == [5, 5]
    assert few.params["n_prompts"] == 10 and all(p in prompts.prompts for p in few)
    assert nr.tasks.load_reasoning(folder, "arc", form="repository", n_prompts=5, seed=2).prompts == few.prompts
    # as preprocess_arc: every "The answer is" unit left out, the last one the cut (src/utils.py:566-571)
    odd = {"id": "odd", "context": "c", "question": "Q?", "options": ["(A) a"], "answer": ["A"],
           "textual_logical_units": {"1": "One.", "2": "The answer is A.", "3": "Three.", "4": "The answer is A."},
           "reasoning_graph_edges": [{"antecedents": ["1"], "consequent": "3"}]}
    (tmp_path / "odd.jsonl").write_text(json.dumps(odd) + "\n")
    (one,) = nr.tasks.load_reasoning(tmp_path / "odd.jsonl", "arc", form="repository").prompts
    assert [(s.text, s.step) for s in one.statements] == [("One.", 1), ("Three.", 2)] and one.group == 1
    # shots come from the train file alone: without it there are none to draw
    (folder / "reasoning_annotated_train.jsonl").unlink()
    with pytest.raises(TaskError, match="n_shots needs the train split"):
        nr.tasks.load_reasoning(folder, "arc", form="repository", n_shots=1)
    # one probe per depth, its features read from the repository's input (no <s>)
    model = nr.load_model(str(tiny_llama))
    ds = nr.probe(model, prompts, baseline="none", query="question_max", statement_pool="mean", normalise=False,
                  distance="manhattan", n_neighbors=2, folds=2, seed=1, progress=False)
    assert list(ds["group"].values) == [1, 2]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    feats = _reference_features(AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager").eval(),
                                tok, prompts)
    plist = list(prompts)
    for g in (1, 2):
        want = _group_f1(feats, plist, g, "useful", 2, 1)
        assert want is not None
        for li, value in want.items():
            got = ds["f1_all"].sel(group=g, probe="useful") if li == "all" else \
                ds["f1"].sel(group=g, probe="useful", layer=li)
            assert float(got) == pytest.approx(value, abs=1e-9), (g, li)
