"""Seeded prompt generators: ``nr.tasks.arithmetic(...)`` and the task registry."""
from __future__ import annotations

from .arithmetic import arithmetic
from .base import TASKS, Example, PromptPair, PromptPairs, TaskError, TaskInfo, get_task
from .binding import binding_examples
from .ioi import ioi_examples
from .kth_smallest import kth_smallest_examples

__all__ = ["arithmetic", "binding_examples", "ioi_examples", "kth_smallest_examples", "TASKS",
           "Example", "PromptPair", "PromptPairs", "TaskError", "TaskInfo", "get_task"]
