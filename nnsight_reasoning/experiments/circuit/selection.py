"""Circuits from edge scores (top-n, greedy, pruning to input-to-logits paths), how circuits
compare across checkpoints (Jaccard overlap, stability), and the size a figure shows.
"""
from __future__ import annotations

import heapq

import numpy as np
import xarray as xr

from ...backend import graph
from ...errors import UsageError

SELECTIONS = {"topn": "top-n edges by |score|, pruned to input-to-logits paths",
              "greedy": "greedy from the logits up by |score| (EAP-IG apply_greedy), pruned to input-to-logits paths"}


def extract(score: np.ndarray | xr.DataArray, n_edges: int, selection: str = "topn") -> np.ndarray:
    """(upstream, downstream) bool: the circuit of ``n_edges`` edges (NaN score = no edge) by
    ``selection`` (``"topn"``: largest |score|; ``"greedy"``: :func:`greedy`), pruned to those on
    a path from the input to the logits."""
    s = np.nan_to_num(np.abs(np.asarray(score, dtype=float)), nan=-1.0)
    if selection == "greedy":
        return prune(greedy(s, n_edges))
    if selection != "topn":
        raise UsageError(f"selection must be one of {', '.join(SELECTIONS)} (got {selection!r})")
    order = np.argsort(-s, axis=None, kind="stable")[: min(n_edges, int((s >= 0).sum()))]
    keep = np.zeros(s.shape, bool)
    keep.flat[order] = True
    return prune(keep)


def greedy(weight: np.ndarray, n_edges: int) -> np.ndarray:
    """(upstream, downstream) bool, unpruned: EAP-IG's greedy selection (``Graph.apply_greedy``,
    absolute scores). The logits start in the circuit; n times, the edge of largest ``weight``
    (|score|; negative = no edge) among those entering a node in the circuit is added, and a
    newly added upstream node brings its incoming edges into the candidates. Ties go to the
    lower flat index."""
    n_up, n_down = weight.shape
    inputs = _inputs_of(n_up, n_down)
    heap: list[tuple[float, int]] = []

    def enter(u: int) -> None:  # the edges into node u's inputs become candidates
        for v in inputs[u]:
            for w in np.nonzero(weight[:, v] >= 0)[0]:
                heapq.heappush(heap, (-float(weight[w, v]), int(w) * n_down + v))

    keep = np.zeros(weight.shape, bool)
    in_circuit = np.zeros(n_up, bool)
    in_circuit[0] = True  # the input has no incoming edges
    enter(n_up)  # the logits
    for _ in range(n_edges):
        if not heap:
            break
        _, flat = heapq.heappop(heap)
        u, v = divmod(flat, n_down)
        keep[u, v] = True
        if not in_circuit[u]:
            in_circuit[u] = True
            enter(u)
    return keep


def _inputs_of(n_up: int, n_down: int) -> list[list[int]]:
    """Per upstream node (and the logits, index n_up), its inputs on the downstream axis: one
    per node in the plain graph, a head's q, k and v in the q/k/v graph."""
    inputs: list[list[int]] = [[] for _ in range(n_up + 1)]
    for v, u in enumerate(graph.downstream_nodes(n_up, n_down).tolist()):
        inputs[u].append(v)
    return inputs


def prune(edges: np.ndarray) -> np.ndarray:
    """Edges of ``edges`` whose upstream node is reached from the input and whose downstream
    node reaches the logits, through edges of ``edges``. Both axes are in computation order
    (a node's inputs come after every node feeding them), so one pass each way suffices."""
    n_up, n_down = edges.shape
    node = graph.downstream_nodes(n_up, n_down).numpy()  # the node each downstream input belongs to
    inputs = _inputs_of(n_up, n_down)
    reached = np.zeros(n_up + 1, bool)
    reached[0] = True
    for u in range(1, n_up):
        reached[u] = any(bool((edges[:, v] & reached[:n_up]).any()) for v in inputs[u])
    reaches = np.zeros(n_up + 1, bool)
    reaches[n_up] = True  # the logits
    for u in range(n_up - 1, 0, -1):
        reaches[u] = bool(reaches[node[edges[u]]].any())
    return edges & reached[:n_up, None] & reaches[node][None, :]


def _circuits(ds: xr.Dataset, n_edges: int) -> list[np.ndarray]:
    """Each checkpoint's ``n_edges``-edge circuit, re-extracted from its ``score`` by the result's
    ``selection``."""
    selection = str(ds.attrs.get("selection", "topn"))
    return [extract(ds["score"].isel(checkpoint=k).values, n_edges, selection) for k in range(ds.sizes["checkpoint"])]


