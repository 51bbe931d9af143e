"""Results: netCDF I/O and provenance (``io``), finished parts for resuming (``parts``),
training revisions and their stacking (``checkpoints``), schema validators (``schema``)."""
from __future__ import annotations

from .io import last_checkpoint, load_result, provenance, sanitize_attrs, save_result, site_variables

__all__ = ["load_result", "save_result", "provenance", "sanitize_attrs", "last_checkpoint", "site_variables"]
