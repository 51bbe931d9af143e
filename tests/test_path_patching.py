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
