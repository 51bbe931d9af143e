"""``reason-interp`` in a fresh process, as a user runs it (for kills, restarts and servers)."""
from __future__ import annotations

import os
import subprocess
import sys


def reason_interp(args: list[str], env: dict[str, str] | None = None, background: bool = False,
                  timeout: float = 300):
    """Run the CLI; ``env`` is added to a copy of this process's environment (offline)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "nnsight_reasoning.cli.main", *args]
    if background:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)