def overlap(ds: xr.Dataset, n_edges: int) -> xr.DataArray:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of the checkpoints' circuits of ``n_edges`` edges
    (re-extracted from each checkpoint's ``score``), dims (checkpoint, checkpoint_b)."""
    if "checkpoint" not in ds.dims:
        raise UsageError("circuit overlap compares checkpoints: run nr.circuit(..., revisions=...) first")
    sets = _circuits(ds, n_edges)
    jac = np.array([[(a & b).sum() / max(1, (a | b).sum()) for b in sets] for a in sets])
    names = ds["checkpoint"].values
    return xr.DataArray(jac, dims=("checkpoint", "checkpoint_b"), coords={"checkpoint": names, "checkpoint_b": names},
                        name="jaccard", attrs={"long_name": f"Jaccard similarity of {n_edges}-edge circuits",
                                               "units": "1", "n_edges": n_edges})


def stability(ds: xr.Dataset, n_edges: int | None = None, alpha: float = 0.5) -> xr.Dataset:
    """Tigges et al.'s circuit-stability measures over a checkpoint sweep (their
    ``utils/data_processing.py``). The circuits compared: with ``n_edges``, each checkpoint's
    ``n_edges``-edge circuit re-extracted from its ``score`` as :func:`overlap` does; without,
    each checkpoint's own smallest faithful circuit where the sweep ran the search
    (``min_fraction``: ``min_circuit``, as the repository saves the graph its search chose per
    checkpoint, ``get_circuits_over_time.py:471-476``; where the search found none, the circuit
    of the search's ``stop`` size, as the repository's search then returns its end), else
    the size :func:`chosen_size` picks for every checkpoint.

    Per ``transition`` (checkpoint k → k + 1, the sweep's order):
    ``jaccard`` (|A ∩ B| / |A ∪ B|), ``weighted_jaccard`` (Σ min / Σ max of |score| over the two
    circuits' edges, 0 for an edge outside one), ``ewma_change`` (an exponentially weighted mean
    of 1 − weighted_jaccard, weight ``alpha`` on the newest, starting from 0: ``compute_ewma_
    weighted_jaccard_similarity``), ``additions``/``deletions``/``ged`` (edges entering, leaving,
    both: the graph edit distance ``compute_ged``), ``weighted_additions``/``weighted_deletions``/
    ``weighted_ged`` (the signed scores of those edges summed, ``compute_weighted_ged``) and, over
    every edge of the graph, ``summed_increases``/``summed_decreases``/``summed_absolute_change``
    of the scores (``compute_gtd``). Per ``checkpoint``: ``jaccard_to_final`` and
    ``weighted_jaccard_to_final`` against the last checkpoint (``…_to_reference``)."""
    if "checkpoint" not in ds.dims or ds.sizes["checkpoint"] < 2:
        raise UsageError("circuit stability compares checkpoints: run nr.circuit(..., revisions=...) over two or more")
    if not 0 < alpha <= 1:
        raise UsageError(f"alpha must be in (0, 1] (got {alpha!r})")
    score = np.nan_to_num(ds["score"].values.astype(float))  # (checkpoint, upstream, downstream); NaN: no edge
    own = n_edges is None and "min_circuit" in ds and "checkpoint" in ds["min_circuit"].dims
    if own:
        sets = [selected_circuit(ds.isel(checkpoint=k)).values.astype(bool) for k in range(ds.sizes["checkpoint"])]
        n = -1
    else:
        n = chosen_size(ds) if n_edges is None else int(n_edges)
        sets = _circuits(ds, n)
    weights = [np.where(c, np.abs(sc), 0.0) for c, sc in zip(sets, score)]

    def jaccard(a, b):
        union = (a | b).sum()
        return (a & b).sum() / union if union else 0.0

    def weighted(a, b):
        top = np.maximum(a, b).sum()
        return np.minimum(a, b).sum() / top if top else 0.0

    pairs = list(zip(range(len(sets) - 1), range(1, len(sets))))
    wj = np.array([weighted(weights[i], weights[j]) for i, j in pairs])
    ewma, prev = [], 0.0
    for x in 1 - wj:
        prev = alpha * x + (1 - alpha) * prev
        ewma.append(prev)
    added = [sets[j] & ~sets[i] for i, j in pairs]
    removed = [sets[i] & ~sets[j] for i, j in pairs]
    change = [score[j] - score[i] for i, j in pairs]
    names = [str(c) for c in ds["checkpoint"].values]
    t = ("transition",)
    per = {
        "jaccard": (t, [jaccard(sets[i], sets[j]) for i, j in pairs], {"long_name": "Jaccard similarity"}),
        "weighted_jaccard": (t, wj, {"long_name": "Σ min |score| / Σ max |score| over the two circuits"}),
        "ewma_change": (t, ewma, {"long_name": f"EWMA (alpha {alpha}) of 1 − weighted Jaccard"}),
        "additions": (t, [int(a.sum()) for a in added], {"long_name": "edges entering the circuit"}),
        "deletions": (t, [int(r.sum()) for r in removed], {"long_name": "edges leaving the circuit"}),
        "weighted_additions": (t, [float(score[j][a].sum()) for (_, j), a in zip(pairs, added)],
                               {"long_name": "summed scores of the entering edges", "units": "logits"}),
        "weighted_deletions": (t, [float(score[i][r].sum()) for (i, _), r in zip(pairs, removed)],
                               {"long_name": "summed scores of the leaving edges", "units": "logits"}),
        "summed_increases": (t, [float(c[c > 0].sum()) for c in change], {"units": "logits"}),
        "summed_decreases": (t, [float(-c[c < 0].sum()) for c in change], {"units": "logits"}),
    }
    out = xr.Dataset(per, coords={"transition": [f"{names[i]}→{names[j]}" for i, j in pairs],
                                  "from_checkpoint": (t, [names[i] for i, _ in pairs]),
                                  "to_checkpoint": (t, [names[j] for _, j in pairs]), "checkpoint": names})
    out["ged"] = out["additions"] + out["deletions"]
    out["weighted_ged"] = out["weighted_additions"] + out["weighted_deletions"]
    out["summed_absolute_change"] = out["summed_increases"] + out["summed_decreases"]
    out["jaccard_to_final"] = ("checkpoint", [jaccard(c, sets[-1]) for c in sets])
    out["weighted_jaccard_to_final"] = ("checkpoint", [weighted(w, weights[-1]) for w in weights])
    out.attrs.update(n_edges=n, alpha=alpha, source_method=str(ds.attrs.get("method", "")),
                     circuits="min_circuit" if own else "n_edges")
    if own:  # n_edges -1: each checkpoint's own size, here
        out["min_size"] = ("checkpoint", ds["min_size"].values.astype(int),
                           {"long_name": "edges (before pruning) of the checkpoint's smallest faithful circuit"})
    return out


def selected_circuit(ds: xr.Dataset) -> xr.DataArray:
    """The circuit a result stands for, as an (upstream, downstream) 0/1 DataArray, per
    checkpoint in a sweep ((checkpoint, upstream, downstream)): the searched smallest faithful
    circuit (``min_fraction``: ``min_circuit``, the graph circuits-over-time saves per checkpoint,
    ``get_circuits_over_time.py:471-476``), or where the search found none the circuit of its
    ``stop`` size, as the repository's search then returns its end; without a search, the size
    :func:`chosen_size` picks for that checkpoint (the smallest measured size whose faithfulness
    reaches 0.8 there, else the largest). What ``circuit=`` of ``ioi_components``,
    ``backup_heads`` and ``greater_than_components`` takes (a sweep's gives each checkpoint its
    own)."""
    if "model" in ds.dims:
        raise UsageError("this circuit result holds several models; pick one first: ds.sel(model=NAME)")
    if "checkpoint" in ds.dims:
        per = [selected_circuit(ds.isel(checkpoint=k)) for k in range(ds.sizes["checkpoint"])]
        return xr.concat(per, "checkpoint").assign_coords(checkpoint=ds["checkpoint"].values)
    if "min_circuit" in ds:
        if int(ds["min_size"]) >= 0:
            edges = ds["min_circuit"]
        else:
            from ...results.io import list_attr

            stop = int(list_attr(ds.attrs["search"])[1])  # the search's (start, stop, step)
            keep = extract(ds["score"].values, stop, str(ds.attrs.get("selection", "topn")))  # pruned
            edges = ds["min_circuit"].copy(data=keep.astype(np.int8))
    elif ds.sizes.get("size", 0):
        edges = ds["in_circuit"].sel(size=chosen_size(ds))
    else:
        raise UsageError("this circuit result holds no circuit (it was run with sizes=()); rerun with sizes or "
                         "min_fraction")
    edges = edges.drop_vars([c for c in edges.coords if edges[c].ndim == 0])  # a sweep's per-checkpoint values
    return edges.astype(np.int8).rename("circuit").assign_attrs(long_name="edge in the circuit")


def chosen_size(ds: xr.Dataset) -> int:
    """The circuit size a figure or summary shows: the smallest whose faithfulness reaches 0.8
    on the (last) checkpoint, else the largest measured."""
    from ...results.io import last_checkpoint

    last = last_checkpoint(ds)
    if last.sizes["size"] == 0:
        raise UsageError("this result has no circuits (it was run with sizes=()); rerun with --sizes")
    ok = last["size"].values[last["faithfulness"].values >= 0.8]
    return int(ok[0]) if len(ok) else int(last["size"].values[-1])
