"""Analyses of patching results (:func:`..patch.patch`), as lm-arithmetic's notebooks make them.

They take a result Dataset and return a smaller labelled one; nothing here runs the model.
``prediction_change`` (the prediction-change plot), ``by_token_role`` (position classes and
the per-operator split), ``late_mlp_share`` (the all-token heatmap's mid-late MLP share),
``unit_overlap`` (the neuron-overlap analyses of single units) and ``drop_mult_by_one`` (the
``mult_by_1_filter``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import xarray as xr

from .. import metrics
from ..errors import UsageError, checked_int
from ..sites import unit_dim, var_name


def _provenance_of(ds: xr.Dataset) -> dict[str, Any]:
    """The attrs an analysis of a patching result keeps from it (what was patched, where)."""
    return {k: ds.attrs[k] for k in ("task", "model", "revision", "metric") if k in ds.attrs}


def prediction_change(ds: xr.Dataset) -> xr.Dataset:
    """Share of prompts whose top token a patch moved, per site: lm-arithmetic's
    prediction-change plot (``notebooks/notebooks_utils.py:140-166``).

    Returns a Dataset with one variable per site of ``ds`` (an exact patching result), dims
    ``(change, [checkpoint,] layer, position[, unit])`` (a unit site's ``head``, ``neuron`` or
    ``dimension``), ``change`` = "desired" (the top token
    moved to the source answer r2) or "undesired" (it moved to another token); the share is
    over the prompts with a value (NaN where there are none). Departures: the top token is
    taken over the whole vocabulary (the repository: over the numbers 0..max_n), and the two
    shares are disjoint (the repository's "undesired" counts every change of a prompt whose
    base prediction was right, the desired ones included; with ``correct_only=True`` it is
    desired + undesired here).
    """
    import pandas as pd

    from ..results.io import site_variables

    out = {}
    for v in site_variables(ds):
        if f"{v}_prediction" not in ds:
            raise UsageError(f"{v}: this result has no prediction codes (they come from method='exact' patching)")
        code = ds[f"{v}_prediction"]
        n = (code >= 0).sum("prompt")
        shares = [((code == k).sum("prompt") / n.where(n > 0)) for k in (1, 2)]
        out[v] = xr.concat(shares, pd.Index(["desired", "undesired"], name="change"))
        out[v].attrs = {"long_name": f"share of prompts whose top token patching {v} moved", "units": "1"}
    return xr.Dataset(out, attrs=_provenance_of(ds))


def by_token_role(ds: xr.Dataset, roles: Callable[[list[str]], list[str]] | None = None, *,
                  by_operator: bool = False) -> xr.Dataset:
    """Mean effect per token role and layer, lm-arithmetic's aggregation of its all-token runs.

    ``ds``: a patching result with ``positions="all"``, or ``"last"``, whose one role is "last"
    (with ``by_operator``, the repository's per-operator split of its last-token results,
    ``notebooks_utils.py:307-321``). ``roles(tokens) -> labels`` names the
    role of each token of a base prompt (the ``token`` coordinate); default: the task's, as
    lm-arithmetic classes positions per task (``plot-all-tokens.ipynb``): arithmetic
    (:func:`nnsight_reasoning.tasks.arithmetic.token_roles`: shots (the exemplars), early,
    operand 1, operator, middle, operand 2, [middle 2, operand 3,] late, last), number retrieval
    (``tasks.recall.retrieval_roles``: shots, early, e_q first/middle/last — the thing the question
    asks about —, late, last) and factual recall (``tasks.recall.fact_roles``: early, subject
    first/middle/last, late, last). Returns one variable per site with dims
    ``([operator,] role, [checkpoint,] layer[, head])``: the mean over every (prompt, position)
    of that role, as the repository averages its rows per position class
    (``plot-all-tokens.ipynb``, JSON lines 184-201); the ``n`` coordinate counts them.
    ``by_operator``: split the prompts by their query's operator (arithmetic; read from the
    base prompt's text), adding a leading ``operator`` dim, as the paper splits its figures by
    operation; ``n`` is then (operator, role).
    """
    import pandas as pd

    from ..results.io import site_variables
    from ..tasks import TASKS, TaskError

    positions = ds.attrs.get("positions")
    if positions not in ("all", "last"):
        raise UsageError(f"token roles need a result over all positions or the last (this one: {positions})")
    if positions == "last" and roles is not None:
        raise UsageError("roles= classes every token; this result holds the last position only: patch with "
                         "positions='all' (--positions all)")
    task = TASKS.get(str(ds.attrs.get("task")))
    known = getattr(task, "role_order", ())
    if roles is None and positions == "all":  # a last-position result needs no role function: every cell is "last"
        if task is None or task.roles is None:
            raise UsageError(f"token roles are known for {', '.join(n for n, t in TASKS.items() if t.roles)} results "
                             f"(this is {ds.attrs.get('task')}); in Python, pass roles=a function from a prompt's "
                             f"tokens to their role names")
        roles = task.roles
    if by_operator and ds.attrs.get("task") != "arithmetic":
        raise UsageError("by_operator splits arithmetic results by their operator; this is "
                         f"{ds.attrs.get('task')}: use by_operator=False")
    try:
        labels = np.array([roles([str(t) for t in row]) if positions == "all" else ["last"] * len(row)
                           for row in ds["token"].values], dtype=object)
    except TaskError as e:
        raise UsageError(str(e)) from None
    order = [r for r in known if (labels == r).any()] + sorted({str(r) for r in labels.ravel()} - set(known) - {""})
    role_index = pd.Index(np.array(order, dtype=object), name="role")
    groups: dict[str, np.ndarray] = {"": np.ones(ds.sizes["prompt"], bool)}
    if by_operator:
        groups = _operator_groups(ds, "this result")
    out: dict[str, list[xr.DataArray]] = {v: [] for v in site_variables(ds)}
    # n counts the (prompt, position) cells with a value at some site (correct_only leaves filtered prompts NaN)
    valid = np.zeros(labels.shape, bool)
    for v in out:
        valid |= ds[v].notnull().any([d for d in ds[v].dims if d not in ("prompt", "position")]).transpose(
            "prompt", "position").values
    counts = []
    for keep in groups.values():
        masks = [xr.DataArray((labels == r) & keep[:, None] & valid, dims=("prompt", "position")) for r in order]
        counts.append([int(m.sum()) for m in masks])
        for v in out:
            out[v].append(xr.concat([ds[v].where(m).mean(("prompt", "position")) for m in masks], role_index))
    data = {}
    for v, per_group in out.items():
        da = xr.concat(per_group, pd.Index(np.array(list(groups), dtype=object), name="operator")) if by_operator \
            else per_group[0]
        da.attrs = {**ds[v].attrs, "long_name": f"mean {ds.attrs.get('metric')} of patching {v} per token role"}
        data[v] = da
    result = xr.Dataset(data, attrs=_provenance_of(ds))
    n = (("operator", "role"), np.array(counts)) if by_operator else ("role", counts[0])
    return result.assign_coords(n=n)


def late_mlp_share(ds: xr.Dataset, vmin: float = 0.1) -> xr.DataArray:
    """The share of the MLPs' effect that the mid-late MLPs carry at the last token: the number
    lm-arithmetic's all-token heatmap prints ("Contribution of mid-late MLPs at last token",
    ``plot-all-tokens.ipynb``, JSON lines 212-224).

    ``ds``: a ``positions="all"`` patching result with ``mlp`` (and ``embed``, as the repository's
    ``intervention_loc=layer`` rows hold the embeddings first). Per token role and row (the
    embeddings, then each MLP layer), the mean effect m (:func:`by_token_role`); for the ratio
    metrics (``stolfo_ie``, ``relative_source_increase``) values at or below ``vmin`` are set to
    ``vmin``, as the heatmap's log scale does; then Σ log(m + 1) over the upper half of the rows
    at the last token, divided by the same sum over every role and row. The exemplars
    (``shots``) are left out: the repository's runs start after them. Returns a 0-d DataArray
    (``checkpoint`` in a sweep), units 1."""
    if ds.attrs.get("positions") != "all" or "mlp" not in ds:
        raise UsageError("late_mlp_share needs a positions='all' result with the mlp site (--positions all --site "
                         "embed --site mlp)")
    roles = by_token_role(ds)
    rows = roles["mlp"].dropna("layer", how="all")
    if "embed" in roles:
        rows = xr.concat([roles["embed"].sel(layer=[-1]), rows.sel(layer=rows.layer >= 0)], "layer")
    rows = rows.sel(role=[r for r in rows.role.values if r != "shots"])
    if "last" not in rows.role.values:
        raise UsageError("this result has no cell at the last token with a value")
    if ds.attrs.get("metric") in ("stolfo_ie", "relative_source_increase"):
        rows = rows.where(rows > vmin, vmin)
    logged = np.log(rows + 1)
    late = logged.sel(role="last").isel(layer=slice(rows.sizes["layer"] // 2, None)).sum("layer")
    share = late / logged.sum(("role", "layer"))
    share.attrs = {"long_name": "share of Σ log(IE + 1) over roles and layers carried by the upper half of the "
                                "layers at the last token", "units": "1"}
    return share.drop_vars([c for c in share.coords if c not in share.dims]).rename("late_mlp_share")


def drop_mult_by_one(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without the pairs whose query multiplies by one (an operand 1, in the base or the
    source prompt, of a × query): lm-arithmetic's ``mult_by_1_filter``
    (``notebooks_utils.py:286-297``), which keeps multiplications by one out of its averages
    (there the answer is the other operand, copied rather than computed). Operands are read
    from each prompt's query (its last problem, after the exemplars), whatever the punctuation,
    in digits or words; the repository looks for a "1" among the query's space-separated words,
    so it misses "7 times 1? A:" (its question templates, ``intervention.py:232-235``) and
    "one" written as a word. Works on any arithmetic patching result (prompt-level variables and
    coordinates are filtered alike)."""
    from ..tasks.arithmetic import multiplies_by_one

    if ds.attrs.get("task") != "arithmetic":
        raise UsageError(f"drop_mult_by_one filters arithmetic results; this is {ds.attrs.get('task')}")
    keep = np.array([not (multiplies_by_one(str(b)) or multiplies_by_one(str(s)))
                     for b, s in zip(ds["base"].values, ds["source"].values)], bool)
    return ds.isel(prompt=np.flatnonzero(keep))


