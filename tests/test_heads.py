"""Head scores against a direct computation from HF attentions; IOI pairs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.heads import successor_tokens
from nnsight_reasoning.tasks import TaskError


def _sequences(tokenizer, n_sequences, seq_len, seed):
    seqs = nr.tasks.repeated_tokens(n_sequences, seq_len, seed, tokenizer=tokenizer)
    return seqs, torch.tensor(seqs.ids)


def test_repeated_tokens_are_bos_then_a_sequence_twice(embedded_tokenizer):
    seqs = nr.tasks.repeated_tokens(5, 12, seed=3, tokenizer=embedded_tokenizer)
    assert seqs.task == "repeated_random_tokens" and seqs.params == {"n_sequences": 5, "seq_len": 12, "seed": 3}
    assert isinstance(seqs.ids, tuple) and all(isinstance(r, tuple) for r in seqs.ids) and len(seqs) == 5
    ids = np.array(seqs.ids)
    assert ids.shape == (5, 25) and (ids[:, 0] == embedded_tokenizer.bos_token_id).all()
    assert (ids[:, 1:13] == ids[:, 13:]).all()
    special = set(embedded_tokenizer.all_special_ids)
    for row in ids[:, 1:13]:
        assert len(set(row)) == 12 and not special & set(row.tolist())
    assert nr.tasks.repeated_tokens(5, 12, seed=3) == seqs  # the embedded tokenizer by default; same seed, same ids
    assert nr.tasks.repeated_tokens(5, 12, seed=4) != seqs
    for kwargs, msg in [(dict(seq_len=1), "seq_len"), (dict(n_sequences=0), "n_sequences"), (dict(seed=-1), "seed")]:
        with pytest.raises(TaskError, match=msg):
            nr.tasks.repeated_tokens(**kwargs)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_head_scores_match_a_direct_computation(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    seqs, ids = _sequences(model.tokenizer, 6, 7, seed=1)
    ds = nr.head_scores(model, seqs, batch_size=4, progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["n_forward_passes"] == 2 * 2 + 1 and ds.attrs["task"] == "repeated_random_tokens"
    assert ds.attrs["seed"] == 1 and ds.attrs["seq_len"] == 7 and ds.attrs["batch_size"] == 4
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        att = torch.stack(hf(ids, output_attentions=True).attentions, 1).double().numpy()  # (b, L, H, T, T)
    n = 7
    for b in range(6):
        for layer in range(att.shape[1]):
            for head in range(att.shape[2]):
                a = att[b, layer, head]
                prev = np.mean([a[i, i - 1] for i in range(2, n + 1)])
                dup = np.mean([a[i, i - n] for i in range(n + 1, 2 * n + 1)])
                ind = np.mean([a[i, i - n + 1] for i in range(n + 1, 2 * n + 1)])
                got = ds.isel(prompt=b).sel(layer=layer, head=head)
                assert float(got.previous_token) == pytest.approx(prev, abs=1e-6)
                assert float(got.duplicate_token) == pytest.approx(dup, abs=1e-6)
                assert float(got.induction) == pytest.approx(ind, abs=1e-6)
    uniform = ds["uniform"].values
    assert uniform[0] == pytest.approx(np.mean([1 / (i + 1) for i in range(2, n + 1)]))
    assert uniform[2] == pytest.approx(np.mean([1 / (i + 1) for i in range(n + 1, 2 * n + 1)]))


def _direct_logit_effects(hf, ids, tokens):
    """(L, H, T, len(tokens)) from per-head outputs (tests/reference_edges.py) and the final norm's
    scale recovered from its own input and output, by least squares (no eps, no variance formula)."""
    from .reference_edges import NORMS, _get, patched_run

    final = _get(hf, NORMS[hf.config.model_type][6])
    box = {}
    hook = final.register_forward_hook(lambda m, i, o: box.update(f=i[0][0].double(), y=o[0].double()))
    try:
        _, acts = patched_run(hf, ids)
    finally:
        hook.remove()
    gamma = final.weight.detach().double()
    beta = getattr(final, "bias", None)
    beta = None if beta is None else beta.detach()
    center = beta is not None  # LayerNorm; RMSNorm neither centres nor has a bias
    f = box["f"] - box["f"].mean(-1, keepdim=True) if center else box["f"]
    normed = (box["y"] - (beta.double() if center else 0)) / gamma  # = f / scale
    scale = (f * f).sum(-1) / (f * normed).sum(-1)  # (T,)
    u = hf.get_output_embeddings().weight.detach().double()
    u = (u - u.mean(0))[tokens]
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    out = np.zeros((n_layers, n_heads, len(ids), len(tokens)))
    for layer in range(n_layers):
        for head in range(n_heads):
            o = acts[f"a{layer}.{head}"].double()
            if center:
                o = o - o.mean(-1, keepdim=True)
            out[layer, head] = ((o * gamma / scale[:, None]) @ u.T).numpy()
    return out


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_successor_and_copy_suppression_match_a_direct_computation(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    seqs, ids = _sequences(model.tokenizer, 3, 6, seed=2)
    ds = nr.head_scores(model, seqs, batch_size=2, progress=False)
    nr.testing.assert_valid_result(ds)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ordinals = successor_tokens(model.tokenizer)
    assert model.tokenizer.convert_ids_to_tokens(ordinals[:3]) == ["1", "2", "3"] and len(ordinals) == 99
    best = np.stack([_direct_logit_effects(hf, [t], ordinals)[:, :, 0].argmax(-1) for t in ordinals])  # (K, L, H)
    want = (best[:-1] == np.arange(1, len(ordinals))[:, None, None]).mean(0)
    np.testing.assert_array_equal(ds["successor"].values, want)
    n = 6
    with torch.no_grad():
        att = torch.stack(hf(ids, output_attentions=True).attentions, 1).double().numpy()
    for b in range(3):
        eff = _direct_logit_effects(hf, ids[b].tolist(), ids[b].tolist())  # (L, H, q, k)
        q = np.arange(n + 1, 2 * n + 1)
        cs = -(att[b][:, :, q, 1:] * eff[:, :, q, 1:]).sum(-1).mean(-1)
        np.testing.assert_allclose(ds["copy_suppression_proxy"].isel(prompt=b).values, cs, rtol=1e-5, atol=1e-7)
    assert ds["uniform"].sel(score="successor") == pytest.approx(1 / 99) and ds["uniform"].sel(score="copy_suppression_proxy") == 0
    assert np.abs(ds["copy_suppression_proxy"].values).max() > 1e-3  # a random init writes something


def test_head_scores_resume_and_refuse_other_data(tiny_model_dir, small_pairs, tmp_path):
    model = nr.load_model(str(tiny_model_dir("gpt2")))
    seqs, _ = _sequences(model.tokenizer, 5, 4, seed=0)
    kw = dict(batch_size=2, progress=False, resume_dir=tmp_path / "parts")
    first = nr.head_scores(model, seqs, **kw)
    again = nr.head_scores(model, seqs, **kw)  # every pass read back
    assert first.attrs["n_resumed_passes"] == 0 and again.attrs["n_resumed_passes"] == 7 == again.attrs["n_forward_passes"]
    for v in first.data_vars:
        np.testing.assert_array_equal(again[v].values, first[v].values)
    with pytest.raises(UsageError, match=r"takes RepeatedTokens, from nr.tasks.repeated_tokens\("):
        nr.head_scores(model, small_pairs, progress=False)
    beyond = dataclasses.replace(seqs, ids=((len(model.tokenizer),) + seqs.ids[0][1:],) + seqs.ids[1:])
    with pytest.raises(UsageError, match="beyond this model's vocabulary"):
        nr.head_scores(model, beyond, progress=False)


def test_head_scores_over_checkpoints_and_cli(tmp_path):
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app

    res = CliRunner().invoke(app, ["heads", "--revisions", "step0,main", "--n-sequences", "8", "--batch-size", "4",
                                   "--out", str(tmp_path / "h.nc"), "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = nr.load_result(tmp_path / "h.nc")
    nr.testing.assert_valid_result(ds)
    assert ds["induction"].dims == ("checkpoint", "prompt", "layer", "head") and "chance" in res.stdout and "copy_suppression_proxy" in res.stdout
    assert ds.attrs["batch_size"] == 4 and "2 checkpoints" in res.stdout
    res = CliRunner().invoke(app, ["show", str(tmp_path / "h.nc")])
    assert res.exit_code == 0 and "top heads per score" in res.stdout, res.output
    # step0 attends uniformly: every score sits at its chance level
    np.testing.assert_allclose(ds["previous_token"].sel(checkpoint="step0").mean("prompt"),
                               float(ds["uniform"].isel(checkpoint=0, score=0)), atol=0.01)
    # main has the heads its model card reports (the card averages 32 sequences, this run 8)
    from nnsight_reasoning import embedded

    card = embedded.card()["head_scores"]["main"]
    for score in ("previous_token", "induction"):
        best = ds[score].sel(checkpoint="main").mean("prompt")
        assert float(best.max()) > card[score]["max"] - 0.1, (score, float(best.max()))
        assert float(best[card[score]["layer"], card[score]["head"]]) > float(best.max()) - 0.05  # the card's head
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "h.nc")])
    assert res.exit_code == 0 and (tmp_path / "h.png").stat().st_size > 10_000


@pytest.mark.parametrize("corruption", ["flip", "abc"])
def test_ioi_pairs_corrupt_only_the_second_subject(embedded_tokenizer, corruption):
    pairs = nr.tasks.ioi(30, corruption=corruption, seed=2)
    for p in pairs:
        b, s = p.base.split(), p.source.split()
        diff = [i for i in range(len(b)) if b[i] != s[i]]
        assert len(b) == len(s) and len(diff) == 1 and b[diff[0]] == p.source_answer  # S2 replaced
        assert b.count(p.base_answer) == 1 and b.count(p.source_answer) == 2  # IO once, S twice
        assert (s[diff[0]] == p.base_answer) == (corruption == "flip")
    with pytest.raises(TaskError, match="corruption must be one of"):
        nr.tasks.ioi(4, corruption="shuffle")


def test_ioi_swap_pairs_trade_the_places_of_io_and_s1():
    """circuits-over-time's token_same_pos_oppo: ABB -> BAB, BAB -> ABB; S2 and the rest stay."""
    pairs = nr.tasks.ioi(30, corruption="swap", seed=2)
    for p in pairs:
        b, s = p.base.split(), p.source.split()
        io, subj = p.base_answer, p.source_answer
        diff = [i for i in range(len(b)) if b[i] != s[i]]
        assert len(b) == len(s) and len(diff) == 2 and {b[i] for i in diff} == {io, subj}
        assert [s[i] for i in diff] == [b[i] for i in diff[::-1]]  # the two first mentions trade places
        assert b.count(io) == s.count(io) == 1 and b.count(subj) == s.count(subj) == 2
        assert b[max(i for i, w in enumerate(b) if w == subj)] == s[max(i for i, w in enumerate(s) if w == subj)]


