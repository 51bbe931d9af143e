"""Probe score against robustness (the repository's corrupt_proofwriter analysis) and the
negation corruption: accuracy against plain HF forwards, each subset's probe against the
numpy kNN of test_probe, bins and correlation against numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.probe import fold_of_prompt
from nnsight_reasoning.tasks import TaskError

from .script_modules import load_script
from .test_probe import _features, _knn_predict, _macro_f1, reason_interp

DATA = Path(__file__).parent / "data"


def test_negation_rewrites_statements_outside_the_proof():
    clean = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl")
    neg = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl", corrupt="negate", n_corrupt=1, seed=2)
    for a, b in zip(clean, neg):
        changed = [(s, t) for s, t in zip(a.statements, b.statements) if s.text != t.text]
        assert len(changed) == 1
        (s, t), = changed
        assert not s.useful and t.text == f"That {s.text[:-1]} is false." and (t.useful, t.step) == (False, 0)
        assert a.answer == b.answer
    with pytest.raises(TaskError, match="kth_smallest's statements are numbers"):
        nr.tasks.kth_smallest(4, corrupt="negate")


def test_robustness_matches_an_independent_computation(embedded_tokenizer):
    """On a checkpoint midway through training (the first revision whose model-card k-th smallest
    accuracy reaches 0.5: the docs' robustness revision, scripts/docs_numbers.py's), where perturbing
    numbers changes answers."""
    rev = load_script("docs_numbers").mid_revision(embedded.card())
    prompts = nr.tasks.kth_smallest(40, seed=6)
    ds = nr.robustness(nr.load_model(revision=rev), prompts, corrupt="perturb", n_corrupt=2, n_subsets=5, subset_size=(12, 20),
                       n_bins=3, seed=3, progress=False)
    nr.testing.assert_valid_result(ds)
    bad = nr.tasks.kth_smallest(40, seed=6, corrupt="perturb", n_corrupt=2)
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path(rev), attn_implementation="eager").eval()
    for data, var in ((prompts, "correct"), (bad, "correct_corrupt")):
        ids = torch.tensor([embedded_tokenizer(p.text)["input_ids"] for p in data])
        ans = torch.tensor([embedded_tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"][0] for p in data])
        with torch.no_grad():
            top = hf(ids).logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(ds[var].values, (top == ans).numpy())
    assert (ds["correct_corrupt"].values != ds["correct"].values).any()
    feats = {r: _features(r, prompts, normalise=False) for r in (rev, "step0")}
    for r in feats:  # the paper's feature: head mean, divided by the prompt's max
        f = feats[r].mean(-1, keepdims=True)
        feats[r] = f / np.repeat([f[5 * i:5 * i + 5].max() for i in range(40)], 5)[:, None, None]
    useful = np.array([s.useful for p in prompts for s in p.statements]).astype(int)
    step = np.array([s.step for p in prompts for s in p.statements])
    rng = np.random.default_rng(3)
    for s in range(5):
        idx = np.sort(rng.choice(40, rng.integers(12, 21), replace=False))
        rows = np.concatenate([np.arange(5 * i, 5 * i + 5) for i in idx])
        fold = fold_of_prompt(len(idx), 2, 3 + s)[np.repeat(np.arange(len(idx)), 5)]
        f1 = {}
        for r, x_all in feats.items():
            for j, (y_all, keep_all) in enumerate(((useful, np.ones_like(useful, bool)), (step, useful == 1))):
                keep = keep_all[rows]
                x, y, f = x_all[rows][keep].reshape(keep.sum(), -1), y_all[rows][keep], fold[keep]
                pred = np.empty_like(y)
                for k in range(2):
                    pred[f == k] = _knn_predict(x[f != k], y[f != k], x[f == k], 8)
                f1[r, j] = _macro_f1(y, pred)
        for j in range(2):
            want = (f1[rev, j] - f1["step0", j]) / (1 - f1["step0", j])
            assert float(ds["score"].isel(subset=s, probe=j)) == pytest.approx(want, abs=1e-9)
        assert int(ds["size"][s]) == len(idx)
        assert float(ds["drop"][s]) == pytest.approx(ds["correct_corrupt"].values[idx].mean()
                                                     - ds["correct"].values[idx].mean())
    for j in range(2):
        score, drop = ds["score"].values[:, j], ds["drop"].values
        edges = np.linspace(score.min(), score.max(), 4)
        np.testing.assert_allclose(ds["bin_lo"].values[j], edges[:-1])
        which = np.minimum(np.digitize(score, edges[1:-1]), 2)  # the maximum in the last bin
        for b in range(3):
            assert int(ds["bin_count"].values[j, b]) == int((which == b).sum())
            if (which == b).any():
                assert float(ds["bin_drop"].values[j, b]) == pytest.approx(drop[which == b].mean())
                assert float(ds["bin_accuracy"].values[j, b]) == pytest.approx(ds["accuracy"].values[which == b].mean())
            else:
                assert np.isnan(ds["bin_accuracy"].values[j, b])
        assert np.std(drop) > 0
        assert float(ds["correlation"][j]) == pytest.approx(np.corrcoef(score, drop)[0, 1])
    nr.plot_result(ds)
    # the repository's scratch baseline: measured once, on one sample (its rule in the docstring), for every subset
    once = nr.robustness(nr.load_model(revision=rev), prompts, corrupt="perturb", n_corrupt=2, n_subsets=5,
                         subset_size=(12, 20), n_bins=3, seed=3, baseline_prompts=16, progress=False)
    nr.testing.assert_valid_result(once)
    idx = np.sort(np.random.default_rng(3 + 5).choice(40, 16, replace=False))
    rows = np.concatenate([np.arange(5 * i, 5 * i + 5) for i in idx])
    fold = fold_of_prompt(16, 2, 3 + 5)[np.repeat(np.arange(16), 5)]
    for j, (y_all, keep_all) in enumerate(((useful, np.ones_like(useful, bool)), (step, useful == 1))):
        keep = keep_all[rows]
        x, y, f = feats["step0"][rows][keep].reshape(keep.sum(), -1), y_all[rows][keep], fold[keep]
        pred = np.empty_like(y)
        for k in range(2):
            pred[f == k] = _knn_predict(x[f != k], y[f != k], x[f == k], 8)
        base = _macro_f1(y, pred)
        np.testing.assert_allclose(once["baseline_f1"].values[:, j], base, atol=1e-12)
        want = (ds["f1"].values[:, j] - base) / (1 - base)  # the model's F1 per subset is as before
        np.testing.assert_allclose(once["score"].values[:, j], want, atol=1e-12)
    assert once.attrs["baseline_prompts"] == 16 and not np.allclose(once["score"], ds["score"])
    # the repository's dropped layers (proofwriter_probe.py:270): the features of layers 0 and 2
    # only, the model's and the baseline's
    dropped = nr.robustness(nr.load_model(revision=rev), prompts, corrupt="perturb", n_corrupt=2, n_subsets=5,
                            subset_size=(12, 20), n_bins=3, seed=3, drop_layers=[3, 1], progress=False)
    assert dropped.attrs["drop_layers"] == "1,3" and "drop_layers" not in ds.attrs
    rng = np.random.default_rng(3)
    for s in range(5):
        idx = np.sort(rng.choice(40, rng.integers(12, 21), replace=False))
        rows = np.concatenate([np.arange(5 * i, 5 * i + 5) for i in idx])
        fold = fold_of_prompt(len(idx), 2, 3 + s)[np.repeat(np.arange(len(idx)), 5)]
        for j, (y_all, keep_all) in enumerate(((useful, np.ones_like(useful, bool)), (step, useful == 1))):
            keep = keep_all[rows]
            f1 = []
            for r in (rev, "step0"):
                x = feats[r][:, [0, 2]][rows][keep].reshape(keep.sum(), -1)
                y, f = y_all[rows][keep], fold[keep]
                pred = np.empty_like(y)
                for k in range(2):
                    pred[f == k] = _knn_predict(x[f != k], y[f != k], x[f == k], 8)
                f1.append(_macro_f1(y, pred))
            assert float(dropped["f1"].isel(subset=s, probe=j)) == pytest.approx(f1[0], abs=1e-12)
            assert float(dropped["baseline_f1"].isel(subset=s, probe=j)) == pytest.approx(f1[1], abs=1e-12)
    assert not np.allclose(dropped["f1"], ds["f1"])


def test_robustness_bad_input_and_cli(embedded_model, tmp_path):
    prompts = nr.tasks.kth_smallest(20)
    for kwargs, msg in [(dict(subset_size=(2, 10)), "subset_size must satisfy"),
                        (dict(subset_size=(10, 30)), "subset_size must satisfy"),
                        (dict(n_subsets=1), "n_subsets >= 2"), (dict(corrupt="negate"), "numbers"),
                        (dict(drop_layers=[0, 1, 2, 3]), "leaving at least one"),
                        (dict(drop_layers=[4]), "distinct layers in 0..3"), (dict(drop_layers=[1, 1]), "distinct")]:
        with pytest.raises(UsageError, match=msg):
            nr.robustness(embedded_model, prompts, progress=False, **{"subset_size": (8, 12), **kwargs})
    out = tmp_path / "r.nc"
    r = reason_interp(["robustness", "--n-prompts", "24", "--n-subsets", "4", "--subset-min", "8", "--subset-max",
                       "12", "--baseline", "none", "--out", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "corruption drop" in r.stdout and "step probe: mean accuracy drop" in r.stdout
    ds = nr.load_result(out)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["method"] == "probe_robustness" and ds.sizes["subset"] == 4 and "baseline_f1" not in ds
    # the header's accuracies are over all prompts, not the mean of the subsets' (which overlap)
    said = f"accuracy over all 24 prompts {float(ds.correct.mean()):.3f} -> {float(ds.correct_corrupt.mean()):.3f}"
    assert said in " ".join(r.stdout.split()), r.stdout
    r = reason_interp(["plot", str(out)])
    assert r.returncode == 0 and (tmp_path / "r.png").exists(), r.stderr
    for spec, says in (("2-x", "integers and ranges like 17-18,20"), ("3-1", "runs backwards"),
                       ("0-3", "leaving at least one")):
        bad = tmp_path / "bad.nc"
        r = reason_interp(["robustness", "--n-prompts", "24", "--subset-min", "8", "--subset-max", "12",
                           "--drop-layers", spec, "--out", str(bad), "--no-progress"])
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not bad.exists()


def test_robustness_choices_compare_the_answers_logits_as_the_repository(embedded_model, embedded_tokenizer):
    """choices=: a prompt is right when its answer has the highest logit among the choices'
    tokens (the repository compares P("True") with P("False"), src/llama.py:33-40), recomputed
    from plain HF logits; an answer outside the choices is refused before any pass."""
    prompts = nr.tasks.kth_smallest(40, seed=6)
    choices = [str(i) for i in range(100)]
    ds = nr.robustness(embedded_model, prompts, corrupt="perturb", n_corrupt=2, n_subsets=3, subset_size=(12, 20),
                       n_bins=2, seed=3, choices=choices, progress=False)
    assert ds.attrs["choices"] == ",".join(choices) and "among the choices" in ds["accuracy"].attrs["long_name"]
    bad = nr.tasks.kth_smallest(40, seed=6, corrupt="perturb", n_corrupt=2)
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main")).eval()
    cand = [embedded_tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in choices]
    for data, var in ((prompts, "correct"), (bad, "correct_corrupt")):
        ids = torch.tensor([embedded_tokenizer(p.text)["input_ids"] for p in data])
        with torch.no_grad():
            best = hf(ids).logits[:, -1, cand].argmax(-1).numpy()
        np.testing.assert_array_equal(ds[var].values, best == np.array([choices.index(p.answer) for p in data]))
    with pytest.raises(UsageError, match="every prompt's among them"):
        nr.robustness(embedded_model, prompts, corrupt="perturb", n_subsets=3, subset_size=(12, 20),
                      choices=["True", "False"], progress=False)
