"""Self-repair: how much of a head's direct effect shows in the logits when the head is ablated
(Tigges et al. 2024, ``curt-tigges/circuits-over-time``, ``backup_research/FINAL_figure_files/
GOOD_self_repair_graph_generator.py`` and ``run_files.py``; the self-repair measurement of Rushing &
Nanda 2024).

On running text, for every head alone and every position t (the token t + 1 is the "correct" one):

- **Direct effect** (``collect_direct_effect``): the head's output at t (its share of the output
  projection, without bias) through the final norm with the clean run's scale, on the correct
  token's unembedding, centred over the vocabulary (TransformerLens' ``center_unembed``, which the
  repository's model loads with).
- **Change in logits** (``get_thresholded_change_in_logits``): the correct token's logit, centred over
  the vocabulary, with the head ablated at every position, minus the same in the clean run. The
  repository's figures resample-ablate (``ABLATION_TYPE = 'sample'``, ``run_files.py``): the head's
  output is that of another text at the same positions (its ``shuffle_owt_tokens_by_batch``, a roll
  of the batch by one); ``ablation="zero"`` zeroes it, and ``ablation="mean"`` sets it to its mean
  over the texts' tokens at every position (the repository's ``mean``, ``:82-97``).
- Both are averaged over the tokens whose |direct effect| exceeds ``threshold`` (the repository's
  figures: 0.0). **Self-repair** is change + direct effect: what the logit does not lose of what the
  head wrote directly (0: the logit drops by the direct effect; equal to the direct effect: the rest
  of the model makes up for all of it). No ablation removes the whole direct effect: what it writes
  in the head's place has a direct effect of its own (on average a resampled output's is the
  mean's), which that sum counts as made up; ``replaced_direct_effect`` measures it.
- The final norm makes up part of it too (Rushing & Nanda's LayerNorm share): the ablated run's
  final residual stream has another scale. ``norm_rescaling`` is the logit change minus the same
  change with the final norm's scale frozen at the clean run's. So ``self_repair`` =
  ``replaced_direct_effect`` + ``norm_rescaling`` + what the components after the head make up.

Departures: the resample source of text i is text i − 1 of all the texts (a roll over the whole
set), where the repository takes the next batch of 30 rolled by one, so the numbers do not depend
on the batch size; the means pool every selected token, where the repository averages per batch
and then over batches (equal at threshold 0 with equal batches). Its ``prepare_dataset`` cuts the
Pile, joined into one token stream, into 128-token rows (103,680 tokens); here
:func:`nnsight_reasoning.tasks.text_sequences` takes the first tokens of each long enough text (so
rows start at a document's start), and offline the toolkit's task prompts. Its mean ablation takes
the head's mean output over the batch of 30 and its positions (``:87``); here over every text and
position, for the same reason as the resample source.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import graph
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import dims
from ..tasks.tokens import TextSequences
from .heads import parse_heads

ABLATIONS = ("resample", "zero", "mean")


@experiment("self_repair", batch_size=64)
def self_repair(
    run: Run,
    sequences: TextSequences,
    *,
    heads: Sequence[str] | str | None = None,
    ablation: str = "resample",
    threshold: float = 0.0,
) -> xr.Dataset:
    """Every head's direct effect on the next token against the change of that token's logit when
    the head alone is ablated (definitions in :mod:`nnsight_reasoning.experiments.self_repair`).

    Parameters
    ----------
    model : a loaded model or a name/directory.
    sequences : ``nr.tasks.text_sequences(n_sequences=120, seq_len=128, tokenizer=model.tokenizer,
        source=...)`` (the repository: Pile text, 128 tokens, batches of 30).
    heads : ``["a3.1", …]`` or "a3.1,a2.0"; default every head.
    ablation : "resample" (the head's output on the previous text; the repository's figures),
        "zero", or "mean" (the head's mean output over every text and position).
    threshold : tokens count where the head's |direct effect| exceeds it (logits; the repository's
        figures: 0.0).

    Returns
    -------
    Dataset over (layer, head), in logits centred over the vocabulary: ``direct_effect`` and
    ``logit_change`` (mean over the selected tokens), ``self_repair`` (their sum, the repository's
    measure), ``replaced_direct_effect`` (the direct effect of what the ablation writes in the
    head's place: ``self_repair`` counts it as made up, so ``self_repair − replaced_direct_effect``
    is what the rest of the model makes up of the direct effect the ablation removes),
    ``norm_rescaling`` (the part of ``logit_change`` due to the final norm's scale alone: the change
    minus the change at the clean run's scale; ``self_repair − replaced_direct_effect −
    norm_rescaling`` is what the components after the head make up), ``n_tokens``;
    per text ``sequence_direct_effect`` and ``sequence_logit_change`` (sequence, layer, head;
    NaN where a text has no selected token); NaN for heads not measured. With ``revisions`` every
    variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.self_repair(model, nr.tasks.text_sequences(60, 64, tokenizer=model.tokenizer))
    >>> (ds.logit_change + ds.direct_effect).to_pandas()      # = ds.self_repair
    """
    if ablation not in ABLATIONS:
        raise UsageError(f"ablation must be one of {', '.join(ABLATIONS)} (got {ablation!r})")
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and threshold >= 0):
        raise UsageError(f"threshold must be a number >= 0 (logits; got {threshold!r})")
    d = dims(run.model)
    n_layers, n_heads = d["n_layers"], d["n_heads"]
    chosen = parse_heads(heads, n_layers, n_heads) if heads is not None else \
        [(li, h) for li in range(n_layers) for h in range(n_heads)]
    ids = torch.tensor([list(s) for s in sequences])
    n = len(ids)
    if n < 2 and ablation == "resample":
        raise UsageError("resample ablation takes each head's output from another text: give at least 2 sequences")
    source = torch.roll(ids, 1, 0)  # text i reads text i - 1's outputs
    de_sum = np.zeros((n, n_layers, n_heads))
    change_sum = np.zeros((n, n_layers, n_heads))
    replaced_sum = np.zeros((n, n_layers, n_heads))
    norm_sum = np.zeros((n, n_layers, n_heads))
    count = np.zeros((n, n_layers, n_heads))
    means = None
    if ablation == "mean":  # every head's output (before the projection) averaged over all the texts' tokens
        total, tokens = run.summed(graph.head_input_sums, ids, "head means")
        means = total / tokens
    passes = run.variant_batches([ids.shape[1]] * n, len(chosen), fixed_rows=2 if ablation == "resample" else 1)
    for job in run.steps(passes, "self-repair"):
        items = torch.tensor(job.items)
        at = [chosen[j] for j in job.variants]
        direct, clean, ablated, replaced, frozen = run.call(graph.self_repair_logits, ids[items],
                                                            source[items] if ablation == "resample" else None, at,
                                                            means=means)
        for k, (li, h) in enumerate(at):
            de = direct[:, li, h].numpy()  # (b, T - 1)
            keep = np.abs(de) > threshold
            change = (ablated[k] - clean).numpy()  # (b, T - 1)
            de_sum[job.items, li, h] = np.where(keep, de, 0.0).sum(-1)
            change_sum[job.items, li, h] = np.where(keep, change, 0.0).sum(-1)
            replaced_sum[job.items, li, h] = np.where(keep, replaced[:, li, h].numpy(), 0.0).sum(-1)
            norm_sum[job.items, li, h] = np.where(keep, change - frozen[k].numpy(), 0.0).sum(-1)
            count[job.items, li, h] = keep.sum(-1)
    measured = np.zeros((n_layers, n_heads), bool)
    for li, h in chosen:
        measured[li, h] = True
    total = count.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        direct_mean = np.where(measured & (total > 0), de_sum.sum(0) / total, np.nan)
        change_mean = np.where(measured & (total > 0), change_sum.sum(0) / total, np.nan)
        replaced_mean = np.where(measured & (total > 0), replaced_sum.sum(0) / total, np.nan)
        norm_mean = np.where(measured & (total > 0), norm_sum.sum(0) / total, np.nan)
        seq_de = np.where(measured & (count > 0), de_sum / count, np.nan)
        seq_change = np.where(measured & (count > 0), change_sum / count, np.nan)
    unit = "logits (centred over the vocabulary)"
    return xr.Dataset(
        {"direct_effect": (("layer", "head"), direct_mean,
                           {"long_name": "head's direct effect on the next token, mean over selected tokens",
                            "units": unit}),
         "logit_change": (("layer", "head"), change_mean,
                          {"long_name": "change of the next token's logit when the head is ablated, mean over "
                                        "selected tokens", "units": unit}),
         "self_repair": (("layer", "head"), change_mean + direct_mean,
                         {"long_name": "logit change + direct effect: the direct effect the logit does not lose",
                          "units": unit}),
         "replaced_direct_effect": (("layer", "head"), replaced_mean,
                                    {"long_name": "direct effect of what the ablation writes in the head's place "
                                                  "(the source text's output, the mean, or zero), mean over selected "
                                                  "tokens: the part of direct_effect the ablation leaves",
                                     "units": unit}),
         "norm_rescaling": (("layer", "head"), norm_mean,
                            {"long_name": "part of logit_change due to the final norm's rescaling: the change minus "
                                          "the change at the clean run's norm scale, mean over selected tokens",
                             "units": unit}),
         "n_tokens": (("layer", "head"), np.where(measured, total, 0).astype(np.int64),
                      {"long_name": "tokens with |direct effect| > threshold"}),
         "sequence_direct_effect": (("sequence", "layer", "head"), seq_de,
                                    {"long_name": "direct effect, mean over the text's selected tokens",
                                     "units": unit}),
         "sequence_logit_change": (("sequence", "layer", "head"), seq_change,
                                   {"long_name": "logit change on ablation, mean over the text's selected tokens",
                                    "units": unit})},
        coords={"layer": ("layer", np.arange(n_layers), {"long_name": "0-based layer"}),
                "head": ("head", np.arange(n_heads), {"long_name": "head index in its layer"}),
                "sequence": ("sequence", np.arange(n), {"long_name": "text index"})},
        attrs={"method": "self_repair", "metric": "centred_logit", "ablation": ablation,
               "threshold": float(threshold), "heads": ",".join(f"a{li}.{h}" for li, h in chosen)},
    )


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """The ``top`` heads by |direct effect| (the last checkpoint of a sweep): direct effect, logit
    change and self-repair."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    head = (f"{ds.attrs.get('task')} · {model_at(last)} · "
            f"{ds.sizes['sequence']} texts · {ds.attrs.get('ablation')} ablation · tokens with |direct effect| > "
            f"{ds.attrs.get('threshold')}")
    table = Table(title="heads by |direct effect| on the next token (logits, centred over the vocabulary)")
    replaced = "replaced_direct_effect" in last  # absent from results written before it existed
    norm = "norm_rescaling" in last  # likewise (2026-12-07)
    # two-word headers on two lines: eight columns fit 80 characters
    cols = ("head", "direct\neffect", "logit\nchange", "self-repair") + (("replaced",) if replaced else ()) + \
        (("final\nnorm",) if norm else ()) + ("tokens",)
    for col in cols:
        table.add_column(col, justify="right")
    flat = abs(last["direct_effect"]).stack(lh=("layer", "head")).dropna("lh")
    for idx in flat.argsort().values[::-1][:top]:
        li, h = flat["lh"].values[idx]
        r = last.sel(layer=li, head=h)
        table.add_row(f"a{li}.{h}", f"{float(r.direct_effect):+.3f}", f"{float(r.logit_change):+.3f}",
                      f"{float(r.self_repair):+.3f}", *([f"{float(r.replaced_direct_effect):+.3f}"] if replaced else []),
                      *([f"{float(r.norm_rescaling):+.3f}"] if norm else []), str(int(r.n_tokens)))
    notes = ["self-repair = logit change + direct effect: 0 = the logit loses the head's whole direct effect; = direct "
             "effect: other components make up for all of it"]
    if replaced:
        notes.append("replaced = the direct effect of what the ablation writes in the head's place, which self-repair "
                     "counts as made up (self-repair − replaced: what the rest of the model makes up)")
    if norm:
        notes.append("final norm = the part of the logit change due to the final norm's rescaling alone (self-repair "
                     "− replaced − final norm: what the components after the head make up)")
    return [head, table, *notes]
