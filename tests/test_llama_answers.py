"""LLaMA-style answers (the space before a digit a token of its own: " 5" is "▁", "5") in the
experiments that score a next token beside patching, circuits and evaluate: head pruning,
robustness and the CoT neurons. Every prompt ends with the space token and the answer is the
digit after it, as lm-arithmetic scores LLaMA (``interventions/__init__.py:54-61``); checked
against plain HF forwards on ids built here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import backend
from nnsight_reasoning.errors import UsageError

from .conftest import tiny_sentencepiece_llama
from .test_pruning import _masked_logits


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """(model, hf, tokenizer, space id, digit ids): a tiny Llama with LLaMA-like SentencePiece digits."""
    corpus = [f"{p.text} {p.answer}" for p in nr.tasks.kth_smallest(300, length=5, k=2, max_n=9, seed=0)]
    corpus += [f"{e.prompt} {e.answer}" for e in nr.tasks.examples("arithmetic", 300, max_n=9, max_result=9)]
    path = tiny_sentencepiece_llama(tmp_path_factory.mktemp("sp_answers") / "sp", corpus)
    model = nr.load_model(path)
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    space = tok("x ", add_special_tokens=False)["input_ids"][-1]
    digit = {str(d): tok(f"x {d}", add_special_tokens=False)["input_ids"][-1] for d in range(10)}
    assert tok.convert_ids_to_tokens([space, digit["5"]]) == ["▁", "5"]
    assert backend.answer_token(model, "5") is None  # no digit is one token with its space
    return model, hf, tok, space, digit


def _last(hf, ids, mask=None):
    """Last-position logits of one prompt (heads masked as ``mask`` says, if given)."""
    if mask is not None:
        return _masked_logits(hf, torch.tensor([ids]), mask)[0]
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0, -1].double()


def test_pruning_scores_the_digit_after_the_space_token(sp):
    model, hf, tok, space, digit = sp
    prompts = nr.tasks.kth_smallest(8, length=5, k=2, max_n=9, seed=1)
    ds = nr.prune(model, prompts, fractions=(0.5,), orderings=("random",), n_random=1, progress=False)
    nr.testing.assert_valid_result(ds)
    ids = [tok(p.text)["input_ids"] + [space] for p in prompts]
    ans = [digit[p.answer] for p in prompts]
    unpruned = [_last(hf, i) for i in ids]
    top1 = [int(lg.argmax()) == a for lg, a in zip(unpruned, ans)]
    assert float(ds.accuracy_unpruned) == pytest.approx(np.mean(top1))
    assert float(ds.p_answer_unpruned) == pytest.approx(
        np.mean([float(lg.softmax(-1)[a]) for lg, a in zip(unpruned, ans)]), rel=1e-5)
    mask = 1 - ds.pruned.isel(ordering=0, fraction=0).values
    pruned = [_last(hf, i, mask) for i in ids]
    np.testing.assert_array_equal(ds.correct.isel(ordering=0, fraction=0).values,
                                  [int(int(lg.argmax()) == a) for lg, a in zip(pruned, ans)])
    assert float(ds.p_answer.isel(ordering=0, fraction=0)) == pytest.approx(
        np.mean([float(lg.softmax(-1)[a]) for lg, a in zip(pruned, ans)]), rel=1e-5)


def test_robustness_scores_the_digit_after_the_space_token(sp):
    model, hf, tok, space, digit = sp
    prompts = nr.tasks.kth_smallest(12, length=5, k=2, max_n=9, seed=2)
    ds = nr.robustness(model, prompts, corrupt="drop", n_subsets=3, subset_size=(6, 8), baseline="none",
                       n_neighbors=3, progress=False)
    corrupt = nr.tasks.kth_smallest(12, length=5, k=2, max_n=9, seed=2, corrupt="drop")
    for got, plist in ((ds.correct.values, prompts), (ds.correct_corrupt.values, corrupt)):
        want = [int(int(_last(hf, tok(p.text)["input_ids"] + [space]).argmax()) == digit[p.answer]) for p in plist]
        np.testing.assert_array_equal(got, want)
    # the repository's choices: their logits compared, after the space token too
    choice = nr.robustness(model, prompts, corrupt="drop", n_subsets=2, subset_size=(6, 8), baseline="none",
                           n_neighbors=3, choices=[str(d) for d in range(10)], progress=False)
    cand = [digit[str(d)] for d in range(10)]
    want = [int(int(_last(hf, tok(p.text)["input_ids"] + [space])[cand].argmax()) == int(p.answer)) for p in prompts]
    np.testing.assert_array_equal(choice.correct.values, want)


def test_cot_neurons_score_the_digit_after_the_space_token(sp):
    """The neurons' two token paths: discovery's direct contributions and the ablations' scores
    read the position of the space token and the digit after it."""
    from nnsight_reasoning.backend import neurons as bn
    from nnsight_reasoning.experiments.neurons import _contributions
    from nnsight_reasoning.runner import Run

    model, hf, tok, space, digit = sp
    examples = nr.tasks.examples("arithmetic", 6, max_n=9, max_result=9, seed=3)
    prompts = [nr.tasks.base.Example(e.prompt, e.answer) for e in examples]
    got = _contributions(Run(model, progress=False), prompts, [0, 1])
    ids = [tok(e.prompt)["input_ids"] + [space] for e in prompts]
    for i, e in enumerate(prompts):
        want = bn.neuron_contributions(model, torch.tensor([ids[i]]), torch.tensor([digit[e.answer]]), [0, 1])
        np.testing.assert_allclose(got[i], want.numpy()[0], atol=1e-6)
    with pytest.raises(UsageError, match="answer '12' \\(number 1\\) is not a single token"):
        backend.scored_prompts(model, ["a", "b"], ["5", "12"])


def test_repository_kth_answers_are_the_numbers_own_tokens(tmp_path):
    """kth_smallest(style="repository", joined=True): the answer is scored as "32", not " 32"
    (the repository's GPT-2 labels, src/gpt2.py:31, 73, are tokenised alone), on a byte-level BPE
    where the two are different tokens: pruning's and evaluate's scores against HF forwards."""
    from .conftest import tiny_year_bpe

    path = tiny_year_bpe(tmp_path / "bpe")
    model = nr.load_model(str(path))
    tok = model.tokenizer
    assert tok("32", add_special_tokens=False)["input_ids"] != tok(" 32", add_special_tokens=False)["input_ids"]
    prompts = nr.tasks.kth_smallest(8, length=6, k=2, style="repository", joined=True, seed=3)
    assert prompts.params["joined"] is True and all(p.joined for p in prompts)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    own = [tok(p.answer, add_special_tokens=False)["input_ids"] for p in prompts]
    assert all(len(o) == 1 for o in own)
    logits = [_last(hf, tok(p.text)["input_ids"]) for p in prompts]  # no space token after the list
    ds = nr.prune(model, prompts, fractions=(0.25,), orderings=("random",), n_random=1, progress=False)
    assert float(ds.p_answer_unpruned) == pytest.approx(
        np.mean([float(lg.softmax(-1)[o[0]]) for lg, o in zip(logits, own)]), rel=1e-5)
    ev = nr.evaluate(model, nr.tasks.examples("kth_smallest", 8, length=6, k=2, style="repository", joined=True,
                                              seed=3), progress=False)
    np.testing.assert_allclose(ev.p_answer.values, [float(lg.softmax(-1)[o[0]]) for lg, o in zip(logits, own)],
                               rtol=1e-5)
    with pytest.raises(nr.tasks.TaskError, match="joined applies to style='repository'"):
        nr.tasks.kth_smallest(4, joined=True)


def test_cot_neurons_score_and_read_at_the_space_token(tmp_path):
    """nr.neurons end to end on a LLaMA-style tokenizer: P(answer) without ablation is the digit's
    probability after the space token, and the units' activations are read there too."""
    from nnsight_reasoning.backend import neurons as bn

    data = nr.tasks.cot_variants(6, ["full", "no_cot"], seed=1)
    corpus = [f"{p.prompt} {p.answer}" for v in data.variants for p in data.prompts[v]] * 3
    path = tiny_sentencepiece_llama(tmp_path / "sp", corpus, individual_digits=False)  # " 18" is "▁", "18"
    model = nr.load_model(path)
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    space = tok("x ", add_special_tokens=False)["input_ids"][-1]
    ds = nr.neurons(model, data, top_k=4, min_frequency=0.01, progress=False)
    for vi, v in enumerate(ds["variant"].values):
        for i, p in enumerate(data.prompts[str(v)]):
            ids = tok(p.prompt)["input_ids"] + [space]
            digit = tok(f"x {p.answer}", add_special_tokens=False)["input_ids"][-1]
            want = float(_last(hf, ids).softmax(-1)[digit])
            got = float(ds.p_answer.sel(ablation="none", variant=v).isel(prompt=i))
            assert got == pytest.approx(want, rel=1e-5, abs=1e-9), (v, i)
    units = list(zip(ds["layer"].values.tolist(), ds["neuron"].values.tolist()))
    got = ds.activation.sel(variant="full").values
    rows = [tok(p.prompt)["input_ids"] + [space] for p in data.prompts["full"]]
    acts = np.mean([bn.neuron_activations(model, torch.tensor([r]), sorted({l for l, _ in units}))
                     .numpy()[0, :, 0] for r in rows], 0)  # (layers, neurons) at the last position
    layer_index = {l: k for k, l in enumerate(sorted({l for l, _ in units}))}
    np.testing.assert_allclose(got, [acts[layer_index[l], n] for l, n in units], rtol=1e-5, atol=1e-7)
