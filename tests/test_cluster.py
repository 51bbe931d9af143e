"""Sweeps on a Dask cluster: real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1
(and a LocalCluster for ``--workers``) give the serial run's Dataset value for value; a worker
SIGKILLed mid-task loses only that task, which resumes from its kept passes on the other
worker; a scheduler SIGKILLed mid-sweep ends the run with one line and the parts kept, and
the same command resumes from them."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import xarray as xr

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.results.checkpoints import one_model
from nnsight_reasoning.results.parts import parts_dir

from .clirun import reason_interp
from .dask_cluster import DaskCluster

pytestmark = pytest.mark.slow

EVALUATE = ["evaluate", "--task", "arithmetic", "--n-prompts", "32", "--revisions", "all"]
# several passes per revision (each a part), so that a kill can fall inside a revision
PATCH = ["patch", "--task", "arithmetic", "--n-prompts", "8", "--positions", "all", "--batch-size", "16",
         "--revisions", "all", "--no-progress"]
TIMING = ("seconds_load", "seconds_run")  # wall-clock coordinates: the only ones that may differ


def assert_serial_values(a: xr.Dataset, b: xr.Dataset, also_differ: tuple[str, ...] = ()) -> None:
    """``a`` and ``b`` hold the same numbers and labels bit for bit, all but timings and ``also_differ``."""
    assert sorted(a.data_vars) == sorted(b.data_vars) and dict(a.sizes) == dict(b.sizes)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    skip = set(TIMING) | set(also_differ)
    assert sorted(set(a.coords) - skip) == sorted(set(b.coords) - skip)
    for c in set(a.coords) - skip:
        np.testing.assert_array_equal(a[c].values, b[c].values, err_msg=c)
    same = {k for k in a.attrs if k != "created" and k not in also_differ}
    assert {k: a.attrs[k] for k in same} == {k: b.attrs.get(k) for k in same}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """command name -> the serial run's Dataset (CLI, no cluster)."""
    root = tmp_path_factory.mktemp("serial")
    done = {}
    for name, args in (("evaluate", EVALUATE + ["--no-progress"]), ("patch", PATCH)):
        r = reason_interp(args + ["--out", str(root / f"{name}.nc")])
        assert r.returncode == 0, r.stderr
        done[name] = nr.load_result(root / f"{name}.nc")
    return done


@pytest.fixture
def dask(tmp_path):
    cluster = DaskCluster(tmp_path / "dask").start_scheduler()
    yield cluster
    cluster.stop()


