"""Remote execution against a real NDIF server on 127.0.0.1 (see tests/ndif_stack.py).

Every run here is real: the CLI in a subprocess or the API in-process, nnsight's remote
client, NDIF's API, queue, controller and a model actor. Faults are produced for real
(a port nobody listens on, an undeployed model, a deadline too short, the API stopped
mid-sweep); those the loopback API never gives (overload, a refused key, a request too
large, a reply that never comes) come from a real HTTP proxy in front of it
(tests/fault_proxy.py). Nothing is mocked.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.results.parts import parts_dir
from nnsight_reasoning.sites import SITES

from .clirun import reason_interp
from .fault_proxy import FaultProxy
from .ndif_stack import free_port

pytestmark = [pytest.mark.remote, pytest.mark.slow]
KEY = "sk-test-0f1e2d3c-never-print-me"
MAIN = str(embedded.revision_path("main"))


@pytest.fixture(autouse=True)
def _no_outside_ndif_settings(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("NDIF_", "REASON_INTERP_")):
            monkeypatch.delenv(k)


def cli(args: list[str], ndif=None, background: bool = False, **env: str):
    """``reason-interp ARGS`` in a fresh process, pointed at the test server."""
    base = {"NDIF_API_KEY": KEY, "REASON_INTERP_REMOTE_BACKOFF": "0.2"}
    if ndif is not None:
        base["NDIF_HOST"] = ndif.host
    return reason_interp(args, {**base, **env}, background=background)


def assert_same_values(a: xr.Dataset, b: xr.Dataset, tol: float = 1e-5) -> None:
    """Equal to ``tol``, absolute or relative (stolfo_ie divides by probabilities near 1e-12)."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_allclose(a[v].values, b[v].values, atol=tol, rtol=tol, err_msg=v)


def no_secret(*texts: str) -> None:
    for t in texts:
        assert KEY not in t


PATCH = ["patch", "--task", "arithmetic", "--model", MAIN, "--n-prompts", "12", "--seed", "5",
         "--site", "mlp", "--site", "attn", "--site", "resid", "--site", "head", "--batch-size", "128",
         "--no-progress"]


def test_cli_patch_remote_equals_local_with_few_small_requests(ndif, tmp_path):
    served_before = ndif.requests_received()
    remote = cli(PATCH + ["--remote", "--out", str(tmp_path / "remote.nc")], ndif)
    assert remote.returncode == 0, remote.stderr
    local = cli(PATCH + ["--out", str(tmp_path / "local.nc")])
    assert local.returncode == 0, local.stderr
    r, l_ = nr.load_result(tmp_path / "remote.nc"), nr.load_result(tmp_path / "local.nc")
    assert_same_values(r, l_)
    assert r.attrs["remote"] == 1 and l_.attrs["remote"] == 0
    # One request per forward pass, each holding many patches, counted on both ends.
    units = 3 * 4 + 4 * 4  # mlp, attn, resid x 4 layers + 4 heads x 4 layers, last position
    assert r.attrs["remote_jobs"] == r.attrs["n_forward_passes"] == ndif.requests_received() - served_before
    assert r.attrs["remote_jobs"] < units  # a naive loop sends one request per unit at least
    # Only per-row scores come back: far less than one row of logits per patched row.
    rows = 12 * (units + 2)
    assert r.attrs["remote_bytes_received"] < rows * len(nr.load_model().tokenizer) * 4 / 4
    assert "NDIF:" in remote.stdout and "requests" in remote.stdout
    no_secret(remote.stdout, remote.stderr, (tmp_path / "remote.nc").read_bytes().decode("latin-1"))
    assert not parts_dir(tmp_path / "remote.nc").exists()  # merged, then dropped


def test_api_evaluate_remote_equals_local_and_host_url_works(ndif, embedded_model, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    local = nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 40, seed=2), batch_size=16, progress=False)
    remote = nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 40, seed=2), batch_size=16, progress=False,
                         remote=ndif.host)  # a URL instead of True: this host, this call
    np.testing.assert_allclose(remote.p_answer.values, local.p_answer.values, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(remote.answer_rank.values, local.answer_rank.values)
    assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] >= 2


