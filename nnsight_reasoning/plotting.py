"""Figures for result Datasets (matplotlib)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import xarray as xr

from .results import site_variables
from .sites import var_name


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


def plot_result(ds: xr.Dataset, path: str | Path | None = None):
    """Plot a result: patching -> per-site heatmaps (layer × position, mean over prompts);
    evaluation -> accuracy. Returns the matplotlib Figure; writes a PNG if ``path`` is given.
    """
    import matplotlib.pyplot as plt

    sites = site_variables(ds)
    if not sites and "correct" in ds:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(ds["p_answer"].values, bins=20, range=(0, 1), color="tab:blue")
        ax.set_xlabel("P(correct answer)")
        ax.set_ylabel("prompts")
        ax.set_title(f"{ds.attrs.get('task')} on {ds.attrs.get('model')}@{ds.attrs.get('revision')}: "
                     f"accuracy {ds.attrs.get('accuracy', float('nan')):.1%}", fontsize=9)
    else:
        n_pos = ds.sizes.get("position", 1)
        width = max(4.0, 0.55 * n_pos + 2.5)
        fig, axes = plt.subplots(1, len(sites), figsize=(width * len(sites), 0.45 * ds.sizes["layer"] + 2.6),
                                 squeeze=False)
        from matplotlib.colors import Normalize, SymLogNorm

        for ax, site in zip(axes[0], sites):
            da = ds[site]
            if "checkpoint" in da.dims:
                da = da.isel(checkpoint=-1)
            xlabels = _position_labels(ds)
            where = ""
            if site == var_name("head"):
                if da.sizes["position"] > 1:  # each prompt's own last token
                    da = da.isel(position=xr.DataArray(ds["n_tokens"].values - 1, dims="prompt"))
                else:
                    da = da.isel(position=0)
                da = da.transpose("prompt", "layer", "head")
                xlabels, where = [f"head {h}" for h in ds["head"].values], " (last token)"
            vals = np.asarray(da.mean("prompt").values, dtype=float)
            lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() and np.nanmax(np.abs(vals)) > 0 else 1.0
            # stolfo_ie is a ratio of probabilities and spans many decades on confident
            # models; a symmetric log scale keeps the small effects visible.
            log = lim > 100
            norm = SymLogNorm(linthresh=1.0, vmin=-lim, vmax=lim) if log else Normalize(-lim, lim)
            im = ax.imshow(vals, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
            ax.set_yticks(range(len(ds["layer"])), [str(l) for l in ds["layer"].values])
            ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("layer")
            ax.set_title(f"{site}{where}: mean {ds.attrs.get('metric')} over {ds.sizes['prompt']} prompts"
                         f"{' (symlog)' if log else ''}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"{ds.attrs.get('task')} · {ds.attrs.get('model')}@{ds.attrs.get('revision')}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