def test_workers_2_equals_the_serial_run(serial, tmp_path):
    out = tmp_path / "w2.nc"
    r = reason_interp(EVALUATE + ["--workers", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert f"{len(embedded.revisions())} checkpoints" in r.stdout
    # the bar counts tasks per worker (a LocalCluster names its workers 0, 1)
    assert "tasks done per worker: 0:" in r.stderr and " · 1:" in r.stderr, r.stderr
    ds = nr.load_result(out)
    assert list(ds.checkpoint.values) == embedded.revisions()
    assert_serial_values(ds, serial["evaluate"])
    assert not parts_dir(out).exists()


def test_scheduler_of_a_running_cluster_equals_the_serial_run_on_both_workers(serial, dask, tmp_path):
    dask.start_worker("w1")
    dask.start_worker("w2")
    dask.wait_for_workers(2)
    out = tmp_path / "sched.nc"
    r = reason_interp(EVALUATE + ["--scheduler", dask.address, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    tally = r.stderr.split("tasks done per worker:")[-1]
    assert "w1:" in tally and "w2:" in tally, r.stderr  # both workers ran tasks
    n = [int(tally.split(f"{w}: ")[1].split()[0].rstrip(")")) for w in ("w1", "w2")]
    assert sum(n) == len(embedded.revisions()), tally
    assert_serial_values(nr.load_result(out), serial["evaluate"])

    # the Python API takes a distributed.Client; several models with revisions: each (model,
    # revision) one task, stacked as the serial harness stacks them
    ladder = tmp_path / "ladder"  # a local model with revisions: two of the embedded model's
    ladder.mkdir()
    for rev in ("step0", "main"):
        (ladder / rev).symlink_to(embedded.revision_path(rev), target_is_directory=True)
    models = ["embedded", str(ladder)]
    data = lambda tok: nr.tasks.examples("arithmetic", 6, tokenizer=tok)  # noqa: E731
    from distributed import Client

    with Client(dask.address, timeout="30s") as client:
        before = len(client.get_events("reason-interp"))
        on_cluster = nr.evaluate(models, data, revisions="step0,main", progress=False, scheduler=client,
                                 resume_dir=tmp_path / "models.parts")
        units = client.get_events("reason-interp")[before:]
    assert sorted(msg["unit"] for _, msg in units) == ["main", "main", "step0", "step0"]  # ran there
    here = nr.evaluate(models, data, revisions="step0,main", progress=False)
    assert on_cluster["p_answer"].dims == ("model", "checkpoint", "prompt")
    assert_serial_values(on_cluster, here)
    for m in models:
        assert_serial_values(one_model(on_cluster, m), one_model(here, m))


def test_a_sweep_that_fixes_its_units_on_the_last_revision_runs_that_choice_as_a_task_too(tmp_path):
    # neurons: the units a sweep tracks are discovered once, on the last revision (a task of its
    # own), then every revision runs with them
    args = ["neurons", "--n-prompts", "8", "--variant", "equation_only", "--revisions", "step3000,main",
            "--no-progress"]
    serial, local = tmp_path / "serial.nc", tmp_path / "local.nc"
    assert reason_interp(args + ["--out", str(serial)]).returncode == 0
    r = reason_interp(args + ["--out", str(local), "--workers", "2"])
    assert r.returncode == 0, r.stderr
    a, b = nr.load_result(local), nr.load_result(serial)
    assert a.attrs["units_chosen_on"] == b.attrs["units_chosen_on"] == "main"
    assert_serial_values(a, b)


def test_gpu_workers_get_the_tasks_one_at_a_time(dask, tmp_path):
    # a worker that advertises a GPU is given every task (the others lack the resource), and
    # one at a time although it has two threads: one model per GPU
    dask.start_worker("gpu0", extra=["--resources", "GPU=1", "--nthreads", "2"])
    dask.start_worker("cpu0")
    dask.wait_for_workers(2)
    from distributed import Client

    with Client(dask.address, timeout="30s") as client:
        ds = nr.evaluate("embedded", nr.tasks.examples("arithmetic", 8, seed=0), revisions="step0,step1,step2,main",
                         progress=False, scheduler=client)
        log = client.get_events("reason-interp")  # the tasks' (worker, start, end), reported by each task
    assert list(ds.checkpoint.values) == ["step0", "step1", "step2", "main"]
    spans = sorted((msg["start"], msg["end"], msg["name"]) for _, msg in log)
    assert [w for _, _, w in spans] == ["gpu0"] * 4, spans
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans  # never two at once


def test_a_worker_sigkilled_mid_task_loses_only_that_task(serial, dask, tmp_path):
    # w1 SIGKILLs itself (a real kill, at a known point) once its revision has 2 passes on disk
    w1 = dask.start_worker("w1", env={"REASON_INTERP_TEST_KILL_AFTER": "2"})
    dask.start_worker("w2")
    dask.wait_for_workers(2)
    out = tmp_path / "killed.nc"
    r = reason_interp(PATCH + ["--scheduler", dask.address, "--out", str(out)])
    assert r.returncode == 0, r.stderr + dask.log_tail()
    assert w1.wait(timeout=10) == -signal.SIGKILL
    ds = nr.load_result(out)
    # the killed task ran again on w2 and resumed from the 2 passes w1 had kept
    resumed = ds["n_resumed_passes"].values
    assert sorted(resumed.tolist()) == [0] * (len(embedded.revisions()) - 1) + [2], resumed
    assert_serial_values(ds, serial["patch"], also_differ=("n_resumed_passes",))
    assert not parts_dir(out).exists()


def test_bad_input_found_inside_a_task_is_one_line_exit_2_and_leaves_nothing(tmp_path):
    # the head is checked against the model, so on a worker: its UsageError reaches the user as
    # it does serially, and the tasks still running write nothing after the run removed its folder
    out = tmp_path / "bad.nc"
    r = reason_interp(["attention", "--head", "7", "--revisions", "step0,step1,step2,main", "--workers", "2",
                       "--no-progress", "--out", str(out)])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: head 7 is out of range: this model has heads 0..3"], r.stderr
    time.sleep(3)  # any task left running has ended
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_a_task_that_kills_every_worker_it_meets_ends_the_run_with_one_line(serial, tmp_path):
    # every worker SIGKILLs itself at its first pass; the LocalCluster's nannies restart them,
    # and after Dask's allowed failures (1 here: two deaths) the run gives up on that task
    out = tmp_path / "doomed.nc"
    r = reason_interp(PATCH + ["--workers", "1", "--out", str(out)],
                      env={"REASON_INTERP_TEST_KILL_AFTER": "1", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("checkpoint")]
    assert len(lines) == 1, r.stderr
    assert "killed every worker that ran it (out of memory?)" in lines[0] and "on 2 different workers" in lines[0]
    assert "the same command resumes" in lines[0], lines
    assert not out.exists() and len(list(parts_dir(out).rglob("*.npz"))) >= 1

    # started on a cluster, finished without one: the serial run resumes from the workers' parts
    r = reason_interp(PATCH + ["--out", str(out)])
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(out)
    assert ds["n_resumed_passes"].values.max() >= 1
    assert_serial_values(ds, serial["patch"], also_differ=("n_resumed_passes", "n_resumed_revisions"))


def test_a_lost_scheduler_keeps_the_parts_and_the_same_command_resumes(serial, dask, tmp_path):
    dask.start_worker("w1")
    dask.wait_for_workers(1)
    out = tmp_path / "lost.nc"
    args = PATCH + ["--scheduler", dask.address, "--out", str(out)]
    parts = parts_dir(out)
    run = reason_interp(args, background=True)
    deadline = time.time() + 240
    while len(list(parts.glob("*.nc"))) < 2 and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    dask.kill(dask.scheduler)
    dask.kill(dask.workers["w1"])
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("checkpoint")]
    assert len(lines) == 1 and lines[0].startswith("error: lost the Dask scheduler at " + dask.address), stderr
    assert "the same command resumes" in lines[0]
    kept = sorted(p.stem for p in parts.glob("*.nc"))
    assert len(kept) >= 2 and not out.exists()

    # the scheduler back at its address, a fresh worker: the same command finishes the sweep
    dask.start_scheduler()
    dask.start_worker("w3")
    dask.wait_for_workers(1)
    r = reason_interp(args)
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(out)
    assert len(kept) <= ds.attrs["n_resumed_revisions"] < len(embedded.revisions()), r.stdout  # some of the sweep was left to do
    assert f"{ds.attrs['n_resumed_revisions']} checkpoints resumed" in r.stdout
    assert_serial_values(ds, serial["patch"], also_differ=("n_resumed_passes", "n_resumed_revisions"))
