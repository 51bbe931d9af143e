"""Attribution patching: values against autograd with plain PyTorch hooks, and agreement with
exact activation patching on the embedded model (Pearson r, as its model card reports)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.sites import var_name

from .reference import reference_attribution

SITES = ["head", "attn", "mlp", "resid"]


@pytest.mark.parametrize("model_type,metric,ig_steps", [("gpt_neox", "stolfo_ie", 1), ("gpt2", "logit_diff", 3),
                                                        ("llama", "logit_diff", 1), ("gpt_neox", "logit_diff", 4)])
def test_attribution_matches_autograd_hooks(tiny_model_dir, small_pairs, model_type, metric, ig_steps):
    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    pairs = small_pairs[:3]
    ds = nr.patch(model, pairs, sites=SITES, positions="all", metric=metric, method="attribution",
                  ig_steps=ig_steps, batch_size=8, progress=False)  # 8 rows: pairs split over passes
    assert ds.attrs["method"] == "attribution_patching" and ds.attrs["ig_steps"] == ig_steps
    weights = list(model._module.parameters())
    assert all(w.grad is None for w in weights) and all(w.requires_grad for w in weights)  # no side effects
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    ref = reference_attribution(hf, model.tokenizer, list(pairs), SITES, metric, ig_steps)
    for site in SITES:
        got, want = ds[var_name(site)].values, ref[site]
        assert np.array_equal(np.isnan(got), np.isnan(want)), site  # NaN past each prompt's end
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)), err_msg=site)
    nr.testing.assert_valid_result(ds)
    last = nr.patch(model, pairs, sites=["mlp"], method="attribution", ig_steps=ig_steps, metric=metric,
                    progress=False)
    lengths = ds["n_tokens"].values
    np.testing.assert_allclose(last["mlp"].values[:, :, 0],
                               ref["mlp"][np.arange(3), :, lengths - 1], rtol=1e-4, atol=1e-6)


def test_attribution_against_exact_patching_on_the_embedded_model(embedded_model):
    """The model card's agreement of attribution patching with exact patching (attn and mlp at
    every position, logit_diff; 1 gradient step and 5 IG steps), re-measured here with an
    independent Pearson r over the cells both define."""
    from nnsight_reasoning import embedded

    card = embedded.card()
    pairs = nr.tasks.arithmetic(**card["patch_data"])
    exact = nr.patch(embedded_model, pairs, sites=["attn", "mlp"], positions="all", metric="logit_diff", progress=False)
    for steps in (1, 5):
        est = nr.patch(embedded_model, pairs, sites=["attn", "mlp"], positions="all", metric="logit_diff",
                       method="attribution", ig_steps=steps, progress=False)
        for site in ("attn", "mlp"):
            x, y = exact[site].values.ravel(), est[site].values.ravel()
            assert (np.isnan(x) == np.isnan(y)).all()  # both undefined past a shorter prompt's end
            r = np.corrcoef(x[~np.isnan(x)], y[~np.isnan(y)])[0, 1]
            assert r == pytest.approx(card["patching"][f"r_{site}_ig{steps}"], abs=1e-4), (site, steps)


def test_attribution_errors(embedded_model, small_pairs):
    for kwargs, msg in [(dict(method="gradient"), "method must be one of"),
                        (dict(ig_steps=3), "only with method='attribution'"),
                        (dict(method="attribution", ig_steps=0), "ig_steps must be")]:
        with pytest.raises(UsageError, match=msg):
            nr.patch(embedded_model, small_pairs, sites=["mlp"], progress=False, **kwargs)


def test_cli_attribution_writes_its_own_default_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app

    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--method", "attribution", "--ig-steps", "2"]):
        res = CliRunner().invoke(app, ["patch", "--n-prompts", "4", "--site", "mlp", "--no-progress", *extra])
        assert res.exit_code == 0, res.output
    exact = nr.load_result(tmp_path / "results" / "patch_arithmetic_embedded_main.nc")
    est = nr.load_result(tmp_path / "results" / "attribution_arithmetic_embedded_main.nc")
    assert exact.attrs["method"] == "activation_patching" and est.attrs["method"] == "attribution_patching"
    assert est.attrs["ig_steps"] == 2
