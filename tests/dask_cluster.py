"""A real Dask cluster on 127.0.0.1 for the cluster tests: ``dask scheduler`` and ``dask worker``
processes, each in a session of its own, so that a test can SIGKILL one of them as a machine
failure would, and stop all of them (with their children) when it ends.

Manual use: ``python tests/dask_cluster.py`` starts a scheduler and two workers, prints the
scheduler's address, and stops them on Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.ndif_stack import free_port

DASK = [sys.executable, "-m", "dask"]


class DaskCluster:
    """A scheduler on a free port of 127.0.0.1 and the workers a test starts (logs in ``logs``)."""

    def __init__(self, logs: Path, port: int | None = None):
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen([*DASK, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=self.logs)

    def start_scheduler(self) -> "DaskCluster":
        self.scheduler = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                                   "--no-dashboard"])
        return self

    def start_worker(self, name: str, env: dict[str, str] | None = None, extra: list[str] = ()) -> subprocess.Popen:
        """A worker without a nanny (the process that runs the tasks is the one a kill ends), one
        thread unless ``extra`` says otherwise, named ``name``; ``env`` is added to its environment."""
        # started in the logs folder: workers write parts by the absolute paths they are given
        threads = [] if "--nthreads" in extra else ["--nthreads", "1"]
        self.workers[name] = self._spawn(name, ["worker", self.address, "--name", name, *threads, *extra,
                                                "--no-nanny", "--no-dashboard", "--death-timeout", "60"], env)
        return self.workers[name]

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        """Until ``n`` workers are connected to the scheduler; fails at once if a started worker exited."""
        from distributed import Client

        deadline = time.time() + timeout
        with Client(self.address, timeout="30s") as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
                dead = [k for k, p in self.workers.items() if p.poll() is not None]
                if dead or time.time() > deadline:
                    raise RuntimeError(f"{n} workers did not connect (exited: {dead}): {self.log_tail()}")
                time.sleep(0.2)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process of the cluster (and its session). A killed worker leaves ``workers``,
        so that ``wait_for_workers`` counts only workers that died on their own as dead."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        self.workers = {k: p for k, p in self.workers.items() if p is not proc}

    def stop(self) -> None:
        for proc in [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]:
            if proc.poll() is None:
                self.kill(proc)

    def log_tail(self, n: int = 2000) -> str:
        return " | ".join(f"{p.name}: {p.read_text(errors='replace')[-n:]}" for p in sorted(self.logs.glob("*.log")))


if __name__ == "__main__":
    import tempfile

    cluster = DaskCluster(Path(tempfile.mkdtemp(prefix="dask-"))).start_scheduler()
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_for_workers(2)
    print(cluster.address, flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
