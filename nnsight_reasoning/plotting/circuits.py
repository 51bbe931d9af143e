"""Figures for edge-attribution results: circuit graph, faithfulness by circuit size, and
circuit overlap across checkpoints (matplotlib only: no graphviz)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend.graph import downstream_nodes
from ..errors import UsageError
from ..experiments.circuit import chosen_size, overlap, stability
from ..results.io import last_checkpoint

CIRCUIT_KINDS = ("circuit", "faithfulness", "overlap", "stability")
__all__ = ["CIRCUIT_KINDS", "chosen_size", "circuit_figure"]


def circuit_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    kind = kind or "circuit"
    if kind not in CIRCUIT_KINDS:
        raise UsageError(f"kind must be one of {', '.join(CIRCUIT_KINDS)} for an edge-attribution result "
                         f"(got {kind!r})")
    if kind == "faithfulness":
        return _faithfulness(ds)
    if kind == "overlap":
        return _overlap(ds)
    if kind == "stability":
        return _stability(ds)
    return _graph(ds)


def _method(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("method", "")).upper().replace("_", "-")


def _node_xy(layer: int, kind: str, head: int, n_heads: int, n_layers: int) -> tuple[float, float]:
    if kind == "input":
        return n_heads / 2, -1.0
    if kind == "logits":
        return n_heads / 2, float(n_layers)
    return (float(n_heads) + 0.3 if kind == "mlp" else float(head)), float(layer)


def _graph(ds: xr.Dataset):
    """Nodes on a layer × head grid (MLP right of the heads, input below, logits above); the
    circuit's edges drawn with width ∝ |score|, red where corrupting the edge lowers the logit
    difference (it carries the answer), blue where it raises it."""
    import matplotlib.pyplot as plt

    size = chosen_size(ds)
    last = last_checkpoint(ds)
    rev = last.attrs.get("revision")
    n_layers, n_heads = int(ds.attrs["n_layers"]), int(ds.attrs["n_heads"])
    keep = last["in_circuit"].sel(size=size).values.astype(bool)
    score = last["score"].values
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * n_heads + 2.5), max(4.0, 0.8 * n_layers + 2.0)))
    up = [_node_xy(int(l), str(k), int(h), n_heads, n_layers) for l, k, h in zip(
        last["upstream_layer"].values, last["upstream_kind"].values, last["upstream_head"].values)]
    down = [_node_xy(int(l), str(k), int(h), n_heads, n_layers) for l, k, h in zip(
        last["downstream_layer"].values, last["downstream_kind"].values, last["downstream_head"].values)]
    top = np.nanmax(np.abs(np.where(keep, score, np.nan))) if keep.any() else 1.0
    for i, j in zip(*np.nonzero(keep)):
        (x0, y0), (x1, y1) = up[i], down[j]
        ax.annotate("", xy=(x1, y1 - 0.12), xytext=(x0, y0 + 0.12),
                    arrowprops=dict(arrowstyle="-|>", lw=0.4 + 3.5 * abs(score[i, j]) / top, alpha=0.75,
                                    color="tab:red" if score[i, j] < 0 else "tab:blue",
                                    connectionstyle="arc3,rad=0.08"))
    node = downstream_nodes(*keep.shape).numpy()  # a head's q, k and v inputs belong to the head
    used = set(np.nonzero(keep)[0]) | set(node[np.nonzero(keep)[1]].tolist())
    names = list(last["upstream"].values) + ["logits"]
    for k, (name, (x, y)) in enumerate(zip(names, up + [down[-1]])):
        on = k in used
        ax.scatter([x], [y], s=260 if on else 90, color="gold" if on else "0.85", edgecolor="k" if on else "0.7",
                   zorder=3)
        ax.text(x, y, str(name), ha="center", va="center", fontsize=6 if on else 5, zorder=4,
                color="k" if on else "0.5")
    ax.set_xlim(-0.8, n_heads + 1.1)
    ax.set_ylim(-1.6, n_layers + 0.6)
    ax.set_yticks(range(n_layers), [f"layer {l}" for l in range(n_layers)])
    ax.set_xticks([])
    faith = float(last["faithfulness"].sel(size=size))
    ax.set_title(f"{_method(ds)} circuit, {int(last['n_edges'].sel(size=size))} edges "
                 f"(top {size}, pruned): faithfulness {faith:.2f}\n{ds.attrs.get('task')} · "
                 f"{ds.attrs.get('model')}@{rev}", fontsize=9)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig


def _faithfulness(ds: xr.Dataset):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    views = [(str(c), ds.sel(checkpoint=c)) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims \
        else [(str(ds.attrs.get("revision")), ds)]
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(views)))
    for (name, v), color in zip(views, colors):
        ax.plot(v["n_edges"].values, v["faithfulness"].values, "o-", color=color, label=name, ms=4)
    ax.axhline(1, color="0.5", ls="--", lw=0.8)
    ax.axhline(0, color="0.5", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("edges in the circuit (after pruning)")
    ax.set_ylabel("faithfulness\n(circuit − corrupted) / (clean − corrupted)")
    ax.set_title(f"{_method(ds)} circuits · {ds.attrs.get('task')} · "
                 f"{ds.attrs.get('model')}", fontsize=9)
    ax.legend(fontsize=7, title="checkpoint" if len(views) > 1 else None, title_fontsize=7)
    return fig


def _overlap(ds: xr.Dataset):
    import matplotlib.pyplot as plt

    size = chosen_size(ds)
    jac = overlap(ds, size)
    names = [str(c) for c in jac["checkpoint"].values]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.6 + 0.65 * len(names)))
    im = ax.imshow(jac.values, vmin=0, vmax=1, cmap="viridis")
    for (i, j), x in np.ndenumerate(jac.values):
        ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7, color="w" if x < 0.5 else "k")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(f"circuit overlap (Jaccard, top {size} edges)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _stability(ds: xr.Dataset):
    """Tigges et al.'s stability panels: similarity with the final circuit per checkpoint and
    the EWMA change rate per transition; edges entering and leaving per transition."""
    import matplotlib.pyplot as plt

    st = stability(ds)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(st.sizes["checkpoint"])
    left.plot(x, st["jaccard_to_final"].values, "o-", label="Jaccard with the final circuit")
    left.plot(x, st["weighted_jaccard_to_final"].values, "s--", label="weighted Jaccard with the final")
    left.plot(x[1:], st["ewma_change"].values, "^:", label=f"EWMA change (alpha {st.attrs['alpha']})")
    left.set_xticks(x, [str(c) for c in st["checkpoint"].values], rotation=45, ha="right", fontsize=7)
    left.set_ylim(0, 1.05)
    left.legend(fontsize=7)
    t = np.arange(st.sizes["transition"])
    right.bar(t - 0.2, st["additions"].values, 0.4, label="edges entering")
    right.bar(t + 0.2, st["deletions"].values, 0.4, label="edges leaving")
    right.set_xticks(t, [str(c) for c in st["to_checkpoint"].values], rotation=45, ha="right", fontsize=7)
    right.set_ylabel("edges (graph edit distance = both)")
    right.legend(fontsize=7)
    which = ("each checkpoint's smallest faithful circuit" if st.attrs["circuits"] == "min_circuit"
             else f"top {st.attrs['n_edges']} edges")
    fig.suptitle(f"circuit stability over training · {which} · {ds.attrs.get('model')}",
                 fontsize=9)
    return fig
