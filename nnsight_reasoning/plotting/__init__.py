"""Figures for results: a registry from ``attrs["method"]`` to the function that draws it.

Each figure function takes ``(ds, kind, prompt)`` and returns a matplotlib Figure; adding an
experiment's figure is one entry in :data:`FIGURES`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import xarray as xr

from ..errors import UsageError


def _figures() -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """method -> (figure function, the ``kind`` values it knows; () = no kinds)."""
    from .attention import (ATTENTION_KINDS, BACKUP_KINDS, attention_figure, backup_heads_figure, cspa_figure,
                            greater_than_components_figure, heads_figure, ioi_components_figure, path_patching_figure,
                            probe_figure, pruning_figure, robustness_figure, self_repair_figure,
                            successor_figure)
    from .circuits import CIRCUIT_KINDS, circuit_figure
    from .neurons import binding_figure, neurons_figure
    from .patch import PATCH_KINDS, evaluate_figure, lens_figure, patch_figure

    return {
        "activation_patching": (patch_figure, PATCH_KINDS),
        "attribution_patching": (patch_figure, PATCH_KINDS[:2]),
        "evaluate": (evaluate_figure, ()),
        "logit_lens": (lens_figure, ()),
        "attention": (attention_figure, ATTENTION_KINDS),
        "mechanistic_probe": (probe_figure, ()),
        "head_pruning": (pruning_figure, ()),
        "probe_robustness": (robustness_figure, ()),
        "head_scores": (heads_figure, ()),
        "successor_ov": (successor_figure, ()),
        "path_patching": (path_patching_figure, ()),
        "ioi_components": (ioi_components_figure, ()),
        "greater_than_components": (greater_than_components_figure, ()),
        "backup_heads": (backup_heads_figure, BACKUP_KINDS),
        "cspa": (cspa_figure, ()),
        "self_repair": (self_repair_figure, ()),
        "eap": (circuit_figure, CIRCUIT_KINDS),
        "eap_ig": (circuit_figure, CIRCUIT_KINDS),
        "cot_neurons": (neurons_figure, ()),
        "cot_generation": (neurons_figure, ()),
        "neuron_discovery": (neurons_figure, ()),
        "binding_ids": (binding_figure, ()),
    }


def plot_result(ds: xr.Dataset, path: str | Path | None = None, *, kind: str | None = None, prompt: int = 0):
    """Plot a result and return the matplotlib Figure (a PNG too if ``path`` is given).

    The figure follows ``attrs["method"]``. Patching: per-site heatmaps (layer × position,
    mean over prompts; over checkpoints, layer × checkpoint); ``kind`` "roles" (by token role)
    or "prediction" (prediction change). Evaluation: the distribution of
    P(answer); over checkpoints, the learning curve. Logit lens: accuracy and mean P(answer)
    per layer; over checkpoints, a layer × checkpoint map. Attention: ``kind`` "heatmap" (prompt
    ``prompt``), "entropy" (the paper's head entropy by position and size rank), "rank"
    (attention by size rank per layer) or "mass". Probe: F1 per layer, model vs baseline. Head pruning: accuracy
    against the fraction of heads pruned, per order. Robustness: accuracy drop against the
    probing score, per subset and per bin. Head scores:
    the layer × head grids (also successor heads, path patching's head senders, IOI components
    and CSPA). Circuits: ``kind`` "circuit", "faithfulness", "overlap" or "stability". CoT
    neurons: activation per variant and accuracy under ablation. Binding IDs: each measure's
    accuracy against chance. Backup heads: the grids of one checkpoint; over checkpoints the
    summed backup and the largest backup heads, ``kind`` "logits" or "fraction" (of the clean
    logit difference, as the repository). Greater-than components: the heads' attention to
    and copying of YY, the MLPs' later − earlier years effect.
    """
    method = str(ds.attrs.get("method", ""))
    figures = _figures()
    if method not in figures:
        raise UsageError(f"{method or 'this'} results have no standard figure; plot their variables with xarray")
    draw, kinds = figures[method]
    if kind is not None and not kinds:
        raise UsageError(f"kind={kind!r} does not apply to {method} results (kinds exist for patching, attention, "
                         f"edge-attribution and backup-heads results)")
    if kind is not None and kind not in kinds:
        raise UsageError(f"kind must be one of {', '.join(kinds)} for {method} results (got {kind!r})")
    fig = draw(ds, kind, prompt)
    import warnings

    with warnings.catch_warnings():  # a colorbar shared by a grid of panels: tight_layout leaves it be, and says so
        warnings.filterwarnings("ignore", message=".*not compatible with tight_layout.*")
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
