"""The public API as SPEC and README show it (what a notebook user types)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import nnsight_reasoning as nr  # noqa: E402

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
    ds = nr.patch(embedded_model, small_pairs, sites=["mlp", "head"], positions="all", progress=False)
    fig = nr.plot_result(ds, tmp_path / "p.png")
    assert len(fig.axes) >= 2 and (tmp_path / "p.png").stat().st_size > 10_000
    ev = nr.evaluate(embedded_model, nr.tasks.examples("kth_smallest", 20), progress=False)
    fig = nr.plot_result(ev, tmp_path / "e.png")
    assert "accuracy" in fig.axes[0].get_title()
