"""Batched patching sweep vs a naive nnsight loop (one trace per patch), side by side.

    python benchmarks/patch_sweep.py [--n-prompts 16] [--repeats 3] [--json out.json]

Same pairs, same model, same process; prints median/min seconds, forward passes and the
speed-up, and checks that both give the same numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import nnsight_reasoning as nr
from nnsight_reasoning.sites import architecture, resolve


def naive_sweep(model, pairs, sites, layers):
    """The one-off-script way: save source activations, then one trace per patched site."""
    arch = architecture(model)
    tok = model.tokenizer
    out = {s: np.full((len(pairs), len(layers), 1), np.nan) for s in sites}
    passes = 0
    for i, p in enumerate(pairs):
        b = torch.tensor([tok(p.base)["input_ids"]])
        s_ids = torch.tensor([tok(p.source)["input_ids"]])
        r = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (p.base_answer, p.source_answer)]
        acts = {}  # created outside: names bound inside a trace body do not come back
        with torch.no_grad(), model.trace(s_ids):
            for layer in layers:
                blk = resolve(model, arch.layers)[layer]
                if "mlp" in sites:
                    acts[("mlp", layer)] = resolve(blk, arch.mlp).output[:, -1].save()
                if "resid" in sites:
                    acts[("resid", layer)] = blk.output[:, -1].save()
        with torch.no_grad(), model.trace(b):
            clean = model.output.logits[0, -1].log_softmax(-1)[r].save()
        passes += 2
        for (site, layer), value in acts.items():
            with torch.no_grad(), model.trace(b):
                blk = resolve(model, arch.layers)[layer]
                x = resolve(blk, arch.mlp).output if site == "mlp" else blk.output
                x[:, -1] = value
                patched = model.output.logits[0, -1].log_softmax(-1)[r].save()
            passes += 1
            pc, pp = np.exp(clean.double().numpy()), np.exp(patched.double().numpy())
            out[site][i, layers.index(layer), 0] = nr.metrics.stolfo_ie(pc[0], pc[1], pp[0], pp[1])
    return out, passes


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = nr.load_model()
    pairs = nr.tasks.arithmetic(n_prompts=args.n_prompts, templates=["{expr} ="], seed=0)
    sites, layers = ["mlp", "resid"], list(range(model.config.num_hidden_layers))
    ds, t_fast, t_fast_min = timed(lambda: nr.patch(model, pairs, sites=sites, progress=False), args.repeats)
    (ref, passes), t_naive, t_naive_min = timed(lambda: naive_sweep(model, pairs, sites, layers), args.repeats)
    for s in sites:
        np.testing.assert_allclose(ds[s].values, ref[s], rtol=5e-5, atol=5e-5)
    rows = {"n_prompts": args.n_prompts, "sites": sites, "positions": "last",
            "toolkit": {"median_s": t_fast, "min_s": t_fast_min, "forward_passes": ds.attrs["n_forward_passes"]},
            "naive_nnsight_loop": {"median_s": t_naive, "min_s": t_naive_min, "forward_passes": passes},
            "speedup_median": t_naive / t_fast, "agree": True}
    print(f"{'method':<22}{'median s':>10}{'min s':>10}{'passes':>8}")
    print(f"{'toolkit (batched)':<22}{t_fast:>10.3f}{t_fast_min:>10.3f}{ds.attrs['n_forward_passes']:>8}")
    print(f"{'naive nnsight loop':<22}{t_naive:>10.3f}{t_naive_min:>10.3f}{passes:>8}")
    print(f"speed-up (median): {t_naive / t_fast:.1f}x; numbers agree to 5e-5")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
