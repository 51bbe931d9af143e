"""The two kinds of error a user can see, the one warning, and the integer check that every
option goes through. Messages are one line and say how to fix it."""
from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np


class UsageError(ValueError):
    """Bad input (unknown task, site, metric, model; out-of-range layer; bad file). CLI exit 2."""


class RunError(RuntimeError):
    """A failure while running (remote errors, time-outs). CLI exit 1."""


class NaNWarning(RuntimeWarning):
    """The model returned NaN numbers during a run (its activations overflowed: float16); the
    result holds NaN where they went and counts them in ``attrs["n_nan_values"]``."""


def as_index(v: Any) -> int | None:
    """``v`` as an int if it is one (Python's, numpy's, a 0-d integer array or tensor), else None;
    a bool is not (Python counts True as 1, which would silently select index 1 or one prompt),
    nor an array of one element."""
    if isinstance(v, (bool, np.bool_)) or str(getattr(v, "dtype", "")) in ("bool", "torch.bool") or \
            getattr(v, "ndim", 0) != 0:
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def checked_int(name: str, value: Any, low: int, high: int | None = None, *, bound: str | None = None,
                error: type[UsageError] = UsageError) -> int:
    """``value`` as an int in ``low``..``high`` (``high`` None: no upper bound): Python's and numpy's
    integers pass (they behave alike downstream, in ranges, slices and scikit-learn); bools, floats,
    and tensors or arrays (which do not, and would be recorded as "tensor(6)") do not. Otherwise
    ``error`` saying "NAME must be an integer >= LOW" or "... from LOW to HIGH" (``bound`` replaces
    that last part)."""
    v = as_index(value) if isinstance(value, numbers.Integral) else None
    if v is None or v < low or (high is not None and v > high):
        bound = bound or (f">= {low}" if high is None else f"from {low} to {high}")
        raise error(f"{name} must be an integer {bound} (got {value!r})")
    return v
