"""Attention patterns over reasoning prompts (Hou et al. 2023): patterns, head entropy and
the attention mass from the answer position to the statements of each reasoning step.

Prompts are grouped by token length, so no padding ever shifts a position; in the result,
shorter prompts are NaN-padded along ``query``/``key``. The answer position is each prompt's
last token (where the model predicts the answer).

**Head entropy as MechanisticProbe defines it** (``src/stask/prune.py:head_calculation``):
the last query's attention over the numbers is first *averaged over the data*, then the
entropy of that mean distribution is divided by log N (N numbers), in two views: numbers in
their positions, and numbers ordered by size rank. A head that always looks at the same
position has position entropy 0; one that always looks at the smallest number, wherever it
is, has rank entropy 0. Here a statement's attention is the sum over its tokens (the
repository's numbers are one token each), and the distribution is over the statements only
(scipy's ``entropy`` renormalises the repository's vector the same way); the rank view needs
statements that are numbers (k-th smallest), and both views need every prompt to have the
same number of statements. ``prompt_entropy`` is the other quantity, the entropy of each
prompt's whole attention row (all tokens), averaged afterwards if at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import check_heads, check_layers, dims
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts, special_tokens_of

PATTERNS = ("last", "all", "none")


@experiment("attention", batch_size=64)
def attention(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: str = "last",
    pruned: Any = None,
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
    pruned : (layer, head) 1 where a head is pruned, over all the model's layers and heads, e.g.
        ``nr.prune(...).pruned.sel(ordering="entropy_position", fraction=0.4)``: every number is
        then that of the model with those heads' outputs zeroed (as ``prune`` prunes them; a
        pruned head's own pattern is still stored), and the result keeps ``pruned`` for
        ``plot(kind="flow")``, which averages the unpruned heads (MechanisticProbe's case study,
        ``src/stask/prune.py:195-204``).

    Returns
    -------
    xarray.Dataset with

    - ``attention`` (prompt, layer, head, query, key): probabilities; ``query`` is -1 for
        "each prompt's last token" when lengths differ;
    - ``head_entropy`` (view, layer, head): the paper's head entropy, normalised to [0, 1]:
        entropy of the prompt-mean attention from the answer position over the statements,
        / log(statements); ``view`` "position" (statements in prompt order) or "rank" (by size,
        numbers only; NaN otherwise); ``statement_attention`` (view, layer, head, slot): that
        prompt-mean attention, slot = statement index or size rank (0 = smallest). Both are
        absent when prompts have different numbers of statements;
    - ``prompt_entropy`` (prompt, layer, head): entropy in nats of each prompt's answer-position
        attention over all its tokens (not the paper's quantity);
    - ``mass`` (prompt, layer, head, group): attention from the answer position summed over the
        tokens of each ``group``: "other" (tokens outside statements), "useless", "step1", … (or
        "statement" for unlabelled prompts); sums to 1 over ``group``;
    - ``n_tokens`` (prompt, group); coordinates ``token``, ``statement`` (index, -1 = none) and
        ``key_step`` (the statement's reasoning step, 0 = not useful, -1 = none) along (prompt, key),
        ``text`` and ``answer`` along prompt; ``pruned`` (layer, head) with ``pruned``.
    """
    return measure(run, prompts, layers=layers, heads=heads, patterns=patterns, pruned=pruned)


