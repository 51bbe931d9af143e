"""An independent activation-patching implementation: plain PyTorch hooks on the HF model.

It shares no code with the toolkit (its own module map, its own metric formulas, one
unbatched forward pass per patch), so agreement means the toolkit's batched nnsight
engine computes what the SPEC says.
"""
from __future__ import annotations

import numpy as np
import torch

EMBEDDINGS = {"gpt_neox": "gpt_neox.embed_in", "gpt2": "transformer.wte", "gptj": "transformer.wte",
              "llama": "model.embed_tokens"}
MODULES = {  # model_type -> (layers, attention, o_proj, mlp)
    "gpt_neox": ("gpt_neox.layers", "attention", "attention.dense", "mlp"),
    "gpt2": ("transformer.h", "attn", "attn.c_proj", "mlp"),
    "gptj": ("transformer.h", "attn", "attn.out_proj", "mlp"),
    "llama": ("model.layers", "self_attn", "self_attn.o_proj", "mlp"),
}


def _get(root, dotted):
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


MLP_OUT = {"gpt_neox": "mlp.dense_4h_to_h", "gpt2": "mlp.c_proj", "gptj": "mlp.fc_out", "llama": "mlp.down_proj"}


def _module(hf, site, layer):
    if site == "neuron":  # MLP hidden units: the input of the MLP's output projection
        return _get(_get(hf, MODULES[hf.config.model_type][0])[layer], MLP_OUT[hf.config.model_type])
    if site in ("embed", "embed_dim"):  # the token embedding (lm-arithmetic's "layer -1"); layer is ignored
        return _get(hf, EMBEDDINGS[hf.config.model_type])
    layers, attn, o_proj, mlp = MODULES[hf.config.model_type]
    block = _get(hf, layers)[layer]
    return {"resid": block, "attn": _get(block, attn), "mlp": _get(block, mlp), "mlp_dim": _get(block, mlp),
            "head": _get(block, o_proj)}[site]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def capture(hf, ids, site, layer):
    """Activation of ``site`` at ``layer`` for one prompt: (T, d) or (T, n_heads, head_dim)."""
    box = {}
    mod = _module(hf, site, layer)

    def keep(x):  # returns None so the hook never replaces the module's value
        box["x"] = x.detach().clone()

    if site in ("head", "neuron"):
        h = mod.register_forward_pre_hook(lambda m, args: keep(args[0]))
    else:
        h = mod.register_forward_hook(lambda m, i, o: keep(_first(o)))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        h.remove()
    x = box["x"][0]
    if site == "head":
        n_heads = hf.config.num_attention_heads
        x = x.view(x.shape[0], n_heads, -1)
    return x


def last_scores(hf, ids, answers, site=None, layer=None, pos=None, value=None, head=None):
    """(probabilities, logits) of ``answers`` at the last position, optionally with one patch."""
    probs, logits = last_distribution(hf, ids, site, layer, pos, value, head)
    return probs[answers].numpy(), logits[answers].numpy()


def attention_probs(hf, ids, layer):
    """(n_heads, T, T) attention probabilities of ``layer`` (eager attention's second output)."""
    box = {}
    mod = _get(_get(hf, MODULES[hf.config.model_type][0])[layer], MODULES[hf.config.model_type][1])
    h = mod.register_forward_hook(lambda m, i, o: box.update(w=o[1].detach().clone()))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        h.remove()
    return box["w"][0]


