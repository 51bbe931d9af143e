"""MechanisticProbe: scores recomputed independently (hook-free HF attentions, a numpy kNN and
a numpy macro F1), the trained model against its step0 baseline, the CLI and plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.probe import BASELINE_VARIABLES, fold_of_prompt
from nnsight_reasoning.results.parts import parts_dir

from .clirun import in_process as reason_interp

DATA = Path(__file__).parent / "data"


def _features(revision: str, prompts, query="last", normalise=True) -> np.ndarray:
    """(statements, L, H): attention from the last token (or the max / mean over the question's
    tokens, after the numbers) to each number, divided by the prompt's max when ``normalise``."""
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path(revision), attn_implementation="eager").eval()
    tok = nr.load_model().tokenizer
    ids = torch.tensor([tok(p.text)["input_ids"] for p in prompts])  # one length: one batch
    with torch.no_grad():
        att = torch.stack(hf(ids, output_attentions=True).attentions, 1).double().numpy()  # (n, L, H, T, T)
    out = []
    for i, p in enumerate(prompts):
        s = len(p.statements)
        rows = {"last": att[i][:, :, -1], "question_max": att[i][:, :, 3 + s:].max(2),
                "question_mean": att[i][:, :, 3 + s:].mean(2)}[query]
        f = rows[:, :, 3:3 + s].transpose(2, 0, 1)  # numbers follow "<bos> Numbers :", one token each
        out.append(f / f.max() if normalise else f)
    return np.concatenate(out)


def _knn_predict(x_tr, y_tr, x_te, k, distance="euclidean"):
    """Distance-weighted kNN as scikit-learn defines it: weight 1/d; exact matches win outright."""
    pred = []
    for x in x_te:
        d = np.sqrt(((x_tr - x) ** 2).sum(1)) if distance == "euclidean" else np.abs(x_tr - x).sum(1)
        near = np.argsort(d, kind="stable")[:k]
        w = 1 / d[near] if (d[near] > 0).all() else (d[near] == 0).astype(float)
        classes = np.unique(y_tr)
        votes = [w[y_tr[near] == c].sum() for c in classes]
        pred.append(classes[int(np.argmax(votes))])
    return np.array(pred)


def _macro_f1(y, pred):
    f1s = []
    for c in np.unique(y):
        tp = ((pred == c) & (y == c)).sum()
        prec = tp / max((pred == c).sum(), 1)
        rec = tp / (y == c).sum()
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(f1s))


@pytest.mark.parametrize("pool,cumulative,distance,query,normalise", [
    ("mean", True, "euclidean", "last", True), ("heads", False, "euclidean", "last", True),
    ("mean", True, "manhattan", "question_max", False), ("heads", True, "manhattan", "question_mean", True)])
