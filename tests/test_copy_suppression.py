"""CSPA (copy-suppression-preserving ablation) against a position-by-position restatement of
circuits-over-time's definition on quantities captured with plain PyTorch hooks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr

from .conftest import eager_hf
from .reference_edges import NORMS, QKV, _get


def _hooked_run(hf, ids):
    """Per layer: the input, each head's attention pattern, value vectors and output (its share
    of the output projection, from the module on its slice alone); the final norm's input."""
    layers_path, _, attn_p, o_p, _, _, final_p, _ = NORMS[hf.config.model_type]
    blocks = _get(hf, layers_path)
    n_heads = hf.config.num_attention_heads
    hd = hf.config.hidden_size // n_heads
    names, cols = QKV[hf.config.model_type]
    got, hooks = {"pre": [], "value": [], "z": []}, []
    for block in blocks:
        hooks.append(block.register_forward_pre_hook(lambda m, a, k: got["pre"].append(
            (a[0] if a else k["hidden_states"])[0].detach().double()), with_kwargs=True))
        hooks.append(_get(_get(block, attn_p), names[2]).register_forward_hook(
            lambda m, i, o: got["value"].append(o[0].detach().double())))
        hooks.append(_get(block, o_p).register_forward_pre_hook(lambda m, a: got["z"].append(a[0][0].detach())))
    def keep_final(m, a):  # a pre-hook returning a value would replace the input
        got["final"] = a[0][0].double()

    hooks.append(_get(hf, final_p).register_forward_pre_hook(keep_final))
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    per_layer = []
    for li, block in enumerate(blocks):
        o_proj = _get(block, o_p)
        heads = []
        for h in range(n_heads):
            sl = cols(hd, h, n_heads)[2]
            if hf.config.model_type == "llama":
                group = n_heads // hf.config.num_key_value_heads
                sl = slice((h // group) * hd, (h // group + 1) * hd)
            v = got["value"][li][:, sl]  # (T, hd)
            with torch.no_grad():
                def out_of(z_h):
                    z = torch.zeros(z_h.shape[0], n_heads * hd)
                    z[:, h * hd:(h + 1) * hd] = z_h.float()
                    return (o_proj(z) - o_proj(torch.zeros_like(z))).double()
                heads.append({"pattern": out.attentions[li][0, h].double(), "src_out": out_of(v),
                              "result": out_of(got["z"][li].view(-1, n_heads, hd)[:, h])})
        per_layer.append((got["pre"][li], heads))
    return per_layer, got["final"], out.logits[0].double()


def _restated_kl(hf, per_layer, final, toks, layer, head, mean, function, k_frac=0.05):
    """KL(orig ‖ CSPA) and KL(orig ‖ mean-ablated) per position, one destination and one source at a time."""
    final_norm = _get(hf, NORMS[hf.config.model_type][6])
    gamma, beta = final_norm.weight.detach().double(), final_norm.bias.detach().double()
    w_u = hf.get_output_embeddings().weight.detach().double()
    eps = final_norm.eps

    def centred(x):
        return x - x.mean()

    def logits(x, s):
        return (centred(x) / s * gamma + beta) @ w_u.T

    pre, heads = per_layer[layer]
    hd = heads[head]
    u_all = (w_u - w_u.mean(0)) * gamma
    kl_c, kl_a = [], []
    t = len(toks)
    for q in range(t):
        s = math.sqrt(float(centred(final[q]).pow(2).mean()) + eps)
        lp = torch.log_softmax(logits(final[q], s), -1)
        lens = {k: float(centred(pre[q]) / s @ u_all[toks[k]]) for k in range(q + 1) if toks[k] not in function}
        firsts = {k: v for k, v in lens.items() if toks[k] not in toks[:k]}
        n_keep = math.ceil(k_frac * (q + 1))
        ranked = sorted(firsts.values(), reverse=True)
        thresh = ranked[n_keep - 1] if len(ranked) >= n_keep else -1e9
        new = mean[q].clone()
        for k in range(q + 1):
            value = lens.get(k, -1e9)
            if value + 1e-6 < thresh:
                continue
            u = u_all[toks[k]]
            if u.norm() <= 1e-6:
                continue
            u = u / u.norm()
            c = float(hd["pattern"][q, k] * (hd["src_out"][k] - mean[q]) @ u)
            if c < 0:
                new = new + c * u
        p = lp.exp()
        for target, sink in ((new, kl_c), (mean[q], kl_a)):
            lx = torch.log_softmax(logits(final[q] + target - hd["result"][q], s), -1)
            sink.append(float((p * (lp - lx)).sum()))
    return np.array(kl_c), np.array(kl_a)


def test_cspa_matches_a_restatement_of_the_repository_definition(embedded_model):
    from nnsight_reasoning.embedded import revision_path
    from nnsight_reasoning.experiments.copy_suppression import _function_ids

    hf = eager_hf(revision_path("main"))
    seqs = nr.tasks.text_sequences(5, 24, seed=1, tokenizer=embedded_model.tokenizer)
    heads = ["a2.2", "a3.1", "a0.0"]
    ds = nr.copy_suppression(embedded_model, seqs, heads=heads, n_mean=5, n_eval=2, progress=False)
    nr.testing.assert_valid_result(ds)
    function = _function_ids(embedded_model.tokenizer)
    runs = [_hooked_run(hf, list(row)) for row in seqs.ids]
    # our reconstruction of the clean logits is the model's
    from nnsight_reasoning.backend import graph

    inner = graph.head_internals(embedded_model, torch.tensor(seqs.ids[:1]))
    w = graph.readout(embedded_model)
    np.testing.assert_allclose(w.logits(inner.final_in[0], w.scale(inner.final_in[0])).numpy(),
                               runs[0][2].numpy(), atol=2e-4)
    for name in heads:
        layer, head = map(int, name[1:].split("."))
        mean = torch.stack([r[0][layer][1][head]["result"] for r in runs]).mean(0)
        kc, ka = zip(*[_restated_kl(hf, r[0], r[1], list(row), layer, head, mean, function)
                       for r, row in zip(runs[:2], seqs.ids[:2])])
        np.testing.assert_allclose(ds.kl_cspa.sel(layer=layer, head=head), np.mean(kc), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(ds.kl_ablated.sel(layer=layer, head=head), np.mean(ka), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(ds.cspa.sel(layer=layer, head=head), 1 - np.mean(kc) / np.mean(ka), atol=1e-4)
        assert np.mean(ka) > 1e-4  # the ablation changes the logits: the ratio is well conditioned
    assert np.isnan(ds.cspa.sel(layer=1, head=0))  # not asked for


def test_text_sequences_from_a_file_and_offline(tmp_path, embedded_tokenizer):
    from nnsight_reasoning.tasks import TaskError

    words = "The capital of Norvania is Norhold and the river runs west".split()
    rows = [{"text": " ".join(words[: 3 + k % 8] * 3)} for k in range(12)]
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    seqs = nr.tasks.text_sequences(4, 9, seed=3, tokenizer=embedded_tokenizer, source=str(path))
    assert len(seqs) == 4 and all(len(r) == 9 and r[0] == embedded_tokenizer.bos_token_id for r in seqs.ids)
    assert seqs.ids == nr.tasks.text_sequences(4, 9, seed=3, tokenizer=embedded_tokenizer, source=str(path)).ids
    assert seqs.params["source"] == str(path)
    with pytest.raises(TaskError, match="no column 'body'"):
        nr.tasks.text_sequences(4, 9, tokenizer=embedded_tokenizer, source=str(path), column="body")
    with pytest.raises(TaskError, match="only 0 texts have 99 tokens"):
        nr.tasks.text_sequences(4, 100, tokenizer=embedded_tokenizer, source=str(path))
    offline = nr.tasks.text_sequences(3, 30, tokenizer=embedded_tokenizer)
    assert offline.params["source"] == "tasks" and {len(r) for r in offline.ids} == {30}


def test_copy_suppression_bad_input(embedded_model, monkeypatch):
    from nnsight_reasoning.errors import UsageError

    seqs = nr.tasks.text_sequences(3, 12, tokenizer=embedded_model.tokenizer)
    for kwargs, msg in [(dict(heads="a9.0"), "outside this model"), (dict(heads="x"), "named aL.H"),
                        (dict(start_layer=7), "start_layer must be"), (dict(n_mean=4), "n_mean must be"),
                        (dict(k_unembeddings=0), "k_unembeddings must be")]:
        with pytest.raises(UsageError, match=msg):
            nr.copy_suppression(embedded_model, seqs, **{"n_mean": 2, "n_eval": 2, **kwargs})
    with pytest.raises(UsageError, match=r"takes TextSequences, from nr.tasks.text_sequences\("):
        nr.copy_suppression(embedded_model, nr.tasks.repeated_tokens(2, 5))
    monkeypatch.setenv("NDIF_API_KEY", "not-a-key")
    with pytest.raises(UsageError, match="NDIF does not send"):
        nr.copy_suppression(embedded_model, seqs, remote="https://ndif.example")


def test_cli_copy_suppression(tmp_path, monkeypatch):
    from .clirun import in_process

    monkeypatch.chdir(tmp_path)
    res = in_process(["copy-suppression", "--n-sequences", "4", "--seq-len", "16", "--n-mean", "4", "--n-eval", "2",
                      "--heads", "a3.1,a2.2", "--no-progress"])
    assert res.returncode == 0 and "performance recovered" in res.output, res.output
    ds = nr.load_result(tmp_path / "results" / "copy_suppression_text_embedded_main.nc")
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["heads"] == "a2.2,a3.1" and int(np.isfinite(ds.cspa.values).sum()) == 2
    shown = np.ma.filled(nr.plot_result(ds).axes[0].images[0].get_array(), np.nan)
    np.testing.assert_array_equal(shown, ds.cspa.values)
    for args, msg in [(["--data", "none.jsonl"], "no such file"), (["--heads", "a9.9"], "outside this model"),
                      (["--seq-len", "2"], "--seq-len must be"), (["--n-eval", "400"], "n_eval must be")]:
        res = in_process(["copy-suppression", *args, "--no-progress", "--out", str(tmp_path / "bad.nc")])
        assert res.returncode == 2 and msg in res.output, (args, res.output)
        assert not (tmp_path / "bad.nc").exists()
