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