@pytest.mark.parametrize("engine", ["v1", "v2"])
def test_every_patch_site_runs_remotely_like_locally(ndif, embedded_model, monkeypatch, engine):
    """Each site's edit runs on the server through the helper NDIF rebuilds from trace_ops
    (``site_values``: the attention probabilities through ``.source``, the heads' and neurons'
    projection inputs, the outputs, the embeddings, the residual stream), with both engines."""
    from nnsight_reasoning import backend

    monkeypatch.setenv("NDIF_API_KEY", KEY)
    pairs = nr.tasks.arithmetic(n_prompts=6, seed=0)
    sites = list(SITES)  # every one
    with backend.engine(engine):
        local = nr.patch(embedded_model, pairs, sites=sites, progress=False)
        remote = nr.patch(embedded_model, pairs, sites=sites, progress=False, remote=ndif.host)
    assert_same_values(remote, local)
    assert float(abs(local["neurons"]).max()) > 1 and float(abs(local["attn_pattern"]).max()) > 1  # edits that move
    assert float(abs(local["attn_layer_pattern"]).max()) > 1
    assert float(abs(local["mlp_dim"]).max()) > 0.1  # (the last token's embedding is the same in both prompts)


def test_checkpoint_sweep_runs_remotely_and_names_the_revision_not_served(ndif, tmp_path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    local = nr.evaluate(None, nr.tasks.examples("arithmetic", 12), revisions="main", progress=False)
    remote = nr.evaluate(None, nr.tasks.examples("arithmetic", 12), revisions="main", progress=False, remote=ndif.host)
    np.testing.assert_allclose(remote.p_answer.values, local.p_answer.values, atol=1e-5, rtol=0)
    assert remote.p_answer.dims == ("checkpoint", "prompt")
    r = cli(["evaluate", "--revisions", "step0,main", "--n-prompts", "4", "--remote", "--no-progress",
             "--out", str(tmp_path / "s.nc")], ndif)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "revisions/step0" in r.stderr and "is not deployed on" in r.stderr and "run locally" in r.stderr
    assert not (tmp_path / "s.nc").exists() and not parts_dir(tmp_path / "s.nc").exists()


def test_remote_status_names_host_and_served_models(ndif):
    r = cli(["remote", "status"], ndif)
    assert r.returncode == 0, r.stderr
    assert ndif.host in r.stdout and "RUNNING" in r.stdout and "api key   set (NDIF_API_KEY)" in r.stdout
    assert str(Path(MAIN).resolve()) in r.stdout  # the full repo id, never cut to the terminal width
    no_secret(r.stdout, r.stderr)
    down = cli(["remote", "status", "--host", f"http://127.0.0.1:{free_port()}"])
    assert down.returncode == 1 and "does not answer" in down.stderr


@pytest.mark.parametrize("fault, change, expect", [
    ("unreachable host", {"NDIF_HOST": "port"}, "is unreachable"),
    ("model not deployed", {"model": str(embedded.revision_path("step0"))}, "is not deployed on"),
    # 1 ms: far less than one forward pass through NDIF's queue, so the job cannot finish in time;
    # every neuron in one request (8,192 rows, seconds of the server's work), so that it has not
    # finished either when the first poll reaches it from a client slowed by a loaded machine
    ("job time-out", {"REASON_INTERP_REMOTE_TIMEOUT": "0.001", "site": "neuron", "batch": "8192"},
     "did not finish within"),
    ("missing key", {"NDIF_API_KEY": ""}, "no NDIF API key"),
])
def test_faults_are_one_line_exit_1_and_write_nothing(ndif, tmp_path, fault, change, expect):
    env = dict(change)
    # one template: pairs of one length, so the sweep is one request and nothing can finish before the fault
    args = ["patch", "--model", env.pop("model", MAIN), "--n-prompts", "4", "--site", env.pop("site", "mlp"),
            "--batch-size", env.pop("batch", "512"), "--template", "{expr} =",
            "--no-progress", "--remote", "--out", str(tmp_path / "x.nc")]
    if env.get("NDIF_HOST") == "port":
        env["NDIF_HOST"] = f"http://127.0.0.1:{free_port()}"
    r = cli(args, ndif, **env)
    assert r.returncode == 1, (fault, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.nc").exists() and not parts_dir(tmp_path / "x.nc").exists()
    no_secret(r.stdout, r.stderr)


def test_api_stopped_mid_sweep_then_same_command_resumes(ndif, tmp_path):
    """A sweep of many requests loses its server half-way: finished passes stay on disk; the
    same command, started while the server is still coming back, retries, resumes and ends
    with the values of an uninterrupted run."""
    out = tmp_path / "sweep.nc"
    args = ["patch", "--model", MAIN, "--n-prompts", "24", "--seed", "1", "--site", "mlp", "--site", "attn",
            "--batch-size", "12", "--no-progress", "--remote", "--out", str(out)]
    parts = parts_dir(out)
    first = cli(args, ndif, background=True, REASON_INTERP_REMOTE_RETRIES="1")
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.npz"))) < 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no parts appeared"
        time.sleep(0.05)
    ndif.stop_service("api")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 1, (stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1 and "the same command resumes" in stderr, stderr
    done = len(list(parts.glob("*.npz")))
    assert done >= 3 and not out.exists()

    # Each job may take 120 s (not the default 600): a job the restarted server never finishes
    # then ends the command with its last status instead of outlasting the test (CI once waited
    # 240 s here with nothing to show why). The back-offs (0.5 s doubling, 8 retries) span 127 s.
    second = cli(args, ndif, background=True, REASON_INTERP_REMOTE_RETRIES="8", REASON_INTERP_REMOTE_BACKOFF="0.5",
                 REASON_INTERP_REMOTE_TIMEOUT="120")
    t0 = time.monotonic()
    restart = Restart(ndif)
    restart.start()
    try:
        stdout, stderr = second.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        second.kill()
        stdout, stderr = second.communicate()
    restart.join()
    assert second.returncode == 0, (f"exit {second.returncode} after {time.monotonic() - t0:.0f} s; the API was back "
                                    f"after {restart.took}; stderr: {stderr}\n{ndif.diagnostics(lines=40)}")
    resumed = nr.load_result(out)
    assert resumed.attrs["n_resumed_passes"] == done
    assert resumed.attrs["remote_jobs"] == resumed.attrs["n_forward_passes"] - done
    assert "resumed from finished parts" in stdout
    assert not parts.exists()
    local = cli([a for a in args if a != "--remote"][:-1] + [str(tmp_path / "local.nc")])
    assert local.returncode == 0, local.stderr
    assert_same_values(resumed, nr.load_result(tmp_path / "local.nc"))
    no_secret(stdout, stderr)


class Restart(threading.Thread):
    """Start the stopped API again and wait until it serves; ``took`` says how long (or why not)."""

    def __init__(self, ndif):
        super().__init__()
        self.ndif, self.took = ndif, "(still restarting)"

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.ndif.start_api()
            self.ndif.wait_api()
            self.took = f"{time.monotonic() - t0:.0f} s"
        except Exception as e:  # reported by the test's assertion, not lost in this thread
            self.took = f"never ({e})"


def test_a_failing_job_is_one_run_error_and_not_retried(ndif, embedded_model, monkeypatch):
    """A trace that fails on the server (an answer id outside the vocabulary) is a job error:
    reported once, with the server's reason, and not sent again."""
    import torch

    from nnsight_reasoning import backend, remote

    monkeypatch.setenv("NDIF_API_KEY", KEY)
    ids = torch.tensor([embedded_model.tokenizer("3 + 4 =")["input_ids"]])
    with remote.counting(remote.Traffic()) as traffic:
        with pytest.raises(nr.RunError, match="NDIF job failed: .*index") as err:
            backend.answer_scores(embedded_model, ids, torch.tensor([[10**6]]), remote=ndif.host)
    assert traffic.jobs == 1 and traffic.retries == 0
    assert KEY not in str(err.value)


def test_attention_and_probe_run_remotely_like_locally(ndif, embedded_model, monkeypatch, tmp_path):
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    prompts = nr.tasks.kth_smallest(24, seed=3)
    local = nr.attention(embedded_model, prompts, patterns="all", batch_size=16, progress=False)
    remote = nr.attention(embedded_model, prompts, patterns="all", batch_size=16, progress=False, remote=ndif.host)
    assert_same_values(remote, local)
    assert remote.attrs["remote"] == 1 and remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] == 2
    args = ["probe", "--n-prompts", "24", "--baseline", "none", "--no-progress"]
    r = cli(args + ["--remote", "--out", str(tmp_path / "remote.nc")], ndif)
    assert r.returncode == 0, r.stderr
    assert cli(args + ["--out", str(tmp_path / "local.nc")]).returncode == 0
    assert_same_values(nr.load_result(tmp_path / "remote.nc"), nr.load_result(tmp_path / "local.nc"))
    no_secret(r.stdout, r.stderr, (tmp_path / "remote.nc").read_bytes().decode("latin-1"))
    # the random baseline needs the weights here: refused before any request is sent
    served = ndif.requests_received()
    r = cli(args[:-3] + ["--baseline", "random", "--remote", "--out", str(tmp_path / "x.nc")], ndif)
    assert r.returncode == 2 and "runs locally only" in r.stderr and not (tmp_path / "x.nc").exists()
    assert ndif.requests_received() == served
    # head pruning: the head masks ship with the request
    args = ["prune", "--n-prompts", "16", "--fraction", "0.25", "--fraction", "0.5", "--n-random", "1", "--no-progress"]
    r = cli(args + ["--remote", "--out", str(tmp_path / "prune_remote.nc")], ndif)
    assert r.returncode == 0, r.stderr
    assert cli(args + ["--out", str(tmp_path / "prune_local.nc")]).returncode == 0
    remote = nr.load_result(tmp_path / "prune_remote.nc")
    assert_same_values(remote, nr.load_result(tmp_path / "prune_local.nc"))
    assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] > 0
    # attention with those heads pruned (the attention-flow case study): the mask ships with the request
    mask = remote["pruned"].sel(ordering="entropy_position", fraction=0.5)
    placed = nr.tasks.kth_smallest(8, seed=4, place=[2, 4])
    local = nr.attention(embedded_model, placed, patterns="all", pruned=mask, progress=False)
    far = nr.attention(embedded_model, placed, patterns="all", pruned=mask, progress=False, remote=ndif.host)
    assert_same_values(far, local)
    assert far.attrs["remote_jobs"] == 1 and int(far["pruned"].sum()) == 8
    # self-repair: the weights are read inside the trace, on the server
    texts = nr.tasks.text_sequences(4, 10, seed=1, tokenizer=embedded_model.tokenizer)
    local = nr.self_repair(embedded_model, texts, heads="a0.1,a2.3", progress=False)
    far = nr.self_repair(embedded_model, texts, heads="a0.1,a2.3", progress=False, remote=ndif.host)
    assert_same_values(far, local)
    assert far.attrs["remote_jobs"] == far.attrs["n_forward_passes"] == 1
    local = nr.self_repair(embedded_model, texts, heads="a0.1", ablation="mean", progress=False)  # + the means' pass
    far = nr.self_repair(embedded_model, texts, heads="a0.1", ablation="mean", progress=False, remote=ndif.host)
    assert_same_values(far, local)
    assert far.attrs["remote_jobs"] == far.attrs["n_forward_passes"] == 2


def test_path_patching_and_robustness_run_remotely_like_locally(ndif, embedded_model, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    pairs = nr.tasks.ioi(8, corruption="swap", tokenizer=embedded_model.tokenizer)
    kw = dict(receivers="a3.1", receiver_input="q", position="last", progress=False)
    remote = nr.path_patching(embedded_model, pairs, remote=ndif.host, **kw)
    assert_same_values(remote, nr.path_patching(embedded_model, pairs, **kw))
    assert remote.attrs["remote"] == 1 and remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] > 0
    prompts = nr.tasks.kth_smallest(12, seed=1)
    kw = dict(n_subsets=3, subset_size=(4, 8), baseline="none", progress=False)
    remote = nr.robustness(embedded_model, prompts, remote=ndif.host, **kw)
    assert_same_values(remote, nr.robustness(embedded_model, prompts, **kw))
    assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] > 0