def unit_overlap(*results: xr.Dataset, top_k: int = 100, site: str | None = None,
                 by_operator: bool = False) -> xr.Dataset:
    """How many of the ``top_k`` units with the largest mean effect two groups of prompts share:
    lm-arithmetic's neuron-overlap analyses (``notebooks_utils.py:452-497``).

    ``results``: one or more patching results with a unit site (``mlp_dim``/``embed_dim``, the
    repository's single "neurons", ranked together when a result holds both, as its
    ``intervention_loc=all`` does: ``site="embed_dim+mlp_dim"``; also ``neuron``, or the head
    sites) at the last position (from a ``positions="all"`` result, each prompt's last token),
    without a ``checkpoint`` dim (select one first). Each result is one group of prompts, or with ``by_operator`` an
    arithmetic result is one group per operator of its queries (others stay whole): one result
    split by operator is ``compute_neuron_overlap_for_operations``, two whole results
    ``compute_neuron_overlap_single``, and a whole result beside an arithmetic one split by
    operator ``compute_neuron_overlap``. A group's top units are the (layer, unit) cells of
    ``site`` with the largest mean effect over its prompts (signed, as the repository sorts
    ``effect_mean``; NaN prompts, e.g. ``correct_only``'s, skipped; ties go to the lower layer and
    unit), over every layer the result holds (one layer: the repository's ``single_layer_N``).
    ``by_operator`` splits every arithmetic result given: a whole arithmetic result beside one
    split by operator is not offered.

    Returns a Dataset: ``overlap`` (group, other): the share of ``group``'s top_k units that are
    among ``other``'s (|A ∩ B| / top_k, 1 on the diagonal); ``top_layer``, ``top_unit`` and
    ``top_effect`` (group, rank): the units themselves, largest first; coordinate ``n``
    (group): the prompts averaged; ``attrs`` ``site``, ``unit`` (the unit's dim: ``dimension``,
    ``neuron``, ``head``) and ``top_k``. Group labels are the result's task ("arithmetic +" per
    operator), numbered where two results share a task.
    """
    import pandas as pd

    if not results:
        raise UsageError("give at least one patching result")
    top_k = checked_int("top_k", top_k, 1)
    site = _unit_site(results, site)
    used = {str(ds.attrs.get("metric")) for ds in results}
    if len(used) > 1:
        raise UsageError(f"these results rank units by different metrics ({', '.join(sorted(used))}): patch "
                         f"them with the same --metric")
    sweeps = [i for i, ds in enumerate(results) if "checkpoint" in ds.dims]
    if sweeps:
        raise UsageError(f"result {sweeps[0] + 1} is a checkpoint sweep: patch one revision (--revision R), or in "
                         f"Python select one, e.g. ds.isel(checkpoint=-1)")
    labels, means, counts = [], [], []
    tasks = [str(ds.attrs.get("task", f"result {i}")) for i, ds in enumerate(results)]
    for i, ds in enumerate(results):
        name = tasks[i] if tasks.count(tasks[i]) == 1 else f"{tasks[i]} ({i + 1})"
        da = _last_token(ds, site)  # (prompt, layer, unit)
        groups = {"": np.ones(ds.sizes["prompt"], bool)}
        if by_operator and ds.attrs.get("task") == "arithmetic":
            groups = _operator_groups(ds, f"result {i + 1}")
        for op, keep in groups.items():
            sub = da.isel(prompt=np.flatnonzero(keep))
            labels.append(f"{name} {op}".strip())
            means.append(sub.mean("prompt"))  # (layer, unit), NaN where no prompt has a value
            counts.append(int(sub.notnull().any([d for d in sub.dims if d != "prompt"]).sum()))
    unit = "dimension" if site == DIMENSIONS else unit_dim(site)
    first = means[0]
    for label, m in zip(labels[1:], means[1:]):
        if not (np.array_equal(m["layer"].values, first["layer"].values) and m.sizes[unit] == first.sizes[unit]):
            raise UsageError(f"group {label!r} covers layers {m['layer'].values.tolist()} and {m.sizes[unit]} {unit}s, "
                             f"group {labels[0]!r} layers {first['layer'].values.tolist()} and {first.sizes[unit]}: "
                             f"patch the same --layer list of the same model")
    valued = [int(np.isfinite(m.values).sum()) for m in means]
    k = int(np.argmin(valued))
    if valued[k] == 0:
        raise UsageError(f"group {labels[k]!r} has no prompt with a value (correct_only left none): leave it out, or "
                         f"patch without --correct-only")
    if top_k > valued[k]:
        raise UsageError(f"top_k={top_k} is more than the {valued[k]} {site} units with a value in group "
                         f"{labels[k]!r}")
    tops = []
    for m in means:
        flat = np.nan_to_num(m.values, nan=-np.inf).ravel()
        tops.append(np.argsort(-flat, kind="stable")[:top_k])
    sets = [set(t.tolist()) for t in tops]
    overlap = np.array([[len(a & b) / top_k for b in sets] for a in sets])
    layer_of, unit_of = (np.array(x) for x in np.unravel_index(np.stack(tops), first.shape))
    index = pd.Index(np.array(labels, dtype=object), name="group")
    layer_values, unit_values = first["layer"].values, first[unit].values
    joined = {key: ", ".join(dict.fromkeys(str(ds.attrs[key]) for ds in results if key in ds.attrs))
              for key in ("task", "model", "revision") if any(key in ds.attrs for ds in results)}
    out = xr.Dataset({
        "overlap": (("group", "other"), overlap, {"long_name": f"share of the group's top {top_k} {site} units "
                                                              f"among the other's", "units": "1"}),
        "top_layer": (("group", "rank"), layer_values[layer_of], {"long_name": "layer of the top units"}),
        "top_unit": (("group", "rank"), unit_values[unit_of], {"long_name": f"{unit} index of the top units"}),
        "top_effect": (("group", "rank"), np.stack([m.values.ravel()[t] for m, t in zip(means, tops)]),
                       {"long_name": f"mean {results[0].attrs.get('metric')} of the top units",
                        "units": metrics.units(str(results[0].attrs.get("metric")))}),
    }, coords={"group": index, "other": ("other", np.array(labels, dtype=object)), "rank": np.arange(top_k),
               "n": ("group", counts)},
        attrs={**_provenance_of(results[0]), **joined, "site": site, "unit": unit, "top_k": top_k})
    return out


