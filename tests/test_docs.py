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


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = "<!-- runnable: the slow tier runs this block (tests/test_docs.py) -->"


def runnable_blocks() -> list[tuple[str, str, str]]:
    """(where, language, code) of every fenced block marked runnable in README.md and docs/."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for m in re.finditer(re.escape(MARK) + r"\n```(\w+)\n(.*?)```", text, re.S):
            line = text[:m.start()].count("\n") + 2
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), m.group(2)))
    return found


def shell_commands(language: str, code: str) -> list[str]:
    """The commands of a bash block (comments dropped, continuations joined), or of a text
    block the lines after a ``$`` prompt (the rest is their printed output)."""
    lines, out = code.replace("\\\n", " ").splitlines(), []
    for ln in lines:
        if language == "text":
            if ln.startswith("$ "):
                out.append(ln[2:].split("  #")[0].strip())
        elif ln.strip() and not ln.lstrip().startswith("#"):
            out.append(ln.split("  #")[0].strip())
    return out


BLOCKS = runnable_blocks()


def test_some_docs_blocks_are_marked_runnable():
    assert len(BLOCKS) >= 6 and {lang for _, lang, _ in BLOCKS} >= {"python", "bash", "text"}
    assert shell_commands("text", "$ a --x \\\n    --y  # note\nout\n$ b") == ["a --x      --y", "b"]


@pytest.mark.slow
@pytest.mark.parametrize("where,language,code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_docs_block_runs(where, language, code, tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    if language == "python":
        (tmp_path / "block.py").write_text(code)
        r = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"{where}: {r.stderr[-3000:]}"
        return
    commands = shell_commands(language, code)
    assert commands, f"{where}: no command found"
    for command in commands:
        r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"{where}: `{command}` failed: {r.stderr[-3000:]}"


def test_the_cli_reference_is_generated_from_the_commands():
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_cli_reference import PAGE, render

    assert PAGE.read_text() == render(), "docs/cli.md is stale: run python scripts/build_cli_reference.py"


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) of every ``reason-interp …`` in README.md and docs/: in fenced blocks
    (continuations joined, up to a comment, ``;`` or ``&``) and in inline code spans."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in re.findall(r"```\w*\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                found += [(str(path.relative_to(ROOT)), c) for c in re.findall(r"reason-interp\s[^#;&]*", line)]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [(str(path.relative_to(ROOT)), c) for c in re.findall(r"`(reason-interp [^`]*)`", prose)]
    return found


def unknown_options(command: str, root) -> list[str]:
    """What in one documented command the CLI does not have: a command that does not exist, or an
    option its command lacks. Synopsis notation is read too: ``[--a X\\|--b]`` names --a and --b."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in prose: the words are still there
        words = command.split()
    words = words[:words.index("|")] if "|" in words else words  # a shell pipe ends the command
    cmd, i = root, 1
    while i < len(words) and hasattr(cmd, "commands") and words[i] in cmd.commands:
        cmd, i = cmd.commands[words[i]], i + 1
    if hasattr(cmd, "commands"):  # still at a group (the CLI, or `remote`): the next word must name one of its commands
        return [] if i == len(words) or words[i] in ("COMMAND", "--help") else [f"no command {' '.join(words[1:i + 1])!r}"]
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    names = (part.split("=")[0] for w in words[i:] for part in w.strip("[]").split("|"))
    return [f"{cmd.name} has no {n}" for n in names if n.startswith("--") and n != "--" and n not in options]


