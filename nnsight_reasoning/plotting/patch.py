"""Figures for patching and evaluation results: layer × position heatmaps per site, the
distribution of P(answer), learning curves."""
from __future__ import annotations

from collections import Counter

import numpy as np
import xarray as xr

from ..experiments.patch_analysis import at_last_token
from ..results.io import model_at, site_variables
from ..sites import EMBED_LAYER, EMBED_SITES, SITES, UNIT_DIMS, WHOLE_PROMPT_SITES, unit_dim


def _position_labels(ds: xr.Dataset) -> list[str]:
    """'index token' per position; the token shared by most prompts, '*' if they differ."""
    labels = []
    tokens = ds["token"].values
    for j, pos in enumerate(ds["position"].values):
        counts = Counter(t for t in tokens[:, j] if t)
        tok, c = counts.most_common(1)[0] if counts else ("", 0)
        mark = "" if c == tokens.shape[0] else "*"
        where = "last" if pos == -1 else str(pos)
        labels.append(f"{where} {tok}{mark}")
    return labels


def _learning_curve(ds: xr.Dataset):
    import matplotlib.pyplot as plt

    names = [str(c) for c in ds["checkpoint"].values]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.6))
    ax.plot(x, ds["accuracy"].values, "o-", label="accuracy (top-1)")
    ax.plot(x, ds["mean_p_answer"].values, "s--", label="mean P(answer)")
    # Revisions are often log-spaced early in training (Pythia: 1, 2, 4, … 512), so they are
    # spaced evenly and labelled rather than placed on a step axis.
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                  fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("checkpoint (training order)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(f"{ds.attrs.get('task')} on {ds.attrs.get('model')} over training "
                 f"({ds.sizes['prompt']} prompts)", fontsize=9)
    return fig


