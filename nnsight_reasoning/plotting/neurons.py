"""Figures for neuron results: activation of the discovered neurons per prompt variant and
accuracy per variant under ablation (``cot_neurons``, and ``cot_generation`` with the
activation averaged over the generated tokens); neuron recurrence (``discover``); and
binding-ID results (``binding``). A checkpoint sweep is drawn at its last checkpoint (the
figure title names it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import UsageError
from ..results.io import model_at


MAX_UNITS = 40  # neurons drawn at most (a column each)


def _labels(ds: xr.Dataset) -> list[str]:
    return [f"L{int(l)}N{int(n)}" for l, n in zip(ds["layer"].values, ds["neuron"].values)]


def neurons_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    import matplotlib.pyplot as plt

    from ..results.io import last_checkpoint

    ds = last_checkpoint(ds)
    title = f"{model_at(ds)}"
    generated = ds.attrs.get("method") == "cot_generation"
    if generated:  # the same two panels: mean activation over the read generated steps, accuracy of the answers
        view = ds[["mean_activation", "accuracy"]]
        view = view.drop_vars([c for c in ("layer", "neuron") if c in view.coords])
        ds = view.rename(mean_activation="activation").assign_coords(
            layer=("unit", ds["unit_layer"].values), neuron=("unit", ds["unit_neuron"].values))
        ds.attrs = dict(view.attrs)
    shown = f"{ds.sizes['unit']}"
    if ds.sizes["unit"] > MAX_UNITS:  # units come most frequent first: draw those, say how many there are
        shown = f"{MAX_UNITS} most frequent of the {ds.sizes['unit']}"
        ds = ds.isel(unit=slice(0, MAX_UNITS))
    if ds.attrs.get("method") == "neuron_discovery":
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * ds.sizes["unit"] + 2), 3.6))
        ax.bar(range(ds.sizes["unit"]), ds["frequency"].values, color="tab:blue")
        ax.set_xticks(range(ds.sizes["unit"]), _labels(ds), rotation=90, fontsize=7)
        ax.set_ylabel(f"fraction of prompts in the top {ds.attrs.get('top_k')}")
        ax.set_title(f"recurring answer neurons · {title}", fontsize=9)
        return fig
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 0.35 * ds.sizes["unit"] + 7), 3.8),
                                      gridspec_kw={"width_ratios": [max(2, ds.sizes["unit"] // 3),
                                                                    max(2.0, 0.8 * ds.sizes["variant"])]})
    act = ds["activation"].values
    top = max(1e-6, float(np.abs(act).max())) if act.size else 1.0
    im = left.imshow(act, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
    left.set_yticks(range(ds.sizes["variant"]), [str(v) for v in ds["variant"].values])
    left.set_xticks(range(ds.sizes["unit"]), _labels(ds), rotation=90, fontsize=7)
    tracked = ds.attrs.get("units_chosen_on")  # a sweep of the neurons of its last revision
    given = bool(ds.attrs.get("fixed_units")) and not tracked
    which = "given" if given else "discovered"
    at = f" discovered at {tracked}" if tracked else ""
    where = "generated tokens" if generated else "last position"
    left.set_title(f"mean activation of the {shown} {'' if tracked else which + ' '}neurons{at} ({where})", fontsize=9)
    fig.colorbar(im, ax=left, shrink=0.8)
    variants = [str(v) for v in ds["variant"].values]
    ablations = [str(a) for a in ds["ablation"].values]
    width = 0.8 / len(ablations)
    colors = {"none": "0.3", "noise": "tab:purple", "zero": "tab:red", "mean": "tab:orange", "random": "tab:gray",
              "random_zero": "0.75"}
    for k, a in enumerate(ablations):
        right.bar(np.arange(len(variants)) + (k - (len(ablations) - 1) / 2) * width,
                  ds["accuracy"].sel(ablation=a).values, width, label=a, color=colors.get(a))
    right.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("accuracy")
    right.legend(title="ablation", fontsize=7, title_fontsize=7)
    right.set_title("generated answers, neurons ablated" if generated else
                    "accuracy per variant, neurons ablated", fontsize=9)
    how = "given, scored" if given else f"discovered at {tracked}" if tracked else "discovered"
    if generated and not given:
        how = f"{ds.attrs.get('select')} of {ds.attrs.get('ranking')}"
    fig.suptitle(f"CoT arithmetic neurons ({how} on {ds.attrs.get('discover_on')}) · {title}", fontsize=9)
    return fig


def binding_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Accuracy of each binding measure against chance, and the binding-ID vectors' norms."""
    import matplotlib.pyplot as plt

    from ..results.io import last_checkpoint

    ds = last_checkpoint(ds)
    if "model" in ds.dims and ds.attrs.get("measure") in ("cyclic", "pairwise"):
        return _cyclic_over_models_figure(ds)
    if "model" in ds.dims and ds.attrs.get("measure") == "means":
        return _means_over_models_figure(ds)
    if "model" in ds.dims:
        raise UsageError("a result over several models has a figure for --measure cyclic (binding-iclr Fig. 6 left) "
                         "and --measure means; plot one model's part: nr.plot_result(one_model(ds, name)) "
                         "(from nnsight_reasoning.results.checkpoints)")
    if ds.attrs.get("measure") == "cross_subspace":
        return _cross_subspace_figure(ds)
    if ds.attrs.get("measure") == "factorization":
        return _factorization_figure(ds)
    if ds.attrs.get("measure") == "position":
        return _position_figure(ds)
    if ds.attrs.get("measure") == "means":
        return _means_figure(ds)
    if ds.attrs.get("measure") in ("cyclic", "pairwise"):
        return _cyclic_figure(ds)
    if ds.attrs.get("measure") == "subspace":
        return _subspace_figure(ds)
    if ds.attrs.get("measure") == "mcq":
        return _mcq_figure(ds)
    names, values = ["clean", "positions\nexchanged"], [float(ds["accuracy"]), float(ds["position_accuracy"])]
    for t in ds["target"].values:
        names.append(f"factor:\n{t}")
        values.append(float(ds["factor_accuracy"].sel(target=t)))
    for i in ds["intervention"].values:
        for v in ds["vector"].values:
            names.append(f"swap {i}\n({v})")
            values.append(float(ds["swap_accuracy"].sel(intervention=i, vector=v)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1.2]})
    colors = ["0.3", "0.5"] + ["tab:blue"] * 2 + ["tab:red", "tab:gray"] * 2
    left.bar(range(len(values)), values, color=colors[: len(values)])
    left.axhline(float(ds.attrs.get("chance", 0.5)), color="k", ls=":", lw=0.8, label="chance")
    left.set_xticks(range(len(names)), names, fontsize=7)
    left.set_ylim(0, 1)
    left.set_ylabel("accuracy")
    left.legend(fontsize=7)
    for i in ds["intervention"].values:
        right.plot(ds["depth"].values, ds["delta_norm"].sel(intervention=i).values, "o-", ms=3, label=str(i))
    right.set_xlabel("depth (0 = embeddings)")
    right.set_ylabel("|Δ| (binding-ID vector)")
    right.legend(fontsize=7)
    fig.suptitle(f"binding IDs · {model_at(ds)} · "
                 f"{ds.sizes['query']} pairs per context", fontsize=9)
    return fig


