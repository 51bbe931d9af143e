"""MechanisticProbe's attention-flow case study (``src/stask/prune.py:185-242`` @aa0bfd9): the
smallest numbers placed at fixed positions (``kth_smallest(place=...)``), attention read with a
head-pruning result's heads pruned (``nr.attention(..., pruned=...)``), and the flow figure.
Patterns are checked against plain PyTorch hooks on the HF model, the placement against the
repository's swaps written out again, the flow against numpy."""
from __future__ import annotations

import random
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import backend, embedded
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.plotting.attention import flow_weights
from nnsight_reasoning.tasks import TaskError
from nnsight_reasoning.tasks.kth_smallest import placed

from .clirun import in_process as reason_interp
from .reference_edges import heads_kept


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _masked_attentions(hf, ids, mask):
    """(L, H, T, T) attention probabilities of one prompt with head h of layer l zeroed where
    mask[l, h] == 1 (plain hooks); ``output_attentions`` reads the patterns."""
    with heads_kept(hf, 1 - mask), torch.no_grad():
        return torch.stack(hf(torch.tensor([ids]), output_attentions=True).attentions)[:, 0].double().numpy()


def _repository_place(numbers: list[int], pos_00: int = 8, pos_01: int = 12) -> list[str]:
    """``prune.py:211-220`` written out again on the prompt's words."""
    data_num = [str(x) for x in numbers]
    data_sorted = sorted(int(d) for d in data_num)
    data_min00, data_min01 = str(data_sorted[0]), str(data_sorted[1])
    data_drop_00, data_drop_01 = data_num[pos_00 - 1], data_num[pos_01 - 1]
    data_num[data_num.index(data_min00)] = data_drop_00
    data_num[data_num.index(data_min01)] = data_drop_01
    data_num[pos_00 - 1] = data_min00
    data_num[pos_01 - 1] = data_min01
    return data_num


def test_placing_follows_the_repositorys_swaps():
    # the swaps against the repository's, on lists where the two smallest start at or near the targets
    rng = random.Random(0)
    compared = lost = 0
    for _ in range(300):
        nums = rng.sample(range(100), 16)
        if rng.random() < 0.3:  # the smallest already at position 12, the second at 8: the awkward order
            lo = sorted(nums)
            i0, i1 = nums.index(lo[0]), nums.index(lo[1])
            nums[i0], nums[11] = nums[11], nums[i0]
            i1 = nums.index(lo[1])
            nums[i1], nums[7] = nums[7], nums[i1]
        want = _repository_place(nums)
        if len(set(want)) == 16:
            assert [str(x) for x in placed(nums, (8, 12))] == want
            compared += 1
        else:  # e.g. the smallest started at position 12: the repository's writes then hold one number twice
            # and lose another; here each move is a swap
            got = placed(nums, (8, 12))
            assert sorted(got) == sorted(nums) and got[7] == min(nums) and got[11] == sorted(nums)[1]
            lost += 1
    assert compared > 250 and lost > 0
    prompts = nr.tasks.kth_smallest(40, length=16, k=2, style="repository", place="8,12", seed=3)
    assert prompts.params["place"] == [8, 12] and len(prompts) == 40
    for p in prompts:
        nums = [int(s.text) for s in p.statements]
        assert len(set(nums)) == 16  # only lists of distinct numbers are placed (prune.py:212)
        lo = sorted(nums)
        assert nums[7] == lo[0] and nums[11] == lo[1] and p.answer == str(lo[1])
        assert [s.step for s in p.statements] == [0] * 7 + [1] + [0] * 3 + [2] + [0] * 4  # leaf 8, root 12
    # the toolkit style: same draws as without place, the two smallest moved
    plain = nr.tasks.kth_smallest(30, length=6, k=3, seed=2)
    moved = nr.tasks.kth_smallest(30, length=6, k=3, seed=2, place=[1, 4, 6])
    for a, b in zip(plain, moved):
        x, y = [int(s.text) for s in a.statements], [int(s.text) for s in b.statements]
        assert sorted(x) == sorted(y) and a.answer == b.answer
        assert y[0] == min(x) and y[3] == sorted(x)[1] and y[5] == sorted(x)[2]
        assert [s.step for s in b.statements] == [1, 0, 0, 1, 0, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(place="8,17", length=16, style="repository"), "distinct positions in 1..length=16"),
    (dict(place=[3, 3]), "distinct positions"),
    (dict(place="a,b"), "place=8,12"),
    (dict(place=[1, 2], corrupt="shuffle"), "give one of the two"),
    (dict(place=[1], length=50, style="repository"), "lower length"),
])
def test_placing_refuses_what_it_cannot_do(kwargs, match):
    with pytest.raises(TaskError, match=match):
        nr.tasks.kth_smallest(4, **kwargs)


