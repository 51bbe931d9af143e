"""A model whose numbers overflow: NaN in its outputs is counted, recorded and said, not hidden.

The model is a tiny real GPT-NeoX whose embedding row of one token is NaN (what a float16
overflow leaves behind); which prompts it spoils is read from a plain Hugging Face forward.
"""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import nnsight_reasoning as nr

from .clirun import in_process
from .conftest import eager_hf


@pytest.fixture(scope="module")
def poisoned(tiny_model_dir, embedded_tokenizer, tmp_path_factory):
    """(directory of the tiny model with the embedding of " equals" NaN, the clean directory,
    arithmetic pairs and examples): the template "{expr} equals" is spoilt, the other three not."""
    clean = tiny_model_dir("gpt_neox")
    (tok,) = embedded_tokenizer(" equals", add_special_tokens=False)["input_ids"]
    path = tmp_path_factory.mktemp("nan_model")
    shutil.copytree(clean, path, dirs_exist_ok=True)
    hf = eager_hf(clean)
    with torch.no_grad():
        hf.get_input_embeddings().weight[tok] = float("nan")
    hf.save_pretrained(path)
    pairs = nr.tasks.arithmetic(n_prompts=12, seed=5, tokenizer=embedded_tokenizer)
    examples = nr.tasks.examples("arithmetic", n_prompts=12, seed=5, tokenizer=embedded_tokenizer)
    return path, clean, pairs, examples


def _nan_last_logits(path, texts):
    """Per text: whether a plain HF forward gives NaN among its last position's logits."""
    hf, tok = eager_hf(path), nr.load_model(str(path)).tokenizer
    with torch.no_grad():
        return np.array([bool(torch.isnan(hf(torch.tensor([tok(t)["input_ids"]])).logits[0, -1]).any())
                         for t in texts])


def test_patch_counts_the_nan_and_leaves_it_where_it_went(poisoned):
    path, _, pairs, _ = poisoned
    spoilt = _nan_last_logits(path, [p.base for p in pairs]) | _nan_last_logits(path, [p.source for p in pairs])
    assert spoilt.any() and not spoilt.all()
    said = r"returned [\d,]+ NaN numbers; the result holds NaN .* runs in float32: check its weights"
    with pytest.warns(nr.NaNWarning, match=said):
        ds = nr.patch(nr.load_model(str(path)), pairs, sites=["mlp", "attn"], metric="logit_diff", progress=False)
    assert ds.attrs["n_nan_values"] > 0 and ds.attrs["dtype"] == "float32"
    for site in ("mlp", "attn"):
        nan = np.isnan(ds[site].values).reshape(len(pairs), -1)
        np.testing.assert_array_equal(nan.all(1), spoilt, err_msg=site)  # a pair that holds the token: all NaN
        assert not nan[~spoilt].any(), site  # the others: none


def test_a_clean_model_counts_zero_and_says_nothing(poisoned):
    _, clean, pairs, examples = poisoned
    with warnings.catch_warnings():
        warnings.simplefilter("error", nr.NaNWarning)
        ds = nr.evaluate(nr.load_model(str(clean)), examples, progress=False)
        assert nr.patch(nr.load_model(str(clean)), pairs, progress=False).attrs["n_nan_values"] == 0
    assert ds.attrs["n_nan_values"] == 0


def test_over_models_the_count_is_per_model(poisoned):
    path, clean, _, examples = poisoned
    with pytest.warns(nr.NaNWarning, match=rf"returned [\d,]+ NaN numbers \(at model {path}\)") as said:
        ds = nr.evaluate([str(clean), str(path)], examples, progress=False)
    assert len([w for w in said if w.category is nr.NaNWarning]) == 1  # one call, one line
    counts = ds["n_nan_values"].values
    assert ds["n_nan_values"].dims == ("model",) and counts[0] == 0 and counts[1] > 0
    spoilt = _nan_last_logits(path, [e.prompt for e in examples])
    assert spoilt.any() and not spoilt.all()
    # evaluate ranks a NaN row last: never correct
    assert not ds["correct"].sel(model=str(path)).values[spoilt].any()


def test_in_a_sweep_the_count_is_per_checkpoint(poisoned, tmp_path):
    """A local directory with one sub-directory per revision: step0 clean, main spoilt."""
    path, clean, _, examples = poisoned
    shutil.copytree(clean, tmp_path / "m" / "step0")
    shutil.copytree(path, tmp_path / "m" / "main")
    with pytest.warns(nr.NaNWarning, match=r"NaN numbers \(at checkpoint main\)"):
        ds = nr.evaluate(str(tmp_path / "m"), examples, revisions="all", progress=False)
    assert ds["n_nan_values"].dims == ("checkpoint",)
    with pytest.warns(nr.NaNWarning):
        alone = nr.evaluate(nr.load_model(str(path)), examples, progress=False).attrs["n_nan_values"]
    np.testing.assert_array_equal(ds["n_nan_values"].values, [0, alone])


