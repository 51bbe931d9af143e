"""Activation patching / causal mediation analysis (Stolfo et al. 2023).

For every prompt pair, site, layer, position (and head for ``head``), the base prompt is
run with that one activation replaced by its value on the source prompt, and the metric
compares the answer scores with the clean base run.

Batching: one forward pass takes ``p`` source rows and ``p`` clean base rows and ``p·u``
patched copies (``u`` patch units per pair, ``p·(u+2) <= batch_size``). Patching engine v2
(``backend/packed.py``, the default) computes each copy only where its patch can change
something: the positions from the patched one on, from the patch's layer up, as extra
columns beside its base row whose prefix keys and values they read; engine v1 (kept where v2
cannot run) adds each copy as a whole row at the layer of its site. Each copy reads its
activation from its own pair's source row *in the same pass*, so source activations never
leave the model (or the NDIF server). Pairs are grouped by token length, so no padding is
ever used. A patch at a position inside the pair's common token prefix (few-shot exemplars)
changes nothing and gets no copy: its value is the clean effect (:func:`_shared_prefix`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend, metrics
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import (EMBED_LAYER, EMBED_SITES, EXACT_ONLY_SITES, POSITIONS, PROB_SITES, UNIT_DIMS,
                     WHOLE_PROMPT_SITES, check_layers, check_sites, dims, var_name)
from ..tasks import PromptPair, PromptPairs
from ..tasks.base import group_by_length, joined_answers


METHODS = {"exact": "activation_patching", "attribution": "attribution_patching"}
#: Metrics attribution patching can estimate (a gradient of a difference of log-scores).
ATTRIBUTION_METRICS = ("stolfo_ie", "logit_diff")
#: Codes of the ``<site>_prediction`` variables: what the patch did to the top token of the
#: base prompt (-1: no value, e.g. a position past the prompt's end).
PREDICTION_CODES = {0: "unchanged", 1: "moved to the source answer", 2: "moved to another token"}


@experiment("activation_patching", batch_size=512)
def patch(
    run: Run,
    pairs: PromptPairs | Sequence[PromptPair],
    sites: Sequence[str] | str = ("mlp", "attn"),
    positions: str = "last",
    *,
    metric: str | None = None,
    method: str = "exact",
    ig_steps: int = 1,
    layers: Sequence[int] | None = None,
    correct_only: bool = False,
) -> xr.Dataset:
    """Activation-patching sweep: the effect of each site's activation on the answer.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model` (or any nnsight ``TransformersModel``), or
        a name/directory to load.
    pairs : aligned prompt pairs, e.g. ``nr.tasks.arithmetic(...)``.
    sites : any of :data:`nnsight_reasoning.sites.SITES`: "embed", "embed_dim", "attn_pattern",
        "attn_layer_pattern", "attn_weights", "head", "attn", "neuron", "mlp", "mlp_dim", "resid". ``embed``
        (exact only) patches the token embeddings entering the first layer; it is stored at
        layer -1, as lm-arithmetic numbers it. ``attn_weights`` (exact only) gives one head
        the source run's attention probabilities at one query position, its values staying
        the base run's. ``attn_pattern`` (exact only) gives one head the source run's whole
        pattern, every query position at once (lm-arithmetic's attention-head intervention);
        ``attn_layer_pattern`` (exact only) every head of the layer at once (its
        attention-layer intervention). Both are stored at each prompt's last position.
        ``neuron`` (exact only) patches each MLP hidden unit alone (every unit of every layer
        in ``layers``: one patched row each, batched). ``mlp_dim`` and ``embed_dim`` (exact
        only) patch one dimension (of d_model) of the MLP's output or of the embeddings at a
        time: lm-arithmetic's single "neurons" (``intervention_loc=all``, its default, and
        ``single_layer_N``); stored along a ``dimension`` dim, the embeddings at layer -1.
    positions : "last" (the final prompt token) or "all" (every token).
    metric : a key of :data:`nnsight_reasoning.metrics.METRICS`: "stolfo_ie" (the paper's
        indirect effect), "absolute", "source_increase", "relative_source_increase",
        "same_result" (lm-arithmetic's effect for pairs with equal answers) or "logit_diff".
        Default: "same_result" when every pair's two answers are equal, else "stolfo_ie".
    method : "exact" (activation patching) or "attribution" (attribution patching: the
        gradient estimate of the same values from one forward + backward pass per batch;
        metrics "stolfo_ie" and "logit_diff").
    ig_steps : attribution only: 1 = gradient at the base run; m > 1 = integrated gradients
        over m interpolations of the input embeddings (more accurate, m extra rows per pair).
    layers : subset of layers; default all.
    correct_only : analyse only pairs the model answers correctly (its top token is r1 on
        the base prompt and r2 on the source prompt), as the paper does; the others keep
        their prompt index with NaN effects (so checkpoints of a sweep stack) and the
        per-prompt ``correct`` says which. One clean pass per batch decides, before patching.

    Notes
    -----
    Batching: one forward pass takes ``p`` source rows and ``p`` clean base rows and grows
    to ``p·(u+2) <= batch_size`` rows (``u`` patches per pair): each patched copy of a base
    row joins the batch at the layer of its site, because below it the copy would equal its
    base row; each copy reads its activation from its own pair's source row in the same pass.

    Returns
    -------
    xarray.Dataset with one variable per site, dims ``(prompt, layer, position)``; the unit
    sites add their unit's dim: ``head`` is stored as variable ``heads`` (dim ``head``, as are
    ``attn_pattern`` and ``attn_weights``), ``neuron`` as ``neurons`` (dim ``neuron``),
    ``embed_dim`` and ``mlp_dim`` under their own names (dim ``dimension``); ``attn_pattern``
    and ``attn_layer_pattern`` hold a value at each prompt's last position only; values of
    ``metric``. Along ``prompt``: ``clean_p_base``, ``clean_p_source`` (P(r1), P(r2) on the
    base prompt), ``source_prompt_p_base``, ``source_prompt_p_source`` (the same on the
    source prompt) and ``total_effect`` (``metric`` of the input intervention alone: the
    base prompt replaced by the source prompt, the paper's TE for "stolfo_ie"). Exact
    patching also stores ``<site>_prediction`` (int8, :data:`PREDICTION_CODES`: whether the
    patch moved the top token to the source answer or elsewhere; see
    :func:`prediction_change`). With ``positions="last"`` and prompts of different lengths,
    the single ``position`` coordinate is -1 ("each prompt's last token").

    Examples
    --------
    >>> ds = nr.patch(nr.load_model(), nr.tasks.arithmetic(n_prompts=8), sites=["mlp"])
    >>> ds.mlp.mean("prompt")
    """
    sites = check_sites(sites)
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)} (got {positions!r})")
    pair_list = list(pairs)
    if not pair_list:
        raise UsageError("no prompt pairs given")
    metric = default_metric(pair_list) if metric is None else metric
    if metric not in metrics.METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from: {', '.join(metrics.METRICS)}")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == "attribution" and metric not in ATTRIBUTION_METRICS:
        raise UsageError(f"method='attribution' estimates {' or '.join(ATTRIBUTION_METRICS)} only (got "
                         f"metric={metric!r}); use method='exact'")
    for site in EXACT_ONLY_SITES:
        if method == "attribution" and site in sites:
            raise UsageError(f"site {site!r} is patched exactly only; drop it or use method='exact'")
    if set(PROB_SITES) & set(sites):
        backend.require_eager(run.model, "attention-weight patches")
    ig_steps = checked_int("ig_steps", ig_steps, 1)
    if ig_steps > 1 and method != "attribution":
        raise UsageError(f"ig_steps > 1 only with method='attribution' (got {ig_steps} with method={method!r})")
    if method == "exact" and run.batch_size < 3:
        raise UsageError(f"batch_size must be >= 3 (got {run.batch_size})")
    model = run.model
    d = dims(model)
    layer_list = check_layers(layers, d["n_layers"])
    if set(EMBED_SITES) & set(sites):
        layer_list = [EMBED_LAYER] + layer_list
    tok = tokenize_pairs(model, pair_list)
    lengths = [len(b) for b in tok.base]
    t_max = max(lengths)
    pos_coord = list(range(t_max)) if positions == "all" else [t_max - 1 if len(set(lengths)) == 1 else -1]
    grid = Grid(sites, layer_list, positions, {s: d[f"n_{dim}s"] for s, dim in UNIT_DIMS.items()})
    out = Outputs.empty(grid, (len(pair_list), len(layer_list), len(pos_coord)))
    keep = np.arange(len(pair_list))
    if correct_only:
        keep = np.flatnonzero(_correct(run, tok, out))
        if not len(keep) and not run.in_sweep:
            raise UsageError(f"the model answers none of the {len(pair_list)} pairs correctly (top token r1 on "
                             f"the base prompt and r2 on the source prompt); run without correct_only")
    if method == "exact":
        _exact(run, tok, grid, metric, out, keep)
    else:
        _attribution(run, tok, grid, metric, ig_steps, out, keep)
    attrs = {"method": METHODS[method], "metric": metric, "positions": positions, "correct_only": int(correct_only)}
    if method == "attribution":
        attrs["ig_steps"] = ig_steps
    else:
        attrs["prediction_codes"] = "; ".join(f"{k} {v}" for k, v in PREDICTION_CODES.items())
    tokens = _token_strings(model, tok.base, positions, t_max)
    return _dataset(pair_list, out, layer_list, pos_coord, grid.n_units, tokens, lengths, attrs, metric,
                    method == "exact")


def default_metric(pairs: Sequence[PromptPair]) -> str:
    """"same_result" when every pair's two answers are equal (lm-arithmetic's measure for its
    same-result intervention: the indirect effect's two terms would describe one token),
    else "stolfo_ie"."""
    return "same_result" if all(p.base_answer == p.source_answer for p in pairs) else "stolfo_ie"


@dataclass(frozen=True)
class Tokens:
    """A run's pairs as token ids: ``base``, ``source`` (per pair) and ``answers`` ([base, source])."""

    base: list[list[int]]
    source: list[list[int]]
    answers: list[list[int]]

    def rows(self, pairs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The input rows of a pass over ``pairs`` (equal length): their source rows, then their
        base rows, (2p, T); and every row's [base, source] answer ids, (2p, 2)."""
        return (torch.tensor([self.source[i] for i in pairs] + [self.base[i] for i in pairs]),
                torch.tensor([self.answers[i] for i in pairs] * 2))


@dataclass
class Outputs:
    """What a sweep fills, for every pair of the run: ``values`` and ``prediction`` per site
    (prompt, layer, position(, head)); the clean scores (prompt, 2) [r1, r2] of the base
    prompt (``base_lp``, ``base_lg``: log-probabilities, logits) and of the source prompt
    (``source_lp``, ``source_lg``); ``correct`` (prompt,) when the run filtered on it."""

    values: dict[str, np.ndarray]
    prediction: dict[str, np.ndarray]
    base_lp: np.ndarray
    base_lg: np.ndarray
    source_lp: np.ndarray
    source_lg: np.ndarray
    correct: np.ndarray | None = None

    @classmethod
    def empty(cls, grid: "Grid", shape: tuple[int, ...]) -> "Outputs":
        values = grid.empty(shape)
        return cls(values, {k: np.full(v.shape, -1, np.int8) for k, v in values.items()},
                   *(np.full((shape[0], 2), np.nan) for _ in range(4)))

    def clean(self, pairs: Sequence[int], s: backend.Scores) -> None:
        """The clean scores of a pass whose first 2p rows are :meth:`Tokens.rows` of ``pairs``."""
        p = len(pairs)
        lp, lg = s.log_probs.double().numpy(), s.logits.double().numpy()
        self.source_lp[pairs], self.source_lg[pairs] = lp[:p], lg[:p]
        self.base_lp[pairs], self.base_lg[pairs] = lp[p:2 * p], lg[p:2 * p]


@dataclass(frozen=True)
class Grid:
    """What a sweep patches: sites (forward order), layers, "last"/"all" positions, and the
    units per layer of the unit sites ({"head": n_heads, "neuron": n_neurons})."""

    sites: list[str]
    layers: list[int]
    positions: str
    n_units: dict[str, int]

    def units(self, length: int) -> list["Unit"]:
        """Every patch of one prompt of ``length`` tokens, in forward order per pair."""
        last = [(length - 1, 0 if self.positions == "last" else length - 1)]
        pos = last if self.positions == "last" else [(p, p) for p in range(length)]
        return [Unit(s, li, p, pi, h) for s in self.sites for li in self.layer_indices(s)
                for p, pi in (last if s in WHOLE_PROMPT_SITES else pos)
                for h in (range(self.n_units[s]) if s in UNIT_DIMS else [None])]

    def layer_indices(self, site: str) -> list[int]:
        """Indices into ``layers`` a site is patched at: the embeddings only at layer -1."""
        return [li for li, layer in enumerate(self.layers) if (layer == EMBED_LAYER) == (site in EMBED_SITES)]

    def empty(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        return {s: np.full(shape + ((self.n_units[s],) if s in UNIT_DIMS else ()), np.nan) for s in self.sites}


@dataclass(frozen=True)
class Unit:
    """One patch of a pair: ``site`` at layer index ``li``, token ``position`` (stored at index
    ``pi`` of the result's position axis), ``head``: the head or neuron (None for other sites)."""

    site: str
    li: int
    position: int
    pi: int
    head: int | None = None


@dataclass(frozen=True)
class PatchPass:
    """One forward pass of an exact sweep: ``pairs`` (indices) and the ``units`` each is patched at."""

    pairs: list[int]
    units: list[Unit]


def plan_passes(lengths: list[int], grid: Grid, batch_size: int) -> list[PatchPass]:
    """Passes of equal-length pairs: each pass holds ``p`` pairs' source and base rows plus one
    patched copy per (pair, unit), at most ``batch_size`` rows in all."""
    passes = []
    for idx in group_by_length(lengths):
        units = grid.units(lengths[idx[0]])
        per_pair = min(len(units), batch_size - 2)
        n_pairs = max(1, batch_size // (per_pair + 2))
        for u0 in range(0, len(units), per_pair):
            for p0 in range(0, len(idx), n_pairs):
                passes.append(PatchPass(idx[p0:p0 + n_pairs], units[u0:u0 + per_pair]))
    return passes


def n_forward_passes(n_pairs: int, n_units: int, batch_size: int = 512) -> int:
    """Forward passes of a sweep over ``n_pairs`` equal-length pairs with ``n_units`` patches each."""
    per_pair = min(n_units, batch_size - 2)
    return math.ceil(n_units / per_pair) * math.ceil(n_pairs / max(1, batch_size // (per_pair + 2)))


# --------------------------------------------------------------------------- exact
def _correct(run: Run, tok: Tokens, out: Outputs) -> np.ndarray:
    """Whether the model's top token is r1 on each base prompt and r2 on its source prompt
    (one clean pass per batch of pairs); also fills ``out``'s clean scores and ``correct``."""
    correct = np.zeros(len(tok.base), bool)
    for job in run.steps(run.batches([len(b) for b in tok.base], 2), "accuracy"):
        rows, ans = tok.rows(job)
        s = run.call(backend.answer_scores, rows, ans, rank="top")
        out.clean(job, s)
        p, top, a = len(job), s.top.numpy(), ans.numpy()
        correct[job] = (top[p:] == a[p:, 0]) & (top[:p] == a[:p, 1])
    out.correct = correct
    return correct


def _exact(run: Run, tok: Tokens, grid: Grid, metric: str, out: Outputs, keep: np.ndarray) -> None:
    lengths = [len(b) for b in tok.base]
    passes = plan_passes([lengths[i] for i in keep], grid, run.batch_size)
    shared = [_shared_prefix(b, s) for b, s in zip(tok.base, tok.source)]
    for job in run.steps(passes, "patching"):
        pairs = [int(keep[j]) for j in job.pairs]
        rows, ans = tok.rows(pairs)
        patches, copies = _patches(PatchPass(pairs, job.units), grid.layers, shared)
        s = run.call(backend.answer_scores, rows, ans, patches, rank="top")
        _fill(s, ans.numpy(), pairs, copies, metric, out)


def patch_start(site: str, position: int, shared: int) -> int | None:
    """Where a unit's patched copy starts (:attr:`backend.Patch.positions`) for prompts sharing
    their first ``shared`` tokens, or None where the patch changes nothing (no copy): its
    ``position``, None below ``shared``; a whole pattern's (``position`` its last token) at
    ``shared``, its first query that can differ, None when the prompts are the same."""
    if position < shared:
        return None
    return shared if site in WHOLE_PROMPT_SITES else position


def _shared_prefix(base: list[int], source: list[int]) -> int:
    """How many leading tokens the two prompts share. Below that position every activation of
    the source run equals the base run's (causal attention), so a patch there changes nothing:
    its effect is the clean run's, known without a forward pass (few-shot exemplars are such a
    prefix, often most of the prompt)."""
    return next((i for i, (b, s) in enumerate(zip(base, source)) if b != s), min(len(base), len(source)))


@dataclass(frozen=True)
class Copies:
    """Where each patched copy of a pass sits and where its value goes, one entry per copy:
    its output ``row`` (its clean base row where the patch changes nothing), its ``pair``, the
    output row of its clean ``base`` row, and its unit."""

    row: np.ndarray
    pair: np.ndarray
    base: np.ndarray
    units: list[Unit]


def _patches(job: PatchPass, layers: list[int], shared: Sequence[int] = ()) -> tuple[list[backend.Patch], Copies]:
    """The :class:`backend.Patch` per (site, layer) of a pass whose input rows are
    :meth:`Tokens.rows` (p source rows, then p clean base rows), and the :class:`Copies` of
    its output rows. A unit at a position before pair i's ``shared[i]`` (its prompts' common
    prefix, :func:`_shared_prefix`) gets no copy: its output row is the clean base row's. A
    whole-pattern unit's copy starts there: the pattern's rows above are the same in both runs."""
    p = len(job.pairs)
    entries: dict[tuple, list[tuple[int, int, Unit, int]]] = defaultdict(list)
    noop: list[tuple[int, int, Unit]] = []
    for j, i in enumerate(job.pairs):
        for u in job.units:
            start = patch_start(u.site, u.position, shared[i] if shared else 0)
            if start is None:
                noop.append((j, i, u))
            else:
                entries[(u.site, layers[u.li])].append((j, i, u, start))
    patches, pair, base, units = [], [], [], []
    for (site, layer), es in entries.items():
        heads = torch.tensor([e[2].head for e in es]) if site in UNIT_DIMS else None
        patches.append(backend.Patch(site, 0 if site in EMBED_SITES else layer, torch.tensor([p + e[0] for e in es]),
                                     torch.tensor([e[0] for e in es]), torch.tensor([e[3] for e in es]), heads))
        for j, i, u, _ in es:
            pair.append(i)
            base.append(p + j)
            units.append(u)
    row = list(2 * p + np.arange(len(units)))
    for j, i, u in noop:  # the clean base row stands for the patched run
        row.append(p + j)
        pair.append(i)
        base.append(p + j)
        units.append(u)
    return patches, Copies(np.array(row, int), np.array(pair, int), np.array(base, int), units)


def _fill(s: backend.Scores, ans: np.ndarray, pairs: list[int], c: Copies, metric: str, out: Outputs) -> None:
    """One pass's metric values and prediction codes into ``out`` at [pair, layer, position(, head)]."""
    out.clean(pairs, s)
    lp, lg, top = s.log_probs.double().numpy(), s.logits.double().numpy(), s.top.numpy()
    r, b = c.row, c.base
    val = metrics.effect(metric, lp[b], lg[b], lp[r], lg[r])
    code = np.where(top[r] == top[b], 0, np.where(top[r] == ans[b, 1], 1, 2)).astype(np.int8)
    site = np.array([u.site for u in c.units])
    li, pi = np.array([u.li for u in c.units], int), np.array([u.pi for u in c.units], int)
    head = np.array([-1 if u.head is None else u.head for u in c.units], int)
    for name, v in out.values.items():
        m = site == name
        index = (c.pair[m], li[m], pi[m]) + ((head[m],) if name in UNIT_DIMS else ())
        v[index] = val[m]
        out.prediction[name][index] = code[m]


# --------------------------------------------------------------------------- attribution
def _attribution(run: Run, tok: Tokens, grid: Grid, metric: str, ig_steps: int, out: Outputs,
                 keep: np.ndarray) -> None:
    """Attribution patching: per pass of ``p`` pairs, one forward and backward over the p source
    rows, the p base rows and (integrated gradients) ``ig_steps``·p interpolated rows; the
    gradient of the metric's target dotted with (source − base) activations (see
    :func:`backend.attributions`). ``stolfo_ie``'s first-order estimate is half the change of
    log P(r2) − log P(r1)."""
    units = [(s, layer) for s in grid.sites for layer in grid.layers]
    target = "logit_diff" if metric == "logit_diff" else "log_prob_diff"
    scale = 1.0 if metric == "logit_diff" else 0.5
    rows_per_pair = 2 + (ig_steps if ig_steps > 1 else 0)
    lengths = [len(tok.base[i]) for i in keep]
    for batch in run.steps(run.batches(lengths, rows_per_pair), "attribution"):
        job = [int(keep[j]) for j in batch]
        rows, ans = tok.rows(job)
        attr, scores = run.call(backend.attributions, rows, ans, units, target, ig_steps=ig_steps)
        t = rows.shape[1]
        out.clean(job, scores)
        for (s, layer), a in zip(units, attr):
            a = scale * a.numpy()  # (p, T) or (p, T, heads)
            li = grid.layers.index(layer)
            if grid.positions == "last":
                out.values[s][job, li, 0] = a[:, t - 1]
            else:
                out.values[s][job, li, :t] = a


def tokenize_pairs(model, pairs: list[PromptPair]) -> Tokens:
    """Base ids, source ids and [base, source] answer ids per pair, or a one-line error for a
    misaligned pair, an out-of-vocabulary word or a multi-token answer. Where the tokenizer
    writes the space before an answer as a token of its own (LLaMA's digits), every prompt ends
    with that space token and the answers are the tokens after it (:func:`backend.answer_ids`)."""
    flat, suffix = backend.answer_ids(model, [a for p in pairs for a in (p.base_answer, p.source_answer)],
                                      joined=joined_answers(pairs))
    base_ids = backend.tokenize(model, [p.base for p in pairs], suffix)
    source_ids = backend.tokenize(model, [p.source for p in pairs], suffix)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    answers = []
    for k, (p, b, s) in enumerate(zip(pairs, base_ids, source_ids)):
        if len(b) != len(s):
            raise UsageError(f"pair {k} is misaligned for this model's tokenizer ({len(b)} vs {len(s)} tokens); "
                             f"generate pairs with tokenizer=model.tokenizer")
        if unk is not None and (unk in b or unk in s):
            raise UsageError(f"pair {k} has words outside this model's vocabulary: {p.base!r}")
        ids = flat[2 * k:2 * k + 2]
        if None in ids:
            bad = p.base_answer if ids[0] is None else p.source_answer
            raise UsageError(f"answer {bad!r} of pair {k} is not a single token for this model; "
                             f"generate pairs with tokenizer=model.tokenizer or lower max_n")
        answers.append(ids)
    return Tokens(base_ids, source_ids, answers)


def _token_strings(model, base_ids, positions, t_max):
    tok = model.tokenizer
    if positions == "last":
        return [[tok.convert_ids_to_tokens(b[-1])] for b in base_ids]
    return [tok.convert_ids_to_tokens(b) + [""] * (t_max - len(b)) for b in base_ids]


def _dataset(pairs, out: Outputs, layers, pos_coord, n_units, tokens, lengths, attrs, metric,
             predictions: bool) -> xr.Dataset:
    coords: dict[str, Any] = {
        "prompt": ("prompt", np.arange(len(pairs)), {"long_name": "prompt pair index"}),
        "layer": ("layer", np.array(layers), {"long_name": "0-based layer (−1: the embeddings)"}),
        "position": ("position", np.array(pos_coord),
                     {"long_name": "0-based token index (−1: each prompt's last token)"}),
        "base": ("prompt", [p.base for p in pairs]),
        "source": ("prompt", [p.source for p in pairs]),
        "base_answer": ("prompt", [p.base_answer for p in pairs]),
        "source_answer": ("prompt", [p.source_answer for p in pairs]),
        "n_tokens": ("prompt", np.array(lengths)),
        "token": (("prompt", "position"), np.array(tokens, dtype=object)),
    }
    data = {}
    estimate = " (attribution estimate)" if attrs["method"] == METHODS["attribution"] else ""
    for s, v in out.values.items():
        dims_ = ("prompt", "layer", "position") + ((UNIT_DIMS[s],) if s in UNIT_DIMS else ())
        data[var_name(s)] = (dims_, v, {"metric": metric, "long_name": f"{metric} of patching {s}{estimate}",
                                        "units": metrics.units(metric)})
        if predictions:
            data[f"{var_name(s)}_prediction"] = (dims_, out.prediction[s], {
                "long_name": f"top token after patching {s}",
                "flag_values": np.array([-1, *PREDICTION_CODES], np.int8),
                "flag_meanings": " ".join(["no_value"] + [v.replace(" ", "_") for v in PREDICTION_CODES.values()])})
    for s, dim in UNIT_DIMS.items():
        if s in out.values:
            coords[dim] = np.arange(n_units[s])
    p_base, p_source = np.exp(out.base_lp), np.exp(out.source_lp)
    data["clean_p_base"] = ("prompt", p_base[:, 0], {"long_name": "P(base answer | base prompt)", "units": "1"})
    data["clean_p_source"] = ("prompt", p_base[:, 1], {"long_name": "P(source answer | base prompt)", "units": "1"})
    data["source_prompt_p_base"] = ("prompt", p_source[:, 0], {"long_name": "P(base answer | source prompt)",
                                                               "units": "1"})
    data["source_prompt_p_source"] = ("prompt", p_source[:, 1], {"long_name": "P(source answer | source prompt)",
                                                                 "units": "1"})
    total = metrics.effect(metric, out.base_lp, out.base_lg, out.source_lp, out.source_lg)
    if out.correct is not None:  # like every effect, only for the pairs the model gets right
        total = np.where(out.correct, total, np.nan)
    data["total_effect"] = ("prompt", total, {"long_name": f"{metric} of replacing the base prompt by the source "
                                                           f"prompt (total effect)", "units": metrics.units(metric)})
    if out.correct is not None:
        data["correct"] = ("prompt", out.correct.astype(np.int8), {
            "long_name": "top token is r1 on the base prompt and r2 on the source prompt (1) or not (0)"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def unit_label(coords: dict[str, Any]) -> str:
    """A unit's short name from its coordinates: H3 (head), N488 (neuron), D17 (dimension), '' for none."""
    return (f"H{coords['head']}" if "head" in coords else f"N{coords['neuron']}" if "neuron" in coords
            else f"D{coords['dimension']}" if "dimension" in coords else "")


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """Clean performance and the ``top`` sites with the largest mean effect (at the last
    checkpoint of a sweep), with their median: ``stolfo_ie`` divides by probabilities that
    are tiny on a confident model, so a few prompts can dominate the mean."""
    from rich.table import Table

    from ..results.io import site_variables
    from .patch_analysis import at_last_token, prediction_change

    p = ds["clean_p_base"]
    sweep = "checkpoint" in ds.dims
    clean = (" · ".join(f"{c} {v:.3f}" for c, v in zip(ds["checkpoint"].values, p.mean("prompt").values))
             if sweep else f"{float(p.mean()):.3f}")
    head = (f"{ds.attrs['task']} · {model_at(ds)} · {ds.sizes['prompt']} pairs · "
            f"metric = {ds.attrs['metric']} · mean P(base answer) = {clean}")
    rows = []
    last = (lambda x: x.isel(checkpoint=-1) if "checkpoint" in x.dims else x)
    # a whole-prompt site holds one value per prompt, at that prompt's own last token: with prompts of
    # several lengths an all-position result spreads it over positions, so it is read back first
    pooled = {v for v in site_variables(ds) if v in WHOLE_PROMPT_SITES and ds.sizes["position"] > 1}
    for v in site_variables(ds):
        da = last(ds[v])
        if v in pooled:
            da = at_last_token(da, ds).drop_vars("position").expand_dims(position=[-1], axis=2)
        mean, median = da.mean("prompt"), da.median("prompt")
        flat = np.abs(mean.values).ravel()
        flat = np.where(np.isfinite(flat), flat, -np.inf)  # NaN (no such site, e.g. embed_dim at layer 2) sorts last
        best = np.argsort(-flat, kind="stable")[:top]  # a neuron sweep has thousands of sites: rank in numpy
        for k in best:
            idx = np.unravel_index(k, mean.shape)
            val = float(mean.values[idx])
            if np.isfinite(val):
                coords = {d: mean[d].values[i] for d, i in zip(mean.dims, idx)}
                rows.append((abs(val), val, float(median.values[idx]), v, coords))
    rows.sort(key=lambda r: -r[0])
    at = f" at checkpoint {ds['checkpoint'].values[-1]}" if sweep else ""
    table = Table(title=f"top {top} sites by |mean effect|{at}")
    moved = prediction_change(ds) if f"{site_variables(ds)[0]}_prediction" in ds else None
    for col in ("site", "layer", "position", "token", "unit", "mean effect", "median") + (
            ("→ source",) if moved is not None else ()):
        table.add_column(col)
    for _, val, med, v, c in rows[:top]:
        pos = int(c["position"])
        if v in pooled:  # each prompt's last token
            tokens = {str(ds["token"].values[i, n - 1]) for i, n in enumerate(ds["n_tokens"].values)}
        else:
            tokens = set(str(t) for t in ds["token"].values[:, list(ds["position"].values).index(pos)] if t)
        tok = tokens.pop() if len(tokens) == 1 else "(varies)"
        extra = []
        if v in pooled and moved is not None:
            code = at_last_token(last(ds[f"{v}_prediction"]), ds).sel({d: x for d, x in c.items() if d != "position"})
            extra = [f"{float((code == 1).sum() / (code >= 0).sum()):.0%}"]
        elif moved is not None:
            extra = [f"{float(last(moved[v].sel(change='desired', **c))):.0%}"]
        # positions="last" with prompts of one length T holds position T-1: say it is the last token
        where = "last" if pos == -1 else f"{pos} (last)" if ds.attrs.get("positions") == "last" else str(pos)
        table.add_row(v, str(c["layer"]), where, tok,
                      unit_label(c), f"{val:+.4g}", f"{med:+.4g}", *extra)
    if "correct" in ds:
        correct = ds["correct"].isel(checkpoint=-1) if "checkpoint" in ds["correct"].dims else ds["correct"]
        head += f" · {int(correct.sum())} answered correctly (the others are NaN)"
    return [head, table]