def test_probe_scores_match_an_independent_computation(embedded_model, pool, cumulative, distance, query, normalise):
    """Every feature option: the paper's k-th smallest defaults (head mean, layers 0..l,
    Euclidean, the last token, max-normalised), single layers, each head a feature, and the
    repository's ProofWriter/ARC settings (Manhattan, the question's tokens by max, no
    normalisation; statement_pool is moot here: a number is one token)."""
    prompts = nr.tasks.kth_smallest(60, seed=4)
    ds = nr.probe(embedded_model, prompts, baseline="none", n_neighbors=5, folds=3, seed=7, pool=pool,
                  cumulative=cumulative, distance=distance, query=query, normalise=normalise,
                  statement_pool="mean" if query != "last" else "sum", progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["method"] == "mechanistic_probe" and ds.attrs["seed"] == 7 and ds.attrs["n_forward_passes"] == 1
    assert (ds.attrs["pool"], ds.attrs["cumulative"], ds.attrs["distance"]) == (pool, int(cumulative), distance)
    assert (ds.attrs["query"], ds.attrs["normalise"]) == (query, int(normalise))
    feats = _features("main", prompts, query, normalise=normalise and pool == "heads")
    if pool == "mean":  # the head mean, then (if asked) divided by the prompt's max
        feats = feats.mean(-1, keepdims=True)
        if normalise:
            feats = feats / np.concatenate([np.repeat(feats[5 * i:5 * i + 5].max(), 5) for i in range(60)])[:, None, None]
    useful = np.array([s.useful for p in prompts for s in p.statements])
    step = np.array([s.step for p in prompts for s in p.statements])
    prompt_of = np.repeat(np.arange(60), 5)
    fold = fold_of_prompt(60, 3, 7)[prompt_of]  # the documented split: the one thing shared
    for name, y, keep in (("useful", useful.astype(int), np.ones_like(useful)), ("step", step, useful)):
        y, f = y[keep], fold[keep]
        for li in list(range(4)) + ["all"]:
            if li == "all":
                x = feats[keep]
            else:
                x = feats[keep][:, :li + 1] if cumulative else feats[keep][:, li:li + 1]
            x = x.reshape(len(y), -1)
            pred = np.empty_like(y)
            for k in range(3):
                pred[f == k] = _knn_predict(x[f != k], y[f != k], x[f == k], 5, distance)
            got = float(ds["f1_all"].sel(probe=name)) if li == "all" else float(ds["f1"].sel(probe=name, layer=li))
            assert got == pytest.approx(_macro_f1(y, pred), abs=1e-9), (name, li)
        assert float(ds["majority"].sel(probe=name)) == pytest.approx(np.bincount(y).max() / len(y))
    assert ds.attrs["baseline"] == "none" and "score" not in ds


def test_drop_layers_leaves_them_out_of_the_all_layers_probe_only(embedded_model):
    """The repository's prune_list (proofwriter_probe.py:219): the all-layers probe reads the other
    layers' features (here 0 and 3); the per-layer probes are the same as without it."""
    prompts = nr.tasks.kth_smallest(60, seed=4)
    kw = dict(baseline="none", n_neighbors=5, folds=3, seed=7, progress=False)
    ds = nr.probe(embedded_model, prompts, drop_layers=[2, 1], **kw)
    assert ds.attrs["drop_layers"] == "1,2"
    xr.testing.assert_identical(ds.f1, nr.probe(embedded_model, prompts, **kw).f1)
    feats = _features("main", prompts, "last", normalise=False).mean(-1, keepdims=True)
    feats = feats / np.concatenate([np.repeat(feats[5 * i:5 * i + 5].max(), 5) for i in range(60)])[:, None, None]
    useful = np.array([s.useful for p in prompts for s in p.statements])
    step = np.array([s.step for p in prompts for s in p.statements])
    fold = fold_of_prompt(60, 3, 7)[np.repeat(np.arange(60), 5)]
    for name, y, keep in (("useful", useful.astype(int), np.ones_like(useful)), ("step", step, useful)):
        y, f, x = y[keep], fold[keep], feats[keep][:, [0, 3]].reshape(int(keep.sum()), -1)
        pred = np.empty_like(y)
        for k in range(3):
            pred[f == k] = _knn_predict(x[f != k], y[f != k], x[f == k], 5, "euclidean")
        assert float(ds["f1_all"].sel(probe=name)) == pytest.approx(_macro_f1(y, pred), abs=1e-9), name


def test_a_fold_smaller_than_n_neighbors_is_recorded(embedded_model):
    """k is capped at a fold's training statements; the result says by how much (the smallest k)."""
    prompts = nr.tasks.kth_smallest(6, seed=2)
    useful = np.array([s.useful for p in prompts for s in p.statements])
    fold = fold_of_prompt(6, 2, 0)[np.repeat(np.arange(6), [len(p.statements) for p in prompts])]
    smallest = min(int(((fold != f) & keep).sum()) for keep in (np.ones_like(useful), useful) for f in range(2))
    ds = nr.probe(embedded_model, prompts, baseline="none", n_neighbors=500, folds=2, seed=0, progress=False)
    assert ds.attrs["n_neighbors"] == 500 and ds.attrs["n_neighbors_used"] == smallest < 500
    assert "n_neighbors_used" not in nr.probe(embedded_model, prompts, baseline="none", n_neighbors=2, folds=2,
                                              seed=0, progress=False).attrs


def test_trained_model_beats_step0_and_is_deterministic(embedded_model):
    prompts = nr.tasks.kth_smallest(256, seed=0)
    ds = nr.probe(embedded_model, prompts, progress=False)
    again = nr.probe(embedded_model, prompts, progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["n_forward_passes"] == 8  # 256 prompts, 64 per pass: 4 passes of the model, 4 of step0
    for v in ds.data_vars:
        np.testing.assert_array_equal(ds[v].values, again[v].values)
    # step0 F1 stays near chance; the trained model reads both labels off its attention
    assert (ds.f1_all - ds.baseline_f1_all).min() > 0.15, ds[["f1_all", "baseline_f1_all"]]
    assert float(ds.score_all.sel(probe="step")) > 0.8
    assert float(ds.f1.sel(probe="step").max()) > 0.9  # one layer alone names the answer
    np.testing.assert_allclose(ds.score, (ds.f1 - ds.baseline_f1) / (1 - ds.baseline_f1))
    rand = nr.probe(embedded_model, nr.tasks.kth_smallest(64, seed=0), baseline="random",
                    pool="mean", progress=False)
    nr.testing.assert_valid_result(rand)
    assert rand.attrs["baseline"] == "random" and np.isfinite(rand.score.values).all()
    state = torch.random.get_rng_state()
    rand2 = nr.probe(embedded_model, nr.tasks.kth_smallest(64, seed=0), baseline="random", pool="mean", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded init leaves the caller's RNG alone
    np.testing.assert_array_equal(rand2.baseline_f1.values, rand.baseline_f1.values)


def test_the_default_baseline_is_an_untrained_model(embedded_model, tiny_model_dir, tmp_path):
    """baseline="auto": the paper's scratch baseline. step0 where that is an untrained checkpoint
    (the embedded model's); a random init of the config for a model without revisions (GPT-2,
    the repository's model) and for a finetune directory, whose step0 is the model before
    fine-tuning (with "step0" there, the score would measure what fine-tuning added)."""
    import shutil

    from nnsight_reasoning.experiments.probe import untrained_baseline

    ft = nr.finetune(None, "kth_smallest", out=tmp_path / "ft", tune="mlp", steps=1, batch_size=2, warmup=0,
                     progress=False, length=5, k=2)
    runs = tmp_path / "runs"  # a training run's revisions, without finetune.json
    shutil.copytree(ft / "step0", runs / "step0")
    shutil.copytree(ft / "main", runs / "main")
    model = nr.load_model(str(ft), revision="main")
    assert untrained_baseline(embedded_model) == untrained_baseline(nr.load_model(str(runs), revision="main")) == "step0"
    assert untrained_baseline(nr.load_model(str(tiny_model_dir("gpt_neox")))) == untrained_baseline(model) == "random"
    prompts = nr.tasks.kth_smallest(32, length=5, k=2, seed=0)
    auto = nr.probe(model, prompts, progress=False)
    rand = nr.probe(model, prompts, baseline="random", progress=False)
    assert auto.attrs["baseline"] == "random"
    for v in BASELINE_VARIABLES:
        np.testing.assert_array_equal(auto[v].values, rand[v].values)
    step0 = nr.probe(model, prompts, baseline="step0", progress=False)  # still there when asked for
    assert step0.attrs["baseline"] == "step0" and not np.array_equal(step0.baseline_f1_all, rand.baseline_f1_all)
    assert nr.probe(embedded_model, prompts, progress=False).attrs["baseline"] == "step0"


def test_probe_over_revisions_shares_one_baseline(embedded_model):
    prompts = nr.tasks.kth_smallest(24, seed=5)
    sweep = nr.probe(None, prompts, revisions="step0,main", batch_size=16, progress=False)
    nr.testing.assert_valid_result(sweep)
    single = nr.probe(embedded_model, prompts, batch_size=16, progress=False)
    step0 = nr.probe(nr.load_model(revision="step0"), prompts, baseline="none", batch_size=16, progress=False)
    for v in BASELINE_VARIABLES:  # checkpoint-independent: no checkpoint dim, the step0 model's scores
        assert "checkpoint" not in sweep[v].dims and sweep[v].dims == single[v].dims
        np.testing.assert_array_equal(sweep[v].values, single[v].values)
        np.testing.assert_array_equal(sweep[v].values, step0[v.removeprefix("baseline_")].values)
    for v in ("f1", "accuracy", "f1_all", "accuracy_all", "majority", "n_samples", "score", "score_all"):
        assert sweep[v].dims == ("checkpoint",) + single[v].dims, v
        np.testing.assert_array_equal(sweep[v].sel(checkpoint="main").values, single[v].values)
    np.testing.assert_array_equal(sweep.score_all.sel(checkpoint="step0").values, 0.0)
    # step0 is its own baseline: neither loaded nor run again (24 prompts, 16 per pass: 2 passes a model)
    assert list(sweep["n_forward_passes"].values) == [2, 4] and single.attrs["n_forward_passes"] == 4


def test_probe_resumes_the_passes_of_model_and_baseline(embedded_model, tmp_path):
    prompts = nr.tasks.kth_smallest(12, seed=1)
    kw = dict(batch_size=4, progress=False)
    d = tmp_path / "parts"
    first = nr.probe(embedded_model, prompts, resume_dir=d, **kw)
    stored = sorted(d.glob("call-*.npz"))
    # three passes of the model, then three of the step0 baseline, numbered on
    assert [p.stem for p in stored] == [f"call-{i:06d}" for i in range(6)] == [
        f"call-{i:06d}" for i in range(first.attrs["n_forward_passes"])]
    for p in stored[1::2]:  # as if the run had died before these passes (model and baseline)
        p.unlink()
    again = nr.probe(embedded_model, prompts, resume_dir=d, **kw)
    assert again.attrs["n_resumed_passes"] == 3 and first.attrs["n_resumed_passes"] == 0
    for v in first.data_vars:
        np.testing.assert_array_equal(again[v].values, first[v].values)
    with pytest.raises(UsageError, match="differs in: baseline"):
        nr.probe(embedded_model, prompts, resume_dir=d, baseline="random", **kw)


def test_probe_refuses_what_it_cannot_score(embedded_model):
    for prompts, kwargs, msg in [
        (nr.tasks.load_reasoning(DATA / "unlabelled.jsonl"), {}, "no useful/steps labels"),
        (nr.tasks.kth_smallest(20, k=1), {}, "two or more steps"),
        (nr.tasks.kth_smallest(3), {}, "at least 2 prompts per fold"),
        (nr.tasks.kth_smallest(20), dict(baseline="scratch"), "baseline must be"),
        (nr.tasks.kth_smallest(20), dict(pool="max"), "pool must be"),
    ]:
        with pytest.raises(UsageError, match=msg):
            nr.probe(embedded_model, prompts, progress=False, **kwargs)
    local = nr.load_model(str(embedded.revision_path("main")))  # a directory without revisions
    with pytest.raises(UsageError, match="no step0 revision"):
        nr.probe(local, nr.tasks.kth_smallest(20), baseline="step0", progress=False)
    assert nr.probe(local, nr.tasks.kth_smallest(20), progress=False).attrs["baseline"] == "random"  # "auto"


def test_cli_attention_probe_and_plots(tmp_path):
    att, prb = tmp_path / "att.nc", tmp_path / "probe.nc"
    # in-process: the first subprocess test (test_cli.py) covers the installed entry point
    r = reason_interp(["attention", "--n-prompts", "32", "--patterns", "all", "--corrupt", "shuffle", "--out", str(att),
                       "--batch-size", "16", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "step2" in r.stdout and "entropy" in r.stdout and "2 forward passes" in r.stdout
    ds = nr.load_result(att)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["batch_size"] == 16 and not parts_dir(att).exists()
    r = reason_interp(["show", str(att)])
    assert r.returncode == 0 and "H position" in r.stdout and "patterns = all" in r.stdout, r.stderr
    assert ds.attrs["method"] == "attention" and '"corrupt": "shuffle"' in ds.attrs["task_params"]
    assert ds["attention"].dims == ("prompt", "layer", "head", "query", "key")
    for kind in ("heatmap", "entropy", "rank", "mass"):
        r = reason_interp(["plot", str(att), "--kind", kind, "--prompt", "3"])
        assert r.returncode == 0 and (tmp_path / f"att.{kind}.png").stat().st_size > 10_000, r.stderr
    parts_dir(prb).mkdir()
    (parts_dir(prb) / "manifest.json").write_text('{"config": {"method": "another run"}}')
    r = reason_interp(["probe", "--n-prompts", "40", "--revisions", "step256,main", "--out", str(prb), "--no-progress"])
    assert r.returncode == 2 and "--restart" in r.stderr  # parts of another run are refused ...
    r = reason_interp(["probe", "--n-prompts", "40", "--revisions", "step256,main", "--out", str(prb), "--no-progress",
                       "--restart"])  # ... and discarded with --restart
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(prb)
    nr.testing.assert_valid_result(ds)
    assert ds["f1"].dims == ("checkpoint", "probe", "layer") and ds["baseline_f1"].dims == ("probe", "layer")
    assert list(ds["checkpoint"].values) == ["step256", "main"] and "baseline F1" in r.stdout
    r = reason_interp(["plot", str(prb)])
    assert r.returncode == 0 and (tmp_path / "probe.png").exists()
    r = reason_interp(["show", str(prb)])
    assert r.returncode == 0 and "baseline F1" in r.stdout and "vs baseline step0" in r.stdout, r.stderr
    r = reason_interp(["attention", "--task", "proofwriter", "--data", str(DATA / "arc.jsonl"), "--out",
                       str(tmp_path / "pw.nc"), "--no-progress"])
    assert r.returncode == 2 and "lacks column" in r.stderr and not (tmp_path / "pw.nc").exists()
    for args, msg in [(["probe", "--task", "arithmetic"], "no reasoning-tree labels"),
                      (["attention", "--head", "7"], "head 7 is out of range"),
                      (["plot", str(prb), "--kind", "entropy"], "kinds exist for patching, attention, edge-attribution and backup-heads results")]:
        r = reason_interp(args + ["--out", str(tmp_path / "x.nc")] if args[0] != "plot" else args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_question_and_statement_pooling_on_multi_token_statements(tiny_model_dir):
    """The repository's ProofWriter/ARC features on sentences of several tokens: the max (or
    mean) over the question's tokens of the attention to each statement, averaged (or summed)
    over the statement's tokens, then over heads; against plain HF attentions and an
    independent word-count token map."""
    from nnsight_reasoning.experiments.probe import Features, statement_features, statement_rows
    from nnsight_reasoning.runner import Run

    path = tiny_model_dir("gpt2")
    model = nr.load_model(str(path))
    prompts = list(nr.tasks.load_reasoning(DATA / "proofwriter.jsonl"))
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = model.tokenizer
    for how in (Features("mean", "question_max", "mean", False), Features("heads", "question_mean", "sum", True)):
        run = Run(model, progress=False)
        layers, rows, owners = statement_rows(run, prompts, prompts, how, "attention")
        assert run.calls == len({len(tok(p.text)["input_ids"]) for p in prompts})  # one pass per length
        got = statement_features(rows, owners, prompts, how)
        want = []
        for p in prompts:
            owner = [-1] * (1 + len(p.prefix.split()))  # <bos> and the prefix's words
            for s_i, s in enumerate(p.statements):
                owner += [s_i] * len(tok(s.text, add_special_tokens=False)["input_ids"])
            first = len(owner)  # the question starts after the last statement
            ids = torch.tensor([tok(p.text)["input_ids"]])
            with torch.no_grad():
                a = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].double().numpy()  # (L, H, T, T)
            q = a[:, :, first:]
            rows = q.max(2) if how.query == "question_max" else q.mean(2)
            owner = np.array(owner + [-1] * (a.shape[-1] - len(owner)))
            f = np.stack([rows[:, :, owner == s].mean(-1) if how.statement_pool == "mean"
                          else rows[:, :, owner == s].sum(-1) for s in range(len(p.statements))])
            if how.pool == "mean":
                f = f.mean(-1, keepdims=True)
            want.append(f / f.max() if how.normalise else f)
        np.testing.assert_allclose(got, np.concatenate(want), atol=1e-6)
    with pytest.raises(UsageError, match="end with a statement"):  # no question: nothing to read from
        nr.probe(model, nr.tasks.kth_smallest(8, style="repository", length=6), query="question_max",
                 baseline="none", progress=False)


def test_step_f1_repository_scores_the_two_labels_as_the_k_th_smallest_probe(embedded_model):
    """step_f1="repository" (src/stask/probe.py:46-61, 81-93): each useful number is labelled
    (useful = 1, answer = 0/1); the kNN predicts both labels and the F1 is their mean, so
    (1 + binary F1 of the answer label) / 2, recomputed here with the numpy kNN."""
    prompts = nr.tasks.kth_smallest(60, seed=4)
    ds = nr.probe(embedded_model, prompts, baseline="none", n_neighbors=5, folds=3, seed=7, step_f1="repository",
                  progress=False)
    classes = nr.probe(embedded_model, prompts, baseline="none", n_neighbors=5, folds=3, seed=7, progress=False)
    assert ds.attrs["step_f1"] == "repository"
    np.testing.assert_array_equal(ds["f1"].sel(probe="useful").values, classes["f1"].sel(probe="useful").values)
    feats = _features("main", prompts).mean(-1, keepdims=True)
    feats = feats / np.concatenate([np.repeat(feats[5 * i:5 * i + 5].max(), 5) for i in range(60)])[:, None, None]
    useful = np.array([s.useful for p in prompts for s in p.statements]).astype(bool)
    answer = np.array([s.text == p.answer for p in prompts for s in p.statements])[useful].astype(int)
    fold = fold_of_prompt(60, 3, 7)[np.repeat(np.arange(60), 5)][useful]
    for li in range(4):
        x = feats[useful][:, :li + 1].reshape(useful.sum(), -1)
        pred = np.empty_like(answer)
        for k in range(3):
            pred[fold == k] = _knn_predict(x[fold != k], answer[fold != k], x[fold == k], 5)
        tp = ((pred == 1) & (answer == 1)).sum()
        f1_answer = 0.0 if tp == 0 else 2 * tp / ((pred == 1).sum() + (answer == 1).sum())
        assert float(ds["f1"].sel(probe="step", layer=li)) == pytest.approx((1 + f1_answer) / 2, abs=1e-9), li
        assert float(ds["accuracy"].sel(probe="step", layer=li)) == pytest.approx((pred == answer).mean(), abs=1e-9)
    with pytest.raises(UsageError, match="step_f1 must be one of classes, repository"):
        nr.probe(embedded_model, prompts, baseline="none", step_f1="labels", progress=False)


def test_probe_figure_of_several_models(embedded_model):
    """A result over several models (a model dim) draws one line per model, their F1 values."""
    from nnsight_reasoning.plotting.attention import probe_figure

    local = str(embedded.revision_path("main"))
    ds = nr.probe([embedded_model, local], nr.tasks.kth_smallest(20, seed=2), baseline="none", progress=False)
    assert ds["f1"].dims[0] == "model"
    fig = probe_figure(ds)
    lines = [ln for ln in fig.axes[1].lines if ln.get_linestyle() == "-"]
    assert len(lines) == 2
    for k, line in enumerate(lines):
        r = ds.isel(model=k).sel(probe="step")
        np.testing.assert_allclose(line.get_ydata(), np.append(r["f1"].values, float(r["f1_all"])))
