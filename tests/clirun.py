"""``reason-interp`` as a test runs it: in a fresh process, as a user runs it (for kills,
environment read at import, console scripts), or in this process through typer's runner
(the same code path without paying the imports again: ~4 s per call on 2 cores)."""
from __future__ import annotations

import os
import subprocess
import sys

# the commands that are not experiments (tools around them): no results file of their own,
# no page under docs/experiments; "remote" is the group of `remote status`
TOOLS = frozenset({"tasks", "models", "show", "plot", "unit-overlap", "export-graph", "remote", "finetune"})


def reason_interp(args: list[str], env: dict[str, str] | None = None, background: bool = False,
                  timeout: float = 300):
    """Run the CLI; ``env`` is added to a copy of this process's environment (offline)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "nnsight_reasoning.cli.main", *args]
    if background:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)


def in_process(args: list[str]):
    """Run the CLI in this process (typer's runner); stdout and stderr kept apart, the exit
    status as ``returncode`` like :func:`reason_interp`'s."""
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app

    res = CliRunner().invoke(app, args)
    res.returncode = res.exit_code
    return res
