"""The logit lens against plain Hugging Face hooks: each layer's output, or the residual between
its attention and MLP (and the first layer's input, the embeddings), captured by a hook and read
through the model's own final-norm and unembedding modules, called as modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nnsight_reasoning as nr
from nnsight_reasoning import backend, sites

from .reference import _first, _get
from .test_effects import _hf

EPS = float(np.finfo(np.float32).eps)
BLOCKS = {"gpt_neox": "gpt_neox.layers", "gpt2": "transformer.h", "gptj": "transformer.h"}  # else model.layers
FINAL_NORM = {"gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f", "gptj": "transformer.ln_f"}
MID = {"gpt2": "ln_2", "llama": "post_attention_layernorm", "gemma": "post_attention_layernorm",
       "qwen2": "post_attention_layernorm", "gemma2": "pre_feedforward_layernorm"}  # the MLP's norm: its input is
# the residual between attention and MLP (Gemma 2's post_attention_layernorm normalises the attention's output)


def _lens_log_probs(hf, ids, read="output"):
    """(layers + 1, V) float64: log-softmax of unembed(final_norm(x)) at the last position, x the
    first layer's input (row 0), then each layer's output (or, ``read`` "mid", the input of its
    MLP's norm), all captured by hooks; the norm and the unembedding are the model's modules."""
    kind = hf.config.model_type
    blocks = _get(hf, BLOCKS.get(kind, "model.layers"))
    norm, unembed = _get(hf, FINAL_NORM.get(kind, "model.norm")), hf.get_output_embeddings()
    seen = []

    def first_input(m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"])[0, -1].clone())

    hooks = [blocks[0].register_forward_pre_hook(first_input, with_kwargs=True)]
    if read == "mid":
        hooks += [_get(b, MID[kind]).register_forward_pre_hook(first_input, with_kwargs=True) for b in blocks]
    else:
        hooks += [b.register_forward_hook(lambda m, i, o: seen.append(_first(o)[0, -1].clone())) for b in blocks]
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
            logits = unembed(norm(torch.stack(seen)))
            cap = getattr(hf.config, "final_logit_softcapping", None)  # Gemma 2 caps its logits: c·tanh(x / c)
            return torch.log_softmax((torch.tanh(logits / cap) * cap if cap else logits).double(), -1)
    finally:
        for h in hooks:
            h.remove()


def _with_random_head(path, out):
    """A copy of the model at ``path`` whose final norm has a random gain and bias and whose
    unembedding a random bias (where it has one): the tiny models are built with the identity.
    Gemma 2's logit cap is lowered to 0.5, under its tiny logits, so that the cap bends them."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if getattr(hf.config, "final_logit_softcapping", None):
        hf.config.final_logit_softcapping = 0.5
    g = torch.Generator().manual_seed(0)
    norm = _get(hf, FINAL_NORM.get(hf.config.model_type, "model.norm"))
    with torch.no_grad():
        for p in [norm.weight, getattr(norm, "bias", None), getattr(hf.get_output_embeddings(), "bias", None)]:
            if p is not None:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "gptj", "llama", "gemma", "gemma2", "qwen2"])
def test_lens_matches_the_final_norm_and_unembedding_applied_by_hooks(embedded_model, tiny_model_dir, model_type,
                                                                      tmp_path):
    path = (nr.models.model_info(embedded_model).path if model_type == "embedded"
            else _with_random_head(tiny_model_dir(model_type), tmp_path / model_type))
    model = embedded_model if model_type == "embedded" else nr.load_model(path)
    examples = nr.tasks.examples("arithmetic", 5, seed=2, tokenizer=model.tokenizer)
    hf = _hf(path)
    assert sites.logit_softcap(model) == (0.5 if model_type == "gemma2" else None)  # the lowered cap, reloaded
    n_layers = hf.config.num_hidden_layers
    answers, suffix = backend.answer_ids(model, [e.answer for e in examples])
    for read in ("output", "mid") if model_type in MID else ("output",):
        ds = nr.logit_lens(model, examples, top_k=4, read=read, batch_size=7, progress=False)
        nr.testing.assert_valid_result(ds)
        assert ds["layer"].values.tolist() == list(range(-1, n_layers)) and ds.attrs["read"] == read
        for i, e in enumerate(examples):
            lp = _lens_log_probs(hf, model.tokenizer(e.prompt)["input_ids"] + suffix, read)
            for j in range(n_layers + 1):
                row = lp[j].numpy()
                # each float32 logit within a few ulps of the row's largest, so each log-probability within twice that
                tol = 64 * EPS * max(1.0, float(np.abs(row - row.mean()).max()))
                want = row[answers[i]]
                np.testing.assert_allclose(np.log(float(ds.p_answer[i, j])), want, atol=tol, rtol=0)
                rank = int(ds.answer_rank[i, j])  # ties within the tolerance may fall either way
                assert (row > want + tol).sum() <= rank <= (row > want - tol).sum(), (model_type, read, i, j)
                top = np.sort(row)[::-1][:4]
                np.testing.assert_allclose(np.log(ds.top_p[i, j].values.astype(float)), top, atol=tol, rtol=0)
                np.testing.assert_allclose(row[ds.top_token[i, j].values], top, atol=2 * tol, rtol=0)
                assert [model.tokenizer.decode([t]) for t in ds.top_token[i, j].values] == \
                    ds.top_text[i, j].values.tolist()
        if read == "output":
            ev = nr.evaluate(model, examples, progress=False)  # the last layer's lens is the model's own output
            np.testing.assert_allclose(ds.p_answer.sel(layer=n_layers - 1).values, ev.p_answer.values, atol=1e-5,
                                       rtol=0)
            np.testing.assert_array_equal(ds.accuracy.sel(layer=n_layers - 1).values, ev.accuracy.values)
        np.testing.assert_allclose(ds.mean_p_answer.values, ds.p_answer.mean("prompt").values, rtol=1e-12)
        np.testing.assert_allclose(ds.accuracy.values, (ds.answer_rank == 0).mean("prompt").values, rtol=1e-12)
    if model_type not in MID:  # attention and MLP in parallel: no stream between them
        with pytest.raises(nr.UsageError, match="read the same stream in parallel"):
            nr.logit_lens(model, examples, read="mid", progress=False)


