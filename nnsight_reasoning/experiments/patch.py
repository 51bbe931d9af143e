"""Activation patching / causal mediation analysis (Stolfo et al. 2023).

For every prompt pair, site, layer, position (and head for ``head``), the base prompt is
run with that one activation replaced by its value on the source prompt, and the metric
compares the answer scores with the clean base run.

Batching: one forward pass takes ``p`` source rows and ``p`` clean base rows as input, and
grows to ``p·(u+2) <= batch_size`` rows (``u`` patch units per pair): each patched copy of a
base row joins the batch at the layer of its site, because below it the copy would equal its
base row. A sweep over all layers thus computes about half the layer-rows of one full
forward per patch. Each copy reads its activation from its own pair's source row *in the
same pass*, so source activations never leave the model (or the NDIF server). Pairs are
grouped by token length, so no padding is ever used.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend, metrics
from ..errors import UsageError
from ..runner import Run, experiment
from ..sites import POSITIONS, check_layers, check_sites, dims, var_name
from ..tasks import PromptPair, PromptPairs, ReasoningPrompts
from ..tasks.base import group_by_length


METHODS = {"exact": "activation_patching", "attribution": "attribution_patching"}


@experiment("activation_patching", batch_size=512)
def patch(
    run: Run,
    pairs: PromptPairs | Sequence[PromptPair],
    sites: Sequence[str] | str = ("mlp", "attn"),
    positions: str = "last",
    *,
    metric: str = "stolfo_ie",
    method: str = "exact",
    ig_steps: int = 1,
    layers: Sequence[int] | None = None,
) -> xr.Dataset:
    """Activation-patching sweep: the effect of each site's activation on the answer.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model` (or any nnsight ``TransformersModel``), or
        a name/directory to load.
    pairs : aligned prompt pairs, e.g. ``nr.tasks.arithmetic(...)``.
    sites : any of "mlp", "attn", "resid", "head".
    positions : "last" (the final prompt token) or "all" (every token).
    metric : "stolfo_ie" (default) or "logit_diff" (see :mod:`nnsight_reasoning.metrics`).
    method : "exact" (activation patching) or "attribution" (attribution patching: the
        gradient estimate of the same values from one forward + backward pass per batch).
    ig_steps : attribution only: 1 = gradient at the base run; m > 1 = integrated gradients
        over m interpolations of the input embeddings (more accurate, m extra rows per pair).
    layers : subset of layers; default all.

    Batching: one forward pass takes ``p`` source rows and ``p`` clean base rows and grows
    to ``p·(u+2) <= batch_size`` rows (``u`` patches per pair): each patched copy of a base
    row joins the batch at the layer of its site, because below it the copy would equal its
    base row; each copy reads its activation from its own pair's source row in the same pass.

    Returns
    -------
    xarray.Dataset with one variable per site, dims ``(prompt, layer, position)``; the
    ``head`` site is stored as variable ``heads`` with an extra ``head`` dim; values of
    ``metric``; ``clean_p_base`` and ``clean_p_source`` along ``prompt``. With
    ``positions="last"`` and prompts of different lengths, the single ``position``
    coordinate is -1 ("each prompt's last token").

    Examples
    --------
    >>> ds = nr.patch(nr.load_model(), nr.tasks.arithmetic(n_prompts=8), sites=["mlp"])
    >>> ds.mlp.mean("prompt")
    """
    sites = check_sites(sites)
    if isinstance(pairs, ReasoningPrompts):
        raise UsageError(f"{pairs.task} prompts are labelled single prompts (for attention/probe); patching needs "
                         f"pairs, e.g. nr.tasks.kth_smallest_pairs(...)")
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)} (got {positions!r})")
    if metric not in metrics.METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from: {', '.join(metrics.METRICS)}")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if not isinstance(ig_steps, int) or ig_steps < 1 or (ig_steps > 1 and method != "attribution"):
        raise UsageError(f"ig_steps must be an integer >= 1, and > 1 only with method='attribution' (got {ig_steps})")
    if method == "exact" and run.batch_size < 3:
        raise UsageError(f"batch_size must be >= 3 (got {run.batch_size})")
    model = run.model
    d = dims(model)
    layer_list = check_layers(list(layers) if layers is not None else None, d["n_layers"])
    pair_list = list(pairs)
    if not pair_list:
        raise UsageError("no prompt pairs given")
    tok = tokenize_pairs(model, pair_list)
    lengths = [len(b) for b in tok.base]
    t_max = max(lengths)
    pos_coord = list(range(t_max)) if positions == "all" else [t_max - 1 if len(set(lengths)) == 1 else -1]
    shape = (len(pair_list), len(layer_list), len(pos_coord))
    grid = Grid(sites, layer_list, positions, d["n_heads"])
    if method == "exact":
        values, clean = _exact(run, tok, grid, metric, shape)
    else:
        values, clean = _attribution(run, tok, grid, metric, ig_steps, shape)
    attrs = {"method": METHODS[method], "metric": metric, "positions": positions}
    if method == "attribution":
        attrs["ig_steps"] = ig_steps
    tokens = _token_strings(model, tok.base, positions, t_max)
    return _dataset(pair_list, values, clean, layer_list, pos_coord, d["n_heads"], tokens, lengths, attrs, metric)


@dataclass(frozen=True)
class Tokens:
    """A run's pairs as token ids: ``base``, ``source`` (per pair) and ``answers`` ([base, source])."""

    base: list[list[int]]
    source: list[list[int]]
    answers: list[list[int]]

    def rows(self, pairs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The input rows of a pass over ``pairs`` (equal length): their source rows, then their
        base rows, (2p, T); and every row's [base, source] answer ids, (2p, 2)."""
        return (torch.tensor([self.source[i] for i in pairs] + [self.base[i] for i in pairs]),
                torch.tensor([self.answers[i] for i in pairs] * 2))


@dataclass(frozen=True)
class Grid:
    """What a sweep patches: sites (forward order), layers, "last"/"all" positions, heads per layer."""

    sites: list[str]
    layers: list[int]
    positions: str
    n_heads: int

    def units(self, length: int) -> list["Unit"]:
        """Every patch of one prompt of ``length`` tokens, in forward order per pair."""
        pos = [(length - 1, 0)] if self.positions == "last" else [(p, p) for p in range(length)]
        return [Unit(s, li, p, pi, h) for s in self.sites for li in range(len(self.layers)) for p, pi in pos
                for h in (range(self.n_heads) if s == "head" else [None])]

    def empty(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        return {s: np.full(shape + ((self.n_heads,) if s == "head" else ()), np.nan) for s in self.sites}


@dataclass(frozen=True)
class Unit:
    """One patch of a pair: ``site`` at layer index ``li``, token ``position`` (stored at index
    ``pi`` of the result's position axis), ``head`` (None unless the site is ``head``)."""

    site: str
    li: int
    position: int
    pi: int
    head: int | None = None


@dataclass(frozen=True)
class PatchPass:
    """One forward pass of an exact sweep: ``pairs`` (indices) and the ``units`` each is patched at."""

    pairs: list[int]
    units: list[Unit]


def plan_passes(lengths: list[int], grid: Grid, batch_size: int) -> list[PatchPass]:
    """Passes of equal-length pairs: each pass holds ``p`` pairs' source and base rows plus one
    patched copy per (pair, unit), at most ``batch_size`` rows in all."""
    passes = []
    for idx in group_by_length(lengths):
        units = grid.units(lengths[idx[0]])
        per_pair = min(len(units), batch_size - 2)
        n_pairs = max(1, batch_size // (per_pair + 2))
        for u0 in range(0, len(units), per_pair):
            for p0 in range(0, len(idx), n_pairs):
                passes.append(PatchPass(idx[p0:p0 + n_pairs], units[u0:u0 + per_pair]))
    return passes


def n_forward_passes(n_pairs: int, n_units: int, batch_size: int = 512) -> int:
    """Forward passes of a sweep over ``n_pairs`` equal-length pairs with ``n_units`` patches each."""
    per_pair = min(n_units, batch_size - 2)
    return math.ceil(n_units / per_pair) * math.ceil(n_pairs / max(1, batch_size // (per_pair + 2)))


# --------------------------------------------------------------------------- exact
def _exact(run: Run, tok: Tokens, grid: Grid, metric: str, shape: tuple[int, ...]):
    values, clean = grid.empty(shape), np.full((shape[0], 2), np.nan)
    for job in run.steps(plan_passes([len(b) for b in tok.base], grid, run.batch_size), "patching"):
        rows, ans = tok.rows(job.pairs)
        patches, copies = _patches(job, grid.layers)
        s = run.call(backend.answer_scores, rows, ans, patches, rank=False)
        _fill(s.log_probs.double().numpy(), s.logits.double().numpy(), job.pairs, copies, metric, values, clean)
    return values, clean


@dataclass(frozen=True)
class Copies:
    """Where each patched copy of a pass sits and where its value goes, one entry per copy:
    its output ``row``, its ``pair``, the output row of its clean ``base`` row, and its unit."""

    row: np.ndarray
    pair: np.ndarray
    base: np.ndarray
    units: list[Unit]


def _patches(job: PatchPass, layers: list[int]) -> tuple[list[backend.Patch], Copies]:
    """The :class:`backend.Patch` per (site, layer) of a pass whose input rows are
    :meth:`Tokens.rows` (p source rows, then p clean base rows), and the :class:`Copies` of
    its output rows."""
    p = len(job.pairs)
    entries: dict[tuple, list[tuple[int, int, Unit]]] = defaultdict(list)
    for j, i in enumerate(job.pairs):
        for u in job.units:
            entries[(u.site, layers[u.li])].append((j, i, u))
    patches, pair, base, units = [], [], [], []
    for (site, layer), es in entries.items():
        heads = torch.tensor([u.head for _, _, u in es]) if site == "head" else None
        patches.append(backend.Patch(site, layer, torch.tensor([p + j for j, _, _ in es]),
                                     torch.tensor([j for j, _, _ in es]),
                                     torch.tensor([u.position for _, _, u in es]), heads))
        for j, i, u in es:
            pair.append(i)
            base.append(p + j)
            units.append(u)
    row = 2 * p + np.arange(len(units))
    return patches, Copies(row, np.array(pair, int), np.array(base, int), units)


def _fill(lp: np.ndarray, lg: np.ndarray, pairs: list[int], c: Copies, metric: str,
          values: dict[str, np.ndarray], clean: np.ndarray) -> None:
    """One pass's metric values into ``values[site][pair, layer, position(, head)]``."""
    p = len(pairs)
    clean[pairs] = np.exp(lp[p:2 * p])
    r, b = c.row, c.base
    if metric == "stolfo_ie":
        val = metrics.stolfo_ie(np.exp(lp[b, 0]), np.exp(lp[b, 1]), np.exp(lp[r, 0]), np.exp(lp[r, 1]))
    else:
        val = metrics.logit_diff(lg[b, 0], lg[b, 1], lg[r, 0], lg[r, 1])
    site = np.array([u.site for u in c.units])
    li, pi = np.array([u.li for u in c.units], int), np.array([u.pi for u in c.units], int)
    head = np.array([-1 if u.head is None else u.head for u in c.units], int)
    for s, v in values.items():
        m = site == s
        index = (c.pair[m], li[m], pi[m]) + ((head[m],) if s == "head" else ())
        v[index] = val[m]


# --------------------------------------------------------------------------- attribution
def _attribution(run: Run, tok: Tokens, grid: Grid, metric: str, ig_steps: int, shape: tuple[int, ...]):
    """Attribution patching: per pass of ``p`` pairs, one forward and backward over the p source
    rows, the p base rows and (integrated gradients) ``ig_steps``·p interpolated rows; the
    gradient of the metric's target dotted with (source − base) activations (see
    :func:`backend.attributions`). ``stolfo_ie``'s first-order estimate is half the change of
    log P(r2) − log P(r1)."""
    values, clean = grid.empty(shape), np.full((shape[0], 2), np.nan)
    units = [(s, layer) for s in grid.sites for layer in grid.layers]
    target = "logit_diff" if metric == "logit_diff" else "log_prob_diff"
    scale = 1.0 if metric == "logit_diff" else 0.5
    rows_per_pair = 2 + (ig_steps if ig_steps > 1 else 0)
    for job in run.steps(run.batches([len(b) for b in tok.base], rows_per_pair), "attribution"):
        rows, ans = tok.rows(job)
        attr, scores = run.call(backend.attributions, rows, ans, units, target, ig_steps=ig_steps)
        p, t = len(job), rows.shape[1]
        clean[job] = np.exp(scores.log_probs.double().numpy()[p:])
        for (s, layer), a in zip(units, attr):
            a = scale * a.numpy()  # (p, T) or (p, T, heads)
            li = grid.layers.index(layer)
            if grid.positions == "last":
                values[s][job, li, 0] = a[:, t - 1]
            else:
                values[s][job, li, :t] = a
    return values, clean


def tokenize_pairs(model, pairs: list[PromptPair]) -> Tokens:
    """Base ids, source ids and [base, source] answer ids per pair, or a one-line error for a
    misaligned pair, an out-of-vocabulary word or a multi-token answer."""
    base_ids = backend.tokenize(model, [p.base for p in pairs])
    source_ids = backend.tokenize(model, [p.source for p in pairs])
    unk = getattr(model.tokenizer, "unk_token_id", None)
    answers = []
    for k, (p, b, s) in enumerate(zip(pairs, base_ids, source_ids)):
        if len(b) != len(s):
            raise UsageError(f"pair {k} is misaligned for this model's tokenizer ({len(b)} vs {len(s)} tokens); "
                             f"generate pairs with tokenizer=model.tokenizer")
        if unk is not None and (unk in b or unk in s):
            raise UsageError(f"pair {k} has words outside this model's vocabulary: {p.base!r}")
        ids = [backend.answer_token(model, a) for a in (p.base_answer, p.source_answer)]
        if None in ids:
            bad = p.base_answer if ids[0] is None else p.source_answer
            raise UsageError(f"answer {bad!r} of pair {k} is not a single token for this model; "
                             f"generate pairs with tokenizer=model.tokenizer or lower max_n")
        answers.append(ids)
    return Tokens(base_ids, source_ids, answers)


def _token_strings(model, base_ids, positions, t_max):
    tok = model.tokenizer
    if positions == "last":
        return [[tok.convert_ids_to_tokens(b[-1])] for b in base_ids]
    return [tok.convert_ids_to_tokens(b) + [""] * (t_max - len(b)) for b in base_ids]


def _dataset(pairs, values, clean, layers, pos_coord, n_heads, tokens, lengths, attrs, metric) -> xr.Dataset:
    coords: dict[str, Any] = {
        "prompt": np.arange(len(pairs)),
        "layer": np.array(layers),
        "position": np.array(pos_coord),
        "base": ("prompt", [p.base for p in pairs]),
        "source": ("prompt", [p.source for p in pairs]),
        "base_answer": ("prompt", [p.base_answer for p in pairs]),
        "source_answer": ("prompt", [p.source_answer for p in pairs]),
        "n_tokens": ("prompt", np.array(lengths)),
        "token": (("prompt", "position"), np.array(tokens, dtype=object)),
    }
    data = {}
    for s, v in values.items():
        dims_ = ("prompt", "layer", "position") + (("head",) if s == "head" else ())
        data[var_name(s)] = (dims_, v, {"metric": metric, "long_name": f"{metric} of patching {s}" + (" (attribution estimate)" if attrs["method"] == METHODS["attribution"] else ""),
                              "units": "nats" if metric == "logit_diff" else "1"})
    if "head" in values:
        coords["head"] = np.arange(n_heads)
    data["clean_p_base"] = ("prompt", clean[:, 0], {"long_name": "P(base answer | base prompt)", "units": "1"})
    data["clean_p_source"] = ("prompt", clean[:, 1], {"long_name": "P(source answer | base prompt)", "units": "1"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """Clean performance and the ``top`` sites with the largest mean effect (at the last
    checkpoint of a sweep), with their median: ``stolfo_ie`` divides by probabilities that
    are tiny on a confident model, so a few prompts can dominate the mean."""
    from rich.table import Table

    from ..results.io import site_variables

    p = ds["clean_p_base"]
    sweep = "checkpoint" in ds.dims
    clean = (" · ".join(f"{c} {v:.3f}" for c, v in zip(ds["checkpoint"].values, p.mean("prompt").values))
             if sweep else f"{float(p.mean()):.3f}")
    head = (f"{ds.attrs['task']} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} pairs · "
            f"metric = {ds.attrs['metric']} · mean P(base answer) = {clean}")
    rows = []
    for v in site_variables(ds):
        da = ds[v].isel(checkpoint=-1) if "checkpoint" in ds[v].dims else ds[v]
        mean, median = da.mean("prompt"), da.median("prompt")
        for idx in np.ndindex(mean.shape):
            val = float(mean.values[idx])
            if np.isfinite(val):
                coords = {d: mean[d].values[i] for d, i in zip(mean.dims, idx)}
                rows.append((abs(val), val, float(median.values[idx]), v, coords))
    rows.sort(key=lambda r: -r[0])
    at = f" at checkpoint {ds['checkpoint'].values[-1]}" if sweep else ""
    table = Table(title=f"top {top} sites by |mean effect|{at}")
    for col in ("site", "layer", "position", "token", "head", "mean effect", "median"):
        table.add_column(col)
    for _, val, med, v, c in rows[:top]:
        pos = int(c["position"])
        j = list(ds["position"].values).index(pos)
        tokens = set(str(t) for t in ds["token"].values[:, j] if t)
        tok = tokens.pop() if len(tokens) == 1 else "(varies)"
        table.add_row(v, str(c["layer"]), "last" if pos == -1 else str(pos), tok,
                      str(c.get("head", "")), f"{val:+.4g}", f"{med:+.4g}")
    return [head, table]
