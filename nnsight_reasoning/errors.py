"""The two kinds of error a user can see. Messages are one line and say how to fix it."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input (unknown task, site, metric, model; out-of-range layer; bad file). CLI exit 2."""


class RunError(RuntimeError):
    """A failure while running (remote errors, time-outs). CLI exit 1."""