def _ov_by_running(hf, token_ids):
    """(L, H, N, N): each head's OV circuit by running it: layer l's attention on N one-token
    sequences whose input is layer 0's MLP applied to the embeddings (so attention is all on
    the token itself), the head's share of the output projection (its input slice times the
    weight, as in _direct_logit_effects), minus the same run on a zero input (the value
    projection's bias), then the unembedding. No weight layout is read: the attention module's
    own forward does the value projection (fused q/k/v, Conv1D or grouped heads alike)."""
    from .reference_edges import _parts, _with_hidden

    blocks, _, embed = _parts(hf)
    n_heads = hf.config.num_attention_heads
    ids = torch.tensor(token_ids)[:, None]
    with torch.no_grad():
        x = blocks[0][4](embed(ids)).double()  # (N, 1, d): layer 0's MLP on the raw embeddings
        unembed = hf.get_output_embeddings().weight[ids[:, 0]].double()  # (N, d)
    out = []
    for layer, (_, attn, o_proj, _, _) in enumerate(blocks):
        shares = []
        for value in (x, torch.zeros_like(x)):
            seen = {}
            h1 = attn.register_forward_pre_hook(lambda m, a, k, v=value: _with_hidden(a, k, v.to(torch.float32)),
                                                with_kwargs=True)
            h2 = o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0][:, 0].double()))  # returns None
            try:
                with torch.no_grad():
                    hf(ids, use_cache=False)
            finally:
                h1.remove()
                h2.remove()
            z = seen["z"].view(len(token_ids), n_heads, -1)  # (N, H, hd)
            w = o_proj.weight.detach().double()
            hd = z.shape[-1]
            if hf.config.model_type == "gpt2":  # Conv1D: (in, out)
                shares.append(torch.stack([z[:, h] @ w[h * hd:(h + 1) * hd] for h in range(n_heads)], 1))
            else:
                shares.append(torch.stack([z[:, h] @ w[:, h * hd:(h + 1) * hd].T for h in range(n_heads)], 1))
        out.append(((shares[0] - shares[1]) @ unembed.T).permute(1, 0, 2))  # (H, N, N)
    return torch.stack(out).numpy()


