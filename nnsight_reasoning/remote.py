"""The connection to NDIF: host and key, one job per request, retries, time-outs, clear errors.

:mod:`.backend` builds every trace; this module only decides where a remote trace goes and
how the client waits for it. A job is submitted over HTTP and polled (nnsight's
``blocking=False`` mode), so the client has a deadline of its own and a dropped connection
never leaves it waiting forever.

Settings (environment):
``NDIF_HOST`` (else nnsight's ``CONFIG.API.HOST``), ``NDIF_API_KEY`` (else nnsight's
config), ``REASON_INTERP_REMOTE_RETRIES`` (transient failures retried per job, default 3),
``REASON_INTERP_REMOTE_BACKOFF`` (first back-off, seconds, doubled each retry, default 1),
``REASON_INTERP_REMOTE_TIMEOUT`` (seconds a job may take, default 600; also the longest any
one HTTP call waits for the server's reply, so a hung connection cannot outlast it).
The key is only ever put in a request header: it is scrubbed from every message.
"""
from __future__ import annotations

import contextvars
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import nnsight

from .errors import RunError, UsageError
from .nnsight_shim import counting_backend, name_local_model


@dataclass
class Traffic:
    """What the remote jobs of one run sent and received (reported in its result's attrs)."""

    jobs: int = 0             # requests that carry a trace (one per forward pass)
    polls: int = 0            # status checks while waiting
    bytes_sent: int = 0       # serialised traces
    bytes_received: int = 0   # result payloads (the saved values only)
    retries: int = 0

    def as_attrs(self) -> dict[str, int]:
        return {f"remote_{k}": v for k, v in vars(self).items()}


# The meters of the block in progress, innermost last (runner.Run.call opens one per run; a
# benchmark may open one around a whole experiment): every job is counted by all of them.
_COUNTING: contextvars.ContextVar[tuple[Traffic, ...]] = contextvars.ContextVar("reason_interp_traffic", default=())
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


@contextmanager
def counting(traffic: Traffic) -> Iterator[Traffic]:
    """Count the NDIF jobs started inside the block into ``traffic`` (and any enclosing meters)."""
    token = _COUNTING.set(_COUNTING.get() + (traffic,))
    try:
        yield traffic
    finally:
        _COUNTING.reset(token)


class _Meters:
    """The meters open now, counted as one (a job outside any block is counted nowhere)."""

    def __init__(self) -> None:
        self.meters = _COUNTING.get()

    def add(self, what: str, n: int) -> None:
        for t in self.meters:
            setattr(t, what, getattr(t, what) + n)


def _traffic() -> _Meters:
    return _Meters()


def is_ndif(remote: bool | str) -> bool:
    """Whether ``remote`` sends jobs to an NDIF server (True or a URL), not a local run."""
    return remote is not False and remote != "local"


def check_remote(remote: Any) -> None:
    """Refuse a ``remote`` value that is none of False, True, "local" or an http(s) URL."""
    if remote in (False, True, "local") or (isinstance(remote, str) and remote.startswith(("http://", "https://"))):
        return
    raise UsageError(f"remote must be False, True, 'local' or an NDIF URL such as http://host:port (got {remote!r})")


@dataclass(frozen=True)
class Settings:
    host: str
    key: str
    retries: int
    backoff_s: float
    timeout_s: float


def settings(remote: bool | str = True, *, need_key: bool = True) -> Settings:
    """Host, key and limits for ``remote`` (True, or a host URL overriding ``NDIF_HOST``)."""
    api = nnsight.CONFIG.API
    host = remote if isinstance(remote, str) else (os.environ.get("NDIF_HOST") or api.HOST or "")
    if not host.startswith(("http://", "https://")):
        raise UsageError(f"NDIF host must start with http:// or https:// (got {host!r}): give such a URL "
                         f"(NDIF_HOST, or --host)")
    key = os.environ.get("NDIF_API_KEY") or api.APIKEY or ""
    if need_key and not key:
        raise RunError("no NDIF API key: set NDIF_API_KEY (get one at https://login.ndif.us) "
                       "or run without --remote")
    try:
        return Settings(host.rstrip("/"), key, int(os.environ.get("REASON_INTERP_REMOTE_RETRIES", 3)),
                        float(os.environ.get("REASON_INTERP_REMOTE_BACKOFF", 1.0)),
                        float(os.environ.get("REASON_INTERP_REMOTE_TIMEOUT", 600)))
    except ValueError:
        raise UsageError("REASON_INTERP_REMOTE_RETRIES/_BACKOFF/_TIMEOUT must be numbers") from None


