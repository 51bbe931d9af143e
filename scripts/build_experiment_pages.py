"""Write the result schema into each experiment page (docs/experiments/*.md) from a real run.

A page marks its schema block with the command that produces it::

    <!-- schema: reason-interp patch --task arithmetic --n-prompts 4 -->
    ... (written by this script) ...
    <!-- /schema -->

The command runs on the embedded model (in this process, through the CLI), its result file
is read back, and the block lists the Dataset's dimensions, variables (dims, dtype, long name,
units), coordinates and the attributes beyond the provenance every result carries. So the
page shows what the code writes today; tests/test_docs.py (slow tier) checks that the
committed pages are this script's output.

    python scripts/build_experiment_pages.py                 # rewrites every page's block
    python scripts/build_experiment_pages.py --check         # exit 1 if a page is stale
    python scripts/build_experiment_pages.py patch binding   # only these pages
"""
from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "experiments"
BLOCK = re.compile(r"(<!-- schema: (?P<cmd>[^\n]*?) -->\n)(?P<body>.*?)(<!-- /schema -->)", re.S)


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _dims(var) -> str:
    return ", ".join(f"`{d}`" for d in var.dims) or "(scalar)"


def _dtype(var) -> str:
    return "str" if var.dtype.kind in "UO" else str(var.dtype)


# what the coordinates shared by many experiments mean, where the result gives no long_name
COORDS = {"layer": "0-based layer", "head": "head index in its layer",
          "neuron": "MLP hidden unit index in its layer", "checkpoint": "revision name (a sweep)",
          "base": "base (clean) prompt", "source": "source (corrupted) prompt", "base_answer": "base prompt's answer",
          "source_answer": "source prompt's answer", "n_tokens": "prompt length in tokens",
          "token": "the prompt's token at each position ('' past its end)", "text": "prompt text",
          "answer": "the correct answer"}


def render(command: str) -> str:
    """The schema block of ``command`` (``reason-interp …``, without ``--out``), from a real run."""
    from typer.testing import CliRunner

    import nnsight_reasoning as nr
    from nnsight_reasoning.cli.main import app
    from nnsight_reasoning.results.io import REQUIRED_ATTRS

    args = shlex.split(command)
    if args[:1] != ["reason-interp"]:
        raise SystemExit(f"a schema command starts with reason-interp (got {command!r})")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.nc"
        res = CliRunner().invoke(app, [*args[1:], "--out", str(out)])
        if res.exit_code != 0:
            raise SystemExit(f"{command} failed (exit {res.exit_code}):\n{res.output}\n{res.exception!r}")
        ds = nr.load_result(out)
        ds.load()
    lines = [f"The result of `{command}` (read back from its `--out` file; this block is written by "
             "`python scripts/build_experiment_pages.py` from that run).", "",
             "**Dimensions:** " + ", ".join(f"`{d}` ({n})" for d, n in ds.sizes.items()), "",
             "| variable | dims | dtype | meaning | units |", "|---|---|---|---|---|"]
    for name, var in ds.data_vars.items():
        lines.append(f"| `{name}` | {_dims(var)} | {_dtype(var)} | {_cell(var.attrs.get('long_name', ''))} | "
                     f"{_cell(var.attrs.get('units', ''))} |")
    lines += ["", "| coordinate | dims | dtype | meaning |", "|---|---|---|---|"]
    for name, var in ds.coords.items():
        meaning = var.attrs.get("long_name") or COORDS.get(str(name), "")
        lines.append(f"| `{name}` | {_dims(var)} | {_dtype(var)} | {_cell(meaning)} |")
    extra = sorted(set(ds.attrs) - set(REQUIRED_ATTRS))
    lines += ["", f"`attrs[\"method\"]` is `{ds.attrs['method']}`, `attrs[\"metric\"]` `{ds.attrs['metric']}`. "
              "Besides the provenance every result carries ([results and provenance](../results.md)), "
              "the attributes: " + (", ".join(f"`{a}`" for a in extra) or "none") + "."]
    return "\n".join(lines) + "\n"


def update(page: Path) -> str:
    """The page's text with every schema block rewritten."""
    text = page.read_text()
    if not BLOCK.search(text):
        raise SystemExit(f"{page}: no <!-- schema: reason-interp ... --> block")
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("cmd")) + m.group(4), text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    names = [a for a in argv if not a.startswith("--")]
    pages = [PAGES / f"{n}.md" for n in names] if names else sorted(PAGES.glob("*.md"))
    stale = []
    for page in pages:
        if not BLOCK.search(page.read_text()):
            continue  # the index page
        new = update(page)
        if new != page.read_text():
            stale.append(page.name)
            if not check:
                page.write_text(new)
    if check and stale:
        print("stale schema blocks (python scripts/build_experiment_pages.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