def _heatmaps(ds: xr.Dataset, sites: list[str]):
    """One panel per (checkpoint, site); in a sweep at one position, one layer × checkpoint panel per site."""
    import matplotlib.pyplot as plt

    sweep = "checkpoint" in ds.dims
    if sweep and ds.sizes["position"] == 1 and not any(unit_dim(s) for s in sites):
        fig, axes = plt.subplots(1, len(sites), figsize=(max(4.0, 0.6 * ds.sizes["checkpoint"] + 2.5) * len(sites),
                                                         0.45 * ds.sizes["layer"] + 2.8), squeeze=False)
        for ax, site in zip(axes[0], sites):
            vals = np.asarray(ds[site].isel(position=0).mean("prompt").transpose("layer", "checkpoint").values, float)
            _panel(fig, ax, vals, [str(c) for c in ds["checkpoint"].values], ds, _norm([vals]),
                   f"{site} at the last token: mean {ds.attrs.get('metric')} over {ds.sizes['prompt']} prompts")
            ax.set_xlabel("checkpoint (training order)")
        fig.suptitle(f"{ds.attrs.get('task')} · {ds.attrs.get('model')} over training", fontsize=10)
        return fig
    checkpoints = list(ds["checkpoint"].values) if sweep else [None]
    width = max(4.0, 0.55 * ds.sizes.get("position", 1) + 2.5)
    height = 0.45 * ds.sizes["layer"] + 2.6
    fig, axes = plt.subplots(len(checkpoints), len(sites), figsize=(width * len(sites), height * len(checkpoints)),
                             squeeze=False)
    for col, site in enumerate(sites):
        means = []
        # a unit site's rows: the layers it has values at (embed_dim: -1 only; mlp_dim: the blocks)
        kept = ds[site].notnull().any([d for d in ds[site].dims if d != "layer"]).values
        rows = ds.sel(layer=kept) if unit_dim(site) and kept.any() else ds
        for c in checkpoints:
            da = rows[site] if c is None else rows[site].sel(checkpoint=c)
            xlabels, where = _position_labels(ds), ""
            unit = unit_dim(site)
            if unit:
                da = at_last_token(da, ds).transpose("prompt", "layer", unit)
                n = ds.sizes[unit]
                step = max(1, n // 16)  # at most ~16 labelled ticks (a layer has hundreds of neurons)
                xlabels = [f"{unit} {u}" if u % step == 0 else "" for u in ds[unit].values]
                where = " (last token)"
            elif site in WHOLE_PROMPT_SITES and ds.sizes["position"] > 1:  # one value per layer, at the last token
                da = at_last_token(da, ds).drop_vars("position").expand_dims("position", axis=-1)
                xlabels, where = ["last"], " (last token)"
            means.append(np.asarray(da.mean("prompt").values, dtype=float))
        norm = _norm(means)  # one colour scale down a column, so checkpoints compare
        for row, (c, vals) in enumerate(zip(checkpoints, means)):
            title = f"{site}{where}: mean {ds.attrs.get('metric')} over {ds.sizes['prompt']} prompts"
            _panel(fig, axes[row][col], vals, xlabels, rows, norm, title if row == 0 else "")
            if c is not None:
                axes[row][col].set_ylabel(f"{c}\nlayer")
    fig.suptitle(f"{ds.attrs.get('task')} · {model_at(ds)}", fontsize=10)
    return fig


def _norm(arrays: list[np.ndarray]):
    from matplotlib.colors import Normalize, SymLogNorm

    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    # stolfo_ie is a ratio of probabilities and spans many decades on confident
    # models; a symmetric log scale keeps the small effects visible.
    return SymLogNorm(linthresh=1.0, vmin=-lim, vmax=lim) if lim > 100 else Normalize(-lim, lim)


def _panel(fig, ax, vals, xlabels, ds, norm, title) -> None:
    from matplotlib.colors import SymLogNorm

    # nearest: a layer × 128-unit panel must not be smoothed across its few layer rows
    im = ax.imshow(vals, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower", interpolation="nearest")
    ax.set_yticks(range(len(ds["layer"])), [str(l) for l in ds["layer"].values])
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title + (" (symlog)" if isinstance(norm, SymLogNorm) else ""), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)


PATCH_KINDS = ("positions", "roles", "prediction")


def patch_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """``kind`` "positions" (default): per-site heatmaps (layer × position, mean over prompts);
    in a sweep, layer × checkpoint at a single position, else one row per checkpoint (colour
    scale shared down each column). "roles": layer × token role (operands, operator, last …;
    :func:`nnsight_reasoning.by_token_role`), the paper's figure. "prediction": the share of
    prompts whose top token moved to the source answer or elsewhere, per layer at the last
    token (lm-arithmetic's prediction-change plot). Sweeps draw their last checkpoint."""
    if kind in (None, "positions"):
        return _heatmaps(ds, site_variables(ds))
    last = ds.isel(checkpoint=-1) if "checkpoint" in ds.dims else ds
    return _roles(last) if kind == "roles" else _prediction(last)


def _roles(ds: xr.Dataset):
    import matplotlib.pyplot as plt

    from ..experiments.patch_analysis import by_token_role

    roles = by_token_role(ds)
    sites = [v for v in roles.data_vars if not unit_dim(v)] or list(roles.data_vars)
    fig, axes = plt.subplots(1, len(sites), figsize=(4.5 * len(sites), 0.5 * ds.sizes["layer"] + 2.5), squeeze=False)
    # the embeddings have layer -1 only, the blocks never: each panel keeps its own rows
    layers = roles["layer"].values
    parts = [roles.sel(layer=layers[(layers < 0) == (v in EMBED_SITES)]) for v in sites]
    means = [np.asarray((p[v].mean(unit_dim(v)) if unit_dim(v) else p[v]).transpose("layer", "role"), float)
             for p, v in zip(parts, sites)]
    norm = _norm(means)
    labels = [f"{r} ({n})" for r, n in zip(roles["role"].values, roles["n"].values)]
    for ax, v, vals, p in zip(axes[0], sites, means, parts):
        _panel(fig, ax, vals, labels, p, norm, f"{v}: mean {ds.attrs.get('metric')} per token role")
    fig.suptitle(f"{ds.attrs.get('task')} · {model_at(ds)} "
                 f"({ds.sizes['prompt']} pairs; role (positions))", fontsize=10)
    return fig


def _prediction(ds: xr.Dataset):
    import matplotlib.pyplot as plt

    from ..errors import UsageError

    sites = [v for v in site_variables(ds) if f"{v}_prediction" in ds and not unit_dim(v)]
    if not sites:
        whole = [s for s in SITES if s not in UNIT_DIMS]
        raise UsageError(f"the prediction figure needs {', '.join(whole[:-1])} or {whole[-1]} patched exactly "
                         f"(the unit sites' codes, {', '.join(UNIT_DIMS)}, are per unit: read them with "
                         f"nr.prediction_change)")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, v in enumerate(sites):
        code = at_last_token(ds[f"{v}_prediction"], ds)
        valid = code >= 0
        for value, style in ((1, "-"), (2, ":")):
            share = (code == value).where(valid).mean("prompt")
            keep = valid.any("prompt").values
            ax.plot(ds["layer"].values[keep], share.values[keep], style, marker="o", color=f"C{k}",
                    label=f"{v}: {'to the source answer' if value == 1 else 'elsewhere'}")
    ax.set_xticks(ds["layer"].values)
    ax.set_xlabel("layer (-1 = embeddings)")
    ax.set_ylabel("share of prompts")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"prediction change at the last token · {ds.attrs.get('task')} · "
                 f"{model_at(ds)}", fontsize=9)
    return fig


