"""Head pruning (Hou et al. 2023, the repository's prune.py): head masks against plain PyTorch
hooks on the HF model, the orders against scipy's entropy of the data-mean attention, and the
``prune`` CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import backend, embedded
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.results.parts import parts_dir

from .reference_edges import heads_kept
from .test_probe import reason_interp

DATA = Path(__file__).parent / "data"


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _masked_logits(hf, ids, mask):
    """Last-position logits with head h of layer l zeroed where mask[l, h] == 0 (plain hooks)."""
    with heads_kept(hf, mask), torch.no_grad():
        return hf(ids).logits[:, -1].double()


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "llama"])
def test_head_masks_match_hooks(embedded_model, tiny_model_dir, model_type):
    path = embedded.revision_path("main") if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(str(path))
    hf = _hf(path)
    prompts = nr.tasks.kth_smallest(6, length=5, seed=1)
    ids = torch.tensor([model.tokenizer(p.text)["input_ids"] for p in prompts])
    answers = torch.tensor(backend.answer_tokens(model, [p.answer for p in prompts]))[:, None]
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([torch.ones(n_layers, n_heads), (torch.rand(n_layers, n_heads, generator=gen) > 0.5).float(),
                         torch.zeros(n_layers, n_heads)])
    s = backend.head_masked_scores(model, ids, answers, masks)
    assert s.logits.shape == (3 * len(prompts), 1)
    for m, mask in enumerate(masks):
        want = _masked_logits(hf, ids, mask.numpy())
        rows = slice(m * len(prompts), (m + 1) * len(prompts))
        tol = 32 * np.finfo(np.float32).eps * max(1.0, float(want.abs().max()))
        np.testing.assert_allclose(s.logits[rows, 0].numpy(), want.gather(1, answers).numpy()[:, 0], atol=tol)
        np.testing.assert_allclose(s.log_probs[rows, 0].numpy(),
                                   want.log_softmax(-1).gather(1, answers).numpy()[:, 0], atol=tol)
        assert torch.equal(s.top[rows], want.argmax(-1))
    # every head pruned is a different model from none pruned
    assert not torch.allclose(s.logits[:len(prompts)], s.logits[2 * len(prompts):])


def test_prune_follows_the_entropy_and_random_orders(embedded_model, embedded_tokenizer):
    prompts = nr.tasks.kth_smallest(40, length=5, k=2, seed=3)
    ds = nr.prune(embedded_model, prompts, fractions=(0.125, 0.25, 0.5, 1.0), n_random=2, seed=5, batch_size=64,
                  progress=False)
    nr.testing.assert_valid_result(ds)
    assert list(ds["ordering"].values) == ["entropy_position", "entropy_rank", "random5", "random6"]
    assert list(ds["n_pruned"].values) == [2, 4, 8, 16]
    hf = _hf(embedded.revision_path("main"))
    ids = torch.tensor([embedded_tokenizer(p.text)["input_ids"] for p in prompts])
    answers = torch.tensor(backend.answer_tokens(embedded_model, [p.answer for p in prompts]))
    with torch.no_grad():
        last = torch.stack(hf(ids, output_attentions=True).attentions, 1)[:, :, :, -1].double().numpy()
    numbers = last[..., 3:8]  # the numbers follow "<bos> Numbers :"
    by_rank = np.stack([numbers[i][..., np.argsort([int(s.text) for s in p.statements])]
                        for i, p in enumerate(prompts)])
    orders = {}
    for view, a in (("position", numbers), ("rank", by_rank)):
        h = np.array([[entropy(row) / np.log(5) for row in lh] for lh in a.mean(0)])
        np.testing.assert_allclose(ds["head_entropy"].sel(view=view).values, h, atol=1e-5)
        orders[f"entropy_{view}"] = np.argsort(h.ravel(), kind="stable")
    for r in (5, 6):
        orders[f"random{r}"] = np.random.default_rng(r).permutation(16)
    for name, order in orders.items():
        for f, k in zip(ds["fraction"].values, ds["n_pruned"].values):
            mask = np.ones(16)
            mask[order[:k]] = 0
            np.testing.assert_array_equal(ds["pruned"].sel(ordering=name, fraction=f).values.ravel(), 1 - mask)
            logits = _masked_logits(hf, ids, mask.reshape(4, 4))
            correct = (logits.argmax(-1) == answers).numpy()
            np.testing.assert_array_equal(ds["correct"].sel(ordering=name, fraction=f).values, correct)
            assert float(ds["accuracy"].sel(ordering=name, fraction=f)) == pytest.approx(correct.mean())
            p = logits.softmax(-1).gather(1, answers[:, None]).numpy()[:, 0]
            assert float(ds["p_answer"].sel(ordering=name, fraction=f)) == pytest.approx(p.mean(), abs=1e-6)
    with torch.no_grad():
        plain = hf(ids).logits[:, -1]
    assert float(ds["accuracy_unpruned"]) == pytest.approx((plain.argmax(-1) == answers).float().mean().item())
    assert float(ds["accuracy_unpruned"]) > 0.9
    # all heads pruned: the same model for every order
    assert len(set(ds["accuracy"].sel(fraction=1.0).values.tolist())) == 1
    again = nr.prune(embedded_model, prompts, fractions=(0.125, 0.25, 0.5, 1.0), n_random=2, seed=5, progress=False)
    np.testing.assert_array_equal(again["correct"].values, ds["correct"].values)  # other batches, same numbers
    fig = nr.plot_result(ds)
    assert "head pruning" in fig._suptitle.get_text()


def test_prune_bad_input(embedded_model):
    prompts = nr.tasks.kth_smallest(8)
    for kwargs, msg in [(dict(fractions=(0.0,)), "fractions must be in"), (dict(fractions=(1.5,)), "fractions"),
                        (dict(orderings=("largest",)), "orderings must be some of"),
                        (dict(n_random=0), "n_random must be >= 1")]:
        with pytest.raises(UsageError, match=msg):
            nr.prune(embedded_model, prompts, progress=False, **kwargs)
    words = nr.tasks.ReasoningPrompt(tuple(nr.tasks.Statement(t) for t in ("Anne is kind .", "Bob is red .")), "7",
                                     "", "Question : how many ? Answer :")  # statements that are not numbers
    with pytest.raises(UsageError, match="entropy_rank order needs statements that are numbers"):
        nr.prune(embedded_model, [words, words], progress=False)
    with pytest.raises(UsageError, match="not a single token"):
        nr.prune(embedded_model, nr.tasks.load_reasoning(DATA / "proofwriter.jsonl"), progress=False)


def test_cli_prune(tmp_path):
    out = tmp_path / "prune.nc"
    r = reason_interp(["prune", "--n-prompts", "24", "--fraction", "0.25", "--fraction", "0.5", "--n-random", "2",
                       "--out", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "lowest H position first" in r.stdout and "random (mean [range] of 2)" in r.stdout
    ds = nr.load_result(out)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["method"] == "head_pruning" and list(ds["fraction"].values) == [0.25, 0.5]
    assert not parts_dir(out).exists()
    r = reason_interp(["plot", str(out)])
    assert r.returncode == 0 and (tmp_path / "prune.png").stat().st_size > 10_000, r.stderr
    for args, msg in [(["--fraction", "2"], "fractions must be in"), (["--ordering", "size"], "orderings must be")]:
        bad = tmp_path / "bad.nc"
        r = reason_interp(["prune", "--n-prompts", "8", "--out", str(bad), "--no-progress"] + args)
        assert r.returncode == 2 and msg in r.stderr and not bad.exists() and not parts_dir(bad).exists(), r.stderr
