"""Attribution patching (Nanda 2023; Syed, Rager & Conmy 2023): the first-order estimate of
activation patching, ``(a_source − a_base) · ∂M/∂a`` at the base run, for every site, layer
and position from one forward and one backward pass per batch of pairs.

The metric is linearised around the clean base run (P* = P):

- ``logit_diff``: M = logit r2 − logit r1, so the estimate is Δa · ∇M.
- ``stolfo_ie``: IE(P*) = ½[(P*(r2) − P(r2))/P(r2) + (P(r1) − P*(r1))/P*(r1)] has the
  differential ½[dP(r2)/P(r2) − dP(r1)/P(r1)] = ½ d[log P(r2) − log P(r1)], so the
  estimate is ½ Δa · ∇(log P(r2) − log P(r1)). Exact IE is a ratio that explodes when
  P(r2) is tiny; the linear estimate cannot follow that, so compare it with exact patching on
  ``logit_diff`` (the README and the tests report the Pearson r there).

Integrated gradients (``ig_steps`` = m > 1, as EAP-IG does for edges): the gradient is
averaged over m runs whose token embeddings are interpolated from the base to the source
prompt, which follows the metric's curvature between the two runs; m runs cost m extra rows.

Used through ``nr.patch(..., method="attribution", ig_steps=m)``: same sites, positions and
result schema as exact patching, ``attrs["method"] = "attribution_patching"``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import backend
from .parts import Parts
from .tasks.base import length_batches


def plan(lengths: list[int], batch_size: int, ig_steps: int = 1) -> list[list[int]]:
    """Pair indices per pass: equal-length pairs, each taking a source, a base and (with
    integrated gradients) ``ig_steps`` interpolated rows of the ``batch_size``."""
    per = max(1, batch_size // (2 + (ig_steps if ig_steps > 1 else 0)))
    return length_batches(lengths, per)


def run_pass(model: Any, k: int, pair_idx: list[int], base_ids, source_ids, answers, sites: list[str],
             layer_list: list[int], positions: str, metric: str, ig_steps: int, remote: bool | str, store: Parts,
             values: dict[str, np.ndarray], clean: np.ndarray) -> None:
    """One forward + backward over the pairs ``pair_idx``; fills ``values`` and ``clean``."""
    rows = [source_ids[i] for i in pair_idx] + [base_ids[i] for i in pair_idx]
    ans = [answers[i] for i in pair_idx] * 2
    units = [(s, layer) for s in sites for layer in layer_list]
    target = "logit_diff" if metric == "logit_diff" else "log_prob_diff"
    scale = 1.0 if metric == "logit_diff" else 0.5

    def compute():
        attr, scores = backend.attributions(model, torch.tensor(rows), torch.tensor(ans), units, target,
                                            ig_steps=ig_steps, remote=remote)
        out = {f"{s}-{layer}": scale * a.numpy() for (s, layer), a in zip(units, attr)}
        out["log_probs"] = scores.log_probs.double().numpy()
        return out

    got = store.fetch(f"attr-{k:06d}", (rows, ans, units, target, ig_steps), compute)
    p, t = len(pair_idx), len(rows[0])
    clean[pair_idx] = np.exp(got["log_probs"][p:])
    for s in sites:
        for li, layer in enumerate(layer_list):
            a = got[f"{s}-{layer}"]  # (p, T) or (p, T, heads)
            if positions == "last":
                values[s][pair_idx, li, 0] = a[:, t - 1]
            else:
                values[s][pair_idx, li, :t] = a
