"""The passes of the component graph a circuit experiment runs: the model's shape, the pairs' answers
and metric, ablation values, edge scores (EAP, EAP-IG) and edge-patched logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...backend import graph
from ...errors import UsageError
from ...runner import Run
from ...tasks import PromptPair
from ..patch import Tokens, tokenize_pairs

METRICS = ("logit_diff", "prob_diff")


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
        from ...sites import dims

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
    from ...backend import answer_token

    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)} for circuits (got {metric!r})")
    sets = any(p.alternatives or p.distractors for p in pairs)
    if not sets:
        ids = np.array(tok.answers, dtype=np.int64)
        return Answers(ids, np.tile([1.0, -1.0], (len(pairs), 1)), metric == "prob_diff", False)
    rows = []
    for k, p in enumerate(pairs):
        good, bad = (p.base_answer, *p.alternatives), (p.distractors or (p.source_answer,))
        ids = [answer_token(run.model, a, joined=p.joined) for a in (*good, *bad)]
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
    from ...backend import tokenize
    from ...sites import dims

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
    positional = ablation == "mean_positional"  # else the positions pooled: prompts of several lengths add up
    total, tokens = run.summed(graph.node_output_sums, ids, "ablation means",
                               reduce=None if positional else lambda s: s.sum(0, keepdim=True))
    return total / (tokens / total.shape[0] if positional else tokens)


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