#: The repository's single "neurons" (``intervention_loc=all``): the embeddings' and every MLP's
#: output dimensions, ranked together (embeddings at layer -1, where ``mlp_dim`` has no value).
DIMENSIONS = "embed_dim+mlp_dim"


def _unit_site(results: tuple[xr.Dataset, ...], site: str | None) -> str:
    """The unit-site variable the overlap ranks: ``site`` (checked in every result), or the one
    unit site the first result holds, or both dimension sites (:data:`DIMENSIONS`)."""
    from ..results.io import site_variables

    found = [v for v in site_variables(results[0]) if unit_dim(v)]
    if site is None and sorted(found) == ["embed_dim", "mlp_dim"]:
        site = DIMENSIONS
    if site == DIMENSIONS:
        missing = [i for i, ds in enumerate(results) if not {"embed_dim", "mlp_dim"} <= set(ds.data_vars)]
        if missing:
            raise UsageError(f"result {missing[0] + 1} lacks embed_dim or mlp_dim: patch both sites (--site embed_dim "
                             f"--site mlp_dim) or choose one with site=")
        return site
    if site is not None:
        site = var_name(site) if var_name(site) in results[0] else site
        missing = [i for i, ds in enumerate(results) if site not in ds or not unit_dim(site)]
        if missing:
            raise UsageError(f"result {missing[0] + 1} has no unit site {site!r}; its unit sites: "
                             f"{', '.join(v for v in site_variables(results[missing[0]]) if unit_dim(v)) or 'none'}")
        return site
    if len(found) != 1:
        raise UsageError("unit_overlap ranks single units: patch a unit site (--site mlp_dim, as lm-arithmetic's "
                         "'neurons', or neuron/head)" if not found else
                         f"this result holds several unit sites ({', '.join(found)}): choose one with site=")
    return _unit_site(results, found[0])  # and check the other results hold it


