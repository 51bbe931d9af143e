"""Cuts at a head's query, key or value input alone (EAP-IG's q/k/v edges), and path patching
built on them, against plain-PyTorch hook references (tests/reference_edges.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.backend import graph

from .reference_edges import patched_run


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def case_model(tiny_model_dir):
    from nnsight_reasoning.embedded import revision_path

    def get(name):
        path = revision_path("main") if name == "embedded" else tiny_model_dir(name)
        return nr.load_model(str(path)), _hf(path)

    return get


def _rows(tok, pairs):
    rows = []
    for pair in pairs:
        answer = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        rows.append((tok(pair.base)["input_ids"], tok(pair.source)["input_ids"], answer))
    return [r for r in rows if len(r[0]) == len(rows[0][0]) == len(r[1])][:2]


@pytest.mark.parametrize("name", ["embedded", "gpt2", "llama"])
def test_query_key_value_cuts_match_the_hook_reference(case_model, small_pairs, name):
    """Random cuts into heads' q, k and v inputs, alone and beside whole-input cuts, several
    circuits in one pass; fused (GPT-NeoX, GPT-2) and separate grouped-query (Llama) projections."""
    model, hf = case_model(name)
    n_layers, n_heads, _ = graph.graph_shape(model)
    valid = graph.valid_edges(*graph.graph_shape(model))
    n_up = valid.shape[0]
    # an edge u → a head of layer l exists where the whole-input edge does
    head_cols = torch.tensor([[l * (n_heads + 1) + h for h in range(n_heads)] for l in range(n_layers)])
    valid_qkv = valid[:, head_cols].unsqueeze(-1).expand(-1, -1, -1, 3)
    gen = torch.Generator().manual_seed(2)
    removed = torch.stack([valid & (torch.rand(valid.shape, generator=gen) < q) for q in (0.0, 0.0, 0.2)])
    removed_qkv = torch.stack([valid_qkv & (torch.rand(valid_qkv.shape, generator=gen) < q) for q in (0.3, 1.0, 0.2)])
    assert removed_qkv.shape == (3, n_up, n_layers, n_heads, 3)
    rows = _rows(model.tokenizer, small_pairs)
    p = len(rows)
    ids = torch.tensor([r[1] for r in rows] + [r[0] for r in rows])
    got = graph.edge_patched_logits(model, ids, torch.tensor([r[2] for r in rows] * 2), removed,
                                    removed_qkv=removed_qkv)
    for j, (base, source, ans) in enumerate(rows):
        lg_corr, acts_corr = patched_run(hf, source)
        np.testing.assert_allclose(got[j].numpy(), lg_corr[ans].numpy(), rtol=1e-5, atol=1e-4)
        for c in range(len(removed)):
            lg, _ = patched_run(hf, base, removed[c].numpy(), acts_corr, removed_qkv[c].numpy())
            np.testing.assert_allclose(got[p + c * p + j].numpy(), lg[ans].numpy(), rtol=1e-5, atol=1e-4)
    # cutting q, k and v of every head is cutting the head's whole input
    all_qkv = graph.edge_patched_logits(model, ids, torch.tensor([r[2] for r in rows] * 2),
                                        torch.zeros_like(removed[:1]), removed_qkv=valid_qkv[None])
    whole = torch.zeros_like(removed[:1])
    whole[0][:, head_cols.flatten()] = valid[:, head_cols.flatten()]
    np.testing.assert_allclose(all_qkv.numpy(), graph.edge_patched_logits(
        model, ids, torch.tensor([r[2] for r in rows] * 2), whole).numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,receivers,kind,position", [("embedded", ["a3.0", "a3.2"], "q", "last"),
                                                          ("llama", ["a1.1"], "k", "all"),
                                                          ("gpt2", ["m1", "logits"], "all", "last")])
def test_path_patching_matches_the_hook_reference(case_model, name, receivers, kind, position):
    """Every sender's effect on the receivers' (q / k / whole) input, against the hook
    reference run with that sender's edges into the receivers cut."""
    from nnsight_reasoning.experiments.circuit import node_table

    model, hf = case_model(name)
    pairs = nr.tasks.ioi(3, corruption="swap", tokenizer=model.tokenizer)
    ds = nr.path_patching(model, pairs, receivers=receivers, receiver_input=kind, position=position)
    nr.testing.assert_valid_result(ds)
    n_layers, n_heads, _ = graph.graph_shape(model)
    valid = graph.valid_edges(n_layers, n_heads, graph.graph_shape(model)[2]).numpy()
    up, down = node_table(n_layers, n_heads)
    recv = [down["name"].index(r) for r in receivers]
    assert list(ds.sender.values) == [u for i, u in enumerate(up["name"]) if valid[i, recv].any()]
    tok = model.tokenizer
    for j, pair in enumerate(pairs):
        base, source = tok(pair.base)["input_ids"], tok(pair.source)["input_ids"]
        ans = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        lg_clean, _ = patched_run(hf, base)
        _, acts_corr = patched_run(hf, source)
        clean = float(lg_clean[ans[0]] - lg_clean[ans[1]])
        np.testing.assert_allclose(ds.clean_logit_diff.values[j], clean, rtol=1e-5, atol=1e-4)
        for s in ds.sender.values:
            u = up["name"].index(s)
            removed = np.zeros(valid.shape, bool)
            removed_qkv = np.zeros((len(up["name"]), n_layers, n_heads, 3), bool)
            for v in recv:
                if not valid[u, v]:
                    continue
                if kind == "all":
                    removed[u, v] = True
                else:
                    removed_qkv[u, down["layer"][v], down["head"][v], "qkv".index(kind)] = True
            lg, _ = patched_run(hf, base, removed, acts_corr, removed_qkv, last_only=position == "last")
            np.testing.assert_allclose(ds.effect.sel(sender=s).values[j], float(lg[ans[0]] - lg[ans[1]]) - clean,
                                       rtol=1e-5, atol=1e-4)


