"""Sweeps on a Dask cluster: each (model, revision) is one task that loads, computes and keeps
its part, on whichever worker is free.

The harness hands a sweep's units of work to a :class:`Cluster` instead of running them one
after another (``runner.over_revisions`` and ``runner.over_models``). A unit is the same code
the serial path runs (load one revision, run the experiment, write ``<revision>.nc`` into the
sweep's parts folder), so the Dataset a cluster returns is the serial run's, value for value,
and the two share their parts: a sweep started on a cluster resumes serially and the other way
round.

- ``workers=N`` starts a ``distributed.LocalCluster`` of N single-threaded worker processes on
  this machine (closed with the run); ``scheduler="tcp://host:8786"`` (or a
  ``distributed.Client``) uses a running cluster.
- Each worker runs one task at a time when started with ``--nthreads 1`` (a LocalCluster's
  are): one model in memory per worker. Workers that advertise a ``GPU`` resource
  (``dask-worker --resources GPU=1``) get one task at a time each whatever their threads.
- A worker that dies mid-task loses only that task: the scheduler reruns it elsewhere, and it
  resumes from the passes its first try kept. A scheduler lost mid-sweep ends the run with
  the finished parts kept; the same command resumes from them.
- Workers write parts into the sweep's folder themselves, so on several machines that folder
  (``--out``'s) must be on a filesystem they share; relative paths are made absolute here.
"""
from __future__ import annotations

import logging
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from .errors import RunError, UsageError, checked_int
from .progress import counter, silenced

T = TypeVar("T")


class Stopped(Exception):
    """A run whose tasks were cancelled by :meth:`Cluster.stop` (another unit of the sweep failed)."""


GPU = "GPU"  # the worker resource a GPU-owning worker advertises (dask-worker --resources GPU=1)


class Cluster:
    """A Dask client that the harness runs units of work on (see the module doc).

    Parameters
    ----------
    client : a connected ``distributed.Client``.
    owned : a LocalCluster started for this run, closed by :meth:`close` (None for a cluster
        someone else runs).
    """

    def __init__(self, client: Any, owned: Any = None):
        self.client = client
        self.owned = owned
        self.address = str(getattr(client.scheduler, "address", "") or client.scheduler_info().get("address", ""))
        self.done_by: dict[str, int] = {}  # tasks finished per worker (shown on the progress bar)
        self._lock = threading.Lock()
        self._pending: set = set()  # futures submitted and not yet finished, of every run() call
        self._stopped = threading.Event()

    def resources(self) -> dict[str, float] | None:
        """The resources a task asks for: one GPU where workers advertise GPUs (so a GPU worker
        holds one model at a time), nothing otherwise. Decided on the workers connected when a
        sweep starts (at least one is waited for)."""
        self.client.wait_for_workers(1)
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
        return {GPU: 1} if any(GPU in (w.get("resources") or {}) for w in workers) else None

    def run(self, units: dict[str, Callable[[], T]], description: str, *, progress: bool = True) -> dict[str, T]:
        """``{label: unit()}`` for every unit, each computed as one task on the cluster.

        The bar counts tasks done and, per worker, how many each finished. A unit's own error
        (bad input found late, a full disk, an NDIF failure) is raised here as the serial path
        raises it; a unit that cannot be pickled is a :class:`UsageError`; a unit that killed
        its workers again and again, or a lost scheduler, ends the run with a
        :class:`RunError` (the caller adds where the finished parts are).
        """
        from distributed import as_completed

        if not units:
            return {}
        try:
            resources = self.resources()
        except Exception as e:  # the scheduler went away before the sweep started
            raise self._lost(e) from None
        run_id = uuid.uuid4().hex[:8]
        futures: dict[Any, str] = {}
        results: dict[str, T] = {}
        try:
            for label, fn in units.items():
                futures[self._submit(fn, label, f"{description}-{label}-{run_id}", resources)] = label
            with counter(description, len(futures), enabled=progress) as step:
                for fut in as_completed(futures, raise_errors=False):
                    worker, value = self._result(fut, futures[fut])
                    results[futures[fut]] = value
                    with self._lock:
                        self._pending.discard(fut)
                        self.done_by[worker] = self.done_by.get(worker, 0) + 1
                    step(1, f"(tasks done per worker: {self._tally()})")
        finally:
            left = [f for f in futures if not f.done()]
            if left:  # a unit failed: the others stop being waited for (their parts stay)
                self._cancel(left)
        return results

    def stop(self) -> None:
        """Cancel every task not yet finished, of every :meth:`run` in progress (from other
        threads: a sweep over models whose first failure ends it); those runs raise
        :class:`Stopped`."""
        self._stopped.set()
        with self._lock:
            left = list(self._pending)
        self._cancel(left)

    def _submit(self, fn: Callable[[], Any], label: str, key: str, resources: dict | None) -> Any:
        if self._stopped.is_set():
            raise Stopped()
        try:
            fut = self.client.submit(_task, fn, label, key=key, pure=False, resources=resources)
        except Exception as e:
            if _is_comm(e):
                raise self._lost(e) from None
            raise UsageError(f"the work for {label} cannot be sent to the workers ({type(e).__name__}: "
                             f"{_first_line(e)}): give data and options that pickle") from None
        with self._lock:
            self._pending.add(fut)
        return fut

    def _cancel(self, futures: list) -> None:
        try:
            self.client.cancel(futures)
        except Exception:  # a scheduler already gone cancels nothing
            pass

    def _result(self, fut: Any, label: str) -> tuple[str, Any]:
        from distributed import KilledWorker

        try:
            return fut.result()
        except KilledWorker as e:
            raise RunError(f"the task for {label} killed every worker that ran it (out of memory?): "
                           f"{_first_line(e)}") from None
        except Exception as e:
            if fut.status == "error":  # the unit's own exception: raised as the serial path raises it
                raise
            if self._stopped.is_set():
                raise Stopped() from None
            raise self._lost(e) from None

    def _lost(self, e: BaseException) -> RunError:
        return RunError(f"lost the Dask scheduler at {self.address or '?'} ({type(e).__name__}: {_first_line(e)})")

    def _tally(self) -> str:
        with self._lock:
            return " · ".join(f"{_short(w)}: {n}" for w, n in sorted(self.done_by.items()))

    def close(self) -> None:
        """Disconnect; a LocalCluster started for this run is shut down (its workers with it)."""
        try:
            self.client.close()
        finally:
            if self.owned is not None:
                self.owned.close()