def at_last_token(da: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """``da`` (a variable of patching result ``ds``, or a selection of one) at each prompt's own
    last token: the ``position`` dim dropped (a last-position result has one position)."""
    if da.sizes["position"] > 1:
        return da.isel(position=xr.DataArray(ds["n_tokens"].values - 1, dims="prompt"))
    return da.isel(position=0)


def _last_token(ds: xr.Dataset, v: str) -> xr.DataArray:
    """``ds[v]`` at each prompt's last token: (prompt, layer, unit); :data:`DIMENSIONS` joins the
    embeddings' dimensions (layer -1) and the MLPs' (the other layers)."""
    return at_last_token(ds["embed_dim"].combine_first(ds["mlp_dim"]) if v == DIMENSIONS else ds[v], ds)


def _operator_groups(ds: xr.Dataset, where: str) -> dict[str, np.ndarray]:
    """Operator -> a bool mask of the pairs whose query has it (read from the base prompt's
    words), or a one-line error naming ``where`` when no prompt has an operator."""
    from ..tasks.arithmetic import operator_of, text_words

    ops = np.array([operator_of(text_words(str(b))) for b in ds["base"].values], dtype=object)
    groups = {o: ops == o for o in sorted(set(ops) - {""})}
    if not groups:
        raise UsageError(f"{where}: no operator found in its prompts; use by_operator=False")
    return groups
