"""The benchmark suite keeps running, and its methods keep agreeing (timings are not tested)."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

from nnsight_reasoning import embedded

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_suite_runs_and_methods_agree(tmp_path):
    # TransformerLens is a benchmark-only extra, and the 160m model, remote server and
    # checkpoint sections cost minutes: the smallest run of the rest, end to end.
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--n-prompts", "6", "--repeats", "1",
                           "--skip", "160m,transformer_lens,remote,checkpoints,cluster", "--memory-sizes", "4,16",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    (sweep,) = res["sweep"]
    assert sweep["agree"] and sweep["model"] == "embedded"
    # 6 pairs x 2 sites x 4 layers x 5 positions, each a patched copy of its base prompt
    assert sweep["patched_rows"] == 6 * (2 * 4 * 5 + 2)
    assert sweep["forward_passes"]["naive_nnsight"] == 2 + 2 * 4 * 5
    assert 0.4 < sweep["layer_rows_vs_limit"] < 0.6  # copies join at their layer: about half the work
    assert [r["n_prompts"] for r in res["memory"]["runs"]] == [4, 16]
    (attr,) = res["attribution"]
    assert attr["forward_passes"]["attribution"] == 1 and set(attr["pearson_r_vs_exact"]) == {"attribution",
                                                                                              "attribution_ig5"}
    assert "toolkit faster" in proc.stdout and "compute limit" in proc.stdout
    # patching engine v2 against v1 on the embedded model: both cases ran, agreed (the script
    # checks it) and v2 computed fewer (row, layer) units than v1
    assert [(r["model"], r["case"]) for r in res["engine"]] == [("embedded", c) for c in "abgef"]
    for r in res["engine"][:3]:  # (a), (b), (g)
        assert r["units"]["plain"] < r["units"]["minimal"] < r["units"]["v1"]
    assert "patching engine v2 vs v1" in proc.stdout and "edge-patched passes, engine v2 vs v1" in proc.stdout
    edges = res["edges"]
    assert edges["n_edges"] == 191 and set(edges["pearson_r_vs_exact"]) == {"eap", "eap_ig5"}
    assert edges["forward_passes"]["eap"] == 1 and "edge attribution vs exact" in proc.stdout


def test_cluster_benchmark_runs_and_its_runs_agree(tmp_path):
    # 3 revisions, 8 prompts: serial, 1 and 2 local workers; the script exits 1 if any cluster
    # run's values differ from the serial run's
    out = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cluster_sweep.py"), "--n-prompts", "8",
                           "--revisions", "3", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["revisions"] == embedded.revisions()[-3:] and res["revisions"][-1] == "main"  # the last three
    for name in ("evaluate", "patch"):
        assert res[name]["agree"] and set(res[name]) >= {"serial_s", "workers_1", "workers_2"}
    assert "every cluster run equal to the serial run" in proc.stdout


def test_training_chunk_benchmark_runs_and_its_chunkings_agree():
    # a twentieth of one mixture step: 128-sequence chunks against 256-token ones, in fp32 and bf16, same gradients
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_chunks.py"), "--steps", "1", "--fraction",
                           "0.05", "--threads", "1", "0", "256", "--precisions", "fp32", "bf16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("round 2")]
    assert [(r[2], r[4]) for r in rows] == [("fp32", "0"), ("fp32", "256"), ("bf16", "0"), ("bf16", "256")]
    tokens = [int(r[6]) for r in rows]
    assert tokens[1] < tokens[0]  # less padding
    assert "gradients agree" in proc.stdout and "bf16 against fp32: the gradient differs by" in proc.stdout


def test_answer_rank_benchmark_runs_and_its_ways_agree():
    # small rows and vocabulary; the script exits 1 if any ranks differ
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "answer_ranks.py"), "--rows", "16", "--vocab",
                           "2000", "--k", "1", "9", "100", "--repeats", "1"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit() and "rows" not in ln]
    assert [(r[0], r[-1]) for r in rows] == [(k, "True") for k in ("1", "9", "100")]
    assert "every way gives the same ranks" in proc.stdout
