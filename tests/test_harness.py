"""The harness, once per experiment: every CLI command sweeps revisions, resumes after a real
SIGKILL to identical values, and runs on the loopback NDIF server like it runs here.

Each experiment's numbers are checked against independent computations in its own test
file; here the same three properties are asserted of all of them through one table.
"""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.results.parts import parts_dir

from .clirun import reason_interp

MAIN = str(embedded.revision_path("main"))

# command line of each experiment at a small size, with a row budget that makes several passes
COMMANDS = {
    "patch": ["patch", "--n-prompts", "4", "--site", "embed", "--site", "attn_pattern", "--site", "attn_layer_pattern",
              "--site", "attn_weights", "--site", "mlp", "--site", "head", "--correct-only", "--batch-size", "8"],
    "patch_neurons": ["patch", "--n-prompts", "2", "--site", "neuron", "--layer", "3", "--batch-size", "300"],
    "evaluate": ["evaluate", "--n-prompts", "16", "--batch-size", "4"],
    "logit_lens": ["logit-lens", "--n-prompts", "8", "--batch-size", "2"],
    "attention": ["attention", "--n-prompts", "8", "--batch-size", "2"],
    "probe": ["probe", "--n-prompts", "8", "--batch-size", "2"],
    "heads": ["heads", "--n-sequences", "4", "--seq-len", "6", "--batch-size", "1"],
    "circuit": ["circuit", "--n-prompts", "4", "--ig-steps", "2", "--sizes", "10,40", "--batch-size", "8"],
    "edge_patching": ["circuit", "--exact", "--n-prompts", "2", "--batch-size", "64"],
    "neurons": ["neurons", "--n-prompts", "8", "--variant", "equation_only", "--batch-size", "4"],
    "binding": ["binding", "--n-contexts", "6", "--n-estimate", "6", "--batch-size", "4"],
}
METHODS = {"patch": "activation_patching", "patch_neurons": "activation_patching", "evaluate": "evaluate",
           "logit_lens": "logit_lens", "attention": "attention",
           "probe": "mechanistic_probe", "heads": "head_scores", "circuit": "eap_ig", "edge_patching": "edge_patching",
           "neurons": "cot_neurons", "binding": "binding_ids"}


def assert_same_values(a: xr.Dataset, b: xr.Dataset, tol: float = 0.0) -> None:
    """Every variable equal (``tol`` = 0: bit for bit), numbers to ``tol`` absolute or relative."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in a.data_vars:
        x, y = a[v].values, b[v].values
        if x.dtype.kind in "fiub":
            np.testing.assert_allclose(x, y, atol=tol, rtol=tol, err_msg=v)
        else:
            np.testing.assert_array_equal(x, y, err_msg=v)


def invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args + ["--no-progress"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_revisions_sweep_stacks_every_checkpoint(name, tmp_path):
    # "all" (every shipped revision) once, for the cheapest command; three revisions for the others,
    # the untrained one among them
    revisions = "all" if name == "evaluate" else "step0,step256,main"
    want = embedded.revisions() if revisions == "all" else revisions.split(",")
    out = tmp_path / "sweep.nc"
    invoke(COMMANDS[name] + ["--revisions", revisions, "--out", str(out)])
    ds = nr.load_result(out)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["method"] == METHODS[name]
    assert list(ds["checkpoint"].values) == want
    assert list(ds["step"].values)[:-1] == [float(r[4:]) for r in want[:-1]]
    assert not parts_dir(out).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_sigkill_midway_then_the_same_command_resumes_to_identical_values(name, tmp_path):
    out, clean = tmp_path / "killed.nc", tmp_path / "clean.nc"
    args = COMMANDS[name] + ["--no-progress"]
    # the process kills itself (SIGKILL, no clean-up) as soon as 2 parts are on disk
    killed = reason_interp(args + ["--out", str(out)], env={"REASON_INTERP_TEST_KILL_AFTER": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and len(list(parts_dir(out).rglob("*.npz"))) == 2
    resumed = reason_interp(args + ["--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    fresh = reason_interp(args + ["--out", str(clean)])
    assert fresh.returncode == 0, fresh.stderr
    a, b = nr.load_result(out), nr.load_result(clean)
    assert a.attrs["n_resumed_passes"] == 2 and b.attrs["n_resumed_passes"] == 0
    assert a.attrs["n_forward_passes"] == b.attrs["n_forward_passes"] > 2
    assert not parts_dir(out).exists()
    assert_same_values(a, b)


@pytest.mark.slow
@pytest.mark.remote
@pytest.mark.parametrize("name", COMMANDS)
def test_remote_on_loopback_ndif_equals_local(name, ndif, tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith(("NDIF_", "REASON_INTERP_")):
            monkeypatch.delenv(k)
    args = COMMANDS[name] + ["--model", MAIN]
    if name == "probe":
        args += ["--baseline", "none"]  # the baseline checkpoint is not served by the test server
    invoke(args + ["--out", str(tmp_path / "local.nc")])
    monkeypatch.setenv("NDIF_API_KEY", "sk-test-harness")
    monkeypatch.setenv("NDIF_HOST", ndif.host)
    served = ndif.requests_received()
    invoke(args + ["--remote", "--out", str(tmp_path / "remote.nc")])
    local, remote = nr.load_result(tmp_path / "local.nc"), nr.load_result(tmp_path / "remote.nc")
    # The server runs the same weights with eager attention on a CPU, in other worker threads
    # (other reduction orders): each float32 logit may move by a few ulps of the largest
    # (|30| on this model). Every reported number is a function of at most four logits or
    # log-probabilities (a logit difference, a ratio of probabilities), so 4 x 8 ulps of 30,
    # absolute or relative, bounds float32 noise; a wrong row or site is an O(1) error.
    assert_same_values(remote, local, tol=32 * np.finfo(np.float32).eps * 30)
    assert remote.attrs["remote"] == 1 and local.attrs["remote"] == 0
    assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] == ndif.requests_received() - served
