"""The experiment harness: everything around an experiment's numbers, written once.

An experiment is a function that only computes::

    @experiment("activation_patching", batch_size=512)
    def patch(run: Run, pairs, sites=("mlp", "attn"), *, metric="stolfo_ie") -> xr.Dataset:
        for chunk in run.steps(plan, "patching"):
            scores = run.call(backend.answer_scores, ids, answers, patches)
        ...

and :func:`experiment` turns it into the public function ``nr.patch(model, pairs, sites, *,
metric, batch_size, remote, progress, resume_dir, revisions)``. The harness gives every
experiment the same way:

- **model**: a loaded model, a Hugging Face id or a local directory (loaded here);
- **remote**: NDIF preflight before any work (key, host, the model is served); traffic
  counted per run (:class:`~nnsight_reasoning.remote.Traffic`), reported in ``attrs``;
- **revisions**: one run per checkpoint, one model in memory at a time, stacked along a
  leading ``checkpoint`` dim (:func:`over_revisions`);
- **several models** (a list for ``model``): one run per model, stacked along a leading
  ``model`` dim (:func:`over_models`); data that depends on the tokenizer is given as a
  function ``tokenizer -> data`` and made per model;
- **scheduler / workers**: a sweep's units (each revision, each model) run as tasks on a Dask
  cluster (:mod:`~nnsight_reasoning.cluster`) instead of one after another; same Dataset;
- **resume_dir**: every :meth:`Run.call` (one forward pass, one NDIF request) is kept as a
  part; after a kill the same call reads finished parts back and computes the rest;
- **batch_size**: rows (sequences) per forward pass, with one meaning everywhere;
  :meth:`Run.batches` plans by it;
- **progress** bars and **provenance** ``attrs`` (model, revision, task, versions, passes).
"""
from __future__ import annotations

import functools
import gc
import inspect
import time
import types
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import xarray as xr

from . import remote as _remote
from .errors import NaNWarning, UsageError, checked_int
from .models import is_loaded_by_name, load_model, model_info, relabel
from .progress import hf_bars_off, progress_bar
from .results.io import provenance, sanitize_attrs
from .cluster import Cluster, connect
from .results.parts import Parts, digest

T = TypeVar("T")

HARNESS_DOC = """
    Harness parameters (the same for every experiment)
    ---------------------------------------------------
    batch_size : most rows (sequences) in one forward pass; remotely one pass is one NDIF
        request, so this is also the chunk of work per job.
    remote : False (here), True (NDIF at ``NDIF_HOST``), a host URL, or "local" (nnsight's
        remote serialisation path, run here).
    progress : show a progress bar.
    resume_dir : keep every finished forward pass there; the same call after a kill reads
        them back and computes only the rest (the CLI uses ``<out>.nc.parts``).
    revisions : run on each of these checkpoints of ``model`` (``"all"``, ``"step0,main"``,
        ``"step0:3000:1000"`` or a list) and stack the results along a leading
        ``checkpoint`` dim; ``model`` may then be a name, so that one model is in memory at
        a time.

    scheduler : run the sweep's revisions (and models) as tasks on a running Dask cluster: its
        address (``"tcp://host:8786"``) or a ``distributed.Client``. Same Dataset as serially.
    workers : run them on a local Dask cluster of this many worker processes (one model in
        memory per worker). Without scheduler or workers, one after another here.

    ``model`` may also be a list of models (names, directories or loaded models): the
    experiment runs on each, one in memory at a time, and the results are stacked along a
    leading ``model`` dim (before ``checkpoint`` with ``revisions``). The data argument may
    be a function ``tokenizer -> data``, called with each model's tokenizer: prompt pairs
    must be made per tokenizer (single-token answers differ between vocabularies).
"""


