"""PEFT adapters merged at load (lm-arithmetic's Goat: LoRA over LLaMA-7B), on a tiny LLaMA
whose LoRA weights are random, checked against peft's own merge and a plain forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.errors import UsageError

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("llama")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    # init_lora_weights=False: random A and B, so the adapter changes the model (a fresh LoRA is a no-op)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora")
    peft.get_peft_model(model, config).save_pretrained(path)
    return base, path


def _last_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0, -1]


def test_adapter_is_merged_and_every_experiment_sees_it(lora):
    base, path = lora
    model = nr.load_model(base, adapter=path)
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=0, tokenizer=model.tokenizer)
    ids = model.tokenizer(pairs[0].base)["input_ids"]
    merged = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    want, without = _last_logits(merged, ids), _last_logits(plain, ids)
    assert (want - without).abs().max() > 1e-2  # the adapter matters
    ds = nr.patch(model, pairs, sites=["resid"], metric="logit_diff", progress=False)
    a = [model.tokenizer(" " + x, add_special_tokens=False)["input_ids"][0] for x in (pairs[0].base_answer,
                                                                                 pairs[0].source_answer)]
    lp = torch.log_softmax(want.double(), -1)
    np.testing.assert_allclose([ds.clean_p_base[0], ds.clean_p_source[0]], lp[a].exp().numpy(), rtol=1e-4)
    assert ds.attrs["adapter"] == str(path) and ds.attrs["model_path"] == str(base)


def test_adapter_errors_are_one_line(lora, tmp_path):
    base, path = lora
    with pytest.raises(UsageError, match="could not apply adapter"):
        nr.load_model(base, adapter=tmp_path / "nothing-here")
    model = nr.load_model(base, adapter=path)
    with pytest.raises(UsageError, match="runs locally only"):
        nr.evaluate(model, nr.tasks.examples("arithmetic", 2, tokenizer=model.tokenizer), remote=True, progress=False)
    with pytest.raises(UsageError, match="run it without revisions"):
        nr.evaluate(model, nr.tasks.examples("arithmetic", 2, tokenizer=model.tokenizer), revisions="a,b",
                    progress=False)
    res = CliRunner().invoke(app, ["evaluate", "--model", str(base), "--adapter", str(path), "--revisions", "a,b",
                                   "--n-prompts", "2", "--out", str(tmp_path / "x.nc"), "--no-progress"])
    assert res.exit_code == 2 and "use --revision, not --revisions" in res.output and not (tmp_path / "x.nc").exists()
    res = CliRunner().invoke(app, ["evaluate", "--model", str(base), "--adapter", str(path), "--n-prompts", "4",
                                   "--out", str(tmp_path / "ok.nc"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert nr.load_result(tmp_path / "ok.nc").attrs["adapter"] == str(path)
