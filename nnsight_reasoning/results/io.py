"""Result files: provenance, schema validation and atomic netCDF I/O.

A result is an ``xarray.Dataset`` (see SPEC): one variable per site with dims
``(prompt, layer, position[, head])`` (a checkpoint sweep adds ``checkpoint`` first), the
per-prompt ``clean_p_base`` / ``clean_p_source``, and provenance in ``attrs``. Files are
plain netCDF4: ``xarray.open_dataset`` reads them; nothing is pickled.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import UsageError
from ..sites import SITES, var_name

REQUIRED_ATTRS = ("task", "task_params", "model", "model_path", "revision", "method", "metric", "seed",
                  "remote", "version_nnsight_reasoning", "version_nnsight", "version_torch",
                  "version_transformers", "created")
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "authorization", "credential")
# "token", "hf_token", "access_token": a credential; counts of tokens ("max_new_tokens",
# "entity_tokens") are settings and stay
_SECRET_TOKEN = re.compile(r"(.*_)?token")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("nnsight_reasoning", "nnsight-reasoning"), ("nnsight", "nnsight"),
                      ("torch", "torch"), ("transformers", "transformers")):
        try:
            out[f"version_{key}"] = version(dist)
        except PackageNotFoundError:
            out[f"version_{key}"] = "unknown"
    return out


def provenance(*, task: str, task_params: dict[str, Any] | str, model: str, model_path: str, revision: str,
               method: str, metric: str, seed: int | None, remote: bool | str) -> dict[str, Any]:
    """The attrs every result carries; all values netCDF-safe (str/int/float)."""
    params = task_params if isinstance(task_params, str) else json.dumps(task_params, sort_keys=True, default=_plain)
    attrs = {"task": task, "task_params": params, "model": model, "model_path": model_path,
             "revision": revision, "method": method, "metric": metric,
             "seed": -1 if seed is None else int(seed), "remote": int(bool(remote)), **versions(),
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return sanitize_attrs(attrs)


def _plain(value: Any) -> Any:
    """A task parameter JSON cannot write: a numpy scalar as its number (np.int64(6) is 6, not "6"),
    anything else as its text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def sanitize_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """netCDF attrs must be str/int/float: None -> "", bool -> int, containers -> JSON.

    Keys that look like credentials are dropped: results never carry a secret.
    """
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if any(w in k.lower() for w in _SECRET_WORDS) or _SECRET_TOKEN.fullmatch(k.lower()):
            continue
        if v is None:
            v = ""
        elif isinstance(v, bool):
            v = int(v)
        elif isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, sort_keys=True)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def list_attr(value: Any) -> list:
    """A list attribute as a list, however it was stored: the list itself (a result in memory),
    an array (netCDF read back) or the JSON text :func:`sanitize_attrs` made of it."""
    return json.loads(value) if isinstance(value, str) else list(value)


def model_at(ds: xr.Dataset) -> str:
    """"model@revision" as summaries and figures name a result's model; the model alone where the
    revision has no name (a local directory)."""
    model, revision = ds.attrs.get("model"), ds.attrs.get("revision")
    return f"{model}@{revision}" if revision else str(model)


def last_checkpoint(ds: xr.Dataset) -> xr.Dataset:
    """A sweep's last checkpoint (the trained model) with ``attrs["revision"]`` naming it; a
    single-revision result as it is."""
    if "checkpoint" not in ds.dims:
        return ds
    return ds.isel(checkpoint=-1).assign_attrs(revision=str(ds["checkpoint"].values[-1]))


def site_variables(ds: xr.Dataset) -> list[str]:
    """Names of the site variables present in ``ds``, in forward order."""
    return [var_name(s) for s in SITES if var_name(s) in ds.data_vars]


# HDF5, under netCDF4, is not thread-safe, and xarray's own locks do not cover every call: a cluster
# sweep's worker threads writing their parts at once crashed the process in a file's close (SIGSEGV,
# tests/test_cluster.py, 2026-12-02). So one netCDF read or write at a time per process; each is small.
_NETCDF_IO = threading.Lock()


