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
    runs download a few numbers per row, never activations or full logits.
    """
    arch = architecture(model)
    d = dims(model)
    plan = merge(patches)
    if remote is True:
        configure_remote()
    layers = resolve(model, arch.layers)
    with torch.no_grad(), model.trace(input_ids, remote=remote, logits_to_keep=1):
        for p in plan:
            layer = layers[p.layer]
            if p.site == "head":
                x = resolve(layer, arch.o_proj).input
                v = x.view(x.shape[0], x.shape[1], d["n_heads"], d["head_dim"])
                v[p.rows, p.positions, p.heads] = v[p.src_rows, p.positions, p.heads]
            else:
                if p.site == "attn":
                    x = resolve(layer, arch.attn).output[0]
                elif p.site == "mlp":
                    x = resolve(layer, arch.mlp).output
                else:
                    x = layer.output
                    if isinstance(x, tuple):  # older decoder layers return (hidden, ...)
                        x = x[0]
                x[p.rows, p.positions] = x[p.src_rows, p.positions]
        logits = model.output.logits[:, -1].double()  # ratios of tiny probabilities need it
        log_probs = logits.log_softmax(-1)
        chosen = torch.gather(log_probs, 1, answer_ids)
        scores = nnsight.save((chosen, torch.gather(logits, 1, answer_ids),
                               (log_probs.unsqueeze(1) > chosen.unsqueeze(-1)).sum(-1)))
    return Scores(*(t.detach().cpu() for t in scores))


def configure_remote() -> None:
    """Point nnsight at NDIF: host from ``NDIF_HOST``, key from ``NDIF_API_KEY`` (else nnsight's
    config). The key is only handed to nnsight; it is never printed or stored."""
    import os

    from .errors import RunError

    api = nnsight.CONFIG.API
    if os.environ.get("NDIF_HOST"):
        api.HOST = os.environ["NDIF_HOST"]
    if os.environ.get("NDIF_API_KEY"):
        api.APIKEY = os.environ["NDIF_API_KEY"]
    if not api.APIKEY:
        raise RunError("no NDIF API key: set NDIF_API_KEY (or nnsight.CONFIG.set_default_api_key) "
                       "or run without --remote")


def tokenize(model: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's own special tokens (e.g. <bos>)."""
    return [model.tokenizer(t)["input_ids"] for t in texts]


def answer_token(model: Any, answer: str) -> int | None:
    """The single token id of ``" " + answer``, or None if it is not exactly one known token."""
    return single_token_id(model.tokenizer, answer)
