"""Seeded prompt generators: ``nr.tasks.arithmetic(...)``, ``nr.tasks.kth_smallest(...)`` and the
task registry."""
from __future__ import annotations

from .arithmetic import arithmetic
from .base import TASKS, Example, Examples, PromptPair, PromptPairs, TaskError, TaskInfo, examples, get_task
from .binding import BindingContext, binding_contexts, binding_examples
from .cot import VARIANTS as COT_VARIANTS, CotPrompt, cot_arithmetic, load_gsm8k
from .ioi import ioi, ioi_examples
from .kth_smallest import kth_smallest, kth_smallest_examples, kth_smallest_pairs
from .reasoning import ReasoningPrompt, ReasoningPrompts, Statement, corrupted, load_reasoning

__all__ = ["arithmetic", "cot_arithmetic", "load_gsm8k", "CotPrompt", "COT_VARIANTS", "ioi", "kth_smallest", "kth_smallest_pairs", "load_reasoning", "corrupted", "binding_examples", "binding_contexts", "BindingContext",
           "ioi_examples", "kth_smallest_examples", "TASKS", "Example", "Examples", "examples", "PromptPair", "PromptPairs",
           "ReasoningPrompt", "ReasoningPrompts", "Statement", "TaskError", "TaskInfo", "get_task"]
