"""Checkpoint sweeps: one experiment over a model's training revisions (Tigges et al. 2024).

:func:`over_revisions` loads each revision in training order, runs an experiment on it and
stacks the results along a leading ``checkpoint`` dim. It is written once for every
experiment: ``patch`` and ``evaluate`` take ``revisions=`` by calling it, and any function
``model -> xarray.Dataset`` can be swept the same way.

Only one model is in memory at a time: a revision's model is dropped (and the CUDA cache
emptied) before the next one loads. With ``resume_dir``, every finished revision is written
there at once as ``<revision>.nc``, and a revision cut off midway keeps its finished passes
in ``<revision>/``; the same call later skips the former and resumes the latter.
"""
from __future__ import annotations

import datetime as _dt
import gc
import inspect
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr

from . import embedded
from .errors import UsageError
from .models import load_model, model_info
from .parts import Parts
from .progress import progress_bar

# Pythia's 154 checkpoints (Biderman et al. 2023): step0, log-spaced steps 1..512, then every
# 1000 steps to 143000, which is also "main".
PYTHIA_REVISIONS = ["step0"] + [f"step{2 ** i}" for i in range(10)] + [f"step{s}" for s in range(1000, 143001, 1000)]
_RANGE = re.compile(r"^step(\d+):(?:step)?(\d+):(\d+)$")


def training_order(names: Sequence[str]) -> list[str]:
    """Unique revision names sorted as trained: ``stepN`` by N, other names as given, ``main`` last."""
    seen = list(dict.fromkeys(names))

    def key(n: str) -> tuple:
        if n == "main":
            return (2, 0)
        m = re.fullmatch(r"step(\d+)", n)
        return (0, int(m.group(1))) if m else (1, seen.index(n))

    return sorted(seen, key=key)


def available_revisions(model: Any = None) -> list[str] | None:
    """The revisions ``model`` is known to have, in training order; None when unknown offline.

    ``model``: None/"embedded", a local directory holding one model directory per revision,
    an ``EleutherAI/pythia-*`` id (its 154 checkpoints and "main", the same as step143000),
    or a loaded model.
    """
    name = _name(model)
    if name == embedded.EMBEDDED_NAME:
        return embedded.revisions()
    path = Path(name).expanduser()
    if path.is_dir():
        return training_order([p.name for p in path.iterdir() if (p / "config.json").is_file()])
    if _is_pythia(name):
        return PYTHIA_REVISIONS + ["main"]
    return None


def _is_pythia(name: str) -> bool:
    return bool(re.match(r"^EleutherAI/pythia-", name)) and not Path(name).expanduser().exists()


