"""Seconds and bytes to rank an answer set's best member over the vocabulary, two ways.

    python benchmarks/answer_ranks.py [--rows 256] [--vocab 50304] [--k 1 8 16 100] [--repeats 3]

What ``evaluate`` reads for an answer set (greater-than: up to 99 later years; with their
distractors K = 100 candidates on Pythia's vocabulary of 50,304): the rank of the set's best
member, the number of tokens with a larger log-probability than any member's. (a) rank every
candidate by one (rows, K, V) comparison, which holds rows·K·V booleans at once, and take the
members' least (what the backend did for every K until 2026-12-07); (b) the toolkit's ``trace_ops.score_answers`` with
``best_of`` marking the members: one (rows, V) comparison with the best member's log-probability
(``best_rank``). Both are timed side by side from the same float32 logits, ties included (the
logits are quantised; both take the log-softmax, the toolkit also gathers the candidates' logits
and finds the top token), the best of ``--repeats``, and must give the same ranks (exit 1 if
not). Half the candidates of each row are members. The bytes are those of the comparison each
way holds, from the shapes.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from nnsight_reasoning.backend.trace_ops import score_answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 8, 16, 100])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-400, 400, (args.rows, args.vocab), generator=g).float() / 40  # many exact ties
    print(f"{args.rows} rows, vocabulary {args.vocab}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'K':>5} {'(n,K,V) s':>10} {'toolkit s':>10} {'speed-up':>9} {'(n,K,V) MB':>11} {'toolkit MB':>11}  agree")
    ok = True
    for k in args.k:
        ids = torch.randint(0, args.vocab, (args.rows, k), generator=g)
        member = torch.arange(k).repeat(args.rows, 1) % 2 == 0  # half the candidates, the first among them
        times = {"every": [], "toolkit": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            lp = logits.double().log_softmax(-1)
            every = (lp[:, None, :] > lp.gather(1, ids)[:, :, None]).sum(-1)  # (n, K): each candidate's rank
            want = torch.where(member, every, args.vocab).min(1).values
            times["every"].append(time.perf_counter() - t)
            t = time.perf_counter()
            got = score_answers(logits, ids, True, member)[2]
            times["toolkit"].append(time.perf_counter() - t)
        agree = torch.equal(got, want)
        ok &= agree
        mb = args.rows * k * args.vocab / 1e6, args.rows * args.vocab / 1e6  # the comparisons' booleans
        a, b = min(times["every"]), min(times["toolkit"])
        print(f"{k:>5} {a:>10.3f} {b:>10.3f} {a / b:>8.1f}x {mb[0]:>11.0f} {mb[1]:>11.0f}  {agree}")
    print("every way gives the same ranks" if ok else "RANKS DIFFER")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
