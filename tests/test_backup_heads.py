"""Backup name movers (Tigges et al.'s utils/backup_analysis.py) against a plain-PyTorch hook
reference: the name movers zeroed by a pre-hook on the output projection, each head's output
made by the projection's weight slice, the direct effect through the final norm's scale read
from that run's own norm input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError

from .reference_edges import NORMS, _get


def _reference(hf, ids, io, s, ablated):
    """(logit difference, (L, H) direct effects on logit(io) − logit(s)) of one prompt at its last
    position, with the heads in ``ablated`` ((layer, head) pairs) zeroed."""
    layers_path, _, _, o_path, _, _, final_path, _ = NORMS[hf.config.model_type]
    n_heads = hf.config.num_attention_heads
    hd = hf.config.hidden_size // n_heads
    blocks = _get(hf, layers_path)
    final = _get(hf, final_path)
    z_in, f_in, hooks = {}, {}, []
    for li, block in enumerate(blocks):
        def pre(mod, args, li=li):
            z = args[0].clone()
            for layer, h in ablated:
                if layer == li:
                    z[..., h * hd:(h + 1) * hd] = 0
            z_in[li] = z[0, -1]
            return (z,) + tuple(args[1:])
        hooks.append(_get(block, o_path).register_forward_pre_hook(pre))
    def read_final(mod, args):
        f_in["x"] = args[0][0, -1].double()  # returns None: the input is left as it is
    hooks.append(final.register_forward_pre_hook(read_final))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        for h in hooks:
            h.remove()
    layer_norm = isinstance(final, torch.nn.LayerNorm)
    x = f_in["x"] - f_in["x"].mean() if layer_norm else f_in["x"]
    scale = (x.pow(2).mean() + final.eps if layer_norm else x.pow(2).mean() + final.variance_epsilon).sqrt()
    w_u = hf.get_output_embeddings().weight.detach().double()
    direction = final.weight.detach().double() * (w_u[io] - w_u[s])
    effects = np.zeros((len(blocks), n_heads))
    for li, block in enumerate(blocks):
        o_proj = _get(block, o_path)
        w = o_proj.weight.detach().double()
        for h in range(n_heads):
            z = z_in[li][h * hd:(h + 1) * hd].double()
            o = z @ w[h * hd:(h + 1) * hd] if not isinstance(o_proj, torch.nn.Linear) else w[:, h * hd:(h + 1) * hd] @ z
            if layer_norm:
                o = o - o.mean()
            effects[li, h] = float(o @ direction / scale)
    return float(logits[io] - logits[s]), effects


@pytest.mark.parametrize("name,heads", [("embedded", "a1.0,a1.3"), ("gpt2", "a0.1"), ("llama", "a0.0,a1.1")])
def test_backup_heads_match_the_hook_reference(case_model, name, heads):
    model, hf = case_model(name)
    pairs = nr.tasks.ioi(5, tokenizer=model.tokenizer)
    ds = nr.backup_heads(model, pairs, heads=heads, progress=False)
    nr.testing.assert_valid_result(ds)
    ablated = [(int(h[1:].split(".")[0]), int(h.split(".")[1])) for h in heads.split(",")]
    mask = np.zeros(ds.name_mover.shape, bool)
    mask[tuple(np.array(ablated).T)] = True
    np.testing.assert_array_equal(ds.name_mover.values, mask)
    tok = model.tokenizer
    ref = {c: ([], []) for c in ("clean", "ablated")}
    for pair in pairs:
        ids = tok(pair.base)["input_ids"]
        io, s = (tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer))
        for c, heads_off in (("clean", []), ("ablated", ablated)):
            ld, eff = _reference(hf, ids, io, s, heads_off)
            ref[c][0].append(ld)
            ref[c][1].append(eff)
    for c in ("clean", "ablated"):
        np.testing.assert_allclose(ds.logit_diff.sel(condition=c).values, ref[c][0], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ds.direct_effect.sel(condition=c).values, np.stack(ref[c][1]), rtol=1e-4,
                                   atol=1e-4)
    backup = (np.stack(ref["ablated"][1]) - np.stack(ref["clean"][1])).mean(0)
    backup[mask] = np.nan
    np.testing.assert_allclose(ds.backup.values, backup, rtol=1e-4, atol=1e-4)
    assert float(ds.summed_backup) == pytest.approx(np.nansum(backup), abs=1e-3)
    # the ablation moved the logit difference: a test of an ablation that did nothing could not fail
    assert abs(np.mean(ref["ablated"][0]) - np.mean(ref["clean"][0])) > 1e-3


def test_backup_heads_ablate_the_candidates_at_the_copy_threshold(embedded_model):
    pairs = nr.tasks.ioi(8, tokenizer=embedded_model.tokenizer)
    comp = nr.ioi_components(embedded_model, nr.tasks.ioi(8, corruption="swap", tokenizer=embedded_model.tokenizer),
                             progress=False)
    copy = comp.copy_score.values
    threshold = float(np.sort(copy.ravel())[-2])  # the two highest copy scores (ties: more) pass
    ds = nr.backup_heads(embedded_model, pairs, copy_threshold=threshold, progress=False)
    np.testing.assert_allclose(ds.copy_score.values, copy)  # the same copy score as ioi_components'
    np.testing.assert_array_equal(ds.name_mover.values, copy >= threshold)
    assert 2 <= ds.name_mover.values.sum() < copy.size and ds.attrs["ablation"] == "copy score"
    none = nr.backup_heads(embedded_model, pairs, copy_threshold=100.0, progress=False)
    assert not none.name_mover.values.any()  # nothing ablated: both runs are the clean run
    np.testing.assert_allclose(none.logit_diff.sel(condition="ablated"), none.logit_diff.sel(condition="clean"))
    np.testing.assert_allclose(none.backup.values, 0.0, atol=1e-9)


def test_backup_heads_with_a_circuit(embedded_model):
    pairs = nr.tasks.ioi(6, tokenizer=embedded_model.tokenizer)
    circ = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=(40,), progress=False)
    edges = circ.in_circuit.sel(size=40)
    ds = nr.backup_heads(embedded_model, pairs, circuit=edges, copy_threshold=0.0, progress=False)
    nr.testing.assert_valid_result(ds)
    into_logits = np.zeros(ds.candidate.shape, bool)
    sends = np.zeros(ds.candidate.shape, bool)
    for l, h, k, row in zip(edges.upstream_layer.values, edges.upstream_head.values, edges.upstream_kind.values,
                            edges.values):
        if k == "head":
            into_logits[int(l), int(h)] = bool(row[-1])
            sends[int(l), int(h)] = bool(row.any())
    np.testing.assert_array_equal(ds.candidate.values, into_logits)
    np.testing.assert_array_equal(ds.name_mover.values, into_logits)  # threshold 0: every candidate
    np.testing.assert_array_equal(ds.in_circuit.values, sends)
    b = ds.backup.values
    assert float(ds.summed_backup_in_circuit) == pytest.approx(np.nansum(np.where(sends, b, np.nan)), abs=1e-9)
    assert float(ds.summed_backup_outside_circuit) == pytest.approx(np.nansum(np.where(~sends, b, np.nan)), abs=1e-9)
    assert float(ds.summed_backup) == pytest.approx(float(ds.summed_backup_in_circuit) +
                                                    float(ds.summed_backup_outside_circuit), abs=1e-9)


def test_backup_heads_bad_input(embedded_model, small_pairs):
    pairs = nr.tasks.ioi(2, tokenizer=embedded_model.tokenizer)
    for kwargs, msg in [({}, "needs IOI pairs"), ({"heads": "a9.0"}, "outside this model"),
                        ({"heads": "L1H0"}, "heads are named aL.H"), ({"copy_threshold": 120}, "copy score in percent"),
                        ({"top_k": 0}, "top_k must be"), ({"circuit": np.ones((3, 3))}, "circuit must be")]:
        with pytest.raises(UsageError, match=msg):
            nr.backup_heads(embedded_model, small_pairs if not kwargs else pairs, progress=False, **kwargs)
    with pytest.raises(UsageError, match="NDIF does not send"):
        nr.backup_heads(embedded_model, pairs, remote="https://ndif.example")


def test_cli_backup_heads_over_checkpoints_and_its_figure(tmp_path, monkeypatch):
    from .clirun import in_process

    monkeypatch.chdir(tmp_path)
    res = in_process(["backup-heads", "--heads", "a1.0,a1.3", "--n-prompts", "6", "--revisions", "step1500,main",
                      "--no-progress"])
    assert res.returncode == 0, res.output
    ds = nr.load_result(tmp_path / "results" / "backup_heads_ioi_embedded_step1500-main.nc")
    nr.testing.assert_valid_result(ds)
    assert ds.backup.dims == ("checkpoint", "layer", "head") and ds.attrs["ablation"] == "given heads"
    assert "step1500: ablated a1.0, a1.3: logit difference" in res.output
    clean = ds.logit_diff.sel(condition="clean").mean("prompt")
    change = ds.logit_diff.sel(condition="ablated").mean("prompt") - clean
    for kind, scale in (("logits", 1.0), ("fraction", clean)):  # fraction: per clean difference, as the repository
        fig = nr.plot_result(ds, kind=kind)  # over training: the summed changes and the largest backup heads
        lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
        if kind == "logits":
            np.testing.assert_allclose(lines.pop(0).get_ydata(), clean)
        np.testing.assert_allclose(lines[0].get_ydata(), change / scale)
        np.testing.assert_allclose(lines[1].get_ydata(), ds.summed_backup / scale)
        shown = {ln.get_label(): ln.get_ydata() for ln in fig.axes[1].get_lines() if ln.get_label().startswith("a")}
        assert 1 <= len(shown) <= 5
        for name, y in shown.items():
            layer, head = (int(v) for v in name[1:].split("."))
            np.testing.assert_allclose(y, ds.backup.sel(layer=layer, head=head) / scale)
    with pytest.raises(UsageError, match="kind must be one of logits, fraction"):
        nr.plot_result(ds, kind="heatmap")
    one = nr.plot_result(ds.sel(checkpoint="main"))  # one checkpoint: the grids
    np.testing.assert_allclose(np.ma.filled(one.axes[1].images[0].get_array(), np.nan),
                               ds.backup.sel(checkpoint="main").values)
