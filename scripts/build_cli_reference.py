"""Write docs/cli.md, the CLI reference, from the commands themselves (typer/click), so that
the page and ``reason-interp COMMAND --help`` cannot disagree (tests/test_docs.py checks the
committed page is this script's output).

    python scripts/build_cli_reference.py            # rewrites docs/cli.md
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"


def render() -> str:
    from typer.main import get_command

    from nnsight_reasoning.cli.main import app

    root = get_command(app)
    out = ["# CLI reference", "",
           "Generated from the commands by `python scripts/build_cli_reference.py`; "
           "`reason-interp COMMAND --help` prints the same.", ""]

    def section(name: str, cmd) -> None:
        out.extend([f"## `reason-interp {name}`", ""])
        doc = (cmd.help or "").strip()
        if doc:
            out.extend([" ".join(doc.split("\n\n")[0].split()).replace("<", "&lt;").replace(">", "&gt;"), ""])
        rows = []
        for p in cmd.params:
            if p.param_type_name != "option" or getattr(p, "hidden", False) or p.name == "help":
                continue
            flags = " / ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
            default = p.default
            if callable(default) or default is None or default in ((), []) or (p.is_flag and default is False):
                shown = ""
            else:
                shown = f"`{default}`"
            helptext = " ".join((p.help or "").split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            rows.append(f"| {flags} | {shown} | {helptext} |")
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        if args:
            out.extend(["Arguments: " + "; ".join(
                f"`{a.name.upper()}`" + (f" ({' '.join(a.help.split())})" if getattr(a, "help", None) else "")
                for a in args).replace("<", "&lt;").replace(">", "&gt;"), ""])
        if rows:
            out.extend(["| option | default | meaning |", "|---|---|---|", *rows, ""])

    for name in sorted(root.commands):
        cmd = root.commands[name]
        if hasattr(cmd, "commands"):
            for sub in sorted(cmd.commands):
                section(f"{name} {sub}", cmd.commands[sub])
        else:
            section(name, cmd)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
