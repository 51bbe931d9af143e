"""Seeded prompt generators: ``nr.tasks.arithmetic(...)``, ``nr.tasks.kth_smallest(...)`` and the
task registry."""
from __future__ import annotations

from .arithmetic import arithmetic
from .base import TASKS, Example, Examples, PromptPair, PromptPairs, TaskError, TaskInfo, examples, get_task
from .binding import BindingContext, BindingContexts, binding_contexts, binding_examples, sample_contexts
from .cot import VARIANTS as COT_VARIANTS, CotPrompt, CotVariants, cot_arithmetic, cot_variants, load_gsm8k
from .ioi import ioi, ioi_examples
from .kth_smallest import kth_smallest, kth_smallest_examples, kth_smallest_pairs
from .reasoning import ReasoningPrompt, ReasoningPrompts, Statement, corrupted, load_reasoning
from .tokens import RepeatedTokens, repeated_tokens

__all__ = ["arithmetic", "cot_arithmetic", "load_gsm8k", "CotPrompt", "COT_VARIANTS", "ioi", "kth_smallest", "kth_smallest_pairs", "load_reasoning", "corrupted", "binding_examples", "binding_contexts", "BindingContext", "BindingContexts", "sample_contexts", "cot_variants", "CotVariants",
           "ioi_examples", "kth_smallest_examples", "TASKS", "Example", "Examples", "examples", "PromptPair", "PromptPairs",
           "ReasoningPrompt", "ReasoningPrompts", "Statement", "TaskError", "TaskInfo", "get_task"]
