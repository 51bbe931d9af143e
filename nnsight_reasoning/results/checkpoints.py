"""Sweeps: which training revisions a model has, parsing ``--revisions``, stacking per-revision
results along ``checkpoint`` and per-model results along ``model`` (the sweeps themselves are
``runner.over_revisions`` and ``runner.over_models``)."""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .. import embedded
from ..errors import UsageError
from ..models import model_info

# Pythia's 154 checkpoints (Biderman et al. 2023): step0, log-spaced steps 1..512, then every
# 1000 steps to 143000, which is also "main".
PYTHIA_REVISIONS = ["step0"] + [f"step{2 ** i}" for i in range(10)] + [f"step{s}" for s in range(1000, 143001, 1000)]
_STEP = re.compile(r"step(\d+)(?:$|-)")  # stepN, or stepN-… (OLMo: step1000-tokens4B)
_RANGE = re.compile(r"^step(\d+):(?:step)?(\d+):(\d+)$")


def training_order(names: Sequence[str]) -> list[str]:
    """Unique revision names sorted as trained: ``stepN`` (and ``stepN-…``, OLMo's
    ``stepN-tokensM``) by N, other names as given, ``main`` last."""
    seen = list(dict.fromkeys(names))

    def key(n: str) -> tuple:
        if n == "main":
            return (2, 0)
        m = _STEP.match(n)
        return (0, int(m.group(1))) if m else (1, seen.index(n))

    return sorted(seen, key=key)


def available_revisions(model: Any = None) -> list[str] | None:
    """The revisions ``model`` is known to have, in training order; None when unknown offline.

    ``model``: None/"embedded", a local directory holding one model directory per revision,
    an ``EleutherAI/pythia-*`` id (its 154 checkpoints and "main", the same as step143000),
    or a loaded model.
    """
    name = model_name(model)
    if name == embedded.EMBEDDED_NAME:
        return embedded.revisions()
    path = Path(name).expanduser()
    if path.is_dir():
        # a dot-name is a revision being written (fine-tuning saves through a temporary directory)
        return training_order([p.name for p in path.iterdir()
                               if (p / "config.json").is_file() and not p.name.startswith(".")])
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
                                 f"list the revisions of {model_name(model)} instead")
            out += PYTHIA_REVISIONS if _is_pythia(model_name(model)) else have  # Pythia's "main" is step143000
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
            raise UsageError(f"{model_name(model)} has no revision {', '.join(missing[:5])}; it has: {shown or 'none'}")
    return training_order(out)


def model_name(model: Any) -> str:
    if model is None:
        return embedded.EMBEDDED_NAME
    if isinstance(model, (str, Path)):
        return str(model)
    return model_info(model).name


# always coordinates along checkpoint, even when equal: per-run facts (a count over a sweep is their sum,
# which an attr holding one run's value would hide)
_PER_REVISION = ("model_path", "seconds_load", "seconds_run", "dtype", "n_nan_values")
# a part written before an attr existed: what it stands for there (n_nan_values: not counted)
_UNKNOWN = {"n_nan_values": -1}


