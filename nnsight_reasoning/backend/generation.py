"""Greedy generation traced step by step, with MLP neurons recorded and edited at every step.

Rai & Yao (2024) let the model write its own chain of thought and read the MLP neurons at
every generated token; their ablation perturbs neurons during that generation. One trace of
``model.generate`` does all of it: at each step (the prompt's pass, then one pass per new
token, with the key/value cache), per layer in forward order, the hidden units entering the
MLP's output projection (the ``neuron`` site) are

- edited: set to fixed values at every position (zero or mean ablation), and/or their output
  directions perturbed: adding ε_n to column n of the output weight adds a_n · ε_n to the
  projection's output, which is how the edit is made (the weights are never written);
- read at the step's last position, for the ranking (top ``top_k`` per layer) and for the
  chosen units' activations.

Rows are left-padded with an attention mask, so every row's last column is its newest token
and transformers derives position ids from the mask. Exactly ``max_new_tokens`` steps run
(end-of-sequence does not stop the loop; callers cut each row at its first end token), so
the number of steps, and so the trace, is fixed. As in ``graph.py``, the trace body calls
only torch, nnsight and :mod:`.trace_ops`: it is shipped to NDIF as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import nnsight
import torch

from ..nnsight_shim import reads_weights
from ..sites import architecture, resolve
from .graph import _gain_offset, final_norm
from .trace_ops import on_device, centred, neuron_directions, norm_scale, unembed_rows

RANKINGS = ("algorithm_one", "direct_contribution")


@dataclass(frozen=True)
class Edit:
    """What happens to layer ``layer``'s neurons during generation: ``set_neurons`` take
    ``set_values`` (k,) at every position; ``noise_neurons``' output directions get ``noise``
    (k, d_model) added."""

    layer: int
    set_neurons: torch.Tensor | None = None
    set_values: torch.Tensor | None = None
    noise_neurons: torch.Tensor | None = None
    noise: torch.Tensor | None = None


@dataclass(frozen=True)
class Generated:
    """``tokens`` (n, S): the greedy continuation, S = max_new_tokens, nothing cut.
    ``top_neurons``/``top_scores`` (n, S, L, k): per step and layer the ``top_k`` neurons by
    the ranking and their scores (float64), or None. ``activations`` (n, S, U): the recorded
    units' activations at each step's last position, or None."""

    tokens: torch.Tensor
    top_neurons: torch.Tensor | None
    top_scores: torch.Tensor | None
    activations: torch.Tensor | None


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (n, T), rows left-padded with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@reads_weights
def generate(model: Any, rows: Sequence[Sequence[int]], max_new_tokens: int, *, ranking: str | None = None,
             top_k: int = 20, units: Sequence[tuple[int, int]] = (), edits: Sequence[Edit] = (),
             remote: bool | str = False) -> Generated:
    """Greedy continuations of token-id ``rows`` (any lengths), ``max_new_tokens`` each.

    ``ranking``: "algorithm_one" (Rai & Yao: |a_n| · ‖w_n‖₂, w_n the output weight's column n)
    or "direct_contribution" (a_n · w_n · (γ ⊙ (W_U[t] − mean W_U)) / s, the neuron's direct
    effect on the logit of the token t this step generates, final norm's scale s frozen),
    ranked per layer at each step's last position; None: no ranking. ``units``: (layer,
    neuron) pairs whose activations are recorded. ``edits``: neuron edits (:class:`Edit`)
    applied at every step.
    """
    from . import _run

    arch = architecture(model)
    blocks = resolve(model, arch.layers)
    n_layers = len(blocks)
    mods = [resolve(b, arch.mlp_out) for b in blocks]
    by_layer = {e.layer: e for e in edits}
    plan = [(mods[li], *(_edit_tensors(by_layer.get(li)))) for li in range(n_layers)]
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id
    ids, mask = left_pad(rows, pad)
    unit_layer = torch.tensor([li for li, _ in units], dtype=torch.long)
    unit_neuron = torch.tensor([nn for _, nn in units], dtype=torch.long)
    lens = None
    if ranking == "direct_contribution":
        final, unembed, center, eps = final_norm(model)
        lens = (final, unembed, center, eps, _gain_offset(model))
    saved = _run(model, _trace_generate, (model, ids, mask, max_new_tokens, pad, plan, arch.transposed, ranking,
                                          top_k, unit_layer, unit_neuron, lens), remote, "saved")
    tokens, steps = saved
    tokens = tokens.detach().cpu()[:, ids.shape[1]:]
    tops = [s[0] for s in steps if s[0] is not None]
    acts = [s[2] for s in steps if s[2] is not None]
    return Generated(tokens,
                     torch.stack([t.indices for t in tops], 1).cpu() if tops else None,
                     torch.stack([t.values for t in tops], 1).cpu() if tops else None,
                     torch.stack(acts, 1).detach().cpu().float() if acts else None)


def _edit_tensors(e: Edit | None) -> tuple:
    if e is None:
        return None, None, None, None
    return e.set_neurons, e.set_values, e.noise_neurons, e.noise


def _trace_generate(model, ids, mask, max_new_tokens, pad, plan, transposed, ranking, top_k, unit_layer, unit_neuron,
                    lens, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.generate({"input_ids": ids, "attention_mask": mask}, max_new_tokens=max_new_tokens,
                                         min_new_tokens=0, do_sample=False, num_beams=1, eos_token_id=None,
                                         pad_token_id=pad, remote=remote, backend=backend) as tracer:
        steps = nnsight.save([])
        dirs, norms = [], []  # each layer's output directions (N, d) and their norms, read once for every step
        if ranking is not None:
            for mod, set_idx, set_val, noise_idx, noise in plan:
                dirs.append(neuron_directions(mod.weight.double(), transposed))
                norms.append(dirs[-1].norm(dim=-1))
        for step in tracer.iter[:max_new_tokens]:
            acts = []
            for mod, set_idx, set_val, noise_idx, noise in plan:
                x = mod.input
                if set_idx is not None:
                    x[:, :, set_idx] = set_val.to(x.device, x.dtype)
                acts.append(x[:, -1])
                if noise_idx is not None:  # a_n · ε_n: what column n of the output weight plus ε_n adds
                    mod.output = mod.output + x[:, :, noise_idx] @ noise.to(x.device, x.dtype)
            a = torch.stack(on_device(acts, acts[0]), 1).double()  # (b, L, N); layers may sit on several devices
            top = None
            if ranking == "algorithm_one":
                top = (a.abs() * torch.stack(on_device(norms, a))).topk(top_k, -1)
            elif ranking == "direct_contribution":
                final, unembed, center, eps, gain_offset = lens
                scale = norm_scale(final.input[:, -1], center, eps)  # (b,)
                token = model.output.logits[:, -1].argmax(-1)  # greedy: the token this step generates
                v = unembed_rows(unembed.weight, final.weight, gain_offset, token)  # (b, d)
                if center:
                    v = centred(v)
                proj = []
                for d in dirs:
                    proj.append(v @ d.T.to(v.device))  # (b, N), on the unembedding's device
                top = (a.to(v.device) * torch.stack(proj, 1) / scale.to(v.device)[:, None, None]).topk(top_k, -1)
            rec = a[:, unit_layer, unit_neuron] if len(unit_layer) else None
            steps.append((top, None, rec))
        out = tracer.result
        saved = nnsight.save((out, steps))
    return saved
