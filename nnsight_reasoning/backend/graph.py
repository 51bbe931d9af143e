"""Traces over the component graph (EAP / EAP-IG edge scores and edge-patched runs).

Nodes, in the order of the score matrices' axes (computation order):
upstream = the input (residual stream entering layer 0), then per layer its heads and its
MLP; downstream = per layer its heads and its MLP, then the logits. An edge u → v carries
u's output into v's input through the residual stream.

The trace bodies are shipped to NDIF, where this package is not installed, so they call only
nnsight, torch, builtins and the helpers of :mod:`.trace_ops` (registered with nnsight, so
they travel with each request).

Each head needs an input of its own (edges into heads of one layer differ), but all heads of
a layer read one tensor. So in these traces the attention block runs on H copies of its
input, the norm included, and copy h supplies only head h's output to the output projection
(its other heads are discarded). Values are unchanged; the gradient of copy h is the
gradient through head h alone, and an edge-patched run can give copy h its own input.
MLPs and the logits get a private copy of their input the same way (one copy each).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import nnsight
import torch

from ..nnsight_shim import reads_weights
from ..sites import architecture, dims, final_norm_spec, logit_softcap, parallel_residual, require, resolve
from . import packed
from .trace_ops import (on_device, answer_logits, answer_metric, batch_kwargs, batch_rows, best_rank, centred,
                        edge_correction, edge_deltas, head_columns, head_outputs, interpolate, join_columns,
                        last_position, mix_group, norm_gain, norm_scale, own_heads, packed_inputs, packed_mask,
                        site_values, splice_qkv, split_heads, unembed_rows, value_heads)


def _modules(model: Any, feature: str = "edges") -> tuple[list[tuple], Any, Any, bool]:
    """Per layer (layer, ln_attn, attention, o_proj, ln_mlp, mlp); the final norm; the
    embedding; whether o_proj stores its weight transposed (GPT-2's Conv1D). Refuses a
    model whose architecture cannot do ``feature`` (``sites.Architecture.unsupported``)."""
    arch = require(model, feature)
    layers = resolve(model, arch.layers)
    mods = [(layer, resolve(layer, arch.ln_attn), resolve(layer, arch.attn), resolve(layer, arch.o_proj),
             resolve(layer, arch.ln_mlp), resolve(layer, arch.mlp)) for layer in layers]
    return mods, resolve(model, arch.final_norm), resolve(model, arch.embed), arch.transposed


@reads_weights
def edge_attributions(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor,
                      weights: torch.Tensor | None = None, *, probs: bool = False, ig_steps: int = 1,
                      ig_points: str = "midpoint", replace: torch.Tensor | None = None, qkv: bool = False,
                      ig_variant: str = "inputs", remote: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """EAP (``ig_steps`` = 1) or EAP-IG scores of every (upstream, downstream) node pair.

    ``input_ids`` (2p, T): p corrupted rows, then their p clean rows; ``answer_ids`` (2p, K)
    and ``weights`` (2p, K) define each row's metric at the last position, M = Σ_k w_k·logit_k
    (``probs``: Σ_k w_k·P_k, P the softmax over the vocabulary). Default weights (+1, −1) for
    K = 2: the logit difference of the clean answer r1 and the corrupted answer r2. The
    objective is the clean runs' M. Score (j, u, v) =
    Σ_positions (a_u(corrupt) − a_u(clean)) · ∂M/∂(input of v), the first-order change of M if
    edge u → v carried the corrupted value; with m > 1 steps the gradient is the mean over
    token embeddings interpolated from clean to corrupted at α = (k + ½)/m (``ig_points``
    "midpoint"), or at α = 1 − k/m, k = 0 … m − 1, the points hannamw/EAP-IG uses (k/m of the
    way from the corrupted input, ``"eap_ig"``), or at α = 0 and 1 for m = 2 (the clean and
    the corrupted input, its ``clean-corrupted`` method, ``"clean_corrupted"``).
    ``replace`` (T or 1, n_up, d): every upstream node's value under zero or mean ablation
    (:func:`node_output_sums`); a_u(corrupt) is then replace[:, u] and the corrupted rows are
    not read (EAP only: ``ig_steps`` 1, as hannamw/EAP-IG's ``get_scores_eap``).
    ``ig_variant="activations"`` (hannamw/EAP-IG's ``get_scores_ig_activations``): instead of the
    token embeddings, one node group at a time (the input, a layer's attention output, a layer's
    MLP output; G = 1 + 2L groups) takes the interpolated value clean + α·(corrupt − clean) on
    the clean prompt, and the gradient is the mean over all G·m runs (each run's gradient
    counts for every edge, as there); with ``"eap_ig"`` points α = 1 − k/m for k = 1 … m.
    ``qkv``: each head has three downstream inputs, its query's, key's and value's (EAP-IG's
    graph; downstream order per layer: the heads' q, their k, their v, then the MLP, as
    :func:`valid_edges`), the attention running on three copies per head
    (:func:`.trace_ops.splice_qkv`); their scores sum to the head's whole-input score.
    Returns (p, n_up, n_down) float64 for every node pair (invalid pairs, e.g. a later node
    feeding an earlier one, are not masked here) and M of the 2p unpatched rows (2p,).
    """
    from . import _frozen, _run

    mods, final, embed, conv1d = _modules(model)
    d = dims(model)
    p = input_ids.shape[0] // 2
    weights = default_weights(answer_ids) if weights is None else weights.double()
    if replace is not None and ig_steps > 1:
        raise ValueError("zero and mean ablation score edges with EAP (ig_steps=1)")
    if ig_variant not in IG_VARIANTS:
        raise ValueError(f"ig_variant must be one of {', '.join(IG_VARIANTS)} (got {ig_variant!r})")
    groups = 1 + 2 * d["n_layers"] if ig_variant == "activations" and ig_steps > 1 else 0
    blocks = ig_steps * max(groups, 1) if ig_steps > 1 else 1
    if ig_steps > 1:  # interpolated rows follow the inputs: block b of pair j is row 2p + b·p + j
        input_ids = torch.cat([input_ids, input_ids[p:].repeat(blocks, 1)])
        answer_ids = torch.cat([answer_ids, answer_ids[p:].repeat(blocks, 1)])
        weights = torch.cat([weights, weights[p:].repeat(blocks, 1)])
    alphas = ig_alphas(ig_steps, ig_points, ig_variant).repeat_interleave(p)[:, None, None]
    if (remote is False or remote == "local") and not model.dispatched:
        model.dispatch()
    split = _qkv_projections(model, mods) if qkv else None
    with _frozen(model):
        saved = _run(model, _trace_edges, (model, input_ids, answer_ids, weights, probs, mods, final, embed, conv1d,
                                           alphas, p, ig_steps, d["n_heads"], d["head_dim"], replace, split,
                                           architecture(model).qkv_layout, groups), remote, "saved")
    return saved[0].detach().cpu().double(), saved[1].detach().cpu().double()


def _qkv_projections(model: Any, mods: list[tuple]) -> list[list[Any]]:
    """Per layer, the projections whose outputs :func:`.trace_ops.splice_qkv` splices: k_proj
    and v_proj ("separate" layout), or the fused qkv projection."""
    arch = architecture(model)
    paths = (arch.k_proj, arch.v_proj) if arch.qkv_layout == "separate" else (arch.v_proj,)
    return [[resolve(layer, q) for q in paths] for layer, *_ in mods]


IG_POINTS = ("midpoint", "eap_ig", "clean_corrupted")
IG_VARIANTS = ("inputs", "activations")


def ig_alphas(steps: int, points: str = "midpoint", variant: str = "inputs") -> torch.Tensor:
    """(steps,) the integration points α (0 = clean, 1 = corrupted) of EAP-IG's path: of the
    input embeddings, or (``variant="activations"``) of a node group's output."""
    k = torch.arange(steps, dtype=torch.float32)
    if points == "midpoint":
        return (k + 0.5) / steps
    if points == "eap_ig":  # get_scores_eap_ig: k = 0 … m − 1 from the corrupted end; _ig_activations: k = 1 … m
        return 1 - (k + 1) / steps if variant == "activations" else 1 - k / steps
    if points == "clean_corrupted":
        if steps != 2:
            raise ValueError("clean_corrupted integrates over 2 points (the clean and the corrupted input)")
        return torch.tensor([0.0, 1.0])
    raise ValueError(f"ig_points must be one of {', '.join(IG_POINTS)} (got {points!r})")


def default_weights(answer_ids: torch.Tensor) -> torch.Tensor:
    """(n, 2) weights (+1, −1): the logit difference of the two answers of each row."""
    if answer_ids.shape[1] != 2:
        raise ValueError(f"answer_ids has {answer_ids.shape[1]} columns: give weights for them")
    return torch.tensor([[1.0, -1.0]], dtype=torch.float64).expand(answer_ids.shape[0], 2)


def _trace_edges(model, input_ids, answer_ids, weights, probs, mods, final, embed, conv1d, alphas, p, steps, n_heads,
                 head_dim, replace=None, split=None, layout=None, ig_groups=0, remote=False, backend=None):
    saved = None
    with model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        # gradients start at the embeddings: NDIF weights are frozen
        e = embed.output.detach().requires_grad_(True)
        if ig_groups == 0:  # EAP-IG on the inputs: the interpolated rows' embeddings
            e = interpolate(e, p, steps, alphas)
        embed.output = e
        rows = e.shape[0]
        groups = 1 if split is None else 3  # with q/k/v inputs: the queries', keys' and values' copies
        copies = torch.arange(rows).repeat(groups * n_heads)  # row r of head copy h (of each group) is input row r
        ups = []  # (p, T, k, d) corrupted − clean output of upstream nodes, forward order
        inputs = []  # the private input copies whose gradients are the downstream nodes'
        first = True
        node = 0  # the first upstream node of the layer (replace's column)
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            if first:
                h0 = layer.input
                if replace is None:
                    ups.append((h0[:p] - h0[p:2 * p]).detach().unsqueeze(2))
                else:
                    ups.append((replace[:, 0:1].to(h0.device, h0.dtype) - h0[p:2 * p].unsqueeze(2)).detach())
                if ig_groups:  # group 0, the input, interpolated in its rows
                    layer.input = mix_group(h0, p, steps, 0, alphas)
                node = 1
                first = False
            x = ln_attn.input.repeat(groups * n_heads, 1, 1)
            ln_attn.input = x
            inputs.append(x)
            args, kwargs = attn.inputs  # the mask was built for `rows` rows; attention now runs on H copies
            attn.inputs = (args[:1] + batch_rows(args[1:], rows, copies), batch_kwargs(kwargs, rows, copies))
            if split is not None:  # group 0 attends with group 1's keys and group 2's values
                parts = "kv" if layout == "separate" else "f"
                for proj, part in zip(split[len(inputs) // 2], parts):
                    proj.output = splice_qkv(proj.output, layout, part, n_heads)
            z = own_heads(o_proj.input[: n_heads * rows], n_heads, rows, head_dim)  # copy h's head h: (rows, T, H, k)
            o_proj.input = z.reshape(rows, z.shape[1], n_heads * head_dim)
            if replace is None:
                dz = (z[:p] - z[p:2 * p]).detach()
                ups.append(head_outputs(dz, o_proj.weight, n_heads, head_dim, conv1d))  # each head's share, no bias
            else:
                own = head_outputs(z[p:2 * p], o_proj.weight, n_heads, head_dim, conv1d)
                ups.append((replace[:, node:node + n_heads].to(own.device, own.dtype) - own).detach())
            node += n_heads
            if ig_groups:  # group 1 + 2l: the layer's attention output
                o_proj.output = mix_group(o_proj.output, p, steps, len(inputs), alphas)
            y = ln_mlp.input + 0.0
            ln_mlp.input = y
            inputs.append(y)
            out = mlp.output
            if replace is None:
                ups.append((out[:p] - out[p:2 * p]).detach().unsqueeze(2))
            else:
                ups.append((replace[:, node:node + 1].to(out.device, out.dtype) - out[p:2 * p].unsqueeze(2)).detach())
            if ig_groups:  # group 2 + 2l: the layer's MLP output
                mlp.output = mix_group(out, p, steps, len(inputs), alphas)
            node += 1
        f = final.input + 0.0
        final.input = f
        inputs.append(f)
        chosen = answer_metric(model.output.logits[:, -1], answer_ids, weights, probs)
        graded = slice(p, 2 * p) if steps == 1 else slice(2 * p, None)
        objective = chosen[graded].sum()
        delta = torch.cat(on_device(ups, ups[0]), 2).double()  # each layer's on its device (a split model)
        parts = nnsight.save([])
        with objective.backward():
            for k in range(len(inputs) - 1, -1, -1):  # gradients in reverse order
                g = inputs[k].grad
                if k % 2 == 0 and k < len(inputs) - 1:  # a layer's head copies: (G·H·rows, T, d), G groups
                    g = g.view(groups * n_heads, rows, g.shape[1], g.shape[2]).permute(1, 2, 0, 3)
                else:
                    g = g.unsqueeze(2)
                g = g[graded]
                if steps > 1:  # the mean over the interpolated blocks (steps, or groups × steps)
                    g = g.view((-1, p) + tuple(g.shape[1:])).mean(0)
                parts.append(torch.einsum("ptud,ptvd->puv", delta, g.double().to(delta.device)))
        saved = nnsight.save((torch.cat(parts[::-1], 2), chosen[:2 * p].detach()))
    return saved


@reads_weights
def edge_patched_logits(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, removed: torch.Tensor, *,
                        lse: bool = False, replace: torch.Tensor | None = None,
                        removed_qkv: torch.Tensor | None = None, last_only: bool = False,
                        attention_layers: Sequence[int] | None = None,
                        remote: bool | str = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits of the answers when the edges in ``removed`` carry corrupted values (real patching);
    with ``lse`` a last column holds each row's logsumexp over the vocabulary (probabilities of
    the answers are then exp(logit − lse)).

    ``input_ids`` (2p, T): p corrupted rows, then their p clean rows; ``answer_ids`` (2p, K).
    ``removed`` (c, n_up, n_down), 1 where an edge is cut: for each of the c circuits the clean
    rows run again, and each node v reads its input plus Σ_u removed[u, v]·(a_u(corrupt) −
    a_u(this run)), the activations of this run being the circuit's own (Hanna et al.'s
    evaluation); with ``replace`` (T or 1, n_up, d) the cut edges carry replace[:, u] instead of
    a_u(corrupt) (zero or mean ablation; engine v1). ``removed_qkv`` (c, n_up, n_layers,
    n_heads, 3), 1 where the edge u → (layer, head) is cut at the head's query (0), key (1) or
    value (2) input only (EAP-IG's q/k/v edges; engine v1): a layer with such a cut runs its
    attention on three copies of its input per head, one for each of q, k and v
    (:func:`.trace_ops.splice_qkv`). ``last_only``: a cut edge carries its corrupted value at
    the last position only (the other positions keep this run's; engine v1). Returns
    (p + c·p, K [+ 1]) float64: the corrupted rows, then circuit by circuit; with
    ``attention_layers`` (engine v1, eager attention) also the attention probabilities of
    every head of those layers from the last query position, (p + c·p, len(layers), H, T).

    Engine v2 (:func:`.packed.plan_edges`) computes a circuit's run only from the first token
    where the pair's prompts differ and from the layer of its first cut edge up; engine v1 runs
    every circuit's clean rows whole. v1 runs where v2 cannot (:func:`.packed.usable`), where its
    layout would cost more (no shared prefix and few circuits per row) and under
    ``backend.engine("v1")``.
    """
    from . import _run, engine_in_use

    mods, final, _, conv1d = _modules(model)
    d = dims(model)
    p = input_ids.shape[0] // 2
    c = removed.shape[0]
    arch = architecture(model)
    plan = None
    if attention_layers is not None:
        from . import require_eager

        require_eager(model, "attention patterns")
    if (replace is None and removed_qkv is None and not last_only and attention_layers is None
            and engine_in_use() == "v2" and packed.usable(model, arch, range(c))):
        plan = packed.plan_edges(input_ids, removed, d["n_layers"], d["n_heads"], d["d_model"])
        if plan.cost >= packed.edge_cost_v1(p, c, input_ids.shape[1], d["n_layers"], d["d_model"]):
            plan = None  # no shared prefix and few circuits per row: v1's whole rows are cheaper
    if plan is not None:
        answer_ids = torch.cat([answer_ids[:p]] + [answer_ids[p:]] * c)
        return _run(model, _trace_edge_packed, (model, plan.ids, plan.pos, plan.seq, plan.pre, plan.lim, plan.mask_pos,
                                                plan.t, plan.w, plan.joins, plan.n_at, mods, final,
                                                resolve(model, arch.unembed), conv1d, plan.removed, plan.out_rows,
                                                plan.out_cols, answer_ids, lse, arch.mask_arg, d["n_heads"],
                                                d["head_dim"]),
                    remote, "saved").double().cpu()
    input_ids = torch.cat([input_ids[:p]] + [input_ids[p:]] * c)
    answer_ids = torch.cat([answer_ids[:p]] + [answer_ids[p:]] * c)
    qkv = None
    if removed_qkv is not None:  # per layer: None, or (cuts (c, n_up, H, 3), the projections to splice)
        qkv = []
        for li, (layer, *_) in enumerate(mods):
            cut = removed_qkv[:, :, li].float()
            paths = (arch.k_proj, arch.v_proj) if arch.qkv_layout == "separate" else (arch.v_proj,)
            qkv.append((cut, [resolve(layer, q) for q in paths]) if bool(cut.any()) else None)
    watch = None if attention_layers is None else [li in set(attention_layers) for li in range(len(mods))]
    saved = _run(model, _trace_edge_patched, (model, input_ids, answer_ids, lse, mods, final, conv1d, removed.float(), p,
                                              c, d["n_heads"], d["head_dim"], replace, qkv, arch.qkv_layout, last_only,
                                              watch), remote, "saved")
    if watch is None:
        return saved.double().cpu()
    return saved[0].double().cpu(), saved[1].float().cpu()


def _trace_edge_packed(model, ids, pos, seq, pre, lim, mask_pos, t, w, joins, n_at, mods, final, unembed, conv1d,
                       removed, out_rows, out_cols, answer_ids, lse, mask_arg, n_heads, head_dim, remote=False,
                       backend=None):
    saved = None
    full = ids.shape[1]
    rows = ids.shape[0]
    copies = torch.arange(rows).repeat(n_heads)  # row r of head copy h is row r
    with torch.no_grad(), model.trace(ids, position_ids=pos, remote=remote, backend=backend, logits_to_keep=0,
                                      use_cache=False):
        mask = None
        ups = []  # per upstream group: (first node, own deltas, base deltas, slots then), trace_ops.edge_deltas
        col = 0
        li = 0
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            n = n_at[li]
            args, kwargs = layer.inputs
            hidden = args[0]
            if mask is None:  # the first layer's input: every column's embedding; the two prompts' are used
                mask = packed_mask(seq, pre, lim, mask_pos, hidden)
                hidden = hidden[:, :2 * t]
            if joins[li] is not None:  # slots whose first cut edge enters this layer join with clean values
                hidden = join_columns(hidden, joins[li])
            width = 2 * t + n * w
            layer.inputs = packed_inputs(hidden, args, kwargs, full, width, mask, mask_arg)
            if li == 0:
                ups.append((0,) + edge_deltas(hidden.unsqueeze(2), t, w, n) + (n,))
            x = ln_attn.input
            x = x.unsqueeze(0).repeat(n_heads, 1, 1, 1)  # one copy per head: head h reads copy h
            if n:
                x[:, :, 2 * t:] += edge_correction(ups, removed, slice(col, col + n_heads), n).to(x.device, x.dtype)
            ln_attn.input = x.reshape(n_heads * rows, width, x.shape[3])
            args, kwargs = attn.inputs  # the mask was built for `rows` rows; attention now runs on H copies
            attn.inputs = (args[:1] + batch_rows(args[1:], rows, copies), batch_kwargs(kwargs, rows, copies))
            z = own_heads(o_proj.input, n_heads, rows, head_dim)
            o_proj.input = z.reshape(rows, width, n_heads * head_dim)
            own, base = edge_deltas(z, t, w, n)
            ups.append((1 + li * (n_heads + 1), head_outputs(own, o_proj.weight, n_heads, head_dim, conv1d),
                        head_outputs(base, o_proj.weight, n_heads, head_dim, conv1d), n))
            col += n_heads
            if n:  # out of place: in a parallel-residual layer this input is the residual stream
                y = ln_mlp.input
                corr = edge_correction(ups, removed, slice(col, col + 1), n)[0].to(y.device, y.dtype)
                ln_mlp.input = torch.cat([y[:, :2 * t], y[:, 2 * t:] + corr], 1)
            col += 1
            out = mlp.output
            ups.append((1 + li * (n_heads + 1) + n_heads,) + edge_deltas(out.unsqueeze(2), t, w, n) + (n,))
            li += 1
        n = n_at[li]
        if joins[li] is not None:  # slots cutting only edges into the logits join after the last layer
            out = layer.output
            x = join_columns(out[0] if isinstance(out, tuple) else out, joins[li])
            layer.output = (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
        if n:
            f = final.input
            corr = edge_correction(ups, removed, slice(col, col + 1), n)[0].to(f.device, f.dtype)
            final.input = torch.cat([f[:, :2 * t], f[:, 2 * t:] + corr], 1)
        # the unembedding acts per column: it gets each output row's last column only
        args, kwargs = unembed.inputs
        unembed.inputs = ((args[0][out_rows, out_cols][None],) + tuple(args[1:]), kwargs)
        saved = nnsight.save(answer_logits(model.output.logits[0], answer_ids, lse))
    return saved


def _trace_edge_patched(model, input_ids, answer_ids, lse, mods, final, conv1d, removed, p, c, n_heads, head_dim,
                        replace=None, qkv=None, layout=None, last_only=False, watch=None, remote=False,
                        backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        rows = p + c * p
        probs = nnsight.save([])  # per watched layer: (rows, H, T) from the last query
        ups = []  # (c, p, T, k, d): corrupted (or replace) − this run, per circuit
        col = 0
        li = 0
        first = True
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            if first:
                h0 = layer.input
                src = h0[:p].unsqueeze(0) if replace is None else replace[:, 0].to(h0.device, h0.dtype)
                ups.append((src - h0[p:].view((c, p) + tuple(h0.shape[1:]))).unsqueeze(3))
                first = False
            split = qkv[li] if qkv is not None else None  # (cuts (c, n_up, H, 3), projections) or None
            x = ln_attn.input
            t = x.shape[1]
            delta = last_position(torch.cat(on_device(ups, x), 3), last_only)
            corr = torch.einsum("cptud,cuh->hcptd", delta.to(removed.dtype),
                                removed[:, : delta.shape[3], col:col + n_heads].to(x.device)).to(x.dtype)
            corr = torch.cat([torch.zeros_like(corr[:, 0, :]), corr.reshape(n_heads, c * p, t, x.shape[2])], 1)
            x = x.unsqueeze(0) + corr  # (H, rows, T, d)
            groups = 1
            if split is not None:  # three groups of H copies: the queries', the keys' and the values' inputs
                cut = split[0]
                own = torch.einsum("cptud,cuhg->ghcptd", delta.to(cut.dtype),
                                   cut[:, : delta.shape[3]].to(x.device)).to(x.dtype)
                own = torch.cat([torch.zeros_like(own[:, :, 0]), own.reshape(3, n_heads, c * p, t, x.shape[-1])], 2)
                x = x.unsqueeze(0) + own
                groups = 3
            ln_attn.input = x.reshape(groups * n_heads * rows, t, x.shape[-1])
            args, kwargs = attn.inputs  # the mask was built for `rows` rows; attention now runs on H copies
            copies = torch.arange(rows).repeat(groups * n_heads)  # row r of copy h (of each group) is input row r
            attn.inputs = (args[:1] + batch_rows(args[1:], rows, copies), batch_kwargs(kwargs, rows, copies))
            if split is not None:
                parts = "kv" if layout == "separate" else "f"
                for proj, part in zip(split[1], parts):  # forward order: k_proj then v_proj
                    proj.output = splice_qkv(proj.output, layout, part, n_heads)
                z = own_heads(o_proj.input[: n_heads * rows], n_heads, rows, head_dim)  # group 0 holds the spliced heads
            else:
                z = own_heads(o_proj.input, n_heads, rows, head_dim)
            o_proj.input = z.reshape(rows, t, n_heads * head_dim)
            if watch is not None and watch[li]:  # head h's pattern is copy h's (group 0's where split)
                w = attn.output[1][: n_heads * rows, :, -1]  # (H·rows, H, T)
                w = w.view(n_heads, rows, n_heads, w.shape[-1])
                probs.append(torch.diagonal(w, dim1=0, dim2=2).permute(0, 2, 1))
            if replace is None:
                dz = z[:p].unsqueeze(0) - z[p:].view((c, p) + tuple(z.shape[1:]))
                ups.append(head_outputs(dz, o_proj.weight, n_heads, head_dim, conv1d))
            else:
                own = head_outputs(z[p:].view((c, p) + tuple(z.shape[1:])), o_proj.weight, n_heads, head_dim, conv1d)
                ups.append(replace[:, 1 + col:1 + col + n_heads].to(own.device, own.dtype) - own)  # upstream 1 + col: head 0
            col += n_heads
            y = ln_mlp.input
            delta = last_position(torch.cat(on_device(ups, y), 3), last_only)
            corr = torch.einsum("cptud,cu->cptd", delta.to(removed.dtype), removed[:, : delta.shape[3], col].to(y.device))
            ln_mlp.input = y + torch.cat([torch.zeros_like(y[:p]), corr.reshape((c * p,) + tuple(y.shape[1:]))]).to(y.dtype)
            col += 1
            out = mlp.output
            src = out[:p].unsqueeze(0) if replace is None else replace[:, col].to(out.device, out.dtype)  # upstream col: this MLP
            ups.append((src - out[p:].view((c, p) + tuple(out.shape[1:]))).unsqueeze(3))
            li += 1
        f = final.input
        delta = last_position(torch.cat(on_device(ups, f), 3), last_only)
        corr = torch.einsum("cptud,cu->cptd", delta.to(removed.dtype), removed[:, : delta.shape[3], col].to(f.device))
        final.input = f + torch.cat([torch.zeros_like(f[:p]), corr.reshape((c * p,) + tuple(f.shape[1:]))]).to(f.dtype)
        logits = answer_logits(model.output.logits[:, -1], answer_ids, lse)
        if watch is None:
            saved = nnsight.save(logits)
        else:
            saved = nnsight.save((logits, torch.stack(on_device(probs, logits), 1)))
    return saved


@reads_weights
def node_output_sums(model: Any, input_ids: torch.Tensor, *, remote: bool | str = False) -> torch.Tensor:
    """(T, n_up, d) float64: every upstream node's output summed over the rows of ``input_ids``
    (n, T), per position: the input (the residual stream entering layer 0), each head's share
    of its layer's output projection (no bias) and each MLP's output, in upstream order. The
    means of zero/mean ablation (hannamw/EAP-IG's ``compute_mean_activations``) divide it by n
    (and average it over positions unless per position)."""
    from . import _run

    mods, _, _, conv1d = _modules(model)
    d = dims(model)
    return _run(model, _trace_node_sums, (model, input_ids, mods, conv1d, d["n_heads"], d["head_dim"]), remote,
                "saved").double().cpu()


def _trace_node_sums(model, input_ids, mods, conv1d, n_heads, head_dim, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        parts = nnsight.save([])
        first = True
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            if first:
                parts.append(layer.input.double().sum(0).unsqueeze(1))
                first = False
            z = split_heads(o_proj.input, n_heads, head_dim)
            parts.append(head_outputs(z.double(), o_proj.weight.double(), n_heads, head_dim, conv1d).sum(0))
            parts.append(mlp.output.double().sum(0).unsqueeze(1))
        saved = nnsight.save(torch.cat(on_device(parts, parts[0]), 1))
    return saved


def head_input_sums(model: Any, input_ids: torch.Tensor, *, remote: bool | str = False) -> torch.Tensor:
    """(L, H · head_dim) float64: each layer's output-projection input (every head's output before
    the projection, TransformerLens' ``z``) summed over the rows of ``input_ids`` (n, T) and their
    positions; divided by n · T, the means of :func:`self_repair_logits`' mean ablation."""
    from . import _run

    mods, _, _, _ = _modules(model, "logit_effects")
    return _run(model, _trace_head_input_sums, (model, input_ids, mods), remote, "saved").double().cpu()


def _trace_head_input_sums(model, input_ids, mods, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        parts = nnsight.save([])
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            parts.append(o_proj.input.double().sum((0, 1)))
        saved = nnsight.save(torch.stack(on_device(parts, parts[0])))
    return saved


@reads_weights
def ov_logits(model: Any, token_ids: Sequence[int], *, remote: bool | str = False) -> torch.Tensor:
    """(L, H, N, N) float64: each head's static OV circuit between ``token_ids`` (N), as Tigges et
    al.'s successor-head score reads it (after Gould et al. 2023): row i is token i's embedding
    passed through layer 0's MLP (the module alone, no norm), then the head's value and output
    weights (no biases), then the unembedding (no final norm), at column j's token. From the
    weights of a local model; no forward pass, so not on NDIF."""
    from . import require_local
    from ..nnsight_shim import torch_module

    require_local(remote, "the static OV score")
    require(model, "logit_effects")
    if not model.dispatched:  # the weights, not a trace: load them
        model.dispatch()
    arch = architecture(model)
    d = dims(model)
    root = torch_module(model)
    n_heads, hd = d["n_heads"], d["head_dim"]
    idx = torch.as_tensor(list(token_ids))
    layers = root.get_submodule(arch.layers)
    with torch.no_grad():
        embed = root.get_submodule(arch.embed).weight
        emb = embed[idx.to(embed.device)]
        x = layers[0].get_submodule(arch.mlp)(emb[None])[0].double().cpu()  # (N, d), in the model's dtype
        unembed = root.get_submodule(arch.unembed).weight  # not necessarily on the embedding's device
        w_u = unembed[idx.to(unembed.device)].double().cpu()  # (N, d)
        out = []
        for layer in layers:
            w_v = _value_weights(layer.get_submodule(arch.v_proj).weight.double().cpu(), arch.qkv_layout, n_heads, hd,
                                 d["d_model"])  # (H, hd, d)
            w_o = layer.get_submodule(arch.o_proj).weight.double().cpu()
            w_o = w_o.view(n_heads, hd, -1).transpose(1, 2) if arch.transposed else w_o.view(-1, n_heads, hd).transpose(0, 1)
            ov = torch.einsum("nd,hkd,hek->hne", x, w_v, w_o)  # (H, N, d): value then output
            out.append(ov @ w_u.T)
    return torch.stack(out)


@dataclass(frozen=True)
class Readout:
    """A local model's weights from the heads' outputs to the logits, float64 on the CPU: each
    head's output weights ``w_o`` (L, H, head_dim, d), the final norm (``center``: LayerNorm,
    ``eps``, gain ``gamma`` (d,) with Gemma's offset, ``beta`` (d,), zeros where it has none), the
    unembedding ``w_u`` (V, d) and its bias ``b_u`` (V,)."""

    w_o: torch.Tensor
    center: bool
    eps: float
    gamma: torch.Tensor
    beta: torch.Tensor
    w_u: torch.Tensor
    b_u: torch.Tensor

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(...,) the final norm's scale on residual streams ``x`` (..., d)."""
        return norm_scale(x, self.center, self.eps)

    def logits(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """(..., V) logits of residual streams ``x`` (..., d) through the final norm with its scale
        frozen at ``scale`` (1: the norm's affine map alone, as folded weights apply it)."""
        if self.center:
            x = centred(x)
        s = scale.unsqueeze(-1) if isinstance(scale, torch.Tensor) else scale
        return (x / s * self.gamma + self.beta) @ self.w_u.T + self.b_u


@reads_weights
def readout(model: Any) -> Readout:
    """The :class:`Readout` of a local model (its weights are read, so not on NDIF)."""
    from ..nnsight_shim import torch_module

    final, _, center, eps = final_norm(model)
    arch = architecture(model)
    d = dims(model)
    if not model.dispatched:
        model.dispatch()
    root = torch_module(model)
    n_heads, hd = d["n_heads"], d["head_dim"]
    w_o = []
    for layer in root.get_submodule(arch.layers):
        w = layer.get_submodule(arch.o_proj).weight.detach().double().cpu()
        w_o.append(w.view(n_heads, hd, -1) if arch.transposed else w.view(-1, n_heads, hd).permute(1, 2, 0))
    norm, unembed = root.get_submodule(arch.final_norm), root.get_submodule(arch.unembed)
    gamma = norm_gain(norm.weight.detach().cpu(), _gain_offset(model))
    beta = norm.bias.detach().double().cpu() if getattr(norm, "bias", None) is not None else torch.zeros_like(gamma)
    w_u = unembed.weight.detach().double().cpu()
    b_u = (unembed.bias.detach().double().cpu() if getattr(unembed, "bias", None) is not None
           else torch.zeros(w_u.shape[0], dtype=torch.float64))
    return Readout(torch.stack(w_o), center, eps, gamma, beta, w_u, b_u)


@reads_weights
def copy_top_tokens(model: Any, input_ids: torch.Tensor, positions: torch.Tensor, k: int = 5, *,
                    remote: bool | str = False) -> torch.Tensor:
    """(L, H, n, m, k) int64: for every head, the ``k`` tokens its OV circuit promotes most from
    the residual stream after layer 0 at ``positions`` (n, m) of ``input_ids`` (n, T), as
    circuits-over-time's name-mover copy score reads them (``compute_copy_score``, on
    TransformerLens weights loaded with ``fold_ln``, ``center_writing_weights`` and, by default,
    ``fold_value_biases``): the vector x goes through the head's norm gain without its scale or
    bias (γ ⊙ N(x), N centring for LayerNorm), its value weights (no bias: folding moves the
    value bias, the norm's bias with it, into the output bias, which the score leaves out), its
    output weights, then the final norm without its scale (its bias kept: folded into the
    unembedding's) and the unembedding with its bias. The residual stream comes from a forward
    pass; the rest from the weights of a local model (so not on NDIF)."""
    from . import _run, require_local
    from ..nnsight_shim import torch_module

    require_local(remote, "the copy score")
    _, _, center, _ = final_norm(model)
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    rows = torch.arange(input_ids.shape[0])[:, None].expand_as(positions)
    x = _run(model, _trace_layer_output, (model, input_ids, layers[0], rows, positions), remote, "saved")
    x = x.detach().double().cpu().reshape(-1, x.shape[-1])  # (n·m, d)
    d = dims(model)
    n_heads, hd = d["n_heads"], d["head_dim"]
    offset = _gain_offset(model)
    weights = readout(model)
    root = torch_module(model)
    out = []
    with torch.no_grad():
        for li in range(d["n_layers"]):
            layer = root.get_submodule(arch.layers)[li]
            norm = layer.get_submodule(arch.ln_attn)  # applied without its scale, as folded weights apply it
            xn = (x - x.mean(-1, keepdim=True) if center else x) * (norm.weight.double().cpu() + offset)
            proj = layer.get_submodule(arch.v_proj)
            w_v = _value_weights(proj.weight.double().cpu(), arch.qkv_layout, n_heads, hd, d["d_model"])
            tops = []
            for h in range(n_heads):  # one head at a time: (n·m, V) logits each
                o = (xn @ w_v[h].T) @ weights.w_o[li, h]
                tops.append(weights.logits(o).topk(k, -1).indices)
            out.append(torch.stack(tops))
    return torch.stack(out).view(d["n_layers"], n_heads, positions.shape[0], positions.shape[1], k)


@dataclass(frozen=True)
class HeadInternals:
    """One clean run's internals, float64 on the CPU: ``resid_pre`` (n, L, T, d), the residual
    stream entering each layer; ``pattern`` (n, L, H, T, T), attention probabilities (query, key);
    ``value`` (n, L, T, H, k), each head's value vectors (bias included); ``z`` (n, L, T, H, k),
    each head's attention output (the output projection's input); ``final_in`` (n, T, d), the
    final norm's input."""

    resid_pre: torch.Tensor
    pattern: torch.Tensor
    value: torch.Tensor
    z: torch.Tensor
    final_in: torch.Tensor

    def row(self, i: int) -> "HeadInternals":
        """Sequence ``i`` alone (its leading dim dropped)."""
        return HeadInternals(*(getattr(self, f)[i] for f in self.__dataclass_fields__))


@reads_weights
def head_internals(model: Any, input_ids: torch.Tensor, *, remote: bool | str = False) -> HeadInternals:
    """The :class:`HeadInternals` of a clean run of ``input_ids`` (n, T), what copy-suppression-
    preserving ablation reads. Eager attention."""
    from . import _run, require_eager

    require_eager(model, "attention patterns")
    mods, final, _, _ = _modules(model, "logit_effects")
    arch = architecture(model)
    d = dims(model)
    values = [resolve(layer, arch.v_proj) for layer, *_ in mods]
    saved = _run(model, _trace_internals, (model, input_ids, mods, values, final, arch.qkv_layout, d["n_heads"],
                                           d["head_dim"]), remote, "saved")
    return HeadInternals(*(v.detach().double().cpu() for v in saved))


def _trace_internals(model, input_ids, mods, values, final, layout, n_heads, head_dim, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        pre, pattern, value, z = nnsight.save([]), nnsight.save([]), nnsight.save([]), nnsight.save([])
        li = 0
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:
            pre.append(layer.input)
            value.append(value_heads(values[li].output, layout, n_heads, head_dim))
            z.append(split_heads(o_proj.input, n_heads, head_dim))
            pattern.append(attn.output[1])
            li += 1
        saved = nnsight.save((torch.stack(on_device(pre, pre[0]), 1), torch.stack(on_device(pattern, pre[0]), 1),
                              torch.stack(on_device(value, pre[0]), 1), torch.stack(on_device(z, pre[0]), 1),
                              final.input))
    return saved


def _trace_layer_output(model, input_ids, layer, rows, cols, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        out = layer.output
        h = out[0] if isinstance(out, tuple) else out
        saved = nnsight.save(h[rows, cols])
    return saved


def _value_weights(w: torch.Tensor, layout: str, n_heads: int, hd: int, d_model: int) -> torch.Tensor:
    """(H, head_dim, d_model): each head's value weight, from the value (or fused qkv) weight."""
    if layout == "neox":  # (3·H·hd, d): per head [q, k, v]
        return w.view(n_heads, 3, hd, -1)[:, 2]
    if layout == "gpt2":  # Conv1D (d, 3d): [q | k | v] along the output
        return w[:, 2 * d_model:3 * d_model].view(-1, n_heads, hd).permute(1, 2, 0)
    n_kv = w.shape[0] // hd  # grouped-query attention: head h reads value head h // (H / n_kv)
    return w.view(n_kv, hd, -1).repeat_interleave(n_heads // n_kv, 0)


def valid_edges(n_layers: int, n_heads: int, parallel: bool, qkv: bool = False) -> torch.Tensor:
    """(n_up, n_down) bool: u's output reaches v's input (u computed before v reads). With
    ``qkv`` each head has three downstream inputs: per layer the heads' q, their k, their v,
    then the MLP (EAP-IG's ``backward_index`` order)."""
    if qkv:
        plain = valid_edges(n_layers, n_heads, parallel)
        return plain[:, torch.as_tensor(qkv_columns(n_layers, n_heads))]
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


def qkv_columns(n_layers: int, n_heads: int) -> list[int]:
    """For each downstream input of the q/k/v graph, its node's column in the plain graph."""
    cols = []
    for li in range(n_layers):
        base = li * (n_heads + 1)
        cols += [base + h for _ in "qkv" for h in range(n_heads)] + [base + n_heads]
    return cols + [n_layers * (n_heads + 1)]


def downstream_nodes(n_up: int, n_down: int) -> torch.Tensor:
    """(n_down,) int64: the upstream index of the node each downstream input belongs to (n_up
    for the logits), for the plain graph (n_down = n_up) or the q/k/v graph, told apart by
    their sizes: n_up = 1 + L·(H + 1), n_down = 1 + L·(3H + 1)."""
    if n_down == n_up:
        return torch.arange(1, n_up + 1)
    lh = (n_down - n_up) // 2
    n_layers = n_up - 1 - lh
    n_heads = lh // n_layers
    if n_layers < 1 or n_layers * (3 * n_heads + 1) + 1 != n_down:
        raise ValueError(f"({n_up}, {n_down}) is the shape of no component graph")
    return torch.as_tensor(qkv_columns(n_layers, n_heads)) + 1


def split_removed(removed: torch.Tensor, n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A q/k/v graph's cut edges (c, n_up, n_down) as :func:`edge_patched_logits` takes them: the
    plain graph's cuts (MLPs and logits; heads' columns empty) and ``removed_qkv`` (c, n_up,
    n_layers, n_heads, 3)."""
    c, n_up, _ = removed.shape
    plain = torch.zeros((c, n_up, n_up), dtype=removed.dtype)
    qkv = torch.zeros((c, n_up, n_layers, n_heads, 3), dtype=removed.dtype)
    col = 0
    for li in range(n_layers):
        block = removed[:, :, col:col + 3 * n_heads].reshape(c, n_up, 3, n_heads)
        qkv[:, :, li] = block.permute(0, 1, 3, 2)
        col += 3 * n_heads
        plain[:, :, li * (n_heads + 1) + n_heads] = removed[:, :, col]
        col += 1
    plain[:, :, -1] = removed[:, :, col]
    return plain, qkv


def graph_shape(model: Any) -> tuple[int, int, bool]:
    """n_layers, n_heads and whether the residual is parallel, for :func:`valid_edges`."""
    d = dims(model)
    return d["n_layers"], d["n_heads"], parallel_residual(model)


def final_norm(model: Any, feature: str | None = "logit_effects") -> tuple[Any, Any, bool, float]:
    """The final norm, the unembedding, whether the norm centres (LayerNorm; RMSNorm does not)
    and its epsilon: what a direct logit effect with the norm's scale frozen needs. The norm's
    gain offset (Gemma) is :func:`_gain_offset`. Refuses an architecture that cannot do
    ``feature`` (``sites.Architecture.unsupported``; direct logit effects: one whose logits are
    no linear function of the final norm's output); None refuses none."""
    arch = architecture(model) if feature is None else require(model, feature)
    center, _, eps = final_norm_spec(model)
    return resolve(model, arch.final_norm), resolve(model, arch.unembed), center, eps


def _gain_offset(model: Any) -> float:
    """The final norm multiplies by offset + weight: 1 for Gemma's RMSNorm, else 0."""
    return final_norm_spec(model)[1]


@reads_weights
def head_logit_effects(model: Any, input_ids: torch.Tensor, token_ids: torch.Tensor, *,
                       gates: torch.Tensor | None = None, last_only: bool = False, logits: bool = False,
                       remote: bool | str = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Direct effect of every head's output on the logits of chosen tokens, at every position.

    ``input_ids`` (n, T); ``token_ids`` (n, K): the tokens whose logits are read for row i.
    Returns (n, layers, heads, T, K) float64: W_U[v] · (γ ⊙ N(o_h) / s), where o_h is the head's
    share of the attention output (without bias), s the final norm's scale on this run's
    residual stream (frozen, the usual direct-logit attribution), N centres for LayerNorm and
    is the identity for RMSNorm, and the unembedding rows W_U[v] are centred over the
    vocabulary, so a shift of every logit alike counts as no effect.

    ``gates`` (n, layers, heads), optional: each head's output multiplied by it in the run
    itself (0 zero-ablates a head: its slice of the output projection's input, as
    :func:`nnsight_reasoning.backend.head_masked_scores`), so the later heads, o_h and s are
    those of the ablated run. ``last_only``: the last position only (T = 1 in the result).
    ``logits``: also return the same run's logits of ``token_ids`` at the last position, (n, K)
    float64, as ``(effects, logits)`` (one pass gives both).
    """
    from . import _run

    final, unembed, center, eps = final_norm(model)
    mods, _, _, conv1d = _modules(model, "logit_effects")
    d = dims(model)
    if gates is not None:  # (n, L, H·head_dim): one factor per input column of each o_proj
        gates = head_columns(gates, d["head_dim"])
    saved = _run(model, _trace_head_effects, (model, input_ids, token_ids, mods, final, unembed, conv1d, d["n_heads"],
                                              d["head_dim"], center, eps, _gain_offset(model), gates, last_only,
                                              logits), remote, "saved")
    if logits:
        return saved[0].detach().cpu().double(), saved[1].detach().cpu().double()
    return saved.detach().cpu().double()


@reads_weights
def self_repair_logits(model: Any, input_ids: torch.Tensor, source_ids: torch.Tensor | None,
                       heads: Sequence[tuple[int, int]], *, means: torch.Tensor | None = None,
                       remote: bool | str = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each head's direct effect on the next token, and the next token's logit with the head
    ablated, at every position: the two sides of a self-repair measurement.

    ``input_ids`` (b, T). ``heads`` (v of (layer, head)): one ablated copy of the batch per head,
    its output (its slice of the output projection's input, every position) replaced by that of
    the same head on ``source_ids`` (b, T), row for row (resample ablation); with ``source_ids``
    None, by ``means`` (L, H · head_dim), the layer's row at every position (mean ablation, e.g.
    :func:`head_input_sums` over the texts divided by their tokens), or zeroed when ``means`` is
    None too. Returns float64 (``direct`` (b, L, H, T − 1), ``clean`` (b, T − 1),
    ``ablated`` (v, b, T − 1), ``replaced`` (b, L, H, T − 1), ``frozen`` (v, b, T − 1)): at
    position t the token t + 1 is read; a direct effect is :func:`head_logit_effects`' (the final
    norm's scale frozen at the clean run's value, the unembedding rows centred over the vocabulary)
    and a logit is centred too (minus the mean over the vocabulary), so the two are in one unit.
    ``replaced`` is the direct effect, read the same way, of what the ablation writes in each
    head's place (the source text's output, the mean, or zero): the part of ``direct`` an
    ablation leaves in place. ``frozen`` is ``ablated − clean`` with the final norm's scale
    frozen at the clean run's: the change of the final residual stream read the same way, so
    that ``ablated − clean − frozen`` is what the final norm's rescaling alone changes.
    """
    from . import _run

    final, unembed, center, eps = final_norm(model)
    mods, _, _, conv1d = _modules(model, "logit_effects")
    d = dims(model)
    b, v = input_ids.shape[0], len(heads)
    rows = [input_ids] + ([] if source_ids is None else [source_ids]) + [input_ids] * v
    first = b * (len(rows) - v)  # the ablated copies start here
    width = d["n_heads"] * d["head_dim"]
    if means is not None and tuple(means.shape) != (d["n_layers"], width):
        raise ValueError(f"means must be (layers, heads x head_dim) = ({d['n_layers']}, {width}), "
                         f"not {tuple(means.shape)}")
    # what takes a head's place, per layer: the source rows' own outputs (None), or a fixed value at every position
    fills = None if source_ids is not None else (torch.zeros(d["n_layers"], width) if means is None else means.float())
    plan = []  # per layer: None, or (row -> its source row, (rows, width) True where a head is replaced)
    for li in range(d["n_layers"]):
        at = [(j, h) for j, (layer, h) in enumerate(heads) if layer == li]
        if not at:
            plan.append(None)
            continue
        src = torch.arange(first + b * v)
        mask = torch.zeros(first + b * v, width, dtype=torch.bool)
        for j, h in at:
            copies = torch.arange(first + j * b, first + (j + 1) * b)
            if source_ids is not None:
                src[copies] = torch.arange(b, 2 * b)  # the source rows, run clean
            mask[copies, h * d["head_dim"]:(h + 1) * d["head_dim"]] = True
        plan.append((src, mask))
    saved = _run(model, _trace_self_repair, (model, torch.cat(rows), input_ids[:, 1:], mods, final, unembed, conv1d,
                                             d["n_heads"], d["head_dim"], center, eps, _gain_offset(model), plan, fills,
                                             b, first), remote, "saved")
    direct, logits, replaced, frozen = (t.detach().cpu().double() for t in saved)
    return direct, logits[:b], logits[first:].reshape(v, b, -1), replaced, frozen.reshape(v, b, -1)


# Five tensors since `frozen` was added (four before). Every part kept before the format was set is
# refused (those with four tensors, and those with five but no format in their digest): recomputed, never misread.
self_repair_logits.parts_format = 2


def _trace_self_repair(model, ids, targets, mods, final, unembed, conv1d, n_heads, head_dim, center, eps, gain_offset,
                       plan, fills, b, first, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(ids, remote=remote, backend=backend, use_cache=False):
        # each layer's head outputs are read on the next tokens' unembedding rows at once, (b, H, T - 1):
        # keeping them whole, (b, L, T, H, d) in float64, would not fit for a model of Pythia's size.
        # Centring is linear, so centring the rows instead of the outputs gives the same products.
        rows = unembed_rows(unembed.weight, final.weight, gain_offset, targets)  # (b, T - 1, d)
        if center:
            rows = centred(rows)
        outs, reps = [], []
        li = 0
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:  # forward order
            z = o_proj.input
            # what an ablation writes in the heads' place at the clean rows' positions: the source rows' outputs
            # (rows b..2b, never replaced) or the layer's fixed value
            rep = z[b:2 * b, :-1] if fills is None else fills[li].to(z.device, z.dtype).expand(b, z.shape[1] - 1, -1)
            step = plan[li]
            if step is not None:
                keep = step[1].to(z.device)[:, None, :]
                z = torch.where(keep, z[step[0].to(z.device)] if fills is None else fills[li].to(z.device, z.dtype), z)
                o_proj.input = z
            for part, into in ((z[:b, :-1], outs), (rep, reps)):
                o = head_outputs(split_heads(part, n_heads, head_dim), o_proj.weight, n_heads, head_dim, conv1d)
                into.append(torch.einsum("nthd,ntd->nht", o.double(), rows.to(o.device)))
            li += 1
        scale = norm_scale(final.input[:b, :-1], center, eps)[:, None, None, :]  # (b, 1, 1, T - 1)
        direct = torch.stack(on_device(outs, outs[0]), 1) / scale.to(outs[0].device)
        replaced = torch.stack(on_device(reps, outs[0]), 1) / scale.to(outs[0].device)
        # the ablated copies' final residual minus the clean one, on the same rows at the clean scale: the logit
        # change if the final norm's scale stayed at the clean run's (centring, for LayerNorm, is in the rows)
        x = final.input[:, :-1]
        copies = (x.shape[0] - first) // b
        moved = x[first:].reshape(copies, b, *x.shape[1:]).double() - x[:b].double()  # (v, b, T - 1, d)
        frozen = torch.einsum("cbtd,btd->cbt", moved, rows.to(moved.device)) / scale[:, 0, 0].to(moved.device)
        lg = model.output.logits[:, :-1]  # (rows, T - 1, V) in the model's dtype: no float64 copy of every logit
        every = targets.repeat(lg.shape[0] // b, 1).to(lg.device)
        picked = torch.gather(lg, 2, every[:, :, None])[:, :, 0].double() - lg.float().mean(-1).double()
        saved = nnsight.save((direct, picked, replaced, frozen))
    return saved


@reads_weights
def component_logit_effects(model: Any, input_ids: torch.Tensor, token_ids: torch.Tensor, *,
                            remote: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct effect of every head's and every MLP's output at the last position on the logits
    of chosen tokens, read as :func:`head_logit_effects` reads a head's: W_U[v] · (γ ⊙ N(o) / s)
    with the final norm's scale s frozen at this run's value and the unembedding rows centred
    over the vocabulary. ``input_ids`` (n, T); ``token_ids`` (n, K). Returns float64 logits (heads
    (n, layers, heads, K), MLPs (n, layers, K)); an MLP's output includes its bias."""
    from . import _run

    final, unembed, center, eps = final_norm(model)
    mods, _, _, conv1d = _modules(model, "logit_effects")
    d = dims(model)
    heads, mlps = _run(model, _trace_head_effects, (model, input_ids, token_ids, mods, final, unembed, conv1d,
                                                    d["n_heads"], d["head_dim"], center, eps, _gain_offset(model),
                                                    None, True, False, True), remote, "saved")
    return heads[:, :, :, 0].detach().cpu().double(), mlps[:, :, 0].detach().cpu().double()


def _trace_head_effects(model, input_ids, token_ids, mods, final, unembed, conv1d, n_heads, head_dim, center, eps,
                        gain_offset, gates, last_only, logits=False, mlps=False, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        # each layer's outputs are read on the tokens' rows at once, (n, H, T, K): stacking them whole,
        # (n, L, T, H, d) in float64, would not fit for a large model at every position. Centring is
        # linear, so centring the rows instead of the outputs gives the same products.
        rows = unembed_rows(unembed.weight, final.weight, gain_offset, token_ids)  # (n, K, d): γ folded in
        if center:
            rows = centred(rows)
        outs = []
        mlp_outs = []
        li = 0
        for layer, ln_attn, attn, o_proj, ln_mlp, mlp in mods:  # forward order
            z = o_proj.input
            if gates is not None:
                z = z * gates[:, li][:, None, :].to(z.device, z.dtype)
                o_proj.input = z
            if last_only:
                z = z[:, -1:]
            o = head_outputs(split_heads(z, n_heads, head_dim), o_proj.weight, n_heads, head_dim, conv1d)
            outs.append(torch.einsum("nthd,nkd->nhtk", o.double(), rows.to(o.device)))
            if mlps:  # each MLP's output, bias included, read the same way
                m = mlp.output
                m = m[:, -1:] if last_only else m
                mlp_outs.append(torch.einsum("ntd,nkd->ntk", m.double(), rows.to(m.device)))
            li += 1
        f = final.input
        if last_only:
            f = f[:, -1:]
        scale = norm_scale(f, center, eps)  # (n, T)
        effects = torch.stack(on_device(outs, outs[0]), 1) / scale[:, None, None, :, None].to(outs[0].device)
        if mlps:  # (n, L, T, K)
            m = torch.stack(on_device(mlp_outs, outs[0]), 1) / scale[:, None, :, None].to(outs[0].device)
            saved = nnsight.save((effects, m))
        elif logits:
            last = model.output.logits[:, -1]
            saved = nnsight.save((effects, torch.gather(last, 1, token_ids.to(last.device))))
        else:
            saved = nnsight.save(effects)
    return saved


@reads_weights
def residual_lens(model: Any, input_ids: torch.Tensor, token_ids: torch.Tensor, layers: Sequence[int], *,
                  top_k: int = 10, read: str = "output", remote: bool | str = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logit lens at the last position: the residual stream at each layer of ``layers`` read
    through the final norm and the unembedding (then the soft cap, where the model caps its
    logits: Gemma 2), as the model reads its last layer's output.

    ``read`` "output": the layer's output (so the last layer's lens is the model's own
    next-token distribution); "mid": the residual between the layer's attention and its MLP
    (the input of the MLP's norm, Rai & Yao's ``layer_residual``; the caller refuses it for
    parallel-residual models, which have no such stream). Layer -1 is the embeddings, the first
    layer's input, either way.

    ``input_ids`` (n, T); ``token_ids`` (n, K): a set of tokens per row (pad with a repeat of
    one). Returns (``log_probs`` (n, m, K) float64 natural-log probabilities under the lens,
    ``rank`` (n, m) int64: the best-ranked token of the row's set, 0 = top-1 over the
    vocabulary, ``top_ids`` (n, m, top_k) int64, ``top_log_probs`` (n, m, top_k) float64),
    m = len(layers).
    """
    from . import _run

    # no direct-logit refusal: the lens reads the residual stream itself, so a family whose components
    # are post-normed (Gemma 2) reads it exactly; its soft cap is a last step of the map
    final, unembed, center, eps = final_norm(model, feature=None)
    arch = architecture(model)
    blocks = resolve(model, arch.layers)
    # resolved here: the trace body may only touch nnsight, torch and builtins
    reads = [("embed", blocks[0]) if li < 0 else ("mid", resolve(blocks[li], arch.ln_mlp)) if read == "mid"
             else ("output", blocks[li]) for li in layers]
    return tuple(t.detach().cpu() for t in _run(
        model, _trace_lens, (model, input_ids, token_ids, reads, final, unembed, center, eps, _gain_offset(model),
                             getattr(final, "bias", None) is not None, getattr(unembed, "bias", None) is not None,
                             logit_softcap(model), top_k),
        remote, "saved"))


# A row of NaN logits ranks last (V) since format 2 (0 before): see backend.answer_scores.parts_format
residual_lens.parts_format = 2


def _trace_lens(model, input_ids, token_ids, reads, final, unembed, center, eps, gain_offset, norm_bias,
                unembed_bias, softcap, top_k, remote=False, backend=None):
    saved = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        xs = []
        for kind, module in reads:  # forward order
            x = site_values("resid", module, 0, 0) if kind == "output" else module.input
            xs.append(x[:, -1])
        x = torch.stack(on_device(xs, xs[0]), 1).double()  # (n, m, d)
        # the final norm, in float64: centre (LayerNorm), divide by the scale, times the gain, plus the bias
        y = (centred(x) if center else x) / norm_scale(x, center, eps)[..., None]
        y = y * norm_gain(final.weight, gain_offset).to(y.device)
        if norm_bias:
            y = y + final.bias.double().to(y.device)
        w = unembed.weight
        flat = torch.matmul(y.to(w.device, w.dtype), w.T).reshape(-1, w.shape[0])  # (n·m, V), the model's dtype
        if unembed_bias:
            flat = flat + unembed.bias
        if softcap:  # as the model caps its own logits (Gemma 2), in its dtype
            flat = torch.tanh(flat / softcap) * softcap
        lp = flat.double().log_softmax(-1)  # ratios of tiny probabilities need float64
        n, m = x.shape[0], x.shape[1]
        chosen = torch.gather(lp, 1, token_ids.to(lp.device).repeat_interleave(m, 0))  # (n·m, K)
        rank = best_rank(lp, chosen)  # the set's best-ranked member (rows are padded with a member)
        top = lp.topk(top_k, -1)
        saved = nnsight.save((chosen.reshape(n, m, -1), rank.reshape(n, m), top.indices.reshape(n, m, -1),
                              top.values.reshape(n, m, -1)))
    return saved
