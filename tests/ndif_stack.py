"""A real NDIF server on 127.0.0.1, for the remote tests and the remote benchmark.

The stack is NDIF's own open-source server (PyPI ``ndif``) with its real dependencies:
redis (queue and pub/sub), moto (stands in for the S3 object store), a Ray head with
NDIF's controller, and the API (gunicorn). It runs from a Python 3.12 venv that
``scripts/install_ndif.sh`` builds outside the clone. Three things differ from a GPU
deployment, none of them an edit to installed files:

* Ray advertises one fake GPU, because NDIF's controller only places models on GPU nodes;
* ``ndif_server/cpu_actor.py`` loads models on the CPU (the stock actor needs CUDA);
* local model directories are deployed under the key the nnsight client mints for them
  (``ndif_server/deploy.py``), since ``ndif deploy`` would ask the Hugging Face Hub.

Every service binds 127.0.0.1 on a free port and starts in its own session; :meth:`stop`
signals exactly the processes of those sessions (Ray's workers included), TERM then KILL.

Manual use: ``python tests/ndif_stack.py [MODEL_DIR ...]`` starts the stack, prints
``NDIF_HOST``, and stops it on Ctrl-C.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_FILES = Path(__file__).resolve().parent / "ndif_server"
VENV = Path(os.environ.get("REASON_INTERP_NDIF_VENV", Path.home() / ".cache" / "reason-interp" / "ndif-venv"))
SERVICES = ("redis", "s3", "ray", "api")


def installed() -> bool:
    """Whether the server venv and redis are there (``scripts/install_ndif.sh`` makes them)."""
    return (VENV / "bin" / "ndif").exists() and shutil.which("redis-server") is not None


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1.

    Every socket stays bound until all are picked: ports picked one at a time can repeat
    (the kernel may hand a just-closed port out again), and then two services race for it.
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NDIFStack:
    """One loopback NDIF stack; ``start(models)``, then ``host``, then ``stop()``."""

    def __init__(self, root: str | Path | None = None):
        self._own_root = root is None  # a root we made is removed on stop; a given one keeps its logs
        self.root = Path(root or tempfile.mkdtemp(prefix="ndif-stack-"))
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Ray puts unix sockets under its temp dir: keep the path short.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ri-ray-", dir="/tmp"))
        names = ("redis", "s3", "ray", "ray_client", "dashboard", "agent", "api")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.sessions: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self._stopped = False
        atexit.register(self.stop)
        p = self.ports
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NDIF_", "RAY_", "VIRTUAL_ENV"))},
            "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(SERVER_FILES),  # Ray workers import cpu_actor from here
            "NDIF_HOME": str(self.root),
            "NDIF_REDIS_URL": f"redis://127.0.0.1:{p['redis']}",
            "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{p['s3']}",
            "NDIF_OBJECT_STORE_ACCESS_KEY": "testing", "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
            "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{p['ray_client']}",
            "NDIF_API_URL": self.host,
            "NDIF_MODEL_IMPORT_PATH": "cpu_actor.CPUModelActor",
            "NDIF_DEFAULT_DTYPE": "float32",
            "NDIF_DEFAULT_PADDING_BIAS": str(16 * 1024 * 1024),
            "NDIF_MINIMUM_DEPLOYMENT_TIME_SECONDS": "0",
            "NDIF_DEFAULT_EXECUTION_TIMEOUT_SECONDS": "120",
            "NDIF_INFLUX_ENABLED": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "GRPC_ENABLE_FORK_SUPPORT": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(self.ray_tmp), "NDIF_RAY_TEMP_DIR": str(self.ray_tmp),
            # Without it Ray rewrites 127.0.0.1 to the machine's outward address.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, models: list[str | Path] = ()) -> "NDIFStack":
        """Start every service, then deploy ``models`` (local directories); raises on failure."""
        t0 = time.perf_counter()
        p = self.ports
        self._spawn("redis", ["redis-server", "--port", str(p["redis"]), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])
        self._spawn("s3", ["moto_server", "-H", "127.0.0.1", "-p", str(p["s3"])])
        self._wait_port(p["redis"], 20, "redis", service="redis")
        self._wait_port(p["s3"], 60, "moto", service="s3")
        resources = json.dumps({"head": 10, "cuda_memory_bytes": 4 * 1024**3,
                                "cpu_memory_bytes": 8 * 1024**3})
        self._spawn("ray", ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                            f"--port={p['ray']}", f"--ray-client-server-port={p['ray_client']}",
                            "--num-cpus=4", "--num-gpus=1", f"--resources={resources}",
                            "--object-store-memory=200000000", "--include-dashboard=true",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={p['dashboard']}",
                            f"--dashboard-agent-listen-port={p['agent']}", "--disable-usage-stats",
                            f"--temp-dir={self.ray_tmp}"])
        for port, name in ((p["ray"], "ray gcs"), (p["dashboard"], "ray dashboard"), (p["ray_client"], "ray client")):
            self._wait_port(port, 120, name, service="ray")
        self.timings["ray_s"] = time.perf_counter() - t0
        self.start_api()
        self._run("controller", [str(VENV / "bin" / "python"), "-m",
                                 "ndif.services.ray.deployments.controller.controller"],
                  extra_env={"RAY_ADDRESS": f"127.0.0.1:{p['ray']}"}, timeout=180)
        self.wait_api()
        self.timings["services_s"] = time.perf_counter() - t0
        self._check_running()
        if models:
            self.deploy(models)
        self.timings["total_s"] = time.perf_counter() - t0
        return self

    def start_api(self) -> None:
        self._redis("del", "ray:connected")
        self._spawn("api", ["gunicorn", "--config", "python:ndif.services.api.gunicorn_conf",
                            "--bind", f"127.0.0.1:{self.ports['api']}", "--workers", "1",
                            "--access-logfile", "-",  # lets tests count requests on the server side
                            "ndif.services.api.app:app"], extra_env={"NDIF_SERVICE": "api"})

    def wait_api(self, timeout: float = 150) -> None:
        """Until the API listens and its dispatcher has reached Ray (before that it answers 503)."""
        self._wait_port(self.ports["api"], timeout, "NDIF API", service="api")
        deadline = time.monotonic() + timeout
        while not self._redis("get", "ray:connected"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"NDIF dispatcher never reached Ray; see {self.logs}/api.log")
            time.sleep(0.3)

    def requests_received(self) -> int:
        """Trace requests (``POST /request``) the API has logged, over all its restarts."""
        return (self.logs / "api.log").read_text(errors="replace").count('"POST /request')

    def deploy(self, models: list[str | Path]) -> None:
        t0 = time.perf_counter()
        self._run("deploy", [str(VENV / "bin" / "python"), str(SERVER_FILES / "deploy.py"),
                             *[str(Path(m).resolve()) for m in models]], timeout=240)
        self.timings["deploy_s"] = time.perf_counter() - t0

    def stop_service(self, name: str) -> None:
        """Stop one service (its whole session), e.g. the API to test a host that went away."""
        sid = self.sessions.pop(name, None)
        self._procs.pop(name, None)
        if sid is not None:
            _kill_sessions({sid})

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _kill_sessions(set(self.sessions.values()))
        self.sessions.clear()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def alive(self) -> list[int]:
        """PIDs still running in the sessions this stack started."""
        return _members(set(self.sessions.values()))

    # ------------------------------------------------------------------ helpers
    def _spawn(self, name: str, cmd: list[str], extra_env: dict | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**self.env, **(extra_env or {})}, start_new_session=True)
        log.close()
        self.sessions[name] = proc.pid  # == its session id (start_new_session)
        self._procs[name] = proc

    def _exited(self, name: str) -> str | None:
        """``None`` while service ``name`` runs; else why it stopped (exit code, its log's tail)."""
        proc = self._procs.get(name)
        if proc is None or proc.poll() is None:
            return None
        return f"{name} exited ({proc.returncode}): " + " | ".join(_tail(self.logs / f"{name}.log", 3))

    def _check_running(self) -> None:
        # A service that lost its port to another program exits, while the port still
        # answers (that program listens there): only its exit tells.
        dead = [why for name in self.sessions if (why := self._exited(name))]
        if dead:
            raise RuntimeError("NDIF test stack: " + "; ".join(dead) + f"; logs in {self.logs}")

    def _run(self, name: str, cmd: list[str], extra_env: dict | None = None, timeout: float = 120) -> None:
        try:
            with open(self.logs / f"{name}.log", "ab") as log:
                r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**self.env, **(extra_env or {})}, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"NDIF {name} did not finish within {timeout:g} s; its log: "
                               + (" | ".join(_tail(self.logs / f"{name}.log", 5)) or "(empty)")) from None
        if r.returncode != 0:
            raise RuntimeError(f"NDIF {name} failed (exit {r.returncode}): "
                               + " | ".join(_tail(self.logs / f"{name}.log", 5)))

    def diagnostics(self, lines: int = 15) -> str:
        """The tails of every service's log and of Ray's own logs (serve, raylet, agents).

        The stack's directories are removed on :meth:`stop`; a failed start prints this
        first, so that a CI log says why (CI run 37: the controller hung for 180 s).
        """
        ray_logs = self.ray_tmp / "session_latest" / "logs"
        files = sorted(self.logs.glob("*.log"))
        for pattern in ("serve/*.log", "raylet.out", "raylet.err", "dashboard_agent.log",
                        "gcs_server.err", "ray_process_exit.log"):
            files += sorted(ray_logs.glob(pattern))
        parts = []
        for f in files:
            tail = _tail(f, lines)
            if tail:
                parts.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _wait_port(self, port: int, timeout: float, name: str, service: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if service and (why := self._exited(service)):
                raise RuntimeError(f"NDIF test stack: {why}; logs in {self.logs}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:g} s; "
                                   f"logs in {self.logs}")
            time.sleep(0.2)

    def _redis(self, *args: str) -> str:
        r = subprocess.run(["redis-cli", "-p", str(self.ports["redis"]), *args],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip()


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return []


def _members(sessions: set[int]) -> list[int]:
    """Live (non-zombie) processes whose session id is one of ``sessions``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[3]) in sessions:
            out.append(int(d.name))
    return out


def _kill_sessions(sessions: set[int], grace_s: float = 3.0) -> None:
    # Ray's daemons ignore SIGTERM for a long while: TERM, a short grace, then KILL.
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in _members(sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _members(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
    for sid in sessions:  # reap our direct children
        try:
            os.waitpid(sid, os.WNOHANG)
        except ChildProcessError:
            pass


if __name__ == "__main__":
    stack = NDIFStack()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        stack.start(sys.argv[1:])
        print(f"NDIF_HOST={stack.host}  (up in {stack.timings['total_s']:.1f} s; logs in {stack.logs} "
              "until it stops); Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    finally:
        stack.stop()
