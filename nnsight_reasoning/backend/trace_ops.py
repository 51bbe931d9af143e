"""Tensor helpers that run inside trace bodies, locally and on NDIF.

A trace body is shipped to NDIF as source, with the objects it names; the server does not
have this package installed. ``backend/__init__.py`` registers this module with
``nnsight.register`` (cloudpickle's pickle-by-value), so a helper named in a trace body
travels as its own source and is rebuilt on the server. Therefore this module holds only
plain functions of tensors (and tuples of them) that need nothing but ``torch``: no
nnsight Envoys, no imports from the rest of the package, no module-level state.

``tests/test_nnsight_shim.py`` checks that traces using them give the same numbers on the
loopback NDIF server as locally, and that without the registration the server cannot load
them.
"""
import torch


def score_answers(logits, answer_ids, rank=True, best_of=None):
    """Scores of the candidate tokens ``answer_ids`` (n, K) given last-position ``logits`` (n, V).

    Returns (log-probabilities, logits), each (n, K) float64; with ``rank`` True also the (n,)
    rank of the best candidate (of those ``best_of`` (n, K) bool marks; all when None) by
    :func:`best_rank`, and the (n,) id of each row's top token; with ``rank`` "top" the top
    tokens only (no rank: it costs a comparison of each row with the whole vocabulary).
    """
    logits = logits.double()  # ratios of tiny probabilities need it
    answer_ids = answer_ids.to(logits.device)  # passed in from the CPU; gather wants one device
    log_probs = logits.log_softmax(-1)
    chosen = torch.gather(log_probs, 1, answer_ids)
    if rank == "top":
        return chosen, answer_logits(logits, answer_ids), None, log_probs.argmax(-1)
    if rank:
        return chosen, answer_logits(logits, answer_ids), best_rank(log_probs, chosen, best_of), log_probs.argmax(-1)
    return chosen, answer_logits(logits, answer_ids)


def best_rank(log_probs, chosen, best_of=None):
    """(n,) int64: how many tokens of each row of ``log_probs`` (n, V) score above the best of
    its candidates' ``chosen`` (n, K) (of those ``best_of`` (n, K) bool marks; all when None):
    the rank of an answer set's best member, 0 = top-1. One (n, V) comparison, whatever K (an
    (n, K, V) one would take K·n·V bytes: 1.3 GB for greater-than's 100 years over Pythia's
    vocabulary at 256 rows). A NaN best (a row whose logits overflowed) ranks last, V, so that
    it never counts as correct (a comparison with NaN is false, which would give 0)."""
    if best_of is not None:
        chosen = torch.where(best_of.to(chosen.device), chosen, torch.full_like(chosen, float("-inf")))
    best = chosen.max(-1, keepdim=True).values
    count = (log_probs > best).sum(-1)
    return torch.where(best[:, 0].isnan(), torch.full_like(count, log_probs.shape[-1]), count)


def answer_metric(logits, answer_ids, weights, probs):
    """(n,) float64: Σ_k weights[:, k]·f(logits)[answer_ids[:, k]], f the identity or, with
    ``probs``, the softmax over the vocabulary; ``logits`` (n, V)."""
    values = torch.softmax(logits.double(), -1) if probs else logits.double()
    return (torch.gather(values, 1, answer_ids.to(values.device)) * weights.to(values.device)).sum(1)


def answer_logits(logits, answer_ids, lse=False):
    """The logits (n, K) float64 of the candidate tokens ``answer_ids`` (n, K) in ``logits`` (n, V);
    with ``lse`` a last column holds each row's logsumexp (n, K + 1)."""
    chosen = torch.gather(logits.double(), 1, answer_ids.to(logits.device))
    return torch.cat([chosen, torch.logsumexp(logits.double(), -1, keepdim=True)], 1) if lse else chosen


def on_device(tensors, like):
    """``tensors`` (a list), each moved to ``like``'s device: per-layer values of a model that
    accelerate splits across devices, before they are stacked or combined (no-op on one device)."""
    return [t.to(like.device) for t in tensors]


def batch_rows(values, n, index):
    """``values`` (a tuple of module arguments) with every batch-shaped tensor ``x`` (at least
    2-d, ``x.shape[0] == n``, n > 1) replaced by ``x[index]``, also inside tuples and lists
    (rotary embeddings come as a (cos, sin) pair). The attention mask is built once for the n
    input rows; a layer that runs on other rows (patched copies, one copy per head) needs its
    rows. Other values are returned as they are."""
    out = []
    for value in values:
        if isinstance(value, (tuple, list)):
            value = type(value)(batch_rows(value, n, index))
        elif isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == n > 1:
            value = value[index]
        out.append(value)
    return tuple(out)