def test_path_patching_to_the_logits_is_exact_edge_patching(embedded_model):
    pairs = nr.tasks.ioi(4, tokenizer=embedded_model.tokenizer)
    pp = nr.path_patching(embedded_model, pairs, receivers="logits")
    exact = nr.edge_patching(embedded_model, pairs)
    np.testing.assert_allclose(pp.effect.mean("prompt").values,
                               exact.score.sel(upstream=pp.sender.values, downstream="logits").values,
                               rtol=1e-6, atol=1e-6)
    grid = nr.experiments.path_patching.grid(pp)
    head = pp.sel(sender="a2.1")
    assert grid.sel(layer=2, head=1) == head.relative_effect
    np.testing.assert_allclose(float(head.relative_effect),
                               (head.patched_logit_diff.mean() - pp.clean_logit_diff.mean()) / pp.clean_logit_diff.mean())


def test_path_patching_bad_input(embedded_model, small_pairs):
    from nnsight_reasoning.errors import UsageError

    for kwargs, msg in [(dict(receivers="a9.0"), "unknown receiver 'a9.0'"),
                        (dict(receivers=""), "at least one receiver"),
                        (dict(receivers="m2", receiver_input="q"), "every receiver must be a head"),
                        (dict(receivers="a1.0", receiver_input="z"), "receiver_input must be one of"),
                        (dict(receivers="a1.0", position="first"), "position must be one of"),
                        (dict(receivers="a1.0", senders=["a2.0"]), "reach no receiver"),
                        (dict(receivers="a1.0,a1.0"), "named twice")]:
        with pytest.raises(UsageError, match=msg):
            nr.path_patching(embedded_model, small_pairs, **kwargs)


