"""Patching engine v2 (packed suffix rows) against engine v1 (whole copies), site by site.

Both engines compute the same patched runs; v2 computes only the rows a patch can change
(``nnsight_reasoning/backend/packed.py``). The oracle tests (test_patching, test_effects)
check v2, the default, against plain PyTorch hooks; these check that it equals v1 on every
site, both position modes and several architectures (absolute positions, rotary, parallel
residual, grouped key/value heads), on prompt groups of different lengths, and that it is
really the engine that ran.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning import backend
from nnsight_reasoning.backend import graph, packed
from nnsight_reasoning.sites import SITES

from .reference import logit_scale
from .test_patching import _hf


def _pairs(model):
    # the default templates: prompts of 5, 8 and 11 tokens, so the sweep runs three length groups
    return nr.tasks.arithmetic(n_prompts=4, seed=2, tokenizer=model.tokenizer)


def _both(model, pairs, sites, positions, monkeypatch):
    plans = []
    real = packed.plan
    monkeypatch.setattr(packed, "plan", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    out = {}
    for name in ("v1", "v2"):
        with backend.engine(name):
            out[name] = nr.patch(model, pairs, sites=sites, positions=positions, metric="logit_diff", batch_size=40,
                                 progress=False)
    return out["v1"], out["v2"], plans


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "gpt_neox", "llama", "gptj"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_v2_equals_v1_on_every_site(embedded_model, tiny_model_dir, model_type, positions, monkeypatch):
    path = nr.models.model_info(embedded_model).path if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(path)
    pairs = _pairs(model)
    # the embedded model's 512 neurons and 4 · 128 MLP output dimensions are 2,500 copies a pair at
    # the last position (20,000 at every position): the tiny models, gpt_neox among them (the embedded
    # model's architecture), cover the unit sites at both
    sites = [s for s in SITES if not (model_type == "embedded" and s in ("neuron", "mlp_dim"))]
    v1, v2, plans = _both(model, pairs, sites, positions, monkeypatch)
    assert plans, "engine v2 did not run"
    assert v2.attrs["n_forward_passes"] == v1.attrs["n_forward_passes"]  # the same passes, so the same remote requests
    assert len(set(v2.n_tokens.values.tolist())) > 1  # several length groups
    # v1 and v2 reduce in different orders (other batch shapes, other attention widths): each
    # float32 logit may move by a few ulps of the largest logit; a logit difference is four
    # of them (as tests/test_patching.py's bound). A wrong row, column or mask is O(1).
    tol = 32 * np.finfo(np.float32).eps * max(1.0, logit_scale(_hf(path), model.tokenizer, pairs))
    for name, a in v1.data_vars.items():
        a, b = a.values, v2[name].values
        if a.dtype.kind == "f":
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            m = ~np.isnan(a)
            err = float(np.max(np.abs(a[m] - b[m]), initial=0.0))
            assert err < tol, f"{name}: max difference {err:.2e} (float32 bound {tol:.2e})"
        elif name.endswith("_prediction"):  # the top token may only flip where two logits tie within noise
            assert np.mean(a == b) > 0.99, name
        else:
            assert np.array_equal(a, b), name


def test_layout_computes_the_minimal_rows(embedded_model):
    """A last-position sweep (the paper's default): every copy is one column per layer from its
    patch up, the source rows ride beside the bases (no padding), and the layer widths add
    up to the minimal work: inputs at every layer plus, per copy, the layers from its own."""
    n, t, n_layers = 6, 9, 4
    ids = torch.randint(5, 100, (2 * n, t), generator=torch.Generator().manual_seed(0))
    patches = [backend.Patch(site, layer, torch.arange(n, 2 * n), torch.arange(n), torch.full((n,), t - 1))
               for site in ("attn", "mlp", "resid") for layer in range(n_layers)]
    layers = list(range(n_layers))
    plan = packed.plan(ids, patches, layers, {}, d_model=128)
    assert plan.ids.shape[0] == n  # one packed row per base row: [base | source | its copies]
    assert plan.n_seg == 2 * t and not (plan.seq < -1).any()  # no dummy column anywhere
    computed = sum(step[1] for step in plan.steps) * plan.ids.shape[0]
    # resid copies join after their layer: (n_layers - l - 1) layers each
    minimal = 2 * n * t * n_layers + n * sum(2 * (n_layers - l) + (n_layers - l - 1) for l in layers)
    assert computed == minimal
    # each output row's last column holds its own token at the prompt's last position
    assert torch.equal(plan.ids[plan.out_rows, plan.out_cols], ids[plan.origin, t - 1])
    assert torch.equal(plan.pos[plan.out_rows, plan.out_cols], torch.full((len(plan.origin),), t - 1))


def test_wide_sweeps_split_into_balanced_duplicate_rows():
    """All positions of a long prompt: a base row's copies exceed one row's width budget, so
    they spread over duplicates of the base row, balanced so that the batch computes little
    beyond the minimal work (every input row at every layer, each copy's suffix from its layer).
    At a real model's width (d_model 768, as Pythia-160m): the width budget holds many copies
    per row, so rows grow alike at every join point (see packed.plan)."""
    n, t, n_layers = 2, 12, 3
    ids = torch.randint(5, 100, (2 * n, t), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(t).repeat(n)
    rows = torch.arange(n, 2 * n).repeat_interleave(t)
    patches = [backend.Patch("mlp", layer, rows, rows - n, pos) for layer in range(n_layers)]
    plan = packed.plan(ids, patches, list(range(n_layers)), {}, d_model=768)
    carriers = sum(any(torch.equal(plan.ids[r, :t], ids[i]) for i in range(n, 2 * n)) for r in range(len(plan.ids)))
    assert carriers > n  # duplicates of the base rows exist
    copy_cols = (plan.seq >= 2 * n).sum(1)  # copies are sequences numbered above the inputs
    assert int(copy_cols.max()) <= packed.width_budget(t, 768)  # the budget (which may be overrun by one copy)
    computed = sum(step[1] for step in plan.steps) * plan.ids.shape[0]
    minimal = 2 * n * t * n_layers + n * sum((t - p) * (n_layers - layer) for p in range(t) for layer in range(n_layers))
    assert computed < 1.2 * minimal, (computed, minimal)  # measured: 1.13
    # every packed row starts with a base row (its own or a duplicate's) or a source row
    for r in range(plan.ids.shape[0]):
        assert any(torch.equal(plan.ids[r, :t], ids[i]) for i in range(2 * n))


def test_v1_is_used_where_v2_cannot_run(tiny_model_dir, monkeypatch):
    """Gemma-2's layers take two masks (global and sliding-window): v2 cannot give them one
    packed mask, so the sweep runs on v1 and still matches the hooks (test_patching)."""
    model = nr.load_model(tiny_model_dir("gemma2"))
    called = []
    monkeypatch.setattr(packed, "plan", lambda *a, **k: called.append(1))
    ds = nr.patch(model, _pairs(model), sites=["mlp"], positions="last", progress=False)
    assert not called and np.isfinite(ds.mlp.values).any()
    with pytest.raises(ValueError, match="unknown patching engine"):
        with backend.engine("v3"):
            pass


def _edge_rows(model, task):
    """(2p, T) ids (corrupted rows, then clean ones) and (2p, 2) answers of the pairs of the most
    common length: IOI pairs differ only at the second subject (a long shared prefix), two-shot
    arithmetic pairs from the query's first operand, zero-shot ones from the first token."""
    tok = model.tokenizer
    pairs = (nr.tasks.ioi(n_prompts=8, seed=1, tokenizer=tok) if task == "ioi"
             else nr.tasks.arithmetic(n_prompts=8, seed=1, tokenizer=tok, n_shots=task == "arithmetic_2shot" and 2))
    rows = [(tok(p.base)["input_ids"], tok(p.source)["input_ids"],
             [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (p.base_answer, p.source_answer)])
            for p in pairs]
    t = max({len(r[0]) for r in rows}, key=[len(r[0]) for r in rows].count)
    rows = [r for r in rows if len(r[0]) == len(r[1]) == t]
    ids = torch.tensor([r[1] for r in rows] + [r[0] for r in rows])
    return ids, torch.tensor([r[2] for r in rows] * 2)


def _cuts(valid, n_layers, n_heads, n_single=0):
    """Circuits of every kind: random cuts of three densities, nothing cut, everything cut,
    single edges into a first-layer head, a last-layer MLP and the logits (so slots join at
    layer 0, at the last layer and after it), and ``n_single`` random single edges."""
    gen = torch.Generator().manual_seed(0)
    cuts = [valid & (torch.rand(valid.shape, generator=gen) < q) for q in (0.05, 0.3, 0.6)]
    cuts += [torch.zeros_like(valid), valid.clone()]
    mlp_last = (n_layers - 1) * (n_heads + 1) + n_heads
    for v in (1, mlp_last, valid.shape[1] - 1):
        one = torch.zeros_like(valid)
        one[torch.nonzero(valid[:, v])[-1], v] = True  # the latest upstream node feeding v
        cuts.append(one)
    edges = torch.nonzero(valid)
    for i in torch.randperm(len(edges), generator=gen)[:n_single]:
        one = torch.zeros_like(valid)
        one[tuple(edges[i])] = True
        cuts.append(one)
    return torch.stack(cuts)


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "gpt_neox", "llama"])
@pytest.mark.parametrize("task", ["ioi", "arithmetic_2shot"])
def test_v2_edge_patching_equals_v1(embedded_model, tiny_model_dir, model_type, task, monkeypatch):
    """Edge-patched runs (circuit faithfulness, exact edge patching): v2 computes a circuit only
    from the pairs' first differing token and from the layer of its first cut edge up; with
    several pairs, and more circuits than one row holds (chunks of duplicate rows)."""
    path = nr.models.model_info(embedded_model).path if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(path)
    ids, answers = _edge_rows(model, task)
    p = len(ids) // 2
    assert p >= 2
    n_layers, n_heads, parallel = graph.graph_shape(model)
    valid = graph.valid_edges(n_layers, n_heads, parallel)
    removed = _cuts(valid, n_layers, n_heads, n_single=40)
    plans = []
    real = packed.plan_edges
    monkeypatch.setattr(packed, "plan_edges", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    with backend.engine("v1"):
        v1 = graph.edge_patched_logits(model, ids, answers, removed)
    v2 = graph.edge_patched_logits(model, ids, answers, removed)  # the default engine
    assert len(plans) == 1
    plan = plans[0]
    assert plan.cost < packed.edge_cost_v1(p, len(removed), ids.shape[1], n_layers, graph.dims(model)["d_model"])
    shared = int(torch.cumprod((ids[:p] == ids[p:]).long(), 1).sum(1).min())
    assert 0 < shared and plan.w == ids.shape[1] - shared
    assert plan.removed.shape[0] > 1  # the circuits did not fit one row: chunks of duplicate rows
    assert plan.n_at[0] < plan.removed.shape[1]  # some slots join above the first layer
    # float32: each logit may move by a few ulps of the largest logit (other batch shapes)
    tol = 32 * np.finfo(np.float32).eps * max(1.0, float(v1.abs().max()))
    assert v2.shape == v1.shape == (p + len(removed) * p, 2)
    err = float((v1 - v2).abs().max())
    assert err < tol, (err, tol)
    # nothing cut is the clean run, everything cut the corrupted one
    nothing, everything = 3, 4
    np.testing.assert_allclose(v2[p + everything * p:p + (everything + 1) * p], v2[:p], atol=tol)
    assert not torch.allclose(v2[p + nothing * p:p + (nothing + 1) * p], v2[:p], atol=1e-3)


def test_edge_layout_joins_each_circuit_where_its_cuts_begin():
    """Two pairs sharing 6 of 9 tokens; circuits cutting an edge into layer 2's MLP, nothing, and
    an edge into the logits: each gets 3 columns, joining at layer 2, after the last layer
    (twice); the work is the two prompts at every layer plus each slot from its join."""
    t, n_layers, n_heads = 9, 3, 2
    clean = torch.randint(5, 100, (2, t), generator=torch.Generator().manual_seed(0))
    corrupt = clean.clone()
    corrupt[0, 6:] += 1
    corrupt[1, 7:] += 1
    n_down = n_layers * (n_heads + 1) + 1
    removed = torch.zeros(3, 1 + n_layers * (n_heads + 1), n_down, dtype=torch.bool)
    removed[0, 0, 2 * (n_heads + 1) + n_heads] = True  # input -> m2
    removed[2, 0, n_down - 1] = True  # input -> logits
    plan = packed.plan_edges(torch.cat([corrupt, clean]), removed, n_layers, n_heads, d_model=64)
    assert plan.w == 3 and plan.removed.shape[:2] == (1, 3)
    assert plan.n_at == [0, 0, 1, 3]  # the layer-2 cut first; the others join after layer 2
    assert plan.joins[1] is None and plan.joins[2] is not None and plan.joins[3] is not None
    assert torch.equal(plan.ids[:, :t], clean) and torch.equal(plan.ids[:, t:2 * t], corrupt)
    assert torch.equal(plan.ids[:, 2 * t:], clean[:, 6:].repeat(1, 3))
    assert torch.equal(plan.pos[0], torch.cat([torch.arange(t), torch.arange(t)] + [torch.arange(6, t)] * 3))
    # outputs: the corrupted rows' last token, then circuits in the order given (slot 0: circuit 0)
    assert plan.out_cols.tolist() == [2 * t - 1] * 2 + [2 * t + 2] * 2 + [2 * t + 5] * 2 + [2 * t + 8] * 2
    assert torch.equal(plan.removed[0, 0], removed[0].float()) and torch.equal(plan.removed[0, 2], removed[2].float())
    assert plan.cost == 2 * (2 * packed.layer_cost(2 * t, 64) + packed.layer_cost(2 * t + 3, 64))
