"""Traces that read and edit the residual stream at chosen token positions, at every depth:
the token embeddings (depth 0) and the output of each layer (depth l + 1). Used by the
binding-ID experiments. The trace bodies call only torch, nnsight and the helpers of
:mod:`.trace_ops` (they are shipped to NDIF).
"""
from __future__ import annotations

from typing import Any

import nnsight
import torch

from ..sites import architecture, resolve
from . import Scores
from .trace_ops import on_device, score_answers


def _depths(model: Any) -> list:
    arch = architecture(model)
    return [resolve(model, arch.embed)] + list(resolve(model, arch.layers))


def resid_at(model: Any, input_ids: torch.Tensor, positions: torch.Tensor, *, remote: bool | str = False) -> torch.Tensor:
    """The residual stream of row i at ``positions[i]`` (n, m), every depth: (n, L + 1, m, d) float32."""
    from . import _run

    saved = _run(model, _trace_read, (model, input_ids, _depths(model), positions), remote, "saved")
    return saved.detach().cpu().float()


def _trace_read(model, input_ids, depths, positions, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        rows = torch.arange(input_ids.shape[0])[:, None]
        out = []
        for mod in depths:
            x = mod.output
            if isinstance(x, tuple):
                x = x[0]
            out.append(x[rows, positions])
        saved = nnsight.save(torch.stack(on_device(out, out[0]), 1))  # depths may sit on several devices
    return saved


def edited_scores(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, rows: torch.Tensor,
                  src_rows: torch.Tensor, positions: torch.Tensor, add: torch.Tensor | None = None, *,
                  position_ids: torch.Tensor | None = None, freeze: tuple | None = None,
                  remote: bool | str = False) -> Scores:
    """Scores of ``answer_ids`` (n, K) at the last position after residual edits at every depth.

    Edit j sets row ``rows[j]`` at position ``positions[j]`` to row ``src_rows[j]``'s value at
    the same position plus ``add[depth, j]`` ((L + 1, k, d); zero if None), at the embeddings
    and after every layer. Source rows must not be edited themselves (they are read clean).
    ``position_ids`` (n, T) replaces the positions the model sees (rotary or learned).
    ``freeze`` = (rows (f,), clean rows (f,), mask (f, T) bool): at every depth, before the
    edits, row ``rows[i]`` takes row ``clean[i]``'s values where ``mask[i]`` is set (binding-
    iclr's frozen context: the context tokens keep their clean values at every layer, so only
    the tokens after the context read an edit).
    """
    from . import _run

    depths = _depths(model)
    if add is None:
        add = torch.zeros(len(depths), len(rows), 1)
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    saved = _run(model, _trace_edit, (model, input_ids, answer_ids, depths, rows, src_rows, positions, add, kwargs,
                                      freeze), remote, "saved")
    return Scores(*(t.detach().cpu() for t in saved))


def _trace_edit(model, input_ids, answer_ids, depths, rows, src_rows, positions, add, kwargs, freeze, remote=False,
                backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False,
                                      **kwargs):
        k = 0
        for mod in depths:
            x = mod.output
            if isinstance(x, tuple):
                x = x[0]
            if freeze is not None:
                x[freeze[0]] = torch.where(freeze[2].to(x.device)[:, :, None], x[freeze[1]], x[freeze[0]])
            if len(rows):
                x[rows, positions] = x[src_rows, positions] + add[k].to(x.device, x.dtype)
            k += 1
        saved = nnsight.save(score_answers(model.output.logits[:, -1], answer_ids))
    return saved


# Scores.rank (rows,) since format 2 ((rows, K) before): see backend.answer_scores.parts_format
edited_scores.parts_format = 2