def batch_kwargs(kwargs, n, index):
    """:func:`batch_rows` for keyword arguments (the dict is updated in place and returned)."""
    for key in list(kwargs):
        kwargs[key] = batch_rows((kwargs[key],), n, index)[0]
    return kwargs


def interpolate(e, p, steps, alphas):
    """Token embeddings ``e`` (2p + steps·p, T, d), rows: p sources, p bases, then steps
    blocks of p rows (copies of the bases) replaced by base + α·(source − base) at
    ``alphas`` (steps·p, 1, 1), the integrated-gradients path. Unchanged when steps == 1."""
    if steps <= 1:
        return e
    base = e[p:2 * p].repeat(steps, 1, 1)
    path = base + alphas.to(e.device, e.dtype) * (e[:p] - e[p:2 * p]).repeat(steps, 1, 1)
    return torch.cat([e[:2 * p], path])


def mix_group(x, p, steps, group, alphas):
    """A node group's output ``x`` (2p + G·steps·p, T, d) in EAP-IG on activations: rows p sources,
    p bases, then per group ``steps`` blocks of p base copies; the blocks of ``group`` get
    base + α·(source − base) at ``alphas`` (steps·p, 1, 1), every other row stays."""
    start = 2 * p + group * steps * p
    clean = x[p:2 * p].repeat(steps, 1, 1)
    mixed = clean + alphas.to(x.device, x.dtype) * (x[:p].repeat(steps, 1, 1) - clean)
    return torch.cat([x[:start], mixed, x[start + steps * p:]])


def head_columns(mask, head_dim):
    """A per-head factor (..., n_heads) as one factor per input column of the output projection,
    (..., n_heads·head_dim): how a head is pruned (0) or kept (1)."""
    return mask.float().repeat_interleave(head_dim, -1)


def gate_heads(o_proj, gate):
    """Multiply the output projection's input by ``gate`` (broadcast over rows and positions; see
    :func:`head_columns`): a pruned head's output is zero, the projection's bias stays, as
    transformers' ``head_mask`` did. The one place ``prune`` and ``attention(pruned=...)`` prune."""
    x = o_proj.input
    o_proj.input = x * gate.to(x.device, x.dtype)


def split_heads(z, n_heads, head_dim):
    """The output projection's input (..., n_heads·head_dim) as a view (..., n_heads, head_dim)."""
    return z.view(tuple(z.shape[:-1]) + (n_heads, head_dim))


def site_values(kind, module, n_heads, head_dim):
    """Inside a trace: the tensor a patch at site ``kind`` writes into, as a view, so that
    ``x[dst] = x[src]`` edits the forward pass: the attention probabilities (``module`` is the
    attention Envoy and its ``.source`` path; (batch, heads, query, key)), the output
    projection's input split into heads ((batch, T, heads, head_dim)), the MLP's hidden units
    (its output projection's input, (batch, T, d_mlp)), or the module's output ((batch, T, d);
    attention's first element)."""
    if isinstance(module, tuple):  # (attention Envoy, .source path): the attention-probability sites
        op, path = module
        for name in path:
            op = getattr(op.source, name)
        return op.output
    if kind == "head":
        return split_heads(module.input, n_heads, head_dim)
    if kind == "neuron":
        return module.input
    x = module.output
    if kind == "attn" or isinstance(x, tuple):  # attention returns (out, weights)
        x = x[0]
    return x


def own_heads(z, n_heads, rows, head_dim):
    """Head h of copy h: ``z`` (n_heads·rows, T, n_heads·head_dim), the output projection's
    input when attention ran on one copy of its input per head, to (rows, T, n_heads, head_dim)."""
    t = z.shape[1]
    return torch.diagonal(z.view(n_heads, rows, t, n_heads, head_dim), dim1=0, dim2=3).permute(0, 1, 3, 2)


def last_position(delta, on):
    """``delta`` (c, p, T, k, d) with every position but the last zeroed when ``on``."""
    if not on:
        return delta
    return torch.cat([torch.zeros_like(delta[:, :, :-1]), delta[:, :, -1:]], 2)