@pytest.mark.parametrize("model_type", ["gpt_neox", "gpt2", "llama"])
def test_successor_ov_scores_match_heads_run_on_one_token(tiny_model_dir, model_type):
    """Tigges et al.'s static successor score (get_new_successor_head_scores_over_time.py): the
    OV logits against running each head on one-token inputs, and the score recomputed from them
    by the repository's rule (the successor among the list's next words scores highest)."""
    from nnsight_reasoning.backend import graph

    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = model.tokenizer
    lists = nr.tasks.ordinal_sequences()
    ds = nr.successor_heads(model, lists, progress=False)
    nr.testing.assert_valid_result(ds)
    words = [(n, [tok(w, add_special_tokens=False)["input_ids"] for w in ws]) for n, ws in lists]
    vocab = sorted({i[0] for _, ids in words for i in ids if len(i) == 1 and i[0] != tok.unk_token_id})
    ov = graph.ov_logits(model, vocab).numpy()  # float64 from the weights
    # the reference runs the value projection in the model's float32: agreement to float32 precision
    np.testing.assert_allclose(ov, _ov_by_running(hf, vocab), rtol=1e-5, atol=1e-6)
    want = ov  # the score's rule restated on the checked logits (near-ties must not flip on float32 noise)
    hits, total = 0, 0
    for (name, ids), k in zip(words, range(len(words))):
        ok = [len(i) == 1 and i[0] != tok.unk_token_id for i in ids]
        pairs = [(vocab.index(a[0]), vocab.index(b[0])) for a, b, oa, ob in zip(ids, ids[1:], ok, ok[1:]) if oa and ob]
        assert int(ds["n_examples"].isel(list=k)) == len(pairs)
        if not pairs:
            continue
        targets = sorted({b for _, b in pairs})
        got = np.array([[want[:, :, a, b] == want[:, :, a, targets].max(-1)] for a, b in pairs])[:, 0]  # (E, L, H)
        hits, total = hits + got.sum(0), total + len(pairs)
        np.testing.assert_allclose(ds["successor_ov_by_list"].isel(list=k).values, got.mean(0))
    np.testing.assert_allclose(ds["successor_ov"].values, hits / total)
    with pytest.raises(UsageError, match=r"takes OrdinalSequences, from nr.tasks.ordinal_sequences\(\) \(got RepeatedTokens\)"):
        nr.successor_heads(model, nr.tasks.repeated_tokens(2, 3), progress=False)