def test_a_sweep_sums_its_checkpoints_and_models(poisoned, tmp_path):
    """Per-run counts are coordinates in every sweep (an attr holding one run's count hid the
    others': 6 + 6 read 6), and the warning sums them; two models whose sweeps differ in where
    their NaN are stack (one model's count varied over checkpoints, the other's did not: xarray
    refused to merge)."""
    path, clean, _, examples = poisoned
    both, mixed, none = (tmp_path / n for n in ("both", "mixed", "none"))
    for folder, step0, main in ((both, path, path), (mixed, clean, path), (none, clean, clean)):
        shutil.copytree(step0, folder / "step0")
        shutil.copytree(main, folder / "main")
    with pytest.warns(nr.NaNWarning) as said:
        alone = nr.evaluate(nr.load_model(str(path)), examples, progress=False).attrs["n_nan_values"]
    assert said[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(nr.NaNWarning, match=rf"returned {2 * alone:,} NaN numbers \(at checkpoint step0; checkpoint main\)"):
        ds = nr.evaluate(str(both), examples, revisions="all", progress=False)
    np.testing.assert_array_equal(ds["n_nan_values"].values, [alone, alone])
    with pytest.warns(nr.NaNWarning, match=rf"returned {alone:,} NaN numbers \(at model {mixed} checkpoint main\)"):
        ds = nr.evaluate([str(none), str(mixed)], examples, revisions="all", progress=False)
    assert ds["n_nan_values"].dims == ("model", "checkpoint")
    np.testing.assert_array_equal(ds["n_nan_values"].values, [[0, 0], [0, alone]])
    assert set(ds["dtype"].values.ravel().tolist()) == {"float32"}


def test_the_count_reads_padding_and_older_parts_as_nothing():
    """A padded cell (models with other revisions: NaN) and a part written before the count (-1)
    add nothing; the rest is summed."""
    import xarray as xr

    from nnsight_reasoning.runner import warn_nan

    ds = xr.Dataset(coords={"checkpoint": ["a", "b", "c", "d"],
                            "n_nan_values": ("checkpoint", np.array([np.nan, 3.0, -1.0, 4.0]))}, attrs={"model": "m"})
    with pytest.warns(nr.NaNWarning, match=r"m returned 7 NaN numbers \(at checkpoint b; checkpoint d\)"):
        warn_nan(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nr.NaNWarning)
        warn_nan(ds.assign_coords(n_nan_values=("checkpoint", np.array(["", "0", "-1", "0"]))))


def test_tuples_and_a_baseline_model_are_counted(poisoned, tmp_path):
    """The logit lens's backend returns a tuple; the probe's step0 baseline runs through
    Run.with_model: NaN from either is counted."""
    path, clean, _, examples = poisoned
    with pytest.warns(nr.NaNWarning):
        assert nr.logit_lens(nr.load_model(str(path)), examples, progress=False).attrs["n_nan_values"] > 0
    runs = tmp_path / "runs"  # a spoilt step0 (the baseline), a clean main (the probed model)
    shutil.copytree(path, runs / "step0")
    shutil.copytree(clean, runs / "main")
    prompts = nr.tasks.kth_smallest(16, length=5, k=2, seed=0)
    tok = nr.load_model(str(clean)).tokenizer
    ids = {t for p in prompts for t in tok(p.text)["input_ids"]}
    hf = eager_hf(clean)
    with torch.no_grad():
        hf.get_input_embeddings().weight[sorted(ids)[1]] = float("nan")  # a token every list's text may hold
    hf.save_pretrained(runs / "step0")
    main = nr.load_model(str(runs), revision="main")
    with warnings.catch_warnings():
        warnings.simplefilter("error", nr.NaNWarning)
        assert nr.probe(main, prompts, baseline="none", progress=False).attrs["n_nan_values"] == 0
    with pytest.warns(nr.NaNWarning):
        assert nr.probe(main, prompts, baseline="step0", progress=False).attrs["n_nan_values"] > 0


def test_a_float16_model_is_told_to_load_in_float32_or_bfloat16(poisoned):
    path, _, _, examples = poisoned
    with pytest.warns(nr.NaNWarning, match=r"load it in float32 or bfloat16 \(float16 overflows past 65,504\)"):
        nr.evaluate(nr.load_model(str(path), dtype=torch.float16), examples, progress=False)


def test_the_cli_says_it_in_one_line_and_keeps_the_count(poisoned, tmp_path):
    path = poisoned[0]
    out = tmp_path / "e.nc"
    res = in_process(["evaluate", "--model", str(path), "--n-prompts", "12", "--seed", "5", "--no-progress",
                      "--out", str(out)])
    assert res.returncode == 0, res.output
    lines = [line for line in res.stderr.splitlines() if "NaN" in line]  # (in process, HF's loading bars too)
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "attrs n_nan_values" in lines[0], res.stderr
    with xr.open_dataset(out) as ds:
        assert ds.attrs["n_nan_values"] > 0
