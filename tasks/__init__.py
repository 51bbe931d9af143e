"""Data for every experiment: seeded generators and file loaders (``nr.tasks.arithmetic(...)``,
``nr.tasks.kth_smallest(...)``, ``nr.tasks.examples("ioi", 200)`` …) and the task registry.
Every generator returns a frozen container with ``.task`` and ``.params`` (stored in results
as provenance); no experiment builds its own prompts."""
from __future__ import annotations

from .arithmetic import arithmetic
from .base import TASKS, Example, Examples, PromptPair, PromptPairs, TaskError, TaskInfo, examples, get_task
from .binding import BindingContext, BindingContexts, binding_contexts, binding_examples, sample_contexts
from . import greater_than, pronoun, recall, sentiment  # noqa: F401  (register their tasks)
from .cot import VARIANTS as COT_VARIANTS, CotPrompt, CotVariants, cot_arithmetic, cot_variants, load_gsm8k
from .cot_generation import PROMPT_TYPES as COT_PROMPT_TYPES, CotGeneration, GenPrompt, cot_generation
from .ioi import ioi, ioi_examples
from .kth_smallest import kth_smallest, kth_smallest_examples, kth_smallest_pairs
from .mcq import McqContext, McqContexts, mcq_contexts
from .reasoning import ReasoningPrompt, ReasoningPrompts, Statement, corrupted, load_reasoning
from .tokens import (OrdinalSequences, RepeatedTokens, TextSequences, ordinal_sequences, repeated_tokens,
                     text_sequences)

__all__ = [
    # data for each experiment
    "arithmetic", "ioi", "kth_smallest_pairs",            # prompt pairs: patch, circuit, edge_patching
    "examples",                                            # prompts with answers: evaluate
    "kth_smallest", "load_reasoning", "corrupted",         # labelled reasoning prompts: attention, probe
    "repeated_tokens",                                     # head_scores
    "ordinal_sequences", "OrdinalSequences",               # successor_heads
    "text_sequences", "TextSequences",                     # copy_suppression
    "cot_variants", "cot_arithmetic", "load_gsm8k",        # neurons
    "cot_generation",                                      # cot_generation (neurons --generate)
    "binding_contexts", "mcq_contexts",                    # binding
    # containers and the registry
    "PromptPair", "PromptPairs", "Example", "Examples", "ReasoningPrompt", "ReasoningPrompts", "Statement",
    "RepeatedTokens", "CotPrompt", "CotVariants", "COT_VARIANTS", "CotGeneration", "GenPrompt", "COT_PROMPT_TYPES", "BindingContext", "BindingContexts",
    "McqContext", "McqContexts",
    "binding_examples", "sample_contexts", "ioi_examples", "kth_smallest_examples",
    "TASKS", "TaskInfo", "TaskError", "get_task",
]
