"""The one module that talks to nnsight: every trace, intervention and save lives here.

Experiments describe *what* to run as plain tensors (:class:`Patch`) and receive small
tensors back, so the same code runs locally and on NDIF (``remote=True``) and no experiment
file has to know nnsight's rules (forward-order access, in-place edits, ``.save()``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import nnsight
import torch

from . import remote as _remote
from .sites import SITES, architecture, dims, resolve
from .tasks.base import single_token_id


@dataclass(frozen=True)
class Patch:
    """Copy one site's activation from ``src_rows`` into ``rows`` of the same batch.

    All index tensors have the same length k: entry i copies
    ``act[src_rows[i], positions[i] (, heads[i])]`` into ``act[rows[i], positions[i] (, heads[i])]``
    at ``layer``. Source rows are never patched themselves, so their activations are the
    clean source-prompt values when the copy happens.
    """

    site: str
    layer: int
    rows: torch.Tensor
    src_rows: torch.Tensor
    positions: torch.Tensor
    heads: torch.Tensor | None = None


@dataclass(frozen=True)
class Scores:
    """Next-token scores at the last position for K candidate tokens per row.

    ``log_probs``, ``logits``: (rows, K) float64; ``rank``: (rows, K) int64, 0 = argmax.
    """

    log_probs: torch.Tensor
    logits: torch.Tensor
    rank: torch.Tensor


def merge(patches: Sequence[Patch]) -> list[Patch]:
    """One Patch per (layer, site), sorted in the order the forward pass reaches them."""
    groups: dict[tuple[int, int], list[Patch]] = {}
    for p in patches:
        groups.setdefault((p.layer, SITES.index(p.site)), []).append(p)
    out = []
    for key in sorted(groups):
        ps = groups[key]
        heads = None if ps[0].heads is None else torch.cat([p.heads for p in ps])  # type: ignore[misc]
        out.append(Patch(ps[0].site, ps[0].layer, torch.cat([p.rows for p in ps]),
                         torch.cat([p.src_rows for p in ps]), torch.cat([p.positions for p in ps]), heads))
    return out


def answer_scores(
    model: Any,
    input_ids: torch.Tensor,
    answer_ids: torch.Tensor,
    patches: Sequence[Patch] = (),
    *,
    remote: bool | str = False,
) -> Scores:
    """Run one forward pass over ``input_ids`` (rows, T) with ``patches`` applied.

    Only the scores of ``answer_ids`` (rows, K) at the last position come back, so remote
    runs download a few numbers per row, never activations or full logits. ``remote``: False
    (here), "local" (nnsight's serialisation path, run here), True or a host URL (one NDIF job).
    """
    steps = _steps(model, merge(patches))
    d = dims(model)
    args = (model, input_ids, answer_ids, steps, d["n_heads"], d["head_dim"])
    if remote is False or remote == "local":
        saved = _trace_scores(*args, remote=remote)
    else:
        saved = _remote.run(model, lambda backend: _trace_scores(*args, backend=backend), remote)["scores"]
    return Scores(*(t.detach().cpu() for t in saved))


def _steps(model: Any, plan: Sequence[Patch]) -> list[tuple]:
    """Patches as (kind, module, rows, src_rows, positions, heads), modules already resolved.

    The trace body may only touch nnsight, torch and builtins: it is shipped to NDIF, where
    this package is not installed.
    """
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    paths = {"head": arch.o_proj, "attn": arch.attn, "mlp": arch.mlp}
    steps = []
    for p in plan:
        layer = layers[p.layer]
        module = resolve(layer, paths[p.site]) if p.site in paths else layer
        steps.append((p.site, module, p.rows, p.src_rows, p.positions, p.heads))
    return steps


def _trace_scores(model, input_ids, answer_ids, steps, n_heads, head_dim, remote=False, backend=None):
    scores = None  # a non-blocking remote backend leaves it unset; the job's result holds it
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1):
        for kind, module, rows, src, pos, heads in steps:
            if kind == "head":
                x = module.input
                v = x.view(x.shape[0], x.shape[1], n_heads, head_dim)
                v[rows, pos, heads] = v[src, pos, heads]
            else:
                x = module.output
                if kind == "attn" or isinstance(x, tuple):  # attention returns (out, weights)
                    x = x[0]
                x[rows, pos] = x[src, pos]
        logits = model.output.logits[:, -1].double()  # ratios of tiny probabilities need it
        log_probs = logits.log_softmax(-1)
        chosen = torch.gather(log_probs, 1, answer_ids)
        scores = nnsight.save((chosen, torch.gather(logits, 1, answer_ids),
                               (log_probs.unsqueeze(1) > chosen.unsqueeze(-1)).sum(-1)))
    return scores


def tokenize(model: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's own special tokens (e.g. <bos>)."""
    return [model.tokenizer(t)["input_ids"] for t in texts]


def answer_token(model: Any, answer: str) -> int | None:
    """The single token id of ``" " + answer``, or None if it is not exactly one known token."""
    return single_token_id(model.tokenizer, answer)
