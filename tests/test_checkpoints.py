"""Checkpoint sweeps: revisions parsed and ordered, results stacked along ``checkpoint`` and
equal to single-revision runs, numbers checked against plain Hugging Face forwards, one
model in memory at a time, a real SIGKILL mid-sweep resumed to identical values, parts of
another configuration refused, and Pythia's Hub loading path run on a local cache laid out
as revisions (the Hub itself cannot be reached here)."""
from __future__ import annotations

import gc
import hashlib
import signal
import time
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.results.checkpoints import PYTHIA_REVISIONS, parse_revisions
from nnsight_reasoning.results.parts import parts_dir

from .clirun import in_process, reason_interp

REVS = embedded.revisions()


def hf_scores(model_dir: Path, prompts: list[str], answers: list[str]):
    """P(answer) and its rank from a plain transformers forward, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    p, rank = [], []
    with torch.no_grad():
        for text, ans in zip(prompts, answers):
            ids = tok(text, return_tensors="pt").input_ids
            logits = lm(ids).logits[0, -1]
            a = tok.convert_tokens_to_ids(ans)
            p.append(torch.softmax(logits, -1)[a].item())
            rank.append(int((logits > logits[a]).sum()))
    return np.array(p), np.array(rank)


def test_parse_revisions_orders_expands_and_refuses_unknown_names(tmp_path):
    assert parse_revisions("all") == REVS and REVS[0] == "step0" and REVS[-1] == "main"
    assert parse_revisions("main,step1000,step0,step0") == ["step0", "step1000", "main"]
    assert parse_revisions("step0:2000:1000") == ["step0", "step1000", "step2000"]
    with pytest.raises(nr.UsageError, match=r"has no revision step7; it has: step0, step1, step2"):
        parse_revisions("step0,step7")
    assert len(PYTHIA_REVISIONS) == 154 and PYTHIA_REVISIONS[:3] == ["step0", "step1", "step2"]
    assert parse_revisions("all", "EleutherAI/pythia-160m") == PYTHIA_REVISIONS  # "main" is step143000
    assert parse_revisions("main,step512", "EleutherAI/pythia-160m") == ["step512", "main"]
    assert parse_revisions("step0:143000:10000", "EleutherAI/pythia-160m")[-1] == "step140000"
    with pytest.raises(nr.UsageError, match="has no revision step3"):
        parse_revisions("step3", "EleutherAI/pythia-410m-deduped")
    with pytest.raises(nr.UsageError, match="list the revisions"):
        parse_revisions("all", "gpt2")
    assert parse_revisions("v2,main,v1", "someone/model") == ["v2", "v1", "main"]  # unknown: as given
    with pytest.raises(nr.UsageError, match="bad revision range"):
        parse_revisions("step10:0:5")
    (tmp_path / "step20").mkdir()
    (tmp_path / "step20" / "config.json").write_text("{}")
    (tmp_path / "step3").mkdir()
    (tmp_path / "step3" / "config.json").write_text("{}")
    assert parse_revisions("all", tmp_path) == ["step3", "step20"]


def test_a_sweep_loads_its_revisions_without_transformers_bars(capfd, hf_bars):
    """A sweep shows one bar over revisions: transformers' per-tensor "Loading weights" bar, one
    per revision, is off while it loads them, and the user's setting is back afterwards."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # the CLI, run in-process by other tests, may have turned it off
    capfd.readouterr()
    nr.load_model(revision="step0").dispatch()  # the weights are read here
    assert "Loading weights" in capfd.readouterr().err  # a single load keeps it: the check below can fail
    nr.evaluate(None, nr.tasks.examples("arithmetic", 4, seed=0), revisions="step0,main", progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_bars()[0]


def test_hf_bars_off_keeps_the_hubs_download_bars_and_restores_both(hf_bars):
    """Inside: transformers' bars off, the Hub's download bars as the user set them (a revision
    being downloaded is news); afterwards both as before, for each of the four settings."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    from nnsight_reasoning.progress import hf_bars_off

    for tf_on in (True, False):
        for hub_on in (True, False):
            (hf_logging.enable_progress_bar if tf_on else hf_logging.disable_progress_bar)()
            (hub.enable_progress_bars if hub_on else hub.disable_progress_bars)()
            with hf_bars_off():
                assert hf_bars() == (False, hub_on)
            assert hf_bars() == (tf_on, hub_on)


def test_sweep_slices_equal_single_runs_and_plain_hf_forwards(embedded_tokenizer):
    pairs = nr.tasks.arithmetic(n_prompts=10, seed=3, tokenizer=embedded_tokenizer)
    kw = dict(sites=["mlp", "attn", "head"], batch_size=64)
    revs = ["step0", "step4", "step1000", "step3000", "main"]  # "all" is parsed above, swept in the kill test
    sweep = nr.patch("embedded", pairs, revisions=",".join(revs), progress=True, **kw)  # nested bars must not clash
    nr.testing.assert_valid_result(sweep)
    assert list(sweep.checkpoint.values) == revs and sweep.mlp.dims[0] == "checkpoint"
    assert sweep.attrs["revision"] == ",".join(revs) and sweep.attrs["n_revisions"] == len(revs)
    assert [Path(p).name for p in sweep.model_path.values] == revs
    for rev in ("step0", "step1000", "main"):
        single = nr.patch(nr.load_model(revision=rev), pairs, progress=False, **kw)
        for v in single.data_vars:
            np.testing.assert_array_equal(sweep[v].sel(checkpoint=rev).values, single[v].values, err_msg=(rev, v))

    ev = nr.evaluate(None, nr.tasks.examples("arithmetic", 24, seed=5), revisions="step0,step512,main", progress=False)
    assert ev.accuracy.dims == ("checkpoint",) and ev.p_answer.dims == ("checkpoint", "prompt")
    assert ev.step.values.tolist() == [0, 512, embedded.training_meta()["step"]]
    for rev in ("step0", "step512", "main"):
        p, rank = hf_scores(embedded.revision_path(rev), list(ev.text.values), list(ev.answer.values))
        np.testing.assert_allclose(ev.p_answer.sel(checkpoint=rev).values, p, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(ev.answer_rank.sel(checkpoint=rev).values, rank)
        assert float(ev.accuracy.sel(checkpoint=rev)) == pytest.approx(float((rank == 0).mean()))
    assert float(ev.accuracy.sel(checkpoint="main")) > float(ev.accuracy.sel(checkpoint="step0")) + 0.5


@pytest.mark.parametrize("cycle", [False, True], ids=["refcount", "cycle"])
def test_any_experiment_sweeps_with_one_model_in_memory_at_a_time(tmp_path, monkeypatch, cycle):
    # No gc.collect here: the harness itself must have freed the last revision's weights, also
    # when a reference cycle holds them (then it runs the collector; otherwise it skips it, ~0.3 s
    # a revision).
    seen: list[weakref.ref] = []
    collections = []  # the harness's own collections (libraries may run theirs)
    monkeypatch.setattr(nr.runner, "gc", types.SimpleNamespace(collect=lambda: collections.append(1) or gc.collect()))

    def unembedding_norm(model) -> xr.Dataset:
        assert all(r() is None for r in seen), "the previous revision's weights are still in memory"
        seen.append(weakref.ref(model._module))
        if cycle:  # what an experiment's closure or a traceback can leave behind
            loop: dict = {"model": model}
            loop["self"] = loop
        w = model._module.get_output_embeddings().weight
        return xr.Dataset({"norm": ("token", w.norm(dim=-1)[:5].detach().double().numpy())},
                          attrs={"revision": nr.models.model_info(model).revision})

    ds = nr.over_revisions(unembedding_norm, "embedded", "step0,step1500,main", progress=False)
    assert ds.norm.dims == ("checkpoint", "token") and len(seen) == 3
    assert len(collections) == (3 if cycle else 0)
    assert not np.allclose(ds.norm.sel(checkpoint="step0"), ds.norm.sel(checkpoint="main"))
    with pytest.raises(nr.UsageError, match="needs config="):
        nr.over_revisions(unembedding_norm, "embedded", "main", resume_dir=tmp_path / "p")


def test_bad_input_found_in_a_late_revision_or_model_keeps_none_of_the_runs_parts(tmp_path):
    """Bad input found only in the third revision (or the second model): the finished revisions
    are not kept as parts, so the corrected command, a different run, is not refused; parts that
    were there before the call stay."""
    calls = []

    def norm_unless_third(model) -> xr.Dataset:
        calls.append(nr.models.model_info(model).revision)
        if len(calls) == 3:
            raise nr.UsageError("bad input found late")
        w = model._module.get_output_embeddings().weight
        return xr.Dataset({"norm": ("token", w.norm(dim=-1)[:3].detach().double().numpy())})

    parts = tmp_path / "p"
    with pytest.raises(nr.UsageError, match="found late"):
        nr.over_revisions(norm_unless_third, "embedded", "step0,step1,step2", resume_dir=parts, config={"v": 1},
                          progress=False)
    assert calls == ["step0", "step1", "step2"] and not parts.exists()  # made by the call: removed with its parts
    calls[:] = [None] * 3  # the corrected run (another config) fails no more
    ds = nr.over_revisions(norm_unless_third, "embedded", "step0,step1", resume_dir=parts, config={"v": 2},
                           progress=False)
    assert ds.sizes["checkpoint"] == 2 and sorted(p.name for p in parts.glob("*.nc")) == ["step0.nc", "step1.nc"]
    calls[:] = []  # a later bad call on the same folder: the parts it found stay, its own go
    with pytest.raises(nr.UsageError, match="found late"):
        nr.over_revisions(norm_unless_third, "embedded", "step0,step1,step4,step8,step16", resume_dir=parts,
                          config={"v": 2}, progress=False)
    assert calls == ["step4", "step8", "step16"]
    assert sorted(p.name for p in parts.glob("*.nc")) == ["step0.nc", "step1.nc"]

    def per_model(model, resume_dir) -> xr.Dataset:
        loaded = nr.load_model(model)
        loaded.dispatch()
        return norm_unless_third(loaded)

    calls[:] = [None]  # the second model's call is the third
    with pytest.raises(nr.UsageError, match="found late"):
        nr.runner.over_models(per_model, ["embedded", str(nr.embedded.REVISIONS_DIR / "step1")],
                              resume_dir=tmp_path / "m", config={}, progress=False)
    assert len(calls) == 3 and not (tmp_path / "m").exists()


def patch_cmd(out: Path, seed: int = 2) -> list[str]:
    return ["patch", "--n-prompts", "12", "--seed", str(seed), "--site", "mlp", "--site", "resid",
            "--positions", "all", "--batch-size", "16", "--revisions", "all", "--no-progress", "--out", str(out)]


def kill_when(proc, ready, what: str) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_sweep_resumes_to_identical_values_and_refuses_other_configs(tmp_path):
    out = tmp_path / "sweep.nc"
    parts = parts_dir(out)
    finished = lambda: sorted(p.stem for p in parts.glob("*.nc"))  # noqa: E731
    in_progress = lambda: list(parts.glob("*/call-*.npz"))  # noqa: E731

    # 1: killed in the middle of a revision, after one revision finished
    kill_when(reason_interp(patch_cmd(out), background=True),
              lambda: finished() and len(in_progress()) >= 3, "a finished revision and a half-done one")
    assert not out.exists()
    done_before = finished()

    # a different configuration (seed) is refused, nothing of it is mixed in
    other = reason_interp(patch_cmd(out, seed=3))
    assert other.returncode == 2 and "holds parts of a different run" in other.stderr, other.stderr
    assert "data" in other.stderr and "task_params" in other.stderr and finished() == done_before

    # 2: killed again just as a further revision is written
    kill_when(reason_interp(patch_cmd(out), background=True),
              lambda: len(finished()) > len(done_before), "one more finished revision")
    n_done = len(finished())

    resumed = reason_interp(patch_cmd(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_done} checkpoints resumed" in resumed.stdout
    clean = reason_interp(patch_cmd(tmp_path / "clean.nc"))
    assert clean.returncode == 0, clean.stderr
    a, b = nr.load_result(out), nr.load_result(tmp_path / "clean.nc")
    assert a.attrs["n_resumed_revisions"] == n_done > 0 and b.attrs["n_resumed_revisions"] == 0
    assert not parts.exists()
    assert list(a.checkpoint.values) == REVS
    for v in b.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_cli_evaluate_over_revisions_table_file_and_learning_curve(tmp_path):
    out = tmp_path / "curve.nc"
    r = in_process(["evaluate", "--task", "arithmetic", "--n-prompts", "30", "--revisions", "step0,step1000,main",
                       "--out", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(out)
    for rev in ("step0", "step1000", "main"):
        assert f"{float(ds.accuracy.sel(checkpoint=rev)):.3f}" in r.stdout
    fig = nr.plot_result(ds)
    acc_line = fig.axes[0].lines[0]
    np.testing.assert_array_equal(acc_line.get_ydata(), ds.accuracy.values)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["step0", "step1000", "main"]
    p = in_process(["plot", str(out)])
    assert p.returncode == 0 and out.with_suffix(".png").stat().st_size > 0

    both = in_process(["patch", "--revision", "main", "--revisions", "all"])
    assert both.returncode == 2 and "not both" in both.stderr
    bad = in_process(["evaluate", "--revisions", "step0,step99"])
    assert bad.returncode == 2 and "has no revision step99; it has: step0" in bad.stderr


@pytest.fixture(scope="module")
def pythia_cache(tmp_path_factory):
    """A Hugging Face cache holding ``EleutherAI/pythia-14m`` at three revisions, laid out as the
    Hub client writes it (snapshots/<commit>/, refs/<revision>), with the embedded weights."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / "models--EleutherAI--pythia-14m"
    for rev, source in (("step0", "step0"), ("step3000", "step1000"), ("main", "main")):
        commit = hashlib.sha1(rev.encode()).hexdigest()
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in embedded.revision_path(source).iterdir():
            (snap / f.name).symlink_to(f)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
    return cache


@pytest.mark.slow  # a fresh process (the Hub client reads its cache path at import): ~14 s on 2 cores
def test_pythia_ids_load_revisions_through_the_hub_client(pythia_cache, tmp_path):
    # a fresh process: the Hub client reads HF_HUB_CACHE when it is imported
    env = {"HF_HUB_CACHE": str(pythia_cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "pythia.nc"
    r = reason_interp(["evaluate", "--model", "EleutherAI/pythia-14m", "--revisions", "step0,main,step3000",
                       "--n-prompts", "20", "--seed", "1", "--no-progress", "--out", str(out)], env=env)
    assert r.returncode == 0, r.stderr
    ev = nr.load_result(out)
    assert list(ev.checkpoint.values) == ["step0", "step3000", "main"] and ev.attrs["model"] == "EleutherAI/pythia-14m"
    for rev, source in (("step0", "step0"), ("step3000", "step1000")):
        p, _ = hf_scores(embedded.revision_path(source), list(ev.text.values), list(ev.answer.values))
        np.testing.assert_allclose(ev.p_answer.sel(checkpoint=rev).values, p, rtol=1e-4, atol=1e-6)
    r = reason_interp(["evaluate", "--model", "EleutherAI/pythia-14m", "--revisions", "step0,step1", "--n-prompts", "5",
                       "--no-progress", "--out", str(tmp_path / "x.nc")], env=env)
    assert r.returncode == 2 and "could not load model 'EleutherAI/pythia-14m' revision 'step1'" in r.stderr


@pytest.mark.slow  # fresh processes (the Hub client reads its settings at import)
def test_an_unreachable_hub_is_detected_at_once(pythia_cache, tmp_path):
    # HF_HUB_OFFLINE unset, as for a user whose network is down; port 9 refuses at once
    env = {"HF_HUB_CACHE": str(pythia_cache), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    t0 = time.time()
    r = reason_interp(["patch", "--model", "does/not-exist", "--n-prompts", "2", "--out", str(tmp_path / "x.nc")], env=env)
    assert r.returncode == 2 and "not a local directory, not in the local Hub cache, and the Hub" in r.stderr, r.stderr
    assert time.time() - t0 < 25  # a fresh process, imports included; the Hub client's retries took ~30 s more
    out = tmp_path / "cached.nc"  # a cached model loads from its snapshot, without waiting on the network
    r = reason_interp(["evaluate", "--model", "EleutherAI/pythia-14m", "--revision", "step3000", "--n-prompts", "10",
                       "--no-progress", "--out", str(out)], env=env)
    assert r.returncode == 0, r.stderr
    p, _ = hf_scores(embedded.revision_path("step1000"), list(nr.load_result(out).text.values),
                     list(nr.load_result(out).answer.values))
    np.testing.assert_allclose(nr.load_result(out).p_answer.values, p, rtol=1e-4, atol=1e-6)
    assert nr.load_result(out).attrs["model"] == "EleutherAI/pythia-14m"
    r = reason_interp(["evaluate", "--model", "EleutherAI/pythia-14m", "--revision", "step1", "--n-prompts", "5",
                       "--out", str(tmp_path / "y.nc")], env=env)
    assert r.returncode == 2 and "revision 'step1' is not a local directory" in r.stderr, r.stderr


def test_local_directory_of_revisions_sweeps_from_the_cli(tmp_path, embedded_tokenizer):
    root = tmp_path / "my-run"
    root.mkdir()
    for rev in ("step0", "step512", "main"):
        (root / rev).symlink_to(embedded.revision_path(rev), target_is_directory=True)
    out = tmp_path / "local.nc"
    # in this process (the CLI's own entry point runs in the other CLI tests): a subprocess's start costs half the time
    r = in_process(["patch", "--model", str(root), "--revisions", "all", "--n-prompts", "6", "--site", "mlp",
                    "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "checkpoint main" in r.stderr and "3/3" in r.stderr  # the outer bar, last drawn on the last revision
    ds = nr.load_result(out)
    assert list(ds.checkpoint.values) == ["step0", "step512", "main"] and ds.attrs["model_path"] == str(root.resolve())
    pairs = nr.tasks.arithmetic(n_prompts=6, seed=0, tokenizer=embedded_tokenizer)
    single = nr.patch(nr.load_model(root, "step512"), pairs, sites=["mlp"], progress=False)
    np.testing.assert_array_equal(ds.mlp.sel(checkpoint="step512").values, single.mlp.values)
