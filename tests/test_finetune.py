"""Fine-tuning (MechanisticProbe's finetune_ksmallest): the weights against an independent
plain-torch loop, parameter groups from the architecture table, revisions every experiment
accepts, determinism, resume after an interruption, the CLI and its errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, get_constant_schedule_with_warmup

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning import training as ft
from nnsight_reasoning.errors import UsageError

from .test_probe import reason_interp


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _plain_loop(path, steps, batch_size, lr, weight_decay, warmup, seed, train_prefixes, **params):
    """The training loop written out in plain torch and transformers, from the task's public
    generator: batch k = nr.tasks.examples(task, batch_size, seed=seed * 1000003 + k)."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    names = [n for n, _ in hf.named_parameters() if any(n.startswith(p) for p in train_prefixes)]
    for n, p in hf.named_parameters():
        p.requires_grad_(n in names)
    trained = [p for n, p in hf.named_parameters() if n in names]
    losses = _train(hf, tok, trained, steps, batch_size, lr, weight_decay, warmup, seed, **params)
    return {n: p.detach() for n, p in hf.state_dict().items()}, losses, names


def _train(hf, tok, trained, steps, batch_size, lr, weight_decay, warmup, seed, **params):
    """AdamW with transformers' constant schedule on ``trained``, batch k the task's examples
    drawn with seed · 1000003 + k, right-padded, the answer after a space at the last token;
    returns the loss per step."""
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    sched = get_constant_schedule_with_warmup(opt, warmup)
    hf.train()
    losses = []
    for k in range(steps):
        ex = nr.tasks.examples("kth_smallest", batch_size, seed=seed * 1000003 + k, tokenizer=tok, **params)
        ids = [tok(e.prompt)["input_ids"] for e in ex]
        ans = torch.tensor([tok(" " + e.answer, add_special_tokens=False)["input_ids"][0] for e in ex])
        width = max(map(len, ids))
        x = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        logits = hf(input_ids=x, attention_mask=mask).logits[torch.arange(len(ids)), [len(i) - 1 for i in ids]]
        loss = torch.nn.functional.cross_entropy(logits, ans)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_finetuned_weights_match_a_plain_torch_loop(tmp_path):
    """The embedded model (GPT-NeoX, no dropout), the MLPs only, 3 steps of 6 examples."""
    out = nr.finetune(None, "kth_smallest", out=tmp_path / "ft", tune="mlp", steps=3, batch_size=6, lr=1e-3,
                      warmup=2, save_every=2, seed=4, progress=False, length=5, k=2)
    log = json.loads((out / "finetune.json").read_text())
    assert log["complete"] and log["revisions"] == ["step0", "step2", "main"] and len(log["loss"]) == 3
    want, losses, names = _plain_loop(embedded.revision_path("main"), 3, 6, 1e-3, 1e-3, 2, 4,
                                      [f"gpt_neox.layers.{i}.mlp." for i in range(4)], length=5, k=2)
    assert names and all(".mlp." in n for n in names)
    np.testing.assert_allclose(log["loss"], losses, rtol=1e-5)
    got = _weights(out / "main")
    start = _weights(embedded.revision_path("main"))
    for n, w in want.items():
        if n not in got:
            continue  # tied or buffer-only entries
        torch.testing.assert_close(got[n], w, rtol=1e-5, atol=1e-6, msg=n)
        assert torch.equal(got[n], start[n]) == (n not in names), n  # only the MLPs moved
    assert torch.equal(_weights(out / "step0")["gpt_neox.embed_in.weight"], start["gpt_neox.embed_in.weight"])
    # the revisions are a model directory every experiment accepts
    curve = nr.evaluate(str(out), nr.tasks.examples("kth_smallest", 16), revisions="all", progress=False)
    assert list(curve["checkpoint"].values) == ["step0", "step2", "main"]