def test_cli_successor_heads_over_checkpoints(tmp_path, monkeypatch):
    """The command sweeps revisions; the score needs the weights, so NDIF is refused."""
    from typer.testing import CliRunner

    from nnsight_reasoning.backend import graph
    from nnsight_reasoning.cli.main import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["successor-heads", "--revisions", "step0,main", "--no-variants", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "successor heads (static OV circuit)" in res.output and "best head per checkpoint" in res.output
    ds = nr.load_result(tmp_path / "results" / "successor_heads_ordinal_sequences_embedded_step0-main.nc")
    nr.testing.assert_valid_result(ds)
    assert ds["successor_ov"].dims == ("checkpoint", "layer", "head") and ds.attrs["task_params"]
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "results" /
                                               "successor_heads_ordinal_sequences_embedded_step0-main.nc")])
    assert res.exit_code == 0 and (tmp_path / "results" / "successor_heads_ordinal_sequences_embedded_step0-main.png"
                                   ).stat().st_size > 10_000, res.output
    np.testing.assert_array_equal(nr.plot_result(ds).axes[0].images[0].get_array(),
                                  ds["successor_ov"].sel(checkpoint="main").values)
    with pytest.raises(UsageError, match="run it locally"):
        graph.ov_logits(nr.load_model(), [5, 6], remote="https://ndif.example")
