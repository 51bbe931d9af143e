"""Traces over the component graph (EAP / EAP-IG edge scores and edge-patched runs).

Nodes, in the order of the score matrices' axes (computation order):
upstream = the input (residual stream entering layer 0), then per layer its heads and its
MLP; downstream = per layer its heads and its MLP, then the logits. An edge u → v carries
u's output into v's input through the residual stream.

The trace bodies are shipped to NDIF, where this package is not installed, so they call only
nnsight, torch and builtins (no helper functions of ours).

Each head needs an input of its own (edges into heads of one layer differ), but all heads of
a layer read one tensor. So in these traces the attention block runs on H copies of its
input, the norm included, and copy h supplies only head h's output to the output projection
(its other heads are discarded). Values are unchanged; the gradient of copy h is the
gradient through head h alone, and an edge-patched run can give copy h its own input.
MLPs and the logits get a private copy of their input the same way (one copy each).
"""
from __future__ import annotations

from typing import Any

import nnsight
import torch

from ..errors import UsageError
from ..sites import architecture, dims, parallel_residual, resolve


def _modules(model: Any) -> tuple[list[tuple], Any, Any, bool]:
    """Per layer (layer, ln_attn, attention, o_proj, ln_mlp, mlp); the final norm; the
    embedding; whether o_proj stores its weight transposed (GPT-2's Conv1D)."""
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    mods = [(layer, resolve(layer, arch.ln_attn), resolve(layer, arch.attn), resolve(layer, arch.o_proj),
             resolve(layer, arch.ln_mlp), resolve(layer, arch.mlp)) for layer in layers]
    conv1d = type(resolve(layers[0], arch.o_proj)._module).__name__ == "Conv1D"
    return mods, resolve(model, arch.final_norm), resolve(model, arch.embed), conv1d