def test_worked_solutions_train_every_answer_token(tmp_path):
    """cot_solution: the answer is a whole worked solution; the loss is the mean cross-entropy
    of its tokens after the prompt, here against a loop that builds the rows from words."""
    out = nr.finetune(None, "cot_solution", out=tmp_path / "ft", tune="mlp", steps=2, batch_size=4, lr=1e-3,
                      warmup=0, save_every=2, seed=3, progress=False)
    log = json.loads((out / "finetune.json").read_text())
    path = embedded.revision_path("main")
    torch.manual_seed(3)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    for n, p in hf.named_parameters():
        p.requires_grad_(".mlp." in n)
    opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-3)
    hf.train()
    losses = []
    tiny = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in hf.named_parameters() if p.requires_grad}
    for k in range(2):
        ex = nr.tasks.examples("cot_solution", 4, seed=3 * 1000003 + k, tokenizer=tok)
        assert all(e.prompt.endswith(" A :") and e.answer.split()[-4:-1] == ["result", "is", e.answer.split()[-2]]
                   for e in ex)
        nll, count = 0.0, 0
        for e in ex:  # one row at a time: the prompt's words, then the solution's; each solution word predicted
            p = tok(e.prompt)["input_ids"]
            a = tok(e.answer, add_special_tokens=False)["input_ids"]
            assert len(a) == len(e.answer.split())  # word-level: one token per word
            logits = hf(input_ids=torch.tensor([p + a[:-1]])).logits[0]
            nll = nll + torch.nn.functional.cross_entropy(logits[len(p) - 1:], torch.tensor(a), reduction="sum")
            count += len(a)
        loss = nll / count
        opt.zero_grad()
        loss.backward()
        for n, p in hf.named_parameters():
            if p.requires_grad:
                tiny[n] |= p.grad.abs() < 1e-2 * p.grad.abs().max()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(log["loss"], losses, rtol=1e-5)
    # the weights where Adam's step is well-conditioned: every step's |g| at least 1 % of the
    # tensor's largest (a gradient entry far smaller is a sum that cancelled, known to few
    # digits), and no momentum cancelling to ~0 (|m| > 1 % of sqrt(v)); elsewhere
    # m / (sqrt(v) + eps) turns the float32 noise of a padded batch against single rows into
    # differences up to lr
    got, state = _weights(out / "main"), hf.state_dict()
    for n, p in hf.named_parameters():
        if not p.requires_grad:
            continue
        m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        ok = ~tiny[n] & (m.abs() > 0.01 * v.sqrt())
        assert ok.float().mean() > 0.1, n
        torch.testing.assert_close(got[n][ok], state[n].detach()[ok], rtol=1e-5, atol=1e-6, msg=n)


def _plain_lora_loop(path, targets, steps, batch_size, lr, weight_decay, warmup, seed, r=8, alpha=16, **params):
    """LoRA written out in plain torch: a forward hook adds (alpha / r)·B·A·x to each targeted
    projection (A kaiming-uniform, B zero, drawn in module order as peft draws them), AdamW on A
    and B alone, and the merged weights W + (alpha / r)·B·A (transposed for GPT-2's Conv1D)."""
    import math

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    for p in hf.parameters():
        p.requires_grad_(False)
    adapters = {}
    for name, mod in hf.named_modules():
        if name.split(".")[-1] in targets:
            conv = not isinstance(mod, torch.nn.Linear)  # GPT-2's Conv1D: weight (in, out), y = x W + b
            n_in, n_out = mod.weight.shape if conv else (mod.in_features, mod.out_features)
            a, b = torch.nn.Linear(n_in, r, bias=False), torch.nn.Linear(r, n_out, bias=False)
            torch.nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(b.weight)
            adapters[name] = (a, b, conv)
            mod.register_forward_hook(lambda m, args, out, a=a, b=b: out + (alpha / r) * b(a(args[0])))
    trained = [p for a, b, _ in adapters.values() for p in (a.weight, b.weight)]
    for p in trained:
        p.requires_grad_(True)
    torch.manual_seed(seed)  # training starts from the seed (dropout draws), as documented
    losses = _train(hf, tok, trained, steps, batch_size, lr, weight_decay, warmup, seed, **params)
    merged = {n: p.detach().clone() for n, p in hf.state_dict().items()}
    for name, (a, b, conv) in adapters.items():
        delta = (alpha / r) * (b.weight @ a.weight).detach()
        merged[f"{name}.weight"] += delta.T if conv else delta
    return merged, losses, set(adapters)


