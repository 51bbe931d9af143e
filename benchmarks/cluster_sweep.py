"""Wall time of a checkpoint sweep on a local Dask cluster: 1 vs 2 workers, and the serial
harness, measured side by side in one run on the embedded model.

    python benchmarks/cluster_sweep.py [--revisions 12] [--n-prompts 64] [--json out.json]

For each experiment (``evaluate`` on arithmetic examples, as ``reason-interp evaluate --task
arithmetic --revisions ... --workers N`` runs it; ``patch`` with mlp + attn at every position,
a heavier sweep) over the embedded model's last ``--revisions`` revisions:

- serial: the harness without a cluster (torch with this machine's threads);
- 1 and 2 workers: a LocalCluster of single-threaded worker processes. ``start_s`` is the
  cluster's start until every worker has imported the toolkit (paid once per run);
  ``sweep_s`` the sweep on the warm cluster; ``total_s`` their sum, what a user waits.

Every cluster run's Dataset is checked equal, value for value, to the serial one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.cluster import connect


def _warm() -> None:
    import nnsight_reasoning.runner  # noqa: F401  (what every task unpickles first)


TIMING = ("seconds_load", "seconds_run")  # wall-clock coordinates: the only ones that may differ


def _equal(a, b) -> bool:
    """Every variable and every coordinate but the timings equal, value for value."""
    names = [*a.data_vars, *(c for c in a.coords if c not in TIMING)]
    return sorted(a.variables) == sorted(b.variables) and all(
        np.array_equal(a[v].values, b[v].values, equal_nan=a[v].dtype.kind == "f") for v in names)


def measure(n_prompts: int = 64, n_revisions: int = 12) -> dict:
    revisions = embedded.revisions()[-n_revisions:]
    tok = embedded.load_tokenizer()
    runs = {
        "evaluate": (nr.evaluate, nr.tasks.examples("arithmetic", n_prompts, seed=0, tokenizer=tok), {}),
        "patch": (nr.patch, nr.tasks.arithmetic(n_prompts=max(8, n_prompts // 4), seed=0, tokenizer=tok),
                  {"sites": ["mlp", "attn"], "positions": "all"}),
    }
    rows = {}
    for name, (fn, data, options) in runs.items():
        t0 = time.perf_counter()
        serial = fn("embedded", data, revisions=revisions, progress=False, **options)
        row = {"serial_s": round(time.perf_counter() - t0, 2)}
        for n in (1, 2):
            t0 = time.perf_counter()
            with connect(workers=n) as cluster:
                cluster.client.run(_warm)
                t1 = time.perf_counter()
                ds = fn("embedded", data, revisions=revisions, progress=False, scheduler=cluster, **options)
                t2 = time.perf_counter()
            if not _equal(ds, serial):
                raise SystemExit(f"{name}: {n} workers gave other values than the serial run")
            row[f"workers_{n}"] = {"start_s": round(t1 - t0, 2), "sweep_s": round(t2 - t1, 2),
                                   "total_s": round(t2 - t0, 2)}
        w1, w2 = row["workers_1"], row["workers_2"]
        row["sweep_ratio_1_vs_2"] = round(w1["sweep_s"] / w2["sweep_s"], 2)
        row["total_ratio_1_vs_2"] = round(w1["total_s"] / w2["total_s"], 2)
        row["agree"] = True
        rows[name] = row
    import os

    return {"revisions": revisions, "n_prompts": n_prompts, "cores": os.cpu_count(),
            "serial_torch_threads": torch.get_num_threads(), **rows}


def report(res: dict) -> None:
    print(f"\n[cluster] checkpoint sweep over {len(res['revisions'])} embedded revisions "
          f"({res['revisions'][0]} … {res['revisions'][-1]}), {res['cores']} cores; LocalCluster of 1-thread workers; "
          f"serial = {res['serial_torch_threads']} torch threads")
    print(f"  {'experiment':<10}{'serial s':>9}{'1w start':>10}{'1w sweep':>10}{'2w start':>10}{'2w sweep':>10}"
          f"{'sweep 1w/2w':>13}{'total 1w/2w':>13}")
    for name in ("evaluate", "patch"):
        r = res[name]
        w1, w2 = r["workers_1"], r["workers_2"]
        print(f"  {name:<10}{r['serial_s']:>9.2f}{w1['start_s']:>10.2f}{w1['sweep_s']:>10.2f}{w2['start_s']:>10.2f}"
              f"{w2['sweep_s']:>10.2f}{r['sweep_ratio_1_vs_2']:>13.2f}{r['total_ratio_1_vs_2']:>13.2f}")
    print("  values: every cluster run equal to the serial run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--revisions", type=int, default=12, help="how many of the embedded revisions (the last ones)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = measure(args.n_prompts, args.revisions)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