def test_cot_generation_runs_remotely_like_locally(ndif, embedded_model, monkeypatch):
    """Generation traced step by step, with neuron edits (set values and weight noise), as one
    NDIF request per batch and prompt type."""
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    data = nr.tasks.cot_generation(4, ["cot", "equation_only"], seed=2)
    opts = dict(units=["L3N7", "L1N20"], max_new_tokens=8, ranking="algorithm_one", progress=False, batch_size=4)
    local = nr.cot_generation(embedded_model, data, **opts)
    remote = nr.cot_generation(embedded_model, data, remote=ndif.host, **opts)
    assert sorted(local.data_vars) == sorted(remote.data_vars)
    for v in local.data_vars:
        if local[v].dtype == object:
            assert local[v].values.tolist() == remote[v].values.tolist(), v
        else:
            np.testing.assert_allclose(remote[v].values, local[v].values, rtol=1e-5, atol=1e-6, err_msg=v)
    assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] > 0


def test_binding_iclr_measures_run_remotely_like_locally(ndif, embedded_model, monkeypatch):
    """The frozen context (a row mask), the position ids and the Δ edits travel with each request."""
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    data = nr.tasks.binding_contexts(3, 2, 3, family="capitals", split=True)
    three = nr.tasks.binding_contexts(2, 3, 2, family="capitals", estimate_family="fruits", estimate_pairs=4)
    for measure, d in (("factorization", data), ("position", data), ("means", data), ("cross_subspace", three)):
        local = nr.binding(embedded_model, d, measure=measure, max_offset=2, progress=False)
        remote = nr.binding(embedded_model, d, measure=measure, max_offset=2, progress=False, remote=ndif.host)
        for v in local.data_vars:
            np.testing.assert_allclose(remote[v].values, local[v].values, rtol=1e-5, atol=1e-6, err_msg=v)
        assert remote.attrs["remote_jobs"] == remote.attrs["n_forward_passes"] > 0


