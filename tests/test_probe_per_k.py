"""MechanisticProbe's probe of a pretrained model for every k in one run (``src/stask/probe.py:124-131``
@aa0bfd9: one sample of lists, labelled for k = 1 … 8 in turn, one probe per k): ``kth_smallest(k=[…])``
gives the lists once per k as prompt groups, ``attention`` reads each token sequence once, and
``probe`` scores each k as a run on that k alone does (itself checked against numpy kNN in
tests/test_probe.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import nnsight_reasoning as nr
from nnsight_reasoning.tasks import TaskError

from .clirun import in_process


@pytest.mark.parametrize("style", ["repository", "toolkit"])
def test_several_k_are_the_same_lists_labelled_for_each_k(style):
    many = nr.tasks.kth_smallest(20, length=8, k="1-3,5", style=style, seed=4)
    assert many.params["k"] == [1, 2, 3, 5] and ", k (" in many.params["group"] and len(many) == 80
    for i, k in enumerate((1, 2, 3, 5)):
        one = nr.tasks.kth_smallest(20, length=8, k=k, style=style, seed=4)
        part = many.prompts[20 * i: 20 * (i + 1)]
        assert [p.group for p in part] == [k] * 20
        assert [(p.text, p.answer, p.statements) for p in part] == [(p.text, p.answer, p.statements) for p in one]
    assert nr.tasks.kth_smallest(3, k=[2]).prompts[0].group == 2  # a list of one k is still a group
    for i in range(20):  # the same lists for every k; only the labels and answers change
        assert len({tuple(s.text for s in many.prompts[i + 20 * j].statements) for j in range(4)}) == 1
    with pytest.raises(TaskError, match="takes one k"):
        nr.tasks.kth_smallest_examples(3, k="1-2")
    for bad in ("0-2", "a", [2, 2], []):
        with pytest.raises(TaskError):
            nr.tasks.kth_smallest(3, k=bad)
    with pytest.raises(TaskError, match="take one k"):
        nr.tasks.kth_smallest_pairs(3, k=[1, 2])


def test_attention_reads_each_list_once_and_probe_scores_each_k_as_alone(embedded_model):
    many = nr.tasks.kth_smallest(48, length=8, k=[1, 2, 3], style="repository", seed=0)
    att = nr.attention(embedded_model, many, batch_size=48, progress=False)
    assert att.attrs["n_forward_passes"] == 1  # 144 prompts, 48 token sequences
    ds = nr.probe(embedded_model, many, baseline="random", progress=False)
    nr.testing.assert_valid_result(ds)
    assert list(ds["group"].values) == [1, 2, 3] and list(ds["group_prompts"].values) == [48, 48, 48]
    for k in (1, 2, 3):
        one = nr.tasks.kth_smallest(48, length=8, k=k, style="repository", seed=0)
        single = nr.attention(embedded_model, one, progress=False)
        rows = slice(48 * (k - 1), 48 * k)
        for v in ("attention", "mass", "prompt_entropy"):  # mass: the steps one k has (k = 1: no step2)
            np.testing.assert_array_equal(att[v].sel(group=single["group"].values).values[rows]
                                          if v == "mass" else att[v].values[rows], single[v].values)
        if k == 1:  # alone, k = 1 is refused: its step probe has one class (in the group it is NaN, below)
            continue
        alone = nr.probe(embedded_model, one, baseline="random", progress=False)
        for v in ("f1", "f1_all", "accuracy", "baseline_f1_all", "score_all"):
            np.testing.assert_array_equal(ds[v].sel(group=k).values, alone[v].values)
    assert np.isnan(ds["f1_all"].sel(group=1, probe="step"))  # k = 1: one step, one class


def test_probe_per_k_from_the_cli(tmp_path):
    out = tmp_path / "k.nc"
    r = in_process(["probe", "--param", "style=repository", "--length", "8", "--param", "k=1-3", "--n-prompts", "32",
                    "--baseline", "none", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert list(nr.load_result(out)["group"].values) == [1, 2, 3]
    assert re.search(r"┃\s*k\s*┃\s*prompts", r.stdout)  # the per-group table names its groups k
    bad = tmp_path / "bad.nc"
    r = in_process(["probe", "--param", "k=0-3", "--out", str(bad)])
    assert r.returncode == 2 and "k must be" in r.stderr and not bad.exists()
    # commands that score answers take one k (in the repository style one text would have several answers)
    for cmd, match in (("evaluate", "takes one k"), ("prune", "give one k")):
        r = in_process([cmd, "--task", "kth_smallest", "--param", "style=repository", "--param", "k=1-3", "--out",
                        str(bad)])
        assert r.returncode == 2 and match in r.stderr and not bad.exists(), (cmd, r.stderr)