def _factorization_figure(ds: xr.Dataset):
    """binding-iclr's Fig. 3: per side, the 2×2 substitutions (none, attribute, entity, both),
    each a heatmap of mean log-probability, query × answer."""
    import matplotlib.pyplot as plt

    sides = ds.sizes["side"]
    cells = [(0, 0, "none"), (0, 1, "attribute"), (1, 0, "entity"), (1, 1, "both")]
    fig, axes = plt.subplots(sides, 5, figsize=(10.5, 2.6 * sides), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.06]})
    low = float(ds["factor_mean"].min())
    for s in range(sides):
        for k, (e, a, name) in enumerate(cells):
            ax = axes[s][k]
            m = ds["factor_mean"].sel(side=s, swap_entity=e, swap_attribute=a)
            im = ax.imshow(m.values, vmin=low, vmax=0, cmap="viridis")
            ax.set_xticks(range(m.sizes["answer"]), [str(x) for x in m["answer"].values], fontsize=7)
            ax.set_yticks(range(m.sizes["query"]), [str(x) for x in m["query"].values], fontsize=7)
            acc = float(ds["outcome_accuracy"].sel(side=s, swap_entity=e, swap_attribute=a))
            ax.set_title(f"side {s}: {name} substituted · acc {acc:.2f}", fontsize=8)
        fig.colorbar(im, cax=axes[s][4], label="mean log-prob")
    fig.suptitle(f"factorizability by side · {model_at(ds)} · "
                 f"{ds.sizes['prompt']} contexts", fontsize=9)
    return fig


