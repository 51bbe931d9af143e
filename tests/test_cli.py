"""The reason-interp CLI, through typer's CliRunner and as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def result_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "r.nc"
    res = runner.invoke(app, ["patch", "--n-prompts", "4", "--site", "mlp", "--site", "attn", "--site", "resid",
                              "--positions", "all", "--out", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"wrote {path}" in res.stdout.replace("\n", "") and "top 8 sites" in res.stdout
    return path


def test_patch_file_is_valid_and_matches_the_api(result_file, embedded_model):
    ds = nr.load_result(result_file)
    nr.testing.assert_valid_result(ds)
    assert set(ds.data_vars) >= {"mlp", "attn", "resid"} and ds.attrs["positions"] == "all"
    api = nr.patch(embedded_model, nr.tasks.arithmetic(n_prompts=4, seed=0), sites=["mlp", "attn", "resid"],
                   positions="all", progress=False)
    np.testing.assert_array_equal(ds.mlp.values, api.mlp.values)  # same seed -> same numbers


def test_show_and_plot(result_file, tmp_path):
    res = runner.invoke(app, ["show", str(result_file)])
    assert res.exit_code == 0 and "activation_patching" in res.stdout and "top 8 sites" in res.stdout
    png = tmp_path / "heat.png"
    res = runner.invoke(app, ["plot", str(result_file), "--out", str(png)])
    assert res.exit_code == 0, res.output
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 400
    # a new folder is made; a name matplotlib cannot write, or a folder, is one line and exit 2
    res = runner.invoke(app, ["plot", str(result_file), "--out", str(tmp_path / "new" / "heat.pdf")])
    assert res.exit_code == 0 and (tmp_path / "new" / "heat.pdf").stat().st_size > 0, res.output
    for bad, needle in (("heat.txt", "give a figure file ending in .png"), ("heat", "ending in .png"),
                        ("a_dir.png", "is a directory: give a file name ending in .png")):
        (tmp_path / "a_dir.png").mkdir(exist_ok=True)
        res = runner.invoke(app, ["plot", str(result_file), "--out", str(tmp_path / bad)])
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output
    assert not (tmp_path / "heat.txt").exists() and not (tmp_path / "heat").exists()


def test_unit_overlap_prints_the_api_numbers(tmp_path, embedded_model):
    """``reason-interp unit-overlap`` on two patching files: the overlap table is nr.unit_overlap's."""
    files = []
    for task, extra in (("arithmetic", ["--param", "operations=+-*/", "--template", "stolfo", "--n-prompts", "24"]),
                        ("number_retrieval", ["--n-prompts", "6"])):
        files.append(tmp_path / f"{task}.nc")
        res = runner.invoke(app, ["patch", "--task", task, *extra, "--site", "mlp_dim", "--out", str(files[-1]),
                                  "--no-progress"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["unit-overlap", *map(str, files), "--top-k", "30", "--by-operator"], terminal_width=200)
    assert res.exit_code == 0, res.output
    ov = nr.unit_overlap(*(nr.load_result(f) for f in files), top_k=30, by_operator=True)
    rows = {line.split("│")[1].strip(): line.split("│")[2:-1] for line in res.stdout.splitlines()
            if line.startswith("│") and "(" in line.split("│")[1]}
    assert len(rows) == 5  # four operators and number retrieval
    for k, g in enumerate(ov.group.values):
        cells = rows[f"{k + 1} {g} ({int(ov.n.values[k])})"]
        assert [float(c) for c in cells] == [round(float(x), 2) for x in ov.overlap.sel(group=g).values]


def test_tasks_models_evaluate(tmp_path, monkeypatch):
    res = runner.invoke(app, ["tasks"], terminal_width=200)
    assert res.exit_code == 0 and "arithmetic" in res.stdout and "kth_smallest" in res.stdout
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in res.stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["arithmetic"] == "patch, circuit, evaluate" and rows["cot_arithmetic"] == "evaluate, neurons"
    assert rows["binding"] == "evaluate, binding" and rows["kth_smallest"].endswith("attention, probe")
    res = runner.invoke(app, ["tasks", "arithmetic"])
    assert res.exit_code == 0
    for name in ("intervention_type", "n_operands", "n_shots", "max_n", "representation", "templates", "seed"):
        assert name in res.stdout
    from nnsight_reasoning import embedded
    from nnsight_reasoning.cli.common import out as console

    monkeypatch.setattr(console, "width", 80)  # too narrow for a column per revision: all named below the table
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and f"(4 of {len(embedded.revisions())} revisions; --all" in " ".join(res.stdout.split())
    named = res.stdout.split("revisions: ")[1].split("\n")[0].replace(",", " ").split()
    assert named == embedded.revisions() and named[0] == "step0" and named[-1] == "main"
    out = tmp_path / "ev.nc"
    res = runner.invoke(app, ["evaluate", "--task", "ioi", "--n-prompts", "30", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0 and "accuracy" in res.stdout, res.output
    assert nr.load_result(out).attrs["method"] == "evaluate"


def test_an_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "r.nc"
    args = ["evaluate", "--task", "ioi", "--n-prompts", "4", "--no-progress", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = out.stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and f"{out} exists: pass --force" in res.stderr and out.stat().st_mtime_ns == before
    res = runner.invoke(app, args + ["--force"])
    assert res.exit_code == 0 and out.stat().st_mtime_ns > before, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]  # no lock, no parts


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    import fcntl
    import json
    import socket

    out = tmp_path / "sub" / "r.nc"
    lock = tmp_path / "sub" / "r.nc.lock"
    args = ["evaluate", "--task", "ioi", "--n-prompts", "4", "--no-progress", "--out", str(out)]
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": 4242, "host": socket.gethostname(), "started": "now"}))
    with open(lock) as held:  # a live writer holds the kernel's lock (another open file, same process)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert f"another run (pid 4242 on {socket.gethostname()}, since now) is writing {out}" in res.stderr
    assert not out.exists() and lock.exists() and not (tmp_path / "sub" / "r.nc.parts").exists()
    # the file of a writer that was killed (no lock held any more) is taken over
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and out.exists() and not lock.exists(), res.output
    res = runner.invoke(app, ["evaluate", "--task", "nope", "--out", str(tmp_path / "a" / "b" / "r.nc")])
    assert res.exit_code == 2 and not (tmp_path / "a").exists()  # directories made for the lock go with it


@pytest.mark.slow  # two real processes on one --out
def test_concurrent_runs_on_one_output_never_interleave(tmp_path):
    import time

    from tests.clirun import reason_interp

    out = tmp_path / "r.nc"
    args = ["patch", "--n-prompts", "48", "--positions", "all", "--site", "head", "--no-progress", "--out", str(out)]
    first = reason_interp(args, background=True)
    lock = tmp_path / "r.nc.lock"
    deadline = time.time() + 120
    while f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else "") and first.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    second = runner.invoke(app, args)  # in this process: no start-up, so the first is still running
    assert second.exit_code == 2 and f"pid {first.pid}" in second.stderr and "is writing" in second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert not lock.exists() and not (tmp_path / "r.nc.parts").exists()
    nr.testing.assert_valid_result(nr.load_result(out))


def test_unreadable_results_file(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("hello")
    for cmd in ("show", "plot"):
        res = runner.invoke(app, [cmd, str(bad)])
        assert res.exit_code == 2 and res.stderr.startswith("error: cannot read"), res.output


def test_help_is_printed_once_and_flags_show_no_value_slot():
    """A bare group prints its help once (typer's rich help printed itself while click made the
    error, and was printed again); a flag (--force, --correct-only) shows no value slot (typer's
    "<bool>", which suggested `--force true`)."""
    for args in ([], ["remote"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and res.stdout.count("Usage:") == 1, res.stdout
    res = runner.invoke(app, ["patch", "--help"])
    assert res.exit_code == 0 and "--correct-only" in res.stdout and "<int>" in res.stdout  # values keep theirs
    assert "<bool>" not in res.stdout, res.stdout


def test_tables_never_cut_a_number_or_a_revision(result_file):
    """Rich shortens a column that does not fit the terminal with "…": a mean effect of +3.2e+05
    read "+3.221e…", and `models --all` printed 18 empty revision columns at 80 columns (the
    runner's console). Every value is printed whole, however narrow the terminal."""
    from nnsight_reasoning import embedded

    res = runner.invoke(app, ["models", "--all"])
    assert res.exit_code == 0 and "…" not in res.stdout, res.stdout
    assert all(f" {rev} " in res.stdout for rev in embedded.revisions()), res.stdout
    res = runner.invoke(app, ["show", str(result_file)])
    assert res.exit_code == 0 and "…" not in res.stdout, res.stdout
    # the summaries' tables as show_item prints them, on a terminal of 40 columns
    import io

    from rich.console import Console
    from rich.table import Table

    from nnsight_reasoning.cli.common import show_item

    table = Table(title="top sites")
    for col in ("site", "layer", "token", "mean effect", "median", "→ source"):
        table.add_column(col)
    table.add_row("embed", "-1", "a long prompt text that has to fold " * 2, "+3.221e+05", "+2.503e-06", "11%")
    console = Console(file=io.StringIO(), width=40)
    show_item(table, console)
    text = console.file.getvalue()
    assert "…" not in text and "+3.221e+05" in text and "+2.503e-06" in text and "→ source" in text, text


@pytest.mark.slow  # a fresh process (~15 s on 2 cores); the fast tier runs the same commands in-process
def test_console_script_end_to_end(tmp_path):
    """The installed `reason-interp` entry point, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = os.path.join(os.path.dirname(sys.executable), "reason-interp")
    out = tmp_path / "r.nc"
    proc = subprocess.run([exe, "patch", "--task", "arithmetic", "--n-prompts", "8", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    nr.testing.assert_valid_result(nr.load_result(out))
    proc = subprocess.run([exe, "patch", "--site", "nope"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown site" in proc.stderr


def test_the_console_script_hides_transformers_bars_and_keeps_the_hubs(monkeypatch, hf_bars):
    """`reason-interp` runs its commands with transformers' per-tensor bars off (they would bury
    the toolkit's own) and the Hub's download bars on (a Pythia revision being downloaded is
    news, not a silent wait), and leaves both as they were."""
    from transformers.utils import logging as hf_logging

    import nnsight_reasoning.cli.main as cli

    seen = []
    monkeypatch.setattr(cli, "app", lambda: seen.append(hf_bars()))  # the command: what it runs under
    hf_logging.enable_progress_bar()  # transformers' switch sets the Hub's too: both on
    cli.main()
    assert seen == [(False, True)] and hf_bars() == (True, True)
