"""Attention patterns over reasoning prompts (Hou et al. 2023): patterns, head entropy and
the attention mass from the answer position to the statements of each reasoning step.

Prompts are grouped by token length, so no padding ever shifts a position; in the result,
shorter prompts are NaN-padded along ``query``/``key``. The answer position is each prompt's
last token (where the model predicts the answer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from .. import remote as _remote
from ..errors import UsageError
from ..models import load_model, model_info
from ..progress import progress_bar
from ..results.io import provenance
from ..sites import check_heads, check_layers, dims
from ..tasks.base import length_batches
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts

PATTERNS = ("last", "all", "none")


def attention(
    model: Any,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: str = "last",
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
    revisions: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """Attention probabilities, head entropy and attention mass per reasoning step.

    Parameters
    ----------
    prompts : labelled prompts, e.g. ``nr.tasks.kth_smallest(...)`` or ``nr.tasks.load_reasoning(...)``.
    layers, heads : subsets to keep (default all).
    patterns : which rows of the attention matrix to store as ``attention``: "last" (the
        answer position; default), "all" (every query; n·L·H·T² values) or "none".
    batch_size : most prompts per forward pass (remotely: per request).
    remote : as in :func:`nnsight_reasoning.patch`.
    revisions : run on each checkpoint (see :func:`nnsight_reasoning.over_revisions`).

    Returns
    -------
    xarray.Dataset with

    - ``attention`` (prompt, layer, head, query, key): probabilities; ``query`` is -1 for
      "each prompt's last token" when lengths differ;
    - ``entropy`` (prompt, layer, head): entropy in nats of the answer position's attention;
    - ``mass`` (prompt, layer, head, group): attention from the answer position summed over the
      tokens of each ``group``: "other" (tokens outside statements), "useless", "step1", … (or
      "statement" for unlabelled prompts); sums to 1 over ``group``;
    - ``n_tokens`` (prompt, group); coordinates ``token`` and ``statement`` (index, -1 = none)
      along (prompt, key), ``text`` and ``answer`` along prompt.
    """
    if patterns not in PATTERNS:
        raise UsageError(f"patterns must be one of {', '.join(PATTERNS)} (got {patterns!r})")
    if revisions is not None:
        from ..runner import over_revisions

        def run(m):
            return attention(m, prompts, layers=layers, heads=heads, patterns=patterns, batch_size=batch_size,
                             remote=remote, progress=progress)

        return over_revisions(run, model, revisions, progress=progress, remote=remote)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    plist = list(prompts)
    if not plist:
        raise UsageError("no prompts given")
    d = dims(model)
    layer_list = check_layers(list(layers) if layers is not None else None, d["n_layers"])
    head_list = check_heads(list(heads) if heads is not None else None, d["n_heads"])
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1 (got {batch_size})")
    _remote.preflight(model, remote)

    ids, stmt = zip(*(token_statements(model, p) for p in plist))
    lengths = [len(x) for x in ids]
    n, t_max, n_l, n_h = len(plist), max(lengths), len(layer_list), len(head_list)
    labelled = not isinstance(prompts, ReasoningPrompts) or prompts.labelled
    groups = _groups(plist, labelled)
    q_len = t_max if patterns == "all" else 1
    attn = np.full((n, n_l, n_h, q_len, t_max), np.nan, np.float32) if patterns != "none" else None
    entropy = np.zeros((n, n_l, n_h))
    mass = np.zeros((n, n_l, n_h, len(groups)))
    n_tokens = np.zeros((n, len(groups)), np.int64)
    chunks = length_batches(lengths, batch_size)
    traffic = _remote.Traffic()
    for chunk in progress_bar(chunks, "attention", enabled=progress):
        probs = backend.attention_probs(model, torch.tensor([ids[i] for i in chunk]), layer_list,
                                        last_only=patterns != "all", remote=remote)[:, :, head_list].double().numpy()
        last = probs[:, :, :, -1]  # (b, L, H, T): the answer position's row
        entropy[chunk] = -(np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)).sum(-1)
        for b, i in enumerate(chunk):
            member = _group_of_tokens(plist[i], stmt[i], labelled)
            onehot = np.eye(len(groups))[member]  # (T, G)
            mass[i] = last[b] @ onehot
            n_tokens[i] = onehot.sum(0)
            if attn is not None:
                attn[i, :, :, :, : lengths[i]] = probs[b] if patterns == "last" else _pad_q(probs[b], t_max)
    same_len = len(set(lengths)) == 1
    query = list(range(t_max)) if patterns == "all" else [t_max - 1 if same_len else -1]
    tokens = np.full((n, t_max), "", dtype=object)
    statement = np.full((n, t_max), -1, np.int64)
    for i in range(n):
        tokens[i, : lengths[i]] = model.tokenizer.convert_ids_to_tokens(ids[i])
        statement[i, : lengths[i]] = stmt[i]
    info = model_info(model)
    task = prompts.task if isinstance(prompts, ReasoningPrompts) else "custom"
    params = prompts.params if isinstance(prompts, ReasoningPrompts) else {}
    attrs = provenance(task=task, task_params=params, model=info.name, model_path=info.path, revision=info.revision,
                       method="attention", metric="attention_probability", seed=params.get("seed"), remote=remote)
    attrs.update(patterns=patterns, batch_size=batch_size, n_forward_passes=len(chunks))
    if remote not in (False, "local"):
        attrs.update(traffic.as_attrs())
    data = {
        "entropy": (("prompt", "layer", "head"), entropy,
                    {"long_name": "entropy of the answer position's attention", "units": "nat"}),
        "mass": (("prompt", "layer", "head", "group"), mass,
                 {"long_name": "attention from the answer position to the group's tokens", "units": "1"}),
        "n_tokens": (("prompt", "group"), n_tokens, {"long_name": "tokens in the group"}),
    }
    if attn is not None:
        data["attention"] = (("prompt", "layer", "head", "query", "key"), attn,
                             {"long_name": "attention probability", "units": "1"})
    return xr.Dataset(
        data,
        coords={"prompt": np.arange(n), "layer": layer_list, "head": head_list, "query": query,
                "key": np.arange(t_max), "group": np.array(groups, dtype=object),
                "token": (("prompt", "key"), tokens), "statement": (("prompt", "key"), statement),
                "text": ("prompt", np.array([p.text for p in plist], dtype=object)),
                "answer": ("prompt", np.array([p.answer for p in plist], dtype=object))},
        attrs=attrs,
    )


def token_statements(model: Any, prompt: ReasoningPrompt) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and, per token, the index of the statement it belongs to (-1:
    none). A token belongs to a statement when their character spans overlap, so statements
    may span several tokens (BPE) and a token's leading space does not matter."""
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise UsageError("reasoning prompts need a fast (Rust) tokenizer for character offsets; "
                         "load the model with its tokenizer.json")
    enc = tok(prompt.text, return_offsets_mapping=True)
    spans = prompt.spans()
    owner = []
    for a, b in enc["offset_mapping"]:
        hit = [s for s, (lo, hi) in enumerate(spans) if b > a and a < hi and b > lo]
        owner.append(hit[0] if hit else -1)
    missing = sorted(set(range(len(spans))) - set(owner))
    if missing:
        raise UsageError(f"statement {missing[0]} ({prompt.statements[missing[0]].text!r}) of {prompt.text!r} "
                         f"maps to no token")
    return list(enc["input_ids"]), owner


def _groups(prompts: list[ReasoningPrompt], labelled: bool) -> list[str]:
    if not labelled:
        return ["other", "statement"]
    steps = max((s.step for p in prompts for s in p.statements), default=0)
    return ["other", "useless"] + [f"step{k}" for k in range(1, steps + 1)]


def _group_of_tokens(prompt: ReasoningPrompt, owner: list[int], labelled: bool) -> list[int]:
    """Group index per token: 0 other, 1 useless (or any statement if unlabelled), 1 + step."""
    out = []
    for s in owner:
        if s < 0:
            out.append(0)
        elif not labelled:
            out.append(1)
        else:
            st = prompt.statements[s]
            out.append(1 + st.step if st.useful and st.step > 0 else 1)
    return out


def _pad_q(rows: np.ndarray, t_max: int) -> np.ndarray:
    out = np.full(rows.shape[:2] + (t_max, rows.shape[-1]), np.nan)
    out[:, :, : rows.shape[2]] = rows
    return out
