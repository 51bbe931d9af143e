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


def test_tasks_models_evaluate(tmp_path):
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
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "step0" in res.stdout and "main" in res.stdout
    out = tmp_path / "ev.nc"
    res = runner.invoke(app, ["evaluate", "--task", "ioi", "--n-prompts", "30", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0 and "accuracy" in res.stdout, res.output
    assert nr.load_result(out).attrs["method"] == "evaluate"


@pytest.mark.parametrize("args,needle", [
    (["patch", "--task", "nope"], "unknown task 'nope'"),
    (["patch", "--task", "binding"], "no clean/corrupted prompt pairs"),
    (["patch", "--site", "banana"], "unknown site 'banana'"),
    (["patch", "--metric", "kl"], "unknown metric"),
    (["patch", "--method", "attribution", "--site", "embed"], "'embed' is patched exactly only"),
    (["patch", "--method", "attribution", "--site", "neuron"], "'neuron' is patched exactly only"),
    (["patch", "--method", "attribution", "--site", "attn_weights"], "'attn_weights' is patched exactly only"),
    (["patch", "--method", "attribution", "--site", "attn_pattern"], "'attn_pattern' is patched exactly only"),
    (["patch", "--method", "attribution", "--metric", "absolute"], "estimates stolfo_ie or logit_diff only"),
    (["patch", "--param", "max_result=0"], "max_result must be"),
    (["patch", "--task", "factual_recall", "--data", "/no/such/lama"], "no such LAMA file or directory"),
    (["patch", "--data", "lama.jsonl"], "unexpected keyword 'data' for task 'arithmetic'"),
    (["patch", "--positions", "middle"], "--positions must be"),
    (["patch", "--layer", "7"], "layer 7 is out of range"),
    (["patch", "--max-n", "1"], "max_n >= 2"),
    (["patch", "--param", "n_operands=9"], "n_operands must be"),
    (["patch", "--param", "colour=red"], "unexpected keyword"),
    (["patch", "--revision", "step999"], "no revision 'step999'"),
    (["patch", "--model", "/no/such/model/dir"], "no such model directory"),
    (["patch", "--model", "nobody/no-such-model"], "could not load model"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, args, needle):
    out = tmp_path / "r.nc"
    res = runner.invoke(app, args + ["--n-prompts", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where,needle", [
    ("/proc/r.nc", "cannot create files in /proc"),        # no file can be made there, root or not
    ("{tmp}/a_file/r.nc", "is a file, not a directory"),
    ("{tmp}/a_dir.nc", "is a directory"),
])
def test_unwritable_out_is_refused_before_any_work(tmp_path, where, needle):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir.nc").mkdir()
    before = sorted(tmp_path.iterdir())
    res = runner.invoke(app, ["patch", "--n-prompts", "2", "--no-progress", "--out", where.format(tmp=tmp_path)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and needle in res.stderr, res.output
    assert "wrote" not in res.stdout and sorted(tmp_path.iterdir()) == before  # no parts, no probe file left
    assert not list(tmp_path.glob(".reason-interp-*"))


@pytest.mark.parametrize("content,needle", [
    (b"hello world\nthis is not json\n", "bad.jsonl line 1 is not JSON"),
    (b'{"question": "q", "answer": "a #### 1"}\n[1, 2]\n', "bad.jsonl line 2 is a JSON list, not an object"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "bad.jsonl is not UTF-8 text"),
    (b"\n\n", "bad.jsonl is empty"),
    (b'{"question": "q"}\n', "row 0 lacks ['answer']"),
])
def test_neurons_data_file_errors_name_the_file_and_line(tmp_path, content, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    out = tmp_path / "r.nc"
    res = runner.invoke(app, ["neurons", "--data", str(bad), "--n-prompts", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and needle in res.stderr, res.output
    assert "GSM8K" in res.stderr and not out.exists()


def test_unreadable_results_file(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("hello")
    for cmd in ("show", "plot"):
        res = runner.invoke(app, [cmd, str(bad)])
        assert res.exit_code == 2 and res.stderr.startswith("error: cannot read"), res.output


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