# --------------------------------------------------------------------------- through a fault proxy
# A sweep of 7 requests (12 pairs in 6 length groups, --batch-size 12), small enough to run
# in seconds; the faults start after a few requests, so that finished parts exist.
SWEEP = ["patch", "--model", MAIN, "--n-prompts", "12", "--seed", "1", "--site", "mlp", "--batch-size", "12",
         "--no-progress", "--remote"]


@pytest.fixture
def proxy(ndif):
    with FaultProxy(ndif.host) as p:
        yield p


@pytest.fixture(scope="module")
def direct_sweep(ndif, tmp_path_factory):
    """SWEEP run straight against the API, uninterrupted: the values every proxied run must give."""
    out = tmp_path_factory.mktemp("direct") / "direct.nc"
    r = cli(SWEEP + ["--out", str(out)], ndif)
    assert r.returncode == 0, r.stderr
    return nr.load_result(out)


def no_secret_anywhere(r, folder: Path) -> None:
    """The key is in neither output stream nor any file under ``folder`` (results, parts, locks)."""
    no_secret(r.stdout, r.stderr)
    for f in folder.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    return lines[0]


def test_proxy_forwards_plain_http_and_a_run_through_it_equals_a_direct_one(proxy, direct_sweep, tmp_path):
    """nnsight's non-blocking client needs only POST /request and GET /response/<id> (no
    websocket), plus the toolkit's GET /status: the proxy carries a normal run unchanged."""
    r = cli(SWEEP + ["--out", str(tmp_path / "p.nc")], NDIF_HOST=proxy.host)
    assert r.returncode == 0, r.stderr
    res = nr.load_result(tmp_path / "p.nc")
    assert_same_values(res, direct_sweep)
    assert {(s.method, s.path.split("/")[1]) for s in proxy.seen} == {("GET", "status"), ("POST", "request"),
                                                                     ("GET", "response")}
    assert res.attrs["remote_jobs"] == proxy.count("POST", "/request") == 7
    assert res.attrs["remote_polls"] == proxy.count("GET", "/response/")
    no_secret_anywhere(r, tmp_path)