def measure(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: str = "last",
    label: str = "attention",
    pruned: Any = None,
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
    layer_list = check_layers(layers, d["n_layers"])
    head_list = check_heads(heads, d["n_heads"])
    mask = None if pruned is None else head_grid(pruned, d["n_layers"], d["n_heads"])
    toks = token_statements(model, plist)
    lengths = [len(t.ids) for t in toks]
    n, t_max, n_l, n_h = len(plist), max(lengths), len(layer_list), len(head_list)
    labelled = not isinstance(prompts, ReasoningPrompts) or prompts.labelled
    groups = _groups(plist, labelled)
    q_len = t_max if patterns == "all" else 1
    attn = np.full((n, n_l, n_h, q_len, t_max), np.nan, np.float32) if patterns != "none" else None
    entropy = np.zeros((n, n_l, n_h))
    per_statement = [None] * n  # (L, H, statements) per prompt
    mass = np.zeros((n, n_l, n_h, len(groups)))
    n_tokens = np.zeros((n, len(groups)), np.int64)
    copies: dict[tuple[int, ...], list[int]] = {}  # each token sequence is read once: prompts that differ only in
    for i, t in enumerate(toks):                   # their labels (the same lists for several k) share a pass
        copies.setdefault(tuple(t.ids), []).append(i)
    unique = list(copies.values())
    for chunk in run.steps(run.batches([lengths[c[0]] for c in unique]), label):
        probs = run.call(backend.attention_probs, torch.tensor([toks[unique[j][0]].ids for j in chunk]), layer_list,
                         last_only=patterns != "all",
                         head_mask=None if mask is None else torch.from_numpy(1 - mask)
                         )[:, :, head_list].double().numpy()
        rows = [b for b, j in enumerate(chunk) for _ in unique[j]]  # the pass's row of each prompt
        items = [i for j in chunk for i in unique[j]]
        probs = probs[rows]
        last = probs[:, :, :, -1]  # (b, L, H, T): the answer position's row
        entropy[items] = -(np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)).sum(-1)
        for b, i in enumerate(items):
            onehot = np.eye(len(groups))[_group_of_tokens(plist[i], toks[i].statement, labelled)]  # (T, G)
            mass[i] = last[b] @ onehot
            owner = np.asarray(toks[i].statement)
            per_statement[i] = last[b] @ (owner[:, None] == np.arange(len(plist[i].statements))[None])
            n_tokens[i] = onehot.sum(0)
            if attn is not None:
                attn[i, :, :, :, : lengths[i]] = probs[b] if patterns == "last" else _pad_q(probs[b], t_max)
    same_len = len(set(lengths)) == 1
    query = list(range(t_max)) if patterns == "all" else [t_max - 1 if same_len else -1]
    tokens = np.full((n, t_max), "", dtype=object)
    statement = np.full((n, t_max), -1, np.int64)
    key_step = np.full((n, t_max), -1, np.int64)
    for i, t in enumerate(toks):
        tokens[i, : lengths[i]] = model.tokenizer.convert_ids_to_tokens(t.ids)
        statement[i, : lengths[i]] = t.statement
        key_step[i, : lengths[i]] = np.array(_group_of_tokens(plist[i], t.statement, labelled)) - 1
    data = {
        "prompt_entropy": (("prompt", "layer", "head"), entropy,
                           {"long_name": "entropy of each prompt's answer-position attention over its tokens",
                            "units": "nats"}),
        "mass": (("prompt", "layer", "head", "group"), mass,
                 {"long_name": "attention from the answer position to the group's tokens", "units": "1"}),
        "n_tokens": (("prompt", "group"), n_tokens, {"long_name": "tokens in the group"}),
    }
    if attn is not None:
        data["attention"] = (("prompt", "layer", "head", "query", "key"), attn,
                             {"long_name": "attention probability", "units": "1"})
    if mask is not None:
        data["pruned"] = (("layer", "head"), mask[np.ix_(layer_list, head_list)],
                          {"long_name": "head pruned (1): its output zeroed in every pass"})
    coords = {}
    views = statement_views(plist, per_statement)
    if views is not None:
        mean = np.stack(views)  # (view, L, H, slot)
        data["statement_attention"] = (("view", "layer", "head", "slot"), mean,
                                       {"long_name": "prompt-mean attention from the answer position to the statement "
                                                     "in slot (position or size rank)", "units": "1"})
        data["head_entropy"] = (("view", "layer", "head"), normalised_entropy(mean),
                                {"long_name": "entropy of the prompt-mean attention over the statements / "
                                              "log(statements) (Hou et al.)", "units": "1"})
        coords = {"view": ("view", np.array(VIEWS, dtype=object), {"long_name": VIEW_NAME}),
                  "slot": ("slot", np.arange(mean.shape[-1]),
                           {"long_name": "statement index (view position) or size rank (view rank; 0 = smallest)"})}
    return xr.Dataset(
        data,
        coords={**coords, "prompt": ("prompt", np.arange(n), {"long_name": "prompt index"}),
                "layer": layer_list, "head": head_list,
                "query": ("query", query, {"long_name": "query token position (−1: each prompt's last token)"}),
                "key": ("key", np.arange(t_max), {"long_name": "key token position"}),
                "group": ("group", np.array(groups, dtype=object),
                          {"long_name": "token group: other (outside statements), useless, stepK (useful at "
                                        "reasoning step K) or statement (unlabelled prompts)"}),
                "token": (("prompt", "key"), tokens),
                "statement": (("prompt", "key"), statement,
                              {"long_name": "statement the key token belongs to (−1: none)"}),
                "key_step": (("prompt", "key"), key_step,  # "step" is a sweep's training step
                             {"long_name": "reasoning step of the key token's statement (0: not useful, or "
                                           "unlabelled; −1: no statement)"}),
                "text": ("prompt", np.array([p.text for p in plist], dtype=object)),
                "answer": ("prompt", np.array([p.answer for p in plist], dtype=object))},
        attrs={"method": "attention", "metric": "attention_probability", "patterns": patterns,
               **({"n_pruned": int(mask.sum())} if mask is not None else {}),
               # where a mask read from a prune result came from (the CLI's --pruned): its model and revision
               **({"pruned_from": str(pruned.attrs["pruned_from"])}
                  if isinstance(pruned, xr.DataArray) and "pruned_from" in pruned.attrs else {})},
    )


