"""Several models in one run (``model=[...]``, ``--model A --model B``): results stacked along a
leading ``model`` dim equal to each model's own run, sizes padded where models differ, data made
per tokenizer, revisions within models, resume, the parameter count against a plain torch
count, the CLI and its refusals, and binding-iclr's capitals-over-model-sizes figure."""
from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.results.checkpoints import one_model



def _pairs(tok):
    return nr.tasks.arithmetic(n_prompts=6, seed=3, tokenizer=tok)


def _same(single, part, variables):
    for v in variables:
        np.testing.assert_array_equal(part[v].values, single[v].values, err_msg=v)


def test_binding_means_over_two_models_equal_their_own_runs(tiny_model_dir):
    models = ["embedded", str(tiny_model_dir("gpt2"))]
    ctx = nr.tasks.binding_contexts(4, 2, 4, 0, "capitals", True)
    ds = nr.binding(models, ctx, measure="means", progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds["means_accuracy"].dims[0] == "model" and list(ds["model"].values) == models
    assert ds.attrs["model"] == ",".join(models) and ds.attrs["n_models"] == 2
    # the embedded model has 5 depths and d_model 128, the tiny one 3 and 32: padded with NaN
    assert ds.sizes["depth"] == 5 and ds.sizes["d_model"] == 128
    assert np.isnan(ds["delta"].sel(model=models[1], depth=4)).all()
    for m in models:
        single = nr.binding(m, ctx, measure="means", progress=False)
        part = one_model(ds, m)
        assert part.sizes == single.sizes, m
        _same(single, part, single.data_vars)
        hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main") if m == "embedded" else m)
        assert int(ds["n_parameters"].sel(model=m)) == sum(w.numel() for w in hf.parameters()) == \
            single.attrs["n_parameters"]
        assert part.attrs["model"] == m and part.attrs["revision"] == single.attrs["revision"]


@pytest.mark.slow  # four sweeps and two models twice (~12 s): the fast tier keeps the two-model oracle
def test_data_made_per_tokenizer_revisions_within_models_and_resume(tmp_path, tiny_model_dir):
    ladder = tmp_path / "ladder"  # a local model with revisions: two of the embedded model's
    ladder.mkdir()
    for rev in ("step0", "main"):
        (ladder / rev).symlink_to(embedded.revision_path(rev), target_is_directory=True)
    models = ["embedded", str(ladder)]
    ds = nr.evaluate(models, lambda tok: nr.tasks.examples("arithmetic", 6, tokenizer=tok),
                     revisions="step0,main", progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds["p_answer"].dims == ("model", "checkpoint", "prompt")
    # the same weights under two names: the same numbers
    np.testing.assert_array_equal(ds["p_answer"].sel(model=models[0]), ds["p_answer"].sel(model=models[1]))
    single = nr.evaluate("embedded", nr.tasks.examples("arithmetic", 6, tokenizer=embedded.load_tokenizer()),
                         revisions="step0,main", progress=False)
    _same(single, one_model(ds, "embedded"), ("p_answer", "correct", "answer_rank"))

    # prompt pairs depend on the tokenizer: made per model from the function
    where = tmp_path / "parts"
    models = ["embedded", str(tiny_model_dir("gpt2"))]
    first = nr.patch(models, _pairs, ("mlp",), progress=False, resume_dir=where)
    assert first.attrs["n_resumed_models"] == 0 and sorted(p.name for p in where.glob("*.nc")) == \
        ["model0_embedded.nc", f"model1_{models[1]}.nc".replace("/", "_")]
    (where / f"model1_{models[1]}.nc".replace("/", "_")).unlink()  # as if killed during the second model
    again = nr.patch(models, _pairs, ("mlp",), progress=False, resume_dir=where)
    assert again.attrs["n_resumed_models"] == 1
    for m in models:
        single = nr.patch(m, _pairs(nr.load_model(m).tokenizer), ("mlp",), progress=False)
        _same(single, one_model(first, m), single.data_vars)
        _same(single, one_model(again, m), single.data_vars)
    other = lambda tok: nr.tasks.arithmetic(n_prompts=4, seed=3, tokenizer=tok)  # noqa: E731
    with pytest.raises(nr.UsageError, match="different run"):  # other data: its parts are not reused
        nr.patch(models, other, ("mlp",), progress=False, resume_dir=where)
    with pytest.raises(nr.UsageError, match="given twice"):
        nr.patch(["embedded", "embedded"], _pairs, ("mlp",), progress=False)


def test_models_with_other_revisions_stack_in_training_order_and_plot_a_curve_each(tmp_path):
    """A sweep over models whose revisions differ: the outer join would sort the names as strings
    ("main" first); the stacked result keeps training order, each model's part is its own run,
    and the figure draws each model's learning curve at its own checkpoints."""
    import matplotlib

    matplotlib.use("Agg")
    ladder = tmp_path / "ladder"  # three of the embedded model's revisions under another name
    ladder.mkdir()
    for rev in ("step0", "step1500", "main"):
        (ladder / rev).symlink_to(embedded.revision_path(rev), target_is_directory=True)
    models, data = ["embedded", str(ladder)], lambda tok: nr.tasks.examples("arithmetic", 4, seed=1, tokenizer=tok)
    ds = nr.evaluate(models, data, revisions="all", progress=False)
    nr.testing.assert_valid_result(ds)
    assert list(ds["checkpoint"].values) == embedded.revisions()  # the ladder's three are among them
    single = nr.evaluate(str(ladder), data(embedded.load_tokenizer()), revisions="all", progress=False)
    part = one_model(ds, str(ladder))
    assert list(part["checkpoint"].values) == ["step0", "step1500", "main"]
    _same(single, part, ("p_answer", "accuracy", "mean_p_answer"))
    fig = nr.plot_result(ds)
    names = list(ds["checkpoint"].values)
    for ax, var in zip(fig.axes, ("accuracy", "mean_p_answer")):
        assert len(ax.lines) == len(models)
        for line, m in zip(ax.lines, models):
            own = one_model(ds, m)
            assert line.get_xdata().tolist() == [names.index(c) for c in own["checkpoint"].values]
            np.testing.assert_array_equal(line.get_ydata(), own[var].values)
    assert float(ds.mean_p_answer.sel(model=str(ladder), checkpoint="step1500")) == \
        float(ds.mean_p_answer.sel(model="embedded", checkpoint="step1500"))  # the same weights
    # as many revisions, other ones: each model's part is its own three, its curve unbroken
    other = tmp_path / "other"
    other.mkdir()
    for rev in ("step0", "step1000", "main"):
        (other / rev).symlink_to(embedded.revision_path(rev), target_is_directory=True)
    two = nr.evaluate([str(ladder), str(other)], data, revisions="all", progress=False)
    assert list(two["checkpoint"].values) == ["step0", "step1000", "step1500", "main"]
    assert "checkpoint" in two.attrs["padded_dims"]
    for m, revs in ((ladder, ["step0", "step1500", "main"]), (other, ["step0", "step1000", "main"])):
        assert list(one_model(two, str(m))["checkpoint"].values) == revs
    for ax in nr.plot_result(two).axes:
        assert len(ax.lines) == 2 and all(np.isfinite(line.get_ydata()).all() for line in ax.lines)


def test_lens_and_evaluate_figures_draw_each_model(tiny_model_dir):
    import matplotlib

    matplotlib.use("Agg")
    models, data = ["embedded", str(tiny_model_dir("gpt2"))], lambda tok: nr.tasks.examples("arithmetic", 4,
                                                                                              tokenizer=tok)
    lens = nr.logit_lens(models, data, progress=False)
    assert lens["layer"].values.tolist() == [-1, 0, 1, 2, 3]  # the tiny model's 2 layers padded
    fig = nr.plot_result(lens)
    for ax, var in zip(fig.axes, ("mean_p_answer", "accuracy")):
        assert len(ax.lines) == len(models)
        for line, m in zip(ax.lines, models):
            own = one_model(lens, m)
            assert line.get_xdata().tolist() == own["layer"].values.tolist() and line.get_label() == m
            np.testing.assert_array_equal(line.get_ydata(), own[var].values)
    ev = nr.evaluate(models, data, progress=False)
    fig = nr.plot_result(ev)
    for ax, var in zip(fig.axes, ("accuracy", "mean_p_answer")):
        assert len(ax.patches) == len(models)
        assert [b.get_height() for b in ax.patches] == [float(ev[var].sel(model=m)) for m in models]


def test_cli_several_models_figure_and_refusals(tmp_path, tiny_model_dir):
    tiny = str(tiny_model_dir("gpt2"))
    out = tmp_path / "capitals.nc"
    args = ["binding", "--measure", "means", "--family", "capitals", "--n-contexts", "4", "--n-estimate", "4",
            "--no-progress", "--model", "embedded", "--model", tiny]
    r = CliRunner().invoke(app, args + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 models" in r.stdout and "model embedded" in r.stdout and f"model {tiny}" in r.stdout
    ds = nr.load_result(out)
    assert list(ds["model"].values) == ["embedded", tiny]
    single = nr.binding(tiny, nr.tasks.binding_contexts(4, 2, 4, 0, "capitals", True), measure="means",
                        progress=False)
    _same(single, one_model(ds, tiny), ("means_logprob", "means_accuracy"))
    r = CliRunner().invoke(app, ["plot", str(out), "--out", str(tmp_path / "capitals.png")])
    assert r.exit_code == 0 and (tmp_path / "capitals.png").stat().st_size > 0, r.output

    for bad, message in ((["--revision", "main"], "--revisions REV"), (["--model", tiny], "given twice"),
                         (["--adapter", str(tmp_path)], "one --model")):
        r = CliRunner().invoke(app, args + bad + ["--out", str(tmp_path / "bad.nc")])
        assert r.exit_code == 2 and message in r.stderr, (bad, r.output)
        assert not (tmp_path / "bad.nc").exists() and not (tmp_path / "bad.nc.parts").exists()


def test_stacking_refuses_results_of_different_experiments():
    import xarray as xr

    from nnsight_reasoning.results.checkpoints import stack_models

    a = xr.Dataset({"x": ("prompt", np.zeros(2))}, attrs={"model": "a"})
    b = xr.Dataset({"y": ("prompt", np.zeros(2))}, attrs={"model": "b"})
    with pytest.raises(nr.UsageError, match="one experiment configuration"):
        stack_models([a, b], ["a", "b"])


def test_binding_fig6_left_is_the_cyclic_swaps_over_models(tiny_model_dir):
    """binding-iclr's Fig. 6 (left; paper_plots.ipynb cells 31-32) puts the cyclic swaps of three
    binding IDs and their control against model size, chance 1/3: one line per target whose points
    are each model's own cyclic_accuracy, smallest model first."""
    import matplotlib

    matplotlib.use("Agg")
    models = ["embedded", str(tiny_model_dir("gpt2"))]
    ds = nr.binding(models, nr.tasks.binding_contexts(4, 3, 4, 0, "capitals", True), measure="cyclic",
                    progress=False)
    fig = nr.plot_result(ds)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    smallest_first = sorted(models, key=lambda m: int(ds["n_parameters"].sel(model=m)))
    for t in ds["target"].values:
        want = [float(ds["cyclic_accuracy"].sel(model=m, target=t)) for m in smallest_first]
        np.testing.assert_allclose(lines[str(t)].get_ydata(), want)
    assert lines["chance"].get_ydata()[0] == pytest.approx(1 / 3) and ax.get_xscale() == "log"