@pytest.mark.parametrize("model_type,targets", [("embedded", {"query_key_value"}), ("gpt2", {"c_attn"})])
def test_lora_matches_a_plain_torch_lora_loop(tiny_model_dir, tmp_path, model_type, targets):
    """tune="lora" (the repository's src/utils.py:57-61, r = 8, alpha = 16): the loss at every
    step and the merged weights of the saved revision against a hook-based LoRA; only the adapted
    projections move, by a change of rank <= 8, and step0 is the model itself."""
    path = embedded.revision_path("main") if model_type == "embedded" else tiny_model_dir("gpt2")
    out = nr.finetune(str(path), "kth_smallest", out=tmp_path / "lora", tune="lora", steps=3, batch_size=6, lr=1e-2,
                      warmup=1, save_every=2, seed=4, progress=False, length=5, k=2)
    log = json.loads((out / "finetune.json").read_text())
    assert log["config"]["tune"] == "lora" and log["config"]["lora"] == {"r": 8, "lora_alpha": 16}
    want, losses, adapted = _plain_lora_loop(path, targets, 3, 6, 1e-2, 1e-3, 1, 4, length=5, k=2)
    assert len(adapted) == AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers
    np.testing.assert_allclose(log["loss"], losses, rtol=1e-5)
    got, start = _weights(out / "main"), _weights(path)
    assert set(got) == set(start)  # a plain model: no adapter parameters, the model's own names
    assert adapted and all(f"{a}.weight" in want for a in adapted)
    for n, w in got.items():
        if n in want:  # a tied unembedding is written under one name here, another there
            torch.testing.assert_close(w, want[n], rtol=1e-5, atol=1e-6, msg=n)
        moved = n.rsplit(".", 1)[0] in adapted and n.endswith(".weight")
        assert torch.equal(w, start[n]) != moved, n
        if moved:
            assert torch.linalg.matrix_rank((w - start[n]).double(), rtol=1e-6) <= 8, n
    assert all(torch.equal(w, start[n]) for n, w in _weights(out / "step0").items())


@pytest.mark.parametrize("tune,part", [("attn", ".attn."), ("ln", ".ln_")])
def test_parameter_groups_come_from_the_architecture(tiny_model_dir, tmp_path, tune, part):
    path = tiny_model_dir("gpt2")
    out = nr.finetune(str(path), out=tmp_path / tune, tune=tune, steps=2, batch_size=4, lr=1e-2, warmup=0,
                      progress=False)
    before, after = _weights(path), _weights(out / "main")
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(part in n or (tune == "ln" and n.startswith("transformer.ln_f")) for n in moved), moved
    if tune == "ln":
        assert "transformer.ln_f.weight" in moved


@pytest.mark.parametrize("tune", ["all", "lora"])
def test_same_seed_same_weights_and_resume_after_an_interruption(tiny_model_dir, tmp_path, monkeypatch, tune):
    """LoRA too: its adapters are in the saved state, so a resumed run ends on the same weights."""
    path = str(tiny_model_dir("gpt2"))
    kw = dict(tune=tune, steps=6, batch_size=4, lr=1e-3, warmup=2, save_every=2, seed=1, progress=False)
    whole = nr.finetune(path, out=tmp_path / "a", **kw)
    again = nr.finetune(path, out=tmp_path / "b", **kw)
    for n, w in _weights(whole / "main").items():
        assert torch.equal(w, _weights(again / "main")[n]), n
    # interrupted after the step-4 revision: the same call resumes from it
    real = ft._save_revision

    def stop_after_step4(net, tok, out, name):
        real(net, tok, out, name)
        if name == "step4":
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_revision", stop_after_step4)
    with pytest.raises(KeyboardInterrupt):
        nr.finetune(path, out=tmp_path / "c", **kw)
    monkeypatch.setattr(ft, "_save_revision", real)
    assert (tmp_path / "c" / "step4").is_dir() and not (tmp_path / "c" / "main").exists()
    resumed = nr.finetune(path, out=tmp_path / "c", **kw)
    for n, w in _weights(whole / "main").items():
        assert torch.equal(w, _weights(resumed / "main")[n]), n
    assert json.loads((resumed / "finetune.json").read_text())["loss"] == \
        json.loads((whole / "finetune.json").read_text())["loss"]
    assert not (resumed / ft.STATE).exists()


