"""Independent edge-level references: plain PyTorch hooks on the HF model, one prompt at a time.

Per-head inputs are made the direct way: the attention module is called once per head on that
head's own input and only that head's output is kept (the toolkit instead batches H copies
inside one nnsight trace). Per-head outputs come from calling the output projection on the
head's slice alone, minus its bias (the toolkit reads the weight matrix). Gradients come from
one autograd pass per downstream node with a leaf tensor in front of that node's norm.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

NORMS = {  # model_type -> (layers, ln_attn, attn, o_proj, ln_mlp, mlp, final norm, embedding)
    "gpt_neox": ("gpt_neox.layers", "input_layernorm", "attention", "attention.dense", "post_attention_layernorm",
                 "mlp", "gpt_neox.final_layer_norm", "gpt_neox.embed_in"),
    "gpt2": ("transformer.h", "ln_1", "attn", "attn.c_proj", "ln_2", "mlp", "transformer.ln_f", "transformer.wte"),
    "llama": ("model.layers", "input_layernorm", "self_attn", "self_attn.o_proj", "post_attention_layernorm", "mlp",
              "model.norm", "model.embed_tokens"),
}


def _get(root, dotted):
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


@contextmanager
def heads_kept(hf, keep):
    """Within the block, head h of layer l outputs zero where ``keep[l, h] == 0``: a pre-hook on each
    layer's output projection zeroes the head's slice of its input (as transformers' old
    ``head_mask``; the projection's bias stays)."""
    layers, o_proj = NORMS[hf.config.model_type][0], NORMS[hf.config.model_type][3]
    n_heads = hf.config.num_attention_heads
    hooks = []
    for li, block in enumerate(_get(hf, layers)):
        def pre(module, args, li=li):
            x = args[0]
            gate = torch.tensor(keep[li], dtype=x.dtype).repeat_interleave(x.shape[-1] // n_heads)
            return (x * gate,) + tuple(args[1:])
        hooks.append(_get(block, o_proj).register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _parts(hf):
    layers, ln_a, attn, o_proj, ln_m, mlp, final, embed = NORMS[hf.config.model_type]
    blocks = _get(hf, layers)
    return ([(_get(b, ln_a), _get(b, attn), _get(b, o_proj), _get(b, ln_m), _get(b, mlp)) for b in blocks],
            _get(hf, final), _get(hf, embed))


def _heads(hf):
    return hf.config.num_attention_heads


def _with_hidden(args, kwargs, x):
    if args:
        return (x,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def node_names(n_layers, n_heads, qkv=False):
    up = ["input"] + [f"{'m' if h == n_heads else 'a'}{l}{'' if h == n_heads else '.' + str(h)}"
                      for l in range(n_layers) for h in range(n_heads + 1)]
    if qkv:  # per layer the heads' q, their k, their v, then the MLP
        down = [n for l in range(n_layers)
                for n in [f"a{l}.{h}<{g}>" for g in "qkv" for h in range(n_heads)] + [f"m{l}"]] + ["logits"]
        return up, down
    down = [f"{'m' if h == n_heads else 'a'}{l}{'' if h == n_heads else '.' + str(h)}"
            for l in range(n_layers) for h in range(n_heads + 1)] + ["logits"]
    return up, down


# model_type -> (the projection modules that make q, k, v, relative to the attention module;
# a function giving the (q, k, v) column ranges of head h in a projection's output)
QKV = {
    "llama": (("q_proj", "k_proj", "v_proj"), lambda hd, h, H: [slice(h * hd, (h + 1) * hd)] * 3),
    "gpt_neox": (("query_key_value",) * 3,
                 lambda hd, h, H: [slice((3 * h + g) * hd, (3 * h + g + 1) * hd) for g in range(3)]),
    "gpt2": (("c_attn",) * 3, lambda hd, h, H: [slice(g * H * hd + h * hd, g * H * hd + (h + 1) * hd) for g in range(3)]),
}


def _project(m, x):
    """A projection applied directly (a hook on ``m`` must not call ``m``): Linear or Conv1D."""
    if isinstance(m, torch.nn.Linear):
        return torch.nn.functional.linear(x, m.weight, m.bias)
    return x @ m.weight + m.bias  # GPT-2's Conv1D, weight (in, out)


def patched_run(hf, ids, removed=None, corrupt=None, removed_qkv=None, last_only=False):
    """Last-position logits and {upstream node: output (T, d)} of one run in which downstream
    node v reads its input plus Σ_u removed[u, v]·(corrupt[u] − this run's a_u); with
    ``removed_qkv`` (n_up, n_layers, n_heads, 3) head h of layer l computes its query (0), key (1)
    and value (2) from that input plus Σ_u removed_qkv[u, l, h, g]·(corrupt[u] − a_u): the
    attention module runs on the value's input while hooks on the projections put in the
    head's query and key columns computed from theirs (heads are not separated by the
    projections' layout: each hook writes only head h's columns). ``last_only``: the cut edges
    carry the corrupted value at the last position only. ``acts`` also holds each head's
    attention probabilities from the last query, (T,), as ``"pattern aL.H"``."""
    n_heads = _heads(hf)
    blocks, final, _ = _parts(hf)
    up, down = node_names(len(blocks), n_heads)
    acts, state, hooks = {}, {"bypass": False}, []

    def delta(u):
        d = corrupt[u] - acts[u]
        if last_only:
            d = torch.cat([torch.zeros_like(d[:-1]), d[-1:]])
        return d.unsqueeze(0)

    def corr(v, x):
        if removed is None:
            return x
        col = down.index(v)
        for i, u in enumerate(up):
            if removed[i, col]:
                x = x + delta(u)
        return x

    def corr_qkv(l, h, g, x):
        if removed_qkv is None:
            return x
        for i, u in enumerate(up):
            if removed_qkv[i, l, h, g]:
                x = x + delta(u)
        return x

    def split_inputs(attn, ln_a, l, h, xh):
        """Hooks putting head h's q and k columns, computed from their own inputs, into the
        projections' outputs; returns them (to remove) and the values' normed input."""
        names, cols = QKV[hf.config.model_type]
        hd = hf.config.hidden_size // n_heads
        own = []
        for g in (0, 1):
            m = _get(attn, names[g])
            xg = ln_a(corr_qkv(l, h, g, xh))

            def put(m_, i_, o_, xg=xg, g=g):
                o_ = o_.clone()
                sl = cols(hd, h, n_heads)[g]
                if hf.config.model_type == "llama" and g == 1:  # grouped keys: head h reads key head h // group
                    group = n_heads // hf.config.num_key_value_heads
                    sl = slice((h // group) * hd, (h // group + 1) * hd)
                o_[..., sl] = _project(m_, xg)[..., sl]
                return o_
            own.append(m.register_forward_hook(put))
        return own, ln_a(corr_qkv(l, h, 2, xh))

    first = blocks and (blocks[0][0])

    def pre_first(m, args, kwargs):
        if not state["bypass"] and "input" not in acts:
            acts["input"] = (args[0] if args else kwargs["hidden_states"])[0].detach()

    hooks.append(first.register_forward_pre_hook(pre_first, with_kwargs=True))
    for l, (ln_a, attn, o_proj, ln_m, mlp) in enumerate(blocks):
        def pre_ln(m, args, l=l):
            if not state["bypass"]:
                state["x"] = args[0]

        def pre_attn(m, args, kwargs, l=l, ln_a=ln_a, attn=attn, o_proj=o_proj):
            if state["bypass"]:
                return None
            zs = []
            state["bypass"] = True
            try:
                for h in range(n_heads):
                    xh = corr(f"a{l}.{h}", state["x"])
                    box = {}
                    cap = [o_proj.register_forward_pre_hook(lambda m_, a_: box.setdefault("z", a_[0]))]
                    normed = ln_a(xh)
                    if removed_qkv is not None and removed_qkv[:, l, h].any():
                        own, normed = split_inputs(attn, ln_a, l, h, xh)
                        cap += own
                    try:
                        a2, k2 = _with_hidden(args, kwargs, normed)
                        res = attn(*a2, **k2)
                        if isinstance(res, tuple) and res[1] is not None:  # head h's pattern from the last query
                            acts[f"pattern a{l}.{h}"] = res[1][0, h, -1].detach()
                    finally:
                        for c_ in cap:
                            c_.remove()
                    zs.append(box["z"].view(box["z"].shape[0], box["z"].shape[1], n_heads, -1)[:, :, h])
            finally:
                state["bypass"] = False
            state["z"] = torch.stack(zs, 2).flatten(2)
            return None

        def pre_o(m, args, l=l):
            if state["bypass"]:
                return None
            z = state["z"]
            state["bypass"] = True
            try:
                bias = m(torch.zeros_like(z))
                for h in range(n_heads):
                    zh = torch.zeros_like(z).view(z.shape[0], z.shape[1], n_heads, -1)
                    zh[:, :, h] = z.view(z.shape[0], z.shape[1], n_heads, -1)[:, :, h]
                    acts[f"a{l}.{h}"] = (m(zh.flatten(2)) - bias)[0].detach()
            finally:
                state["bypass"] = False
            return (z,) + tuple(args[1:])

        def pre_ln_m(m, args, l=l):
            if state["bypass"]:
                return None
            return (corr(f"m{l}", args[0]),) + tuple(args[1:])

        def post_mlp(m, i, o, l=l):
            if not state["bypass"]:
                acts[f"m{l}"] = o[0].detach()

        hooks += [ln_a.register_forward_pre_hook(pre_ln), attn.register_forward_pre_hook(pre_attn, with_kwargs=True),
                  o_proj.register_forward_pre_hook(pre_o), ln_m.register_forward_pre_hook(pre_ln_m),
                  mlp.register_forward_hook(post_mlp)]
    hooks.append(final.register_forward_pre_hook(lambda m, args: (corr("logits", args[0]),) + tuple(args[1:])))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids]), use_cache=False).logits[0, -1].double()
    finally:
        for h in hooks:
            h.remove()
    return logits, acts


def node_gradients(hf, ids, r1, r2, embeds=None, metric=None, qkv=False, install=None):
    """{downstream node: ∂(logit r1 − logit r2)/∂(its input), (T, d)}, one backward per node.
    ``embeds`` (T, d) replaces the token embeddings (integrated gradients); ``metric`` (last
    position's logits (V,) float64 -> scalar) replaces the logit difference. ``qkv``: a head's
    query, key and value inputs are nodes of their own (``a1.0<q>``): a leaf tensor copies the
    layer's input, and a hook on the projection puts in head h's q (or k, v) columns computed
    from it, so the gradient reaches the leaf through that projection of that head alone.
    ``install``: a function registering further hooks (returns their handles), e.g. one group's
    interpolated output (EAP-IG on activations)."""
    n_heads = _heads(hf)
    blocks, final, embed = _parts(hf)
    _, down = node_names(len(blocks), n_heads, qkv)
    out = {}
    for v in down:
        hooks, leaf = [], {}

        def make_leaf(m, args):
            x = args[0].detach().requires_grad_(True)
            leaf["x"] = x
            return (x,) + tuple(args[1:])

        if embeds is not None:
            hooks.append(embed.register_forward_hook(lambda m, i, o: embeds.unsqueeze(0).to(o.dtype)))
        if install is not None:
            hooks += install()
        if v == "logits":
            hooks.append(final.register_forward_pre_hook(make_leaf))
        elif v.startswith("m"):
            hooks.append(blocks[int(v[1:])][3].register_forward_pre_hook(make_leaf))
        elif "<" in v:
            l, h = map(int, v[1:v.index("<")].split("."))
            g = "qkv".index(v[-2])
            ln_a, attn = blocks[l][0], blocks[l][1]

            def keep_input(m, args):
                if "x" not in leaf:
                    leaf["x"] = args[0].detach().requires_grad_(True)

            names, cols = QKV[hf.config.model_type]
            hd = hf.config.hidden_size // n_heads
            sl = cols(hd, h, n_heads)[g]
            if hf.config.model_type == "llama" and g > 0:  # grouped keys and values: head h reads h // group
                group = n_heads // hf.config.num_key_value_heads
                sl = slice((h // group) * hd, (h // group + 1) * hd)

            def put(m, i, o, sl=sl, ln_a=ln_a):
                o = o.clone()
                o[..., sl] = _project(m, ln_a(leaf["x"]))[..., sl]
                return o

            hooks.append(ln_a.register_forward_pre_hook(keep_input))
            hooks.append(_get(attn, names[g]).register_forward_hook(put))
        else:
            l, h = map(int, v[1:].split("."))
            hooks.append(blocks[l][0].register_forward_pre_hook(make_leaf))
        if v.startswith("a"):

            def only_head(m, args, h=h):  # gradient through head h alone
                z = args[0].view(args[0].shape[0], args[0].shape[1], n_heads, -1)
                keep = torch.zeros(n_heads, 1)
                keep[h] = 1
                z = z.detach() * (1 - keep) + z * keep
                return (z.flatten(2),) + tuple(args[1:])

            hooks.append(blocks[l][2].register_forward_pre_hook(only_head))
        try:
            logits = hf(torch.tensor([ids]), use_cache=False).logits[0, -1].double()
            (logits[r1] - logits[r2] if metric is None else metric(logits)).backward()
        finally:
            for hk in hooks:
                hk.remove()
        grad = leaf["x"].grad  # None where a hooked-in constant cuts every path from v to the logits
        out[v] = grad[0].detach() if grad is not None else torch.zeros_like(leaf["x"][0]).detach()
        hf.zero_grad()
    return out


def reference_edge_scores(hf, clean, corrupt, r1, r2, ig_steps=1, metric=None, alphas=None, corrupt_acts=None,
                          qkv=False):
    """(n_up, n_down) tensor: Σ_t (a_u(corrupt) − a_u(clean)) · mean gradient of v's input (of
    the logit difference of r1 and r2, or of ``metric``, see :func:`node_gradients`). The
    integration points ``alphas`` (0 = clean, 1 = corrupted embeddings) default to (k + ½)/m;
    ``corrupt_acts`` ({node: (T, d)}, zero or mean ablation) replaces the corrupted run's."""
    _, acts_clean = patched_run(hf, clean)
    acts_corr = patched_run(hf, corrupt)[1] if corrupt_acts is None else corrupt_acts
    blocks, _, embed = _parts(hf)
    up, down = node_names(len(blocks), _heads(hf), qkv)
    if ig_steps == 1:
        grads = node_gradients(hf, clean, r1, r2, metric=metric, qkv=qkv)
    else:
        with torch.no_grad():
            e0, e1 = embed(torch.tensor([clean]))[0], embed(torch.tensor([corrupt]))[0]
        grads = {v: 0.0 for v in down}
        for k in range(ig_steps):
            a = (k + 0.5) / ig_steps if alphas is None else alphas[k]
            for v, g in node_gradients(hf, clean, r1, r2, e0 + a * (e1 - e0), metric=metric, qkv=qkv).items():
                grads[v] = grads[v] + g / ig_steps
    out = torch.zeros(len(up), len(down), dtype=torch.float64)
    for i, u in enumerate(up):
        delta = (acts_corr[u] - acts_clean[u]).double()
        for j, v in enumerate(down):
            out[i, j] = (delta * grads[v].double()).sum()
    return out


def group_outputs(hf, ids):
    """The outputs of EAP-IG's node groups on one run: {"input": the residual stream entering
    layer 0, ("attn", l): layer l's attention output, ("mlp", l): its MLP output}, each (T, d)."""
    blocks, _, _ = _parts(hf)
    out, hooks = {}, []

    def keep_input(m, args, kwargs):
        out.setdefault("input", (args[0] if args else kwargs["hidden_states"])[0].detach())

    hooks.append(_get(hf, NORMS[hf.config.model_type][0])[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    for l, (_, attn, _, _, mlp) in enumerate(blocks):
        hooks.append(attn.register_forward_hook(lambda m, i, o, l=l: out.__setitem__(("attn", l), o[0][0].detach())))
        hooks.append(mlp.register_forward_hook(lambda m, i, o, l=l: out.__setitem__(("mlp", l), o[0].detach())))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out


def reference_activation_ig_scores(hf, clean, corrupt, r1, r2, alphas, metric=None):
    """(n_up, n_down): Σ_t (a_u(corrupt) − a_u(clean)) · the mean, over every node group g (the
    input, each layer's attention, each MLP) and every α, of ∂M/∂(input of v) on the clean prompt
    with g's output set to clean + α·(corrupt − clean) by a hook (EAP-IG on activations)."""
    _, acts_clean = patched_run(hf, clean)
    acts_corr = patched_run(hf, corrupt)[1]
    out_clean, out_corr = group_outputs(hf, clean), group_outputs(hf, corrupt)
    blocks, _, _ = _parts(hf)
    first = _get(hf, NORMS[hf.config.model_type][0])[0]
    up, down = node_names(len(blocks), _heads(hf))
    grads, runs = {v: 0.0 for v in down}, 0
    for g in ["input"] + [(kind, l) for l in range(len(blocks)) for kind in ("attn", "mlp")]:
        for a in alphas:
            new = (out_clean[g] + a * (out_corr[g] - out_clean[g])).unsqueeze(0)

            def install(g=g, new=new):
                if g == "input":
                    def pre(m, args, kwargs):
                        return _with_hidden(args, kwargs, new.to(args[0].dtype if args else kwargs["hidden_states"].dtype))
                    return [first.register_forward_pre_hook(pre, with_kwargs=True)]
                kind, l = g
                module = blocks[l][1] if kind == "attn" else blocks[l][4]
                if kind == "attn":
                    return [module.register_forward_hook(lambda m, i, o: (new,) + tuple(o[1:]))]
                return [module.register_forward_hook(lambda m, i, o: new)]

            for v, grad in node_gradients(hf, clean, r1, r2, metric=metric, install=install).items():
                grads[v] = grads[v] + grad
            runs += 1
    out = torch.zeros(len(up), len(down), dtype=torch.float64)
    for i, u in enumerate(up):
        delta = (acts_corr[u] - acts_clean[u]).double()
        for j, v in enumerate(down):
            out[i, j] = (delta * grads[v].double() / runs).sum()
    return out


def assert_scores_match(ds, ref, valid):
    """A result's ``score`` equals the prompt mean of reference scores ``ref`` (prompt, up, down)
    where an edge exists and is NaN elsewhere; returns (got, want)."""
    import numpy as np

    want = np.where(valid, np.mean(ref, 0), np.nan)
    got = ds["score"].values
    assert np.array_equal(np.isnan(got), ~valid)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)))
    return got, want