def value_heads(out, layout, n_heads, head_dim):
    """Each head's value vectors (n, T, n_heads, head_dim) from the value projection's output
    ``out`` (n, T, width): ``layout`` "separate" (a v_proj of n_kv heads; grouped-query heads
    repeat theirs), "neox" (fused per head [q, k, v]) or "gpt2" (fused [q | k | v])."""
    n, t = out.shape[0], out.shape[1]
    if layout == "neox":
        return out.view(n, t, n_heads, 3, head_dim)[:, :, :, 2]
    if layout == "gpt2":
        return out[:, :, 2 * n_heads * head_dim:].reshape(n, t, n_heads, head_dim)
    v = out.view(n, t, -1, head_dim)
    return v.repeat_interleave(n_heads // v.shape[2], 2)


def splice_qkv(out, layout, part, n_heads):
    """A projection's output ``out`` (3·n, T, width) when attention ran on three groups of n
    rows, group 0 reading the queries' input, group 1 the keys', group 2 the values': group 0
    gets group 1's keys and group 2's values, so that its heads attend with a query, a key and
    a value each computed from its own input. ``layout`` (``sites.Architecture.qkv_layout``):
    "separate" (``out`` is a k_proj or v_proj output, ``part`` "k" or "v"), "neox" (the fused
    query_key_value, per head q, k, v of width/(3·n_heads) each), "gpt2" (the fused c_attn:
    q, k, v blocks of width/3). Groups 1 and 2 are returned as they were (their outputs are
    not used). Out of place."""
    n = out.shape[0] // 3
    g = out.view((3, n) + tuple(out.shape[1:]))
    if layout == "separate":
        first = g[1] if part == "k" else g[2]
    elif layout == "neox":
        v = g.view((3, n, out.shape[1], n_heads, 3, -1))
        first = torch.stack([v[0, :, :, :, 0], v[1, :, :, :, 1], v[2, :, :, :, 2]], 3).reshape(g.shape[1:])
    else:  # gpt2
        v = g.view((3, n, out.shape[1], 3, -1))
        first = torch.stack([v[0, :, :, 0], v[1, :, :, 1], v[2, :, :, 2]], 2).reshape(g.shape[1:])
    return torch.cat([first, g[1], g[2]])


def head_outputs(z, weight, n_heads, head_dim, transposed):
    """Each head's share of the output projection's output, without its bias: ``z`` (..., H, k)
    per-head inputs, ``weight`` the projection's weight, stored (in, out) when ``transposed``
    (GPT-2's Conv1D) else (out, in). Returns (..., H, d)."""
    if transposed:
        return torch.einsum("...hk,hkd->...hd", z, weight.view(n_heads, head_dim, -1))
    return torch.einsum("...hk,dhk->...hd", z, weight.view(-1, n_heads, head_dim))


def neuron_directions(weight, transposed):
    """The MLP output projection's weight as (N, d): row n = neuron n's output direction."""
    return weight if transposed else weight.T


def norm_scale(f, center, eps):
    """The final norm's scale s (...,) of its input ``f`` (..., d): √(mean(f²) + ε), ``f``
    centred first for LayerNorm. Frozen at this run's value, the norm is linear: x ↦ γ ⊙ N(x) / s."""
    f = f.double()
    if center:
        f = centred(f)
    return (f.pow(2).mean(-1) + eps).sqrt()


def centred(x):
    """``x`` minus its mean over the last axis (LayerNorm's centring, as a linear map)."""
    return x - x.mean(-1, keepdim=True)


def norm_gain(norm_weight, gain_offset):
    """The final norm's gain γ = gain_offset + weight, float64 (Gemma stores γ − 1)."""
    return norm_weight.double() + gain_offset


def unembed_rows(unembed_weight, norm_weight, gain_offset, token_ids):
    """The unembedding rows of ``token_ids`` (any shape), centred over the vocabulary, times the
    final norm's gain: (..., d) float64. A direct logit effect of a vector o is then
    N(o) / s · these rows (:func:`norm_scale`)."""
    u = unembed_weight.double()
    # the final norm and the unembedding may sit on different devices (a model split by
    # accelerate), and token ids taken from the logits on a third
    return (u[token_ids.to(u.device)] - u.mean(0)) * norm_gain(norm_weight.to(u.device), gain_offset)


def packed_mask(seq, pre, lim, pos, like):
    """The additive attention mask (R, 1, C, C) of a packed batch (``backend.packed``), in the
    dtype and on the device of ``like``. Column q may read column k when both belong to the
    same sequence ``seq`` and k's position is not later (causal), or when k belongs to q's
    prefix sequence ``pre`` at a position before ``lim`` (a patched copy reads its base row's
    prefix). ``seq``, ``pre``, ``lim``, ``pos``: (R, C) int64."""
    seq, pre, lim, pos = (x.to(like.device) for x in (seq, pre, lim, pos))
    own = (seq[:, None, :] == seq[:, :, None]) & (pos[:, None, :] <= pos[:, :, None])
    prefix = (seq[:, None, :] == pre[:, :, None]) & (pos[:, None, :] < lim[:, :, None])
    blocked = ~(own | prefix)
    return torch.zeros(blocked.shape, dtype=like.dtype, device=like.device).masked_fill(
        blocked, torch.finfo(like.dtype).min)[:, None]


def join_columns(x, join):
    """``x`` (R, C, d) at a join point of a packed batch: with N columns appended, new column j
    of row r a copy of column ``index[r, j]`` of that row, and the columns (``rows``, ``cols``)
    reset to columns ``src`` of their rows. ``join`` = (index (R, N), rows, cols, src), int64."""
    index, rows, cols, src = join
    index = index.to(x.device)
    x = torch.cat([x, torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))], 1)
    x[rows, cols] = x[rows, src]
    return x