def test_503_on_the_first_two_submissions_is_retried_and_the_run_succeeds(proxy, direct_sweep, tmp_path):
    proxy.fail(503, "POST", "/request", times=2)
    r = cli(SWEEP + ["--out", str(tmp_path / "p.nc")], REASON_INTERP_REMOTE_RETRIES="3", NDIF_HOST=proxy.host)
    assert r.returncode == 0, r.stderr
    res = nr.load_result(tmp_path / "p.nc")
    assert_same_values(res, direct_sweep)
    assert res.attrs["remote_retries"] >= 2 and proxy.count("POST", "/request", injected=True) == 2
    assert res.attrs["remote_jobs"] == res.attrs["n_forward_passes"] == 7
    no_secret_anywhere(r, tmp_path)


def test_503_always_gives_up_after_the_retries_keeps_parts_and_the_same_command_resumes(
        proxy, direct_sweep, tmp_path):
    out = tmp_path / "p.nc"
    args = SWEEP + ["--out", str(out)]
    proxy.fail(503, "POST", "/request", after=3)  # 3 requests pass, then every one is refused
    r = cli(args, REASON_INTERP_REMOTE_RETRIES="2", NDIF_HOST=proxy.host)
    line = one_error_line(r)
    assert "is overloaded or failing (HTTP 503 after 2 retries)" in line and "try again later" in line, line
    assert f"3 finished parts are kept in {parts_dir(out)}; the same command resumes" in line, line
    assert proxy.count("POST", "/request", injected=True) == 3  # one try and 2 retries, then no more
    assert not out.exists()
    no_secret_anywhere(r, tmp_path)

    proxy.clear()  # the server recovers
    again = cli(args, NDIF_HOST=proxy.host)
    assert again.returncode == 0, again.stderr
    res = nr.load_result(out)
    assert res.attrs["n_resumed_passes"] == 3 and res.attrs["remote_jobs"] == 4
    assert_same_values(res, direct_sweep)
    assert not parts_dir(out).exists()
    no_secret_anywhere(again, tmp_path)


