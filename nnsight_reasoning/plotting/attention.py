"""Figures for attention and probe results: attention heatmap of one prompt, head-entropy
grids (position and size-rank views), attention by size rank, attention mass per reasoning
step, probe score per layer."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import UsageError
from ..results.io import last_checkpoint, model_at

ATTENTION_KINDS = ("heatmap", "entropy", "rank", "mass", "flow")


def _title(ds: xr.Dataset) -> str:
    return f"{ds.attrs.get('task')} · {model_at(ds)}"


def attention_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    if kind is None:
        kind = "heatmap" if "attention" in ds else "entropy"
    if kind not in ATTENTION_KINDS:
        raise UsageError(f"kind must be one of {', '.join(ATTENTION_KINDS)} for an attention result (got {kind!r})")
    if kind == "heatmap":
        if "attention" not in ds:
            raise UsageError("this result holds no attention patterns (it was run with patterns='none')")
        if not 0 <= prompt < ds.sizes["prompt"]:
            raise UsageError(f"prompt {prompt} is out of range: the result has prompts 0..{ds.sizes['prompt'] - 1}")
        return _heatmap(last_checkpoint(ds), prompt)
    if kind == "rank":
        if "statement_attention" not in ds or np.isnan(ds["statement_attention"].sel(view="rank").values).all():
            raise UsageError("attention by size rank needs prompts whose statements are numbers, all with the same "
                             "count (e.g. kth_smallest)")
        return _by_rank(ds)
    if kind == "flow":
        return _flow(last_checkpoint(ds))
    return _entropy(ds) if kind == "entropy" else _mass(last_checkpoint(ds))


def _heatmap(ds: xr.Dataset, prompt: int):
    """Full patterns: one query × key panel per (layer, head); answer row only: (layer, head) × key."""
    import matplotlib.pyplot as plt

    p = ds.isel(prompt=prompt)
    n = int((p["token"].values != "").sum())
    tokens = [str(t) for t in p["token"].values[:n]]
    a = p["attention"].values[..., :n]  # (L, H, Q, n)
    layers, heads = list(p["layer"].values), list(p["head"].values)
    if ds.sizes["query"] > 1:
        a = a[:, :, :n]
        fig, axes = plt.subplots(len(layers), len(heads), figsize=(2.6 * len(heads) + 1, 2.5 * len(layers) + 1),
                                 squeeze=False)
        for i, layer in enumerate(layers):
            for j, head in enumerate(heads):
                ax = axes[i][j]
                ax.imshow(a[i, j], cmap="Blues", vmin=0, vmax=1)
                ax.set_title(f"L{layer} H{head}", fontsize=8)
                ax.set_xticks(range(n), tokens if i == len(layers) - 1 else [""] * n, rotation=90, fontsize=6)
                ax.set_yticks(range(n), tokens if j == 0 else [""] * n, fontsize=6)
        fig.supxlabel("key (attended-to token)", fontsize=9)
        fig.supylabel("query token", fontsize=9)
    else:
        rows = a[:, :, 0].reshape(len(layers) * len(heads), n)
        fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.28 * len(rows) + 1.8))
        im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n), tokens, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [f"L{l} H{h}" for l in layers for h in heads], fontsize=7)
        ax.set_xlabel("key (attended-to token)")
        ax.set_title("attention from the answer position", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{_title(ds)}: {p['text'].item()!r} → {p['answer'].item()}", fontsize=9)
    return fig


def flow_weights(ds: xr.Dataset) -> xr.DataArray:
    """(layer, query, key): the prompt-mean attention pattern, averaged over each layer's heads
    that are not ``pruned`` (NaN where a layer has none left), as MechanisticProbe's case study
    averages its masked patterns (``src/stask/prune.py:203-204, 232``). Needs full patterns
    (``patterns="all"``) of prompts of one token length, so that a position is the same token
    role in every prompt."""
    if "attention" not in ds or ds.sizes["query"] < 2:
        raise UsageError("the attention flow needs every query's pattern: run attention with patterns='all' "
                         "(--patterns all)")
    lengths = set((ds["token"].values != "").sum(-1).ravel().tolist())
    if len(lengths) != 1:
        raise UsageError("the attention flow averages positions over prompts, so every prompt must have the same "
                         f"number of tokens (these have {sorted(lengths)}): use prompts of one format and length")
    mean = ds["attention"].mean("prompt")  # (layer, head, query, key)
    if "pruned" in ds:
        mean = mean.where(ds["pruned"] == 0)
    return mean.mean("head", skipna=True).transpose("layer", "query", "key")


def _flow(ds: xr.Dataset):
    """MechanisticProbe's attention flow (``src/utils.py:287-328``): token positions (rows, first
    at the top) at each layer's input (columns), an edge from key k at layer l to query q at
    l + 1 drawn with opacity = ``flow_weights``; the last layer only into the answer position.
    Keys whose statement has the same reasoning step in every prompt (numbers placed with
    ``kth_smallest(place=...)``) are coloured: the answer's statement (the last step) red, the
    earlier steps' blue (the repository's root and leaf). The coordinate ``key_step`` holds the
    steps."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    w = flow_weights(ds).values  # (L, T, T)
    n_layers, t = w.shape[0], w.shape[-1]
    steps = ds["key_step"].values if "key_step" in ds.coords else np.full((1, t), -1)
    fixed = np.where((steps == steps[:1]).all(0) & (steps[0] > 0), steps[0], 0)  # (T,) a step shared by all
    last_step = steps.max()  # the answer's statement: the deepest step of every prompt, placed or not
    colour = {0: (0.5, 0.5, 0.5), 1: (0.12, 0.35, 0.85), 2: (0.85, 0.15, 0.15)}
    segments, rgba = [], []
    for li in range(n_layers):
        queries = [t - 1] if li == n_layers - 1 else range(t)
        for q in queries:
            for k in range(q + 1):
                a = w[li, q, k]
                if not np.isfinite(a) or a <= 0:
                    continue
                kind = 0 if fixed[k] == 0 else 2 if fixed[k] == last_step else 1
                segments.append([(li, t - 1 - k), (li + 1, t - 1 - q)])
                rgba.append((*colour[kind], float(min(a, 1.0))))
    fig, ax = plt.subplots(figsize=(1.1 * n_layers + 3.2, 0.32 * t + 1.8))
    ax.add_collection(LineCollection(segments, colors=rgba, linewidths=1.2))
    nodes = [(x, y) for x in range(n_layers + 1) for y in range(t) if x < n_layers or y == 0]
    ax.scatter(*zip(*nodes), s=10, color="k", zorder=3)
    tokens = [str(x) for x in ds["token"].values[0]]
    statement = ds["statement"].values[0]
    labels = []
    for i in range(t):
        name = f"#{statement[i] + 1}" if statement[i] >= 0 else tokens[i]
        if fixed[i]:
            name += " (root)" if fixed[i] == last_step else " (leaf)"
        labels.append(f"{i} {name}")
    ax.set_yticks(range(t), labels[::-1], fontsize=7)
    layer_names = [str(x) for x in ds["layer"].values]
    ax.set_xticks(range(n_layers + 1), ["input"] + [f"after L{x}" for x in layer_names], fontsize=8)
    ax.set_xlim(-0.3, n_layers + 0.3)
    ax.set_ylim(-0.7, t - 0.3)
    ax.set_xlabel("layer")
    ax.set_ylabel("token position (#i: the i-th statement)")
    for li in range(n_layers):
        if np.isnan(w[li]).all():
            ax.text(li + 0.5, (t - 1) / 2, "all heads\npruned", ha="center", va="center", fontsize=8, color="0.3")
    pruned = f", {int(ds['pruned'].sum())} heads pruned" if "pruned" in ds else ""
    fig.suptitle(f"{_title(ds)}: attention flow, mean over {ds.sizes['prompt']} prompts and the layer's "
                 f"heads{pruned}", fontsize=9)
    return fig


