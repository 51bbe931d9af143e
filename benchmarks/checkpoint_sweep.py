"""What a checkpoint sweep costs per revision: load vs run seconds, forward passes, disk.

    python benchmarks/checkpoint_sweep.py [--n-prompts 64] [--json out.json]

Two models, same sweep (arithmetic, sites mlp + attn, last position, batch 512):
(a) the embedded model over all its revisions;
(b) a randomly initialised GPT-NeoX with Pythia-160m's dimensions (12 layers, d=768,
    vocabulary 50304; fp16 files as on the Hub), saved as three local revisions, so the
    numbers stand for one Pythia-160m checkpoint minus its download.
Each revision's part file (the per-revision netCDF kept while a sweep runs) is measured too.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

import nnsight_reasoning as nr
from nnsight_reasoning import embedded


def pythia_160m_like(root: Path, revisions: list[str]) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, tie_word_embeddings=False)
    for k, rev in enumerate(revisions):
        torch.manual_seed(k)
        GPTNeoXForCausalLM(cfg).half().save_pretrained(root / rev)
        # the embedded word-level tokenizer: its ids are valid in a 50304-token vocabulary
        embedded.load_tokenizer().save_pretrained(root / rev)


def measure(model, revisions: str, n_prompts: int, parts: Path, weights: Path) -> dict:
    pairs = nr.tasks.arithmetic(n_prompts=n_prompts, seed=0)
    ds = nr.patch(model, pairs, sites=["mlp", "attn"], revisions=revisions, resume_dir=parts, progress=False)
    sizes = [p.stat().st_size for p in parts.glob("*.nc")]
    out = tempfile.mktemp(suffix=".nc")
    nr.save_result(ds, out)
    row = {"revisions": ds.sizes["checkpoint"], "n_layers": ds.sizes["layer"],
           "forward_passes_per_revision": int(ds.attrs["n_forward_passes"]),
           "load_s_median": statistics.median(ds.seconds_load.values[1:].tolist()),  # the first pays for imports
           "run_s_median": statistics.median(ds.seconds_run.values[1:].tolist()),
           "part_kB": statistics.median(sizes) / 1e3, "merged_kB": Path(out).stat().st_size / 1e3,
           "weights_MB": sum(f.stat().st_size for f in weights.glob("*.safetensors")) / 1e6}
    Path(out).unlink()
    return row


def measure_all(n_prompts: int = 64) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    try:
        rows = {"embedded": measure("embedded", "all", n_prompts, work / "p1", embedded.revision_path("main"))}
        pythia_160m_like(work / "pythia-160m-like", ["step1000", "step2000", "step3000"])
        rows["pythia-160m-like"] = measure(work / "pythia-160m-like", "all", n_prompts, work / "p2",
                                           work / "pythia-160m-like" / "step1000")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"n_prompts": n_prompts, "threads": torch.get_num_threads(), **rows}


def report(res: dict) -> None:
    print(f"\n[checkpoints] sweep cost per revision, {res['n_prompts']} arithmetic pairs, sites mlp+attn, "
          f"last position, {res['threads']} threads")
    print(f"  {'model':<18}{'revs':>5}{'passes/rev':>11}{'load s':>9}{'run s':>8}{'part kB':>9}{'merged kB':>11}"
          f"{'weights MB':>12}")
    for name in ("embedded", "pythia-160m-like"):
        r = res[name]
        print(f"  {name:<18}{r['revisions']:>5}{r['forward_passes_per_revision']:>11}{r['load_s_median']:>9.2f}"
              f"{r['run_s_median']:>8.2f}{r['part_kB']:>9.1f}{r['merged_kB']:>11.1f}{r['weights_MB']:>12.1f}")
    p = res["pythia-160m-like"]
    print(f"  => Pythia-160m, 154 checkpoints: {154 * p['forward_passes_per_revision']} forward passes, "
          f"~{154 * (p['load_s_median'] + p['run_s_median']) / 60:.0f} min of load+compute here (plus downloads), "
          f"result ~{p['part_kB'] * 154 / 1e3:.1f} MB, downloads ~{p['weights_MB'] * 154 / 1e3:.0f} GB of fp16 weights")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = measure_all(args.n_prompts)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
