"""The circuit result: node names and coordinates, the Dataset and its summary."""
from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ...backend import graph
from ._scores import Shape
from .selection import chosen_size, overlap, stability


def node_table(n_layers: int, n_heads: int, qkv: bool = False) -> tuple[dict, dict]:
    """Coordinates of the upstream and downstream axes: names, layer, kind, head; downstream
    also ``input`` (a head's "q", "k" or "v" in the q/k/v graph, "qkv" in the plain one, "" for
    MLPs and the logits)."""
    up = {"name": ["input"], "layer": [-1], "kind": ["input"], "head": [-1]}
    down: dict[str, list] = {"name": [], "layer": [], "kind": [], "head": [], "input": []}
    for li in range(n_layers):
        for h in range(n_heads + 1):
            mlp = h == n_heads
            up["name"].append(f"m{li}" if mlp else f"a{li}.{h}")
            up["layer"].append(li)
            up["kind"].append("mlp" if mlp else "head")
            up["head"].append(-1 if mlp else h)
        for name, h, which in ([(f"a{li}.{h}<{g}>", h, g) for g in "qkv" for h in range(n_heads)] if qkv else
                               [(f"a{li}.{h}", h, "qkv") for h in range(n_heads)]) + [(f"m{li}", -1, "")]:
            down["name"].append(name)
            down["layer"].append(li)
            down["kind"].append("head" if h >= 0 else "mlp")
            down["head"].append(h)
            down["input"].append(which)
    for k, v in (("name", "logits"), ("layer", n_layers), ("kind", "logits"), ("head", -1), ("input", "")):
        down[k].append(v)
    return up, down


#: long names of the node axes and their coordinates (:func:`_node_coords`)
NODE_NAMES = {
    "upstream": "upstream node: input (embeddings), aL.H (head H of layer L) or mL (layer L's MLP)",
    "downstream": "downstream node: aL.H (head; aL.H<q>, <k>, <v>: its inputs in the q/k/v graph), mL (MLP) or logits",
    "upstream_layer": "the upstream node's layer (−1: input)",
    "upstream_kind": "the upstream node's kind: input, head or mlp",
    "upstream_head": "the upstream node's head index (−1: not a head)",
    "downstream_layer": "the downstream node's layer (n_layers: the logits)",
    "downstream_kind": "the downstream node's kind: head, mlp or logits",
    "downstream_head": "the downstream node's head index (−1: not a head)",
    "downstream_input": "the head input the edge enters: q, k or v (q/k/v graph), qkv (all three; plain graph), "
                        "'' (MLP, logits)",
}


def _node_coords(up: dict, down: dict) -> dict[str, Any]:
    """The node axes' coordinates (``upstream_layer``, ``downstream_kind``, …) from :func:`node_table`."""
    coords: dict[str, Any] = {}
    for axis, table in (("upstream", up), ("downstream", down)):
        for k in ("layer", "kind", "head", "input"):
            if k in table:
                coords[f"{axis}_{k}"] = (axis, np.array(table[k], dtype=int if k in ("layer", "head") else object),
                                         {"long_name": NODE_NAMES[f"{axis}_{k}"]})
    return coords