def writable(path: Path, ending: str = ".nc", *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: a directory (unless
    ``folder``: a folder to write into), a path under a file, or a location where no file can
    be created (permissions, a read-only filesystem). Missing directories are fine (they are
    created when the file is written) when their nearest existing ancestor takes a file. A file
    is created and removed to find out, since permission bits alone say nothing for root or on
    read-only mounts."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise UsageError(f"--out {path} is a directory: give a file name ending in {ending}")
    ancestor = path if folder else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {path}: {ancestor} is a file, not a directory; choose another --out")
    try:
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".reason-interp-"):
            pass
    except OSError as e:
        raise UsageError(f"--out {path}: cannot create files in {ancestor} ({e.strerror or e}); "
                         "choose another --out") from None


def temp_beside(path: Path) -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder for an atomic write, with the mode a plain ``open`` would
    give (mkstemp's 0600 would make shared results unreadable to the rest of a group)."""
    import secrets

    while True:  # as mkstemp, but with mode 0666 for the kernel to apply the umask to (no process-wide umask read)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), str(tmp)
        except FileExistsError:
            continue


def save_result(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to netCDF atomically: a temp file in the same folder, then a rename.

    A crash never leaves a half-written file at ``path``.
    """
    path = Path(path)
    if path.suffix != ".nc":
        raise UsageError(f"results file must end in .nc (got {path.name})")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ds.copy()
    ds.attrs = sanitize_attrs(ds.attrs)
    for name in list(ds.variables):
        ds[name].attrs = sanitize_attrs(ds[name].attrs)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        with _NETCDF_IO:
            ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_result(path: str | Path) -> xr.Dataset:
    """Read a result file fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give a results file (.nc)")
    if not path.is_file():
        raise UsageError(f"no such results file: {path}")
    try:
        with _NETCDF_IO, xr.open_dataset(path, engine="netcdf4") as ds:
            return _upgrade(ds.load())
    except Exception as e:  # netCDF4/HDF5 raise several unrelated types for corrupt files
        raise UsageError(f"cannot read {path} as a netCDF results file ({type(e).__name__}); "
                         f"was it written by reason-interp and copied completely?") from None


#: attrs["method"] -> {old variable name: new}: variables renamed since files were first written
RENAMED = {"attention": {"entropy": "prompt_entropy"},  # 2026-11-30: the paper's head entropy took the name
           "head_scores": {"copy_suppression": "copy_suppression_proxy"}}  # 2026-12-01: CSPA is its own experiment
#: attrs["method"] -> {old dimension: new}: dimensions renamed since files were first written
RENAMED_DIMS = {"cot_generation": {"step": "generated_token"}}  # 2026-12-01: a sweep's training step is `step`
#: attrs["method"] -> {coordinate: {old label: new}}: labels renamed with those variables
RELABELLED = {"head_scores": {"score": {"copy_suppression": "copy_suppression_proxy"}}}


def _upgrade(ds: xr.Dataset) -> xr.Dataset:
    """A result written by an older version, with today's variable names, dimensions and
    coordinate labels (:data:`RENAMED`, :data:`RENAMED_DIMS`, :data:`RELABELLED`)."""
    method = str(ds.attrs.get("method", ""))
    names = {old: new for old, new in RENAMED.get(method, {}).items()
             if old in ds.data_vars and new not in ds.data_vars}
    ds = ds.rename(names) if names else ds
    for old, new in RENAMED_DIMS.get(method, {}).items():
        if old not in ds.dims or new in ds.dims:
            continue
        if old in ds.coords and ds[old].dims == (old,):  # its own index coordinate: renamed with it
            ds = ds.rename({old: new})
        else:  # a sweep's file: `step` is the training step along checkpoint, and the dim lost its index
            ds = ds.rename_dims({old: new}).assign_coords({new: np.arange(ds.sizes[old])})
    for coord, labels in RELABELLED.get(method, {}).items():
        if coord in ds.coords:
            ds = ds.assign_coords({coord: (ds[coord].dims, [labels.get(str(v), v) for v in ds[coord].values],
                                           ds[coord].attrs)})  # its long_name stays
    return ds
