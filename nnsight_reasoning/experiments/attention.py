"""Attention patterns over reasoning prompts (Hou et al. 2023): patterns, head entropy and
the attention mass from the answer position to the statements of each reasoning step.

Prompts are grouped by token length, so no padding ever shifts a position; in the result,
shorter prompts are NaN-padded along ``query``/``key``. The answer position is each prompt's
last token (where the model predicts the answer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..errors import UsageError
from ..runner import Run, experiment
from ..sites import check_heads, check_layers, dims
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts

PATTERNS = ("last", "all", "none")


@experiment("attention", batch_size=64)
def attention(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: str = "last",
) -> xr.Dataset:
    """Attention probabilities, head entropy and attention mass per reasoning step.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model`, or a name/directory to load; it must
        run eager attention (the default of ``load_model``).
    prompts : labelled prompts, e.g. ``nr.tasks.kth_smallest(...)`` or ``nr.tasks.load_reasoning(...)``.
    layers, heads : subsets to keep (default all).
    patterns : which rows of the attention matrix to store as ``attention``: "last" (the
        answer position; default), "all" (every query; n·L·H·T² values) or "none".

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
    return measure(run, prompts, layers=layers, heads=heads, patterns=patterns)


def measure(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: str = "last",
    label: str = "attention",
) -> xr.Dataset:
    """:func:`attention` on ``run``'s model, its passes shown as ``label``: the probe measures its
    model and its baseline with it, so that every forward pass is a part of the probe's run."""
    if patterns not in PATTERNS:
        raise UsageError(f"patterns must be one of {', '.join(PATTERNS)} (got {patterns!r})")
    plist = list(prompts)
    if not plist:
        raise UsageError("no prompts given")
    model = run.model
    d = dims(model)
    layer_list = check_layers(list(layers) if layers is not None else None, d["n_layers"])
    head_list = check_heads(list(heads) if heads is not None else None, d["n_heads"])
    toks = token_statements(model, plist)
    lengths = [len(t.ids) for t in toks]
    n, t_max, n_l, n_h = len(plist), max(lengths), len(layer_list), len(head_list)
    labelled = not isinstance(prompts, ReasoningPrompts) or prompts.labelled
    groups = _groups(plist, labelled)
    q_len = t_max if patterns == "all" else 1
    attn = np.full((n, n_l, n_h, q_len, t_max), np.nan, np.float32) if patterns != "none" else None
    entropy = np.zeros((n, n_l, n_h))
    mass = np.zeros((n, n_l, n_h, len(groups)))
    n_tokens = np.zeros((n, len(groups)), np.int64)
    for chunk in run.steps(run.batches(lengths), label):
        probs = run.call(backend.attention_probs, torch.tensor([toks[i].ids for i in chunk]), layer_list,
                         last_only=patterns != "all")[:, :, head_list].double().numpy()
        last = probs[:, :, :, -1]  # (b, L, H, T): the answer position's row
        entropy[chunk] = -(np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)).sum(-1)
        for b, i in enumerate(chunk):
            onehot = np.eye(len(groups))[_group_of_tokens(plist[i], toks[i].statement, labelled)]  # (T, G)
            mass[i] = last[b] @ onehot
            n_tokens[i] = onehot.sum(0)
            if attn is not None:
                attn[i, :, :, :, : lengths[i]] = probs[b] if patterns == "last" else _pad_q(probs[b], t_max)
    same_len = len(set(lengths)) == 1
    query = list(range(t_max)) if patterns == "all" else [t_max - 1 if same_len else -1]
    tokens = np.full((n, t_max), "", dtype=object)
    statement = np.full((n, t_max), -1, np.int64)
    for i, t in enumerate(toks):
        tokens[i, : lengths[i]] = model.tokenizer.convert_ids_to_tokens(t.ids)
        statement[i, : lengths[i]] = t.statement
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
        attrs={"method": "attention", "metric": "attention_probability", "patterns": patterns},
    )


@dataclass(frozen=True)
class PromptTokens:
    """One prompt's token ids and, per token, the index of the statement it belongs to (-1: none)."""

    ids: list[int]
    statement: list[int]


def token_statements(model: Any, prompts: Sequence[ReasoningPrompt]) -> list[PromptTokens]:
    """Each prompt's tokens and their statements. A token belongs to a statement when their
    character spans overlap, so statements may span several tokens (BPE) and a token's leading
    space does not matter; a statement that owns no token is an error."""
    out = []
    for p, (ids, offsets) in zip(prompts, backend.tokenize_with_offsets(model, [p.text for p in prompts])):
        spans = p.spans()
        owner = []
        for a, b in offsets:
            hit = [s for s, (lo, hi) in enumerate(spans) if b > a and a < hi and b > lo]
            owner.append(hit[0] if hit else -1)
        missing = sorted(set(range(len(spans))) - set(owner))
        if missing:
            raise UsageError(f"statement {missing[0]} ({p.statements[missing[0]].text!r}) of {p.text!r} "
                             f"maps to no token")
        out.append(PromptTokens(ids, owner))
    return out


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


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """The ``top`` heads by attention from the answer position to useful statements (at the
    last checkpoint of a sweep): their entropy and mass per group, mean over prompts."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    head = (f"{ds.attrs.get('task')} · {ds.attrs.get('model')}@{ds.attrs.get('revision')} · "
            f"{ds.sizes['prompt']} prompts · patterns = {ds.attrs.get('patterns')}")
    mass = last["mass"].mean("prompt")
    table = Table(title=f"heads by attention from the answer position to useful statements "
                        f"({last.attrs.get('revision')}, mean over prompts)")
    for col in ("layer", "head", "entropy (nats)", *[str(g) for g in last["group"].values]):
        table.add_column(col, justify="right")
    useful = [g for g in last["group"].values if str(g).startswith("step")]
    score = mass.sel(group=useful).sum("group") if useful else mass.sel(group=mass["group"].values[-1])
    flat = score.stack(lh=("layer", "head"))
    for idx in flat.argsort().values[::-1][:top]:
        li, h = flat["lh"].values[idx]
        row = mass.sel(layer=li, head=h)
        table.add_row(str(li), str(h), f"{float(last['entropy'].sel(layer=li, head=h).mean()):.2f}",
                      *[f"{float(v):.3f}" for v in row.values])
    return [head, table]
