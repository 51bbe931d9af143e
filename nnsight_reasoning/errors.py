"""The two kinds of error a user can see, and the one warning. Messages are one line and say how to fix it."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input (unknown task, site, metric, model; out-of-range layer; bad file). CLI exit 2."""


class RunError(RuntimeError):
    """A failure while running (remote errors, time-outs). CLI exit 1."""


class NaNWarning(RuntimeWarning):
    """The model returned NaN numbers during a run (its activations overflowed: float16); the
    result holds NaN where they went and counts them in ``attrs["n_nan_values"]``."""