def head_grid(pruned: Any, n_layers: int, n_heads: int) -> np.ndarray:
    """``pruned`` as an (n_layers, n_heads) int8 array of 0/1: an array of that shape, or a
    DataArray over exactly (layer, head), such as a ``prune`` result's ``pruned`` at one ordering
    and fraction (its layer and head labels are checked against the model's)."""
    if isinstance(pruned, xr.DataArray):
        extra = [dim for dim in pruned.dims if dim not in ("layer", "head")]
        if extra:
            raise UsageError(f"pruned must be one (layer, head) mask: select one value along {', '.join(extra)} "
                             f"(e.g. .sel(ordering='entropy_position', fraction=0.4))")
        if set(pruned.dims) != {"layer", "head"}:
            raise UsageError(f"pruned must have dims (layer, head) (got {pruned.dims})")
        if list(pruned["layer"].values) != list(range(n_layers)) or \
                list(pruned["head"].values) != list(range(n_heads)):
            raise UsageError(f"pruned must cover the model's {n_layers} layers × {n_heads} heads, in order")
        pruned = pruned.transpose("layer", "head").values
    grid = np.asarray(pruned)
    if grid.shape != (n_layers, n_heads):
        raise UsageError(f"pruned must be a (layer, head) mask of shape ({n_layers}, {n_heads}) for this model "
                         f"(got shape {grid.shape})")
    if not np.isin(grid, (0, 1)).all():
        raise UsageError("pruned holds 1 (pruned) or 0 (kept) per head")
    return grid.astype(np.int8)


VIEWS = ("position", "rank")
VIEW_NAME = "statements in prompt order (position) or by size rank (rank)"


def statement_views(plist: Sequence[ReasoningPrompt], per_statement: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """The prompt-mean attention to each statement, (L, H, S) in position order and in size-rank
    order (NaN unless every statement is a number), from each prompt's (L, H, S) attention per
    statement; None when prompts differ in S. Rank r reads the first statement holding the r-th
    smallest value, as MechanisticProbe's ``head_calculation`` (``data_num.index``,
    ``src/stask/prune.py:61``): with repeated values that statement fills every rank of its value
    and the later copies fill none."""
    if len({a.shape[-1] for a in per_statement}) != 1:
        return None
    a = np.stack(per_statement)  # (n, L, H, S)
    values = [[_number(st.text) for st in p.statements] for p in plist]
    if any(v is None for row in values for v in row):
        by_rank = np.full(a.shape[1:], np.nan)
    else:
        order = np.array([[row.index(v) for v in sorted(row)] for row in values])  # (n, S): first copy per rank
        by_rank = np.take_along_axis(a, order[:, None, None, :], -1).mean(0)
    return a.mean(0), by_rank


def normalised_entropy(mean: np.ndarray) -> np.ndarray:
    """Entropy of each distribution along the last axis, renormalised to sum to 1, divided by
    log(its length): 0 = all mass on one slot, 1 = uniform. NaN rows stay NaN."""
    if mean.shape[-1] < 2:  # one statement: no distribution to spread
        return np.full(mean.shape[:-1], np.nan)
    p = mean / mean.sum(-1, keepdims=True)
    h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    return np.where(np.isnan(mean).any(-1), np.nan, h / np.log(mean.shape[-1]))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


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
    encoded = backend.tokenize_with_offsets(model, [p.text for p in prompts], special_tokens_of(prompts))
    for p, (ids, offsets) in zip(prompts, encoded):
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
    last checkpoint of a sweep): their head entropy (the paper's, by position and by rank, when
    present; else the prompt-mean entropy in nats) and mass per group, mean over prompts."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · "
            f"{ds.sizes['prompt']} prompts · patterns = {ds.attrs.get('patterns')}")
    if "pruned" in last:
        pruned = last["pruned"].stack(lh=("layer", "head"))
        head += (f" · {int(pruned.sum())} heads pruned: " +
                 " ".join(f"L{li}H{h}" for (li, h), p in zip(pruned["lh"].values, pruned.values) if p))
    mass = last["mass"].mean("prompt")
    table = Table(title=f"heads by attention from the answer position to useful statements "
                        f"({last.attrs.get('revision')}, mean over prompts)")
    paper = "head_entropy" in last
    ent_cols = ("H position", "H rank") if paper else ("entropy (nats)",)
    for col in ("layer", "head", *ent_cols, *[str(g) for g in last["group"].values]):
        table.add_column(col, justify="right")
    useful = [g for g in last["group"].values if str(g).startswith("step")]
    score = mass.sel(group=useful).sum("group") if useful else mass.sel(group=mass["group"].values[-1])
    if "pruned" in last:  # a pruned head's pattern is read, but its output is not part of the model
        score = score.where(last["pruned"] == 0)
    flat = score.stack(lh=("layer", "head")).dropna("lh")
    for idx in flat.argsort().values[::-1][:top]:
        li, h = flat["lh"].values[idx]
        row = mass.sel(layer=li, head=h)
        ent = (last["head_entropy"].sel(layer=li, head=h).values if paper
               else [float(last["prompt_entropy"].sel(layer=li, head=h).mean())])
        table.add_row(str(li), str(h), *[f"{float(v):.2f}" for v in ent], *[f"{float(v):.3f}" for v in row.values])
    notes = ["H = entropy of the prompt-mean attention over the statements / log(statements) (Hou et al.): "
             "0 = always the same statement, 1 = uniform"] if paper else []
    if "pruned_from" in ds.attrs:
        notes.append(f"pruned heads from {ds.attrs['pruned_from']}")
    return [head, table, *notes]