def _models(ds: xr.Dataset) -> list[tuple[str, xr.Dataset]]:
    """(name, that model's part without the other models' padding) for each model of a result."""
    from ..results.checkpoints import one_model

    return [(str(name), one_model(ds, name)) for name in ds["model"].values]


def _prompts(ds: xr.Dataset) -> str:
    """"N prompts"; over models whose prompt counts differ (data made per tokenizer), "up to N"."""
    from ..results.io import list_attr

    return ("up to " if "prompt" in list_attr(ds.attrs.get("padded_dims", "[]")) else "") + \
        f"{ds.sizes['prompt']} prompts"


def _lens_over_models(ds: xr.Dataset):
    """Per model, mean P(answer) against the layer (left) and accuracy (right); over checkpoints,
    one layer × checkpoint map of mean P(answer) per model."""
    import matplotlib.pyplot as plt

    parts = _models(ds)
    read = ds.attrs.get("read", "output")
    if "checkpoint" in ds.dims:
        fig, axes = plt.subplots(1, len(parts), squeeze=False, figsize=(
            len(parts) * max(4.0, 0.6 * ds.sizes["checkpoint"] + 2.0), 0.45 * ds.sizes["layer"] + 2.8))
        for ax, (name, part) in zip(axes[0], parts):
            im = _lens_map(ax, part)
            ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=axes[0][-1], shrink=0.8, label="mean P(answer)")  # every map spans 0..1
        fig.suptitle(f"logit lens ({read}) · {ds.attrs.get('task')} over training", fontsize=10)
        return fig
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, part in parts:
        for ax, var in zip(axes, ("mean_p_answer", "accuracy")):
            ax.plot(part["layer"].values, part[var].values, "o-", label=name)
    layers = ds["layer"].values  # every model's
    for ax, label in zip(axes, ("mean P(answer)", "accuracy (lens top-1 = answer)")):
        ax.set_xticks(layers, ["embed" if li == EMBED_LAYER else str(li) for li in layers])
        ax.set_xlabel("layer read")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"logit lens ({read}) · {ds.attrs.get('task')} · {_prompts(ds)}", fontsize=10)
    return fig


def _lens_map(ax, ds: xr.Dataset):
    """Mean P(answer) as a layer × checkpoint map on ``ax``."""
    labels = ["embed" if li == EMBED_LAYER else str(li) for li in ds["layer"].values]
    im = ax.imshow(ds["mean_p_answer"].transpose("layer", "checkpoint").values, origin="lower", aspect="auto",
                   vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(ds.sizes["checkpoint"]), [str(c) for c in ds["checkpoint"].values], rotation=60,
                  ha="right", fontsize=8)
    ax.set_yticks(range(ds.sizes["layer"]), labels)
    ax.set_xlabel("checkpoint (training order)")
    ax.set_ylabel("layer")
    return im