def _entropy(ds: xr.Dataset):
    """Layer × head grids of head entropy: the paper's (normalised; by position and by size rank)
    when the result has it, else each prompt's entropy in nats, mean over prompts."""
    import matplotlib.pyplot as plt

    names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else [None]
    paper = "head_entropy" in ds
    if paper:
        views = [v for v in ds["view"].values if not np.isnan(ds["head_entropy"].sel(view=v).values).all()]
        panels = [(name, v) for v in views for name in names]
        vmax, unit = 1.0, "entropy / log(statements)"
    else:
        panels = [(name, None) for name in names]
        vmax, unit = float(np.log(ds.sizes["key"])), "entropy (nats)"  # uniform over the longest prompt
    fig, axes = plt.subplots(1, len(panels), figsize=(0.8 * ds.sizes["head"] * len(panels) + 3.5,
                                                      0.5 * ds.sizes["layer"] + 2.2), squeeze=False)
    for ax, (name, view) in zip(axes[0], panels):
        vals = ds["head_entropy"].sel(view=view) if paper else ds["prompt_entropy"].mean("prompt")
        v = (vals if name is None else vals.sel(checkpoint=name)).transpose("layer", "head").values
        im = ax.imshow(v, cmap="viridis", vmin=0, vmax=vmax, origin="lower", aspect="auto")
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7, color="w" if x < vmax / 2 else "k")
        ax.set_xticks(range(ds.sizes["head"]), [str(h) for h in ds["head"].values])
        ax.set_yticks(range(ds.sizes["layer"]), [str(l) for l in ds["layer"].values])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        where = f"by {view}" if view else f"mean over {ds.sizes['prompt']} prompts"
        ax.set_title(f"{name} · {where}" if name else where, fontsize=9)
    fig.colorbar(im, ax=axes[0][-1], shrink=0.8, label=unit)
    what = ("entropy of the prompt-mean attention over the statements (Hou et al.; 1 = uniform)" if paper
            else f"head entropy at the answer position ({vmax:.2f} = uniform)")
    fig.suptitle(f"{_title(ds)}\n{what}", fontsize=9)
    return fig


