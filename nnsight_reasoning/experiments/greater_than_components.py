"""Greater-than components as circuits-over-time checks, per checkpoint, that a circuit still
runs Hanna et al.'s algorithm (``verify_greater_than.py``).

On the clean prompts of greater-than pairs ("The war lasted from the year 1732 to the year
17"; YY = 32, END the last position), every head and MLP is read at END:

- **Attention to YY** of a head (``patterns_same``): the share of prompts whose attention
  from END is largest at the YY token (``yy_attention``); also its mean probability there
  (``yy_attention_prob``).
- **Copies YY** (``logits_correct``): the share of prompts whose head output, read over the
  100 year tokens 00 … 99, is largest at YY or YY + 1 (``yy_logit``): the head moves the start
  year to END.
- **Greater-than MLP** (``mlps_correct``): an MLP's output read over the year tokens, the mean
  over the later years (YY + 1 … 99) minus the mean over YY and the earlier ones, in logits,
  mean over prompts (``mlp_logit_diff``): positive where the MLP favours the later years.

The year tokens are read as :func:`backend.graph.component_logit_effects` reads any direct
effect: through the final norm with its scale frozen at the run's value (W_U[v] · (γ ⊙ N(o) /
s)). With ``circuit`` (one checkpoint's circuit, or a circuit sweep's, each
checkpoint then read with its own, as the repository loads each checkpoint's graph) the
repository's components are marked: the MLPs with a circuit edge into the logits
(``in_circuit_mlp``) and the heads with a circuit edge into one of those MLPs
(``in_circuit_head``), and their scores averaged (``circuit_*``).

Departures: the repository reads the year tokens with the unembedding alone, its weights
loaded unfolded (``fold_ln=False``), so neither the final LayerNorm's centring nor its gain
enters (``logit_lens``); here the final norm's affine map does, as in every direct effect of
the toolkit (a head's top year can differ where γ is far from uniform or the year tokens'
unembedding rows differ in their sums, which centring weighs; the MLPs' difference of means
also differs by the frozen scale 1 / s). The repository's attention test reads one key
position for every prompt, the seventh from the end of its 1,000 prompts right-padded to the
longest (``[:, -7]``): the YY token for prompts two tokens shorter than the longest, the first
" year" for the longest; here each prompt's own YY token (where the clean and corrupted
prompts differ). The repository runs in bfloat16, where ties at the maximum are more common;
here the model's dtype, read in float64. Every head and MLP is scored; the circuit selects.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import attention_probs
from ..backend.graph import component_logit_effects
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks import PromptPairs
from ..tasks.greater_than import year_token_ids
from .circuit import Shape, _prepare, node_table
from .ioi_components import circuit_edges, upstream_heads


def _start_years(pair_list: Sequence[Any], tok: Any, years: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt,) YY of each clean prompt (the largest distractor: the start year and the earlier
    ones are the wrong answers, as the repository's flags) and (prompt,) the YY token's position
    (the one position where the clean and corrupted prompts differ, which must hold the token
    of YY: ``years`` are the tokens of 00 … 99)."""
    yy = np.zeros(len(pair_list), dtype=np.int64)
    pos = np.zeros(len(pair_list), dtype=np.int64)
    for k, (p, b, s) in enumerate(zip(pair_list, tok.base, tok.source)):
        diff = [i for i, (x, y) in enumerate(zip(b, s)) if x != y]
        try:
            yy[k] = max(int(d) for d in p.distractors)
        except ValueError:  # no distractors, or one that is no year
            diff = []
        if len(diff) != 1 or not 0 <= yy[k] < 100 or b[diff[0]] != years[yy[k]]:
            raise UsageError(f"greater-than pair {k} does not differ in its start year's two digits alone, or its "
                             f"distractors are not YY and the earlier years ({p.base!r} / {p.source!r}); use "
                             f"nr.tasks.get_task('greater_than').pairs(tokenizer=model.tokenizer)")
        pos[k] = diff[0]
    return yy, pos