def parse_revisions(spec: str | Sequence[str], model: Any = None) -> list[str]:
    """Revision names from ``"step0,step1000,main"``, ``"all"`` or a range ``"step0:143000:10000"``.

    A range is ``stepSTART:STOP:EVERY`` with STOP included when it is on the grid. The result
    is in training order without duplicates; names the model is known not to have are refused.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not items:
        raise UsageError("no revisions given; e.g. --revisions step0,step1000,main or --revisions all")
    have = available_revisions(model)
    out: list[str] = []
    for item in items:
        m = _RANGE.match(item)
        if item == "all":
            if not have:
                raise UsageError(f"--revisions all needs a model whose revisions are known: the embedded model, a local "
                                 f"directory with one sub-directory per revision, or an EleutherAI/pythia-* id; "
                                 f"list the revisions of {_name(model)} instead")
            out += PYTHIA_REVISIONS if _is_pythia(_name(model)) else have  # Pythia's "main" is step143000
        elif m:
            start, stop, every = (int(g) for g in m.groups())
            if every <= 0 or stop < start:
                raise UsageError(f"bad revision range {item!r}: use stepSTART:STOP:EVERY with STOP >= START, EVERY > 0")
            out += [f"step{s}" for s in range(start, stop + 1, every)]
        else:
            out.append(item)
    if have is not None:
        missing = [r for r in out if r not in have]
        if missing:
            shown = ", ".join(have) if len(have) <= 12 else f"{', '.join(have[:12])}, … ({len(have)} in all)"
            raise UsageError(f"{_name(model)} has no revision {', '.join(missing[:5])}; it has: {shown or 'none'}")
    return training_order(out)


def over_revisions(
    experiment: Callable[..., xr.Dataset],
    model: Any = None,
    revisions: str | Sequence[str] = "all",
    *,
    config: dict[str, Any] | None = None,
    resume_dir: str | Path | None = None,
    progress: bool = True,
    remote: bool | str = False,
    **load_kwargs: Any,
) -> xr.Dataset:
    """Run ``experiment(model)`` on every revision and stack the results along ``checkpoint``.

    Parameters
    ----------
    experiment : ``model -> Dataset``. If it takes a ``resume_dir`` keyword it gets one folder
        per revision, so a revision interrupted midway resumes from its finished passes.
    model : model name or directory as for :func:`load_model` (or a loaded model, whose name
        and load options are reused; pass the name to hold only one model in memory).
    revisions : list or string for :func:`parse_revisions` (``"all"``, ``"step0,main"``, a range).
    config : JSON-able description of everything besides the revision that determines the
        numbers; required with ``resume_dir`` so that parts of another run are refused.
    resume_dir : folder for finished revisions (``<revision>.nc``) and unfinished ones.
    remote : where ``experiment`` runs (as its own ``remote``): each revision's weights are
        loaded here before the call only for local runs (False or "local"); remote weights
        stay on the server.

    Returns
    -------
    The experiment's Dataset with a leading ``checkpoint`` dim (revision names, training
    order) on every variable; coordinates along ``checkpoint``: ``step`` (training step,
    for plots: ``ds.accuracy.plot(x="step")``), ``model_path``,
    ``seconds_load`` and ``seconds_run`` (wall time to load that revision and to run the
    experiment on it, from its original run if resumed) and any attribute whose value differs
    between revisions. ``attrs["revision"]`` lists the revisions.
    """
    if not isinstance(model, (str, Path, type(None))):
        info = model_info(model)
        model, load_kwargs = info.name, {**info.load_kwargs, **load_kwargs}
    names = parse_revisions(revisions, model)
    if resume_dir is not None and config is None:
        raise UsageError("over_revisions(resume_dir=...) needs config=: a description of the experiment, so that "
                         "parts of a different run are never mixed in")
    store = Parts(resume_dir, {**(config or {}), "model": _name(model),
                              "dtype": str(load_kwargs.get("dtype", "torch.float32"))})
    per_revision_dir = "resume_dir" in inspect.signature(experiment).parameters
    results: list[xr.Dataset] = []
    with store.resume_hint_on_failure():
        for rev in progress_bar(names, "checkpoint", enabled=progress, label=str):
            done = store.get_dataset(rev)
            if done is None:
                t0 = time.perf_counter()
                m = load_model(model, rev, **load_kwargs)
                if remote in (False, "local"):
                    m.dispatch()
                t1 = time.perf_counter()
                kwargs = {"resume_dir": store.subdir(rev)} if per_revision_dir and store.dir is not None else {}
                ds = experiment(m, **kwargs)
                del m  # the only reference we hold: the next revision loads into freed memory
                _free_memory()
                done = ds.assign_attrs(seconds_load=round(t1 - t0, 3), seconds_run=round(time.perf_counter() - t1, 3))
                done = store.put_dataset(rev, done) or done
            else:
                store.resumed += 1
            if done.attrs.get("revision") not in (rev, None):
                raise UsageError(f"{store.dir}: the part for {rev} holds revision {done.attrs.get('revision')}; "
                                 f"delete it or pass --restart")
            results.append(done)
    return _stack(results, names, _name(model), store.resumed)


def _name(model: Any) -> str:
    if model is None:
        return embedded.EMBEDDED_NAME
    if isinstance(model, (str, Path)):
        return str(model)
    return model_info(model).name


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_PER_REVISION = ("model_path", "seconds_load", "seconds_run")  # always coordinates along checkpoint, even when equal


def _stack(parts: list[xr.Dataset], names: list[str], model: str, resumed: int) -> xr.Dataset:
    ref = parts[0]
    for name, p in zip(names[1:], parts[1:]):
        if sorted(p.data_vars) != sorted(ref.data_vars):
            raise UsageError(f"revision {name} gave variables {sorted(p.data_vars)}, {names[0]} gave "
                             f"{sorted(ref.data_vars)}; sweep one experiment configuration")
        for c in ref.coords:
            if c not in p.coords or not p[c].equals(ref[c]):
                raise UsageError(f"revision {name} gives other {c!r} values than {names[0]} (another tokenizer?); "
                                 f"a sweep needs revisions of one model")
    varying = [k for k in ref.attrs if k not in ("revision", "created")
               and (k in _PER_REVISION or any(p.attrs.get(k) != ref.attrs[k] for p in parts))]
    stacked = xr.concat(parts, dim="checkpoint", data_vars="all", coords="minimal", compat="override",
                        join="exact", combine_attrs="override")
    # object strings, not numpy's StringDType that a pandas Index would bring: netCDF writes these
    stacked = stacked.assign_coords(checkpoint=np.array(names, dtype=object))
    stacked = stacked.assign_coords(step=("checkpoint", np.array([_step(model, n) for n in names], dtype=float),
                                          {"long_name": "training step (NaN: unknown)"}))
    stacked = stacked.assign_coords({k: ("checkpoint", np.array([p.attrs.get(k, "") for p in parts])) for k in varying})
    attrs = {k: v for k, v in ref.attrs.items() if k not in varying}
    attrs.update(revision=",".join(names), model_path=_root_path(model), n_revisions=len(names),
                 n_resumed_revisions=resumed, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    stacked.attrs = attrs
    return stacked


def _step(model: str, revision: str) -> float:
    """The training step of a revision: N for "stepN"; for "main", where the model says."""
    m = re.fullmatch(r"step(\d+)", revision)
    if m:
        return float(m.group(1))
    if revision == "main" and _is_pythia(model):
        return float(PYTHIA_REVISIONS[-1][4:])
    if revision == "main" and model == embedded.EMBEDDED_NAME:
        return float(embedded.training_meta().get("step", np.nan))
    return float("nan")


def _root_path(model: str) -> str:
    """Where the revisions live locally ("" for a Hub id: each is in the HF cache)."""
    if model == embedded.EMBEDDED_NAME:
        return str(embedded.REVISIONS_DIR)
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else ""