# --------------------------------------------------------------------------- IOI components
def _unscaled(norm, x):
    """γ ⊙ N(x) + β from the norm module itself: its output with the division by its scale undone."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None)
    if isinstance(norm, torch.nn.LayerNorm):
        sd = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        return (norm(x) - norm.bias) * sd + norm.bias
    rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return norm(x) * rms


@pytest.mark.parametrize("name", ["embedded", "gpt2", "llama"])
def test_copy_top_tokens_match_the_modules_run_one_head_at_a_time(case_model, name):
    from .reference_edges import NORMS, QKV, _get

    model, hf = case_model(name)
    pairs = nr.tasks.ioi(2, tokenizer=model.tokenizer)
    ids = torch.tensor([model.tokenizer(p.base)["input_ids"] for p in pairs][:1])
    pos = torch.tensor([[1, 3, ids.shape[1] - 2]])
    got = graph.copy_top_tokens(model, ids, pos, k=5)
    layers_path, ln_a, attn_p, o_p, _, _, final_p, _ = NORMS[hf.config.model_type]
    n_heads = hf.config.num_attention_heads
    hd = hf.config.hidden_size // n_heads
    with torch.no_grad():
        x = hf(ids, output_hidden_states=True).hidden_states[1][0, pos[0]]  # (3, d) after layer 0
        for li, block in enumerate(_get(hf, layers_path)):
            xn = _unscaled(_get(block, ln_a), x)
            names, cols = QKV[hf.config.model_type]
            proj = _get(_get(block, attn_p), names[2])
            o_proj = _get(block, o_p)
            for h in range(n_heads):
                sl = cols(hd, h, n_heads)[2]
                if hf.config.model_type == "llama":  # value head h // group
                    group = n_heads // hf.config.num_key_value_heads
                    sl = slice((h // group) * hd, (h // group + 1) * hd)
                v = proj(xn)[:, sl]
                z = torch.zeros(3, n_heads * hd)
                z[:, h * hd:(h + 1) * hd] = v
                o = o_proj(z) - o_proj(torch.zeros_like(z))
                logits = hf.lm_head(_unscaled(_get(hf, final_p), o))  # (3, V)
                kth = logits.topk(5, -1).values[:, -1:]
                mine = torch.gather(logits, 1, got[li, h, 0])
                assert (mine >= kth - 1e-4).all(), (li, h)


def test_ioi_components_match_the_hook_reference(case_model):
    model, hf = case_model("embedded")
    pairs = nr.tasks.ioi(3, corruption="swap", tokenizer=model.tokenizer)
    ds = nr.ioi_components(model, pairs, copy_threshold=10.0)
    nr.testing.assert_valid_result(ds)
    tok = model.tokenizer
    n_layers, n_heads, _ = graph.graph_shape(model)
    # attention from END and the copy score's counts
    hits = np.zeros((n_layers, n_heads))
    att = np.zeros((n_layers, n_heads, 3))
    rows = []
    for pair in pairs:
        ids = tok(pair.base)["input_ids"]
        io, s = (tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer))
        pos = [ids.index(io)] + [k for k, t in enumerate(ids) if t == s]
        rows.append((ids, tok(pair.source)["input_ids"], [io, s], pos))
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
        att += np.stack([a[0, :, -1, pos].numpy() for a in out.attentions])
        top = graph.copy_top_tokens(model, torch.tensor([ids]), torch.tensor([pos]), 5)[:, :, 0]  # (L, H, 3, 5)
        hits += (top == torch.tensor([io, s, s])[None, None, :, None]).any(-1).sum(-1).numpy()
    np.testing.assert_allclose(ds.attention.values, att / len(pairs), atol=1e-5)
    np.testing.assert_allclose(ds.copy_score.values, 100 * hits / (3 * len(pairs)))
    a = ds.attention.values
    nmh = (ds.copy_score.values > 10) & (a[..., 0] > a[..., 1]) & (a[..., 0] > a[..., 2])
    np.testing.assert_array_equal(ds.name_mover.values, nmh)
    assert nmh.any(), "the embedded model has name-mover-like heads by this rule"
    # S-inhibition: every candidate path-patched alone into all name movers' queries at END
    valid = graph.valid_edges(n_layers, n_heads, graph.graph_shape(model)[2]).numpy()
    from nnsight_reasoning.experiments.circuit import node_table

    up, down = node_table(n_layers, n_heads)
    movers = [(int(l), int(h)) for l, h in zip(*np.nonzero(nmh))]
    cols = [down["name"].index(f"a{l}.{h}") for l, h in movers]
    ref_clean, ref_attn = [], []
    for ids, source, ans, pos in rows:
        lg, acts = patched_run(hf, ids)
        ref_clean.append(float(lg[ans[0]] - lg[ans[1]]))
        ref_attn.append(np.mean([acts[f"pattern a{l}.{h}"][pos].numpy() for l, h in movers], 0))
    np.testing.assert_allclose(ds.clean_logit_diff.values, ref_clean, rtol=1e-5, atol=1e-4)
    checked = 0
    for u, name in enumerate(up["name"]):
        if up["kind"][u] != "head":
            continue
        value = ds.s2i_logit_diff_delta.sel(layer=up["layer"][u], head=up["head"][u]).values
        if not valid[u, cols].any():
            assert np.isnan(value)
            continue
        removed_qkv = np.zeros((len(up["name"]), n_layers, n_heads, 3), bool)
        for (l, h), v in zip(movers, cols):
            removed_qkv[u, l, h, 0] = valid[u, v]
        diffs, attns = [], []
        for ids, source, ans, pos in rows:
            _, corrupt = patched_run(hf, source)
            lg, acts = patched_run(hf, ids, np.zeros(valid.shape, bool), corrupt, removed_qkv, last_only=True)
            diffs.append(float(lg[ans[0]] - lg[ans[1]]))
            attns.append(np.mean([acts[f"pattern a{l}.{h}"][pos].numpy() for l, h in movers], 0))
        clean = np.mean(ref_clean)
        np.testing.assert_allclose(value, (np.mean(diffs) - clean) / clean, atol=1e-5)
        np.testing.assert_allclose(ds.s2i_attention_delta.sel(layer=up["layer"][u], head=up["head"][u]).values,
                                   (np.mean(attns, 0) - np.mean(ref_attn, 0)) / np.mean(ref_attn, 0), atol=1e-4)
        checked += 1
    assert checked >= 4
    d, ad = ds.s2i_logit_diff_delta.values, ds.s2i_attention_delta.values
    np.testing.assert_array_equal(ds.s_inhibition.values, (d < 0) & (ad[..., 0] < 0) & (ad[..., 1] > 0))


def test_ioi_components_with_a_circuit_take_its_heads_as_candidates(embedded_model):
    from nnsight_reasoning.experiments.ioi_components import circuit_heads

    pairs = nr.tasks.ioi(4, corruption="swap", tokenizer=embedded_model.tokenizer)
    circ = nr.circuit(embedded_model, nr.tasks.ioi(8, tokenizer=embedded_model.tokenizer), ig_steps=1, sizes=(12,))
    edges = circ.in_circuit.sel(size=12)
    ds = nr.ioi_components(embedded_model, pairs, circuit=edges)
    into_logits = {(int(l), int(h)) for l, h, k, on in zip(edges.upstream_layer.values, edges.upstream_head.values,
                                                          edges.upstream_kind.values, edges.sel(downstream="logits").values)
                   if k == "head" and on}
    movers = {(int(l), int(h)) for l, h in zip(*np.nonzero(ds.name_mover.values))}
    assert movers <= into_logits
    heads = circuit_heads(edges)
    touched = {(int(l), int(h)) for l, h in zip(*np.nonzero(heads.values))}
    assert into_logits <= touched and touched
    # the S-inhibition candidates are heads with a circuit edge into a name mover
    cands = {(int(l), int(h)) for l, h in zip(*np.nonzero(~np.isnan(ds.s2i_logit_diff_delta.values)))}
    assert cands <= touched


def test_ioi_components_bad_input(embedded_model, small_pairs, monkeypatch):
    from nnsight_reasoning.errors import UsageError

    monkeypatch.setenv("NDIF_API_KEY", "not-a-key")  # refused before any request is made

    pairs = nr.tasks.ioi(2, corruption="swap", tokenizer=embedded_model.tokenizer)
    with pytest.raises(UsageError, match="needs IOI pairs"):
        nr.ioi_components(embedded_model, small_pairs)
    with pytest.raises(UsageError, match="top_k must be"):
        nr.ioi_components(embedded_model, pairs, top_k=0)
    with pytest.raises(UsageError, match="circuit must be"):
        nr.ioi_components(embedded_model, pairs, circuit=np.ones((3, 3)))
    with pytest.raises(UsageError, match="NDIF does not send"):
        nr.ioi_components(embedded_model, pairs, remote="https://ndif.example")
    with pytest.raises(UsageError, match="NDIF does not send"):
        graph.copy_top_tokens(embedded_model, torch.tensor([[1, 2]]), torch.tensor([[0]]), remote="https://ndif.example")