def model_key(model: Any) -> str:
    """nnsight's key for ``model``. A local directory is its own id (no Hub lookup), which is
    what a self-hosted NDIF serving that same path expects."""
    repo = str(getattr(model, "repo_id", "") or "")
    if repo and os.path.isdir(repo):
        name_local_model(repo)
    try:
        return model.to_model_key()
    except Exception as e:
        raise RunError(f"cannot name this model for NDIF ({_first_line(e)}); remote runs need a model "
                       "loaded by id or local path with nr.load_model") from None


def preflight(model: Any, remote: bool | str) -> None:
    """Before any work: a key is configured, the host is well formed, and (when the host
    answers) it serves ``model``. Nothing to check for local runs."""
    if not is_ndif(remote):
        return
    s = settings(remote)
    _check_served(s, model_key(model))


def run(model: Any, trace: Callable[[Any], None], remote: bool | str = True) -> dict[str, Any]:
    """Run ``trace(backend)`` (which records one ``model.trace(..., backend=backend)``) as one NDIF
    job and return its saved values by variable name. Transient failures are retried with
    exponential back-off; everything else becomes a one-line :class:`RunError`."""
    s = settings(remote)
    key = model_key(model)
    traffic = _traffic()
    try:
        attempt = 0
        while True:
            try:
                backend = _Backend(key, host=s.host, api_key=s.key, blocking=False, traffic=traffic)
                with _replies_within(s.timeout_s):
                    trace(backend)  # submits the job
                return _wait(backend, s, traffic)
            except Exception as e:
                _back_off(e, attempt, s, traffic)
                attempt += 1
    except RunError as e:
        raise RunError(_scrub(str(e), s.key)) from None
    except Exception as e:
        raise RunError(_scrub(_explain(e, s, key), s.key)) from None


def status(remote: bool | str = True) -> dict[str, Any]:
    """Which host is used, whether it answers (and how fast), which models it serves, whether
    a key is configured (never the key itself)."""
    s = settings(remote, need_key=False)
    key_from = ("NDIF_API_KEY" if os.environ.get("NDIF_API_KEY")
                else "nnsight config" if nnsight.CONFIG.API.APIKEY else "")
    out: dict[str, Any] = {"host": s.host, "api_key": f"set ({key_from})" if key_from else "missing",
                           "reachable": False, "latency_ms": None, "error": "", "models": []}
    t0 = time.perf_counter()
    try:
        body = _get_status(s.host)
    except Exception as e:
        out["error"] = _scrub(_first_line(e), s.key)
        return out
    out.update(reachable=True, latency_ms=round(1000 * (time.perf_counter() - t0), 1),
               models=served_models(body))
    return out


def served_models(status_json: dict) -> list[dict[str, str]]:
    """Deployments from NDIF's ``/status`` as rows of repo id, revision, state and model key."""
    rows = {}
    for name, value in (status_json.get("deployments") or {}).items():
        value = value if isinstance(value, dict) else {}
        key = value.get("model_key") or (name[name.find("nnsight."):] if "nnsight." in name else name)
        ident = _identity(key)
        repo = value.get("repo_id") or ident.get("repo_id") or name
        rows[key] = {"repo_id": str(repo), "revision": str(value.get("revision") or ident.get("revision") or "main"),
                     "state": str(value.get("application_state") or value.get("deployment_level") or "?"),
                     "model_key": key}
    return sorted(rows.values(), key=lambda r: (r["repo_id"], r["revision"]))


# --------------------------------------------------------------------------- internals
def _Backend(*args: Any, traffic: _Meters, **kwargs: Any) -> Any:
    return counting_backend(*args, count=traffic.add, **kwargs)


def _wait(backend: Any, s: Settings, traffic: _Meters) -> dict[str, Any]:
    """Poll a submitted job until it completes, fails or passes the deadline."""
    deadline = time.monotonic() + s.timeout_s
    delay, failures = 0.02, 0
    while True:
        try:
            with _replies_within(deadline - time.monotonic()):
                result = backend.poll()
        except Exception as e:  # the job is still on the server: poll it again, don't resubmit
            if not _transient(e):
                raise  # the job failed on the server: run() reports it
            if time.monotonic() > deadline:  # e.g. the poll itself hung until its read time-out
                raise RunError(f"NDIF job {backend.job_id} did not finish within {s.timeout_s:g} s (NDIF at "
                               f"{s.host} stopped answering: {_first_line(e)}); check NDIF_HOST (`reason-interp "
                               "remote status`), raise REASON_INTERP_REMOTE_TIMEOUT, or run without --remote") from None
            try:
                _back_off(e, failures, s, traffic)
            except Exception:
                # out of retries: a final error, so that run() does not submit the job a second time
                raise RunError(f"lost contact with NDIF at {s.host} while job {backend.job_id} ran "
                               f"({_first_line(e)}; {s.retries} retries); check NDIF_HOST "
                               "(`reason-interp remote status`) or run without --remote") from None
            failures += 1
            continue
        failures = 0  # the server answered: later trouble gets its own retries
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise RunError(f"NDIF job {backend.job_id} did not finish within {s.timeout_s:g} s "
                           f"(last status {getattr(backend.status, 'name', '?')}); raise "
                           "REASON_INTERP_REMOTE_TIMEOUT, use a smaller --batch-size, or run locally")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


