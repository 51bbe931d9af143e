"""A fault-injecting HTTP reverse proxy in front of the real loopback NDIF API.

In the non-blocking mode that ``nnsight_reasoning.remote`` uses, nnsight's client makes
plain HTTP calls only (no websocket, no socket.io): ``POST /request`` (a multipart form:
the JSON envelope and the serialised trace, the key in the ``ndif-api-key`` header), then
``GET /response/<job id>`` until the job is COMPLETED or ERROR. The toolkit itself adds
``GET /status`` (the preflight and ``reason-interp remote status``). A result too large to
come back on the response is a presigned URL on the object store, fetched from there
directly. So a proxy that forwards every request (method, path, headers, body) and
returns the API's answer is all a job needs to run through it.

Faults are rules on a method and a path prefix: answer ``status`` (with a FastAPI-like
``{"detail": ...}`` body) or sleep ``stall_s`` seconds before forwarding, to the matching
requests after the first ``after`` (which pass), ``times`` of them (None: always)::

    with FaultProxy(ndif.host) as proxy:
        proxy.fail(503, "POST", "/request", times=2)
        ... NDIF_HOST=proxy.host ...

Nothing here logs headers or bodies: the API key passes through and is kept nowhere.
"""
from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Per connection, not end to end (RFC 9110 7.6.1): never forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "proxy-connection"}


@dataclass
class Fault:
    method: str
    prefix: str
    status: int | None = None     # answer this instead of forwarding
    stall_s: float = 0.0          # else sleep this long, then forward
    after: int = 0                # matching requests that pass untouched first
    times: int | None = None      # faults to inject, then pass again; None: always
    matched: int = 0
    injected: int = 0

    def take(self, method: str, path: str) -> bool:
        """Whether this request gets the fault (counts it)."""
        if method != self.method or not path.startswith(self.prefix):
            return False
        self.matched += 1
        if self.matched <= self.after or (self.times is not None and self.injected >= self.times):
            return False
        self.injected += 1
        return True


@dataclass
class Seen:
    method: str
    path: str
    status: int | str   # the answer: a status, "stalled" (then forwarded) or "upstream error: ..."
    injected: bool = False
    extra: dict = field(default_factory=dict)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 (a free port) to ``upstream``; :attr:`host` is its URL."""

    def __init__(self, upstream: str, timeout_s: float = 300):
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.timeout_s = timeout_s
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True  # a stalled request never holds up stop()
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # ------------------------------------------------------------------ faults
    def fail(self, status: int, method: str = "POST", path: str = "/request", *, times: int | None = None,
             after: int = 0) -> Fault:
        """Answer ``status`` to matching requests (after ``after`` pass), ``times`` of them or always."""
        return self._add(Fault(method, path, status=status, after=after, times=times))

    def stall(self, seconds: float, method: str = "GET", path: str = "/response", *, times: int | None = None,
              after: int = 0) -> Fault:
        """Sleep ``seconds`` before forwarding matching requests (after ``after`` pass)."""
        return self._add(Fault(method, path, stall_s=seconds, after=after, times=times))

    def clear(self) -> None:
        """Forward everything again."""
        with self._lock:
            self.faults.clear()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            return next((f for f in self.faults if f.take(method, path)), None)

    def count(self, method: str, prefix: str, injected: bool | None = None) -> int:
        """Requests seen with this method and path prefix (only faulted/forwarded ones if given)."""
        with self._lock:
            return sum(1 for s in self.seen if s.method == method and s.path.startswith(prefix)
                       and (injected is None or s.injected == injected))

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes stalled handlers
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet; requests are in proxy.seen
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.close_connection = True

        def _handle(self) -> None:
            body = self._body()
            fault = proxy._fault_for(self.command, self.path)
            if fault is not None and fault.status is not None:
                detail = f"{HTTPStatus(fault.status).phrase} (injected by the test's fault proxy)"
                proxy._record(Seen(self.command, self.path, fault.status, injected=True))
                self._answer(fault.status, [("Content-Type", "application/json")],
                             json.dumps({"detail": detail}).encode())
                return
            if fault is not None:
                proxy._record(Seen(self.command, self.path, "stalled", injected=True))
                if proxy._stop.wait(fault.stall_s):
                    return  # the proxy stopped during the stall
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.timeout_s)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except OSError as e:  # the API is down: what a client behind a gateway sees
                proxy._record(Seen(self.command, self.path, f"upstream error: {type(e).__name__}"))
                self._answer(502, [("Content-Type", "application/json")],
                             json.dumps({"detail": f"Bad Gateway ({type(e).__name__})"}).encode())
                return
            finally:
                conn.close()
            if fault is None:
                proxy._record(Seen(self.command, self.path, r.status, extra={"bytes": len(data)}))
            self._answer(r.status, r.getheaders(), data)

        def _safe_handle(self) -> None:
            try:
                self._handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its read time-out during a stall)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _safe_handle

    return Handler