def lens_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """Accuracy and mean P(answer) under the logit lens, per layer; over checkpoints, mean
    P(answer) as a layer × checkpoint heatmap; over models, one line (or map) per model."""
    import matplotlib.pyplot as plt

    if "model" in ds.dims:
        return _lens_over_models(ds)
    title = f"logit lens ({ds.attrs.get('read', 'output')}) · {ds.attrs.get('task')} · {ds.attrs.get('model')}"
    labels = ["embed" if li == EMBED_LAYER else str(li) for li in ds["layer"].values]
    if "checkpoint" in ds.dims:
        fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * ds.sizes["checkpoint"] + 2.5), 0.45 * ds.sizes["layer"] + 2.6))
        im = _lens_map(ax, ds)
        fig.colorbar(im, ax=ax, shrink=0.8, label="mean P(answer)")
        ax.set_title(f"{title} over training ({ds.sizes['prompt']} prompts)", fontsize=9)
        return fig
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = np.arange(ds.sizes["layer"])
    ax.plot(x, ds["accuracy"].values, "o-", label="accuracy (lens top-1 = answer)")
    ax.plot(x, ds["mean_p_answer"].values, "s--", label="mean P(answer)")
    ax.set_xticks(x, labels)
    ax.set_xlabel("layer whose output is read")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}@{ds.attrs.get('revision')} ({ds.sizes['prompt']} prompts)", fontsize=9)
    return fig


def _evaluate_over_models(ds: xr.Dataset):
    """Accuracy and mean P(answer) of each model (bars); over checkpoints, one learning curve per
    model (Tigges et al.'s task performance over training across model sizes)."""
    import matplotlib.pyplot as plt

    parts = _models(ds)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = ("accuracy (top-1)", "mean P(answer)")
    if "checkpoint" in ds.dims:
        names = [str(c) for c in ds["checkpoint"].values]  # every model's, in training order
        for name, part in parts:
            x = [names.index(str(c)) for c in part["checkpoint"].values]
            for ax, var in zip(axes, ("accuracy", "mean_p_answer")):
                ax.plot(x, part[var].values, "o-", label=name)
        for ax in axes:
            ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0,
                          ha="right" if len(names) > 6 else "center", fontsize=8)
            ax.set_xlabel("checkpoint (training order)")
        title = f"{ds.attrs.get('task')} over training"
    else:
        x = np.arange(len(parts))
        for ax, var in zip(axes, ("accuracy", "mean_p_answer")):
            ax.bar(x, [float(part[var]) for _, part in parts], color="tab:blue")
            ax.set_xticks(x, [name for name, _ in parts], rotation=30 if len(parts) > 3 else 0,
                          ha="right" if len(parts) > 3 else "center", fontsize=8)
        title = f"{ds.attrs.get('task')}"
    for ax, label in zip(axes, labels):
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if "checkpoint" in ds.dims:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} · {len(parts)} models · {_prompts(ds)}", fontsize=10)
    return fig


def evaluate_figure(ds: xr.Dataset, kind: str | None = None, prompt: int = 0):
    """The distribution of P(answer); over checkpoints, the learning curve; over models, their
    accuracy and mean P(answer) side by side, or one learning curve per model."""
    import matplotlib.pyplot as plt

    if "model" in ds.dims:
        return _evaluate_over_models(ds)
    if "checkpoint" in ds.dims:
        return _learning_curve(ds)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(ds["p_answer"].values, bins=20, range=(0, 1), color="tab:blue")
    ax.set_xlabel("P(correct answer)")
    ax.set_ylabel("prompts")
    ax.set_title(f"{ds.attrs.get('task')} on {model_at(ds)}: "
                 f"accuracy {float(ds['accuracy']):.1%}", fontsize=9)
    return fig