def packed_inputs(hidden, args, kwargs, full, width, mask, mask_arg):
    """A decoder layer's (args, kwargs) for a packed batch ``width`` columns wide: ``hidden``
    as its first argument, the attention mask (keyword or position ``mask_arg``) replaced by
    the top-left ``width`` × ``width`` block of ``mask``, and every other tensor the model built
    for all ``full`` input columns (positions, rotary cos/sin) cut to its first ``width``."""
    def cut(v):
        if isinstance(v, (tuple, list)):
            return type(v)(cut(u) for u in v)
        if isinstance(v, torch.Tensor):
            if v.dim() == 1 and v.shape[0] == full:
                return v[:width]
            if v.dim() in (2, 3) and v.shape[1] == full:
                return v[:, :width]
        return v
    args = [hidden] + [cut(a) for a in args[1:]]
    kwargs = {key: cut(v) for key, v in kwargs.items()}
    block = mask[:, :, :width, :width]
    if isinstance(mask_arg, int):
        while len(args) <= mask_arg:
            args.append(None)
        args[mask_arg] = block
    else:
        kwargs[mask_arg] = block
    return tuple(args), kwargs


def edge_deltas(x, t, w, n):
    """What cutting an edge from a node with output ``x`` (R, C, k, d) adds to a packed
    edge-patched batch (``backend.packed.plan_edges``): the corrupted run's output minus this
    run's, at positions T−w … T−1. Returns (own (R, n, w, k, d): for the n slots present, base
    (R, w, k, d): corrupted minus clean, which is every later slot's, as those equal the clean
    run where ``x`` is computed)."""
    corrupt = x[:, 2 * t - w:2 * t]
    base = corrupt - x[:, t - w:t]
    own = corrupt.unsqueeze(1) - x[:, 2 * t:2 * t + n * w].reshape((x.shape[0], n, w) + tuple(x.shape[2:]))
    return own, base


def edge_correction(ups, removed, cols, n):
    """Σ_u removed[g, slot, u, v] · δ_u for the downstream nodes ``cols`` (a slice of K nodes)
    and the first n slots of a packed edge-patched batch: (K, R, n·w, d), R = G·p rows.
    ``ups``: per upstream group (first node index, own, base, slots then), as from
    :func:`edge_deltas`; ``removed`` (G, n_slots, n_up, n_down)."""
    total = None
    for start, own, base, n_then in ups:
        r, w, k, d = base.shape
        g = removed.shape[0]
        rem = removed[:, :n, start:start + k, cols].to(base.device, base.dtype)  # (G, n, k, K)
        base = base.reshape(g, r // g, w, k, d)
        parts = []
        if n_then:
            parts.append(torch.einsum("gpnwkd,gnkh->hgpnwd", own.reshape((g, r // g) + tuple(own.shape[1:])),
                                      rem[:, :n_then]))
        if n > n_then:
            parts.append(torch.einsum("gpwkd,gnkh->hgpnwd", base, rem[:, n_then:]))
        part = torch.cat(parts, 3) if len(parts) > 1 else parts[0]
        total = part if total is None else total + part.to(total.device)  # groups of other layers' devices
    return total.reshape(total.shape[0], r, n * w, d)
