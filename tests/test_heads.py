"""Head scores against a direct computation from HF attentions; IOI pairs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.heads import repeated_tokens
from nnsight_reasoning.tasks import TaskError


def test_repeated_tokens_are_bos_then_a_sequence_twice(embedded_tokenizer):
    ids = repeated_tokens(embedded_tokenizer, 5, 12, seed=3).numpy()
    assert ids.shape == (5, 25) and (ids[:, 0] == embedded_tokenizer.bos_token_id).all()
    assert (ids[:, 1:13] == ids[:, 13:]).all()
    special = set(embedded_tokenizer.all_special_ids)
    for row in ids[:, 1:13]:
        assert len(set(row)) == 12 and not special & set(row.tolist())
    assert (repeated_tokens(embedded_tokenizer, 5, 12, seed=3).numpy() == ids).all()
    with pytest.raises(UsageError, match="seq_len"):
        repeated_tokens(embedded_tokenizer, 2, 1, seed=0)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_head_scores_match_a_direct_computation(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    ds = nr.head_scores(model, n_sequences=6, seq_len=7, seed=1, batch_size=4, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = repeated_tokens(model.tokenizer, 6, 7, seed=1)
    with torch.no_grad():
        att = torch.stack(hf(ids, output_attentions=True).attentions, 1).double().numpy()  # (b, L, H, T, T)
    n = 7
    for b in range(6):
        for layer in range(att.shape[1]):
            for head in range(att.shape[2]):
                a = att[b, layer, head]
                prev = np.mean([a[i, i - 1] for i in range(2, n + 1)])
                dup = np.mean([a[i, i - n] for i in range(n + 1, 2 * n + 1)])
                ind = np.mean([a[i, i - n + 1] for i in range(n + 1, 2 * n + 1)])
                got = ds.isel(prompt=b).sel(layer=layer, head=head)
                assert float(got.previous_token) == pytest.approx(prev, abs=1e-6)
                assert float(got.duplicate_token) == pytest.approx(dup, abs=1e-6)
                assert float(got.induction) == pytest.approx(ind, abs=1e-6)
    uniform = ds["uniform"].values
    assert uniform[0] == pytest.approx(np.mean([1 / (i + 1) for i in range(2, n + 1)]))
    assert uniform[2] == pytest.approx(np.mean([1 / (i + 1) for i in range(n + 1, 2 * n + 1)]))


def test_head_scores_over_checkpoints_and_cli(tmp_path):
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app

    res = CliRunner().invoke(app, ["heads", "--revisions", "step0,main", "--n-sequences", "8", "--out",
                                   str(tmp_path / "h.nc"), "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = nr.load_result(tmp_path / "h.nc")
    assert ds["induction"].dims == ("checkpoint", "prompt", "layer", "head") and "uniform attention" in res.stdout
    # step0 attends uniformly: every score sits at its chance level
    np.testing.assert_allclose(ds["previous_token"].sel(checkpoint="step0").mean("prompt"),
                               float(ds["uniform"].isel(checkpoint=0, score=0)), atol=0.01)
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "h.nc")])
    assert res.exit_code == 0 and (tmp_path / "h.png").stat().st_size > 10_000


@pytest.mark.parametrize("corruption", ["flip", "abc"])
def test_ioi_pairs_corrupt_only_the_second_subject(embedded_tokenizer, corruption):
    pairs = nr.tasks.ioi(30, corruption=corruption, seed=2)
    for p in pairs:
        b, s = p.base.split(), p.source.split()
        diff = [i for i in range(len(b)) if b[i] != s[i]]
        assert len(b) == len(s) and len(diff) == 1 and b[diff[0]] == p.source_answer  # S2 replaced
        assert b.count(p.base_answer) == 1 and b.count(p.source_answer) == 2  # IO once, S twice
        assert (s[diff[0]] == p.base_answer) == (corruption == "flip")
    with pytest.raises(TaskError, match="corruption must be one of"):
        nr.tasks.ioi(4, corruption="swap")
