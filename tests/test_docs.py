"""The front door and the documentation site: a short README whose links resolve, and the
MkDocs site built with --strict (broken links or references fail it)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "the README is the front door: keep it under 150 lines, the rest in docs/"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_every_docs_page_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    pages |= {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs" / "notebooks").glob("*.ipynb")}
    missing = sorted(p for p in pages if p not in nav)
    assert not missing, f"pages outside mkdocs.yml's nav: {missing}"


@pytest.mark.slow  # ~30 s: renders every page, the API reference and the executed notebooks
def test_the_site_builds_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for page in ("index.html", "tigges/index.html", "api/index.html", "notebooks/circuits_over_training/index.html"):
        assert (tmp_path / "site" / page).stat().st_size > 5000, page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "path_patching" in api and "Parameters" in api  # the docstrings were rendered