@dataclass
class Run:
    """One experiment on one model: what an experiment's compute function receives.

    Attributes
    ----------
    model : the loaded nnsight model.
    remote : where traces run (see :mod:`nnsight_reasoning.remote`).
    batch_size : most rows per forward pass.
    progress : whether bars are shown.
    store : finished parts (resume); :meth:`call` uses it.
    traffic : NDIF jobs and bytes of this run only.
    """

    model: Any
    remote: bool | str = False
    batch_size: int = 64
    progress: bool = True
    store: Parts = field(default_factory=lambda: Parts(None, {}))
    traffic: _remote.Traffic = field(default_factory=_remote.Traffic)
    calls: int = 0  # forward passes asked for (computed or read back)
    nan_values: int = 0  # NaN numbers in what those passes returned (a model whose numbers overflowed)
    in_sweep: bool = False  # one revision of a checkpoint sweep (whose results must stack)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(model, *args, remote=..., **kwargs)`` for a backend function ``fn`` (one trace).

        The result is kept as a part of the run, keyed by the call's index and checked
        against a digest of its inputs (and of ``fn.parts_format``, where set), so a resumed run
        reads it back instead of tracing again, and a run whose inputs changed is refused instead
        of mixed.
        """
        key = f"call-{self.calls:06d}"
        self.calls += 1
        # A backend function whose return value changed shape carries a ``parts_format`` (2, 3, …),
        # so that parts kept by an earlier version are refused as other inputs, not misread.
        fmt = getattr(fn, "parts_format", None)
        check = digest(getattr(fn, "__module__", ""), fn.__qualname__, *([] if fmt is None else [fmt]), args, kwargs)

        def compute() -> T:
            with _remote.counting(self.traffic):
                return fn(self.model, *args, remote=self.remote, **kwargs)

        value = self.store.fetch(key, check, compute)
        self.nan_values += nan_count(value)
        return value

    @contextmanager
    def with_model(self, model: Any) -> Iterator["Run"]:
        """A run of ``model`` that shares this run's parts, traffic and options (a baseline
        checkpoint, say): checked for NDIF like the main model, its calls numbered after this
        run's, so they resume and count with it."""
        _remote.preflight(model, self.remote)
        other = replace(self, model=model)
        try:
            yield other
        finally:
            self.calls, self.nan_values = other.calls, other.nan_values  # the baseline's NaN count too

    def steps(self, items: Iterable[T], label: str) -> Iterator[T]:
        """``items`` with a progress bar (when enabled)."""
        return progress_bar(items, label, enabled=self.progress)

    def batches(self, lengths: Sequence[int], rows_per_item: int = 1) -> list[list[int]]:
        """Item indices per forward pass: items of one token length (no padding), as many as fit
        ``batch_size`` rows when each item takes ``rows_per_item`` rows (at least one item)."""
        return plan_batches(lengths, self.batch_size, rows_per_item)

    def summed(self, fn: Callable[..., torch.Tensor], rows: torch.Tensor | Sequence[Sequence[int]], label: str,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
        """A backend reading ``fn`` that sums over its batch's rows (activation sums for mean
        ablation), summed over every row of ``rows`` (token ids, batched by length, one
        :meth:`call` per batch), and the number of tokens it covers (rows × their length).
        ``reduce`` applies to each batch's sum first: pooling the positions of rows of
        different lengths, whose per-position sums cannot be added."""
        total, tokens = None, 0
        for job in self.steps(self.batches([len(r) for r in rows]), label):
            batch = rows[job] if isinstance(rows, torch.Tensor) else torch.tensor([list(rows[k]) for k in job])
            part = self.call(fn, batch)
            part = part if reduce is None else reduce(part)
            tokens += batch.numel()
            total = part if total is None else total + part
        return total, tokens

    def variant_batches(self, lengths: Sequence[int], n_variants: int, fixed_rows: int = 0) -> list[Pass]:
        """Passes that run ``n_variants`` variants of every item (circuits, head masks), each a
        row of its own, beside ``fixed_rows`` rows per item that every variant shares (a pair's
        corrupted run): the variants in chunks of at most ``batch_size − fixed_rows``, and for
        each chunk of v the items in :meth:`batches` of ``fixed_rows + v`` rows each."""
        per = max(1, self.batch_size - fixed_rows)
        chunks = [list(range(k, min(k + per, n_variants))) for k in range(0, n_variants, per)]
        return [Pass(ch, job) for ch in chunks for job in self.batches(lengths, rows_per_item=fixed_rows + len(ch))]


@dataclass(frozen=True)
class Pass:
    """One forward pass of :meth:`Run.variant_batches`: the ``variants`` (indices) run on the
    ``items`` (indices), all of one token length."""

    variants: list[int]
    items: list[int]


def warn_nan(ds: xr.Dataset) -> None:
    """A :class:`~nnsight_reasoning.errors.NaNWarning` when a result counts NaN numbers returned
    by its model (``n_nan_values``: an attr, or in a sweep a coordinate along ``checkpoint`` and/or
    ``model``, whose cells are summed; a padded cell, NaN, and a part written before the count, -1,
    count nothing): one line saying how many, where, and what to do. Said once per experiment call,
    here in the caller's process, also when the revisions ran on a Dask cluster."""
    import warnings

    if "n_nan_values" in ds.coords:
        counts = ds.coords["n_nan_values"]
        values = np.atleast_1d(np.array([_count(v) for v in np.ravel(counts.values)]).reshape(counts.shape))
        cells = np.argwhere(values > 0)
        where = [" ".join(f"{d} {ds[d].values[i]}" for d, i in zip(counts.dims, cell)) for cell in cells]
        total = int(values[values > 0].sum())
    else:
        total, where = max(_count(ds.attrs.get("n_nan_values", 0)), 0), []
    if not total:
        return
    dtypes = ({str(v) for v in np.ravel(ds.coords["dtype"].values)} if "dtype" in ds.coords
              else {str(ds.attrs.get("dtype", ""))}) - {"", "nan"}
    if not dtypes:  # an NDIF run: the server's dtype is not known here
        fix = "the server runs it in a dtype not known here; float16 overflows past 65,504, bfloat16 and float32 do not"
    elif "float16" in dtypes:
        fix = "load it in float32 or bfloat16 (float16 overflows past 65,504)"
    else:
        fix = f"it runs in {', '.join(sorted(dtypes))}: check its weights and inputs for NaN or inf"
    at = f" (at {'; '.join(where[:4])}{' …' if len(where) > 4 else ''})" if where else ""
    warnings.warn(f"{ds.attrs.get('model')} returned {total:,} NaN numbers{at}; the result holds NaN where they "
                  f"went (attrs n_nan_values): {fix}", NaNWarning, stacklevel=4)


def _count(value: Any) -> int:
    """A cell of ``n_nan_values`` as a count: -1 where unknown (padding, a part written before it)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -1
    return int(number) if np.isfinite(number) else -1


def _dtype(model: Any) -> str:
    """The model's weight dtype ("float32", "bfloat16"; "" when it has no parameters)."""
    from .nnsight_shim import torch_module

    try:
        return str(next(torch_module(model).parameters()).dtype).replace("torch.", "")
    except Exception:  # a model built by hand without parameters()
        return ""


def nan_count(value: Any) -> int:
    """How many NaN numbers a backend call returned: its floating tensors and arrays, also inside
    tuples, lists, dicts and dataclasses (``Scores``). No backend function makes a NaN on purpose,
    so one is a model whose numbers overflowed (float16 logits past 65,504, an inf minus an inf)."""
    if isinstance(value, torch.Tensor):
        return int(torch.isnan(value).sum()) if value.is_floating_point() or value.is_complex() else 0
    if isinstance(value, np.ndarray):
        return int(np.isnan(value).sum()) if value.dtype.kind in "fc" else 0
    if isinstance(value, (tuple, list)):
        return sum(nan_count(v) for v in value)
    if isinstance(value, dict):
        return sum(nan_count(v) for v in value.values())
    if is_dataclass(value) and not isinstance(value, type):
        return sum(nan_count(getattr(value, f.name)) for f in fields(value))
    return 0


def plan_batches(lengths: Sequence[int], batch_size: int, rows_per_item: int = 1) -> list[list[int]]:
    """The one batching planner: indices grouped by equal length (shortest first), then cut into
    passes of at most ``max(1, batch_size // rows_per_item)`` items."""
    from .tasks.base import group_by_length

    per = max(1, batch_size // max(1, rows_per_item))
    return [idx[j:j + per] for idx in group_by_length(lengths) for j in range(0, len(idx), per)]


# --------------------------------------------------------------------------- experiments
@dataclass(frozen=True)
class Experiment:
    """An experiment as the harness sees it.

    ``name`` is the default ``attrs["method"]`` and the parts' key; ``compute(run, data,
    **options)`` returns the Dataset; ``shared`` names variables that do not depend on the
    checkpoint (a probe's baseline), kept without the ``checkpoint`` dim in sweeps;
    ``batch_size`` is the default row budget. ``fixed_in_sweeps`` = (option, choose): in a
    checkpoint sweep where ``option`` is None, ``choose(run, data, **options)`` computes it
    once on the last revision (the trained model), and every revision runs with that value
    (``attrs["<option>_chosen_on"]`` names the revision) — e.g. the neurons a sweep tracks,
    which discovery would otherwise pick anew per checkpoint, giving results that cannot stack.
    ``reads_weights`` names what reads the model's weights (which NDIF never sends): such an
    experiment is refused on NDIF before anything else, a missing key included.
    """

    name: str
    compute: Callable[..., xr.Dataset]
    batch_size: int = 64
    shared: tuple[str, ...] = ()
    fixed_in_sweeps: tuple[str, Callable[..., Any]] | None = None
    reads_weights: str = ""

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickled as the name of its public function (a cluster task then ships a name, not the
        # compute code); one defined where that name does not lead back to it goes by value
        where = (self.compute.__module__, self.compute.__qualname__)
        try:  # a script's own __main__ is another module on a worker: by value
            if where[0] != "__main__" and _experiment_named(*where) is self:
                return _experiment_named, where
        except (ImportError, AttributeError):
            pass
        return super().__reduce_ex__(protocol)


def _experiment_named(module: str, qualname: str) -> Experiment:
    """The :class:`Experiment` of the public function ``module.qualname``."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj.experiment


def experiment(name: str, *, batch_size: int = 64, shared: Sequence[str] = (),
               fixed_in_sweeps: tuple[str, Callable[..., Any]] | None = None, reads_weights: str = "") -> Callable:
    """Turn ``compute(run, data, *options)`` into the public ``fn(model, data, *options, batch_size,
    remote, progress, resume_dir, revisions)`` (see the module doc and :class:`Experiment`)."""

    def wrap(compute: Callable[..., xr.Dataset]) -> Callable[..., xr.Dataset]:
        exp = Experiment(name, compute, batch_size, tuple(shared), fixed_in_sweeps, reads_weights)
        sig = inspect.signature(compute)
        params = list(sig.parameters.values())[1:]  # without `run`

        @functools.wraps(compute)
        def public(model: Any, *args: Any, batch_size: int = exp.batch_size, remote: bool | str = False,
                   progress: bool = True, resume_dir: str | Path | None = None,
                   revisions: str | Sequence[str] | None = None, scheduler: Any = None,
                   workers: int | None = None, **kwargs: Any) -> xr.Dataset:
            try:
                bound = sig.bind(None, *args, **kwargs)
            except TypeError as e:
                raise UsageError(f"{compute.__name__}(): {e}") from None
            bound.apply_defaults()
            values = dict(bound.arguments)
            values.pop(next(iter(sig.parameters)))
            data = values.pop(params[0].name)
            return execute(exp, model, data, values, batch_size=batch_size, remote=remote, progress=progress,
                           resume_dir=resume_dir, revisions=revisions, scheduler=scheduler, workers=workers)

        harness = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Any")]
        extra = [inspect.Parameter("batch_size", inspect.Parameter.KEYWORD_ONLY, default=exp.batch_size,
                                   annotation="int"),
                 inspect.Parameter("remote", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool | str"),
                 inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"),
                 inspect.Parameter("resume_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation="str | Path | None"),
                 inspect.Parameter("revisions", inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation="str | Sequence[str] | None"),
                 inspect.Parameter("scheduler", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Any"),
                 inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation="int | None")]
        public.__signature__ = sig.replace(parameters=harness + params + extra)  # type: ignore[attr-defined]
        public.__doc__ = (compute.__doc__ or "").rstrip() + "\n" + HARNESS_DOC
        public.experiment = exp  # type: ignore[attr-defined]
        return public

    return wrap


def execute(exp: Experiment, model: Any, data: Any, options: dict[str, Any], *, batch_size: int,
            remote: bool | str = False, progress: bool = True, resume_dir: str | Path | None = None,
            revisions: str | Sequence[str] | None = None, scheduler: Any = None,
            workers: int | None = None) -> xr.Dataset:
    """Run ``exp`` on ``data`` with ``options``: once, or once per revision (see the module doc),
    here or as tasks on a Dask cluster (``scheduler``/``workers``)."""
    batch_size = checked_int("batch_size", batch_size, 1)
    _remote.check_remote(remote)
    if exp.reads_weights:
        from .backend import require_local

        require_local(remote, exp.reads_weights)
    with connect(scheduler, workers) as cluster:
        ds = _execute(exp, model, data, options, batch_size=batch_size, remote=remote, progress=progress,
                      resume_dir=_for_workers(resume_dir, cluster), revisions=revisions, cluster=cluster)
    warn_nan(ds)
    return ds


def _execute(exp: Experiment, model: Any, data: Any, options: dict[str, Any], *, batch_size: int,
             remote: bool | str, progress: bool, resume_dir: str | Path | None,
             revisions: str | Sequence[str] | None, cluster: Cluster | None, checked: bool = False) -> xr.Dataset:
    """:func:`execute` once its cluster (or None) is connected; ``checked``: the data has been
    checked (one model of a list: the list's call checked it)."""
    if not _per_tokenizer(data) and not checked:
        check_data(exp.compute, data)  # before anything reads it (a list of models digests it first)
    if isinstance(model, (list, tuple)):
        # parts of the whole run are checked against the data as the first model's tokenizer
        # makes it (a function's name alone would not tell two data sizes apart)
        probe = data(_tokenizer_of(model[0], revisions)) if _per_tokenizer(data) and model else data
        return over_models(lambda m, where: _execute(exp, m, data, options, batch_size=batch_size, remote=remote,
                                                     progress=progress, resume_dir=where, revisions=revisions,
                                                     cluster=cluster, checked=True),
                           model, config=_config(exp, probe, options, batch_size), resume_dir=resume_dir,
                           progress=progress, cluster=cluster)
    if _per_tokenizer(data):
        if revisions is None:
            model = coerce_model(model)
        data = data(_tokenizer_of(model, revisions))
        check_data(exp.compute, data)

    def once(m: Any, resume_dir: str | Path | None = None) -> xr.Dataset:
        return _execute_once(exp, m, data, options, batch_size, remote, progress, resume_dir, revisions is not None)

    if revisions is None:
        if cluster is None:
            return once(model, resume_dir)
        name, revision, load_kwargs = _model_spec(model, for_workers=True)
        unit = functools.partial(_loaded_run, once, _where_for_workers(name, cluster), revision, load_kwargs,
                                 resume_dir)
        return _one_unit(cluster, revision or "main", unit, "model", progress)
    if not isinstance(model, (str, Path, type(None))) and model_info(model).load_kwargs.get("adapter"):
        raise UsageError("a model with an adapter is fine-tuned on one base checkpoint: run it without revisions")
    from .results.checkpoints import parse_revisions

    if any(isinstance(v, (xr.DataArray, xr.Dataset)) and "checkpoint" in v.dims for v in options.values()):
        for rev in parse_revisions(revisions, _sweep_model(model, {})[0]):  # refused before any revision runs
            at_revision(options, rev)
    chosen = None
    if exp.fixed_in_sweeps is not None and options.get(exp.fixed_in_sweeps[0]) is None:
        option, choose = exp.fixed_in_sweeps
        name, load_kwargs = _sweep_model(model, {}, for_workers=cluster is not None)
        unit = functools.partial(_choose_on_revision, exp, choose, _where_for_workers(name, cluster),
                                 parse_revisions(revisions, name)[-1], load_kwargs, data, options, batch_size,
                                 remote, progress, resume_dir)
        chosen = _one_unit(cluster, option, unit, option, progress)
        options = {**options, option: chosen[1]}  # `once` reads `options` when called: every revision gets it
    ds = over_revisions(once, model, revisions, config=_config(exp, data, options, batch_size),
                        resume_dir=resume_dir, progress=progress, remote=remote, shared=exp.shared,
                        scheduler=cluster)
    if chosen is not None:
        ds.attrs[f"{exp.fixed_in_sweeps[0]}_chosen_on"] = chosen[0]  # type: ignore[index]
    return ds


def at_revision(options: dict[str, Any], revision: str | None) -> dict[str, Any]:
    """``options`` as the run on ``revision`` gets them: an option given per checkpoint (an
    xarray object with a ``checkpoint`` dim, such as a circuit sweep's ``selected_circuit(ds)``) is
    read at that revision, so each checkpoint of a sweep gets its own (Tigges et al. analyse
    each checkpoint with its own circuit); a one-line error where it has none for it."""
    out = dict(options)
    for key, value in options.items():
        if isinstance(value, (xr.DataArray, xr.Dataset)) and "checkpoint" in value.dims:
            names = [str(c) for c in value["checkpoint"].values]
            rev = revision or "main"
            if rev not in names:
                raise UsageError(f"{key} is given per checkpoint ({', '.join(names)}) and has no value for revision "
                                 f"{rev!r}: sweep the revisions it has, or pass one checkpoint's value")
            out[key] = value.isel(checkpoint=names.index(rev))
    return out


def check_data(compute: Callable[..., Any], data: Any) -> None:
    """A one-line :class:`UsageError` unless ``data`` is what ``compute`` declares for its data
    parameter (its annotation, e.g. ``PromptPairs | Sequence[PromptPair]``), naming the generators
    that make it: the experiment's own code then never meets another kind of data."""
    hint = _data_hint(compute)
    if _fits(hint, data):
        return
    made = [t.made_by for t in _classes(hint) if getattr(t, "made_by", "")]
    raise UsageError(f"{compute.__name__}() takes {_described(hint)}" + (f", from {' or '.join(made)}" if made else "")
                     + f" (got {_described_value(data)})")


def _data_hint(compute: Callable[..., Any]) -> Any:
    """The annotation of ``compute``'s data parameter (the one after ``run``), resolved in its
    module; ``Any`` where it cannot be read (then nothing is checked)."""
    ann = list(inspect.signature(compute).parameters.values())[1].annotation
    if isinstance(ann, str):  # postponed annotations (from __future__ import annotations)
        try:
            ann = eval(ann, compute.__globals__)  # noqa: S307 (the module's own annotation text)
        except Exception:
            return Any
    return Any if ann is inspect.Parameter.empty else ann


def _fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``hint``: classes, unions and ``Sequence[X]`` (every item an X) are
    read; any other annotation passes."""
    import collections.abc
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arm, value) for arm in typing.get_args(hint))
    if origin in (collections.abc.Sequence, list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (collections.abc.Sequence, np.ndarray)):
            return False
        item = (typing.get_args(hint) or (Any,))[0]
        return item is Any or all(_fits(item, v) for v in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _classes(hint: Any) -> list[type]:
    """The classes an annotation names, outermost first (a union's arms, not a sequence's items)."""
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [c for arm in typing.get_args(hint) for c in _classes(arm)]
    return [hint] if isinstance(hint, type) else []


def _described(hint: Any) -> str:
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_described(arm) for arm in typing.get_args(hint))
    args = typing.get_args(hint)
    if args:  # Sequence[X]
        return f"a list of {_described(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _described_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        kinds = " and ".join(dict.fromkeys(type(v).__name__ for v in value))  # each kind once, in order
        return f"a {type(value).__name__} of {kinds}" if value else f"an empty {type(value).__name__}"
    return type(value).__name__


def _one_unit(cluster: Cluster | None, key: str, unit: Callable[[], T], description: str, progress: bool) -> T:
    """``unit()``, here or as one task on ``cluster``."""
    return unit() if cluster is None else cluster.run({key: unit}, description, progress=progress)[key]


def _for_workers(resume_dir: str | Path | None, cluster: Cluster | None) -> str | Path | None:
    """``resume_dir`` as workers are given it: absolute (they write there from their own
    working directory)."""
    return Path(resume_dir).resolve() if cluster is not None and resume_dir is not None else resume_dir


def _loaded_run(experiment: Callable[..., xr.Dataset], name: Any, revision: str | None, load_kwargs: dict[str, Any],
                resume_dir: str | Path | None) -> xr.Dataset:
    """``experiment(model, resume_dir)`` on the model loaded by name (a unit of work on a worker)."""
    return experiment(_load_named(name, revision, load_kwargs), resume_dir)


def _model_spec(model: Any, for_workers: bool = False) -> tuple[Any, str | None, dict[str, Any]]:
    """(name, revision, load options) that load ``model`` again, one revision at a time or on a
    worker. ``for_workers``: a model in memory must have come from :func:`load_model` (a
    worker loads it by name: one built or edited by hand would be replaced by the checkpoint)."""
    if isinstance(model, (str, Path, type(None))):
        return model, None, {}
    if for_workers and not is_loaded_by_name(model):
        raise UsageError("a Dask cluster loads the model on its workers by name: pass a name or directory, or a "
                         "model from nr.load_model (not one built or changed in memory)")
    info = model_info(model)
    return info.name, info.revision or None, dict(info.load_kwargs)


def _load_named(name: Any, revision: str | None, load_kwargs: dict[str, Any]) -> Any:
    """:func:`load_model` of ``name``, where a relative local directory may have been made
    absolute for a worker (``(absolute, as given)``): the model keeps the name it was given."""
    if isinstance(name, tuple):
        where, given = name
        return relabel(load_model(where, revision, **load_kwargs), given)
    return load_model(name, revision, **load_kwargs)


def _where_for_workers(name: Any, cluster: Cluster | None) -> Any:
    """A relative local model directory as workers load it: ``(absolute path, as given)``."""
    if cluster is None or not isinstance(name, (str, Path)) or Path(name).expanduser().is_absolute():
        return name
    path = Path(name).expanduser()
    return (str(path.resolve()), name) if path.exists() else name


def _choose_on_revision(exp: Experiment, choose: Callable[..., Any], name: Any, last: str,
                        load_kwargs: dict[str, Any], data: Any, options: dict[str, Any], batch_size: int,
                        remote: bool | str, progress: bool, resume_dir: str | Path | None) -> tuple[str, Any]:
    """(revision, value): ``choose(run, data, **options)`` on the sweep's last revision ``last``
    of the model ``name`` (as :func:`_load_named` takes it), its passes kept in
    ``<resume_dir>/_<option>`` like any run's."""
    m = _load_named(name, last, load_kwargs)
    _remote.preflight(m, remote)
    option = exp.fixed_in_sweeps[0]  # type: ignore[index]
    where = None if resume_dir is None else Path(resume_dir) / f"_{option}"
    store = Parts(where, {**_config(exp, data, options, batch_size), **_model_config(model_info(m)),
                          "choosing": option})
    try:
        with store.resume_hint_on_failure():
            return last, choose(Run(m, remote, batch_size, progress, store), data, **at_revision(options, last))
    finally:
        weights = _weights_ref(m)
        del m  # only one model in memory: the sweep loads its revisions next
        _free_memory(weights)


def _sweep_model(model: Any, load_kwargs: dict[str, Any], for_workers: bool = False) -> tuple[Any, dict[str, Any]]:
    """A sweep's model as a name (a loaded model gives its name and load options), so that each
    revision is loaded alone."""
    name, _, kwargs = _model_spec(model, for_workers)
    return name, {**kwargs, **load_kwargs}


def _execute_once(exp: Experiment, model: Any, data: Any, options: dict[str, Any], batch_size: int,
                  remote: bool | str, progress: bool, resume_dir: str | Path | None, in_sweep: bool = False
                  ) -> xr.Dataset:
    model = coerce_model(model)
    info = model_info(model)
    options = at_revision(options, info.revision)
    adapter = info.load_kwargs.get("adapter")
    if adapter and _remote.is_ndif(remote):
        raise UsageError(f"a model with an adapter ({adapter}) runs locally only: NDIF serves base weights")
    _remote.preflight(model, remote)
    store = Parts(resume_dir, {**_config(exp, data, options, batch_size), **_model_config(info)})
    run = Run(model, remote, batch_size, progress, store, in_sweep=in_sweep)
    with store.resume_hint_on_failure():
        ds = exp.compute(run, data, **options)
    params = dict(getattr(data, "params", {}) or {})
    seed = params.get("seed", options.get("seed"))
    own = dict(ds.attrs)  # what the experiment says about itself (method, metric, its settings)
    attrs = provenance(task=own.pop("task", getattr(data, "task", "custom")),
                       task_params=own.pop("task_params", params), model=info.name, model_path=info.path,
                       revision=info.revision, method=own.pop("method", exp.name), metric=own.pop("metric", ""),
                       seed=seed, remote=remote)
    attrs.update(own)
    if adapter:
        attrs["adapter"] = adapter
    if info.load_kwargs.get("device_map") is not None:  # how the model was placed (accelerate)
        import json

        attrs["device_map"] = json.dumps(info.load_kwargs["device_map"], sort_keys=True, default=str)
    attrs.update(batch_size=batch_size, n_forward_passes=run.calls, n_resumed_passes=store.resumed,
                 n_parameters=_n_parameters(model), n_nan_values=run.nan_values,
                 # the weights' dtype; on NDIF the server's, which is not known here (the local copy is meta)
                 dtype="" if _remote.is_ndif(remote) else _dtype(model))
    if _remote.is_ndif(remote):
        attrs.update(run.traffic.as_attrs())
    ds.attrs = sanitize_attrs({k: named(v) for k, v in attrs.items()})
    return ds


def _tokenizer_of(model: Any, revisions: Any) -> Any:
    """The tokenizer of a model (a sweep's: its last revision's), loaded lazily (no weights)."""
    if revisions is None:
        return coerce_model(model).tokenizer
    from .results.checkpoints import parse_revisions

    name, load_kwargs = _sweep_model(model, {})
    return load_model(name, parse_revisions(revisions, name)[-1], **load_kwargs).tokenizer


def _per_tokenizer(data: Any) -> bool:
    """Whether ``data`` is a function ``tokenizer -> data`` (made per model) rather than data."""
    return isinstance(data, (types.FunctionType, types.MethodType, functools.partial))


def _n_parameters(model: Any) -> int:
    """The model's parameter count (0 when unknown): over several models, the size axis of a
    scaling plot. Counted on the module, so a remote model's meta weights count too."""
    from .nnsight_shim import torch_module

    try:
        return int(sum(w.numel() for w in torch_module(model).parameters()))
    except Exception:  # a model built by hand without parameters()
        return 0


def _config(exp: Experiment, data: Any, options: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Everything besides the model that determines a run's numbers and parts (a parts folder
    made under another config is refused, naming the keys that differ)."""
    return {"method": exp.name, "task": getattr(data, "task", "custom"), "task_params": getattr(data, "params", {}),
            "data": digest(data), "batch_size": batch_size, **{k: _configured(v) for k, v in options.items()}}


def _configured(value: Any) -> Any:
    """An option as a config records it: an xarray object (a circuit) by a digest of its dims,
    values and coordinates (its text form is cut short above 1,000 values, so two circuits
    differing in one edge would read the same), anything else as :func:`named` gives it."""
    if isinstance(value, (xr.DataArray, xr.Dataset)):
        arrays = value.to_dataset(name="_") if isinstance(value, xr.DataArray) else value
        return {"xarray": digest({str(k): [list(v.dims), _canonical(v.values)] for k, v in arrays.variables.items()})}
    return named(value)


def _canonical(values: np.ndarray) -> np.ndarray:
    """The same numbers or words in one dtype whatever the source (a result in memory holds
    object strings and int8 edges, the same read from a file fixed-width strings): integers and
    booleans as int64, floats as float64, anything else as str."""
    kind = values.dtype.kind
    return values.astype(np.int64 if kind in "biu" else np.float64 if kind == "f" else str)


def _model_config(info: Any) -> dict[str, Any]:
    """What of the model determines a run's numbers: where it is, its revision, the options it
    was loaded with (dtype, attention) and this package's version (which shapes the passes)."""
    from .results.io import versions

    return {"model": info.name, "model_path": info.path, "revision": info.revision,
            "load": {k: str(v) for k, v in info.load_kwargs.items() if k != "tokenizer"},
            "version": versions()["version_nnsight_reasoning"]}


def named(value: Any) -> Any:
    """An option as configs and attrs record it: a function (a labeller, say) by its qualified
    name — never its repr, which holds a memory address, or anything it closes over."""
    if callable(value) and not isinstance(value, type):
        fn = getattr(value, "__func__", value)
        return f"{getattr(fn, '__module__', '') or type(fn).__module__}." \
               f"{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"
    return value


def coerce_model(model: Any) -> Any:
    """A loaded model from a loaded model, a name or a directory (None: the embedded model)."""
    if model is None or isinstance(model, (str, Path)):
        return load_model(model)
    return model


# --------------------------------------------------------------------------- models
def over_models(experiment: Callable[..., xr.Dataset], models: Sequence[Any], *, config: dict[str, Any] | None = None,
                resume_dir: str | Path | None = None, progress: bool = True,
                cluster: Cluster | None = None) -> xr.Dataset:
    """Run ``experiment(model, resume_dir)`` on each of ``models`` and stack the results along a
    leading ``model`` dim (:func:`~nnsight_reasoning.results.checkpoints.stack_models`).

    ``models``: names, directories or loaded models; pass names to hold one model in memory at
    a time. With ``resume_dir`` each finished model's Dataset is kept there
    (``model<i>_<name>.nc``) and each unfinished one has a folder of its own parts, so a killed
    sweep resumes from the first unfinished pass. ``config``: as :func:`over_revisions`'s.
    ``cluster`` (the harness's, on which ``experiment`` puts its own units): the models are
    started at once, so that every (model, revision) is a task on it; the first failure
    cancels the rest.
    """
    from .results.checkpoints import model_name, stack_models

    if not models:
        raise UsageError("no models given: pass a list of model names, directories or loaded models")
    labels = [model_name(m) for m in models]
    twice = sorted({n for n in labels if labels.count(n) > 1})
    if twice:
        raise UsageError(f"model {twice[0]} is given twice; each model once (a revision sweep is revisions=)")
    if resume_dir is not None and config is None:
        raise UsageError("over_models(resume_dir=...) needs config=: a description of the experiment")
    store = Parts(resume_dir, {**(config or {}), "models": labels})
    keys = [f"model{i}_{label}" for i, label in enumerate(labels)]

    def compute(i: int) -> xr.Dataset:
        done = experiment(models[i], None if store.dir is None else store.subdir(keys[i]))
        _free_memory()
        return store.put_dataset(keys[i], done) or done

    with store.resume_hint_on_failure():
        done = {i: store.get_dataset(k) for i, k in enumerate(keys)}
        store.resumed += sum(d is not None for d in done.values())
        missing = [i for i in done if done[i] is None]
        try:
            if cluster is None:
                for i in progress_bar(range(len(models)), "model", enabled=progress and len(models) > 1,
                                      label=lambda i: labels[i]):
                    if done[i] is None:
                        done[i] = compute(i)
            else:
                done.update(_concurrently(compute, missing, progress, cluster))
        except UsageError:  # as over_revisions: bad input keeps none of this call's models
            store.discard([keys[i] for i in missing])
            raise
    return stack_models([done[i] for i in range(len(models))], labels, store.resumed)


def _concurrently(fn: Callable[[int], T], items: Sequence[int], progress: bool, cluster: Cluster) -> dict[int, T]:
    """``{i: fn(i)}``, each call in a thread of its own that waits on its tasks on ``cluster``,
    all of their bars lines of one display. The first call to fail stops the others (their
    tasks are cancelled; finished parts stay) and its error is raised."""
    import contextvars
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from .cluster import Stopped
    from .progress import display

    if not items:
        return {}
    with display(progress), ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = {i: pool.submit(contextvars.copy_context().run, fn, i) for i in items}
        done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        first = next((f.exception() for f in done if f.exception() is not None), None)
        if first is not None:
            cluster.stop()
    if first is not None:
        raise first
    errors = [f.exception() for f in futures.values() if f.exception() is not None
              and not isinstance(f.exception(), Stopped)]
    if errors:
        raise errors[0]
    return {i: f.result() for i, f in futures.items()}


# --------------------------------------------------------------------------- checkpoints
def over_revisions(
    experiment: Callable[..., xr.Dataset],
    model: Any = None,
    revisions: str | Sequence[str] = "all",
    *,
    config: dict[str, Any] | None = None,
    resume_dir: str | Path | None = None,
    progress: bool = True,
    remote: bool | str = False,
    shared: Sequence[str] = (),
    scheduler: Any = None,
    workers: int | None = None,
    **load_kwargs: Any,
) -> xr.Dataset:
    """Run ``experiment(model)`` on every revision and stack the results along ``checkpoint``.

    Every experiment takes ``revisions=`` through this function; any function ``model ->
    Dataset`` can be swept the same way.

    Parameters
    ----------
    experiment : ``model -> Dataset``. If it takes a ``resume_dir`` keyword it gets one folder
        per revision, so a revision interrupted midway resumes from its finished passes.
    model : model name or directory as for :func:`load_model` (or a loaded model, whose name
        and load options are reused; pass the name to hold only one model in memory).
    revisions : list or string for :func:`~nnsight_reasoning.results.checkpoints.parse_revisions`.
    config : JSON-able description of everything besides the revision that determines the
        numbers; required with ``resume_dir`` so that parts of another run are refused.
    resume_dir : folder for finished revisions (``<revision>.nc``) and unfinished ones.
    remote : where ``experiment`` runs: weights are loaded here only for local runs.
    shared : variables that do not depend on the checkpoint; kept from the first revision,
        without the ``checkpoint`` dim.
    scheduler, workers : run each revision as one task on a Dask cluster (a running one's
        address or ``distributed.Client``; or a local one of ``workers`` processes), see
        :mod:`~nnsight_reasoning.cluster`; ``experiment`` must then pickle (cloudpickle: a
        closure or lambda does). The Dataset is the serial run's.

    Returns
    -------
    The experiment's Dataset with a leading ``checkpoint`` dim (revision names, training
    order); coordinates along ``checkpoint``: ``step`` (training step), ``model_path``,
    ``seconds_load`` and ``seconds_run`` and any attribute whose value differs between
    revisions. ``attrs["revision"]`` lists the revisions.
    """
    from .results.checkpoints import model_name, parse_revisions, stack

    # on a cluster, a model in memory must be one that workers can load by name
    model, load_kwargs = _sweep_model(model, load_kwargs, for_workers=scheduler is not None or workers is not None)
    names = parse_revisions(revisions, model)
    if resume_dir is not None and config is None:
        raise UsageError("over_revisions(resume_dir=...) needs config=: a description of the experiment, so that "
                         "parts of a different run are never mixed in")
    with connect(scheduler, workers) as cluster:
        store = Parts(_for_workers(resume_dir, cluster),
                      {**(config or {}), "model": model_name(model),
                       "load": {k: str(v) for k, v in load_kwargs.items() if k != "tokenizer"}})
        if cluster is not None:
            store.open()  # workers write the parts: this run owns (and on failure removes) the folder
        per_revision_dir = "resume_dir" in inspect.signature(experiment).parameters
        with store.resume_hint_on_failure():
            done = {rev: store.get_dataset(rev) for rev in names}
            for rev, part in done.items():  # checked before any work
                if part is not None and part.attrs.get("revision") not in (rev, None):
                    raise UsageError(f"{store.dir}: the part for {rev} holds revision {part.attrs.get('revision')}; "
                                     f"delete it or pass --restart")
            store.resumed += sum(part is not None for part in done.values())
            units = {rev: functools.partial(_on_revision, experiment, _where_for_workers(model, cluster), rev,
                                            load_kwargs, remote, store, per_revision_dir)
                     for rev in names if done[rev] is None}
            try:
                if cluster is None:
                    for rev in progress_bar(names, "checkpoint", enabled=progress, label=str):
                        if done[rev] is None:
                            done[rev] = units[rev]()
                else:
                    done.update(cluster.run(units, "checkpoint", progress=progress))
            except UsageError:
                # Bad input found in a late revision: the revisions this call finished belong to
                # the bad command, and would make the corrected one a "different run".
                store.discard(list(units))  # those missing when it started
                raise
        return stack([done[rev] for rev in names], names, model_name(model), store.resumed, shared)


def _on_revision(experiment: Callable[..., xr.Dataset], model: Any, rev: str, load_kwargs: dict[str, Any],
                 remote: bool | str, store: Parts, per_revision_dir: bool) -> xr.Dataset:
    """One unit of a checkpoint sweep, here or on a cluster worker: load ``rev``, run, time it,
    keep the Dataset as the revision's part (read back, so that a fresh and a resumed run hand
    on identical objects); only one model in memory."""
    from .results.parts import within

    with within(store.dir if store.opened else None):  # on a worker: only while the run's folder exists
        t0 = time.perf_counter()
        # the weights are read at dispatch; transformers' per-tensor bar, one per revision, would
        # bury the sweep's own bar over revisions (and a notebook keeps every one)
        with hf_bars_off():
            m = _load_named(model, rev, load_kwargs)
            if not _remote.is_ndif(remote):
                m.dispatch()
        t1 = time.perf_counter()
        kwargs = {"resume_dir": store.subdir(rev)} if per_revision_dir and store.dir is not None else {}
        ds = experiment(m, **kwargs)
        weights = _weights_ref(m)
        del m  # the only reference we hold: the next revision loads into freed memory
        _free_memory(weights)
        done = ds.assign_attrs(seconds_load=round(t1 - t0, 3), seconds_run=round(time.perf_counter() - t1, 3))
        return store.put_dataset(rev, done) or done


def _weights_ref(model: Any) -> "weakref.ref[Any]":
    """A weak reference to the torch module under ``model``: dead once its weights are freed."""
    from .nnsight_shim import torch_module

    return weakref.ref(torch_module(model))


def _free_memory(weights: "weakref.ref[Any] | None" = None) -> None:
    """Free the last model's memory before the next one loads. A full ``gc.collect`` costs
    ~0.3 s in a process holding torch and transformers, more than loading a small revision
    (a 19-revision sweep of the embedded model spent 7 of its 12 s in it), so it runs only when
    the model's weights are still alive after the last reference was dropped (held by a
    reference cycle), or when no ``weights`` reference is given."""
    if weights is None or weights() is not None:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