def _with_attention_row(hf, layer, pos, row, head):
    """A context: ``layer``'s attention of head ``head`` at query ``pos`` uses probabilities
    ``row`` (T,) (``pos`` None: every query, ``row`` (T, T); ``head`` ``slice(None)``: every
    head, ``row`` (heads, T, T)), by wrapping the model file's
    eager attention function: its output is recomputed from the edited probabilities and the
    values (repeated for grouped heads)."""
    import contextlib
    import importlib

    target = _get(_get(hf, MODULES[hf.config.model_type][0])[layer], MODULES[hf.config.model_type][1])
    file = importlib.import_module(type(hf).__module__)
    orig = file.eager_attention_forward

    def patched(module, query, key, value, attention_mask, **kw):
        out, w = orig(module, query, key, value, attention_mask, **kw)
        if module is target:
            w = w.clone()
            if pos is None:
                w[0, head] = row
            else:
                w[0, head, pos] = row
            v = value if value.shape[1] == w.shape[1] else value.repeat_interleave(w.shape[1] // value.shape[1], 1)
            out = torch.matmul(w.to(v.dtype), v).transpose(1, 2).contiguous()
        return out, w

    @contextlib.contextmanager
    def ctx():
        file.eager_attention_forward = patched
        try:
            yield
        finally:
            file.eager_attention_forward = orig

    return ctx()


def last_distribution(hf, ids, site=None, layer=None, pos=None, value=None, head=None):
    """(probabilities, logits) over the whole vocabulary at the last position (float64),
    optionally with one patch (``site`` "embed" patches the token embedding's output;
    "attn_weights" gives head ``head`` the attention probabilities ``value`` at query ``pos``)."""
    if site in ("attn_weights", "attn_pattern", "attn_layer_pattern"):  # a pattern patch has pos None
        with _with_attention_row(hf, layer, pos, value, head):
            return last_distribution(hf, ids)
    handle = None
    if site == "head":
        n_heads = hf.config.num_attention_heads

        def pre(m, args):
            x = args[0].clone()
            x.view(x.shape[0], x.shape[1], n_heads, -1)[0, pos, head] = value
            return (x,) + tuple(args[1:])

        handle = _module(hf, site, layer).register_forward_pre_hook(pre)
    elif site == "neuron":
        def pre_neuron(m, args):
            x = args[0].clone()
            x[0, pos, head] = value
            return (x,) + tuple(args[1:])

        handle = _module(hf, site, layer).register_forward_pre_hook(pre_neuron)
    elif site in ("embed_dim", "mlp_dim"):  # one dimension of the module's output
        def post_dim(m, i, o):
            t = _first(o).clone()
            t[0, pos, head] = value
            return (t,) + tuple(o[1:]) if isinstance(o, tuple) else t

        handle = _module(hf, site, layer).register_forward_hook(post_dim)
    elif site is not None:
        def post(m, i, o):
            t = _first(o).clone()
            t[0, pos] = value
            return (t,) + tuple(o[1:]) if isinstance(o, tuple) else t

        handle = _module(hf, site, layer).register_forward_hook(post)
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        if handle is not None:
            handle.remove()
    return torch.softmax(logits, -1), logits


def logit_scale(hf, tok, pairs) -> float:
    """The largest |logit| of the clean runs at the last position: what float32 noise scales with."""
    with torch.no_grad():
        return max(float(hf(torch.tensor([tok(t)["input_ids"]])).logits[0, -1].abs().max())
                   for p in pairs for t in (p.base, p.source))


def ie(p, p_star):
    """Stolfo et al. 2023 indirect effect from (P(r1), P(r2)) clean and patched."""
    return 0.5 * ((p_star[1] - p[1]) / p[1] + (p[0] - p_star[0]) / p_star[0])


def reference_patch(hf, tokenizer, pairs, sites, positions, metric, n_heads):
    """{site: array (prompt, layer, position[, head])} computed one patch at a time."""
    L = hf.config.num_hidden_layers
    base_ids = [tokenizer(p.base)["input_ids"] for p in pairs]
    t_max = max(map(len, base_ids))
    n_pos = t_max if positions == "all" else 1
    out = {s: np.full((len(pairs), L, n_pos) + ((n_heads,) if s == "head" else ()), np.nan) for s in sites}
    for (site, i, layer, k, h), (p, lg, ps, ls) in _patched_scores(hf, tokenizer, pairs, sites, positions,
                                                                   n_heads).items():
        v = ie(p, ps) if metric == "stolfo_ie" else (ls[1] - ls[0]) - (lg[1] - lg[0])
        if h is None:
            out[site][i, layer, k] = v
        else:
            out[site][i, layer, k, h] = v
    return out


_PATCHED: dict = {}  # the same model's patches for another metric are the same forwards


def _patched_scores(hf, tokenizer, pairs, sites, positions, n_heads):
    """{(site, i, layer, k, head or None): (clean probs, clean logits, patched probs, patched
    logits)} of the two answers, one plain forward per patch; kept per model weights and pairs."""
    key = (hf.config._name_or_path, id(hf) if not hf.config._name_or_path else None, tuple(sites), positions, n_heads,
           tuple((p.base, p.source, p.base_answer, p.source_answer) for p in pairs))
    if key in _PATCHED:
        return _PATCHED[key]
    L = hf.config.num_hidden_layers
    got = {}
    for i, pair in enumerate(pairs):
        b = tokenizer(pair.base)["input_ids"]
        s_ids = tokenizer(pair.source)["input_ids"]
        ans = [tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        p, lg = last_scores(hf, b, ans)
        pos_list = range(len(b)) if positions == "all" else [len(b) - 1]
        for site in sites:
            for layer in range(L):
                src = capture(hf, s_ids, site, layer)
                for j, pos in enumerate(pos_list):
                    for h in (range(n_heads) if site == "head" else [None]):
                        val = src[pos, h] if h is not None else src[pos]
                        got[(site, i, layer, j if positions == "all" else 0, h)] = \
                            (p, lg) + tuple(last_scores(hf, b, ans, site, layer, pos, val, h))
    _PATCHED[key] = got
    return got




def reference_attribution(hf, tokenizer, pairs, sites, metric, ig_steps=1):
    """{site: array (prompt, layer, T[, head])}: (source − base activation) · gradient, one pair
    at a time with autograd and hooks. ``ig_steps`` = m > 1 averages the gradient over m
    separate runs whose token embeddings are base + α(source − base), α = (k + ½)/m."""
    L = hf.config.num_hidden_layers
    n_heads = hf.config.num_attention_heads
    t_max = max(len(tokenizer(p.base)["input_ids"]) for p in pairs)
    out = {}
    for i, pair in enumerate(pairs):
        b, s_ids = tokenizer(pair.base)["input_ids"], tokenizer(pair.source)["input_ids"]
        r1, r2 = (tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer))
        src = {(site, l): capture(hf, s_ids, site, l) for site in sites for l in range(L)}
        base = {(site, l): capture(hf, b, site, l) for site in sites for l in range(L)}
        alphas = [None] if ig_steps == 1 else [(k + 0.5) / ig_steps for k in range(ig_steps)]
        grads = {key: 0.0 for key in src}
        for alpha in alphas:
            kept, hooks = {}, []
            if alpha is not None:
                with torch.no_grad():
                    e_src = _get(hf, EMBEDDINGS[hf.config.model_type])(torch.tensor([s_ids]))
                hooks.append(_get(hf, EMBEDDINGS[hf.config.model_type]).register_forward_hook(
                    lambda m, i, o, a=alpha, e=e_src: o + a * (e - o)))
            for site in sites:
                for l in range(L):
                    def keep(x, key=(site, l)):
                        x.retain_grad()
                        kept[key] = x
                    mod = _module(hf, site, l)
                    if site == "head":
                        hooks.append(mod.register_forward_pre_hook(lambda m, args, f=keep: f(args[0])))
                    else:
                        hooks.append(mod.register_forward_hook(lambda m, i_, o, f=keep: f(_first(o))))
            try:
                logits = hf(torch.tensor([b])).logits[0, -1].double()
            finally:
                for h in hooks:
                    h.remove()
            if metric == "logit_diff":
                obj = logits[r2] - logits[r1]
            else:  # stolfo_ie linearised: ½ d[log P(r2) − log P(r1)]
                lp = torch.log_softmax(logits, -1)
                obj = 0.5 * (lp[r2] - lp[r1])
            obj.backward()
            for key, x in kept.items():
                g = x.grad[0].detach()
                grads[key] = grads[key] + g.view(g.shape[0], n_heads, -1) / len(alphas) if key[0] == "head" \
                    else grads[key] + g / len(alphas)
            hf.zero_grad()
        for (site, l), g in grads.items():
            val = ((src[(site, l)] - base[(site, l)]) * g).sum(-1).numpy()
            arr = out.setdefault(site, np.full((len(pairs), L, t_max) + val.shape[1:], np.nan))
            arr[i, l, : len(val)] = val
    return out


def reference_scores(hf, tokenizer, pairs, sites, positions, layers=None, units=None):
    """Per pair: the clean base and source runs and every single patch, one forward each
    (on ``layers`` only, when given: a neuron site costs one forward per unit; on the unit
    indices ``units`` only, when given).

    Returns (clean, patched): ``clean[i]`` = {"base": (probs, logits, top), "source": (...)},
    probs and logits of [r1, r2], top = the most probable token id and the gap between the
    two largest logits; ``patched[(site, i, layer, k)]`` the same for the patched base run
    (layer -1 for "embed", k the position index of the result)."""
    layers = range(hf.config.num_hidden_layers) if layers is None else layers
    clean, patched = [], {}

    def scores(ids, ans, *patch):
        probs, logits = last_distribution(hf, ids, *patch)
        top2 = torch.topk(logits, 2).values
        return probs[ans].numpy(), logits[ans].numpy(), int(logits.argmax()), float(top2[0] - top2[1])

    for i, pair in enumerate(pairs):
        b, s_ids = tokenizer(pair.base)["input_ids"], tokenizer(pair.source)["input_ids"]
        ans = [tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        clean.append({"base": scores(b, ans), "source": scores(s_ids, ans)})
        pos_list = range(len(b)) if positions == "all" else [len(b) - 1]
        for site in sites:
            for layer in ([-1] if site in ("embed", "embed_dim") else layers):
                if site == "attn_weights":  # (heads, T, T): key (site, i, layer, k, head)
                    src = attention_probs(hf, s_ids, layer)
                    for k, pos in enumerate(pos_list):
                        for h in range(src.shape[0]):
                            patched[(site, i, layer, k, h)] = scores(b, ans, site, layer, pos, src[h, pos], h)
                    continue
                if site == "attn_pattern":  # the whole pattern; key (site, i, layer, k of the last token, head)
                    src = attention_probs(hf, s_ids, layer)
                    for h in range(src.shape[0]):
                        patched[(site, i, layer, len(pos_list) - 1, h)] = scores(b, ans, site, layer, None, src[h], h)
                    continue
                if site == "attn_layer_pattern":  # every head's whole pattern; key (site, i, layer, k of the last)
                    src = attention_probs(hf, s_ids, layer)
                    patched[(site, i, layer, len(pos_list) - 1)] = scores(b, ans, site, layer, None, src, slice(None))
                    continue
                src = capture(hf, s_ids, site, layer)
                for k, pos in enumerate(pos_list):
                    if site in ("neuron", "embed_dim", "mlp_dim"):  # one patch per unit: key (site, i, layer, k, unit)
                        for u in (range(src.shape[-1]) if units is None else units):
                            patched[(site, i, layer, k, u)] = scores(b, ans, site, layer, pos, src[pos, u], u)
                    else:
                        patched[(site, i, layer, k)] = scores(b, ans, site, layer, pos, src[pos])
    return clean, patched
