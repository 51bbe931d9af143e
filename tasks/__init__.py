"""Seeded prompt generators: ``nr.tasks.arithmetic(...)``, ``nr.tasks.kth_smallest(...)`` and the
task registry."""
from __future__ import annotations

from .arithmetic import arithmetic
from .base import TASKS, Example, PromptPair, PromptPairs, TaskError, TaskInfo, get_task
from .binding import binding_examples
from .ioi import ioi, ioi_examples
from .kth_smallest import kth_smallest, kth_smallest_examples, kth_smallest_pairs
from .reasoning import ReasoningPrompt, ReasoningPrompts, Statement, corrupted, load_reasoning

__all__ = ["arithmetic", "ioi", "kth_smallest", "kth_smallest_pairs", "load_reasoning", "corrupted", "binding_examples",
           "ioi_examples", "kth_smallest_examples", "TASKS", "Example", "PromptPair", "PromptPairs",
           "ReasoningPrompt", "ReasoningPrompts", "Statement", "TaskError", "TaskInfo", "get_task"]