@contextmanager
def connect(scheduler: Any = None, workers: int | None = None) -> Iterator[Cluster | None]:
    """The cluster a run uses: None (serial) without ``scheduler`` or ``workers``; a running
    cluster at ``scheduler`` (an address, a ``distributed.Client`` or a :class:`Cluster`); or a
    LocalCluster of ``workers`` single-threaded processes started here and shut down on exit."""
    if scheduler is None and workers is None:
        yield None
        return
    if scheduler is not None and workers is not None:
        raise UsageError("give a scheduler (an existing cluster) or workers (a local one), not both")
    if isinstance(scheduler, Cluster):
        yield scheduler
        return
    try:
        import distributed  # its loggers exist from here on, with the levels its config gives them
    except ImportError:
        raise UsageError("a Dask cluster needs the distributed package: pip install 'nnsight-reasoning[cluster]'") \
            from None
    with _quiet_logs():
        yield from _connected(distributed, scheduler, workers)  # type: ignore[misc]


def _connected(distributed: Any, scheduler: Any, workers: int | None) -> Iterator[Cluster]:
    """:func:`connect`'s body once a cluster is wanted."""
    if workers is not None:
        workers = checked_int("workers", workers, 1)
        # worker processes killed mid-task leave their semaphores to Python's resource tracker,
        # whose clean-up notice at exit would follow the run's one-line error (the tracker,
        # started with the first worker, takes this interpreter's -W options)
        if "ignore:resource_tracker:UserWarning" not in sys.warnoptions:
            sys.warnoptions.append("ignore:resource_tracker:UserWarning")
        # one thread per worker: one task (one model) at a time in each worker process; no
        # dashboard (it needs bokeh, and a port)
        local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.CRITICAL)
        cluster = Cluster(distributed.Client(local), owned=local)
    elif isinstance(scheduler, distributed.Client):
        cluster = Cluster(scheduler)
        cluster.close = lambda: None  # type: ignore[method-assign]  # the caller's client: theirs to close
    elif isinstance(scheduler, str):
        if ":" not in scheduler:
            raise UsageError(f"scheduler takes an address such as tcp://127.0.0.1:8786 or 127.0.0.1:8786 "
                             f"(got {scheduler!r})")
        try:
            _refuses(scheduler)
            cluster = Cluster(distributed.Client(scheduler, timeout="5s"))
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError(f"no Dask scheduler answers at {scheduler} ({_first_line(e)}): start one "
                             "(dask scheduler) or check the address") from None
    else:
        raise UsageError(f"scheduler must be an address (tcp://host:8786) or a distributed.Client "
                         f"(got {type(scheduler).__name__})")
    try:
        yield cluster
    finally:
        try:
            cluster.close()
        except Exception:  # a scheduler already gone: nothing left to close
            pass


def _refuses(address: str) -> None:
    """Raise ``ConnectionRefusedError`` for a TCP scheduler address where nothing listens: the
    Dask client would retry it for its whole timeout (5 s) before saying so. Other schemes, and
    addresses that answer, time out or do not resolve, are left to the client's own error."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme != "tcp":
            return
        host, port = parse_host_port(location)
    except ValueError:
        return  # the client says what is wrong with it
    try:
        # a refusal is immediate; a short timeout keeps a slow host from waiting twice (here, then the client)
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        raise
    except OSError:  # unreachable, unknown host or slow: the client's own error says which
        pass


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask's own log lines off in this process while it runs: what goes wrong reaches the user
    as one error line (a lost scheduler, a task that killed its workers), not as log records."""
    logs = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "distributed"]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


EVENTS = "reason-interp"  # the scheduler's event topic of finished units: client.get_events(EVENTS)


def _task(fn: Callable[[], T], label: str) -> tuple[str, T]:
    """One unit of work on a worker: (the worker's name, ``fn()``), without progress bars (a
    worker's output goes to its log, not the user's terminal). Each finished unit is an event
    ``{"unit", "name", "worker", "start", "end"}`` (the worker's name and address; Unix seconds)
    on the scheduler (topic :data:`EVENTS`): where and when each revision ran."""
    import time

    from distributed import get_worker
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars: a LocalCluster's go to the user's terminal
    worker = get_worker()
    start = time.time()
    with silenced():
        value = fn()
    # (the scheduler adds "worker", the worker's address)
    worker.log_event(EVENTS, {"unit": label, "name": str(worker.name), "start": start, "end": time.time()})
    return str(worker.name), value


def _is_comm(e: BaseException) -> bool:
    """Whether ``e`` is a failure to talk to the scheduler (not an error of the work itself)."""
    from distributed.comm.core import CommClosedError

    return isinstance(e, (CommClosedError, ConnectionError)) or type(e).__name__ in (
        "CancelledError", "FutureCancelledError")


def _short(worker: str) -> str:
    """A worker's name as the bar shows it (an address without its scheme)."""
    return worker.split("://")[-1]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