def _dataset(pairs, score, clean, corrupt, circuits, circuit_diff, sizes, shape: Shape, attrs) -> xr.Dataset:
    up, down = node_table(shape.n_layers, shape.n_heads, shape.qkv)
    coords: dict[str, Any] = {"upstream": ("upstream", np.array(up["name"], dtype=object),
                                           {"long_name": NODE_NAMES["upstream"]}),
                              "downstream": ("downstream", np.array(down["name"], dtype=object),
                                             {"long_name": NODE_NAMES["downstream"]}),
                              "size": ("size", np.array(sizes, dtype=int),
                                       {"long_name": "circuit size: edges selected before pruning"}),
                              "prompt": ("prompt", np.arange(len(pairs)), {"long_name": "prompt pair index"}),
                              "base": ("prompt", [p.base for p in pairs]),
                              "source": ("prompt", [p.source for p in pairs]),
                              "base_answer": ("prompt", [p.base_answer for p in pairs]),
                              "source_answer": ("prompt", [p.source_answer for p in pairs])}
    coords.update(_node_coords(up, down))
    gap = clean.mean() - corrupt.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        faith = (circuit_diff.mean(1) - corrupt.mean()) / gap
        frac = circuit_diff.mean(1) / clean.mean()
    node = graph.downstream_nodes(*shape.valid.shape).numpy()
    n_nodes = [len(set(np.nonzero(c)[0]) | set(node[np.nonzero(c)[1]])) for c in circuits]
    logit = {("logit_diff", 0): "logit(clean answer) − logit(corrupted answer)",
             ("prob_diff", 0): "P(clean answer) − P(corrupted answer)",
             ("logit_diff", 1): "mean logit of the correct answers − of the wrong ones",
             ("prob_diff", 1): "summed P of the correct answers − of the wrong ones"}[
        (attrs["metric"], attrs.get("answer_sets", 0))]
    unit = "1" if attrs["metric"] == "prob_diff" else "logits"
    data = {
        "score": (("upstream", "downstream"), score, {"long_name": f"estimated change of {logit} when the edge is "
                                                                  f"corrupted", "units": unit}),
        "clean_logit_diff": ("prompt", clean, {"long_name": f"{logit}, clean run", "units": unit}),
        "corrupt_logit_diff": ("prompt", corrupt, {"long_name": f"{logit}, corrupted run", "units": unit}),
        "circuit_logit_diff": (("size", "prompt"), circuit_diff, {"long_name": f"{logit}, circuit only (edges "
                                                                              f"outside it corrupted)",
                                                                  "units": unit}),
        "faithfulness": ("size", faith, {"long_name": "(circuit − corrupted) / (clean − corrupted)", "units": "1"}),
        "fraction": ("size", frac, {"long_name": "circuit / clean logit difference", "units": "1"}),
        "n_edges": ("size", circuits.sum((1, 2)), {"long_name": "edges kept after pruning"}),
        "n_nodes": ("size", np.array(n_nodes, dtype=int), {"long_name": "nodes touched by the pruned circuit "
                                                                        "(the logits count once)"}),
        "in_circuit": (("size", "upstream", "downstream"), circuits.astype(np.int8), {"long_name": "edge in the "
                                                                                                  "pruned circuit"}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """Clean and corrupted logit differences, each circuit's size and faithfulness, the ``top``
    edges by |score| (at the last checkpoint of a sweep) and, over checkpoints, the overlap of
    each checkpoint's circuit with the last one's."""
    from rich.table import Table

    from ...results.io import last_checkpoint

    last = last_checkpoint(ds)
    rev = last.attrs["revision"]
    method = {"eap": "EAP", "eap_ig": f"EAP-IG ({ds.attrs.get('ig_steps')} steps)",
              "edge_patching": "exact edge patching"}.get(str(ds.attrs.get("method")), str(ds.attrs.get("method")))
    lines: list[Any] = [f"{method} · {ds.attrs.get('task')} · {ds.sizes['prompt']} pairs · {ds.attrs['model']}@{rev}: "
                        f"clean {str(ds.attrs.get('metric', 'logit_diff')).replace('_', ' ')} "
                        f"{float(last['clean_logit_diff'].mean()):.2f}, corrupted "
                        f"{float(last['corrupt_logit_diff'].mean()):.2f}"]
    if last.sizes["size"]:
        how = "greedy by |score|" if ds.attrs.get("selection") == "greedy" else "top-n edges by |score|"
        table = Table(title=f"circuits of {ds.attrs['model']}@{rev} ({how}, pruned)")
        for col in ("size", "edges kept", "nodes", "faithfulness", "circuit / clean"):
            table.add_column(col, justify="right")
        for s in last["size"].values:
            v = last.sel(size=s)
            table.add_row(str(s), str(int(v["n_edges"])), str(int(v["n_nodes"])), f"{float(v['faithfulness']):.3f}",
                          f"{float(v['fraction']):.3f}")
        lines.append(table)
    if "threshold" in last.dims:
        lines.append("threshold circuits (|score| ≥ t, pruned): " + ", ".join(
            f"t={t:g}: {int(n)} edges, faithfulness {f:.3f}" for t, n, f in
            zip(last["threshold"].values, last["threshold_n_edges"].values, last["threshold_faithfulness"].values)))
    if "min_size" in ds:
        sizes = np.atleast_1d(ds["min_size"].values)
        names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else [str(rev)]
        lines.append(f"smallest circuit with circuit / clean >= {ds.attrs['min_fraction']} (search "
                     f"{ds.attrs['search']}): " + ", ".join(f"{n} {int(s_) if s_ > 0 else 'none'}"
                                                            for n, s_ in zip(names, sizes)))
    flat = last["score"].stack(edge=("upstream", "downstream")).dropna("edge")
    best = np.argsort(-np.abs(flat.values))[:top]
    lines.append("top edges: " + ", ".join(f"{u}→{d} {float(flat.values[i]):+.2f}"
                                           for i, (u, d) in zip(best, flat["edge"].values[best])))
    if "checkpoint" in ds.dims and ds.sizes["size"]:
        size = chosen_size(ds)
        jac = overlap(ds, size).values
        steps = [str(c) for c in ds["checkpoint"].values]
        lines.append(f"overlap (Jaccard) of top-{size} circuits with the last checkpoint: " + ", ".join(
            f"{n} {jac[k, -1]:.2f}" for k, n in enumerate(steps)))
        st = stability(ds)  # the circuits the stability plot compares
        which = "each checkpoint's smallest faithful circuit" if st.attrs["circuits"] == "min_circuit" else \
            f"top-{st.attrs['n_edges']} circuits"
        lines.append(f"stability (Tigges et al.; {which}) per transition: " + ", ".join(
            f"{str(t)} GED {int(g)}, weighted Jaccard {w:.2f}" for t, g, w in
            zip(st["to_checkpoint"].values, st["ged"].values, st["weighted_jaccard"].values)))
    return lines