def test_finetune_bad_input(tmp_path, tiny_model_dir):
    path = str(tiny_model_dir("gpt2"))
    for kwargs, msg in [(dict(tune="bias"), "tune must be one of"), (dict(steps=0), "steps must be"),
                        (dict(lr=0.0), "lr must be > 0"), (dict(colour=1), "unexpected keyword 'colour'")]:
        with pytest.raises(UsageError, match=msg):
            nr.finetune(path, out=tmp_path / "x", progress=False, **kwargs)
        assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no fine-tuning run"):
        nr.finetune(path, out=tmp_path / "busy", steps=1, progress=False)
    done = nr.finetune(path, out=tmp_path / "done", steps=1, batch_size=2, warmup=0, progress=False)
    with pytest.raises(UsageError, match="already holds this fine-tuning run"):
        nr.finetune(path, out=done, steps=1, batch_size=2, warmup=0, progress=False)
    with pytest.raises(UsageError, match="other settings"):
        nr.finetune(path, out=done, steps=2, batch_size=2, warmup=0, progress=False)
    nr.finetune(path, out=done, steps=2, batch_size=2, warmup=0, restart=True, progress=False)
    assert len(json.loads((done / "finetune.json").read_text())["loss"]) == 2


def test_cli_finetune_then_probe_its_revisions(tmp_path):
    out = tmp_path / "ft"
    r = reason_interp(["finetune", "--out", str(out), "--steps", "4", "--save-every", "2", "--batch-size", "4",
                       "--tune", "mlp", "--warmup", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "revisions step0, step2, main" in r.stdout
    res = tmp_path / "probe.nc"
    r = reason_interp(["probe", "--model", str(out), "--revisions", "all", "--baseline", "none", "--n-prompts", "16",
                       "--out", str(res), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert list(nr.load_result(res)["checkpoint"].values) == ["step0", "step2", "main"]
    r = reason_interp(["finetune", "--out", str(tmp_path / "bad"), "--tune", "bias"])
    assert r.returncode == 2 and "tune must be one of" in r.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_sigkill_mid_finetune_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    """A real process killed (SIGKILL) after its first saved revision; the same command again
    finishes with the weights of an uninterrupted run."""
    path = str(tiny_model_dir("gpt2"))
    args = ["--model", path, "--steps", "40", "--save-every", "5", "--batch-size", "16", "--warmup", "3",
            "--no-progress"]
    cmd = [sys.executable, "-m", "nnsight_reasoning.cli.main", "finetune"]
    whole = tmp_path / "whole"
    subprocess.run(cmd + args + ["--out", str(whole)], check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "step10").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "step10").is_dir() and not (killed / "main").exists()
    subprocess.run(cmd + args + ["--out", str(killed)], check=True, capture_output=True, timeout=600)
    for n, w in _weights(whole / "main").items():
        assert torch.equal(w, _weights(killed / "main")[n]), n


def test_finetune_without_peft(tiny_model_dir, tmp_path, monkeypatch):
    """peft is an optional install: fine-tuning without it works, tune="lora" says what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    monkeypatch.setitem(sys.modules, "peft.tuners.lora", None)
    out = nr.finetune(str(tiny_model_dir("gpt2")), out=tmp_path / "ft", tune="mlp", steps=1, batch_size=2,
                      progress=False)
    assert (out / "main").is_dir()
    with pytest.raises(UsageError, match="tune='lora' needs peft"):
        nr.finetune(str(tiny_model_dir("gpt2")), out=tmp_path / "lora", tune="lora", steps=1, batch_size=2,
                    progress=False)
    assert not (tmp_path / "lora").exists() or not any((tmp_path / "lora").iterdir())
