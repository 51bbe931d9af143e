"""Finished work kept on disk, so an interrupted run resumes instead of starting over.

A :class:`Parts` directory sits beside a results file (``results/x.nc.parts/``). It holds
``manifest.json`` (the run's configuration) and one ``.npz`` per finished unit of work (a
forward pass, a chunk of prompts), each written to a temp file, flushed and renamed, so a
kill at any moment leaves only whole parts. A rerun with the same configuration reads the
finished parts back and computes only the rest; a directory left by a different
configuration is refused, never mixed in.

Parts nest: a checkpoint sweep keeps each finished revision as ``<revision>.nc`` and the
finished passes of the revision in progress in ``<revision>/``, a Parts folder of its own.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import RunError, UsageError
from .io import temp_beside

MANIFEST = "manifest.json"

# While a cluster worker runs a unit of a sweep: the sweep's folder, under which the unit may
# write only while it exists. A failed run removes the folder it made; a task of that run still
# running on a worker must not make it again (the corrected command would find its manifest).
_WITHIN: "contextvars.ContextVar[Path | None]" = contextvars.ContextVar("reason_interp_parts_within", default=None)


@contextmanager
def within(directory: Path | None) -> Iterator[None]:
    """Parts made inside are written only while ``directory`` exists (None: no condition)."""
    token = _WITHIN.set(directory)
    try:
        yield
    finally:
        _WITHIN.reset(token)


def parts_dir(results_file: str | Path) -> Path:
    """Where the parts of ``results_file`` live: ``<results_file>.parts``."""
    p = Path(results_file)
    return p.with_name(p.name + ".parts")


def digest(*items: Any) -> str:
    """A short stable hash of items: JSON-able values, tensors and arrays (by dtype, shape and
    bytes), dataclasses (by fields) and containers of them (a run's data, a part's inputs)."""
    h = hashlib.sha256()
    _feed(h, items)
    return h.hexdigest()[:16]


def _feed(h: Any, x: Any) -> None:
    import dataclasses

    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
        h.update(x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    elif isinstance(x, np.ndarray):
        h.update(f"A{x.dtype}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes() if x.dtype != object else json.dumps(x.tolist(), default=str).encode())
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(f"D{type(x).__qualname__}(".encode())
        for f in dataclasses.fields(x):
            h.update(f.name.encode())
            _feed(h, getattr(x, f.name))
        h.update(b")")
    elif isinstance(x, (list, tuple)):
        h.update(f"L{len(x)}[".encode())
        for v in x:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(x, dict):
        h.update(f"M{len(x)}{{".encode())
        for k in sorted(x, key=str):
            h.update(json.dumps(str(k)).encode())
            _feed(h, x[k])
        h.update(b"}")
    elif x is None or isinstance(x, (bool, int, float, str, np.generic, Path)):
        h.update(json.dumps(x.item() if isinstance(x, np.generic) else str(x) if isinstance(x, Path) else x).encode())
    elif callable(x):  # a function option: by its qualified name, never a repr with an address
        from ..runner import named

        h.update(f"F{named(x)}".encode())
    else:  # a repr may hold memory addresses or be cut short: two inputs could share a digest
        raise TypeError(f"cannot digest a {type(x).__name__}; give plain values, tensors, arrays or dataclasses")


def _flatten(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON description of ``obj`` whose tensors and arrays are stored in ``arrays``."""
    import dataclasses

    import torch

    if isinstance(obj, torch.Tensor):
        key = f"a{len(arrays)}"
        arrays[key] = obj.detach().cpu().numpy()
        return {"tensor": key}
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"array": key}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"dataclass": f"{type(obj).__module__}:{type(obj).__qualname__}",
                "fields": {f.name: _flatten(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple": [_flatten(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot keep a part of type {type(obj).__name__}")


def _unflatten(spec: Any, arrays: dict[str, np.ndarray]) -> Any:
    import importlib

    import torch

    if "tensor" in spec:
        return torch.from_numpy(arrays[spec["tensor"]])
    if "array" in spec:
        return arrays[spec["array"]]
    if "dataclass" in spec:
        module, name = spec["dataclass"].split(":")
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        return cls(**{k: _unflatten(v, arrays) for k, v in spec["fields"].items()})
    if "list" in spec:
        return [_unflatten(v, arrays) for v in spec["list"]]
    if "tuple" in spec:
        return tuple(_unflatten(v, arrays) for v in spec["tuple"])
    return spec["value"]


class Parts:
    """The finished parts of one run; see the module docstring.

    Parameters
    ----------
    directory : where parts are kept (created with the first part); None keeps nothing, so
        experiments use one code path with or without resuming.
    config : JSON-able description of everything that determines the numbers (model, revision,
        task parameters, prompts, sites, batching). Parts written under another config are refused.
    """

    def __init__(self, directory: str | Path | None, config: dict[str, Any]):
        self.dir = Path(directory) if directory is not None else None
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self.resumed = 0  # parts read back instead of computed
        self.created: Path | None = None  # the outermost folder this object made (only that it may remove)
        self.written: list[Path] = []  # parts written by this object
        self.opened = False  # made by open(): written by other processes (a cluster's workers)
        if self.dir is None:
            return
        manifest = self.dir / MANIFEST
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())["config"]
            except (ValueError, KeyError):
                raise UsageError(f"{manifest} is unreadable; delete {self.dir} or pass --restart") from None
            if old != self.config:
                diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                raise UsageError(f"{self.dir} holds parts of a different run (differs in: {', '.join(diff)}); "
                                 f"use another --out, delete it, or pass --restart to discard it")

    def open(self) -> None:
        """Make the folder and its manifest now, where the parts are written by other processes
        (cluster workers, under :func:`within` it): it is then this object's to remove if the
        run fails before any part."""
        if self.dir is not None:
            self._ensure()
            self.opened = True

    def _ensure(self) -> None:
        # Created with the first finished part: a run that fails before any work leaves nothing.
        required = _WITHIN.get()
        if required is not None and not required.is_dir():
            raise RunError(f"{required} was removed: the run this work belongs to has ended")
        if not (self.dir / MANIFEST).is_file():
            if self.created is None and not self.dir.exists():
                root = self.dir
                while not root.parent.exists():
                    root = root.parent
                self.created = root
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.dir / MANIFEST, json.dumps({"config": self.config}, indent=1, sort_keys=True).encode())

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def fetch(self, key: str, check: str, compute: Callable[[], Any]) -> Any:
        """The object kept under ``key`` if that part is finished (and was computed from inputs
        whose :func:`digest` is ``check``), else ``compute()``, kept as the part. Objects are
        tensors, arrays, tuples, lists and dataclasses of them, kept exactly (dtypes too)."""
        got = self.get(key, check)
        if got is not None:
            self.resumed += 1
            return _unflatten(json.loads(str(got.pop("_tree"))), got)
        out = compute()
        if self.dir is not None:
            arrays: dict[str, np.ndarray] = {}
            spec = _flatten(out, arrays)
            self.put(key, check, _tree=np.array(json.dumps(spec)), **arrays)
        return out

    @contextmanager
    def resume_hint_on_failure(self) -> Iterator[None]:
        """Append where the finished parts are to a :class:`RunError` raised inside. Bad input
        (a :class:`UsageError`, found however late) keeps none of this call's parts, so the
        corrected command is not refused; a failure before any part finished leaves no folder
        behind. Only a folder this object made is ever removed."""
        try:
            yield
        except BaseException as e:
            if isinstance(e, UsageError):
                for path in self.written:
                    path.unlink(missing_ok=True)
            if self.count():
                if isinstance(e, RunError):
                    raise RunError(f"{e}; {self.resume_hint()}") from None
                if disk_fault(e):
                    raise RunError(disk_fault_message(e, self.dir, self.resume_hint())) from None
            elif self.dir is not None and self.dir.is_dir():
                import shutil

                if self.created is not None:
                    shutil.rmtree(self.created, ignore_errors=True)
                else:
                    (self.dir / MANIFEST).unlink(missing_ok=True)
            raise

    def get(self, key: str, check: str = "") -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None if that part is not finished.

        ``check`` (a :func:`digest` of the part's inputs) must match what was stored with it.
        """
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception:
            raise UsageError(f"part {path} is corrupt; delete it (it will be recomputed) or pass --restart") from None
        if check and str(arrays.pop("_check", "")) != check:
            raise UsageError(f"part {path} was computed from other inputs; delete {self.dir} or pass --restart")
        arrays.pop("_check", None)
        return arrays

    def put(self, key: str, check: str = "", **arrays: np.ndarray) -> None:
        """Store a finished part durably (temp file, fsync, rename)."""
        import io

        if self.dir is None:
            return
        self._ensure()
        buf = io.BytesIO()
        np.savez(buf, _check=np.array(check), **arrays)
        _atomic_write(self._path(key), buf.getvalue())
        self.written.append(self._path(key))
        _maybe_die(self.dir)

    def subdir(self, key: str) -> Path:
        """A folder for the parts of one unit that has parts of its own (a revision of a sweep)."""
        self._ensure()
        return self.dir / _safe(key)

    def get_dataset(self, key: str):
        """The finished Dataset stored under ``key``, or None."""
        from ..results.io import load_result

        if self.dir is None or not (self.dir / f"{_safe(key)}.nc").is_file():
            return None
        try:
            return load_result(self.dir / f"{_safe(key)}.nc")
        except UsageError:
            raise UsageError(f"part {self.dir / _safe(key)}.nc is corrupt; delete it (it will be recomputed) "
                             f"or pass --restart") from None

    def put_dataset(self, key: str, ds):
        """Store a finished Dataset durably and drop the unit's own parts; returns it as read back
        (so a fresh run and a resumed one hand on identical objects), or None without a folder."""
        import shutil

        from ..results.io import save_result

        if self.dir is None:
            return None
        self._ensure()
        save_result(ds, self.dir / f"{_safe(key)}.nc")
        shutil.rmtree(self.dir / _safe(key), ignore_errors=True)
        return self.get_dataset(key)

    def discard(self, keys: Sequence[str]) -> None:
        """Remove the finished Datasets stored under ``keys`` (a unit's unfinished passes are
        its own store's to remove)."""
        if self.dir is not None:
            for key in keys:
                (self.dir / f"{_safe(key)}.nc").unlink(missing_ok=True)

    def count(self) -> int:
        """Finished parts (at any depth)."""
        if self.dir is None or not self.dir.is_dir():
            return 0
        return sum(1 for p in self.dir.rglob("*") if p.suffix in (".npz", ".nc"))

    def resume_hint(self) -> str:
        n = self.count()
        return f"{n} finished parts are kept in {self.dir}; the same command resumes from them"


def lock_path(results_file: str | Path) -> Path:
    """The lock of ``results_file``'s writer: ``<results_file>.lock``."""
    p = Path(results_file)
    return p.with_name(p.name + ".lock")


@contextmanager
def writer_lock(results_file: str | Path) -> Iterator[None]:
    """Hold ``<results_file>.lock`` while a run computes and writes ``results_file``, so that a
    second run on the same output is refused instead of interleaving its parts with the
    first's. The lock is the kernel's (``flock``), released when its process ends however it
    ends, so a killed writer never blocks the next run; the file names the writer (pid, host)
    for the refusal's message. Directories made for the lock are removed with it when nothing
    else was written there."""
    import fcntl
    import socket
    import time

    lock = lock_path(results_file)
    made = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        while fd is None:
            # read-only: flock needs no more, and a file held open for writing would keep its
            # filesystem from being remounted read-only under a run
            fd = os.open(lock, os.O_CREAT | os.O_RDONLY, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(lock)
                os.close(fd)
                fd = None
                who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
                raise UsageError(f"another run ({who}) is writing {results_file}: wait for it to finish") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed the file between our open and our lock: lock the new one
                os.close(fd)
                fd = None
        lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        if fd is not None:
            try:
                lock.unlink(missing_ok=True)  # while still locked: a waiting run then locks a new file
            except OSError:  # a disk turned read-only: the file stays, unlocked, and is reused
                pass
            os.close(fd)
        for d in made:  # innermost first
            try:
                d.rmdir()
            except OSError:  # not empty: the results (or someone else's files) are there
                break


def _holder(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def disk_fault(e: BaseException) -> bool:
    """Whether ``e`` is a failure to write to disk (full, read-only, no permission, quota, I/O),
    which a rerun fixes once the disk can be written; HDF5 reports a full disk as EACCES."""
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                                                  errno.EDQUOT, errno.EIO)


def disk_fault_message(e: OSError, where: Any, kept: str) -> str:
    """The one line a disk fault ends a run with: what could not be written, and what is kept."""
    return (f"cannot write {e.filename or where} ({e.strerror}: is the disk full or read-only?); {kept} once it can "
            "be written")


def _maybe_die(directory: Path) -> None:
    """Fault injection for the kill-and-resume tests: with ``REASON_INTERP_TEST_KILL_AFTER=N``
    the process SIGKILLs itself once N parts are on disk (a real kill at a known point,
    instead of racing a fast run from outside)."""
    limit = os.environ.get("REASON_INTERP_TEST_KILL_AFTER")
    if limit and sum(1 for p in directory.rglob("*.npz")) >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _safe(key: str) -> str:
    """A file name for a key such as a revision (branch names may hold "/")."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
