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

from typing import Sequence

import numpy as np
import xarray as xr

from ...backend import graph
from ...errors import UsageError, checked_int
from ...runner import Run, experiment
from ...tasks import PromptPair, PromptPairs
from ..patch import tokenize_pairs
from ._result import NODE_NAMES, _dataset, node_table, summarize
from ._scores import METRICS, Shape, _ablation_values, _answers, _edge_patched, _edge_scores, _prepare, default_metric
from .eap_ig_json import from_eap_ig_json, to_eap_ig_json
from .selection import SELECTIONS, chosen_size, extract, greedy, overlap, prune, selected_circuit, stability

# the package's parts (the experiments built on the graph import Shape, _prepare, _answers,
# _edge_patched, default_metric, node_table from here, as the CLI and plots import the rest)
__all__ = ["circuit", "edge_patching", "extract", "greedy", "prune", "overlap", "stability", "chosen_size", "selected_circuit",
           "node_table", "NODE_NAMES", "summarize", "to_eap_ig_json", "from_eap_ig_json", "default_metric", "Shape",
           "tokenize_pairs", "METRICS", "SELECTIONS", "ABLATIONS", "DEFAULT_SIZES"]


DEFAULT_SIZES = (10, 20, 50, 100, 200)
DEFAULT_SEARCH = (25, 1600, 25)  # get_circuits_over_time.py's --start, --end, --step
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
    ig_steps = checked_int("ig_steps", ig_steps, 1)
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
