"""Fine-tuning on a task, saved as revisions every experiment accepts (Hou et al. 2023).

MechanisticProbe fine-tunes GPT-2 on its k-th smallest task, all parameters or one group
(attention, MLP, layer norms: ``src/gpt2.py:finetune_gpt2``, ``src/utils.py:set_grad``),
then probes the fine-tuned models. :func:`finetune` does that for any model and any task of
:mod:`nnsight_reasoning.tasks`: it trains the next-token prediction of the answer at the
prompt's last position (of every answer token, for a worked solution: ``cot_solution``
teaches a model to write its chain of thought, for ``nr.cot_generation``), and writes the weights as one sub-directory per revision (``step0``,
``step<k>`` every ``save_every`` steps, ``main`` at the end), so that
``nr.evaluate(OUT, examples, revisions="all")`` or ``reason-interp probe --model OUT
--revisions all`` follow the model over its fine-tuning.

The loop is plain torch (AdamW, transformers' constant schedule with warmup): no nnsight,
as nothing is traced. It is deterministic from ``seed`` (batch k, counted from 0, is
``nr.tasks.examples(task, batch_size, seed=seed · 1000003 + k, **task_params)``, right-padded,
so it does not depend on what ran before; the torch seed is ``seed``) and resumable: at every saved
revision the optimiser, scheduler and random state are saved beside it, and the same call
after a kill continues from the last one, to the same weights as an uninterrupted run.

Departures from the repository, and why: its loss is the cross-entropy of the *softmax
probabilities* (a second softmax); here the cross-entropy of the logits, the standard loss it
means. It keeps the checkpoint of best validation accuracy; here every ``save_every`` steps
is kept (``evaluate --revisions all`` shows which is best). Its parameter groups match
names by substring (``attn``, ``mlp``, ``ln``), which are GPT-2's; here the groups come from
the architecture table (:mod:`nnsight_reasoning.sites`), so they work for every family. Its
LoRA (adapter-transformers) adapts GPT-2's query and value; peft's default for GPT-2 adapts its
fused query-key-value projection whole (Llama's: query and value, as the repository's).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError, checked_int
from .results.io import writable

TUNE = ("all", "attn", "mlp", "ln", "lora")
# the repository's LoRA (src/utils.py:57-61: adapter-transformers' LoRAConfig(r=8, alpha=16)); peft's
# defaults otherwise (no dropout; B = 0 at the start, so step0 is the model itself)
LORA = {"r": 8, "lora_alpha": 16}
STATE = ".finetune-state.pt"
LOG = "finetune.json"


def finetune(
    model: Any = None,
    task: str = "kth_smallest",
    *,
    out: str | Path,
    tune: str = "all",
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-5,
    weight_decay: float = 1e-3,
    warmup: int = 500,
    save_every: int | None = None,
    revision: str | None = None,
    seed: int = 0,
    restart: bool = False,
    progress: bool = True,
    **task_params: Any,
) -> Path:
    """Fine-tune ``model`` on ``task`` and write its revisions to ``out``; returns ``out``.

    Parameters
    ----------
    model : a name or directory (:func:`nnsight_reasoning.load_model`; default the embedded
        model), or a loaded model, whose weights are read afresh (it is not changed).
    task : a task of ``nr.tasks`` (its examples generator); ``task_params`` are its
        parameters (e.g. ``length=5, k=2``). A one-token answer is trained at the prompt's
        last position; a longer one (``cot_solution``'s worked solutions) at each of its
        tokens, after the prompt (loss: mean over the answer tokens of the batch).
    out : a new directory (or one holding an interrupted run of the same settings, resumed).
    tune : "all" parameters, or only those of the attention blocks ("attn"), the MLPs ("mlp")
        or the layer norms ("ln"), as the repository's ``--tuning_param``; or "lora": low-rank
        adapters (r = 8, alpha = 16, the repository's) on the attention projections peft targets
        for the architecture (GPT-2's fused query-key-value, Llama's query and value), trained
        alone and merged into the weights of every saved revision (needs ``peft``).
    steps, batch_size : optimiser steps and examples per step (the repository: 2 epochs of
        980,000 lists at 128 per step).
    lr, weight_decay, warmup : AdamW and the constant schedule's linear warmup (the
        repository's 2e-5, 1e-3 and 500 steps).
    save_every : steps between saved revisions (default steps / 10).
    revision : the model's revision to start from.
    seed : batches and initial random state; same seed -> same weights.
    restart : discard an interrupted run in ``out`` instead of resuming it.

    Writes ``out/step0``, ``out/step<k>`` …, ``out/main`` (model and tokenizer each) and
    ``out/finetune.json`` (settings and the loss at every step, nats per example).
    """
    from transformers import get_constant_schedule_with_warmup

    from .models import load_model, model_info
    from .nnsight_shim import torch_module
    from .progress import progress_bar
    from .tasks import get_task

    if tune not in TUNE:
        raise UsageError(f"tune must be one of {', '.join(TUNE)} (got {tune!r})")
    steps, batch_size, warmup = (checked_int(name, value, low) for name, value, low in
                                 (("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup", warmup, 0)))
    if not lr > 0 or weight_decay < 0:
        raise UsageError(f"lr must be > 0 and weight_decay >= 0 (got {lr}, {weight_decay})")
    if save_every is not None:
        save_every = checked_int("save_every", save_every, 1)
    save_every = save_every or max(1, steps // 10)
    if save_every < 1:
        raise UsageError(f"save_every must be >= 1 (got {save_every})")
    info = get_task(task)
    info.check_params({**task_params, "seed": seed})
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the revisions")
    writable(out, folder=True)  # before the model loads: a folder that cannot be made is bad usage
    load_kwargs: dict[str, Any] = {}
    if model is not None and not isinstance(model, (str, Path)):  # a loaded model: train a fresh copy, not it
        loaded = model_info(model)
        if loaded.load_kwargs.get("adapter"):
            raise UsageError("this model has an adapter merged in; fine-tune its base model, or save the merged "
                             "model to a directory and fine-tune that")
        model, revision = loaded.name, revision or loaded.revision or None
        load_kwargs = {k: v for k, v in loaded.load_kwargs.items() if k in ("dtype", "device")}
    nn_model = load_model(model, revision, **load_kwargs)
    name = model_info(nn_model).name
    config = {"model": name, "revision": revision or model_info(nn_model).revision, "task": task,
              "task_params": task_params, "tune": tune, "steps": steps, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "warmup": warmup, "save_every": save_every, "seed": seed,
              **({"lora": LORA} if tune == "lora" else {})}
    if tune == "lora":
        _peft()  # before anything is written
    # the task's data must tokenise before anything is written: the first batch is drawn here
    tok = nn_model.tokenizer
    _batch(info, tok, nn_model, 0, batch_size, seed, task_params)
    state = _prepare_out(out, config, restart)
    if not nn_model.dispatched:
        nn_model.dispatch()
    net = torch_module(nn_model)
    if tune == "lora":  # its random A matrices drawn from the seed, so a run is the same every time
        torch.manual_seed(seed)
        _add_lora(net)
    params = _group(nn_model, net, tune)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = get_constant_schedule_with_warmup(optim, num_warmup_steps=warmup)
    losses: list[float] = []
    start = 0
    if state is not None:  # resume: the weights, optimiser, schedule and random state of the last save
        net.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        torch.random.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start, losses = state["step"], state["losses"]
    else:
        torch.manual_seed(seed)
        _save_revision(net, tok, out, "step0")
    device = next(net.parameters()).device  # batches follow the weights (a --device cuda model)
    net.train()
    try:
        for step in progress_bar(range(start, steps), f"fine-tuning {tune} on {task}", enabled=progress,
                                 total=steps - start):
            ids, mask, target = (x.to(device) for x in _batch(info, tok, nn_model, step, batch_size, seed, task_params))
            logits = net(input_ids=ids, attention_mask=mask, use_cache=False).logits
            keep = target >= 0  # the predicted answer tokens: one per example, or a whole worked solution
            loss = torch.nn.functional.cross_entropy(logits[keep].float(), target[keep])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            schedule.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if done == steps or done % save_every == 0:
                _save_revision(net, tok, out, "main" if done == steps else f"step{done}")
                _write_log(out, config, losses, done == steps)
                if done < steps:
                    _save_state(out, net, optim, schedule, done, losses, config)
    finally:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(True)
    (out / STATE).unlink(missing_ok=True)
    return out


def _prepare_out(out: Path, config: dict, restart: bool) -> dict | None:
    """The saved state to resume from (None: start afresh); refuses a directory that holds
    something else, or a finished run of other settings."""
    log = out / LOG
    if out.is_dir() and any(out.iterdir()):
        if not log.is_file():
            raise UsageError(f"{out} is not empty and holds no fine-tuning run; give a new directory for --out")
        old = json.loads(log.read_text())
        same = old.get("config") == json.loads(json.dumps(config))
        if restart or not same:
            if not restart:
                raise UsageError(f"{out} holds a fine-tuning run with other settings; use another --out, or "
                                 f"--restart to replace it")
            shutil.rmtree(out)
        elif old.get("complete"):
            raise UsageError(f"{out} already holds this fine-tuning run, complete (revisions: "
                             f"{', '.join(old.get('revisions', []))}); use --restart to train it again")
        elif (out / STATE).is_file():
            state = torch.load(out / STATE, weights_only=True)  # tensors and plain data: no code runs on load
            return state
        else:  # killed before the first save: start again
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_log(out, config, [], False)
    return None


def _batch(info: Any, tok: Any, model: Any, step: int, n: int, seed: int, params: dict) -> tuple:
    """Batch ``step``: ``n`` examples drawn with their own seed, right-padded token ids (n, T),
    the attention mask, and the targets (n, T): at position t the token to predict after t,
    −100 (ignored) except where the answer is predicted: the last prompt position for a
    one-token answer; every answer position for an answer of several tokens (a worked
    solution), which then follows the prompt in the row."""
    from . import backend

    examples = info.examples(n, seed=seed * 1_000_003 + step, tokenizer=tok, **params)
    ids = backend.tokenize(model, [e.prompt for e in examples])
    single = [backend.answer_token(model, e.answer, joined=getattr(e, "joined", False)) for e in examples]
    multi = [k for k, a in enumerate(single) if a is None]  # answers of several tokens follow their prompt
    # an answer follows its prompt after a space, unless it already starts with one or continues the
    # prompt's last word (greater-than's years, ``joined``)
    joined = backend.tokenize(model, [examples[k].prompt + ("" if examples[k].answer[:1].isspace() or
                                                            getattr(examples[k], "joined", False) else " ")
                                      + examples[k].answer for k in multi])
    continued = dict(zip(multi, joined))
    rows, targets = [], []
    for k, (e, x, a) in enumerate(zip(examples, ids, single)):
        if a is not None:
            rows.append(x)
            targets.append([-100] * (len(x) - 1) + [a])
            continue
        full = continued[k]
        if full[: len(x)] != x or len(full) == len(x):
            raise UsageError(f"the answer {e.answer[:40]!r} does not tokenise as a continuation of its prompt")
        rows.append(full[:-1])  # the last answer token is only predicted
        targets.append([-100] * (len(x) - 1) + full[len(x):])
    width = max(len(x) for x in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (x, t) in enumerate(zip(rows, targets)):
        batch[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        target[i, :len(t)] = torch.tensor(t)
    return batch, mask, target


def _group(model: Any, net: Any, tune: str) -> list:
    """The parameters of group ``tune``, from the architecture table: the attention or MLP
    block of every layer, or its norms and the final norm."""
    from .sites import architecture, resolve

    if tune == "all":
        return list(net.parameters())
    if tune == "lora":
        return [p for name, p in net.named_parameters() if ".lora_" in name]
    arch = architecture(model)
    n_layers = len(resolve(net, arch.layers))
    paths = {"attn": [arch.attn], "mlp": [arch.mlp], "ln": [arch.ln_attn, arch.ln_mlp]}[tune]
    prefixes = [f"{arch.layers}.{i}.{p}." for i in range(n_layers) for p in paths]
    if tune == "ln":
        prefixes.append(arch.final_norm + ".")
    chosen = [p for name, p in net.named_parameters() if any(name.startswith(x) for x in prefixes)]
    if not chosen:
        raise UsageError(f"no {tune} parameters found in this {model.config.model_type} model")
    return chosen


def _save_revision(net: Any, tok: Any, out: Path, name: str) -> None:
    """``out/name`` written whole or not at all (a temporary directory renamed into place)."""
    from .progress import hf_bars_off

    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with hf_bars_off():  # one "Writing model shards" bar per revision says nothing
        net.save_pretrained(tmp, state_dict=_merged_lora(net))
    tok.save_pretrained(tmp)
    shutil.rmtree(out / name, ignore_errors=True)
    os.replace(tmp, out / name)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UsageError("tune='lora' needs peft: pip install 'nnsight-reasoning[peft]'") from None
    return peft


def _add_lora(net: Any) -> None:
    """LoRA adapters (:data:`LORA`) injected into ``net`` in place, on the modules peft targets
    for its architecture (GPT-2's and GPT-NeoX's fused query-key-value, Llama's query and value),
    in float32 (peft casts a layer's input to its adapter's precision); every other parameter
    stays as it is."""
    import warnings

    peft = _peft()
    try:
        with warnings.catch_warnings():  # GPT-2's Conv1D: peft sets fan_in_fan_out itself, and says so
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            peft.inject_adapter_in_model(peft.LoraConfig(**LORA), net)
    except ValueError as e:  # an architecture peft has no default target modules for
        raise UsageError(f"tune='lora': peft cannot place adapters in this {net.config.model_type} model ({e}); "
                         f"use tune='attn' or 'all'") from None
    for name, p in net.named_parameters():  # adapters train in float32 on a half-precision model too
        if ".lora_" in name:
            p.data = p.data.float()


def _merged_lora(net: Any) -> dict | None:
    """The state dict of ``net`` with its LoRA adapters merged, W + (alpha / r)·B·A, under the
    model's own parameter names (a plain model every experiment loads); None without adapters."""
    if not any(".lora_" in name for name, _ in net.named_parameters()):
        return None  # no adapters: peft (an optional install) is not needed
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in net.named_modules() if isinstance(m, LoraLayer)}
    state = {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():  # merged in float32, then stored in the model's own precision
        for name, m in layers.items():
            w = m.base_layer.weight
            state[f"{name}.weight"] = (w.float() + m.get_delta_weight("default").float()).to(w.dtype)
    return state


def _save_state(out: Path, net: Any, optim: Any, schedule: Any, step: int, losses: list, config: dict) -> None:
    tmp = out / (STATE + ".tmp")
    torch.save({"model": net.state_dict(), "optimizer": optim.state_dict(), "scheduler": schedule.state_dict(),
                "rng": torch.random.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "step": step, "losses": losses, "config": config}, tmp)
    os.replace(tmp, out / STATE)


def _write_log(out: Path, config: dict, losses: list, complete: bool) -> None:
    from .results.checkpoints import training_order

    revisions = training_order([p.name for p in out.iterdir()
                                if (p / "config.json").is_file() and not p.name.startswith(".")])
    tmp = out / (LOG + ".tmp")
    tmp.write_text(json.dumps({"config": config, "complete": complete, "revisions": revisions,
                               "loss": losses}, indent=1))
    os.replace(tmp, out / LOG)
