"""The built wheel: cli/ and tasks/ live under nnsight_reasoning, the weights ship inside."""
from __future__ import annotations

import pytest

import subprocess
import sys
import json
import zipfile
from pathlib import Path

from tests.script_modules import load_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    wheel_zip = zipfile.ZipFile(wheel)
    names = wheel_zip.namelist()
    assert {n.split("/")[0] for n in names} == {"nnsight_reasoning", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    assert "nnsight_reasoning/cli/main.py" in names and "nnsight_reasoning/tasks/arithmetic.py" in names
    assert "nnsight_reasoning/embedded/revisions/main/model.safetensors" in names
    assert "nnsight_reasoning/embedded/card.json" in names
    # every module of the tree ships (pyproject lists the packages by name; a subpackage missing there
    # ships only as package data, with setuptools' deprecation warning)
    tree = {f"nnsight_reasoning/{prefix}{p.relative_to(ROOT / folder).as_posix()}"
            for folder, prefix in (("nnsight_reasoning", ""), ("cli", "cli/"), ("tasks", "tasks/"))
            for p in (ROOT / folder).rglob("*.py")}
    assert tree <= set(names), f"modules missing from the wheel (pyproject's packages): {sorted(tree - set(names))}"
    entry = wheel_zip.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "reason-interp = nnsight_reasoning.cli.main:main" in entry
    # the model card's sizes are the wheel's: every revision file, as stored and as deflated in it
    shipped = [i for i in wheel_zip.infolist() if i.filename.startswith(
        "nnsight_reasoning/embedded/revisions/") and not i.is_dir()]
    measured = load_script("make_model_card").sizes()
    # pip builds in the tree's build/lib, which keeps files since removed (an old revision): a
    # stale one would make the wheel larger than the card
    assert measured == {"files": len(shipped), "bytes": sum(i.file_size for i in shipped),
                        "wheel_bytes": sum(i.compress_size for i in shipped)}, \
        f"the wheel's revisions differ from the tree's; if {ROOT / 'build'} is stale, delete it"
    # deflate's output depends on the zlib build: on a Python with another one, remeasure the card
    # (make_model_card.py --reuse-revisions) before reading its wheel size
    card = json.loads((ROOT / "nnsight_reasoning" / "embedded" / "card.json").read_text())["size"]
    assert card == measured