def edge_attributions(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, *, ig_steps: int = 1,
                      remote: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """EAP (``ig_steps`` = 1) or EAP-IG scores of every (upstream, downstream) node pair.

    ``input_ids`` (2p, T): p corrupted rows, then their p clean rows; ``answer_ids`` (2p, 2):
    the clean answer r1 and the corrupted answer r2 per row. The objective is the clean run's
    logit difference M = logit r1 − logit r2 at the last position. Score (j, u, v) =
    Σ_positions (a_u(corrupt) − a_u(clean)) · ∂M/∂(input of v), the first-order change of M if
    edge u → v carried the corrupted value; with m > 1 steps the gradient is the mean over
    token embeddings interpolated from clean to corrupted at α = (k + ½)/m.
    Returns (p, n_up, n_down) float64 for every node pair (invalid pairs, e.g. a later node
    feeding an earlier one, are not masked here) and the (2p, 2) clean logits of the answers.
    """
    from . import _frozen, _run

    mods, final, embed, conv1d = _modules(model)
    d = dims(model)
    p = input_ids.shape[0] // 2
    if ig_steps > 1:  # interpolated rows follow the inputs: step k of pair j is row 2p + k·p + j
        input_ids = torch.cat([input_ids, input_ids[p:].repeat(ig_steps, 1)])
        answer_ids = torch.cat([answer_ids, answer_ids[p:].repeat(ig_steps, 1)])
    alphas = ((torch.arange(ig_steps, dtype=torch.float32) + 0.5) / ig_steps).repeat_interleave(p)[:, None, None]
    if (remote is False or remote == "local") and not model.dispatched:
        model.dispatch()
    with _frozen(model):
        saved = _run(model, _trace_edges, (model, input_ids, answer_ids, mods, final, embed, conv1d, alphas, p,
                                           ig_steps, d["n_heads"], d["head_dim"]), remote, "saved")
    return saved[0].detach().cpu().double(), saved[1].detach().cpu().double()


def _trace_edges(model, input_ids, answer_ids, mods, final, embed, conv1d, alphas, p, steps, n_heads, head_dim,
                 remote=False, backend=None):
    saved = None
    with model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        e = embed.output.detach().requires_grad_(True)  # gradients start here: NDIF weights are frozen
        if steps > 1:
            path = e[p:2 * p].repeat(steps, 1, 1) + alphas.to(e.dtype) * (e[:p] - e[p:2 * p]).repeat(steps, 1, 1)
            e = torch.cat([e[:2 * p], path])
        embed.output = e
        rows = e.shape[0]
        ups = []  # (p, T, k, d) corrupted − clean output of upstream nodes, forward order
        inputs = []  # the private input copies whose gradients are the downstream nodes'
        first = True
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            if first:
                h0 = layer.input
                ups.append((h0[:p] - h0[p:2 * p]).detach().unsqueeze(2))
                first = False
            x = ln_attn.input.repeat(n_heads, 1, 1)
            ln_attn.input = x
            inputs.append(x)
            args, kwargs = attn.inputs  # the mask was built for `rows` rows; attention now runs on H copies
            for key in list(kwargs):
                value = kwargs[key]
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows > 1:
                    kwargs[key] = value.repeat((n_heads,) + (1,) * (value.dim() - 1))
            attn.inputs = (args, kwargs)
            z = o_proj.input
            t = z.shape[1]
            z = torch.diagonal(z.view(n_heads, rows, t, n_heads, head_dim), dim1=0, dim2=3)  # copy h's head h
            z = z.permute(0, 1, 3, 2)
            o_proj.input = z.reshape(rows, t, n_heads * head_dim)
            dz = (z[:p] - z[p:2 * p]).detach()
            w = o_proj.weight  # each head's share of the output projection, without its bias
            if conv1d:
                ups.append(torch.einsum("pthk,hkd->pthd", dz, w.view(n_heads, head_dim, -1)))
            else:
                ups.append(torch.einsum("pthk,dhk->pthd", dz, w.view(-1, n_heads, head_dim)))
            y = ln_mlp.input + 0.0
            ln_mlp.input = y
            inputs.append(y)
            out = mlp.output
            ups.append((out[:p] - out[p:2 * p]).detach().unsqueeze(2))
        f = final.input + 0.0
        final.input = f
        inputs.append(f)
        logits = model.output.logits[:, -1].double()
        chosen = torch.gather(logits, 1, answer_ids)
        graded = slice(p, 2 * p) if steps == 1 else slice(2 * p, None)
        objective = (chosen[graded, 0] - chosen[graded, 1]).sum()
        delta = torch.cat(ups, 2).double()
        parts = nnsight.save([])
        with objective.backward():
            for k in range(len(inputs) - 1, -1, -1):  # gradients in reverse order
                g = inputs[k].grad
                if k % 2 == 0 and k < len(inputs) - 1:  # a layer's head copies: (H·rows, T, d)
                    g = g.view(n_heads, rows, g.shape[1], g.shape[2]).permute(1, 2, 0, 3)
                else:
                    g = g.unsqueeze(2)
                g = g[graded]
                if steps > 1:
                    g = g.view((steps, p) + tuple(g.shape[1:])).mean(0)
                parts.append(torch.einsum("ptud,ptvd->puv", delta, g.double()))
        saved = nnsight.save((torch.cat(parts[::-1], 2), chosen[:2 * p].detach()))
    return saved


def edge_patched_logits(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, removed: torch.Tensor, *,
                        remote: bool | str = False) -> torch.Tensor:
    """Logits of the answers when the edges in ``removed`` carry corrupted values (real patching).

    ``input_ids`` (2p, T): p corrupted rows, then their p clean rows; ``answer_ids`` (2p, K).
    ``removed`` (c, n_up, n_down), 1 where an edge is cut: for each of the c circuits the clean
    rows run again, and each node v reads its input plus Σ_u removed[u, v]·(a_u(corrupt) −
    a_u(this run)), the activations of this run being the circuit's own (Hanna et al.'s
    evaluation). Returns (p + c·p, K) float64: the corrupted rows, then circuit by circuit.
    """
    from . import _run

    mods, final, _, conv1d = _modules(model)
    d = dims(model)
    p = input_ids.shape[0] // 2
    c = removed.shape[0]
    input_ids = torch.cat([input_ids[:p]] + [input_ids[p:]] * c)
    answer_ids = torch.cat([answer_ids[:p]] + [answer_ids[p:]] * c)
    return _run(model, _trace_edge_patched, (model, input_ids, answer_ids, mods, final, conv1d, removed.float(), p, c,
                                             d["n_heads"], d["head_dim"]), remote, "saved").double().cpu()


def _trace_edge_patched(model, input_ids, answer_ids, mods, final, conv1d, removed, p, c, n_heads, head_dim,
                        remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        rows = p + c * p
        ups = []  # (c, p, T, k, d): corrupted − this run, per circuit
        col = 0
        first = True
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            if first:
                h0 = layer.input
                ups.append((h0[:p].unsqueeze(0) - h0[p:].view((c, p) + tuple(h0.shape[1:]))).unsqueeze(3))
                first = False
            x = ln_attn.input
            t = x.shape[1]
            delta = torch.cat(ups, 3)
            corr = torch.einsum("cptud,cuh->hcptd", delta.to(removed.dtype),
                                removed[:, : delta.shape[3], col:col + n_heads]).to(x.dtype)
            corr = torch.cat([torch.zeros_like(corr[:, 0, :]), corr.reshape(n_heads, c * p, t, x.shape[2])], 1)
            ln_attn.input = (x.unsqueeze(0) + corr).reshape(n_heads * rows, t, x.shape[2])
            args, kwargs = attn.inputs  # the mask was built for `rows` rows; attention now runs on H copies
            for key in list(kwargs):
                value = kwargs[key]
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows > 1:
                    kwargs[key] = value.repeat((n_heads,) + (1,) * (value.dim() - 1))
            attn.inputs = (args, kwargs)
            z = o_proj.input
            z = torch.diagonal(z.view(n_heads, rows, t, n_heads, head_dim), dim1=0, dim2=3).permute(0, 1, 3, 2)
            o_proj.input = z.reshape(rows, t, n_heads * head_dim)
            dz = z[:p].unsqueeze(0) - z[p:].view((c, p) + tuple(z.shape[1:]))
            w = o_proj.weight
            if conv1d:
                ups.append(torch.einsum("cpthk,hkd->cpthd", dz, w.view(n_heads, head_dim, -1)))
            else:
                ups.append(torch.einsum("cpthk,dhk->cpthd", dz, w.view(-1, n_heads, head_dim)))
            col += n_heads
            y = ln_mlp.input
            delta = torch.cat(ups, 3)
            corr = torch.einsum("cptud,cu->cptd", delta.to(removed.dtype), removed[:, : delta.shape[3], col])
            ln_mlp.input = y + torch.cat([torch.zeros_like(y[:p]), corr.reshape((c * p,) + tuple(y.shape[1:]))]).to(y.dtype)
            col += 1
            out = mlp.output
            ups.append((out[:p].unsqueeze(0) - out[p:].view((c, p) + tuple(out.shape[1:]))).unsqueeze(3))
        f = final.input
        delta = torch.cat(ups, 3)
        corr = torch.einsum("cptud,cu->cptd", delta.to(removed.dtype), removed[:, : delta.shape[3], col])
        final.input = f + torch.cat([torch.zeros_like(f[:p]), corr.reshape((c * p,) + tuple(f.shape[1:]))]).to(f.dtype)
        logits = model.output.logits[:, -1].double()
        saved = nnsight.save(torch.gather(logits, 1, answer_ids))
    return saved


def valid_edges(n_layers: int, n_heads: int, parallel: bool) -> torch.Tensor:
    """(n_up, n_down) bool: u's output reaches v's input (u computed before v reads)."""
    n_up, n_down = 1 + n_layers * (n_heads + 1), n_layers * (n_heads + 1) + 1
    up_layer = torch.tensor([-1] + [li for li in range(n_layers) for _ in range(n_heads + 1)])
    up_mlp = torch.tensor([False] + [k == n_heads for _ in range(n_layers) for k in range(n_heads + 1)])
    down_layer = torch.tensor([li for li in range(n_layers) for _ in range(n_heads + 1)] + [n_layers])
    down_mlp = torch.tensor([k == n_heads for _ in range(n_layers) for k in range(n_heads + 1)] + [False])
    valid = up_layer[:, None] < down_layer[None, :]
    if not parallel:  # a layer's heads feed its own MLP
        valid |= (up_layer[:, None] == down_layer[None, :]) & ~up_mlp[:, None] & down_mlp[None, :]
    assert valid.shape == (n_up, n_down)
    return valid


def graph_shape(model: Any) -> tuple[int, int, bool]:
    """n_layers, n_heads and whether the residual is parallel, for :func:`valid_edges`."""
    d = dims(model)
    return d["n_layers"], d["n_heads"], parallel_residual(model)


def final_norm(model: Any) -> tuple[Any, Any, bool, float]:
    """The final norm, the unembedding, whether the norm centres (LayerNorm; RMSNorm does not)
    and its epsilon: what a direct logit effect with the norm's scale frozen needs."""
    arch = architecture(model)
    final = resolve(model, arch.final_norm)
    kind = type(final._module).__name__
    if kind.startswith("Gemma") or not (kind == "LayerNorm" or kind.endswith("RMSNorm")):
        raise UsageError(f"direct logit effects know LayerNorm and (non-Gemma) RMSNorm; this model's final norm is {kind}")
    eps = float(getattr(final._module, "eps", getattr(final._module, "variance_epsilon", 1e-5)))
    return final, resolve(model, arch.unembed), kind == "LayerNorm", eps


def head_logit_effects(model: Any, input_ids: torch.Tensor, token_ids: torch.Tensor, *,
                       remote: bool | str = False) -> torch.Tensor:
    """Direct effect of every head's output on the logits of chosen tokens, at every position.

    ``input_ids`` (n, T); ``token_ids`` (n, K): the tokens whose logits are read for row i.
    Returns (n, layers, heads, T, K) float64: W_U[v] · (γ ⊙ N(o_h) / s), where o_h is the head's
    share of the attention output (without bias), s the final norm's scale on this run's
    residual stream (frozen, the usual direct-logit attribution), N centres for LayerNorm and
    is the identity for RMSNorm, and the unembedding rows W_U[v] are centred over the
    vocabulary, so a shift of every logit alike counts as no effect.
    """
    from . import _run

    mods, _, _, conv1d = _modules(model)
    final, unembed, center, eps = final_norm(model)
    d = dims(model)
    saved = _run(model, _trace_head_effects, (model, input_ids, token_ids, mods, final, unembed, conv1d, d["n_heads"],
                                              d["head_dim"], center, eps), remote, "saved")
    return saved.detach().cpu().double()


def _trace_head_effects(model, input_ids, token_ids, mods, final, unembed, conv1d, n_heads, head_dim, center, eps,
                        remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        outs = []
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            z = o_proj.input
            z = z.view(z.shape[0], z.shape[1], n_heads, head_dim)
            w = o_proj.weight
            if conv1d:
                outs.append(torch.einsum("nthk,hkd->nthd", z, w.view(n_heads, head_dim, -1)))
            else:
                outs.append(torch.einsum("nthk,dhk->nthd", z, w.view(-1, n_heads, head_dim)))
        f = final.input.double()
        if center:
            f = f - f.mean(-1, keepdim=True)
        scale = (f.pow(2).mean(-1) + eps).sqrt()  # (n, T)
        u = unembed.weight.double()
        u = u - u.mean(0, keepdim=True)
        rows = u[token_ids] * final.weight.double()  # (n, K, d): γ folded into the unembedding
        o = torch.stack(outs, 1).double()  # (n, L, T, H, d)
        if center:
            o = o - o.mean(-1, keepdim=True)
        o = o / scale[:, None, :, None, None]
        saved = nnsight.save(torch.einsum("nlthd,nkd->nlhtk", o, rows))
    return saved