def circuit_components(edges: np.ndarray, n_layers: int, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """The repository's components of a greater-than circuit (``verify_greater_than.py``): (layer,)
    the MLPs with a circuit edge into the logits, and (layer, head) the heads with a circuit
    edge into one of those MLPs; ``edges`` (upstream, downstream) bool of the plain graph."""
    up, down = node_table(n_layers, n_heads)
    mlp_rows = [u for u in np.nonzero(edges[:, -1])[0] if up["kind"][u] == "mlp"]
    mlps = np.zeros(n_layers, bool)
    mlps[[up["layer"][u] for u in mlp_rows]] = True
    cols = [down["name"].index(f"m{layer}") for layer in np.nonzero(mlps)[0]]
    heads = upstream_heads(edges[:, cols].any(1), n_layers, n_heads) if cols else np.zeros((n_layers, n_heads), bool)
    return mlps, heads


@experiment("greater_than_components", batch_size=64, reads_weights="greater_than_components' logit lens")
def greater_than_components(
    run: Run,
    pairs: PromptPairs,
    *,
    circuit: Any = None,
) -> xr.Dataset:
    """Which heads attend to and copy the start year, and which MLPs favour the later years, on
    greater-than prompts (definitions in
    :mod:`nnsight_reasoning.experiments.greater_than_components`).

    Parameters
    ----------
    model : a loaded local model or a name/directory (the logit lens reads its weights).
    pairs : ``nr.tasks.get_task("greater_than").pairs(n_prompts=1000, tokenizer=model.tokenizer)``
        (the repository: 1,000 prompts); only the clean prompts are run, the corrupted ones
        locate the YY token.
    circuit : optional (upstream, downstream) 0/1 DataArray from :func:`nnsight_reasoning.circuit`
        on greater-than (``nr.experiments.circuit.selected_circuit(ds)``); with ``revisions``, that
        of a circuit sweep, (checkpoint, upstream, downstream), gives each checkpoint its own.

    Notes
    -----
    Batching: per batch of prompts (one length), one pass for the attention patterns and one
    for every head's and MLP's direct effect on the 100 year tokens.

    Returns
    -------
    Dataset over (layer, head): ``yy_attention`` (share of prompts whose attention from END peaks
    at YY), ``yy_attention_prob`` (mean attention probability END → YY), ``yy_logit`` (share of
    prompts whose direct effect on the year tokens peaks at YY or YY + 1); over layer:
    ``mlp_logit_diff`` (logits; the MLP's mean direct effect on the later years minus on YY and
    the earlier ones, prompt mean); over prompt: ``start_year`` (YY) and ``yy_position``. With
    ``circuit``: ``in_circuit_mlp`` (layer), ``in_circuit_head`` (layer, head) (0/1) and the
    means over those components ``circuit_yy_attention``, ``circuit_yy_logit``,
    ``circuit_mlp_logit_diff`` (NaN where the circuit has none). With ``revisions`` every
    variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> gt = nr.tasks.get_task("greater_than").pairs(n_prompts=1000, tokenizer=model.tokenizer)
    >>> ds = nr.greater_than_components(model, gt)
    >>> ds.yy_attention.where(ds.yy_logit > 0.5)     # heads that attend to YY and copy it
    """
    if pairs.task != "greater_than":  # the harness has checked that these are PromptPairs
        raise UsageError("greater_than_components needs greater-than pairs: "
                         "nr.tasks.get_task('greater_than').pairs(tokenizer=model.tokenizer)")
    shape = Shape.of(run.model)
    n_layers, n_heads = shape.n_layers, shape.n_heads
    edges = circuit_edges(run, circuit, shape)
    years = year_token_ids(run.tokenizer)
    if None in years:
        raise UsageError(f"the year '{years.index(None):02d}' is not one token for this model; greater-than reads "
                         f"the 100 two-digit year tokens")
    pair_list, tok = _prepare(run, pairs)
    yy, pos = _start_years(pair_list, tok, years)
    n = len(pair_list)
    peak = np.zeros((n, n_layers, n_heads), bool)
    prob = np.zeros((n, n_layers, n_heads))
    copies = np.zeros((n, n_layers, n_heads), bool)
    mlp_diff = np.zeros((n, n_layers))
    later = np.arange(100)[None, :] > yy[:, None]  # (prompt, year)
    for job in run.steps(run.batches([len(b) for b in tok.base]), "attention and year logits"):
        ids = torch.tensor([tok.base[i] for i in job])
        probs = run.call(attention_probs, ids, list(range(n_layers)))[:, :, :, 0].double().numpy()  # (p, L, H, T)
        at_yy = probs[np.arange(len(job)), :, :, pos[job]]  # (p, L, H)
        peak[job], prob[job] = at_yy == probs.max(-1), at_yy
        heads, mlps = run.call(component_logit_effects, ids, torch.tensor([years] * len(job)))
        top = heads.numpy().argmax(-1)  # (p, L, H): the year each head's output favours most
        copies[job] = (top == yy[job, None, None]) | (top == yy[job, None, None] + 1)
        m, good = mlps.numpy(), later[job][:, None, :]  # (p, L, 100)
        mlp_diff[job] = (m * good).sum(-1) / good.sum(-1) - (m * ~good).sum(-1) / (~good).sum(-1)
    lh = ("layer", "head")
    data = {
        "yy_attention": (lh, peak.mean(0), {"long_name": "share of prompts whose attention from END peaks at YY",
                                            "units": "1"}),
        "yy_attention_prob": (lh, prob.mean(0), {"long_name": "attention probability END → YY, prompt mean",
                                                 "units": "1"}),
        "yy_logit": (lh, copies.mean(0), {"long_name": "share of prompts whose direct effect on the year tokens peaks "
                                                       "at YY or YY + 1", "units": "1"}),
        "mlp_logit_diff": ("layer", mlp_diff.mean(0), {"long_name": "MLP's direct effect, mean over the later years "
                                                                    "− mean over YY and earlier, prompt mean",
                                                       "units": "logits"}),
        "start_year": ("prompt", yy, {"long_name": "YY, the start year's last two digits"}),
        "yy_position": ("prompt", pos, {"long_name": "token position of YY"}),
    }
    if edges is not None:
        mlps_in, heads_in = circuit_components(edges, n_layers, n_heads)
        data["in_circuit_mlp"] = ("layer", mlps_in.astype(np.int8), {"long_name": "MLP with a circuit edge into the "
                                                                                  "logits"})
        data["in_circuit_head"] = (lh, heads_in.astype(np.int8), {"long_name": "head with a circuit edge into such "
                                                                               "an MLP"})
        for name, values, mask in (("yy_attention", peak.mean(0), heads_in), ("yy_logit", copies.mean(0), heads_in),
                                   ("mlp_logit_diff", mlp_diff.mean(0), mlps_in)):
            mean = float(values[mask].mean()) if mask.any() else float("nan")
            data[f"circuit_{name}"] = ((), mean, {"long_name": f"{name} averaged over the circuit's "
                                                               f"{'MLPs' if name.startswith('mlp') else 'heads'}",
                                                  "units": "logits" if name.startswith("mlp") else "1"})
    coords = {"layer": np.arange(n_layers), "head": np.arange(n_heads),
              "prompt": ("prompt", np.arange(n), {"long_name": "prompt pair index"}),
              "base": ("prompt", [p.base for p in pair_list])}
    attrs = {"method": "greater_than_components", "metric": "logit_lens",
             "candidates": "circuit" if edges is not None else "none"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def summarize(ds: xr.Dataset) -> list[Any]:
    """The heads that attend to and copy YY, the MLPs that favour later years, and with a
    circuit its components' means (per checkpoint in a sweep)."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    lines: list[Any] = [f"greater-than components · {ds.sizes['prompt']} prompts · "
                        f"{model_at(last)}"]
    if "circuit_yy_attention" in ds:
        for c in (ds["checkpoint"].values if "checkpoint" in ds.dims else [None]):
            one = ds if c is None else ds.sel(checkpoint=c)
            lines.append(("" if c is None else f"{c}: ") + _circuit_line(one))
    found = (last["yy_attention"] > 0.5) | (last["yy_logit"] > 0.5)  # either on most prompts
    for layer, head in zip(*np.nonzero(found.values)):
        v = last.isel(layer=layer, head=head)
        lines.append(f"a{layer}.{head}: attention END → YY largest on {float(v['yy_attention']):.2f} of the prompts, "
                     f"output favours YY or YY + 1 on {float(v['yy_logit']):.2f}")
    if not found.values.any():
        lines.append("no head attends to YY or copies it on most prompts")
    for layer in range(last.sizes["layer"]):
        flag = " (in circuit)" if "in_circuit_mlp" in last and int(last["in_circuit_mlp"][layer]) else ""
        lines.append(f"m{layer}: later − earlier years {float(last['mlp_logit_diff'][layer]):+.2f} logits{flag}")
    return lines


def _circuit_line(one: xr.Dataset) -> str:
    """One checkpoint's circuit components and their means."""
    mlps = [f"m{layer}" for layer in np.nonzero(one["in_circuit_mlp"].values)[0]]
    heads = [f"a{layer}.{head}" for layer, head in zip(*np.nonzero(one["in_circuit_head"].values))]
    if not mlps:
        return "no circuit MLP into the logits"
    line = f"circuit MLPs {', '.join(mlps)} (later − earlier years {float(one['circuit_mlp_logit_diff']):+.2f})"
    if not heads:
        return line + ", no circuit head into them"
    return (line + f"; heads {', '.join(heads)} attend to YY {float(one['circuit_yy_attention']):.2f}, copy it "
                   f"{float(one['circuit_yy_logit']):.2f}")


__all__: Sequence[str] = ("greater_than_components", "circuit_components", "summarize")
