"""The logit lens against plain Hugging Face hooks: each layer's output (and the first layer's
input, the embeddings) captured by a hook and read through the model's own final-norm and
unembedding modules, called as modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning import backend

from .reference import MODULES, _first, _get
from .test_effects import _hf

EPS = float(np.finfo(np.float32).eps)
FINAL_NORM = {"gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f", "gptj": "transformer.ln_f",
              "llama": "model.norm"}


def _lens_log_probs(hf, ids):
    """(layers + 1, V) float64: log-softmax of unembed(final_norm(x)) at the last position, x the
    first layer's input (row 0), then each layer's output."""
    blocks = _get(hf, MODULES[hf.config.model_type][0])
    norm, unembed = _get(hf, FINAL_NORM[hf.config.model_type]), hf.get_output_embeddings()
    seen = []
    hooks = [blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0, -1].clone()),
        with_kwargs=True)]
    hooks += [b.register_forward_hook(lambda m, i, o: seen.append(_first(o)[0, -1].clone())) for b in blocks]
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
            return torch.log_softmax(unembed(norm(torch.stack(seen))).double(), -1)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "gptj", "llama"])
def test_lens_matches_the_final_norm_and_unembedding_applied_by_hooks(embedded_model, tiny_model_dir, model_type):
    path = nr.models.model_info(embedded_model).path if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(path)
    examples = nr.tasks.examples("arithmetic", 5, seed=2, tokenizer=model.tokenizer)
    ds = nr.logit_lens(model, examples, top_k=4, batch_size=3, progress=False)
    nr.testing.assert_valid_result(ds)
    hf = _hf(path)
    n_layers = hf.config.num_hidden_layers
    assert ds["layer"].values.tolist() == list(range(-1, n_layers))
    answers, suffix = backend.answer_ids(model, [e.answer for e in examples])
    for i, e in enumerate(examples):
        ids = model.tokenizer(e.prompt)["input_ids"] + suffix
        lp = _lens_log_probs(hf, ids)
        for j in range(n_layers + 1):
            row = lp[j].numpy()
            # each float32 logit within a few ulps of the row's largest, so each log-probability within twice that
            tol = 64 * EPS * max(1.0, float(np.abs(row - row.mean()).max()))
            want = row[answers[i]]
            np.testing.assert_allclose(np.log(float(ds.p_answer[i, j])), want, atol=tol, rtol=0)
            rank = int(ds.answer_rank[i, j])  # ties within the tolerance may fall either way
            assert (row > want + tol).sum() <= rank <= (row > want - tol).sum(), (model_type, i, j)
            top = np.sort(row)[::-1][:4]
            np.testing.assert_allclose(np.log(ds.top_p[i, j].values.astype(float)), top, atol=tol, rtol=0)
            np.testing.assert_allclose(row[ds.top_token[i, j].values], top, atol=2 * tol, rtol=0)
            assert [model.tokenizer.decode([t]) for t in ds.top_token[i, j].values] == ds.top_text[i, j].values.tolist()
    ev = nr.evaluate(model, examples, progress=False)  # the last layer's lens is the model's own distribution
    np.testing.assert_allclose(ds.p_answer.sel(layer=n_layers - 1).values, ev.p_answer.values, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ds.accuracy.sel(layer=n_layers - 1).values, ev.accuracy.values)
    np.testing.assert_allclose(ds.mean_p_answer.values, ds.p_answer.mean("prompt").values, rtol=1e-12)
    np.testing.assert_allclose(ds.accuracy.values, (ds.answer_rank == 0).mean("prompt").values, rtol=1e-12)


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
    with pytest.raises(nr.UsageError, match="layers must lie in -1..3"):
        nr.logit_lens(embedded_model, examples, layers=[4], progress=False)
    with pytest.raises(nr.UsageError, match="top_k must be an integer >= 1"):
        nr.logit_lens(embedded_model, examples, top_k=0, progress=False)