def _by_rank(ds: xr.Dataset):
    """The paper's figure of attention by size rank: the prompt- and head-mean attention from the
    answer position to the number of each size rank (rows; 0 = smallest), per layer, beside the
    same by position; one pair of panels per checkpoint."""
    import matplotlib.pyplot as plt

    names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else [None]
    a = ds["statement_attention"].mean("head")
    fig, axes = plt.subplots(1, 2 * len(names), figsize=(2 * len(names) * (0.5 * ds.sizes["layer"] + 2.2),
                                                         0.35 * ds.sizes["slot"] + 2.2), squeeze=False)
    k = 0
    for name in names:
        for view in ("rank", "position"):
            v = a.sel(view=view) if name is None else a.sel(view=view, checkpoint=name)
            v = v.transpose("slot", "layer").values
            ax = axes[0][k]
            k += 1
            im = ax.imshow(v, cmap="magma", vmin=0, origin="lower", aspect="auto")
            ax.set_xticks(range(ds.sizes["layer"]), [str(l) for l in ds["layer"].values])
            ax.set_yticks(range(ds.sizes["slot"]), [str(r) for r in ds["slot"].values])
            ax.set_xlabel("layer")
            ax.set_ylabel("size rank (0 = smallest)" if view == "rank" else "statement position")
            ax.set_title(f"{name + ' · ' if name else ''}by {view}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{_title(ds)}: attention from the answer position, mean over heads and "
                 f"{ds.sizes['prompt']} prompts", fontsize=9)
    return fig


def _mass(ds: xr.Dataset):
    """(layer, head) × group: mean attention mass from the answer position per reasoning step."""
    import matplotlib.pyplot as plt

    v = ds["mass"].mean("prompt").stack(lh=("layer", "head")).transpose("lh", "group").values
    per_token = v / np.maximum(ds["n_tokens"].mean("prompt").values, 1e-12)
    groups = [str(g) for g in ds["group"].values]
    labels = [f"L{l} H{h}" for l in ds["layer"].values for h in ds["head"].values]
    fig, axes = plt.subplots(1, 2, figsize=(2 * (0.6 * len(groups) + 2.4), 0.28 * len(labels) + 2))
    for ax, vals, name in ((axes[0], v, "attention mass"), (axes[1], per_token, "mass per token")):
        im = ax.imshow(vals, cmap="magma", vmin=0, aspect="auto")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{_title(ds)}: attention from the answer position, mean over {ds.sizes['prompt']} prompts",
                 fontsize=9)
    return fig


