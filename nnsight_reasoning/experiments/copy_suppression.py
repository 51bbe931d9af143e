"""Copy suppression by CSPA, the copy-suppression-preserving ablation (McDougall et al. 2023,
"Copy suppression: comprehensively understanding an attention head"), as circuits-over-time
scores it over training (``utils/cspa_functions.py``: ``get_cspa_results`` with
``interventions=["ov", "qk"]``, ``K_unembeddings=0.05``, ``K_semantic=1``,
``only_keep_negative_components=True``; ``get_performance_recovered``).

For a head (layer L) on running text, with everything read from one clean run and only the
head's direct effect on the logits changed (later layers are not rerun; the final norm's scale
stays the clean run's):

- **Mean ablation**: the head's output at position q (its share of the output projection,
  without bias) replaced by its mean at q over the first ``n_mean`` sequences.
- **CSPA**: at destination q, the sources k ≤ q whose token the residual stream entering layer
  L predicts most at q (the logit lens: that stream, centred for LayerNorm and divided by the
  final norm's scale at q, against the unembedding with the final norm's gain folded in and
  centred over the vocabulary) are kept: the top ⌈0.05·(q + 1)⌉ (``k_unembeddings``) among the
  first occurrences of tokens that are not function words, and every repeat of a chosen token
  (as the repository: where fewer sources qualify than that, e.g. at q = 0 where only the bos
  token is there, its threshold falls to the mask value and every source up to q is kept).
  The head's output becomes the mean at q plus, for each kept source, the negative part of the
  projection of A[q, k]·(out_k − mean_q) on the source token's unit unembedding (out_k its value
  times its output weights): the head keeps only its suppression of the tokens it attends to.
- **Score**: performance recovered = 1 − mean KL(orig ‖ CSPA) / mean KL(orig ‖ mean-ablated),
  over every sequence and position (1 = the head does nothing but copy suppression; 0 = CSPA
  is no better than mean ablation).

Data: ``nr.tasks.text_sequences`` (the repository: OpenWebText, ``stas/openwebtext-10k`` with
seed 6; its means over 100 sequences, its scores on the first 17 at 61 tokens).

Departures: the function words are the toolkit's list (:data:`FUNCTION_WORDS`, English function
words and punctuation, plus the tokenizer's special tokens), not the repository's list of 150
GPT-2 strings; the offline default text is the toolkit's task prompts, on which the embedded
model's heads are read.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import graph
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import as_index, dims
from ..tasks.tokens import TextSequences
from .heads import parse_heads

# tokens that never count as suppressed sources (matched after stripping spaces, lower case)
FUNCTION_WORDS = frozenset(
    "a an the to of in on at by for from with as into about that this these those it its is was are were be been "
    "and or but not all now he she her his him my me you your yours we our they their them i "
    ". , ? ! ' \" : ; - ( ) = +".split())


def _function_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid]).strip().lower()
        if not text or text in FUNCTION_WORDS or (len(text) == 1 and ord(text) < 32):
            ids.add(tid)
    return ids


def _check_heads(heads: Sequence[str] | str | None, n_layers: int, n_heads: int, start_layer: int) -> list[tuple]:
    first = as_index(start_layer)  # not a bool: True is no layer 1
    if first is None or not 0 <= first < n_layers:
        raise UsageError(f"start_layer must be an integer from 0 to {n_layers - 1} (got {start_layer!r})")
    start_layer = first
    if heads is None:
        return [(layer, h) for layer in range(start_layer, n_layers) for h in range(n_heads)]
    return parse_heads(heads, n_layers, n_heads)


@experiment("cspa", batch_size=16, reads_weights="CSPA (the unembedding and output weights)")
def copy_suppression(
    run: Run,
    sequences: TextSequences,
    *,
    heads: Sequence[str] | str | None = None,
    start_layer: int = 0,
    n_mean: int = 100,
    n_eval: int = 17,
    k_unembeddings: float = 0.05,
) -> xr.Dataset:
    """CSPA's performance recovered for every head (definitions in
    :mod:`nnsight_reasoning.experiments.copy_suppression`).

    Parameters
    ----------
    model : a loaded local model or a name/directory (the readout weights are read).
    sequences : ``nr.tasks.text_sequences(n_sequences=100, seq_len=61, tokenizer=model.tokenizer)``
        (``source="stas/openwebtext-10k"`` for the repository's data).
    heads : ``["a3.1", …]``; default every head of ``start_layer`` and later.
    start_layer : the first layer scored when ``heads`` is not given (the repository: 2 or 6
        by model; layers before stay NaN).
    n_mean : the per-position means are over the first ``n_mean`` sequences (repository: 100).
    n_eval : CSPA is scored on the first ``n_eval`` sequences (repository: 17).
    k_unembeddings : the fraction of positions up to q whose tokens are kept as suppressed
        sources at q (repository: 0.05).

    Returns
    -------
    Dataset over (layer, head): ``cspa`` (performance recovered, 1 = all of the head's effect is
    copy suppression), ``kl_cspa`` and ``kl_ablated`` (mean KL(orig ‖ ·), nats); NaN for heads not
    scored. With ``revisions`` every variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.copy_suppression(model, nr.tasks.text_sequences(100, 61, tokenizer=model.tokenizer))
    >>> ds.cspa
    """
    if not 0 < k_unembeddings <= 1:
        raise UsageError(f"k_unembeddings must be in (0, 1] (got {k_unembeddings!r})")
    n_mean, n_eval = (checked_int(name, v, 1, len(sequences), bound=f"from 1 to the {len(sequences)} sequences")
                      for name, v in (("n_mean", n_mean), ("n_eval", n_eval)))
    d = dims(run.model)
    n_layers, n_heads = d["n_layers"], d["n_heads"]
    chosen = _check_heads(heads, n_layers, n_heads, start_layer)
    ids = torch.tensor(sequences.ids)
    t = ids.shape[1]
    weights = graph.readout(run.model)
    # per-position mean of every head's output over the first n_mean sequences: (T, L, H, d)
    total, _ = run.summed(graph.node_output_sums, ids[:n_mean], "head means")  # (T, n_up, d): input, heads, MLP
    mean = total[:, 1:].reshape(t, n_layers, n_heads + 1, -1)[:, :, :n_heads] / n_mean
    function = torch.tensor(sorted(_function_ids(run.tokenizer)))
    kl_c = np.zeros((n_layers, n_heads))
    kl_a = np.zeros((n_layers, n_heads))
    for job in run.steps(run.batches([t] * n_eval), "CSPA"):
        inner = run.call(graph.head_internals, ids[job])
        for i, row in enumerate(job):
            one = inner.row(i)
            for layer, h in chosen:
                c, a = cspa_kl(one, ids[row], layer, h, mean[:, layer, h], weights, function, k_unembeddings)
                kl_c[layer, h] += c.sum()
                kl_a[layer, h] += a.sum()
    scored = np.zeros((n_layers, n_heads), bool)
    scored[tuple(np.array(chosen).T)] = True
    kl_c = np.where(scored, kl_c / (n_eval * t), np.nan)
    kl_a = np.where(scored, kl_a / (n_eval * t), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        recovered = 1 - kl_c / kl_a
    lh = ("layer", "head")
    return xr.Dataset(
        {"cspa": (lh, recovered, {"long_name": "performance recovered by CSPA: 1 − KL(CSPA) / KL(mean ablation)",
                                  "units": "1"}),
         "kl_cspa": (lh, kl_c, {"long_name": "KL(orig ‖ CSPA), mean over sequences and positions", "units": "nats"}),
         "kl_ablated": (lh, kl_a, {"long_name": "KL(orig ‖ mean-ablated), mean over sequences and positions",
                                   "units": "nats"})},
        coords={"layer": np.arange(n_layers), "head": np.arange(n_heads)},
        attrs={"method": "cspa", "metric": "performance_recovered", "k_unembeddings": float(k_unembeddings),
               "n_mean": n_mean, "n_eval": n_eval, "seq_len": t, "start_layer": start_layer,
               "heads": ",".join(f"a{layer}.{h}" for layer, h in chosen)})


def cspa_kl(run: graph.HeadInternals, toks: torch.Tensor, layer: int, head: int, mean: torch.Tensor,
            weights: graph.Readout, function: torch.Tensor, k_unembeddings: float = 0.05
            ) -> tuple[np.ndarray, np.ndarray]:
    """(T,) KL(orig ‖ CSPA) and (T,) KL(orig ‖ mean-ablated) per position of one sequence, from its
    clean run's :class:`backend.graph.HeadInternals` (one row), its token ids ``toks`` (T,), the
    head's per-position mean output ``mean`` (T, d), the model's :class:`backend.graph.Readout`
    and the function-word token ids."""
    w_o = weights.w_o[layer, head]  # (k, d)
    pattern = run.pattern[layer, head]  # (q, k)
    out = run.value[layer, :, head] @ w_o  # (k, d): each source's output before attention weighting
    orig = run.z[layer, :, head] @ w_o  # (q, d): the head's output
    final_in = run.final_in
    scale = weights.scale(final_in)  # frozen, as the repository's cached ln_final scale

    def logprobs(resid):
        return torch.log_softmax(weights.logits(resid, scale), -1)

    lp_orig = logprobs(final_in)
    lp_abl = logprobs(final_in + mean - orig)
    # the unembedding as folded weights hold it: the final norm's gain in, centred over the vocabulary
    w_u = (weights.w_u - weights.w_u.mean(0)) * weights.gamma  # (V, d)
    u = w_u[toks]  # (k, d): each source token's direction
    resid = run.resid_pre[layer]
    resid = resid - resid.mean(-1, keepdim=True) if weights.center else resid
    lens = (resid / scale[:, None]) @ u.T  # (q, k)
    t = toks.shape[0]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal & ~torch.isin(toks, function)[None, :]
    vals = torch.where(allowed, lens, torch.tensor(-1e9, dtype=lens.dtype))
    first = torch.tensor([int(toks[k]) not in set(toks[:k].tolist()) for k in range(t)])
    vals_first = torch.where(first[None, :], vals, torch.tensor(-1e9, dtype=lens.dtype))
    keep_n = [math.ceil(k_unembeddings * (q + 1)) for q in range(t)]
    thresh = torch.stack([vals_first[q].topk(keep_n[q]).values[-1] for q in range(t)])  # (q,)
    selected = vals + 1e-6 >= thresh[:, None]
    norm = u.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 1e-6, u / norm.clamp_min(1e-6), torch.zeros_like(u))  # (k, d)
    delta = pattern[:, :, None] * (out[None, :, :] - mean[:, None, :])  # (q, k, d)
    coef = torch.einsum("qkd,kd->qk", delta, unit)
    coef = torch.where(selected & (coef < 0), coef, torch.zeros_like(coef))
    cspa = mean + coef @ unit  # (q, d)
    lp_cspa = logprobs(final_in + cspa - orig)
    p = lp_orig.exp()
    kl_cspa = (p * (lp_orig - lp_cspa)).sum(-1)
    kl_abl = (p * (lp_orig - lp_abl)).sum(-1)
    return kl_cspa.numpy(), kl_abl.numpy()


def summarize(ds: xr.Dataset, top: int = 6) -> list[Any]:
    """The heads whose effect CSPA recovers most (at the last checkpoint of a sweep)."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    v = last["cspa"].values
    order = [i for i in np.argsort(-np.nan_to_num(v, nan=-np.inf), axis=None)[:top] if np.isfinite(v.flat[i])]
    lines: list[Any] = [f"CSPA · {ds.attrs.get('n_eval')} sequences of {ds.attrs.get('seq_len')} tokens · "
                        f"{model_at(last)}"]
    lines.append("most copy suppression (performance recovered): " + ", ".join(
        f"a{i // v.shape[1]}.{i % v.shape[1]} {v.flat[i]:.2f} (KL {last['kl_cspa'].values.flat[i]:.3f} vs "
        f"{last['kl_ablated'].values.flat[i]:.3f})" for i in order))
    if "checkpoint" in ds.dims:
        best = ds["cspa"].max(("layer", "head"))
        lines.append("largest per checkpoint: " + ", ".join(f"{c} {float(b):.2f}"
                                                            for c, b in zip(ds["checkpoint"].values, best.values)))
    return lines