@pytest.mark.parametrize("task", ["greater_than", "sentiment"])
def test_an_answer_set_counts_as_in_evaluate(embedded_model, task):
    """Where every later year (or every word of the class) is correct: the set's probability and
    its best-ranked member, which at the last layer are evaluate's."""
    examples = nr.tasks.examples(task, 12, seed=3)
    assert max(len(e.answers) for e in examples) > 1
    ds = nr.logit_lens(embedded_model, examples, layers=[1, 3], progress=False)
    ev = nr.evaluate(embedded_model, examples, progress=False)
    np.testing.assert_allclose(ds.p_answer.sel(layer=3).values, ev.p_answer.values, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ds.answer_rank.sel(layer=3).values, ev.answer_rank.values)


def test_lens_runs_remotely_like_locally_and_takes_chosen_layers(embedded_model):
    examples = nr.tasks.examples("arithmetic", 6, seed=1)
    full = nr.logit_lens(embedded_model, examples, progress=False)
    some = nr.logit_lens(embedded_model, examples, layers=[3, -1], top_k=3, batch_size=2, remote="local",
                         progress=False)
    assert some["layer"].values.tolist() == [-1, 3] and some.sizes["k"] == 3
    sel = full.sel(layer=[-1, 3])
    # other batches: each float32 logit may move by a few ulps, so each log-probability by about that much
    np.testing.assert_allclose(np.log(some.p_answer.values), np.log(sel.p_answer.values), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(some.answer_rank.values, sel.answer_rank.values)
    logs = np.log(sel.top_p.values.astype(float))  # (prompt, layer, k), descending along k
    np.testing.assert_allclose(np.log(some.top_p.values.astype(float)), logs[..., :3], atol=1e-5, rtol=0)
    # the same tokens, but for neighbours tied within what other batches may move (their order may swap)
    tied = np.zeros(logs.shape, bool)
    tied[..., :-1] |= np.abs(np.diff(logs, axis=-1)) < 1e-4
    tied[..., 1:] |= tied[..., :-1].copy()
    same = some.top_token.values == sel.top_token.values[..., :3]
    assert (same | tied[..., :3]).all() and same.mean() > 0.9
    # the embedded model's answer appears at its last layer: the lens there is its output
    assert float(full.accuracy.sel(layer=3)) > 0.9 > float(full.accuracy.sel(layer=-1))
    for bad, message in (([4], "layer 4 is out of range"), ([-2], "layer -2 is out of range"),
                         ([True], "layer True is not an integer"), ([0.5], "layer 0.5 is not an integer"),
                         ([], "no layers given")):
        with pytest.raises(nr.UsageError, match=message + r".* layers -1\.\.3 \(-1: the embeddings\)"):
            nr.logit_lens(embedded_model, examples, layers=bad, progress=False)
    assert nr.logit_lens(embedded_model, examples, layers=np.array([3, -1]), progress=False).layer.values.tolist() \
        == [-1, 3]  # numpy integers are layers too
    for bad in (0, 10**6, 2.0):
        with pytest.raises(nr.UsageError, match=r"top_k must be an integer in 1\.\."):
            nr.logit_lens(embedded_model, examples, top_k=bad, progress=False)
    with pytest.raises(nr.UsageError, match="read must be one of output, mid"):
        nr.logit_lens(embedded_model, examples, read="after", progress=False)