def probe_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Macro F1 per layer for each probe (all layers' features at 'all'), one line per
    checkpoint, the baseline dashed, the majority class dotted. A result with a ``group`` dim
    (one probe per group: the repository's ProofWriter probe per m) draws all layers' F1
    against the group instead (the paper's ProofWriter figure)."""
    import matplotlib.pyplot as plt

    grouped = "group" in ds.dims
    if grouped:
        x = ds["group"].values
        ticks = [str(int(v)) for v in x]
        xlabel = str(ds["group"].attrs.get("long_name", "group")).split(" (")[0]
        curve = lambda q, pre: q[f"{pre}f1_all"].values  # noqa: E731
    else:
        ticks = [str(l) for l in ds["layer"].values] + ["all"]
        x = np.arange(len(ticks))
        xlabel = "layer (attention features)"
        curve = lambda q, pre: np.append(q[f"{pre}f1"].values, float(q[f"{pre}f1_all"]))  # noqa: E731
    fig, axes = plt.subplots(1, ds.sizes["probe"], figsize=(4.2 * ds.sizes["probe"], 3.4), squeeze=False)
    # one line per model and checkpoint (a sweep over either or both), the baseline per model
    models = [{"model": k} for k in range(ds.sizes["model"])] if "model" in ds.dims else [{}]
    checkpoints = [{"checkpoint": k} for k in range(ds.sizes["checkpoint"])] if "checkpoint" in ds.dims else [{}]

    def label(sel: dict[str, int]) -> str:
        return "@".join(str(ds[d].values[k]) for d, k in sel.items()) or ds.attrs.get("revision") or "model"

    for ax, probe in zip(axes[0], ds["probe"].values):
        p = ds.sel(probe=probe)
        for m in models:
            for c in checkpoints:
                ax.plot(x, curve(p.isel(**m, **c), ""), "o-", label=label({**m, **c}))
            if "baseline_f1" in ds:
                ax.plot(x, curve(p.isel(**m), "baseline_"), "s--", color="gray",
                        label=f"baseline ({ds.attrs.get('baseline')})" + (f", {label(m)}" if m else ""))
        major = p["majority"].max([d for d in ("model", "checkpoint") if d in p["majority"].dims])
        if grouped:  # not where a group's labels have one class (F1 NaN): nothing to compare there
            seen = np.isfinite(p["f1_all"].values).reshape(-1, len(x)).any(0)  # group last
            ax.plot(x, np.where(seen, major.values, np.nan), ":", color="k", lw=0.8, label="majority class (accuracy)")
        else:
            ax.axhline(float(major), color="k", lw=0.8, ls=":", label="majority class (accuracy)")
        ax.set_xticks(x, ticks)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("macro F1" + (", all layers" if grouped else "") + " (out-of-fold)")
        ax.set_title(f"probe: {'is the statement useful?' if probe == 'useful' else 'at which step is it used?'}",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"MechanisticProbe{' per group' if grouped else ''} · {ds.attrs.get('task')} · "
                 f"{ds.attrs.get('model')} ({ds.attrs.get('n_prompts')} prompts, kNN k={ds.attrs.get('n_neighbors')})",
                 fontsize=9)
    return fig


def grid_figure(panels: list[tuple[str, xr.DataArray, bool, float | None]], title: str):
    """Layer × head grids, one panel each: ``(title, values, signed, chance)`` with ``values``
    over (layer, head), or (checkpoint, layer, head) in a sweep. The grid shows the last
    checkpoint, each value written in its cell (NaN: not measured); in a sweep a second row
    follows every head over the checkpoints, coloured by layer, chance dotted. ``signed``: a
    diverging scale around 0; otherwise 0 up (values in [0, 1] keep that range)."""
    import matplotlib.pyplot as plt

    sweep = any("checkpoint" in da.dims for _, da, _, _ in panels)
    fig, axes = plt.subplots(2 if sweep else 1, len(panels), figsize=(4.0 * len(panels), 7.0 if sweep else 3.6),
                             squeeze=False)
    for ax, (name, da, signed, chance) in zip(axes[0], panels):
        last = da.isel(checkpoint=-1) if "checkpoint" in da.dims else da
        v = last.transpose("layer", "head").values.astype(float)
        top = max(0.2 if not signed else 1e-9, float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0)
        im = ax.imshow(v, cmap="RdBu_r" if signed else "viridis", vmin=-top if signed else 0, vmax=top,
                       origin="lower", aspect="auto")
        for (i, j), x in np.ndenumerate(v):
            if np.isfinite(x):
                dark = abs(x) > top / 2 if signed else x < top / 2
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
        ax.set_xticks(range(last.sizes["head"]), [str(h) for h in last["head"].values])
        ax.set_yticks(range(last.sizes["layer"]), [str(l) for l in last["layer"].values])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name + ("" if chance is None else f" (chance {chance:.2f})"), fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if sweep:
        for ax, (name, da, signed, chance) in zip(axes[1], panels):
            names = [str(c) for c in da["checkpoint"].values]
            colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, da.sizes["layer"]))
            for li, layer in enumerate(da["layer"].values):
                for head in da["head"].values:
                    ax.plot(range(len(names)), da.sel(layer=layer, head=head).values, color=colors[li], lw=1,
                            label=f"layer {layer}" if head == da["head"].values[0] else None)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            if chance is not None:
                ax.axhline(chance, color="k", ls=":", lw=0.8, label="chance")
            finite = da.values[np.isfinite(da.values)]
            if not signed and finite.size and 0 <= finite.min() and finite.max() <= 1:
                ax.set_ylim(0, 1)
            ax.set_ylabel(name, fontsize=8)
            ax.grid(alpha=0.3)
        axes[1][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def heads_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Head-score grids (layer × head, mean over sequences) for the (last) checkpoint; in a sweep
    a second row follows every head's score over the checkpoints, coloured by layer."""
    from ..experiments.heads import SCORES, grid

    last = last_checkpoint(ds)
    panels = [(score.replace("_", " ") + (" (logits)" if score == "copy_suppression_proxy" else ""), grid(ds, score),
               score == "copy_suppression_proxy", float(last["uniform"].sel(score=score))) for score in SCORES]
    return grid_figure(panels, f"head scores · {model_at(last)} "
                               f"({ds.sizes['prompt']} repeated random sequences)")


def _grid_title(ds: xr.Dataset, what: str) -> str:
    last = last_checkpoint(ds)
    return f"{what} · {model_at(last)}"


def path_patching_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Each head sender's relative effect on the receivers (layer × head; NaN: not a sender)."""
    from ..experiments.path_patching import grid

    if "checkpoint" in ds.dims:
        v = xr.concat([grid(ds.sel(checkpoint=c)) for c in ds["checkpoint"].values], "checkpoint")
        v = v.assign_coords(checkpoint=ds["checkpoint"].values)
    else:
        v = grid(ds)
    what = "input" if ds.attrs.get("receiver_input") == "all" else f"{ds.attrs.get('receiver_input')} input"
    return grid_figure([("(patched − clean) / clean", v, True, None)],
                       _grid_title(ds, f"path patching into {ds.attrs.get('receivers')} ({what})"))


def ioi_components_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Copy score, END's attention to IO, and the S-inhibition candidates' logit-difference change."""
    panels = [(f"copy score (fraction of names in the top {ds.attrs.get('top_k', 5)})", ds["copy_score"] / 100, False,
               None),
              ("attention END → IO", ds["attention"].sel(word="IO", drop=True), False, None),
              ("S-inhibition: Δ logit diff (relative)", ds["s2i_logit_diff_delta"], True, None)]
    return grid_figure(panels, _grid_title(ds, "IOI components"))


def greater_than_components_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Each head's attention from END to YY and how often its output favours YY or YY + 1, and
    each MLP's later-minus-earlier years direct effect; in a sweep, every one over training."""
    mlp = ds["mlp_logit_diff"].expand_dims({"head": ["MLP"]}, axis=-1)
    panels = [("share of prompts: attention END → YY largest", ds["yy_attention"], False, None),
              ("share of prompts: output favours YY or YY + 1", ds["yy_logit"], False, None),
              ("MLP: later − earlier years (logits)", mlp, True, None)]
    return grid_figure(panels, _grid_title(ds, "greater-than components"))


BACKUP_KINDS = ("logits", "fraction")


def backup_heads_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """One checkpoint: each head's direct effect on the logit difference in the clean run, and its
    change when the name movers are zero-ablated (blank: an ablated head). A sweep: the
    repository's figures over training (``backup_experiments.ipynb``, cells 21-26): the logit
    difference's change and the summed backup (in and outside the circuit when there is one),
    and the backup heads (each checkpoint's five largest; the five with the largest mean over
    their appearances), a marker where the head was ablated at that or an earlier checkpoint.
    ``kind`` "logits" (default) or "fraction": divided by each checkpoint's clean logit
    difference, as the repository plots them (large where that difference is near 0)."""
    import matplotlib.pyplot as plt

    kind = kind or "logits"
    if kind not in BACKUP_KINDS:
        raise UsageError(f"kind must be one of {', '.join(BACKUP_KINDS)} for a backup-heads result (got {kind!r})")
    if "checkpoint" not in ds.dims:
        panels = [("direct effect, clean run (logits)",
                   ds["direct_effect"].sel(condition="clean", drop=True).mean("prompt"), True, None),
                  ("backup: ablated − clean direct effect (logits)", ds["backup"], True, None)]
        return grid_figure(panels, _grid_title(ds, "backup name movers"))
    names = [str(c) for c in ds["checkpoint"].values]
    x = np.arange(len(names))
    clean = ds["logit_diff"].sel(condition="clean").mean("prompt")
    scale = clean if kind == "fraction" else xr.ones_like(clean)
    change = ds["logit_diff"].sel(condition="ablated").mean("prompt") - clean
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    if kind == "logits":
        ax.plot(x, clean, "--", color="gray", label="clean logit difference")
    ax.plot(x, change / scale, "o-", color="k", label="logit difference's change")
    for var, label in (("summed_backup", "backup, all heads"), ("summed_backup_in_circuit", "backup, circuit heads"),
                       ("summed_backup_outside_circuit", "backup, other heads")):
        if var in ds:
            ax.plot(x, ds[var] / scale, "o-", label=label)
    ax.axhline(0, color="gray", lw=0.8, ls=":")
    unit = "/ clean logit difference" if kind == "fraction" else "(logits)"
    ax.set_ylabel(f"change {unit}")
    ax.set_title("after ablating the name movers", fontsize=9)
    frac = (ds["backup"] / scale).transpose("checkpoint", "layer", "head").values
    n_heads = ds.sizes["head"]
    seen: dict[tuple[int, int], list[float]] = {}
    for row in frac:  # each checkpoint's five largest, as plot_top_heads
        flat = np.nan_to_num(row, nan=-np.inf).ravel()
        for k in np.argsort(flat)[::-1][:5]:
            if np.isfinite(flat[k]):
                seen.setdefault(divmod(int(k), n_heads), []).append(float(flat[k]))
    top = sorted(seen, key=lambda lh: -np.mean(seen[lh]))[:5]
    ablated = np.maximum.accumulate(ds["name_mover"].transpose("checkpoint", "layer", "head").values > 0, axis=0)
    for layer, head in top:
        line, = axes[1].plot(x, frac[:, layer, head], "-", label=f"a{layer}.{head}")
        was = ablated[:, layer, head]
        axes[1].plot(x[was], frac[was, layer, head], "x", color=line.get_color())
    axes[1].axhline(0, color="gray", lw=0.8, ls=":")
    axes[1].set_ylabel(f"backup {unit}")
    axes[1].set_title("largest backup heads (x: ablated then or before)", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_grid_title(ds, "backup name movers over training"), fontsize=9)
    fig.tight_layout()
    return fig


def cspa_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """CSPA's performance recovered per head (1: CSPA explains all of the head's effect)."""
    return grid_figure([("CSPA: performance recovered", ds["cspa"], True, None)], _grid_title(ds, "copy suppression"))


def self_repair_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """The repository's self-repair scatter (``create_layered_scatter``): each head's direct effect
    against the change of the logit when it is ablated, coloured by layer (the last checkpoint of a
    sweep). On the dashed line y = −x the logit loses the whole direct effect; above it, the rest
    of the model makes up part of it (self-repair)."""
    import matplotlib.pyplot as plt

    last = last_checkpoint(ds)
    models = [str(m) for m in last["model"].values] if "model" in last.dims else [None]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    span = 1e-9
    for marker, name in zip("os^Dv<>p", models):  # several models: one marker each
        one = last if name is None else last.sel(model=name)
        x = one["direct_effect"].transpose("layer", "head").values.ravel()
        y = one["logit_change"].transpose("layer", "head").values.ravel()
        layer = np.repeat(one["layer"].values, one.sizes["head"])
        ok = np.isfinite(x) & np.isfinite(y)
        sc = ax.scatter(x[ok], y[ok], c=layer[ok], cmap="viridis", s=28, edgecolors="0.3", linewidths=0.5,
                        marker=marker, label=name, vmin=0, vmax=max(1, last.sizes["layer"] - 1))
        if ok.any():
            span = max(span, float(np.abs(np.concatenate([x[ok], y[ok]])).max()))
    ax.plot([-span, span], [span, -span], ls="--", c="0.5", lw=1, label="no self-repair (change = −direct effect)")
    ax.axhline(0, c="0.8", lw=0.8)
    ax.axvline(0, c="0.8", lw=0.8)
    ax.set_xlabel("direct effect of the head (logits)")
    ax.set_ylabel(f"change in logits upon {ds.attrs.get('ablation', '')} ablation")
    ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(sc, ax=ax, label="layer", ticks=last["layer"].values)
    fig.suptitle(_grid_title(last, "self-repair"), fontsize=9)
    fig.tight_layout()
    return fig


def successor_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """The successor score per head (share of list items whose successor the OV circuit ranks first)."""
    return grid_figure([("successor score", ds["successor_ov"], False, float(ds.attrs["chance"]))],
                       _grid_title(ds, "successor heads"))


def pruning_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Accuracy against the fraction of heads pruned (the paper's causal-analysis figure): each
    entropy order a line, the random orders their mean with their range shaded, the unpruned
    accuracy dotted; one panel per checkpoint of a sweep."""
    import matplotlib.pyplot as plt

    names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else [None]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.4), squeeze=False, sharey=True)
    x = 100 * ds["fraction"].values
    for ax, name in zip(axes[0], names):
        d = ds if name is None else ds.sel(checkpoint=name)
        for kind_ in dict.fromkeys(d["kind"].values):
            acc = d["accuracy"].where(d["kind"] == kind_, drop=True)
            if kind_ == "random":
                line, = ax.plot(x, acc.mean("ordering"), "o--", color="gray",
                                label=f"random ({acc.sizes['ordering']} orders)")
                ax.fill_between(x, acc.min("ordering"), acc.max("ordering"), color=line.get_color(), alpha=0.2)
            else:
                ax.plot(x, acc.isel(ordering=0), "o-", label=f"{kind_.replace('_', ' by ')}, lowest first")
        ax.axhline(float(d["accuracy_unpruned"]), color="k", lw=0.8, ls=":", label="no head pruned")
        ax.set_xlabel("heads pruned (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name or f"{ds.sizes['prompt']} prompts", fontsize=9)
    axes[0][0].set_ylabel("accuracy (top-1)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{_title(ds)}: head pruning", fontsize=9)
    return fig


def robustness_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Accuracy drop under the corruption against the probing score: each subset a dot, each
    score bin's mean drop a line (the paper's robustness figure); one panel per probe."""
    import matplotlib.pyplot as plt

    d = last_checkpoint(ds)
    fig, axes = plt.subplots(1, d.sizes["probe"], figsize=(4.4 * d.sizes["probe"], 3.4), squeeze=False, sharey=True)
    for ax, probe in zip(axes[0], d["probe"].values):
        r = d.sel(probe=probe)
        ax.scatter(r["score"], d["drop"], s=6, alpha=0.4, color="gray", label="subsets")
        mid = (r["bin_lo"] + r["bin_hi"]).values / 2
        ax.plot(mid, r["bin_drop"].values, "o-", color="C3", label="mean per score bin")
        ax.axhline(0, color="k", lw=0.8, ls=":")
        ax.set_xlabel("probing score" if "baseline_f1" in d else "probe macro F1")
        ax.set_title(f"{probe} probe · Pearson r {float(r['correlation']):+.2f}", fontsize=9)
    axes[0][0].set_ylabel("accuracy drop (corrupted - clean)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{_title(ds)}: robustness to '{ds.attrs.get('corruption')}' against the probing score", fontsize=9)
    return fig