def _position_figure(ds: xr.Dataset):
    """binding-iclr's Fig. 4: mean log-probability of A0 and A1 for queries E0 and E1 against
    the offset of side 0's token; dotted lines at the original (0) and exchanged (Δ) positions."""
    import matplotlib.pyplot as plt

    if ds.attrs.get("window") == "local":
        return _local_position_figure(ds)
    fig, axes = plt.subplots(1, ds.sizes["target"], figsize=(5 * ds.sizes["target"], 3.4), squeeze=False)
    for t, ax in zip(ds["target"].values, axes[0]):
        sel = ds["position_mean"].sel(target=t)
        for q in sel["query"].values:
            for a, style in zip(sel["answer"].values, ("-", "--")):
                ax.plot(sel["offset"].values, sel.sel(query=q, answer=a).values, style, marker="o", ms=2,
                        label=f"{q} → {a}")
        ax.axvline(0, color="k", ls=":", lw=0.8)
        ax.axvline(int(ds["distance"].sel(target=t)), color="k", ls=":", lw=0.8)
        ax.set_xlabel(f"offset of side 0's {t} (side 1 moves the other way)")
        ax.set_ylabel("mean log-probability")
        ax.legend(fontsize=7)
    fig.suptitle(f"position independence · {model_at(ds)}", fontsize=9)
    return fig


def _local_position_figure(ds: xr.Dataset):
    """binding-iclr's local position plots: per target, the mean log-probability of each answer
    around the stated positions (offset 0, left) and around the exchanged ones (offset Δ, right)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(ds.sizes["target"], 2, figsize=(9, 3 * ds.sizes["target"]), squeeze=False, sharey=True)
    for row, t in zip(axes, ds["target"].values):
        d = int(ds["distance"].sel(target=t))
        sel = ds["position_mean"].sel(target=t)
        for ax, centre, where in zip(row, (0, d), ("stated positions", "exchanged positions")):
            near = sel.sel(offset=[o for o in sel["offset"].values if abs(o - centre) <= 2])
            for q in near["query"].values:
                for a, style in zip(near["answer"].values, ("-", "--")):
                    ax.plot(near["offset"].values, near.sel(query=q, answer=a).values, style, marker="o", ms=3,
                            label=f"{q} → {a}")
            ax.axvline(centre, color="k", ls=":", lw=0.8)
            ax.set_xticks(near["offset"].values)
            ax.set_title(f"{t}: around the {where} (offset {centre})", fontsize=8)
            ax.set_xlabel(f"offset of side 0's {t}")
        row[0].set_ylabel("mean log-probability")
        row[0].legend(fontsize=7)
    family = json.loads(ds.attrs.get("task_params", "{}")).get("family", "")
    fig.suptitle(f"local position independence · {family} · {model_at(ds)}",
                 fontsize=9)
    return fig


def _means_figure(ds: xr.Dataset):
    """binding-iclr's Table 1 as bars: accuracy of the original binding per intervention, mean
    vs random vectors; and the norm of the binding-ID differences per depth."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1.2]})
    acc = ds["means_accuracy"].sel(query=["E0", "E1"]).mean("query")
    names = [str(i) for i in ds["intervention"].values]
    for k, (v, color) in enumerate(zip(ds["vector"].values, ("tab:red", "tab:gray"))):
        left.bar(np.arange(len(names)) + (k - 0.5) * 0.4, acc.sel(vector=v).values, 0.4, label=f"{v} vector",
                 color=color)
    left.set_xticks(range(len(names)), names)
    left.set_ylim(0, 1.05)
    left.set_ylabel("accuracy of the original binding")
    left.set_title("binding IDs predict ≈ 0 for one swap, ≈ 1 for both", fontsize=8)
    left.legend(fontsize=7)
    norm = ds["delta_norm"]
    for kind in ds["kind"].values:
        if "token" not in norm.dims:  # files written before the windows (2026-11-30)
            right.plot(ds["depth"].values, norm.sel(kind=kind).values, "o-", ms=3, label=str(kind))
            continue
        for t in range(int(ds["edited_tokens"].sel(kind=kind))):
            right.plot(ds["depth"].values, norm.sel(kind=kind, token=t).values, "o-" if t == 0 else "s--", ms=3,
                       label=f"{kind}, token {t}")
    right.set_xlabel("depth (0 = embeddings)")
    right.set_ylabel("|Δ|")
    right.legend(fontsize=7)
    fig.suptitle(f"mean interventions · {model_at(ds)} · "
                 f"{ds.sizes['prompt']} contexts", fontsize=9)
    return fig


