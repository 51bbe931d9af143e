"""Traces over MLP neurons: the hidden units entering each MLP's output projection.

Neuron n of layer l has an activation a_n (the input of the output projection at index n)
and an output direction w_n (column n of that projection's weight). Only reduced results
leave a trace (chosen neurons, last positions, sums), so large models stream through in
batches and remote runs download little. As in ``graph.py``, the trace bodies call only
torch, nnsight and the helpers of :mod:`.trace_ops`: they are shipped to NDIF, where this
package is not installed.
"""
from __future__ import annotations

from typing import Any, Sequence

import nnsight
import torch

from ..nnsight_shim import reads_weights
from ..sites import architecture, resolve
from . import Scores
from .graph import _gain_offset, final_norm
from .trace_ops import on_device, centred, neuron_directions, norm_gain, norm_scale, score_answers, unembed_rows


def _outs(model: Any, layers: Sequence[int]) -> tuple[list, bool]:
    """The output projections of ``layers`` (forward order) and whether they store their
    weight transposed, (in, out) (GPT-2's Conv1D)."""
    arch = architecture(model)
    blocks = resolve(model, arch.layers)
    return [resolve(blocks[li], arch.mlp_out) for li in layers], arch.transposed


def neuron_activations(model: Any, input_ids: torch.Tensor, layers: Sequence[int], *, last_only: bool = True,
                       select: Sequence[torch.Tensor] | None = None, abs_sum: bool = False,
                       remote: bool | str = False) -> torch.Tensor:
    """Activations of ``layers`` (sorted) on ``input_ids`` (n, T), no padding.

    Returns (n, L, T', k) float32 with T' = 1 (last position) or T, k = all neurons or the
    per-layer indices in ``select`` (equal lengths); with ``abs_sum`` instead (L, N): Σ |a|
    over rows and the kept positions, for choosing neurons without keeping activations.
    """
    from . import _run

    mods, _ = _outs(model, layers)
    saved = _run(model, _trace_activations, (model, input_ids, mods, last_only, select, abs_sum), remote, "saved")
    return saved.detach().cpu().float()


def _trace_activations(model, input_ids, mods, last_only, select, abs_sum, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        rows = []
        k = 0
        for mod in mods:
            a = mod.input
            if last_only:
                a = a[:, -1:]
            if select is not None:
                a = a[:, :, select[k]]
            rows.append(a.abs().sum((0, 1)) if abs_sum else a)
            k += 1
        saved = nnsight.save(torch.stack(on_device(rows, rows[0]), 0 if abs_sum else 1))
    return saved


@reads_weights
def neuron_contributions(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, layers: Sequence[int], *,
                         remote: bool | str = False) -> torch.Tensor:
    """Each neuron's direct contribution to its row's answer logit at the last position.

    ``answer_ids`` (n,). Returns (n, L, N) float64: a_n · (w_n · (γ ⊙ (W_U[answer] − mean_v
    W_U[v])) / s), w_n centred for LayerNorm, s the final norm's scale on this run (frozen),
    i.e. activation × the output direction projected on the answer's unembedding, as a
    direct logit effect (the same convention as ``graph.head_logit_effects``).
    """
    from . import _run

    final, unembed, center, eps = final_norm(model)
    mods, conv1d = _outs(model, layers)
    saved = _run(model, _trace_contributions, (model, input_ids, answer_ids, mods, conv1d, final, unembed, center, eps,
                                               _gain_offset(model)), remote, "saved")
    return saved.detach().cpu().double()


def _trace_contributions(model, input_ids, answer_ids, mods, conv1d, final, unembed, center, eps, gain_offset,
                         remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        acts = []
        for mod in mods:
            acts.append(mod.input[:, -1].double())
        scale = norm_scale(final.input[:, -1], center, eps)  # (n,)
        v = unembed_rows(unembed.weight, final.weight, gain_offset, answer_ids)  # (n, d)
        if center:  # centring w_n is the same as centring v
            v = centred(v)
        scale = scale.to(v.device)  # everything on the unembedding's device (layers may sit elsewhere)
        out = []
        k = 0
        for mod in mods:
            proj = v @ neuron_directions(mod.weight.double(), conv1d).T.to(v.device)  # (n, N): w_n · v
            out.append(acts[k].to(v.device) * proj / scale[:, None])
            k += 1
        saved = nnsight.save(torch.stack(out, 1))
    return saved


@reads_weights
def neuron_logit_lens(model: Any, layers: Sequence[int], neurons: Sequence[int], top: int, *,
                      remote: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` tokens each neuron's output direction promotes most: W_U (centred over the
    vocabulary) · (γ ⊙ w_n), w_n centred for LayerNorm. ``layers``/``neurons``: one entry per
    neuron. Returns (ids, values), each (len(neurons), top)."""
    from . import _run

    order = sorted(set(layers))
    final, unembed, center, _ = final_norm(model)
    mods, conv1d = _outs(model, order)
    slot = torch.tensor([order.index(li) for li in layers])
    bos = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else model.tokenizer.eos_token_id
    saved = _run(model, _trace_lens, (model, torch.tensor([[bos]]), mods, conv1d, final, unembed, center,
                                      _gain_offset(model), slot, torch.tensor(list(neurons)), top), remote, "saved")
    return saved[0].detach().cpu(), saved[1].detach().cpu().double()


def _trace_lens(model, input_ids, mods, conv1d, final, unembed, center, gain_offset, slot, neurons, top,
                remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        dirs = []
        for mod in mods:
            dirs.append(neuron_directions(mod.weight.double(), conv1d))  # (N, d): row n = w_n
        u = unembed.weight.double()
        w = torch.stack(on_device(dirs, u))[slot, neurons]  # (k, d)
        if center:
            w = centred(w)
        logits = (w * norm_gain(final.weight.to(u.device), gain_offset)) @ (u - u.mean(0)).T  # (k, V)
        best = logits.topk(top, -1)
        saved = nnsight.save((best.indices, best.values))
    return saved


def ablated_scores(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor,
                   ablations: Sequence[tuple[int, torch.Tensor, torch.Tensor]], *, remote: bool | str = False) -> Scores:
    """Scores of ``answer_ids`` (n, K) at the last position with neurons set to fixed values
    at every position: ``ablations`` holds (layer, neuron indices, values) per layer (zero
    ablation: values 0; mean ablation: the neurons' mean activations)."""
    from . import _run

    ablations = sorted(ablations, key=lambda a: a[0])
    mods, _ = _outs(model, [a[0] for a in ablations])
    plan = [(mod, idx, val) for mod, (_, idx, val) in zip(mods, ablations)]
    saved = _run(model, _trace_ablated, (model, input_ids, answer_ids, plan), remote, "saved")
    return Scores(*(t.detach().cpu() for t in saved))


def _trace_ablated(model, input_ids, answer_ids, plan, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        for mod, idx, val in plan:
            x = mod.input
            x[:, :, idx] = val.to(x.device, x.dtype)
        saved = nnsight.save(score_answers(model.output.logits[:, -1], answer_ids))
    return saved


# Scores.rank (rows,) since format 2 ((rows, K) before): see backend.answer_scores.parts_format
ablated_scores.parts_format = 2
