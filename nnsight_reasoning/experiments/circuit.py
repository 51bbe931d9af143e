"""Edge attribution (EAP, EAP-IG), circuit extraction and faithfulness (Tigges et al. 2024).

The component graph: upstream nodes are the input (residual stream entering layer 0), every
attention head and every MLP; downstream nodes are every head, every MLP and the logits. An
edge u → v is u's output as it reaches v's input through the residual stream (only where u is
computed before v reads: in parallel-residual models such as Pythia a layer's heads feed only
later layers). Names: ``input``, ``a3.1`` (layer 3, head 1), ``m3`` (MLP 3), ``logits``.

- **Score** of an edge (Syed, Rager & Conmy 2023, "Attribution patching outperforms automated
  circuit discovery"): (a_u(corrupt) − a_u(clean)) · ∂M/∂(input of v), summed over positions
  and averaged over prompts, with M = logit(r1) − logit(r2) on the clean prompt (r1 its answer,
  r2 the corrupted prompt's). Pairs with answer sets (``PromptPair.alternatives`` /
  ``distractors``: greater-than, sentiment) use Tigges et al.'s metrics on the sets: ``metric=
  "logit_diff"`` is the mean logit of the correct answers minus that of the wrong ones
  (``compute_logit_diff``, modes "groups"/"pairs"), ``"prob_diff"`` the summed probability of
  the correct answers minus that of the wrong ones (``compute_probability_diff``, mode
  "group_sum"; greater-than's default, as ``get_circuits_over_time.py``). The score estimates
  how M changes if that one edge carried its corrupted value: strongly negative = the edge
  carries the answer.
- **EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have faith in faithfulness"), ``ig_steps`` =
  m > 1: the gradient is averaged over m runs with input embeddings interpolated from clean to
  corrupted at α = (k + ½)/m (``ig_variant="inputs"``), or over (1 + 2L)·m runs in which one node
  group (the input, a layer's attention, a layer's MLP) at a time outputs its interpolated value
  (``"activations"``, EAP-IG's ``get_scores_ig_activations``).
- **Circuit** of size n (``selection``): ``"topn"``, the n edges of largest |score|; or
  ``"greedy"``, EAP-IG's ``Graph.apply_greedy`` as Tigges et al.'s ``get_circuits_over_time.py``
  calls it: from the logits up, the edge of largest |score| among those entering a node already
  in the circuit, n times (a new upstream node adds its incoming edges to the candidates). Both
  are then pruned to edges on a path from the input to the logits (EAP-IG's ``prune``; the
  number kept is reported).
- **Smallest faithful circuit** (``min_fraction``, the repository's adaptive search): the
  smallest greedy/top-n size whose ``fraction`` (M_circuit / M_clean, the repository's
  faithfulness) reaches the threshold (0.8 there), searched on a grid and then at every size
  just below the first grid size that reaches it.
- **Faithfulness**: the clean prompts run with every edge outside the circuit carrying its
  corrupted value (real patching, :func:`backend.graph.edge_patched_logits`), as
  (M_circuit − M_corrupt) / (M_clean − M_corrupt) of the prompt means: 1 = the circuit
  alone recovers the model's logit difference, 0 = no better than the corrupted run.
  ``fraction`` = M_circuit / M_clean is reported too.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import graph
from ..errors import UsageError
from ..runner import Run, experiment
from ..tasks import PromptPair, PromptPairs
from .patch import Tokens, tokenize_pairs

DEFAULT_SIZES = (10, 20, 50, 100, 200)
SELECTIONS = {"topn": "top-n edges by |score|, pruned to input-to-logits paths",
              "greedy": "greedy from the logits up by |score| (EAP-IG apply_greedy), pruned to input-to-logits paths"}
DEFAULT_SEARCH = (25, 1600, 25)  # get_circuits_over_time.py's --start, --end, --step
METRICS = ("logit_diff", "prob_diff")
ABLATIONS = ("patching", "zero", "mean", "mean_positional")


@experiment("eap", batch_size=64)
def circuit(
    run: Run,
    pairs: PromptPairs | Sequence[PromptPair],
    *,
    ig_steps: int = 30,
    sizes: Sequence[int] = DEFAULT_SIZES,
    selection: str = "topn",
    min_fraction: float | None = None,
    search: tuple[int, int, int] = DEFAULT_SEARCH,
    metric: str | None = None,
    ig_points: str = "midpoint",
    ablation: str = "patching",
    ablation_data: Sequence[str] | PromptPairs | None = None,
    qkv: bool = False,
    ig_variant: str = "inputs",
    thresholds: Sequence[float] = (),
) -> xr.Dataset:
    """Edge scores of the whole component graph (EAP / EAP-IG) and the faithfulness of its top-n
    circuits (definitions in :mod:`nnsight_reasoning.experiments.circuit`).

    Parameters
    ----------
    model : a loaded model or a name/directory (see :func:`nnsight_reasoning.load_model`).
    pairs : clean (``base``) / corrupted (``source``) prompt pairs with single-token answers,
        e.g. ``nr.tasks.arithmetic(...)`` or ``nr.tasks.ioi(...)``.
    ig_steps : 1 = EAP (gradient at the clean run); m > 1 = EAP-IG with m steps (default 30, as
        Tigges et al. and hannamw/EAP-IG; on the embedded model 5 midpoints give the same r
        against exact patching at a sixth of the cost).
    ig_points : where EAP-IG takes its m gradients on the path of input embeddings from the
        clean (α = 0) to the corrupted prompt (α = 1): ``"midpoint"`` (default), α = (k + ½)/m;
        ``"eap_ig"``, α = 1 − k/m for k = 0 … m − 1, hannamw/EAP-IG's ``get_scores_eap_ig``;
        ``"clean_corrupted"``, the clean and the corrupted input only (its
        ``get_scores_clean_corrupted``; ``ig_steps`` becomes 2).
    ig_variant : ``"inputs"`` (default: the input embeddings are interpolated) or
        ``"activations"`` (hannamw/EAP-IG's ``get_scores_ig_activations``: the input, each layer's
        attention output and each MLP output in turn, on the clean prompt; (1 + 2L)·m gradient
        runs per pair).
    ablation : what a corrupted edge carries (hannamw/EAP-IG's ``intervention``):
        ``"patching"`` (default), the node's output on the corrupted prompt; ``"zero"``; ``"mean"``,
        its mean over every token of ``ablation_data``; ``"mean_positional"``, its mean per
        position (``ablation_data`` and the pairs of one token length). Zero and mean ablation
        score with EAP (``ig_steps=1``), as ``get_scores_eap``; the corrupted baseline
        (``corrupt_logit_diff``) is then the run with every edge ablated.
    ablation_data : the prompts the means are taken over (strings, or pairs: their clean
        prompts); default the pairs' clean prompts.
    qkv : EAP-IG's graph: three edges from each upstream node into each head, into its query,
        key and value inputs (downstream nodes ``a3.1<q>``, ``a3.1<k>``, ``a3.1<v>``); scores,
        circuits and their faithfulness are over these edges, and the three scores of a
        (node, head) pair sum to its score in the default graph. Attention runs three times per
        head; engine v1 measures faithfulness.
    sizes : circuit sizes (edges before pruning) whose faithfulness is measured by real
        patching; empty for scores only.
    selection : ``"topn"`` (default) or ``"greedy"`` (EAP-IG's ``apply_greedy``, what Tigges
        et al. use); both pruned to input-to-logits paths.
    min_fraction : if given (Tigges et al.: 0.8), also search the smallest circuit whose
        ``fraction`` (circuit / clean logit difference) reaches it: every size of the grid
        ``range(*search)`` (capped at the number of edges, which is added as the last point),
        then every size between the first grid size that reaches it and the grid size before.
        ``min_size`` is the answer (-1 if even the whole graph stays below it).
    thresholds : |score| thresholds (EAP-IG's ``apply_threshold(t, absolute=True)``): each one's
        circuit is every edge with |score| ≥ t, pruned; its faithfulness is measured as the
        sizes' (``threshold_*`` variables along ``threshold``).
    search : (start, stop, step) of that grid in edges; default (25, 1600, 25), the
        repository's ``--start --end --step``.
    metric : ``"logit_diff"`` or ``"prob_diff"`` (see the module doc); default
        ``"prob_diff"`` for greater-than pairs, as the repository, else ``"logit_diff"``. The
        ``*_logit_diff`` variables hold this metric (``attrs["metric"]``).

    Notes
    -----
    Batching: a scoring pass of p pairs takes (2 + ig_steps)·p rows (2·p for EAP), and
    attention runs once per head on them; a faithfulness pass of p pairs and c circuits
    takes (1 + c)·p rows. With ``revisions`` each checkpoint gets its own circuit.

    Returns
    -------
    Dataset with ``score`` (upstream, downstream) in logits, NaN where no edge exists;
    ``clean_logit_diff``, ``corrupt_logit_diff`` (prompt); ``circuit_logit_diff`` (size,
    prompt); ``faithfulness``, ``fraction``, ``n_edges``, ``n_nodes`` (size); ``in_circuit``
    (size, upstream, downstream) 0/1; with ``min_fraction`` also ``min_size`` (0-d, edges
    before pruning; -1 if not reached), ``min_circuit`` (upstream, downstream) 0/1 (that circuit,
    pruned), ``min_n_edges`` and ``min_faithfulness`` (0-d) and ``search_fraction``
    (search_size: every size from 1 to the grid's last, NaN where the search did not measure
    it). Node coordinates: ``upstream_layer`` (-1 = input),
    ``upstream_kind`` (input/head/mlp), ``upstream_head`` (-1 if not a head), and the same
    for ``downstream`` (kind logits at layer n_layers). ``attrs["method"]`` is "eap" or
    "eap_ig".

    Examples
    --------
    >>> ds = nr.circuit(model, nr.tasks.arithmetic(n_prompts=64), ig_steps=5, sizes=(20, 50, 100))
    >>> ds.faithfulness
    """
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise UsageError(f"ig_steps must be an integer >= 1 (got {ig_steps})")
    if ig_points not in graph.IG_POINTS:
        raise UsageError(f"ig_points must be one of {', '.join(graph.IG_POINTS)} (got {ig_points!r})")
    if ig_variant not in graph.IG_VARIANTS:
        raise UsageError(f"ig_variant must be one of {', '.join(graph.IG_VARIANTS)} (got {ig_variant!r})")
    if ig_variant == "activations" and (ig_steps < 2 or ig_points == "clean_corrupted" or ablation != "patching"):
        raise UsageError("ig_variant='activations' integrates each node's output from the clean to the corrupted run: "
                         "it needs ig_steps >= 2, ig_points midpoint or eap_ig, and ablation='patching'")
    if ig_points == "clean_corrupted":
        ig_steps = 2
    if ablation not in ABLATIONS:
        raise UsageError(f"ablation must be one of {', '.join(ABLATIONS)} (got {ablation!r})")
    if ablation != "patching" and ig_steps > 1:
        raise UsageError(f"{ablation} ablation scores edges with EAP, as hannamw/EAP-IG's get_scores_eap: "
                         f"pass ig_steps=1 (--ig-steps 1)")
    sizes = sorted({int(s) for s in sizes})
    if any(s < 1 for s in sizes):
        raise UsageError(f"circuit sizes must be >= 1 edges (got {sizes})")
    thresholds = sorted({float(t) for t in thresholds})
    if any(not np.isfinite(t) or t < 0 for t in thresholds):
        raise UsageError(f"thresholds must be finite |score| values >= 0 (got {thresholds})")
    if thresholds and selection != "topn":
        raise UsageError("a threshold's circuit is every edge with |score| >= t (apply_threshold): use it with "
                         "selection='topn'")
    if selection not in SELECTIONS:
        raise UsageError(f"selection must be one of {', '.join(SELECTIONS)} (got {selection!r})")
    if min_fraction is not None:
        if not (np.isfinite(min_fraction) and min_fraction > 0):  # above 1 is allowed: circuits can exceed it
            raise UsageError(f"min_fraction is the share of the logit difference to keep, > 0 (got {min_fraction!r})")
        start, stop, step = (int(v) for v in search)
        if start < 1 or step < 1 or stop <= start:
            raise UsageError(f"search must be (start, stop, step) with 1 <= start < stop and step >= 1 (got {search})")
    groups = 1 + 2 * Shape.of(run.model).n_layers if ig_variant == "activations" else 1
    rows_per_pair = 2 + (ig_steps * groups if ig_steps > 1 else 0)
    if run.batch_size < rows_per_pair:
        raise UsageError(f"batch_size must hold one pair's rows: >= {rows_per_pair}")
    pair_list, tok = _prepare(run, pairs)
    metric = default_metric(pairs) if metric is None else metric
    answers = _answers(run, pair_list, tok, metric)
    shape = Shape.of(run.model, qkv)
    replace = _ablation_values(run, ablation, ablation_data, pair_list, tok, shape)
    score, clean, corrupt = _edge_scores(run, tok, shape.valid, ig_steps, answers, ig_points, replace, qkv, ig_variant)
    if replace is not None:  # the corrupted baseline: every edge ablated
        corrupt = _edge_patched(run, tok, shape.valid[None], "ablated baseline", answers, replace)[0][0]
    measured: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # size -> (circuit, its (prompt) logit difference)

    def measure(new_sizes: Sequence[int], label: str) -> None:
        new_sizes = [s for s in new_sizes if s not in measured]
        if not new_sizes:
            return
        circuits = np.stack([extract(score, s, selection) for s in new_sizes])
        diff, _ = _edge_patched(run, tok, shape.valid & ~circuits, label, answers, replace)
        measured.update({s: (c, d) for s, c, d in zip(new_sizes, circuits, diff)})

    # a threshold's circuit is the top-n circuit with n = the edges at or above it
    threshold_sizes = [int((np.nan_to_num(np.abs(score), nan=-1.0) >= t).sum()) for t in thresholds]
    measure(sorted(set(sizes) | {n for n in threshold_sizes if n > 0}), "faithfulness")
    found = None
    if min_fraction is not None:
        found = _search(measure, measured, clean.mean(), int(shape.valid.sum()), float(min_fraction),
                        (start, stop, step))
    circuits = np.stack([measured[s][0] for s in sizes]) if sizes else np.zeros((0,) + shape.valid.shape, bool)
    circuit_diff = np.stack([measured[s][1] for s in sizes]) if sizes else np.zeros((0, len(pair_list)))
    attrs = {**shape.attrs(), "method": "eap_ig" if ig_steps > 1 else "eap", "metric": metric,
             "answer_sets": int(answers.sets), "ig_steps": ig_steps, "ig_points": ig_points, "ig_variant": ig_variant,
             "ablation": ablation,
             "selection": selection, "circuit_selection": SELECTIONS[selection]}
    ds = _dataset(pair_list, score, clean, corrupt, circuits, circuit_diff, sizes, shape, attrs)
    if found is not None:
        ds = _with_search(ds, found, measured, clean.mean(), corrupt.mean(), float(min_fraction), (start, stop, step))
    if thresholds:
        ds = _with_thresholds(ds, thresholds, threshold_sizes, measured, clean.mean(), corrupt.mean(), len(pair_list))
    return ds


def _with_thresholds(ds: xr.Dataset, thresholds: list[float], sizes: list[int], measured: dict, clean_mean: float,
                     corrupt_mean: float, n_prompts: int) -> xr.Dataset:
    """``ds`` with each threshold's circuit: its size before and after pruning, its metric and
    faithfulness (NaN and 0 edges where no edge reaches the threshold)."""
    diff = np.stack([measured[n][1] if n > 0 else np.full(n_prompts, np.nan) for n in sizes])
    kept = [int(measured[n][0].sum()) if n > 0 else 0 for n in sizes]
    t = ("threshold",)
    ds = ds.assign_coords(threshold=("threshold", np.array(thresholds),
                                     {"long_name": "|score| threshold: the circuit is every edge at or above it",
                                      "units": ds["score"].attrs.get("units", "")}))
    ds["threshold_size"] = (t, np.array(sizes), {"long_name": "edges with |score| at or above the threshold"})
    ds["threshold_n_edges"] = (t, np.array(kept), {"long_name": "edges kept after pruning"})
    ds["threshold_logit_diff"] = (t + ("prompt",), diff, {"long_name": "metric, threshold circuit only",
                                                          "units": ds["clean_logit_diff"].attrs.get("units", "")})
    with np.errstate(invalid="ignore", divide="ignore"):
        ds["threshold_faithfulness"] = (t, (diff.mean(1) - corrupt_mean) / (clean_mean - corrupt_mean),
                                        {"long_name": "(circuit − corrupted) / (clean − corrupted)", "units": "1"})
        ds["threshold_fraction"] = (t, diff.mean(1) / clean_mean, {"long_name": "circuit / clean", "units": "1"})
    return ds


def _with_search(ds: xr.Dataset, found: tuple[int, list[int]], measured: dict, clean_mean: float,
                 corrupt_mean: float, threshold: float, search: tuple[int, int, int]) -> xr.Dataset:
    """``ds`` with the search's variables. Their dims do not depend on what the search found
    (``search_size`` runs from 1 to the grid's last size), so a checkpoint sweep stacks them."""
    size, tried = found
    top = max(tried)
    frac = np.full(top, np.nan)
    for s_ in tried:
        frac[s_ - 1] = measured[s_][1].mean() / clean_mean
    circuit = measured[size][0] if size > 0 else np.zeros(ds["score"].shape, bool)
    faith = (measured[size][1].mean() - corrupt_mean) / (clean_mean - corrupt_mean) if size > 0 else np.nan
    ds = ds.assign_coords(search_size=("search_size", np.arange(1, top + 1),
                                       {"long_name": "circuit size the search may measure: edges before pruning"}))
    ds["search_fraction"] = ("search_size", frac, {"long_name": "circuit / clean logit difference (NaN: not "
                                                                "measured by the search)", "units": "1"})
    ds["min_size"] = ((), size, {"long_name": f"smallest circuit (edges before pruning) whose fraction reaches "
                                              f"{threshold} (-1: none)"})
    ds["min_n_edges"] = ((), int(circuit.sum()), {"long_name": "edges of that circuit after pruning"})
    ds["min_faithfulness"] = ((), faith, {"long_name": "(circuit − corrupted) / (clean − corrupted), that circuit",
                                          "units": "1"})
    ds["min_circuit"] = (("upstream", "downstream"), circuit.astype(np.int8), {"long_name": "edge in that circuit"})
    ds.attrs.update(min_fraction=threshold, search=list(search))
    return ds


def _search(measure, measured: dict, clean_mean: float, n_valid: int, threshold: float,
            search: tuple[int, int, int]) -> tuple[int, list[int]]:
    """The repository's adaptive search for the smallest circuit whose fraction (mean circuit
    logit difference / mean clean one) reaches ``threshold``: the grid ``range(start, stop,
    step)`` capped at ``n_valid`` edges (``n_valid`` itself appended when the grid stops short
    of it and ``stop`` exceeds it), then every size between the first grid size that reaches
    it and the grid point before (all measured in one pass each; the repository's binary search
    with a local linear search approximates the same answer sequentially). Returns the size
    (-1 if none reaches it) and the sizes measured."""
    start, stop, step = search
    grid = [s for s in range(start, stop, step) if s <= n_valid]
    if stop > n_valid and (not grid or grid[-1] < n_valid):
        grid.append(n_valid)

    def frac(s):
        return float(measured[s][1].mean() / clean_mean)

    measure(grid, "faithfulness search")
    hit = next((k for k, s_ in enumerate(grid) if frac(s_) >= threshold), None)
    if hit is None:
        return -1, grid
    below = list(range((grid[hit - 1] + 1) if hit else 1, grid[hit]))
    measure(below, "faithfulness search (fine)")
    return next(s_ for s_ in below + [grid[hit]] if frac(s_) >= threshold), grid + below


@experiment("edge_patching", batch_size=256)
def edge_patching(run: Run, pairs: PromptPairs | Sequence[PromptPair], *, qkv: bool = False) -> xr.Dataset:
    """Exact edge scores, the quantity EAP estimates: for every edge, the clean run with that
    edge alone carrying its corrupted value, as (M_cut − M_clean), averaged over prompts.

    One extra row per edge and pair (a pass of p pairs and c edges takes (1 + c)·p rows), so
    it costs about n_edges forward passes' worth of rows; use it to validate EAP / EAP-IG on
    small models. Same ``score`` layout as :func:`circuit` (NaN where no edge exists; ``qkv``:
    over the q/k/v graph), no circuits (``size`` is empty); ``attrs["method"] = "edge_patching"``.

    Examples
    --------
    >>> exact = nr.edge_patching(model, nr.tasks.arithmetic(n_prompts=16))
    """
    if run.batch_size < 2:
        raise UsageError(f"batch_size must hold one pair's corrupted row and one patched row: >= 2 "
                         f"(got {run.batch_size})")
    pair_list, tok = _prepare(run, pairs)
    metric = default_metric(pairs)
    answers = _answers(run, pair_list, tok, metric)
    shape = Shape.of(run.model, qkv)
    edges = np.argwhere(shape.valid)
    cuts = np.zeros((len(edges) + 1,) + shape.valid.shape, bool)  # circuit 0 cuts nothing: the clean run
    cuts[np.arange(1, len(edges) + 1), edges[:, 0], edges[:, 1]] = True
    diff, corrupt = _edge_patched(run, tok, cuts, "edge patching", answers)
    score = np.full(shape.valid.shape, np.nan)
    score[edges[:, 0], edges[:, 1]] = (diff[1:] - diff[0]).mean(1)
    attrs = {**shape.attrs(), "method": "edge_patching", "metric": metric, "answer_sets": int(answers.sets)}
    empty = np.zeros((0,) + shape.valid.shape, bool)
    return _dataset(pair_list, score, diff[0], corrupt, empty, np.zeros((0, len(pair_list))), [], shape, attrs)


@dataclass(frozen=True)
class Shape:
    """The component graph of a model: layers, heads per layer, parallel residual, and the
    (upstream, downstream) edges that exist (``valid``)."""

    n_layers: int
    n_heads: int
    parallel: bool
    valid: np.ndarray
    qkv: bool = False  # heads' q, k and v inputs are downstream nodes of their own
    d_model: int = 0  # the residual stream's width (0: unknown)

    @classmethod
    def of(cls, model: Any, qkv: bool = False) -> "Shape":
        from ..sites import dims

        n_layers, n_heads, parallel = graph.graph_shape(model)
        return cls(n_layers, n_heads, parallel, graph.valid_edges(n_layers, n_heads, parallel, qkv).numpy(), qkv,
                   dims(model)["d_model"])

    def attrs(self) -> dict[str, int]:
        out = {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_residual": int(self.parallel),
               "qkv": int(self.qkv)}
        return {**out, "d_model": self.d_model} if self.d_model else out


def _prepare(run: Run, pairs) -> tuple[list[PromptPair], Tokens]:
    """The pairs as a list and their token ids; refuses bad pairs before any pass."""
    pair_list = list(pairs)
    if not pair_list:
        raise UsageError("no prompt pairs given")
    return pair_list, tokenize_pairs(run.model, pair_list)


@dataclass(frozen=True)
class Answers:
    """Each pair's metric on its clean prompt's answers: token ids (pair, K), weights (pair, K)
    (padding: weight 0), over probabilities or logits."""

    ids: np.ndarray
    weights: np.ndarray
    probs: bool
    sets: bool

    def rows(self, pairs, copies: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """(copies·p, K) ids and weights: every row of a pass over ``pairs`` reads its pair's."""
        return (torch.tensor(np.tile(self.ids[pairs], (copies, 1))),
                torch.tensor(np.tile(self.weights[pairs], (copies, 1))))

    def value(self, out: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(rows,) the metric from :func:`graph.edge_patched_logits`'s answer logits (and logsumexp)."""
        k = self.ids.shape[1]
        vals = np.exp(out[:, :k] - out[:, k:k + 1]) if self.probs else out[:, :k]
        return (vals * weights).sum(1)


def default_metric(pairs: Any) -> str:
    """The repository's metric for these pairs: greater-than's probability difference, else the
    logit difference (``get_circuits_over_time.py``, ``get_data_and_metrics``)."""
    return "prob_diff" if getattr(pairs, "task", None) == "greater_than" else "logit_diff"


def _answers(run: Run, pairs: list[PromptPair], tok: Tokens, metric: str) -> Answers:
    """The metric's tokens and weights per pair: (r1, r2) with (+1, −1) for single answers; for
    answer sets, the base answer and its alternatives against the distractors (or the source
    answer), weighted 1/|set| (logit_diff: mean logits) or 1 (prob_diff: summed probabilities)."""
    from ..backend import answer_token

    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)} for circuits (got {metric!r})")
    sets = any(p.alternatives or p.distractors for p in pairs)
    if not sets:
        ids = np.array(tok.answers, dtype=np.int64)
        return Answers(ids, np.tile([1.0, -1.0], (len(pairs), 1)), metric == "prob_diff", False)
    rows = []
    for k, p in enumerate(pairs):
        good, bad = (p.base_answer, *p.alternatives), (p.distractors or (p.source_answer,))
        ids = [answer_token(run.model, a) for a in (*good, *bad)]
        if None in ids:
            word = (*good, *bad)[ids.index(None)]
            raise UsageError(f"answer {word!r} of pair {k} is not a single token for this model; generate pairs "
                             f"with tokenizer=model.tokenizer")
        if metric == "prob_diff":
            w = [1.0] * len(good) + [-1.0] * len(bad)
        else:
            w = [1.0 / len(good)] * len(good) + [-1.0 / len(bad)] * len(bad)
        rows.append((ids, w))
    width = max(len(i) for i, _ in rows)
    ids = np.array([i + [i[0]] * (width - len(i)) for i, _ in rows], dtype=np.int64)
    weights = np.array([w + [0.0] * (width - len(w)) for _, w in rows])
    return Answers(ids, weights, metric == "prob_diff", True)


def _ablation_values(run: Run, ablation: str, data, pairs: list[PromptPair], tok: Tokens,
                     shape: "Shape") -> torch.Tensor | None:
    """(T or 1, n_up, d) what every upstream node carries when ablated (None for patching):
    zeros, or its mean output over every token (or per position) of the ablation prompts."""
    if ablation == "patching":
        if data is not None:
            raise UsageError("ablation_data is for zero and mean ablation; pass ablation='mean' too")
        return None
    from ..backend import tokenize
    from ..sites import dims

    d_model, n_up = dims(run.model)["d_model"], shape.valid.shape[0]
    if ablation == "zero":
        return torch.zeros(1, n_up, d_model, dtype=torch.float64)
    if data is None:
        ids = tok.base
    else:
        texts = [t.base if isinstance(t, PromptPair) else str(t) for t in data]  # pairs: their clean prompts
        if not texts:
            raise UsageError("ablation_data is empty")
        ids = tokenize(run.model, texts)
    lengths = sorted({len(i) for i in ids})
    if ablation == "mean_positional" and (len(lengths) > 1 or {len(b) for b in tok.base} != set(lengths)):
        raise UsageError(f"mean_positional ablation needs the pairs and ablation_data of one token length (got "
                         f"{sorted({len(b) for b in tok.base} | set(lengths))}); use ablation='mean'")
    total, tokens = None, 0
    for job in run.steps(run.batches([len(i) for i in ids]), "ablation means"):
        sums = run.call(graph.node_output_sums, torch.tensor([ids[k] for k in job]))
        tokens += len(job) * sums.shape[0]
        sums = sums if ablation == "mean_positional" else sums.sum(0, keepdim=True)
        total = sums if total is None else total + sums
    return total / (tokens / total.shape[0] if ablation == "mean_positional" else tokens)


def _edge_scores(run: Run, tok: Tokens, valid: np.ndarray, ig_steps: int, answers: Answers,
                 ig_points: str = "midpoint", replace: torch.Tensor | None = None, qkv: bool = False,
                 ig_variant: str = "inputs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upstream, downstream) edge scores averaged over prompts (NaN where no edge exists) and the
    (prompt) clean and corrupted metric; one pass per batch of pairs."""
    n = len(tok.base)
    per_prompt = np.zeros((n,) + valid.shape)
    clean, corrupt = np.zeros(n), np.zeros(n)
    blocks = ig_steps * (1 + 2 * graph.graph_shape(run.model)[0] if ig_variant == "activations" else 1)
    jobs = run.batches([len(b) for b in tok.base], rows_per_item=2 + (blocks if ig_steps > 1 else 0))
    for job in run.steps(jobs, "edge scores"):
        scores, values = run.call(graph.edge_attributions, tok.rows(job)[0], *answers.rows(job),
                                  probs=answers.probs, ig_steps=ig_steps, ig_points=ig_points, replace=replace,
                                  qkv=qkv, ig_variant=ig_variant)
        per_prompt[job] = scores.numpy()
        values = values.numpy()
        corrupt[job], clean[job] = values[: len(job)], values[len(job):]
    return np.where(valid, per_prompt.mean(0), np.nan), clean, corrupt


def _edge_patched(run: Run, tok: Tokens, removed: np.ndarray, label: str, answers: Answers,
                  replace: torch.Tensor | None = None, removed_qkv: np.ndarray | None = None,
                  last_only: bool = False, attention: tuple[list[int], np.ndarray] | None = None) -> tuple:
    """(c, prompt) metric of each circuit (``removed`` (c, up, down): cut edges; ``removed_qkv``
    (c, up, layer, head, 3): edges cut at a head's q, k or v input, ``last_only``: at the last
    position only, see :func:`graph.edge_patched_logits`) and (prompt) that of the corrupted
    run (passes of :meth:`Run.variant_batches`: a pair's corrupted row beside one clean row per
    circuit; no pass for c = 0). With ``attention`` = (layers, positions (prompt, m)) also
    (c, prompt, len(layers), H, m): each circuit's attention probabilities from the last
    position to those positions."""
    c, n = removed.shape[0], len(tok.base)
    if removed.shape[2] != removed.shape[1]:  # a q/k/v graph's cuts
        n_layers, n_heads, _ = graph.graph_shape(run.model)
        plain, split = graph.split_removed(torch.as_tensor(removed), n_layers, n_heads)
        removed, removed_qkv = plain.numpy(), split.numpy() if removed_qkv is None else removed_qkv | split.numpy()
    out, corrupt = np.zeros((c, n)), np.zeros(n)
    probs = None
    for job in run.steps(run.variant_batches([len(b) for b in tok.base], c, fixed_rows=1), label):
        ids, weights = answers.rows(job.items)
        qkv = None if removed_qkv is None else torch.tensor(removed_qkv[job.variants], dtype=torch.float32)
        logits = run.call(graph.edge_patched_logits, tok.rows(job.items)[0], ids,
                          torch.tensor(removed[job.variants], dtype=torch.float32), lse=answers.probs,
                          replace=replace, removed_qkv=qkv, last_only=last_only,
                          attention_layers=None if attention is None else attention[0])
        p = len(job.items)
        if attention is not None:
            logits, pattern = logits
            at = attention[1][job.items]  # (p, m)
            pattern = pattern[p:].numpy().reshape((len(job.variants), p) + tuple(pattern.shape[1:]))  # (v, p, L, H, T)
            if probs is None:
                probs = np.zeros((c, n) + pattern.shape[2:4] + (at.shape[1],))
            probs[np.ix_(job.variants, job.items)] = np.take_along_axis(pattern, at[None, :, None, None, :], 4)
        w = weights.numpy()
        diff = answers.value(logits.numpy(), np.concatenate([w[:p]] + [w[p:]] * len(job.variants)))
        corrupt[job.items] = diff[:p]
        out[np.ix_(job.variants, job.items)] = diff[p:].reshape(len(job.variants), p)
    return (out, corrupt) if attention is None else (out, corrupt, probs)


def extract(score: np.ndarray | xr.DataArray, n_edges: int, selection: str = "topn") -> np.ndarray:
    """(upstream, downstream) bool: the circuit of ``n_edges`` edges (NaN score = no edge) by
    ``selection`` (``"topn"``: largest |score|; ``"greedy"``: :func:`greedy`), pruned to those on
    a path from the input to the logits."""
    s = np.nan_to_num(np.abs(np.asarray(score, dtype=float)), nan=-1.0)
    if selection == "greedy":
        return prune(greedy(s, n_edges))
    if selection != "topn":
        raise UsageError(f"selection must be one of {', '.join(SELECTIONS)} (got {selection!r})")
    order = np.argsort(-s, axis=None, kind="stable")[: min(n_edges, int((s >= 0).sum()))]
    keep = np.zeros(s.shape, bool)
    keep.flat[order] = True
    return prune(keep)


def greedy(weight: np.ndarray, n_edges: int) -> np.ndarray:
    """(upstream, downstream) bool, unpruned: EAP-IG's greedy selection (``Graph.apply_greedy``,
    absolute scores). The logits start in the circuit; n times, the edge of largest ``weight``
    (|score|; negative = no edge) among those entering a node in the circuit is added, and a
    newly added upstream node brings its incoming edges into the candidates. Ties go to the
    lower flat index."""
    n_up, n_down = weight.shape
    inputs = _inputs_of(n_up, n_down)
    heap: list[tuple[float, int]] = []

    def enter(u: int) -> None:  # the edges into node u's inputs become candidates
        for v in inputs[u]:
            for w in np.nonzero(weight[:, v] >= 0)[0]:
                heapq.heappush(heap, (-float(weight[w, v]), int(w) * n_down + v))

    keep = np.zeros(weight.shape, bool)
    in_circuit = np.zeros(n_up, bool)
    in_circuit[0] = True  # the input has no incoming edges
    enter(n_up)  # the logits
    for _ in range(n_edges):
        if not heap:
            break
        _, flat = heapq.heappop(heap)
        u, v = divmod(flat, n_down)
        keep[u, v] = True
        if not in_circuit[u]:
            in_circuit[u] = True
            enter(u)
    return keep


def _inputs_of(n_up: int, n_down: int) -> list[list[int]]:
    """Per upstream node (and the logits, index n_up), its inputs on the downstream axis: one
    per node in the plain graph, a head's q, k and v in the q/k/v graph."""
    inputs: list[list[int]] = [[] for _ in range(n_up + 1)]
    for v, u in enumerate(graph.downstream_nodes(n_up, n_down).tolist()):
        inputs[u].append(v)
    return inputs


def prune(edges: np.ndarray) -> np.ndarray:
    """Edges of ``edges`` whose upstream node is reached from the input and whose downstream
    node reaches the logits, through edges of ``edges``. Both axes are in computation order
    (a node's inputs come after every node feeding them), so one pass each way suffices."""
    n_up, n_down = edges.shape
    node = graph.downstream_nodes(n_up, n_down).numpy()  # the node each downstream input belongs to
    inputs = _inputs_of(n_up, n_down)
    reached = np.zeros(n_up + 1, bool)
    reached[0] = True
    for u in range(1, n_up):
        reached[u] = any(bool((edges[:, v] & reached[:n_up]).any()) for v in inputs[u])
    reaches = np.zeros(n_up + 1, bool)
    reaches[n_up] = True  # the logits
    for u in range(n_up - 1, 0, -1):
        reaches[u] = bool(reaches[node[edges[u]]].any())
    return edges & reached[:n_up, None] & reaches[node][None, :]


def _circuits(ds: xr.Dataset, n_edges: int) -> list[np.ndarray]:
    """Each checkpoint's ``n_edges``-edge circuit, re-extracted from its ``score`` by the result's
    ``selection``."""
    selection = str(ds.attrs.get("selection", "topn"))
    return [extract(ds["score"].isel(checkpoint=k).values, n_edges, selection) for k in range(ds.sizes["checkpoint"])]


def overlap(ds: xr.Dataset, n_edges: int) -> xr.DataArray:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of the checkpoints' circuits of ``n_edges`` edges
    (re-extracted from each checkpoint's ``score``), dims (checkpoint, checkpoint_b)."""
    if "checkpoint" not in ds.dims:
        raise UsageError("circuit overlap compares checkpoints: run nr.circuit(..., revisions=...) first")
    sets = _circuits(ds, n_edges)
    jac = np.array([[(a & b).sum() / max(1, (a | b).sum()) for b in sets] for a in sets])
    names = ds["checkpoint"].values
    return xr.DataArray(jac, dims=("checkpoint", "checkpoint_b"), coords={"checkpoint": names, "checkpoint_b": names},
                        name="jaccard", attrs={"long_name": f"Jaccard similarity of {n_edges}-edge circuits",
                                               "units": "1", "n_edges": n_edges})


def stability(ds: xr.Dataset, n_edges: int | None = None, alpha: float = 0.5) -> xr.Dataset:
    """Tigges et al.'s circuit-stability measures over a checkpoint sweep (their
    ``utils/data_processing.py``). The circuits compared: with ``n_edges``, each checkpoint's
    ``n_edges``-edge circuit re-extracted from its ``score`` as :func:`overlap` does; without,
    each checkpoint's own smallest faithful circuit where the sweep ran the search
    (``min_fraction``: ``min_circuit``, as the repository saves the graph its search chose per
    checkpoint, ``get_circuits_over_time.py:471-476``; where the search found none, the circuit
    of the search's ``stop`` size, as the repository's search then returns its end), else
    the size :func:`chosen_size` picks for every checkpoint.

    Per ``transition`` (checkpoint k → k + 1, the sweep's order):
    ``jaccard`` (|A ∩ B| / |A ∪ B|), ``weighted_jaccard`` (Σ min / Σ max of |score| over the two
    circuits' edges, 0 for an edge outside one), ``ewma_change`` (an exponentially weighted mean
    of 1 − weighted_jaccard, weight ``alpha`` on the newest, starting from 0: ``compute_ewma_
    weighted_jaccard_similarity``), ``additions``/``deletions``/``ged`` (edges entering, leaving,
    both: the graph edit distance ``compute_ged``), ``weighted_additions``/``weighted_deletions``/
    ``weighted_ged`` (the signed scores of those edges summed, ``compute_weighted_ged``) and, over
    every edge of the graph, ``summed_increases``/``summed_decreases``/``summed_absolute_change``
    of the scores (``compute_gtd``). Per ``checkpoint``: ``jaccard_to_final`` and
    ``weighted_jaccard_to_final`` against the last checkpoint (``…_to_reference``)."""
    if "checkpoint" not in ds.dims or ds.sizes["checkpoint"] < 2:
        raise UsageError("circuit stability compares checkpoints: run nr.circuit(..., revisions=...) over two or more")
    if not 0 < alpha <= 1:
        raise UsageError(f"alpha must be in (0, 1] (got {alpha!r})")
    score = np.nan_to_num(ds["score"].values.astype(float))  # (checkpoint, upstream, downstream); NaN: no edge
    own = n_edges is None and "min_circuit" in ds and "checkpoint" in ds["min_circuit"].dims
    if own:
        from ..results.io import list_attr

        stop = int(list_attr(ds.attrs["search"])[1])  # the search's (start, stop, step)
        selection = str(ds.attrs.get("selection", "topn"))
        sets = [ds["min_circuit"].isel(checkpoint=k).values.astype(bool) if int(ds["min_size"][k]) >= 0
                else extract(ds["score"].isel(checkpoint=k).values, stop, selection)  # pruned
                for k in range(ds.sizes["checkpoint"])]
        n = -1
    else:
        n = chosen_size(ds) if n_edges is None else int(n_edges)
        sets = _circuits(ds, n)
    weights = [np.where(c, np.abs(sc), 0.0) for c, sc in zip(sets, score)]

    def jaccard(a, b):
        union = (a | b).sum()
        return (a & b).sum() / union if union else 0.0

    def weighted(a, b):
        top = np.maximum(a, b).sum()
        return np.minimum(a, b).sum() / top if top else 0.0

    pairs = list(zip(range(len(sets) - 1), range(1, len(sets))))
    wj = np.array([weighted(weights[i], weights[j]) for i, j in pairs])
    ewma, prev = [], 0.0
    for x in 1 - wj:
        prev = alpha * x + (1 - alpha) * prev
        ewma.append(prev)
    added = [sets[j] & ~sets[i] for i, j in pairs]
    removed = [sets[i] & ~sets[j] for i, j in pairs]
    change = [score[j] - score[i] for i, j in pairs]
    names = [str(c) for c in ds["checkpoint"].values]
    t = ("transition",)
    per = {
        "jaccard": (t, [jaccard(sets[i], sets[j]) for i, j in pairs], {"long_name": "Jaccard similarity"}),
        "weighted_jaccard": (t, wj, {"long_name": "Σ min |score| / Σ max |score| over the two circuits"}),
        "ewma_change": (t, ewma, {"long_name": f"EWMA (alpha {alpha}) of 1 − weighted Jaccard"}),
        "additions": (t, [int(a.sum()) for a in added], {"long_name": "edges entering the circuit"}),
        "deletions": (t, [int(r.sum()) for r in removed], {"long_name": "edges leaving the circuit"}),
        "weighted_additions": (t, [float(score[j][a].sum()) for (_, j), a in zip(pairs, added)],
                               {"long_name": "summed scores of the entering edges", "units": "logits"}),
        "weighted_deletions": (t, [float(score[i][r].sum()) for (i, _), r in zip(pairs, removed)],
                               {"long_name": "summed scores of the leaving edges", "units": "logits"}),
        "summed_increases": (t, [float(c[c > 0].sum()) for c in change], {"units": "logits"}),
        "summed_decreases": (t, [float(-c[c < 0].sum()) for c in change], {"units": "logits"}),
    }
    out = xr.Dataset(per, coords={"transition": [f"{names[i]}→{names[j]}" for i, j in pairs],
                                  "from_checkpoint": (t, [names[i] for i, _ in pairs]),
                                  "to_checkpoint": (t, [names[j] for _, j in pairs]), "checkpoint": names})
    out["ged"] = out["additions"] + out["deletions"]
    out["weighted_ged"] = out["weighted_additions"] + out["weighted_deletions"]
    out["summed_absolute_change"] = out["summed_increases"] + out["summed_decreases"]
    out["jaccard_to_final"] = ("checkpoint", [jaccard(c, sets[-1]) for c in sets])
    out["weighted_jaccard_to_final"] = ("checkpoint", [weighted(w, weights[-1]) for w in weights])
    out.attrs.update(n_edges=n, alpha=alpha, source_method=str(ds.attrs.get("method", "")),
                     circuits="min_circuit" if own else "n_edges")
    if own:  # n_edges -1: each checkpoint's own size, here
        out["min_size"] = ("checkpoint", ds["min_size"].values.astype(int),
                           {"long_name": "edges (before pruning) of the checkpoint's smallest faithful circuit"})
    return out


def node_table(n_layers: int, n_heads: int, qkv: bool = False) -> tuple[dict, dict]:
    """Coordinates of the upstream and downstream axes: names, layer, kind, head; downstream
    also ``input`` (a head's "q", "k" or "v" in the q/k/v graph, "qkv" in the plain one, "" for
    MLPs and the logits)."""
    up = {"name": ["input"], "layer": [-1], "kind": ["input"], "head": [-1]}
    down: dict[str, list] = {"name": [], "layer": [], "kind": [], "head": [], "input": []}
    for li in range(n_layers):
        for h in range(n_heads + 1):
            mlp = h == n_heads
            up["name"].append(f"m{li}" if mlp else f"a{li}.{h}")
            up["layer"].append(li)
            up["kind"].append("mlp" if mlp else "head")
            up["head"].append(-1 if mlp else h)
        for name, h, which in ([(f"a{li}.{h}<{g}>", h, g) for g in "qkv" for h in range(n_heads)] if qkv else
                               [(f"a{li}.{h}", h, "qkv") for h in range(n_heads)]) + [(f"m{li}", -1, "")]:
            down["name"].append(name)
            down["layer"].append(li)
            down["kind"].append("head" if h >= 0 else "mlp")
            down["head"].append(h)
            down["input"].append(which)
    for k, v in (("name", "logits"), ("layer", n_layers), ("kind", "logits"), ("head", -1), ("input", "")):
        down[k].append(v)
    return up, down


#: long names of the node axes and their coordinates (:func:`_node_coords`)
NODE_NAMES = {
    "upstream": "upstream node: input (embeddings), aL.H (head H of layer L) or mL (layer L's MLP)",
    "downstream": "downstream node: aL.H (head; aL.H<q>, <k>, <v>: its inputs in the q/k/v graph), mL (MLP) or logits",
    "upstream_layer": "the upstream node's layer (−1: input)",
    "upstream_kind": "the upstream node's kind: input, head or mlp",
    "upstream_head": "the upstream node's head index (−1: not a head)",
    "downstream_layer": "the downstream node's layer (n_layers: the logits)",
    "downstream_kind": "the downstream node's kind: head, mlp or logits",
    "downstream_head": "the downstream node's head index (−1: not a head)",
    "downstream_input": "the head input the edge enters: q, k or v (q/k/v graph), qkv (all three; plain graph), "
                        "'' (MLP, logits)",
}


def _node_coords(up: dict, down: dict) -> dict[str, Any]:
    """The node axes' coordinates (``upstream_layer``, ``downstream_kind``, …) from :func:`node_table`."""
    coords: dict[str, Any] = {}
    for axis, table in (("upstream", up), ("downstream", down)):
        for k in ("layer", "kind", "head", "input"):
            if k in table:
                coords[f"{axis}_{k}"] = (axis, np.array(table[k], dtype=int if k in ("layer", "head") else object),
                                         {"long_name": NODE_NAMES[f"{axis}_{k}"]})
    return coords


def _dataset(pairs, score, clean, corrupt, circuits, circuit_diff, sizes, shape: Shape, attrs) -> xr.Dataset:
    up, down = node_table(shape.n_layers, shape.n_heads, shape.qkv)
    coords: dict[str, Any] = {"upstream": ("upstream", np.array(up["name"], dtype=object),
                                           {"long_name": NODE_NAMES["upstream"]}),
                              "downstream": ("downstream", np.array(down["name"], dtype=object),
                                             {"long_name": NODE_NAMES["downstream"]}),
                              "size": ("size", np.array(sizes, dtype=int),
                                       {"long_name": "circuit size: edges selected before pruning"}),
                              "prompt": ("prompt", np.arange(len(pairs)), {"long_name": "prompt pair index"}),
                              "base": ("prompt", [p.base for p in pairs]),
                              "source": ("prompt", [p.source for p in pairs]),
                              "base_answer": ("prompt", [p.base_answer for p in pairs]),
                              "source_answer": ("prompt", [p.source_answer for p in pairs])}
    coords.update(_node_coords(up, down))
    gap = clean.mean() - corrupt.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        faith = (circuit_diff.mean(1) - corrupt.mean()) / gap
        frac = circuit_diff.mean(1) / clean.mean()
    node = graph.downstream_nodes(*shape.valid.shape).numpy()
    n_nodes = [len(set(np.nonzero(c)[0]) | set(node[np.nonzero(c)[1]])) for c in circuits]
    logit = {("logit_diff", 0): "logit(clean answer) − logit(corrupted answer)",
             ("prob_diff", 0): "P(clean answer) − P(corrupted answer)",
             ("logit_diff", 1): "mean logit of the correct answers − of the wrong ones",
             ("prob_diff", 1): "summed P of the correct answers − of the wrong ones"}[
        (attrs["metric"], attrs.get("answer_sets", 0))]
    unit = "1" if attrs["metric"] == "prob_diff" else "logits"
    data = {
        "score": (("upstream", "downstream"), score, {"long_name": f"estimated change of {logit} when the edge is "
                                                                  f"corrupted", "units": unit}),
        "clean_logit_diff": ("prompt", clean, {"long_name": f"{logit}, clean run", "units": unit}),
        "corrupt_logit_diff": ("prompt", corrupt, {"long_name": f"{logit}, corrupted run", "units": unit}),
        "circuit_logit_diff": (("size", "prompt"), circuit_diff, {"long_name": f"{logit}, circuit only (edges "
                                                                              f"outside it corrupted)",
                                                                  "units": unit}),
        "faithfulness": ("size", faith, {"long_name": "(circuit − corrupted) / (clean − corrupted)", "units": "1"}),
        "fraction": ("size", frac, {"long_name": "circuit / clean logit difference", "units": "1"}),
        "n_edges": ("size", circuits.sum((1, 2)), {"long_name": "edges kept after pruning"}),
        "n_nodes": ("size", np.array(n_nodes, dtype=int), {"long_name": "nodes touched by the pruned circuit "
                                                                        "(the logits count once)"}),
        "in_circuit": (("size", "upstream", "downstream"), circuits.astype(np.int8), {"long_name": "edge in the "
                                                                                                  "pruned circuit"}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def chosen_size(ds: xr.Dataset) -> int:
    """The circuit size a figure or summary shows: the smallest whose faithfulness reaches 0.8
    on the (last) checkpoint, else the largest measured."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    if last.sizes["size"] == 0:
        raise UsageError("this result has no circuits (it was run with sizes=()); rerun with --sizes")
    ok = last["size"].values[last["faithfulness"].values >= 0.8]
    return int(ok[0]) if len(ok) else int(last["size"].values[-1])


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """Clean and corrupted logit differences, each circuit's size and faithfulness, the ``top``
    edges by |score| (at the last checkpoint of a sweep) and, over checkpoints, the overlap of
    each checkpoint's circuit with the last one's."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    rev = last.attrs["revision"]
    method = {"eap": "EAP", "eap_ig": f"EAP-IG ({ds.attrs.get('ig_steps')} steps)",
              "edge_patching": "exact edge patching"}.get(str(ds.attrs.get("method")), str(ds.attrs.get("method")))
    lines: list[Any] = [f"{method} · {ds.attrs.get('task')} · {ds.sizes['prompt']} pairs · {ds.attrs['model']}@{rev}: "
                        f"clean {str(ds.attrs.get('metric', 'logit_diff')).replace('_', ' ')} "
                        f"{float(last['clean_logit_diff'].mean()):.2f}, corrupted "
                        f"{float(last['corrupt_logit_diff'].mean()):.2f}"]
    if last.sizes["size"]:
        how = "greedy by |score|" if ds.attrs.get("selection") == "greedy" else "top-n edges by |score|"
        table = Table(title=f"circuits of {ds.attrs['model']}@{rev} ({how}, pruned)")
        for col in ("size", "edges kept", "nodes", "faithfulness", "circuit / clean"):
            table.add_column(col, justify="right")
        for s in last["size"].values:
            v = last.sel(size=s)
            table.add_row(str(s), str(int(v["n_edges"])), str(int(v["n_nodes"])), f"{float(v['faithfulness']):.3f}",
                          f"{float(v['fraction']):.3f}")
        lines.append(table)
    if "threshold" in last.dims:
        lines.append("threshold circuits (|score| ≥ t, pruned): " + ", ".join(
            f"t={t:g}: {int(n)} edges, faithfulness {f:.3f}" for t, n, f in
            zip(last["threshold"].values, last["threshold_n_edges"].values, last["threshold_faithfulness"].values)))
    if "min_size" in ds:
        sizes = np.atleast_1d(ds["min_size"].values)
        names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else [str(rev)]
        lines.append(f"smallest circuit with circuit / clean >= {ds.attrs['min_fraction']} (search "
                     f"{ds.attrs['search']}): " + ", ".join(f"{n} {int(s_) if s_ > 0 else 'none'}"
                                                            for n, s_ in zip(names, sizes)))
    flat = last["score"].stack(edge=("upstream", "downstream")).dropna("edge")
    best = np.argsort(-np.abs(flat.values))[:top]
    lines.append("top edges: " + ", ".join(f"{u}→{d} {float(flat.values[i]):+.2f}"
                                           for i, (u, d) in zip(best, flat["edge"].values[best])))
    if "checkpoint" in ds.dims and ds.sizes["size"]:
        size = chosen_size(ds)
        jac = overlap(ds, size).values
        steps = [str(c) for c in ds["checkpoint"].values]
        lines.append(f"overlap (Jaccard) of top-{size} circuits with the last checkpoint: " + ", ".join(
            f"{n} {jac[k, -1]:.2f}" for k, n in enumerate(steps)))
        st = stability(ds)  # the circuits the stability plot compares
        which = "each checkpoint's smallest faithful circuit" if st.attrs["circuits"] == "min_circuit" else \
            f"top-{st.attrs['n_edges']} circuits"
        lines.append(f"stability (Tigges et al.; {which}) per transition: " + ", ".join(
            f"{str(t)} GED {int(g)}, weighted Jaccard {w:.2f}" for t, g, w in
            zip(st["to_checkpoint"].values, st["ged"].values, st["weighted_jaccard"].values)))
    return lines


# --------------------------------------------------------------------------- EAP-IG's JSON graphs
def _eap_ig_name(name: str) -> str:
    """A node or downstream input in hannamw/EAP-IG's spelling: heads are ``a3.h1``."""
    if name.startswith("a"):
        head, _, rest = name.partition("<")
        layer, h = head[1:].split(".")
        return f"a{layer}.h{h}" + (f"<{rest}" if rest else "")
    return name


def to_eap_ig_json(ds: xr.Dataset, path: str | Path, *, size: int | None = None,
                   checkpoint: str | None = None) -> Path:
    """Write a q/k/v circuit result (``nr.circuit(..., qkv=True)``) as hannamw/EAP-IG's
    ``Graph.to_json`` lays a graph out in the version circuits-over-time pins (10035b8), so
    that it (``Graph.from_json``) and circuits-over-time's analyses read it: ``cfg``
    (``n_layers``, ``n_heads``, ``parallel_attn_mlp``, and ``d_model``, which later EAP-IG
    versions also read), ``nodes`` {name: in_graph} and ``edges`` {"parent->child" or
    "parent->a3.h1<q>": {"score", "in_graph"}}. The circuit is the result's ``min_circuit`` if it
    searched one, else its circuit of ``size`` edges (default: :func:`chosen_size`); a node is in
    the graph when a circuit edge touches it. ``checkpoint``: which one of a sweep (default the
    last). Scores are the result's (mean over prompts, its metric's units)."""
    import json

    if ds.attrs.get("method") not in ("eap", "eap_ig"):
        raise UsageError(f"a graph is exported from a circuit result (nr.circuit, reason-interp circuit --qkv); "
                         f"this one is {ds.attrs.get('method')!r}")
    if int(ds.attrs.get("qkv", 0)) != 1:
        raise UsageError("EAP-IG's graphs have separate edges into each head's query, key and value: run "
                         "nr.circuit(..., qkv=True) (reason-interp circuit --qkv) to export one")
    if "checkpoint" in ds.dims:
        names = [str(c) for c in ds["checkpoint"].values]
        if checkpoint is not None and checkpoint not in names:
            raise UsageError(f"no checkpoint {checkpoint!r} in this result; it has {', '.join(names)}")
        one = ds.sel(checkpoint=checkpoint) if checkpoint is not None else ds.isel(checkpoint=-1)
    else:  # one revision's result: a checkpoint named must be that one
        if checkpoint is not None and checkpoint != str(ds.attrs.get("revision")):
            raise UsageError(f"this result is of one revision, {ds.attrs.get('revision')!r}, not a sweep: drop "
                             f"--checkpoint {checkpoint}")
        one = ds
    if size is None and "min_circuit" in one and int(one["min_size"]) > 0:
        keep = one["min_circuit"].values.astype(bool)
    else:
        if one.sizes.get("size", 0) == 0:
            raise UsageError("this result has no circuits (sizes=()); rerun with --sizes")
        size = chosen_size(one) if size is None else int(size)
        if size not in one["size"].values:
            raise UsageError(f"no circuit of {size} edges in this result; it has sizes "
                             f"{', '.join(str(s) for s in one['size'].values)}")
        keep = one["in_circuit"].sel(size=size).values.astype(bool)
    score = one["score"].values
    up, down = [str(n) for n in one["upstream"].values], [str(n) for n in one["downstream"].values]
    node = graph.downstream_nodes(len(up), len(down)).numpy()
    used = set(np.nonzero(keep)[0]) | set(node[np.nonzero(keep)[1]].tolist())
    nodes = {_eap_ig_name(n): k in used for k, n in enumerate(up)}
    nodes["logits"] = bool(keep[:, -1].any())
    edges = {f"{_eap_ig_name(up[u])}->{_eap_ig_name(down[v])}": {"score": float(score[u, v]), "in_graph": bool(keep[u, v])}
             for u, v in zip(*np.nonzero(np.isfinite(score)))}
    cfg = {"n_layers": int(ds.attrs["n_layers"]), "n_heads": int(ds.attrs["n_heads"]),
           "parallel_attn_mlp": bool(int(ds.attrs["parallel_residual"]))}
    if "d_model" in ds.attrs:  # results written before 2026-12-01 lack it
        cfg["d_model"] = int(ds.attrs["d_model"])
    doc = {"cfg": cfg, "nodes": nodes, "edges": edges}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # never a half-written file
    return path


def from_eap_ig_json(path: str | Path) -> xr.Dataset:
    """A graph written by hannamw/EAP-IG's ``Graph.to_json`` (or :func:`to_eap_ig_json`) as a
    Dataset over the q/k/v graph's (upstream, downstream) axes: ``score`` (NaN where the file has
    no score or no edge exists) and ``in_graph`` (0/1), with the axes' coordinates of
    :func:`circuit` results; ``ds.in_graph`` serves as the ``circuit=`` of
    :func:`nnsight_reasoning.ioi_components`."""
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        cfg = doc["cfg"]
        n_layers, n_heads, parallel = int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"])
        edges = doc["edges"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not an EAP-IG graph file (JSON with cfg.n_layers, cfg.n_heads, "
                         f"cfg.parallel_attn_mlp and edges): {e}") from None
    shape = Shape(n_layers, n_heads, parallel, graph.valid_edges(n_layers, n_heads, parallel, qkv=True).numpy(), True)
    up, down = node_table(n_layers, n_heads, qkv=True)
    up_at = {_eap_ig_name(n): k for k, n in enumerate(up["name"])}
    down_at = {_eap_ig_name(n): k for k, n in enumerate(down["name"])}
    score = np.full(shape.valid.shape, np.nan)
    keep = np.zeros(shape.valid.shape, np.int8)
    for name, info in edges.items():
        parent, _, child = name.partition("->")
        u, v = up_at.get(parent), down_at.get(child)
        if u is None or v is None or not shape.valid[u, v]:
            raise UsageError(f"{path}: edge {name!r} is not an edge of a {n_layers}-layer, {n_heads}-head graph "
                             f"(parallel_attn_mlp={parallel})")
        score[u, v] = np.nan if info.get("score") is None else float(info["score"])
        keep[u, v] = bool(info.get("in_graph", False))
    coords: dict[str, Any] = {"upstream": ("upstream", np.array(up["name"], dtype=object),
                                           {"long_name": NODE_NAMES["upstream"]}),
                              "downstream": ("downstream", np.array(down["name"], dtype=object),
                                             {"long_name": NODE_NAMES["downstream"]}), **_node_coords(up, down)}
    return xr.Dataset({"score": (("upstream", "downstream"), score, {"long_name": "EAP-IG edge score"}),
                       "in_graph": (("upstream", "downstream"), keep, {"long_name": "edge in the graph"})},
                      coords=coords, attrs={**shape.attrs(), "source": str(path)})
