"""Checks for users' own code and tests: ``nr.testing.assert_valid_result(ds)`` validates any
experiment's result (its method's variables and dims, provenance attrs, probabilities in
[0, 1]) against :mod:`nnsight_reasoning.results.schema`."""
from __future__ import annotations

from .results.schema import REQUIRED_ATTRS, SCHEMAS, assert_valid_result

__all__ = ["assert_valid_result", "SCHEMAS", "REQUIRED_ATTRS"]
