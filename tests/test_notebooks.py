"""Every notebook runs from a clean state on the embedded model (nbclient, a real kernel), and
is stored without outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from build_notebooks import execute  # noqa: E402

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_five_paper_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["arithmetic_causal_mediation", "binding_ids", "circuits_over_training",
                                           "cot_neurons", "multistep_attention_probe"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_is_stored_clean(path, tmp_path):
    stored = nbformat.read(path, as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store notebooks without outputs"
    source = "\n".join(c.source for c in code)
    assert "nnsight_reasoning" in source and "_" + "module" not in source  # the public API only
    nb, _ = execute(path, tmp_path)  # raises CellExecutionError, naming the cell, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook draws no figure"
    assert any("text/html" in o.get("data", {}) for o in outputs), "no rich (HTML) result display"
    assert not any(o.get("output_type") == "error" for o in outputs)