@contextmanager
def _replies_within(seconds: float) -> Iterator[None]:
    """Make each HTTP call of nnsight's client inside the block wait at most ``seconds`` (at
    least 1) for the server's reply. Its own read time-out is 600 s whatever the job's deadline,
    so a connection that hangs would otherwise outlast REASON_INTERP_REMOTE_TIMEOUT; nnsight
    (pinned) reads the module constant at each call, and remote runs are single-threaded."""
    from nnsight.intervention.backends import remote as client

    saved = getattr(client, "_READ_TIMEOUT", 600.0)
    client._READ_TIMEOUT = min(saved, max(1.0, seconds))
    try:
        yield
    finally:
        client._READ_TIMEOUT = saved


def _check_served(s: Settings, key: str) -> None:
    """Fail fast, before any work, when the host answers but does not list the model.

    NDIF serves models per repo id *and* revision, so e.g. Pythia ``stepN`` revisions are
    usually absent. An unreadable ``/status`` is not an error here: the job itself decides.
    """
    try:
        models = served_models(_get_status(s.host))
    except Exception:
        models = None  # unreadable now: the job itself will tell
    ident = _identity(key)
    repo, rev = ident.get("repo_id", key), ident.get("revision") or "main"
    if (models is None
            or (models and not any("{" in m["model_key"] for m in models))  # a layout this client cannot read
            or any(m["model_key"].endswith(key) or (m["repo_id"], m["revision"]) == (repo, rev) for m in models)):
        return
    raise RunError(f"model {repo} (revision {rev}) is not deployed on {s.host}; NDIF serves selected "
                   "models and revisions (Pythia stepN checkpoints usually not) - see `reason-interp "
                   "remote status`, or run locally without --remote")


def _identity(model_key: str) -> dict:
    """The JSON half of a model key (``repo_id``, ``revision``, ``task``); {} if there is none."""
    try:
        return json.loads(model_key[model_key.index("{"):])
    except ValueError:  # no "{" or not JSON
        return {}


def _get_status(host: str) -> dict:
    import httpx

    r = httpx.get(f"{host}/status", timeout=httpx.Timeout(5.0, read=30.0))
    r.raise_for_status()
    return r.json()


def _back_off(e: Exception, attempt: int, s: Settings, traffic: _Meters) -> None:
    """Re-raise ``e`` unless it is transient and retries are left; else wait, doubling each time."""
    if not _transient(e) or attempt >= s.retries:
        raise e
    traffic.add("retries", 1)
    time.sleep(s.backoff_s * 2 ** attempt)


def _transient(e: BaseException) -> bool:
    """Connection problems and overload answers are worth retrying; job errors are not."""
    import httpx

    if isinstance(e, RunError):  # already final (its __context__ may be the transient error it ends)
        return False
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, httpx.HTTPStatusError):
            return err.response.status_code in _TRANSIENT_STATUS
        if isinstance(err, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
    return False


def _explain(e: BaseException, s: Settings, key: str) -> str:
    import httpx

    cause = e.__cause__ or e.__context__
    status = None
    for err in (e, cause):
        if isinstance(err, httpx.HTTPStatusError):
            status = err.response.status_code
    if status in (401, 403):
        return (f"NDIF at {s.host} refused the API key (HTTP {status}); check NDIF_API_KEY "
                "(keys: https://login.ndif.us)")
    if status == 413:
        return (f"NDIF at {s.host} refused a request as too large (HTTP 413); lower --batch-size "
                "(fewer prompts per request) or run without --remote")
    if status in _TRANSIENT_STATUS:
        return (f"NDIF at {s.host} is overloaded or failing (HTTP {status} after {s.retries} retries); "
                "try again later (`reason-interp remote status`) or run without --remote")
    if _transient(e):
        return (f"NDIF at {s.host} is unreachable or overloaded ({_first_line(cause or e)}; "
                f"{s.retries} retries); check NDIF_HOST (`reason-interp remote status`) or run without --remote")
    text = _first_line(e)
    if any(w in text.lower() for w in ("not deployed", "no deployment", "could not deploy")):
        return f"{text} - see `reason-interp remote status`, or run locally without --remote"
    return f"NDIF job failed: {text}"


def _first_line(e: BaseException) -> str:
    """The line that says what went wrong; for a server traceback that is its last line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:300]


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