def test_pairs_refuse_labelled_only_options():
    for kw in (dict(place=[1, 2]), dict(joined=True)):
        with pytest.raises(TaskError, match="labelled prompts"):
            nr.tasks.kth_smallest_pairs(4, **kw)


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "llama"])
def test_pruned_patterns_match_hooks(embedded_model, tiny_model_dir, model_type):
    path = embedded.revision_path("main") if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(str(path))
    hf = _hf(path)
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    mask = (np.random.default_rng(1).random((n_layers, n_heads)) < 0.4).astype(np.int8)
    mask[0, 0] = 1  # at least one head of the first layer, so later layers' patterns change
    prompts = nr.tasks.kth_smallest(5, length=5, k=2, seed=4, place=[2, 4])
    ds = nr.attention(model, prompts, patterns="all", pruned=mask, batch_size=2, progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["n_pruned"] == int(mask.sum())
    np.testing.assert_array_equal(ds["pruned"].values, mask)
    ids = backend.tokenize(model, [p.text for p in prompts])
    changed = False
    for i, row in enumerate(ids):
        want = _masked_attentions(hf, row, mask)
        t = len(row)
        np.testing.assert_allclose(ds["attention"].values[i, :, :, :t, :t], want, atol=2e-6)
        plain = _masked_attentions(hf, row, np.zeros_like(mask))
        np.testing.assert_allclose(want[0], plain[0], atol=1e-6)  # the first layer reads before any pruned output
        changed |= not np.allclose(want[1:], plain[1:], atol=1e-4)
    assert changed  # pruning is seen downstream
    if model_type == "embedded":  # the remote serialisation path ships the mask with the request
        # same batches: another batch size may take another float32 kernel path on some CPUs
        far = nr.attention(model, prompts, patterns="all", pruned=mask, batch_size=2, remote="local",
                           progress=False)
        np.testing.assert_array_equal(far["attention"].values, ds["attention"].values)
    # a subset of layers and heads reads the same patterns under the same mask
    sub = nr.attention(model, prompts, layers=[n_layers - 1], heads=[1], patterns="last", pruned=mask,
                       progress=False)
    np.testing.assert_allclose(sub["attention"].values[:, 0, 0, 0], ds["attention"].values[:, -1, 1, -1], atol=1e-6)
    np.testing.assert_array_equal(sub["pruned"].values, mask[[n_layers - 1]][:, [1]])


def test_flow_weights_average_the_unpruned_heads(embedded_model):
    prune = nr.prune(embedded_model, nr.tasks.kth_smallest(48, length=8, k=2, seed=0), fractions=(0.25, 0.5),
                     orderings=("entropy_position",), progress=False)
    mask = prune["pruned"].sel(ordering="entropy_position", fraction=0.5)
    prompts = nr.tasks.kth_smallest(24, length=8, k=2, seed=1, place=[3, 6])
    ds = nr.attention(embedded_model, prompts, patterns="all", pruned=mask, progress=False)
    np.testing.assert_array_equal(ds["pruned"].values, mask.values)
    a = ds["attention"].values.astype(np.float64).mean(0)  # (L, H, T, T)
    tol = 32 * np.finfo(np.float32).eps  # the stored patterns are float32, averaged in float32
    keep = mask.values == 0
    w = flow_weights(ds).values
    for li in range(a.shape[0]):
        if keep[li].any():
            np.testing.assert_allclose(w[li], a[li, keep[li]].mean(0), atol=tol)
        else:
            assert np.isnan(w[li]).all()
    # the placed leaf (3rd number) and root (6th) carry steps 1 and 2 in every prompt
    assert (ds["key_step"].values[:, 3 + 2] == 1).all() and (ds["key_step"].values[:, 3 + 5] == 2).all()
    fig = nr.plot_result(ds, kind="flow")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "5 #3 (leaf)" in labels and "8 #6 (root)" in labels
    # the same without pruning: a plain mean over heads
    plain = nr.attention(embedded_model, prompts, patterns="all", progress=False)
    np.testing.assert_allclose(flow_weights(plain).values, plain["attention"].values.astype(np.float64).mean((0, 2)),
                               atol=tol)
    # the answer's statement is the root even where it is not placed: a placed leaf stays a leaf
    for k, place, want in ((2, [3], ["5 #3 (leaf)"]), (3, [2, 4], ["4 #2 (leaf)", "6 #4 (leaf)"])):
        part = nr.attention(embedded_model, nr.tasks.kth_smallest(6, length=6, k=k, seed=1, place=place),
                            patterns="all", progress=False)
        marked = [t.get_text() for t in nr.plot_result(part, kind="flow").axes[0].get_yticklabels() if "(" in t.get_text()]
        assert sorted(marked) == want
    # over checkpoints: the per-key steps keep their own name beside the sweep's training step
    sweep = nr.attention(embedded_model, prompts, patterns="all", pruned=mask, revisions=["step512", "main"],
                         progress=False)
    assert sweep["key_step"].dims == ("prompt", "key") and sweep["step"].dims == ("checkpoint",)
    labels = [t.get_text() for t in nr.plot_result(sweep, kind="flow").axes[0].get_yticklabels()]
    assert "5 #3 (leaf)" in labels and "8 #6 (root)" in labels
    with pytest.raises(UsageError, match="patterns='all'"):
        flow_weights(nr.attention(embedded_model, prompts, progress=False))
    mixed = nr.tasks.ReasoningPrompts("kth_smallest", {}, nr.tasks.kth_smallest(2, length=4).prompts
                                      + nr.tasks.kth_smallest(2, length=5).prompts)
    with pytest.raises(UsageError, match="same number of tokens"):
        flow_weights(nr.attention(embedded_model, mixed, patterns="all", progress=False))


def test_pruned_masks_are_checked(embedded_model):
    prompts = nr.tasks.kth_smallest(2, length=4)
    prune = nr.prune(embedded_model, prompts, fractions=(0.5,), n_random=1, progress=False)
    for bad, match in ((np.ones((3, 4)), r"shape \(4, 4\)"), (np.full((4, 4), 2), "1 \\(pruned\\) or 0"),
                       (prune["pruned"], "select one value along ordering, fraction")):
        with pytest.raises(UsageError, match=match):
            nr.attention(embedded_model, prompts, pruned=bad, progress=False)


def test_attention_flow_from_the_cli(tmp_path, monkeypatch):
    prune = tmp_path / "prune.nc"
    r = reason_interp(["prune", "--task", "kth_smallest", "--length", "6", "--n-prompts", "24", "--n-random", "1",
                       "--out", str(prune)])
    assert r.returncode == 0, r.stderr
    flow = tmp_path / "flow.nc"
    r = reason_interp(["attention", "--task", "kth_smallest", "--length", "6", "--n-prompts", "16", "--param",
                       "place=2,5", "--patterns", "all", "--pruned", str(prune), "--out", str(flow)])
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(flow)
    want = nr.load_result(prune)["pruned"].sel(ordering="entropy_position", fraction=0.4)
    np.testing.assert_array_equal(ds["pruned"].values, want.values)
    assert ds.attrs["pruned_from"] == "prune.nc: embedded@main, entropy_position at 0.4"  # the mask's provenance
    assert "heads pruned: L" in r.stdout and "pruned heads from prune.nc" in r.stdout
    other = shutil.copytree(embedded.revision_path("main"), tmp_path / "copy")  # the same weights, another model
    r = reason_interp(["attention", "--task", "kth_smallest", "--length", "6", "--n-prompts", "4", "--model",
                       str(other), "--pruned", str(prune), "--out", str(tmp_path / "other.nc")])
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]  # the CLI's one-line warnings
    assert len(said) == 1 and re.search(r"heads were pruned on embedded, not on .*copy", said[0]), r.stderr
    # the same model by its directory, written relative to the cwd, and another revision of it: no warning
    monkeypatch.chdir(embedded.revision_path("main").parent)
    for k, model in enumerate(("./main", str(embedded.revision_path("step1000")))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = reason_interp(["attention", "--task", "kth_smallest", "--length", "6", "--n-prompts", "4", "--model",
                               model, "--pruned", str(prune), "--out", str(tmp_path / f"same{k}.nc")])
        assert r.returncode == 0 and "warning:" not in r.stderr, r.stderr
    r = reason_interp(["plot", str(flow), "--kind", "flow"])
    assert r.returncode == 0 and (tmp_path / "flow.flow.png").exists(), r.stderr
    for extra, match in ((["--pruned-fraction", "0.45"], "has 0.1, 0.2"), (["--pruned-order", "random7"], "has "),
                         (["--param", "place=2,9"], "1..length=6")):
        out = tmp_path / "bad.nc"
        r = reason_interp(["attention", "--task", "kth_smallest", "--length", "6", "--pruned", str(prune),
                           "--out", str(out), *extra])
        assert r.returncode == 2 and match in r.stderr and not out.exists(), r.stderr
    r = reason_interp(["attention", "--task", "kth_smallest", "--pruned", str(flow), "--out", str(tmp_path / "b.nc")])
    assert r.returncode == 2 and "not a head-pruning result" in r.stderr
    r = reason_interp(["patch", "--task", "kth_smallest", "--param", "joined=true", "--out", str(tmp_path / "p.nc")])
    assert r.returncode == 2 and "labelled prompts" in r.stderr
    r = reason_interp(["attention", "--pruned-fraction", "0.2", "--out", str(tmp_path / "c.nc")])
    assert r.returncode == 2 and "add --pruned" in r.stderr and not (tmp_path / "c.nc").exists()
