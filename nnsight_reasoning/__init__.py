"""nnsight-reasoning: mechanistic interpretability of reasoning in language models.

>>> import nnsight_reasoning as nr
>>> model = nr.load_model()                                   # the embedded model
>>> pairs = nr.tasks.arithmetic(intervention_type="operands", n_prompts=64, seed=0)
>>> ds = nr.patch(model, pairs, sites=["mlp", "attn"], positions="last")
>>> ds.mlp.mean("prompt").plot()

One noun per experiment, each ``nr.<noun>(model, data, *options, batch_size, remote,
progress, resume_dir, revisions)`` returning a labelled ``xarray.Dataset``; data comes from
``nr.tasks``; ``nr.testing.assert_valid_result(ds)`` checks any result's schema.
"""
from __future__ import annotations

from . import experiments, tasks, testing
from .errors import NaNWarning, RunError, UsageError
from .experiments.attention import attention
from .experiments.backup_heads import backup_heads
from .experiments.binding import binding
from .experiments.circuit import circuit, edge_patching
from .experiments.copy_suppression import copy_suppression
from .experiments.cot_generation import cot_generation
from .experiments.evaluate import evaluate
from .experiments.greater_than_components import greater_than_components
from .experiments.heads import head_scores, successor_heads
from .experiments.ioi_components import ioi_components
from .experiments.lens import logit_lens
from .experiments.neurons import neurons
from .experiments.path_patching import path_patching
from .experiments.patch import patch
from .experiments.patch_analysis import (by_token_role, drop_mult_by_one, late_mlp_share, prediction_change,
                                         unit_overlap)
from .experiments.probe import probe
from .experiments.pruning import prune
from .experiments.robustness import robustness
from .experiments.self_repair import self_repair
from .training import finetune
from .metrics import METRICS
from .models import load_model
from .plotting import plot_result
from .results import load_result, save_result
from .runner import over_revisions
from .sites import SITES

__version__ = "0.1.0"
__all__ = [
    # experiments
    "patch", "evaluate", "logit_lens", "attention", "probe", "prune", "robustness", "head_scores", "successor_heads", "circuit", "edge_patching", "path_patching", "ioi_components", "greater_than_components", "backup_heads", "copy_suppression", "self_repair", "neurons", "cot_generation", "binding",
    # models, data, results
    "load_model", "finetune", "tasks", "over_revisions", "save_result", "load_result", "plot_result", "prediction_change", "by_token_role", "late_mlp_share", "unit_overlap", "drop_mult_by_one",
    "testing", "experiments",
    "SITES", "METRICS", "UsageError", "RunError", "NaNWarning",
]