@pytest.mark.parametrize("status, expect", [
    (401, "refused the API key (HTTP 401); check NDIF_API_KEY"),
    (413, "refused a request as too large (HTTP 413); lower --batch-size"),
])
def test_refused_key_and_too_large_request_are_one_line_not_retried_parts_kept(proxy, tmp_path, status, expect):
    out = tmp_path / "p.nc"
    proxy.fail(status, "POST", "/request", after=2)
    r = cli(SWEEP + ["--out", str(out)], NDIF_HOST=proxy.host)
    line = one_error_line(r)
    assert expect in line and f"2 finished parts are kept in {parts_dir(out)}" in line, line
    assert proxy.count("POST", "/request", injected=True) == 1  # not retried
    assert proxy.count("POST", "/request") == 3  # and not sent again after it
    assert not out.exists()
    no_secret_anywhere(r, tmp_path)


def test_a_poll_that_hangs_ends_at_the_job_deadline(proxy, tmp_path):
    """The status request itself hangs (the proxy holds it 60 s): nnsight's own read time-out
    is 600 s, so without a bound the client would wait that long past
    REASON_INTERP_REMOTE_TIMEOUT."""
    proxy.stall(60, "GET", "/response/")
    t0 = time.monotonic()
    r = cli(SWEEP + ["--template", "{expr} =", "--out", str(tmp_path / "p.nc")], NDIF_HOST=proxy.host,
            REASON_INTERP_REMOTE_TIMEOUT="3")
    took = time.monotonic() - t0
    line = one_error_line(r)
    assert "did not finish within 3 s" in line and "stopped answering" in line, line
    assert took < 45, took  # the CLI's start-up and a 3 s deadline, not the 60 s stall
    assert proxy.count("POST", "/request") == 1  # the job is not submitted a second time
    assert not (tmp_path / "p.nc").exists() and not parts_dir(tmp_path / "p.nc").exists()
    no_secret_anywhere(r, tmp_path)
