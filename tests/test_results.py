"""Result files: schema, netCDF round trip, atomic writes, no credentials."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nnsight_reasoning as nr


@pytest.fixture(scope="module")
def result(embedded_model, small_pairs):
    return nr.patch(embedded_model, small_pairs, sites=["mlp", "attn", "head"], positions="all", progress=False)


def test_schema(result, small_pairs):
    nr.testing.assert_valid_result(result)
    assert result.mlp.dims == ("prompt", "layer", "position")
    assert result.heads.dims == ("prompt", "layer", "position", "head")
    assert list(result.layer.values) == [0, 1, 2, 3]
    assert list(result.prompt.values) == list(range(len(small_pairs)))
    assert list(result.base.values) == [p.base for p in small_pairs]
    assert list(result.source_answer.values) == [p.source_answer for p in small_pairs]
    assert result.token.values[0, 0] == "<bos>"
    assert json.loads(result.attrs["task_params"])["seed"] == small_pairs.params["seed"]
    assert result.attrs["model"] == "embedded" and os.path.isdir(result.attrs["model_path"])
    assert result.attrs["method"] == "activation_patching" and result.attrs["metric"] == "stolfo_ie"
    # positions past a prompt's end are NaN, positions inside are finite
    for i, n in enumerate(result.n_tokens.values):
        assert np.isfinite(result.mlp.values[i, :, :n]).all() and np.isnan(result.mlp.values[i, :, n:]).all()


def test_last_position_coordinate(embedded_model, small_pairs):
    one_template = nr.tasks.arithmetic(n_prompts=3, templates=["{expr} ="], seed=0)
    ds = nr.patch(embedded_model, one_template, sites=["mlp"], progress=False)
    assert list(ds.position.values) == [ds.n_tokens.values[0] - 1] and ds.token.values[0, 0] == "="
    mixed = nr.patch(embedded_model, small_pairs, sites=["mlp"], progress=False)
    assert list(mixed.position.values) == [-1]


def test_netcdf_round_trip(result, tmp_path):
    path = nr.save_result(result, tmp_path / "r.nc")
    back = xr.open_dataset(path)  # plain xarray, no toolkit code
    xr.testing.assert_identical(back.load(), result)
    back.close()
    nr.testing.assert_valid_result(nr.load_result(path))
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]  # no temp files left


def test_a_result_gets_the_mode_a_plain_open_gives(result, tmp_path):
    """Written atomically but readable as any file the user writes (mkstemp alone gives 0600)."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        path = nr.save_result(result, tmp_path / "r.nc")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640


def test_failed_write_leaves_no_file(result, tmp_path):
    bad = result.copy()
    bad["oops"] = ("prompt", np.array([{"a": 1}] * result.sizes["prompt"], dtype=object))
    with pytest.raises(Exception):
        nr.save_result(bad, tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_overwrite(result, tmp_path):
    path = nr.save_result(result, tmp_path / "r.nc")
    before = path.read_bytes()
    bad = result.copy()
    bad["oops"] = ("prompt", np.array([{"a": 1}] * result.sizes["prompt"], dtype=object))
    with pytest.raises(Exception):
        nr.save_result(bad, path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_corrupt_and_missing_files(tmp_path, result):
    garbage = tmp_path / "bad.nc"
    garbage.write_bytes(b"not a netcdf file at all")
    with pytest.raises(nr.UsageError, match="cannot read"):
        nr.load_result(garbage)
    truncated = tmp_path / "cut.nc"
    truncated.write_bytes(nr.save_result(result, tmp_path / "full.nc").read_bytes()[:2000])
    with pytest.raises(nr.UsageError, match="cannot read"):
        nr.load_result(truncated)
    with pytest.raises(nr.UsageError, match="no such results file"):
        nr.load_result(tmp_path / "missing.nc")


def test_attrs_never_hold_credentials(result, tmp_path, monkeypatch):
    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv("NDIF_API_KEY", secret)
    ds = result.copy()
    ds.attrs["ndif_api_key"] = secret  # even if a caller puts one there, it is dropped on save
    ds.attrs["hf_token"] = ds.attrs["token"] = secret
    ds.attrs.update(max_new_tokens=48, entity_tokens=2)  # settings that count tokens are kept
    path = nr.save_result(ds, tmp_path / "r.nc")
    assert secret.encode() not in path.read_bytes()
    back = nr.load_result(path).attrs
    assert not {"ndif_api_key", "hf_token", "token"} & set(back)
    assert back["max_new_tokens"] == 48 and back["entity_tokens"] == 2


def test_validator_catches_schema_errors(result):
    broken = result.drop_vars("clean_p_base")
    with pytest.raises(AssertionError, match="clean_p_base"):
        nr.testing.assert_valid_result(broken)
    wrong = result.copy()
    wrong.attrs = {k: v for k, v in result.attrs.items() if k != "revision"}
    with pytest.raises(AssertionError, match="revision"):
        nr.testing.assert_valid_result(wrong)


OLD = sorted((Path(__file__).parent / "data" / "v0.1").glob("*.nc"))


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_result_files_written_before_the_harness_still_open_validate_show_and_plot(path, tmp_path):
    """Files written by v0.1 (commit 28f7d90, before the experiment harness; one per method)."""
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app

    ds = nr.load_result(path)
    nr.testing.assert_valid_result(ds)
    runner = CliRunner()
    shown = runner.invoke(app, ["show", str(path)])
    assert shown.exit_code == 0 and ds.attrs["method"] in shown.stdout, shown.output
    png = tmp_path / "fig.png"
    drawn = runner.invoke(app, ["plot", str(path), "--out", str(png)])
    assert drawn.exit_code == 0 and png.stat().st_size > 10_000, drawn.output


def test_summaries_name_a_local_model_without_an_empty_revision(tiny_model_dir, embedded_tokenizer):
    """A local directory has no revision name: summaries said "path@ · 12 prompts"."""
    from nnsight_reasoning.experiments import summarize
    from nnsight_reasoning.results.io import model_at

    path = str(tiny_model_dir("gpt_neox"))
    ds = nr.evaluate(nr.load_model(path), nr.tasks.examples("arithmetic", 4, tokenizer=embedded_tokenizer),
                     progress=False)
    assert ds.attrs["revision"] == "" and model_at(ds) == path
    first = str(summarize(ds)[0])
    assert f"{path} · " in first and "@" not in first, first
    assert model_at(ds.assign_attrs(revision="step3000")) == f"{path}@step3000"
