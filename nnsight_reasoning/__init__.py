"""nnsight-reasoning: mechanistic interpretability of reasoning in language models.

>>> import nnsight_reasoning as nr
>>> model = nr.load_model()                                   # the embedded model
>>> pairs = nr.tasks.arithmetic(intervention_type="operands", n_prompts=64, seed=0)
>>> ds = nr.patch(model, pairs, sites=["mlp", "attn"], positions="last")
>>> ds.mlp.mean("prompt").plot()
"""
from __future__ import annotations

from . import circuits, neurons, tasks
from .embedded import revisions as embedded_revisions  # noqa: F401  (importable, not listed)
from .errors import RunError, UsageError
from .checkpoints import over_revisions, parse_revisions  # noqa: F401  (parse_revisions: importable, not listed)
from .attention import attention
from .binding import binding
from .evaluate import evaluate
from .heads import head_scores
from .metrics import METRICS
from .models import ModelInfo, load_model  # noqa: F401  (ModelInfo: importable, not listed)
from .patching import patch
from .probe import probe
from .plotting import plot_result
from .results import assert_valid_result, load_result, save_result  # noqa: F401  (assert_valid_result: not listed)
from .sites import SITES
from .tasks import PromptPair, PromptPairs

__version__ = "0.1.0"
__all__ = [
    "tasks", "load_model", "patch", "attention", "probe", "head_scores", "circuits", "neurons", "binding",
    "evaluate", "over_revisions", "plot_result", "save_result", "load_result",
    "SITES", "METRICS", "PromptPair", "PromptPairs", "UsageError", "RunError",
]
