"""The public API as SPEC and README show it (what a notebook user types)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import nnsight_reasoning as nr  # noqa: E402
from nnsight_reasoning.experiments.patch_analysis import at_last_token  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


EXPERIMENTS = ["patch", "evaluate", "attention", "probe", "head_scores", "circuit", "edge_patching", "neurons",
               "binding"]


def test_public_names_exist_and_are_documented():
    for name in nr.__all__:
        obj = getattr(nr, name)
        assert obj is not None
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ and len(obj.__doc__) > 20, name


def test_every_experiment_has_the_harness_keywords_and_documents_them():
    """One noun per experiment, each nr.<noun>(model, data, *options, batch_size, remote, progress,
    resume_dir, revisions, scheduler, workers), as its signature (what Jupyter's `?` shows) says."""
    import inspect

    for name in EXPERIMENTS:
        fn = getattr(nr, name)
        params = list(inspect.signature(fn).parameters)
        assert params[:2] == ["model", params[1]] and params[1] != "run", name
        assert params[-7:] == ["batch_size", "remote", "progress", "resume_dir", "revisions", "scheduler",
                               "workers"], name
        for keyword in params[-7:]:
            assert f"    {keyword} :" in fn.__doc__, (name, keyword)
        assert fn.experiment.name in nr.testing.SCHEMAS or fn.experiment.name.endswith("patching"), name


def test_other_data_stops_at_the_harness_with_one_line_naming_the_generators(embedded_model):
    """Data of another kind (a string, pairs where single prompts belong) gets one line naming what the
    experiment takes and what makes it, not an AttributeError from deep inside; the right data passes."""
    import inspect

    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.runner import check_data

    pairs = nr.tasks.arithmetic(n_prompts=2)
    every = [n for n in nr.__all__ if hasattr(getattr(nr, n), "experiment")]
    assert set(EXPERIMENTS) < set(every)
    for name in every:
        fn = getattr(nr, name)
        required = {p.name: None for p in list(inspect.signature(fn).parameters.values())[2:]
                    if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY}  # path_patching's receivers
        with pytest.raises(UsageError, match=rf"^{fn.__name__}\(\) takes .+ \(got str\)$") as e:
            fn(embedded_model, "1 + 2 =", progress=False, **required)
        assert "\n" not in str(e.value), name
    with pytest.raises(UsageError, match=r"takes ReasoningPrompts or a list of ReasoningPrompt, from "
                                         r"nr.tasks.kth_smallest\(...\) .*\(got PromptPairs\)"):
        nr.attention(embedded_model, pairs, progress=False)
    with pytest.raises(UsageError, match=r"\(got a list of str\)"):
        nr.patch(embedded_model, ["1 + 2 =", "3 + 4 ="], progress=False)
    with pytest.raises(UsageError, match=r"\(got a list of PromptPair and str\)$"):  # each kind named
        nr.patch(embedded_model, [pairs[0], "oops"], progress=False)
    check_data(nr.patch.experiment.compute, list(pairs))  # a list of pairs is data too
    check_data(nr.evaluate.experiment.compute, nr.tasks.cot_variants(2, ["full"]).variant("full")[:2])  # a tuple
    check_data(nr.experiments.neurons.activations.experiment.compute, np.array(["1 + 2 =", "3 + 4 ="]))
    check_data(nr.attention.experiment.compute, nr.tasks.kth_smallest(n_prompts=2))
    check_data(nr.evaluate.experiment.compute, nr.tasks.examples("arithmetic", n_prompts=2))


def test_what_reads_the_weights_is_refused_on_ndif_before_a_key_is_asked_for(embedded_model, monkeypatch):
    """NDIF never sends weights: such an experiment says so at once, not "set NDIF_API_KEY" first."""
    from nnsight_reasoning.errors import UsageError

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nr.remote.nnsight.CONFIG.API, "APIKEY", None)
    reading = [n for n in nr.__all__ if getattr(getattr(getattr(nr, n), "experiment", None), "reads_weights", "")]
    assert set(reading) == {"successor_heads", "ioi_components", "greater_than_components", "backup_heads",
                            "copy_suppression"}
    for name in reading:
        with pytest.raises(UsageError, match="reads the model's weights, which NDIF does not send; run it locally"):
            getattr(nr, name)(embedded_model, None, remote=True, progress=False)


@pytest.mark.slow  # the whole README walk-through (~45 s on 2 cores), like the notebooks
def test_readme_python_example_runs(tmp_path, monkeypatch):
    """Execute the README's Python block verbatim (it writes ie.nc into the cwd)."""
    monkeypatch.chdir(tmp_path)
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    ds = namespace["ds"]
    nr.testing.assert_valid_result(ds)
    assert ds.sizes["prompt"] == 64 and set(ds.data_vars) >= {"mlp", "attn"}
    assert (tmp_path / "ie.nc").is_file()


def test_plot_result_for_patching_and_evaluation(embedded_model, small_pairs, tmp_path):
    ds = nr.patch(embedded_model, small_pairs, sites=["attn_layer_pattern", "head", "mlp"], positions="all",
                  progress=False)
    fig = nr.plot_result(ds, tmp_path / "p.png")
    assert len(fig.axes) >= 3 and (tmp_path / "p.png").stat().st_size > 10_000
    # a whole-prompt site is drawn at each prompt's last token: one column, the mean over the prompts
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("attn_layer_pattern (last token)"))
    last = at_last_token(ds.attn_layer_pattern, ds).mean("prompt").values
    np.testing.assert_allclose(np.asarray(panel.images[0].get_array()).ravel(), last, rtol=1e-12)
    ev = nr.evaluate(embedded_model, nr.tasks.examples("kth_smallest", 20), progress=False)
    fig = nr.plot_result(ev, tmp_path / "e.png")
    assert "accuracy" in fig.axes[0].get_title()
