"""Finished work kept on disk: resume after a real SIGKILL, refuse parts of another run."""
from __future__ import annotations

import shutil
import signal
import time

import numpy as np
import pytest

import nnsight_reasoning as nr
from nnsight_reasoning.results.parts import parts_dir

from .clirun import in_process, reason_interp


def test_resume_dir_reuses_finished_passes_and_gives_identical_values(embedded_model, small_pairs, tmp_path):
    kw = dict(sites=["mlp", "head"], batch_size=12, progress=False)
    full = nr.patch(embedded_model, small_pairs, **kw)
    d = tmp_path / "parts"
    first = nr.patch(embedded_model, small_pairs, resume_dir=d, **kw)
    stored = sorted(d.glob("call-*.npz"))
    assert len(stored) == full.attrs["n_forward_passes"] > 2
    for p in stored[::2]:  # as if the run had died before these passes
        p.unlink()
    kept = len(list(d.glob("call-*.npz")))
    again = nr.patch(embedded_model, small_pairs, resume_dir=d, **kw)
    assert again.attrs["n_resumed_passes"] == kept and first.attrs["n_resumed_passes"] == 0
    for v in full.data_vars:
        np.testing.assert_array_equal(again[v].values, full[v].values)


def test_parts_of_another_configuration_are_refused(embedded_model, small_pairs, tmp_path):
    d = tmp_path / "parts"
    nr.patch(embedded_model, small_pairs, sites=["mlp"], resume_dir=d, progress=False)
    other = nr.tasks.arithmetic(n_prompts=6, seed=4, tokenizer=embedded_model.tokenizer)
    with pytest.raises(nr.UsageError, match=r"different run \(differs in: data, task_params\)"):
        nr.patch(embedded_model, other, sites=["mlp"], resume_dir=d, progress=False)
    with pytest.raises(nr.UsageError, match=r"differs in: sites"):
        nr.patch(embedded_model, small_pairs, sites=["attn"], resume_dir=d, progress=False)
    ev = tmp_path / "ev"
    nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 8, seed=1), resume_dir=ev, progress=False)
    with pytest.raises(nr.UsageError, match=r"differs in: .*task_params"):
        nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 8, seed=2), resume_dir=ev, progress=False)


def test_a_corrupt_part_is_a_clear_error(embedded_model, small_pairs, tmp_path):
    d = tmp_path / "parts"
    nr.patch(embedded_model, small_pairs, sites=["mlp"], resume_dir=d, progress=False)
    next(d.glob("call-*.npz")).write_bytes(b"not a numpy file")
    with pytest.raises(nr.UsageError, match="is corrupt; delete it"):
        nr.patch(embedded_model, small_pairs, sites=["mlp"], resume_dir=d, progress=False)


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_values(tmp_path):
    args = ["patch", "--n-prompts", "16", "--seed", "2", "--site", "mlp", "--site", "attn", "--site", "resid",
            "--positions", "all", "--batch-size", "8", "--no-progress"]
    out = tmp_path / "killed.nc"
    parts = parts_dir(out)
    proc = reason_interp(args + ["--out", str(out)], background=True)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.npz"))) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    n_done = len(list(parts.glob("*.npz")))

    resumed = reason_interp(args + ["--out", str(out)], background=True)
    clean = reason_interp(args + ["--out", str(tmp_path / "clean.nc")], background=True)
    for p in (resumed, clean):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    a, b = nr.load_result(out), nr.load_result(tmp_path / "clean.nc")
    assert a.attrs["n_resumed_passes"] >= n_done > 0 and b.attrs["n_resumed_passes"] == 0
    assert a.attrs["n_resumed_passes"] < a.attrs["n_forward_passes"]
    assert not parts.exists()
    for v in b.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values)


def test_restart_discards_parts_of_another_run(tmp_path):
    out = tmp_path / "r.nc"
    base = ["patch", "--n-prompts", "4", "--site", "mlp", "--no-progress", "--out", str(out)]
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "manifest.json").write_text('{"config": {"method": "something else"}}')
    refused = in_process(base)
    assert refused.returncode == 2 and "pass --restart" in refused.stderr and not out.exists()
    ok = in_process(base + ["--restart"])
    assert ok.returncode == 0, ok.stderr
    assert out.exists() and not parts.exists()


def test_a_failed_run_never_removes_a_folder_it_did_not_make(embedded_model, small_pairs, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(nr.UsageError, match="unknown site"):
        nr.patch(embedded_model, small_pairs, sites=["bogus"], resume_dir=mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep"


def test_bad_input_found_after_some_passes_keeps_no_parts_so_the_fix_is_not_refused(tmp_path):
    """A sweep's neurons are discovered on its last revision before it starts; finding none is
    bad input found only after passes ran: those passes go, and the corrected call runs."""
    data = nr.tasks.cot_variants(6, ["equation_only"], n_steps=1, seed=1)
    d = tmp_path / "parts"
    kw = dict(discover_on="equation_only", revisions="step0,main", resume_dir=d, progress=False)
    with pytest.raises(nr.UsageError, match="no neuron is in the top 1"):
        nr.neurons("embedded", data, top_k=1, min_frequency=1.0, **kw)
    assert not d.exists()
    ds = nr.neurons("embedded", data, top_k=10, min_frequency=0.3, **kw)
    assert list(ds["checkpoint"].values) == ["step0", "main"]


def test_parts_kept_before_a_backend_function_changed_shape_are_refused(embedded_model, tmp_path, monkeypatch):
    """``self_repair_logits`` returns five tensors since its ``parts_format`` 2 (four before): a
    folder kept by the older version, whose digests had no format, is refused, not misread."""
    from nnsight_reasoning.backend import graph

    seqs = nr.tasks.text_sequences(3, 8, seed=1, tokenizer=embedded_model.tokenizer)
    d = tmp_path / "parts"
    kw = dict(heads="a1.0", resume_dir=d, progress=False)
    with monkeypatch.context() as m:
        m.delattr(graph.self_repair_logits, "parts_format")  # the version before the fifth tensor
        nr.self_repair(embedded_model, seqs, **kw)
    with pytest.raises(nr.UsageError, match="was computed from other inputs; delete .* or pass --restart"):
        nr.self_repair(embedded_model, seqs, **kw)
    shutil.rmtree(d)  # what the error says to do
    again = nr.self_repair(embedded_model, seqs, **kw)
    assert again.attrs["n_resumed_passes"] == 0
    assert nr.self_repair(embedded_model, seqs, **kw).attrs["n_resumed_passes"] == again.attrs["n_forward_passes"]


@pytest.mark.parametrize("fn", ["answer_scores", "residual_lens"])
def test_parts_kept_before_the_rank_became_the_best_candidates_are_refused(embedded_model, tmp_path, monkeypatch,
                                                                          fn):
    """``Scores.rank`` is (rows,) since ``answer_scores``' format 2 ((rows, K) before), and the lens
    ranks a NaN row last since ``residual_lens``' format 2: a folder kept by the older versions is
    refused, not misread."""
    from nnsight_reasoning import backend
    from nnsight_reasoning.backend import graph

    owner = backend if fn == "answer_scores" else graph
    run = nr.evaluate if fn == "answer_scores" else nr.logit_lens
    data = nr.tasks.examples("arithmetic", 4, seed=1)
    d = tmp_path / "parts"
    with monkeypatch.context() as m:
        m.delattr(getattr(owner, fn), "parts_format")
        run(embedded_model, data, resume_dir=d, progress=False)
    with pytest.raises(nr.UsageError, match="was computed from other inputs; delete .* or pass --restart"):
        run(embedded_model, data, resume_dir=d, progress=False)

