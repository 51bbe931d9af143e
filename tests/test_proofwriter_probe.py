"""MechanisticProbe's ProofWriter protocol (``src/rtask/proofwriter_probe.py:181-221``): the per-m
probing sets drawn from ProofWriter's published files, the repository's prompt text, and one
probe per m, against an independent reading of the files and a hook-free recomputation of the
features and the kNN on a tiny Llama with a byte-level BPE."""
from __future__ import annotations

import json
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
from .conftest import tiny_bpe_llama, write_proofwriter_theories
from .test_probe import _knn_predict, _macro_f1

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cwa(tmp_path_factory) -> Path:
    """A ProofWriter ``CWA`` folder: depth-1 theories of 2, 4 and 8 statements and depth-0
    theories of 4, each with train/dev/test splits."""
    root = tmp_path_factory.mktemp("proofwriter") / "CWA"
    write_proofwriter_theories(root / "depth-1", 90, (2, 4, 8), seed=0)
    write_proofwriter_theories(root / "depth-0", 12, (4,), seed=1)
    return root


def _questions(root: Path) -> list[dict]:
    """Every question the protocol may draw, read straight from the files: (depth, m, theory
    row, question) for depth <= 1 with a proof, no NAF and no OR."""
    out = []
    for f in sorted(root.rglob("meta-*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            for q in row["questions"].values():
                if q["QLen"] == "" or "NAF" in q["proofs"] or "OR" in q["proofs"] or q["QDep"] > 1:
                    continue
                out.append({"depth": q["QDep"], "m": len(row["triples"]) + len(row["rules"]), "row": row, "q": q})
    return out


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
    with pytest.raises(TaskError, match="form and by_size apply to ProofWriter's published files"):
        nr.tasks.load_reasoning(DATA / "proofwriter.jsonl", by_size="1")
    with pytest.raises(TaskError, match="form and by_size apply"):
        nr.tasks.load_reasoning(DATA / "arc_street.jsonl", "arc", form="repository")
    with pytest.raises(TaskError, match="holds no meta-train/dev/test.jsonl"):
        nr.tasks.load_reasoning(tmp_path)
    with pytest.raises(TaskError, match="no such data file"):
        nr.tasks.load_reasoning(tmp_path / "missing", by_size="1")


@pytest.fixture(scope="module")
def tiny_llama(cwa, tmp_path_factory) -> Path:
    """A tiny random Llama (the repository probes LLaMA-7B) of 3 layers with a byte-level BPE
    trained on the theories, so words are tokens and a statement's tokens alone are its tokens
    in context."""
    texts = [p.text for p in nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", form="repository", n_shots=1)]
    torch.manual_seed(0)
    return tiny_bpe_llama(tmp_path_factory.mktemp("tiny_llama_bpe"), texts, n_layers=3, vocab_size=400,
                          positions=512)


def _reference_features(path: Path, prompts) -> np.ndarray:
    """(statements, L, 1): the repository's in-context features (proofwriter_probe.py:79-106) with
    plain HF attentions: per layer the max over the question's tokens (after the last statement)
    of the attention to each token, the mean over heads, the mean over a statement's tokens,
    statements found by counting each statement's tokens alone after the shots' tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for p in prompts:
        bounds = [len(tok(p.prefix, add_special_tokens=False)["input_ids"])]
        for s in p.statements:
            bounds.append(bounds[-1] + len(tok(s.text, add_special_tokens=False)["input_ids"]))
        ids = torch.tensor([tok(p.text)["input_ids"]])
        with torch.no_grad():
            att = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].double().numpy()  # (L, H, T, T)
        flow = att[:, :, bounds[-1]:, :bounds[-1]].max(2).mean(1)  # (L, context tokens)
        out.append(np.stack([flow[:, bounds[j]:bounds[j + 1]].mean(-1) for j in range(len(p.statements))])[..., None])
    return np.concatenate(out)


def test_probe_per_group_matches_an_independent_computation(cwa, tiny_llama, tmp_path):
    """One probe per m (proofwriter_probe.py:119-123) with the repository's ProofWriter features
    (the question's tokens by max, head mean, statement mean, no normalisation, Manhattan): each
    group's F1 per layer and on all layers against a numpy kNN on hook-free features, its folds
    drawn from its own prompts; a probe with one class in a group is NaN. Then the CLI."""
    prompts = nr.tasks.load_reasoning(cwa, by_size="1,2,4,8", n_prompts=10, form="repository", n_shots=1, seed=5)
    model = nr.load_model(str(tiny_llama))
    ds = nr.probe(model, prompts, baseline="none", query="question_max", statement_pool="mean", normalise=False,
                  distance="manhattan", n_neighbors=4, folds=2, seed=5, progress=False)
    nr.testing.assert_valid_result(ds)
    assert list(ds["group"].values) == [1, 2, 4, 8] and ds["f1"].dims == ("group", "probe", "layer")
    feats = _reference_features(tiny_llama, prompts)
    plist = list(prompts)
    owner = np.repeat(np.arange(len(plist)), [len(p.statements) for p in plist])
    useful = np.array([s.useful for p in plist for s in p.statements]).astype(int)
    step = np.array([s.step for p in plist for s in p.statements])
    for g in (1, 2, 4, 8):
        members = [i for i, p in enumerate(plist) if p.group == g]
        assert int(ds["group_prompts"].sel(group=g)) == len(members)
        rows = np.isin(owner, members)
        fold_of = dict(zip(members, fold_of_prompt(len(members), 2, 5)))
        fold = np.array([fold_of[i] for i in owner[rows]])
        for name, y, keep in (("useful", useful[rows], np.ones(rows.sum(), bool)),
                              ("step", step[rows], useful[rows] == 1)):
            got = ds.sel(group=g, probe=name)
            if len(np.unique(y[keep])) < 2:  # m = 1: every useful fact is step 1; m = 2: both statements useful
                assert (g, name) in ((1, "step"), (2, "useful"))
                assert np.isnan(got["f1"]).all() and np.isnan(float(got["f1_all"]))
                continue
            x_all, yk, fk = feats[rows][keep], y[keep], fold[keep]
            for li in [0, 1, 2, "all"]:
                x = (x_all if li == "all" else x_all[:, :li + 1]).reshape(len(yk), -1)
                pred = np.empty_like(yk)
                for k in range(2):
                    pred[fk == k] = _knn_predict(x[fk != k], yk[fk != k], x[fk == k], 4, "manhattan")
                value = float(got["f1_all"]) if li == "all" else float(got["f1"].sel(layer=li))
                assert value == pytest.approx(_macro_f1(yk, pred), abs=1e-9), (g, name, li)
    # the CLI: the same sets and probe, a group dim in the file, a per-m table and figure
    out = tmp_path / "pw.nc"
    r = reason_interp(["probe", "--model", str(tiny_llama), "--task", "proofwriter", "--data", str(cwa),
                       "--param", "by_size=1,2,4,8", "--param", "form=repository", "--param", "n_shots=1",
                       "--n-prompts", "10", "--query", "question_max", "--statement-pool", "mean", "--no-normalise",
                       "--distance", "manhattan", "--n-neighbors", "4", "--folds", "2", "--seed", "5",
                       "--baseline", "none", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "per group" in r.output and "m" in r.output
    back = nr.load_result(out)
    np.testing.assert_allclose(back["f1_all"].values, ds["f1_all"].values, equal_nan=True)
    assert reason_interp(["plot", str(out), "--out", str(tmp_path / "pw.png")]).exit_code == 0


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
