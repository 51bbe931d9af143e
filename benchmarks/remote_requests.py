"""Round trips and bytes of a remote patching sweep: this toolkit vs a naive per-site loop.

    python benchmarks/remote_requests.py [--n-prompts 64] [--json out.json]

Starts the loopback NDIF server of the tests (needs scripts/install_ndif.sh), deploys the
embedded model, and runs the same sweep (arithmetic pairs; mlp, attn, resid at every layer,
last position) two ways, both counted by the same meter (a :class:`nnsight_reasoning.remote.Traffic` per method):

* toolkit: ``nr.patch(..., remote=True)``, one request per forward pass, scores only (with
  patching engine v2, the default, and again with engine v1: the same passes, so the same
  requests; v2's requests carry its packed layout, a few small integer tables);
* naive: what a one-off script does, one remote trace per (site, layer) and prompt-length
  group, patching the base rows from the source rows and saving last-position logits.

Both must give the same logit differences; the script checks it and prints the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nnsight
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ndif_stack import NDIFStack, installed  # noqa: E402

import nnsight_reasoning as nr  # noqa: E402
from nnsight_reasoning import backend, embedded, remote  # noqa: E402
from nnsight_reasoning.sites import architecture, resolve  # noqa: E402
from nnsight_reasoning.tasks.base import group_by_length  # noqa: E402

SITES = ("mlp", "attn", "resid")


def naive(model, pairs, layers):
    """One request per (site, layer, length group); full last-position logits come back."""
    arch = architecture(model)
    tok = model.tokenizer
    base = [tok(p.base)["input_ids"] for p in pairs]
    src = [tok(p.source)["input_ids"] for p in pairs]
    ans = [[nr.tasks.base.single_token_id(tok, a) for a in (p.base_answer, p.source_answer)] for p in pairs]
    out = {s: np.zeros((len(pairs), len(layers))) for s in SITES}
    for idx in group_by_length([len(b) for b in base]):
        ids = torch.tensor([src[i] for i in idx] + [base[i] for i in idx])
        n = len(idx)
        rows, srcs = torch.arange(n, 2 * n), torch.arange(n)
        for s in SITES:
            for li, layer in enumerate(layers):
                blk = resolve(model, arch.layers)[layer]
                mod = {"mlp": lambda: resolve(blk, arch.mlp), "attn": lambda: resolve(blk, arch.attn),
                       "resid": lambda: blk}[s]()

                def trace(backend, mod=mod, s=s):
                    with torch.no_grad(), model.trace(ids, backend=backend):
                        x = mod.output[0] if s == "attn" else mod.output
                        x[rows, -1] = x[srcs, -1]
                        logits = nnsight.save(model.output.logits[:, -1])  # noqa: F841

                logits = remote.run(model, trace)["logits"].double()
                a = torch.tensor([ans[i] for i in idx])
                patched = logits[n:].gather(1, a)
                out[s][idx, li] = (patched[:, 1] - patched[:, 0]).numpy()  # logit(r2) - logit(r1)
    return out


def measure(n_prompts: int = 64) -> dict:
    """Start the loopback NDIF server, run both sweeps, check they agree, stop the server."""
    if not installed():
        return {"skipped": "needs the loopback NDIF server: bash scripts/install_ndif.sh"}
    stack = NDIFStack()
    saved_env = {k: os.environ.get(k) for k in ("NDIF_HOST", "NDIF_API_KEY")}
    try:
        stack.start([embedded.revision_path("main")])
        os.environ.update(NDIF_HOST=stack.host, NDIF_API_KEY="benchmark")
        model = nr.load_model()
        pairs = nr.tasks.arithmetic(n_prompts=n_prompts, seed=0, tokenizer=model.tokenizer)
        layers = list(range(nr.sites.dims(model)["n_layers"]))
        rows = {}

        def toolkit(engine):
            with backend.engine(engine):
                return nr.patch(model, pairs, sites=list(SITES), metric="logit_diff", remote=True, progress=False)

        for name, fn in (("toolkit", lambda: toolkit("v2")), ("toolkit_v1", lambda: toolkit("v1")),
                         ("naive", lambda: naive(model, pairs, layers))):
            t0 = time.perf_counter()
            with remote.counting(remote.Traffic()) as traffic:
                res = fn()
            rows[name] = {"seconds": time.perf_counter() - t0, **traffic.as_attrs(), "result": res}
        ds = rows["toolkit"].pop("result")
        nv = rows["naive"].pop("result")
        v1 = rows["toolkit_v1"].pop("result")
        for s in SITES:
            assert np.allclose(ds[s].values, v1[s].values, atol=1e-4, equal_nan=True), f"engines disagree on {s}"
        # logit_diff of the patched run minus the clean base's constant: compare the patched part.
        for s in SITES:
            clean = ds[s].values[:, :, 0] - nv[s]
            assert np.allclose(clean, clean[:, :1], atol=1e-4), f"toolkit and naive disagree on {s}"
        return {"n_prompts": n_prompts, "n_sites": len(SITES) * len(layers), "stack": stack.timings, **rows}
    finally:
        stack.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report(res: dict) -> None:
    if "skipped" in res:
        print(f"\n[remote] skipped: {res['skipped']}")
        return
    t, n = res["toolkit"], res["naive"]
    print(f"\n[remote] loopback NDIF server up in {res['stack']['total_s']:.1f} s; sweep: {res['n_prompts']} pairs "
          f"× {res['n_sites']} (site, layer), last position, logit_diff")
    print(f"  {'':10}{'requests':>10}{'kB up':>10}{'kB down':>10}{'seconds':>10}")
    for name in ("toolkit", "toolkit_v1", "naive"):
        if name not in res:
            continue
        r = res[name]
        print(f"  {name:10}{r['remote_jobs']:>10}{r['remote_bytes_sent'] / 1e3:>10.1f}"
              f"{r['remote_bytes_received'] / 1e3:>10.1f}{r['seconds']:>10.2f}")
    print(f"  naive/toolkit: requests {n['remote_jobs'] / t['remote_jobs']:.1f}x, "
          f"download {n['remote_bytes_received'] / t['remote_bytes_received']:.1f}x, "
          f"time {n['seconds'] / t['seconds']:.1f}x; same numbers: yes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = measure(args.n_prompts)
    if "skipped" in res:
        sys.exit(res["skipped"])
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