def test_every_documented_command_and_option_exists():
    from typer.main import get_command

    from nnsight_reasoning.cli.main import app

    root = get_command(app)
    # the check itself: a made-up option or command is caught, synopsis brackets included
    assert unknown_options("reason-interp patch --task=arithmetic [--site attn\\|mlp] --out x.nc", root) == []
    assert unknown_options("reason-interp patch [--cumulative\\|--sites all]", root) == [
        "patch has no --cumulative", "patch has no --sites"]
    assert unknown_options("reason-interp pach --task arithmetic", root) == ["no command 'pach'"]
    assert unknown_options("reason-interp remote stauts", root) == ["no command 'remote stauts'"]
    assert unknown_options("reason-interp remote status --host http://h:5001 | head --lines 3", root) == []
    commands = documented_commands()
    assert len(commands) > 200
    stale = [f"{where}: `{c.strip()}`: {', '.join(bad)}" for where, c in commands if (bad := unknown_options(c, root))]
    assert not stale, "documented commands the CLI does not take:\n" + "\n".join(stale)


def unknown_python_names(code: str) -> list[str]:
    """What the ``nr.…(…)`` calls in one Python snippet name that the package lacks: a function, or a
    keyword its signature does not take (functions taking ``**kwargs`` pass any keyword)."""
    import ast
    import inspect

    import nnsight_reasoning as nr

    found = []
    for call in (n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)):
        path, node = [], call.func
        while isinstance(node, ast.Attribute):
            path, node = [node.attr, *path], node.value
        if not (isinstance(node, ast.Name) and node.id == "nr" and path):
            continue
        obj = nr
        for name in path:
            obj = getattr(obj, name, None)
        if obj is None:
            found.append(f"no nr.{'.'.join(path)}")
            continue
        params = inspect.signature(obj).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            found += [f"nr.{'.'.join(path)} takes no {k.arg}=" for k in call.keywords if k.arg and k.arg not in params]
    return found


def test_every_documented_python_call_exists():
    # the check itself: a made-up function or keyword is caught, a real call passes
    assert unknown_python_names("ds = nr.patch(m, nr.tasks.arithmetic(n_prompts=4), sites=['mlp'])") == []
    assert unknown_python_names("nr.patch(m, p, site='mlp'); nr.tasks.arith(); x.patch(q=1)") == [
        "nr.patch takes no site=", "no nr.tasks.arith"]
    blocks = [(path.relative_to(ROOT), code) for path in DOC_FILES
              for code in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)]
    assert len(blocks) > 20
    stale = [f"{where}: {bad}" for where, code in blocks for bad in unknown_python_names(code)]
    assert not stale, "documented Python the package does not have:\n" + "\n".join(stale)


def test_every_experiment_command_has_a_page_with_a_generated_schema():
    from typer.main import get_command

    from nnsight_reasoning.cli.main import app

    from .clirun import TOOLS

    commands = set(get_command(app).commands) - TOOLS
    pages = {p.stem for p in (ROOT / "docs" / "experiments").glob("*.md")} - {"index"}
    assert commands <= pages, f"experiments without a page under docs/experiments: {sorted(commands - pages)}"
    index = (ROOT / "docs" / "experiments" / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for page in pages:
        text = (ROOT / "docs" / "experiments" / f"{page}.md").read_text()
        assert text.count("<!-- schema: reason-interp ") == 1 and "<!-- /schema -->" in text, page
        assert "| variable | dims |" in text, f"{page}: schema block empty: python scripts/build_experiment_pages.py"
        block = text[text.index("<!-- schema: "):text.index("<!-- /schema -->")]
        for row in re.findall(r"^\| `.*\|$", block, re.M):  # variable and coordinate rows
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            assert cells[3], f"docs/experiments/{page}.md: {cells[0]} has no meaning: give it a long_name attr"
        for heading in ("## Run it", "## Result", "## Gotchas", "## On the embedded model"):
            assert heading in text, f"docs/experiments/{page}.md lacks {heading!r}"
        assert f"({page}.md)" in index, f"docs/experiments/index.md does not link {page}"
        assert f"docs/experiments/{page}.md" in readme, f"the README's table does not link {page}"


@pytest.mark.slow  # runs each page's schema command on the embedded model (~2 min)
def test_experiment_pages_show_what_the_code_writes():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_experiment_pages.py"), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200, env={**__import__("os").environ,
                                                                           "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