def stack(parts: list[xr.Dataset], names: list[str], model: str, resumed: int, shared: Sequence[str] = ()) -> xr.Dataset:
    """The revisions' Datasets along a leading ``checkpoint`` dim (see ``runner.over_revisions``);
    variables in ``shared`` are taken from the first revision, without the dim."""
    kept = {v: parts[0][v] for v in shared if v in parts[0]}
    parts = [p.drop_vars(list(kept)) for p in parts]
    ref = parts[0]
    for name, p in zip(names[1:], parts[1:]):
        if sorted(p.data_vars) != sorted(ref.data_vars):
            raise UsageError(f"revision {name} gave variables {sorted(p.data_vars)}, {names[0]} gave "
                             f"{sorted(ref.data_vars)}; sweep one experiment configuration")
        for c in ref.coords:
            if c not in p.coords or not p[c].equals(ref[c]):
                raise UsageError(f"revision {name} gives other {c!r} values than {names[0]} (another tokenizer?); "
                                 f"a sweep needs revisions of one model")
    varying = _varying_attrs(parts, _PER_REVISION, ("revision", "created"))
    stacked = xr.concat(parts, dim="checkpoint", data_vars="all", coords="minimal", compat="override",
                        join="exact", combine_attrs="override")
    # object strings, not numpy's StringDType that a pandas Index would bring: netCDF writes these
    stacked = stacked.assign_coords(checkpoint=np.array(names, dtype=object))
    stacked = stacked.assign_coords(step=("checkpoint", np.array([_step(model, n) for n in names], dtype=float),
                                          {"long_name": "training step (NaN: unknown)"}))
    stacked = stacked.assign_coords({k: ("checkpoint", _attr_values(parts, k)) for k in varying})
    attrs = {k: v for k, v in ref.attrs.items() if k not in varying}
    attrs.update(revision=",".join(names), model_path=_root_path(model), n_revisions=len(names),
                 n_resumed_revisions=resumed, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    stacked.attrs = attrs
    return stacked.assign(kept)


def _varying_attrs(parts: Sequence[xr.Dataset], always: Sequence[str], never: Sequence[str]) -> list[str]:
    """The attrs that become coordinates along a sweep's dim: those in ``always`` (held by any part:
    one written before the attr existed lacks it) and those whose value differs between the parts."""
    ref = parts[0]
    held = [k for k in always if k not in ref.attrs and any(k in p.attrs for p in parts)]
    return [k for k in [*ref.attrs, *held] if k not in never
            and (k in always or any(p.attrs.get(k) != ref.attrs[k] for p in parts))]


def _attr_values(parts: Sequence[xr.Dataset], key: str) -> np.ndarray:
    """One attr of every part, for its coordinate (a part without it: :data:`_UNKNOWN`'s value or "")."""
    return np.array([p.attrs.get(key, _UNKNOWN.get(key, "")) for p in parts])


_PER_MODEL = ("model_path", "revision", "n_parameters", "n_forward_passes", "n_resumed_passes", "seconds_load",
              "seconds_run", "dtype", "n_nan_values")


def stack_models(parts: list[xr.Dataset], labels: list[str], resumed: int = 0) -> xr.Dataset:
    """Results of one experiment on several models along a leading ``model`` dim (``labels``:
    the models' names, in the order given); see ``runner.over_models``.

    Models differ in size, so dims are joined outer: a model with 4 layers has NaN at layers
    4 and 5 of a 6-layer one (integer variables become floats), and a dim without an index
    (``d_model``, say) gets one (0..n-1) first. Coordinates that differ between models
    (token strings) gain the ``model`` dim; ``attrs["padded_dims"]`` names the dims whose
    sizes differ (:func:`one_model` drops the padding again). Attrs that differ (revision, passes, seconds, the
    model's path) become coordinates along ``model``; ``attrs["model"]`` lists the models.
    """
    ref = parts[0]
    for label, p in zip(labels[1:], parts[1:]):
        if sorted(p.data_vars) != sorted(ref.data_vars):
            raise UsageError(f"model {label} gave variables {sorted(p.data_vars)}, {labels[0]} gave "
                             f"{sorted(ref.data_vars)}; run one experiment configuration on every model")
    sizes: dict[str, set[int]] = {}
    for p in parts:
        for d, n in p.sizes.items():
            sizes.setdefault(d, set()).add(n)
    # padded: sizes differ, a model lacks the dim, or the labels differ (other revisions, as many)
    unequal = sorted(d for d, ns in sizes.items() if len(ns) > 1 or any(d not in p.dims for p in parts)
                     or d in ref.indexes and any(d not in p.indexes or not p.indexes[d].equals(ref.indexes[d])
                                                 for p in parts))
    parts = [p.assign_coords({d: np.arange(p.sizes[d]) for d in unequal if d in p.dims and d not in p.indexes})
             for p in parts]
    varying = _varying_attrs(parts, _PER_MODEL, ("model", "created"))
    stacked = xr.concat(parts, dim="model", data_vars="all", coords="different", compat="equals", join="outer",
                        combine_attrs="override")
    stacked = stacked.assign_coords(model=np.array(labels, dtype=object))
    if "checkpoint" in stacked.indexes:  # the outer join sorts revisions as strings ("main" first)
        index = stacked.indexes["checkpoint"]
        at = index.get_indexer(training_order([c for p in parts if "checkpoint" in p.indexes
                                               for c in p.indexes["checkpoint"]]))
        if (at < 0).any() or len(at) != len(index):  # the union's labels, each once: a slip would drop data
            raise RuntimeError(f"stacking lost checkpoints: {list(index)}")
        stacked = stacked.isel(checkpoint=at)
    # an attr a checkpoint sweep already made a coordinate (model_path) stays that coordinate
    stacked = stacked.assign_coords({k: ("model", _attr_values(parts, k)) for k in varying
                                     if k not in stacked.variables})
    attrs = {k: v for k, v in ref.attrs.items() if k not in varying}
    attrs.update(model=",".join(labels), model_path="", revision="", n_models=len(labels), padded_dims=unequal,
                 n_resumed_models=resumed, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    stacked.attrs = attrs
    return stacked


def one_model(ds: xr.Dataset, model: str) -> xr.Dataset:
    """One model's result from :func:`stack_models`' Dataset: its slice, without the padding of
    the other models' sizes, with its per-model coordinates back as attrs."""
    from .io import list_attr

    part = ds.sel(model=model)
    per_model = [c for c in part.coords if c != "model" and part[c].dims == ()]
    attrs = {**ds.attrs, "model": model, **{c: part[c].item() for c in per_model}}
    part = part.drop_vars(per_model + ["model"])
    for d in list_attr(ds.attrs.get("padded_dims", "[]")):
        if d in part.dims:
            part = part.dropna(d, how="all")
    for k in ("n_models", "n_resumed_models", "padded_dims"):
        attrs.pop(k, None)
    return part.assign_attrs(attrs)


def _step(model: str, revision: str) -> float:
    """The training step of a revision: N for "stepN" (or "stepN-…"); for "main", where the model says."""
    m = _STEP.match(revision)
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
