"""Execute the notebooks and keep executed copies with their figures.

    python scripts/build_notebooks.py [--out docs/notebooks] [--timeout 900] [NAME ...]

The notebooks in ``notebooks/`` are stored without outputs (CI executes them, see
tests/test_notebooks.py); this writes executed copies for reading on GitHub and prints each
notebook's run time. Runs offline on the embedded model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, workdir: Path, timeout: int = 900):
    """The executed notebook (nbformat node) and its wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds a cell may run (raise it on a loaded machine: the longest cells take minutes idle)")
    ap.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = ap.parse_args()
    import nbformat

    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
        if not paths:
            sys.exit(f"no such notebook; choose from: {', '.join(p.stem for p in (ROOT / 'notebooks').glob('*.ipynb'))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with tempfile.TemporaryDirectory() as work:
            nb, seconds = execute(path, Path(work), args.timeout)
        nbformat.write(nb, args.out / path.name)
        print(f"{path.stem:32s} {seconds:6.1f} s  -> {args.out / path.name}", flush=True)


if __name__ == "__main__":
    main()
