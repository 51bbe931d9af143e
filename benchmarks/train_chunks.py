"""Seconds per training step of scripts/train_embedded.py's full mixture, by chunking and precision.

    python benchmarks/train_chunks.py [--steps 3] [--threads 2] [--fraction 1] [--precisions fp32 bf16] [BUDGET ...]

A step's sequences (the shipped model's mix, drawn as the script draws them) are run through
forward, the script's loss (``chunk_losses``) and backward on the shipped main's weights, once
per chunking, side by side and twice in turn (the second round is the one to read: the first
warms the allocator). ``0`` is the 128-sequence chunks v1-v7 were trained with; a budget N > 0 is
``--batch-tokens N``. The weights are not updated, so every chunking sees the same model. Also
prints the tokens a step computes, padding included, per chunking: the step time follows them
(matrix products are about half of it, scripts/train_embedded.py's profile), and checks that every
chunking gives the same gradients (exit 1 if not).

``--precisions fp32 bf16`` times each chunking in each precision (``--precision``; bf16 is the
forward's matrix products under ``torch.autocast``, ``forward_precision``), and prints how far a
bf16 step's gradient is from the fp32 one (the norm of the difference relative to the fp32 gradient's,
over every parameter at once; tests/test_models.py bounds it on a small model by bfloat16's roundoff).
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from nnsight_reasoning import embedded

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("budgets", nargs="*", type=int, default=[0, 1024])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=1.0, help="of each task's sequences (a smoke test: 0.05)")
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                    help="train_embedded's --precision values to time (each with every budget)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("train_embedded", ROOT / "scripts" / "train_embedded.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tok, rng = script.build_tokenizer(), random.Random(0)
    meta = embedded.training_meta("main")
    pool = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    model = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main"), dtype=torch.float32).train()
    smooth = script.smoothing_classes(tok)
    steps = [{task: script.draw(task, max(1, round(n * args.fraction)), rng, tok, pool, True)
              for task, n in meta["mix"].items()} for _ in range(args.steps)]

    def step_seconds(budget: int, precision: str) -> tuple[float, list[torch.Tensor]]:
        """Seconds a step, and the last step's gradients."""
        t0 = time.perf_counter()
        for data in steps:
            model.zero_grad(set_to_none=True)
            for seqs in data.values():
                chunks = list(script.batches(seqs, tok.pad_token_id, budget))
                for loss, _ in script.chunk_losses(model, chunks, smooth, meta["smoothing"], meta["lm_weight"], precision):
                    loss.backward()
        return (time.perf_counter() - t0) / len(steps), [p.grad.clone() for p in model.parameters()]

    tokens = {b: sum(c[0].numel() for data in steps for seqs in data.values()
                     for c in script.batches(seqs, tok.pad_token_id, b)) // len(steps) for b in args.budgets}
    real = sum(len(s[0]) for data in steps for seqs in data.values() for s in seqs) // len(steps)
    print(f"{args.steps} steps of the shipped mix (x {args.fraction}), {args.threads} threads; tokens per step "
          f"without padding: {real}")
    grads = {}
    for round_ in (1, 2):
        for precision in args.precisions:
            for b in args.budgets:
                seconds, grads[b, precision] = step_seconds(b, precision)
                print(f"round {round_}  {precision}  batch_tokens {b:>5}  tokens {tokens[b]:>6}  {seconds:.2f} s/step",
                      flush=True)
    # the chunkings must compute the same gradients, in each precision: in fp32 up to the summation order
    # (~100 float32 ulps; a dropped or double-counted token is far beyond it); in bf16 a reordered float32
    # sum can also round a product's output to the neighbouring bfloat16, one bf16 ulp (2**-7) of it
    # (measured: 1.9e-4 of the largest gradient at --fraction 0.05)
    limit = {"fp32": 1e-5, "bf16": 2.0 ** -7}
    bad = []
    for precision in args.precisions:
        ref = grads[args.budgets[0], precision]
        scale = max(float(g.abs().max()) for g in ref)
        worst = max(float((g - r).abs().max()) for b in args.budgets for g, r in zip(grads[b, precision], ref)) / scale
        print(f"{precision}: largest gradient difference between chunkings: {worst:.1e} of the largest gradient")
        bad += [precision] if worst > limit[precision] else []
    if "bf16" in args.precisions and "fp32" in args.precisions:
        # the whole gradient (every parameter's, as one vector): a near-zero bias alone is ill-conditioned
        flat = {p: torch.cat([g.flatten() for g in grads[args.budgets[0], p]]) for p in ("fp32", "bf16")}
        off = float((flat["bf16"] - flat["fp32"]).norm() / flat["fp32"].norm())
        print(f"bf16 against fp32: the gradient differs by {off:.1e} of its norm (bfloat16 roundoff 2**-8 = 3.9e-03)")
    if bad:
        raise SystemExit(f"the chunkings' gradients differ ({', '.join(bad)})")
    print("gradients agree")


if __name__ == "__main__":
    main()