def _model_axis(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """x positions of a result's models: their parameter counts when every model reports one
    (log scale), else their order; the order from the smallest up; whether x is sizes."""
    sizes = ds["n_parameters"].values.astype(float) if "n_parameters" in ds.coords else None
    by_size = sizes is not None and bool(np.all(sizes > 0))
    x = sizes if by_size else np.arange(ds.sizes["model"])
    return x, np.argsort(x, kind="stable"), by_size


def _label_models(ax, ds: xr.Dataset, x: np.ndarray, by_size: bool, note: str = "") -> None:
    if by_size:
        ax.set_xscale("log")
        ax.set_xlabel(f"parameters{note}")
    else:
        ax.set_xticks(x, [Path(str(m)).name for m in ds["model"].values], fontsize=7)
        ax.set_xlabel(f"model{note}")


def _cyclic_over_models_figure(ds: xr.Dataset):
    """binding-iclr's Fig. 6 (left; ``paper_plots.ipynb`` cells 31-32): balanced accuracy of the
    control and of the cyclic swaps of the entities' and the attributes' binding IDs, per model,
    against the model's size, with chance (1/3) dotted (the pairwise switches likewise)."""
    import matplotlib.pyplot as plt

    measure = ds.attrs.get("measure", "cyclic")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x, order, by_size = _model_axis(ds)
    for t, color in zip(ds["target"].values, ("0.4", "tab:blue", "tab:orange")):
        ax.plot(x[order], ds[f"{measure}_accuracy"].sel(target=t).values[order], "o-", color=color, label=str(t))
    ax.axhline(1 / 3, color="k", ls=":", lw=0.8, label="chance")
    _label_models(ax, ds, x, by_size)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("balanced accuracy (intended binding)")
    ax.legend(fontsize=7)
    family = json.loads(ds.attrs.get("task_params", "{}")).get("family", ds.attrs.get("task"))
    what = "cyclic swaps of 3 binding IDs" if measure == "cyclic" else "pairwise switches of 3 binding IDs"
    ax.set_title(f"{what} over models · {family} · {ds.sizes['prompt']} contexts", fontsize=8)
    return fig


def _means_over_models_figure(ds: xr.Dataset):
    """The mean interventions of binding-iclr's Table 1 over models: accuracy of the original
    binding after each, per model, against the model's size (parameters, log scale) when every
    model reports it, else in the order given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    acc = ds["means_accuracy"].sel(query=["E0", "E1"]).mean("query")
    x, order, by_size = _model_axis(ds)
    for i, color in zip(ds["intervention"].values, ("black", "tab:blue", "tab:orange", "tab:red")):
        for v, style in (("mean", "o-"), ("random", "x:")):
            ax.plot(x[order], acc.sel(intervention=i, vector=v).values[order], style, color=color,
                    alpha=1 if v == "mean" else 0.5, label=f"{i} (mean vector)" if v == "mean" else None)
    _label_models(ax, ds, x, by_size, " (dotted: random vectors)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("accuracy of the original binding")
    ax.legend(fontsize=7)
    family = json.loads(ds.attrs.get("task_params", "{}")).get("family", ds.attrs.get("task"))
    ax.set_title(f"mean interventions over models · {family} · {ds.sizes['prompt']} contexts "
                 "(binding IDs: ≈ 0 for one swap, ≈ 1 for both)", fontsize=8)
    return fig


def _cyclic_figure(ds: xr.Dataset):
    """binding-iclr's Fig. 6 (right) for one family: balanced accuracy of the control and of
    the cyclic swaps (or the pairwise switches) of the entities' and the attributes' binding IDs."""
    measure = ds.attrs.get("measure", "cyclic")
    what = "cyclic swaps of 3 binding IDs" if measure == "cyclic" else "pairwise switches of 3 binding IDs"
    return _balanced_bars([str(t) for t in ds["target"].values], ds[f"{measure}_accuracy"].values,
                          ["0.4", "tab:blue", "tab:orange"], "balanced accuracy (intended binding)",
                          f"{what} · {model_at(ds)}")


def _balanced_bars(names: list[str], values, colors: list[str], ylabel: str, title: str):
    """Bars of balanced accuracy (3 answers) with the chance line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.bar(range(len(names)), values, color=colors[: len(names)])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.axhline(1 / 3, color="k", ls=":", lw=0.8, label="chance")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    return fig


def _cross_subspace_figure(ds: xr.Dataset):
    """binding-iclr's Table 2 for one source as bars: balanced accuracy of the binding the
    source's difference vectors predict, against the zeros and random baselines and the clean
    control."""
    return _balanced_bars(["control", *[str(s) for s in ds["source"].values]],
                          [float(ds["control_accuracy"]), *ds["cross_accuracy"].values],
                          ["0.4", "tab:blue", "tab:gray", "tab:gray"], "balanced accuracy",
                          f"cross-task subspace · {model_at(ds)}")


def _mcq_figure(ds: xr.Dataset):
    """binding-iclr's MCQ test: the share of queries answered with the exchanged letter (by argmax,
    and median-calibrated as the repository's cell 42) against the number of tokens at the end of
    each option's line taken from the letter-swapped context."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(ds["width"].values, ds["mcq_swap_accuracy"].values, "o-", label="argmax")
    if "mcq_balanced_swap_accuracy" in ds:  # files written before 2026-12-06 lack it
        ax.plot(ds["width"].values, ds["mcq_balanced_swap_accuracy"].values, "s--",
                label="balanced (median-calibrated, as the repository)")
    ax.set_xlabel("tokens exchanged at the end of each option's line")
    ax.set_ylabel("exchanged letter wins")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="k", ls=":", lw=0.8, label="chance")
    ax.legend(fontsize=7)
    ax.set_title(f"MCQ exchange · {model_at(ds)} · {ds.sizes['prompt']} contexts",
                 fontsize=8)
    return fig


def _subspace_figure(ds: xr.Dataset):
    """binding-iclr's Fig. 5: per root (side 0's coordinates), the calibrated accuracy over the
    grid of side 1's coordinates in the basis (Δ_1, o); the root and Δ_2's coordinates marked."""
    import matplotlib.pyplot as plt

    n = ds.sizes["root"]
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.9 * rows), squeeze=False)
    x, y = ds["x"].values, ds["y"].values
    cx, cy = (float(v) for v in ds["delta2_coords"].values)
    for r in range(rows * cols):
        ax = axes[r // cols][r % cols]
        if r >= n:
            ax.axis("off")
            continue
        im = ax.imshow(ds["subspace_accuracy"].isel(root=r).values.T, origin="lower", cmap="bwr", vmin=0, vmax=1,
                       extent=(x[0], x[-1], y[0], y[-1]), aspect="auto")
        ax.plot([float(ds["root_x"][r])], [float(ds["root_y"][r])], "o", color="tab:green", ms=5)
        ax.plot([1.0, cx], [0.0, cy], "x", color="k", ms=5)
        ax.set_title(f"side 0 at ({float(ds['root_x'][r]):.1f}, {float(ds['root_y'][r]):.1f})", fontsize=8)
        ax.set_xlabel("x (along Δ_1)", fontsize=7)
        ax.set_ylabel("y (along o)", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean calibrated accuracy")
    fig.suptitle(f"binding subspace · {model_at(ds)} · "
                 f"{ds.sizes['prompt']} contexts (x marks Δ_1 and Δ_2)", fontsize=9)
    return fig
