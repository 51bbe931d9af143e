"""Backup name movers (self-repair) as circuits-over-time measures them over training
(``utils/backup_analysis.py``: ``get_ablation_targets``, ``run_ablated_model``,
``run_iteration``, ``process_backup_results``).

On the clean prompts of IOI pairs ("When Mary and John …, John gave … to"; IO = Mary, S the
subject, END the last position):

- **Name movers** (``get_ablation_targets``): the candidates whose copy score (the same as
  :mod:`.ioi_components`', :func:`.ioi_components.copy_hits`) is at least ``copy_threshold``
  (75 %). Candidates: the heads with a circuit edge into the logits when ``circuit`` is given
  (the repository's), else every head. ``heads`` names them instead.
- **The ablated run** (``run_ablated_model``): the name movers' outputs set to zero (their
  slices of the attention output projection's input; TransformerLens's ``hook_z`` = 0).
- **Direct effect** of a head (``get_metrics_and_attributions``): its output at END through
  the final norm with the scale frozen at that run's value and the unembedding, on
  logit(IO) − logit(S) (:func:`backend.graph.head_logit_effects`), in the clean and in the
  ablated run; each run's **logit difference** logit(IO) − logit(S) at END.
- **Backup** (``per_head_logit_diff_delta``): a head's direct effect in the ablated run minus
  in the clean run, mean over prompts; a head that takes over the name movers' work rises.
  The ablated heads' own change is left out (NaN here, 0 in the repository, so the sums
  agree). With ``circuit`` the sums split into the heads with an outgoing circuit edge and the
  rest (``process_backup_results``: ``summed_in_circuit_head_delta``, ``…outside…``).

Departures: without ``circuit`` every head is a candidate (the repository always has one);
in a checkpoint sweep, a circuit with a ``checkpoint`` dim (a circuit sweep's
``circuit.selected_circuit``) gives each checkpoint its own, as the repository reads each
checkpoint's graph, and one without serves every checkpoint; the final norm's scale is read
at END (the repository's ``apply_ln_to_stack(pos_slice=-1)`` reads it at the last position,
END when no prompt is padded); the copy score runs on unfolded weights (see
:mod:`.ioi_components`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend.graph import head_logit_effects
from ..errors import UsageError
from ..runner import Run, experiment
from ..tasks import PromptPairs
from .circuit import Shape, _prepare
from .heads import parse_heads
from .ioi_components import _positions, check_copy_options, circuit_edges, copy_hits, logit_candidates, upstream_heads

CONDITIONS = ("clean", "ablated")


@experiment("backup_heads", batch_size=64, reads_weights="backup_heads' copy score")
def backup_heads(
    run: Run,
    pairs: PromptPairs,
    *,
    heads: Sequence[str] | str | None = None,
    copy_threshold: float = 75.0,
    top_k: int = 5,
    circuit: Any = None,
) -> xr.Dataset:
    """Backup name movers: every head's direct effect on the logit difference before and after
    the name movers are zero-ablated (definitions in
    :mod:`nnsight_reasoning.experiments.backup_heads`).

    Parameters
    ----------
    model : a loaded local model or a name/directory (the copy score reads its weights).
    pairs : IOI pairs, ``nr.tasks.ioi(70, tokenizer=model.tokenizer)`` (only the clean prompts
        are run; the repository: 70 prompts).
    heads : the heads to ablate, ``["a3.1", …]`` or ``"a3.1,a3.2"``; default the name movers
        found by the copy score.
    copy_threshold : a name mover's copy score is at least this, in percent (the repository's
        ``get_ablation_targets``: 75).
    top_k : a name counts as copied among the head's top-k OV tokens (repository: 5).
    circuit : optional (upstream, downstream) 0/1 DataArray of a :func:`nnsight_reasoning.circuit`
        result ``ds``, ``nr.experiments.circuit.selected_circuit(ds)``: candidates are then the
        heads with a circuit edge into the logits, and the backup sums split into the heads that
        send a circuit edge and the rest. With ``revisions``, that of a circuit sweep,
        (checkpoint, upstream, downstream), gives each checkpoint its own.

    Notes
    -----
    Batching: per batch of prompts (one length), one pass for the copy score; then per batch of
    ``batch_size // 2`` prompts two passes of 2·p rows, the clean and the ablated run (their
    logits, and every head's output at END).

    Returns
    -------
    Dataset over (layer, head): ``copy_score`` (%), ``name_mover`` (0/1: ablated),
    ``candidate`` (0/1), ``backup`` (logits; ablated − clean direct effect, prompt mean; NaN at
    the ablated heads); over (condition: clean, ablated): ``direct_effect`` (condition, prompt,
    layer, head) and ``logit_diff`` (condition, prompt) in logits; ``summed_backup`` (scalar);
    with ``circuit`` also ``in_circuit`` (layer, head), ``summed_backup_in_circuit`` and
    ``summed_backup_outside_circuit``. With ``revisions`` every variable gains a leading
    ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.backup_heads(model, nr.tasks.ioi(70, tokenizer=model.tokenizer))
    >>> ds.backup.where(ds.name_mover == 0)      # who takes over, (layer, head), logits
    """
    if pairs.task != "ioi":  # the harness has checked that these are PromptPairs
        raise UsageError("backup_heads needs IOI pairs: nr.tasks.ioi(n, tokenizer=model.tokenizer)")
    check_copy_options(top_k, copy_threshold, strict=False)
    shape = Shape.of(run.model)
    n_layers, n_heads = shape.n_layers, shape.n_heads
    chosen = None if heads is None else parse_heads(heads, n_layers, n_heads)
    edges = circuit_edges(run, circuit, shape)
    pair_list, tok = _prepare(run, pairs)
    pos = _positions(tok, pair_list)
    n = len(pair_list)
    jobs = run.batches([len(b) for b in tok.base])
    hits = np.zeros((n_layers, n_heads))
    for job in run.steps(jobs, "copy scores"):
        hits += copy_hits(run, torch.tensor([tok.base[i] for i in job]), pos[job], [tok.answers[i] for i in job],
                          top_k)
    copy = 100 * hits / (3 * n)
    candidates = logit_candidates(edges, n_layers, n_heads)
    ablated = np.zeros((n_layers, n_heads), bool)
    if chosen is None:
        ablated = candidates & (copy >= copy_threshold)
    else:
        ablated[tuple(np.array(chosen).T)] = True
    masks = torch.stack([torch.ones(n_layers, n_heads), torch.tensor(~ablated, dtype=torch.float32)])  # (2, L, H)
    effect = np.zeros((2, n, n_layers, n_heads))
    logit_diff = np.zeros((2, n))
    for job in run.steps(run.batches([len(b) for b in tok.base], rows_per_item=2), "clean and ablated runs"):
        ids = torch.tensor([tok.base[i] for i in job])
        answers = torch.tensor([tok.answers[i] for i in job])  # (p, 2): IO, S
        p = len(job)
        eff, lg = run.call(head_logit_effects, ids.repeat(2, 1), answers.repeat(2, 1),
                           gates=masks.repeat_interleave(p, 0), last_only=True, logits=True)
        eff, lg = eff.numpy(), lg.numpy().reshape(2, p, 2)  # (2p, L, H, 1, 2); the runs' logits of IO, S
        logit_diff[:, job] = lg[..., 0] - lg[..., 1]
        effect[:, job] = (eff[..., 0, 0] - eff[..., 0, 1]).reshape(2, p, n_layers, n_heads)
    backup = (effect[1] - effect[0]).mean(0)
    backup[ablated] = np.nan
    lh = ("layer", "head")
    data = {
        "copy_score": (lh, copy, {"long_name": f"IO/S1/S2 names among the head's top-{top_k} OV tokens", "units": "%"}),
        "candidate": (lh, candidates.astype(np.int8), {"long_name": "name-mover candidate (a circuit edge into the "
                                                                    "logits, or every head without a circuit)"}),
        "name_mover": (lh, ablated.astype(np.int8), {"long_name": "zero-ablated: " + (
            "the heads given" if chosen is not None else f"candidate with copy score >= {copy_threshold} %")}),
        "direct_effect": (("condition", "prompt") + lh, effect,
                          {"long_name": "head's direct effect on logit(IO) − logit(S) at END (final norm's scale "
                                        "frozen at the run's value)", "units": "logits"}),
        "logit_diff": (("condition", "prompt"), logit_diff, {"long_name": "logit(IO) − logit(S) at END",
                                                              "units": "logits"}),
        "backup": (lh, backup, {"long_name": "direct effect, ablated − clean run, prompt mean (NaN: ablated head)",
                                "units": "logits"}),
        "summed_backup": ((), float(np.nansum(backup)), {"long_name": "backup summed over the heads not ablated",
                                                         "units": "logits"}),
    }
    if edges is not None:
        inside = upstream_heads(edges.any(1), n_layers, n_heads)  # the repository's "circuit heads": edge sources
        data["in_circuit"] = (lh, inside.astype(np.int8), {"long_name": "head sends a circuit edge"})
        for key, where, what in (("in", inside, "the heads sending a circuit edge"),
                                 ("outside", ~inside, "the other heads")):
            data[f"summed_backup_{key}_circuit"] = ((), float(np.nansum(np.where(where, backup, np.nan))),
                                                    {"long_name": f"backup summed over {what}, not ablated",
                                                     "units": "logits"})
    coords = {"layer": np.arange(n_layers), "head": np.arange(n_heads),
              "condition": ("condition", np.array(CONDITIONS, dtype=object),
                            {"long_name": "clean run, or the name movers zero-ablated"}),
              "prompt": ("prompt", np.arange(n), {"long_name": "prompt pair index"}),
              "base": ("prompt", [p.base for p in pair_list])}
    attrs = {"method": "backup_heads", "metric": "logit_diff", "copy_threshold": float(copy_threshold),
             "top_k": top_k, "candidates": "circuit" if edges is not None else "all heads",
             "ablation": "given heads" if chosen is not None else "copy score"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _names(mask: np.ndarray) -> list[str]:
    return [f"a{layer}.{head}" for layer, head in zip(*np.nonzero(mask))]


def summarize(ds: xr.Dataset) -> list[Any]:
    """Per checkpoint: the ablated name movers, the logit difference before and after, and the
    heads whose direct effect rises most (* a name mover at an earlier checkpoint)."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    lines: list[Any] = [f"backup name movers · {ds.sizes['prompt']} IOI prompts · {ds.attrs['model']}@"
                        f"{last.attrs['revision']} (candidates: {ds.attrs['candidates']}; ablated: "
                        f"{ds.attrs['ablation']})"]
    names = list(ds["checkpoint"].values) if "checkpoint" in ds.dims else [None]
    earlier = np.zeros((ds.sizes["layer"], ds.sizes["head"]), bool)  # the repository's cumulative name movers
    for c in names:
        one = ds if c is None else ds.sel(checkpoint=c)
        movers = one["name_mover"].values.astype(bool)
        clean, abl = (float(one["logit_diff"].sel(condition=k).mean()) for k in CONDITIONS)
        # a change relative to a clean difference at or below 0 (the task not done) means nothing
        change = f" ({100 * (abl - clean) / clean:+.1f} %)" if clean > 0 else ""
        head = "" if c is None else f"{c}: "
        if not movers.any():
            lines.append(f"{head}no name movers (copy score >= {ds.attrs['copy_threshold']:g} %): nothing ablated; "
                         f"logit difference {clean:.2f}")
        else:
            b = one["backup"].values
            order = [k for k in np.argsort(np.nan_to_num(b, nan=-np.inf), axis=None)[::-1][:3]
                     if np.isfinite(b.flat[k])]
            top = ", ".join(f"a{lay}.{h}{'*' if earlier[lay, h] else ''} {b[lay, h]:+.2f}"
                            for lay, h in (np.unravel_index(k, b.shape) for k in order))
            summed = float(one["summed_backup"])
            share = f" ({100 * summed / clean:+.1f} %)" if clean > 0 else ""
            lines.append(f"{head}ablated {', '.join(_names(movers))}: logit difference {clean:.2f} → {abl:.2f}"
                         f"{change}; backup summed {summed:+.2f}{share}; largest {top}")
        earlier |= movers
    return lines


__all__: Sequence[str] = ("backup_heads", "summarize")
