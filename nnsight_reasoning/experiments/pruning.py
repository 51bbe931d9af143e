"""Causal analysis by head pruning (Hou et al. 2023; the repository's ``src/stask/prune.py:100-143``).

Heads are pruned in a fixed order, 10 % … 90 % of all of them, and the task accuracy is
measured at each fraction. The orders are the paper's: the heads of **lowest head entropy
first**, by position or by size rank (``attention``'s ``head_entropy``: the entropy of the
prompt-mean attention from the answer position over the statements, / log of their number),
and **random** orders as the control. If the heads that focus (low entropy) carry the
reasoning, pruning them first costs more accuracy than pruning at random.

A pruned head's output is zero (its slice of the output projection's input; the projection's
bias stays), which is what transformers' ``head_mask`` did (it multiplied the head's attention
probabilities by 0). Accuracy is exact match of the top-1 next token with the answer, as the
repository's evaluator.

Departures from the repository, and why:

- it masks ``int(p·N) + 1`` heads at p % (a ``<=`` loop, one head too many); here round(f·N);
- its random baseline draws fresh heads at each fraction (``prune.py:120-122, 135``: not nested);
  here ``n_random`` random orders, each pruned in order, seeds ``seed`` … (several show the spread);
- its entropy ties are broken at random; here by (layer, head) order, so a run is reproducible;
- entropy and accuracy come from the same prompts, as there (its 10,000 test lists).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks.base import joined_answers
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts, scored_text_coords, special_tokens_of
from . import attention as _attention

ORDERINGS = ("entropy_position", "entropy_rank", "random")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@experiment("head_pruning", batch_size=256)
def prune(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    orderings: Sequence[str] = ORDERINGS,
    n_random: int = 3,
    seed: int = 0,
) -> xr.Dataset:
    """Task accuracy with a growing fraction of the heads pruned, lowest entropy first or at random.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model`, or a name/directory (eager attention: the
        entropy orders read the attention probabilities).
    prompts : prompts with statements, e.g. ``nr.tasks.kth_smallest(...)``; the rank order
        needs statements that are numbers.
    fractions : fractions of all layers × heads to prune, each in (0, 1].
    orderings : any of "entropy_position", "entropy_rank" (lowest entropy first) and "random".
    n_random : random orders drawn (seeds ``seed``, ``seed`` + 1, …).
    seed : first random order's seed; same seed -> same orders.

    Returns
    -------
    xarray.Dataset with ``accuracy`` and ``p_answer`` (ordering, fraction): top-1 accuracy and
    mean P(answer) with the ordering's first ``n_pruned`` heads pruned; ``correct`` (ordering,
    fraction, prompt) 0/1; ``pruned`` (ordering, fraction, layer, head) 1 where a head is
    pruned; ``n_pruned`` (fraction) heads; ``accuracy_unpruned``, ``p_answer_unpruned`` (); and
    ``head_entropy`` (view, layer, head), the entropies the orders follow. Coordinates along
    ``ordering``: ``kind`` (entropy_position, entropy_rank, random) and ``draw`` (the random
    order's seed; -1 for the entropy orders).

    Examples
    --------
    >>> ds = nr.prune(model, nr.tasks.kth_smallest(256))
    >>> ds.accuracy.to_pandas()
    """
    fracs = [float(f) for f in fractions]
    if not fracs or any(not 0 < f <= 1 for f in fracs):
        raise UsageError(f"fractions must be in (0, 1] (got {list(fractions)})")
    bad = [o for o in orderings if o not in ORDERINGS]
    if bad or not orderings:
        raise UsageError(f"orderings must be some of {', '.join(ORDERINGS)} (got {list(orderings)})")
    if "random" in orderings and n_random < 1:
        raise UsageError(f"n_random must be >= 1 with the random ordering (got {n_random})")
    plist = list(prompts)
    if not plist:
        raise UsageError("no prompts given")
    if not isinstance(plist[0], ReasoningPrompt):
        raise UsageError("head pruning needs prompts with statements, e.g. nr.tasks.kth_smallest(...)")
    answers_of: dict[str, set[str]] = {}
    for p in plist:
        answers_of.setdefault(p.scored_text, set()).add(p.answer)
    if any(len(a) > 1 for a in answers_of.values()):  # kth_smallest(k=[...]) in the repository style
        raise UsageError("head pruning scores each prompt's answer, and these prompts repeat a text with different "
                         "answers (several k): give one k")
    model = run.model
    # accuracy after the text the answer is scored after (the repository's evaluator's, for its ProofWriter form)
    ids, answer_ids, _ = backend.scored_prompts(model, [p.scored_text for p in plist], [p.answer for p in plist],
                                                joined=joined_answers(plist),
                                                special_tokens=special_tokens_of(plist))
    answers = np.array(answer_ids)
    att = _attention.measure(run, prompts if isinstance(prompts, ReasoningPrompts) else plist, patterns="none",
                             label="head entropy")
    entropy = _entropies(att, orderings)
    n_layers, n_heads = att.sizes["layer"], att.sizes["head"]
    names, kinds, draws, orders = [], [], [], []
    for o in orderings:
        if o == "random":
            for r in range(n_random):
                names.append(f"random{seed + r}")
                kinds.append(o)
                draws.append(seed + r)
                orders.append(np.random.default_rng(seed + r).permutation(n_layers * n_heads))
        else:
            names.append(o)
            kinds.append(o)
            draws.append(-1)
            # lowest entropy first; ties in (layer, head) order
            orders.append(np.argsort(entropy[o.split("_")[1]].ravel(), kind="stable"))
    n_pruned = np.array([int(round(f * n_layers * n_heads)) for f in fracs])
    pruned = np.zeros((len(names), len(fracs), n_layers * n_heads), np.int8)
    for i, order in enumerate(orders):
        for j, k in enumerate(n_pruned):
            pruned[i, j, order[:k]] = 1
    pruned = pruned.reshape(len(names), len(fracs), n_layers, n_heads)
    masks = np.concatenate([np.ones((1, n_layers, n_heads)), 1 - pruned.reshape(-1, n_layers, n_heads)])
    correct = np.zeros((len(masks), len(plist)), np.int8)
    p_answer = np.zeros((len(masks), len(plist)))
    for job in run.steps(run.variant_batches([len(x) for x in ids], len(masks)), "head pruning"):
        s = run.call(backend.head_masked_scores, torch.tensor([ids[i] for i in job.items]),
                     torch.from_numpy(answers[job.items, None]), torch.from_numpy(masks[job.variants]).float())
        shape = (len(job.variants), len(job.items))
        grid = np.ix_(job.variants, job.items)
        correct[grid] = (s.top.numpy().reshape(shape) == answers[job.items][None]).astype(np.int8)
        p_answer[grid] = np.exp(s.log_probs[:, 0].double().numpy()).reshape(shape)
    shape = (len(names), len(fracs), len(plist))
    corr, prob = correct[1:].reshape(shape), p_answer[1:].reshape(shape)
    return xr.Dataset(
        {"accuracy": (("ordering", "fraction"), corr.mean(-1), {"long_name": "accuracy (top-1) with heads pruned",
                                                                 "units": "1"}),
         "p_answer": (("ordering", "fraction"), prob.mean(-1), {"long_name": "mean P(answer) with heads pruned",
                                                                "units": "1"}),
         "correct": (("ordering", "fraction", "prompt"), corr, {"long_name": "answer is the top-1 token"}),
         "pruned": (("ordering", "fraction", "layer", "head"), pruned, {"long_name": "head pruned (1)"}),
         "n_pruned": ("fraction", n_pruned, {"long_name": "heads pruned"}),
         "accuracy_unpruned": ((), correct[0].mean(), {"long_name": "accuracy (top-1), no head pruned", "units": "1"}),
         "p_answer_unpruned": ((), p_answer[0].mean(), {"long_name": "mean P(answer), no head pruned", "units": "1"}),
         "head_entropy": att["head_entropy"] if "head_entropy" in att else
         (("view", "layer", "head"), np.full((2, n_layers, n_heads), np.nan),
          {"long_name": "entropy of the prompt-mean attention over the statements / log(statements) (Hou et al.; "
                        "NaN: prompts differ in statements)", "units": "1"})},
        coords={"ordering": ("ordering", np.array(names, dtype=object),
                             {"long_name": "head order: entropy_position, entropy_rank (lowest entropy first) or "
                                           "randomN (random order, seed N)"}),
                "kind": ("ordering", np.array(kinds, dtype=object),
                         {"long_name": "the ordering's kind: entropy_position, entropy_rank or random"}),
                "draw": ("ordering", np.array(draws),
                         {"long_name": "the random order's seed (−1: an entropy order)"}),
                "fraction": ("fraction", fracs, {"long_name": "fraction of all heads pruned (n_pruned = "
                                                              "round(fraction · heads))", "units": "1"}),
                "prompt": ("prompt", np.arange(len(plist)), {"long_name": "prompt index"}),
                "layer": att["layer"].values, "head": att["head"].values,
                "view": ("view", np.array(_attention.VIEWS, dtype=object), {"long_name": _attention.VIEW_NAME}),
                "text": ("prompt", np.array([p.text for p in plist], dtype=object)),
                **scored_text_coords({"scored_text": (plist, "prompt as its answer is scored")}),
                "answer": ("prompt", np.array([p.answer for p in plist], dtype=object))},
        attrs={"method": "head_pruning", "metric": "accuracy", "seed": seed, "n_random": n_random,
               "pruned_output": "zero (head_mask)"},
    )


def _entropies(att: xr.Dataset, orderings: Sequence[str]) -> dict[str, np.ndarray]:
    """(layer, head) head entropy per view that an ordering needs; refuses one that is not defined."""
    out = {}
    for o in orderings:
        if o == "random":
            continue
        view = o.split("_")[1]
        if "head_entropy" not in att:
            raise UsageError(f"the {o} order needs prompts with the same number of statements (e.g. kth_smallest)")
        vals = att["head_entropy"].sel(view=view).values
        if np.isnan(vals).any():
            raise UsageError(f"the {o} order needs statements that are numbers (e.g. kth_smallest); use "
                             f"entropy_position or random")
        out[view] = vals
    return out


def summarize(ds: xr.Dataset) -> list[Any]:
    """Accuracy per ordering and pruned fraction (the last checkpoint of a sweep); random draws
    as their mean and range."""
    from rich.markup import escape
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    n_heads = last.sizes["layer"] * last.sizes["head"]
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · "
            f"{last.sizes['prompt']} prompts · {n_heads} heads · accuracy unpruned "
            f"{float(last.accuracy_unpruned):.3f}")
    table = Table(title="accuracy (top-1) with the first heads of each order pruned")
    table.add_column("pruned", justify="right")
    columns = []
    for kind in dict.fromkeys(last["kind"].values):
        acc = last.accuracy.where(last["kind"] == kind, drop=True)
        if kind == "random":
            table.add_column(escape(f"random (mean [range] of {acc.sizes['ordering']})"), justify="right")
            columns.append([f"{m:.3f} [{lo:.2f}-{hi:.2f}]" for m, lo, hi in
                            zip(acc.mean("ordering").values, acc.min("ordering").values, acc.max("ordering").values)])
        else:
            table.add_column(f"lowest {str(kind).replace('entropy_', 'H ')} first", justify="right")
            columns.append([f"{v:.3f}" for v in acc.isel(ordering=0).values])
    for j, (f, k) in enumerate(zip(last["fraction"].values, last["n_pruned"].values)):
        table.add_row(f"{f:.0%} ({int(k)})", *[c[j] for c in columns])
    return [head, table]
