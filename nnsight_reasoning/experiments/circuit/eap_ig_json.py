"""hannamw/EAP-IG's graph JSON (``Graph.to_json`` / ``from_json``) written from and read into circuit results."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ...backend import graph
from ...errors import UsageError
from ._result import NODE_NAMES, _node_coords, node_table
from ._scores import Shape
from .selection import chosen_size


# --------------------------------------------------------------------------- EAP-IG's JSON graphs
def _eap_ig_name(name: str) -> str:
    """A node or downstream input in hannamw/EAP-IG's spelling: heads are ``a3.h1``."""
    if name.startswith("a"):
        head, _, rest = name.partition("<")
        layer, h = head[1:].split(".")
        return f"a{layer}.h{h}" + (f"<{rest}" if rest else "")
    return name


def to_eap_ig_json(ds: xr.Dataset, path: str | Path, *, size: int | None = None,
                   checkpoint: str | None = None) -> Path:
    """Write a q/k/v circuit result (``nr.circuit(..., qkv=True)``) as hannamw/EAP-IG's
    ``Graph.to_json`` lays a graph out in the version circuits-over-time pins (10035b8), so
    that it (``Graph.from_json``) and circuits-over-time's analyses read it: ``cfg``
    (``n_layers``, ``n_heads``, ``parallel_attn_mlp``, and ``d_model``, which later EAP-IG
    versions also read), ``nodes`` {name: in_graph} and ``edges`` {"parent->child" or
    "parent->a3.h1<q>": {"score", "in_graph"}}. The circuit is the result's ``min_circuit`` if it
    searched one, else its circuit of ``size`` edges (default: :func:`chosen_size`); a node is in
    the graph when a circuit edge touches it. ``checkpoint``: which one of a sweep (default the
    last). Scores are the result's (mean over prompts, its metric's units)."""
    import json

    if ds.attrs.get("method") not in ("eap", "eap_ig"):
        raise UsageError(f"a graph is exported from a circuit result (nr.circuit, reason-interp circuit --qkv); "
                         f"this one is {ds.attrs.get('method')!r}")
    if int(ds.attrs.get("qkv", 0)) != 1:
        raise UsageError("EAP-IG's graphs have separate edges into each head's query, key and value: run "
                         "nr.circuit(..., qkv=True) (reason-interp circuit --qkv) to export one")
    if "checkpoint" in ds.dims:
        names = [str(c) for c in ds["checkpoint"].values]
        if checkpoint is not None and checkpoint not in names:
            raise UsageError(f"no checkpoint {checkpoint!r} in this result; it has {', '.join(names)}")
        one = ds.sel(checkpoint=checkpoint) if checkpoint is not None else ds.isel(checkpoint=-1)
    else:  # one revision's result: a checkpoint named must be that one
        if checkpoint is not None and checkpoint != str(ds.attrs.get("revision")):
            raise UsageError(f"this result is of one revision, {ds.attrs.get('revision')!r}, not a sweep: drop "
                             f"--checkpoint {checkpoint}")
        one = ds
    if size is None and "min_circuit" in one and int(one["min_size"]) > 0:
        keep = one["min_circuit"].values.astype(bool)
    else:
        if one.sizes.get("size", 0) == 0:
            raise UsageError("this result has no circuits (sizes=()); rerun with --sizes")
        size = chosen_size(one) if size is None else int(size)
        if size not in one["size"].values:
            raise UsageError(f"no circuit of {size} edges in this result; it has sizes "
                             f"{', '.join(str(s) for s in one['size'].values)}")
        keep = one["in_circuit"].sel(size=size).values.astype(bool)
    score = one["score"].values
    up, down = [str(n) for n in one["upstream"].values], [str(n) for n in one["downstream"].values]
    node = graph.downstream_nodes(len(up), len(down)).numpy()
    used = set(np.nonzero(keep)[0]) | set(node[np.nonzero(keep)[1]].tolist())
    nodes = {_eap_ig_name(n): k in used for k, n in enumerate(up)}
    nodes["logits"] = bool(keep[:, -1].any())
    edges = {f"{_eap_ig_name(up[u])}->{_eap_ig_name(down[v])}": {"score": float(score[u, v]), "in_graph": bool(keep[u, v])}
             for u, v in zip(*np.nonzero(np.isfinite(score)))}
    cfg = {"n_layers": int(ds.attrs["n_layers"]), "n_heads": int(ds.attrs["n_heads"]),
           "parallel_attn_mlp": bool(int(ds.attrs["parallel_residual"]))}
    if "d_model" in ds.attrs:  # results written before 2026-12-01 lack it
        cfg["d_model"] = int(ds.attrs["d_model"])
    doc = {"cfg": cfg, "nodes": nodes, "edges": edges}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # never a half-written file
    return path


def from_eap_ig_json(path: str | Path) -> xr.Dataset:
    """A graph written by hannamw/EAP-IG's ``Graph.to_json`` (or :func:`to_eap_ig_json`) as a
    Dataset over the q/k/v graph's (upstream, downstream) axes: ``score`` (NaN where the file has
    no score or no edge exists) and ``in_graph`` (0/1), with the axes' coordinates of
    :func:`circuit` results; ``ds.in_graph`` serves as the ``circuit=`` of
    :func:`nnsight_reasoning.ioi_components`."""
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        cfg = doc["cfg"]
        n_layers, n_heads, parallel = int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"])
        edges = doc["edges"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not an EAP-IG graph file (JSON with cfg.n_layers, cfg.n_heads, "
                         f"cfg.parallel_attn_mlp and edges): {e}") from None
    shape = Shape(n_layers, n_heads, parallel, graph.valid_edges(n_layers, n_heads, parallel, qkv=True).numpy(), True)
    up, down = node_table(n_layers, n_heads, qkv=True)
    up_at = {_eap_ig_name(n): k for k, n in enumerate(up["name"])}
    down_at = {_eap_ig_name(n): k for k, n in enumerate(down["name"])}
    score = np.full(shape.valid.shape, np.nan)
    keep = np.zeros(shape.valid.shape, np.int8)
    for name, info in edges.items():
        parent, _, child = name.partition("->")
        u, v = up_at.get(parent), down_at.get(child)
        if u is None or v is None or not shape.valid[u, v]:
            raise UsageError(f"{path}: edge {name!r} is not an edge of a {n_layers}-layer, {n_heads}-head graph "
                             f"(parallel_attn_mlp={parallel})")
        score[u, v] = np.nan if info.get("score") is None else float(info["score"])
        keep[u, v] = bool(info.get("in_graph", False))
    coords: dict[str, Any] = {"upstream": ("upstream", np.array(up["name"], dtype=object),
                                           {"long_name": NODE_NAMES["upstream"]}),
                              "downstream": ("downstream", np.array(down["name"], dtype=object),
                                             {"long_name": NODE_NAMES["downstream"]}), **_node_coords(up, down)}
    return xr.Dataset({"score": (("upstream", "downstream"), score, {"long_name": "EAP-IG edge score"}),
                       "in_graph": (("upstream", "downstream"), keep, {"long_name": "edge in the graph"})},
                      coords=coords, attrs={**shape.attrs(), "source": str(path)})
