"""The NDIF client side that needs no server: settings, error wording, /status parsing.

Server behaviour is tested for real in test_remote.py; here only what the loopback server
cannot produce (it accepts any key) is built from real httpx objects.
"""
from __future__ import annotations

import socket
import time

import httpx
import pytest

import nnsight_reasoning as nr
from nnsight_reasoning import remote

SECRET = "sk-unit-test-SECRET"


def test_settings_read_host_and_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:1234/")
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    s = remote.settings()
    assert (s.host, s.key, s.retries) == ("http://127.0.0.1:1234", SECRET, 3)
    assert remote.settings("http://127.0.0.1:9").host == "http://127.0.0.1:9"  # per-call URL wins
    monkeypatch.setenv("NDIF_HOST", "127.0.0.1:1234")
    with pytest.raises(nr.UsageError, match="must start with http"):
        remote.settings()


def test_missing_key_is_a_run_error(monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(nr.RunError, match="no NDIF API key"):
        remote.settings()
    assert remote.settings(need_key=False).key == ""


def _status_error(code: int) -> Exception:
    req = httpx.Request("POST", "http://127.0.0.1:1/request")
    cause = httpx.HTTPStatusError(f"{code}", request=req, response=httpx.Response(code, request=req))
    try:
        raise RuntimeError(f"Failed to send request: key {SECRET} rejected") from cause
    except RuntimeError as e:
        return e


def test_rejected_key_is_explained_and_never_echoed(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    s = remote.settings("http://127.0.0.1:1")
    err = _status_error(401)
    assert not remote._transient(err)
    msg = remote._scrub(remote._explain(err, s, "k"), s.key)
    assert "refused the API key (HTTP 401)" in msg and SECRET not in msg
    assert remote._transient(_status_error(503)) and not remote._transient(_status_error(400))
    assert SECRET not in remote._scrub(f"job failed for {SECRET}", SECRET)


def test_overload_and_too_large_are_explained_and_only_overload_is_retried(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    s = remote.settings("http://127.0.0.1:1")
    assert not remote._transient(_status_error(413))
    assert "too large (HTTP 413); lower --batch-size" in remote._explain(_status_error(413), s, "k")
    msg = remote._explain(_status_error(503), s, "k")
    assert "is overloaded or failing (HTTP 503 after 3 retries); try again later" in msg
    try:  # a final error raised while handling a transient one is final all the same
        try:
            raise _status_error(503).__cause__  # the HTTP 503 itself, which _transient reads in a context
        except httpx.HTTPStatusError:
            raise nr.RunError("lost contact") from None
    except nr.RunError as e:
        assert isinstance(e.__context__, httpx.HTTPStatusError) and remote._transient(e.__context__)
        assert not remote._transient(e)


def test_a_hung_connection_ends_at_the_job_deadline(monkeypatch):
    """A server that takes the connection and never answers: nnsight's own read time-out is
    600 s; the poll is bounded by REASON_INTERP_REMOTE_TIMEOUT and the job is not resubmitted."""
    from nnsight.intervention.backends import remote as client

    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    monkeypatch.setenv("REASON_INTERP_REMOTE_TIMEOUT", "1.5")
    with socket.socket() as server:  # listens (the kernel completes the handshake), never replies
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        s = remote.settings(f"http://127.0.0.1:{server.getsockname()[1]}")
        backend = remote._Backend("k", host=s.host, api_key=s.key, blocking=False, traffic=remote._traffic())
        backend.job_id = "job-1"
        t0 = time.monotonic()
        with pytest.raises(nr.RunError, match=r"job job-1 did not finish within 1.5 s \(NDIF at .* stopped "
                                              r"answering: timed out\); check NDIF_HOST") as err:
            remote._wait(backend, s, remote._traffic())
    assert time.monotonic() - t0 < 10
    assert SECRET not in str(err.value)
    assert client._READ_TIMEOUT == 600.0  # nnsight's own setting is back


def test_served_models_reads_ndif_status_shapes():
    key = 'nnsight.modeling.transformers.TransformersModel:{"repo_id": "/m/main", "revision": null, "task": "text-generation"}'
    loopback = {"deployments": {f"aa243:ModelActor:{key}": {"application_state": "RUNNING"}}}
    hosted = {"deployments": {"x": {"model_key": key.replace("/m/main", "EleutherAI/pythia-70m"),
                                    "repo_id": "EleutherAI/pythia-70m", "revision": "main",
                                    "application_state": "RUNNING", "deployment_level": "HOT"}}}
    (a,) = remote.served_models(loopback)
    assert (a["repo_id"], a["revision"], a["state"], a["model_key"]) == ("/m/main", "main", "RUNNING", key)
    (b,) = remote.served_models(hosted)
    assert b["repo_id"] == "EleutherAI/pythia-70m" and b["state"] == "RUNNING"
    assert remote.served_models({}) == []
