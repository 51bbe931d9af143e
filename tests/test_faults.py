"""Disk faults in real processes (issue 27): the output's filesystem fills up, or turns
read-only, in the middle of a checkpoint sweep. The command stops with one line (exit 1) that
says where the finished parts are; they stay intact; once the disk can be written the same
command resumes from them and ends with the values of an uninterrupted run.

The filesystem is a small tmpfs the test mounts (root on Linux, as CI runs); where the machine
does not allow mounting, the tests skip (a read-only directory does not stop root)."""
from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

import nnsight_reasoning as nr
from nnsight_reasoning.results.parts import lock_path, parts_dir

from .clirun import reason_interp

pytestmark = pytest.mark.slow

REVS = "step0,step1,step2,step4,step8,step16"
ARGS = ["evaluate", "--revisions", REVS, "--n-prompts", "50", "--no-progress"]


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 120 kB (room for four of the six revisions' parts), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def finished(parts) -> list[str]:
    return sorted(p.stem for p in parts.glob("*.nc"))


def check_resumed_equals_clean(out, clean_out, n_done: int) -> None:
    a, b = nr.load_result(out), nr.load_result(clean_out)
    assert a.attrs["n_resumed_revisions"] == n_done > 0 and b.attrs["n_resumed_revisions"] == 0
    for v in b.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_a_full_disk_mid_sweep_keeps_the_parts_and_the_command_resumes(small_fs, tmp_path):
    out = small_fs / "e.nc"
    r = reason_interp([*ARGS, "--out", str(out)])
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is the disk full or read-only?" in lines[0] and str(parts_dir(out)) in lines[0]
    done = finished(parts_dir(out))
    assert 1 <= len(done) < 6 and not out.exists() and not lock_path(out).exists()
    for rev in done:  # whole, readable parts; no temp file left
        assert nr.load_result(parts_dir(out) / f"{rev}.nc").attrs["revision"] == rev
    assert not list(parts_dir(out).rglob(".*.tmp"))
    remount(small_fs, "size=20m")
    r = reason_interp([*ARGS, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert reason_interp([*ARGS, "--out", str(tmp_path / "clean.nc")]).returncode == 0
    check_resumed_equals_clean(out, tmp_path / "clean.nc", len(done))
    assert not parts_dir(out).exists()


def test_a_disk_turned_read_only_mid_sweep_keeps_the_parts_and_the_command_resumes(small_fs, tmp_path):
    remount(small_fs, "size=20m")
    out = small_fs / "e.nc"
    proc = reason_interp([*ARGS, "--out", str(out)], background=True)
    deadline = time.time() + 300
    while len(finished(parts_dir(out))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    remount(small_fs, "ro")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "is the disk full or read-only?" in lines[-1], stderr
    done = finished(parts_dir(out))
    assert 2 <= len(done) < 6 and not out.exists()
    remount(small_fs, "rw")  # the lock stayed (read-only); its writer is gone, so the rerun takes it over
    r = reason_interp([*ARGS, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert reason_interp([*ARGS, "--out", str(tmp_path / "clean.nc")]).returncode == 0
    check_resumed_equals_clean(out, tmp_path / "clean.nc", len(done))
