"""Attention-head scores per (layer, head) from attention patterns on repeated random tokens.

Input: sequences ``<bos> x_1 … x_n x_1 … x_n`` from ``nr.tasks.repeated_tokens``, the x
drawn uniformly without replacement from the vocabulary's non-special tokens (seeded). Positions: 0 is
``<bos>``, 1..n the first copy, n+1..2n the second. With A[i, j] the attention probability
from query i to key j, each score is a mean over the sequence's positions (0 = never,
1 = always all attention on the pattern):

- ``previous_token`` = mean over i = 2..n of A[i, i − 1] (first copy only, so repetition
  plays no part);
- ``duplicate_token`` = mean over i = n+1..2n of A[i, i − n]: the earlier copy of the same
  token;
- ``induction`` = mean over i = n+1..2n of A[i, i − n + 1]: the token *after* the earlier
  copy, which predicts the next token (Olsson et al. 2022, "In-context learning and
  induction heads"; the same patterns as TransformerLens' ``head_detector``).

Two scores read what a head *writes*, through its direct logit effect DLE_h(q, v): the head's
output at position q mapped to the logit of token v by the final norm (its scale frozen at the
run's value) and the unembedding, centred over the vocabulary (``backend.graph.head_logit_effects``):

- ``copy_suppression_proxy`` (McDougall et al. 2023, "Copy suppression"; a proxy: their CSPA is
  :func:`nnsight_reasoning.copy_suppression`): on the same sequences, mean over i = n+1..2n of −Σ_{k≥1} A[i, k]·DLE_h(i, x_k), in logits: how much the
  head lowers the logits of the tokens it attends to (negative = it copies them).
- ``successor`` (Gould et al. 2023, "Successor heads"): the ordinal tokens 1, 2, 3, …
  (``successor_tokens``, those that are single tokens) each run alone, so every head attends
  only to it; the score is the fraction of tokens t_j (all but the last) for which, among all
  the ordinal tokens, the head's output raises t_{j+1}'s logit most. Chance: 1/K. It has no
  ``prompt`` dim.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import graph
from ..backend.graph import head_logit_effects
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import dims, require
from ..tasks.base import single_token_id
from ..tasks.tokens import OrdinalSequences, RepeatedTokens

SCORES = ("previous_token", "duplicate_token", "induction", "successor", "copy_suppression_proxy")
ATTENTION_SCORES = SCORES[:3]
PER_SEQUENCE = ("previous_token", "duplicate_token", "induction", "copy_suppression_proxy")  # with a prompt dim
_NAMES = {"previous_token": "attention to the previous token",
          "duplicate_token": "attention to the earlier copy of the same token",
          "induction": "attention to the token after the earlier copy",
          "copy_suppression_proxy": "lowering of the attended tokens' logits"}


def parse_heads(heads: Sequence[str] | str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Heads named aL.H (layer L, head H; a comma-separated string or a list), checked against
    the model's grid: sorted (layer, head) pairs, each once."""
    names = [n.strip() for n in (heads.split(",") if isinstance(heads, str) else heads) if str(n).strip()]
    out = []
    for name in names:
        try:
            layer, h = (int(v) for v in str(name).removeprefix("a").split("."))
        except ValueError:
            raise UsageError(f"heads are named aL.H (layer L, head H), e.g. a3.1 (got {name!r})") from None
        if not (0 <= layer < n_layers and 0 <= h < n_heads):
            raise UsageError(f"head {name} is outside this model's {n_layers} layers × {n_heads} heads")
        out.append((layer, h))
    if not out:
        raise UsageError("give at least one head (aL.H) or none for every head")
    return sorted(set(out))


def grid(ds: xr.Dataset, score: str) -> xr.DataArray:
    """The (layer, head) grid of one score (mean over sequences where it has them)."""
    v = ds[score]
    return v.mean("prompt") if "prompt" in v.dims else v


@experiment("head_scores", batch_size=32)
def head_scores(run: Run, sequences: RepeatedTokens) -> xr.Dataset:
    """Previous-token, duplicate-token, induction, successor and copy-suppression scores of
    every head (definitions in :mod:`nnsight_reasoning.experiments.heads`).

    Parameters
    ----------
    model : a loaded model or a name/directory (see :func:`nnsight_reasoning.load_model`).
    sequences : repeated random tokens, ``nr.tasks.repeated_tokens(n_sequences, seq_len, seed,
        tokenizer=model.tokenizer)``.

    Notes
    -----
    Batching: ``batch_size`` sequences per pass; each batch takes two passes (attention
    patterns, then the heads' direct logit effects), and the successor score one more.

    Returns
    -------
    Dataset with one variable per score, dims ``(prompt, layer, head)`` (prompt = sequence;
    ``successor``: ``(layer, head)``); attention scores and ``successor`` are fractions in
    [0, 1], ``copy_suppression_proxy`` is in logits. ``ds.induction.mean("prompt")`` is the
    layer × head grid. ``uniform`` (along ``score``) is each score's chance level: uniform
    attention, a random ranking (successor), no effect (copy suppression). With
    ``revisions`` every variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.head_scores(model, nr.tasks.repeated_tokens(n_sequences=32, seq_len=20))
    >>> ds.induction.mean("prompt")
    """
    sequences = _check(run, sequences)
    require(run.model, "logit_effects")  # copy suppression and successor scores need it: refuse before any pass
    ids = torch.tensor(sequences.ids, dtype=torch.long)
    n = sequences.seq_len
    d = dims(run.model)
    layers = list(range(d["n_layers"]))
    out = {k: np.zeros((len(sequences), d["n_layers"], d["n_heads"])) for k in PER_SEQUENCE}
    for chunk in run.steps(run.batches([ids.shape[1]] * len(sequences)), "head scores"):
        a = run.call(backend.attention_probs, ids[chunk], layers, last_only=False).double().numpy()  # (b,L,H,T,T)
        eff = run.call(head_logit_effects, ids[chunk], ids[chunk]).numpy()  # (b, L, H, T, T)
        for k, v in sequence_scores(a, eff, n).items():
            out[k][chunk] = v
    ordinals = successor_tokens(run.tokenizer)
    succ = successor_scores(run, ordinals)
    data = {k: (("prompt", "layer", "head"), v, {"long_name": _NAMES[k],
                                                 "units": "logits" if k == "copy_suppression_proxy" else "1"})
            for k, v in out.items()}
    data["successor"] = (("layer", "head"), succ, {"long_name": "fraction of ordinal tokens whose successor the "
                                                                "head promotes most", "units": "1"})
    data["uniform"] = ("score", chance_levels(n, len(ordinals)), {"long_name": "chance level of each score",
                                                                   "units": "1"})
    return xr.Dataset(data, coords={"prompt": ("prompt", np.arange(len(sequences)),
                                               {"long_name": "repeated-random-token sequence"}),
                                    "layer": np.arange(d["n_layers"]), "head": np.arange(d["n_heads"]),
                                    "score": ("score", np.array(SCORES, dtype=object),
                                              {"long_name": "head score (the variable of that name)"})},
                      attrs={"method": "head_scores", "metric": "attention_probability", "seq_len": n,
                             "successor_tokens": run.tokenizer.convert_ids_to_tokens(ordinals)})


@experiment("successor_ov", batch_size=1, reads_weights="the successor score (the static OV circuit)")
def successor_heads(run: Run, sequences: OrdinalSequences) -> xr.Dataset:
    """Successor heads as Tigges et al. score them over training
    (``get_new_successor_head_scores_over_time.py``, after Gould et al. 2023, "Successor
    heads"): from the weights alone, each head's OV circuit between the words of ordinal lists
    (:func:`nnsight_reasoning.tasks.ordinal_sequences`: numbers, number words, days, months, …)
    — a word's embedding through layer 0's MLP, the head's value and output weights and the
    unembedding (:func:`nnsight_reasoning.backend.graph.ov_logits`). An example is a word and the
    next one of its list, both single tokens; it succeeds when, among the list's next words, the
    head raises the true one most. No forward pass, so a local model only (not ``remote``).

    Returns a Dataset with ``successor_ov`` (layer, head): the fraction of all examples that
    succeed (the repository's score); ``successor_ov_by_list`` (list, layer, head) per list;
    ``n_examples`` (list); ``chance`` (list): 1 / the list's number of distinct next words.
    ``attrs["chance"]``: the examples' mean chance. With ``revisions`` it sweeps checkpoints.

    Examples
    --------
    >>> ds = nr.successor_heads(model, nr.tasks.ordinal_sequences(), revisions="all")
    >>> ds.successor_ov.max(("layer", "head"))
    """
    tok = run.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    lists = []
    for name, words in sequences:
        ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
        ids = [i if len(i) == 1 and i[0] != unk else None for i in ids]  # a word-level vocabulary's unknowns too
        pairs = [(a[0], b[0]) for a, b in zip(ids[:-1], ids[1:]) if a and b]
        lists.append((name, pairs))
    vocab = sorted({t for _, pairs in lists for pair in pairs for t in pair})
    if not vocab:
        raise UsageError("no word of these lists is a single token for this model's tokenizer")
    col = {t: k for k, t in enumerate(vocab)}
    logits = run.call(graph.ov_logits, vocab).numpy()  # (L, H, N, N)
    d = dims(run.model)
    by_list = np.full((len(lists), d["n_layers"], d["n_heads"]), np.nan)
    n_ex, chance, hits = [], [], np.zeros((d["n_layers"], d["n_heads"]))
    for k, (name, pairs) in enumerate(lists):
        n_ex.append(len(pairs))
        targets = sorted({col[b] for _, b in pairs})
        chance.append(1 / len(targets) if targets else np.nan)
        if not pairs:
            continue
        rows = logits[:, :, [col[a] for a, _ in pairs]][..., targets]  # (L, H, examples, targets)
        true = np.array([targets.index(col[b]) for _, b in pairs])
        ok = rows[..., np.arange(len(pairs)), true] == rows.max(-1)  # ties count, as the repository's ==
        by_list[k] = ok.mean(-1)
        hits += ok.sum(-1)
    total = sum(n_ex)
    if total == 0:
        raise UsageError("no two consecutive words of these lists are single tokens for this model's tokenizer")
    data = {"successor_ov": (("layer", "head"), hits / total, {"long_name": "fraction of ordinal examples whose "
                                                                           "successor the head's OV circuit "
                                                                           "promotes most", "units": "1"}),
            "successor_ov_by_list": (("list", "layer", "head"), by_list,
                                     {"long_name": "fraction of the list's examples whose successor the head's OV "
                                                   "circuit promotes most (NaN: no example)", "units": "1"}),
            "n_examples": ("list", np.array(n_ex, dtype=int), {"long_name": "single-token (word, next) pairs"}),
            "chance": ("list", np.array(chance), {"long_name": "1 / distinct next words", "units": "1"})}
    mean_chance = float(np.nansum(np.array(chance) * np.array(n_ex)) / total)
    return xr.Dataset(data, coords={"layer": np.arange(d["n_layers"]), "head": np.arange(d["n_heads"]),
                                    "list": ("list", np.array([n for n, _ in lists], dtype=object),
                                             {"long_name": "ordinal list (numbers, number words, days, months, …)"})},
                      attrs={"method": "successor_ov", "metric": "ov_successor_accuracy", "chance": mean_chance,
                             "n_examples": total})


def _check(run: Run, sequences: Any) -> RepeatedTokens:
    """The sequences, or a one-line error: ids outside this model's vocabulary, or longer than its
    context (the harness has checked that they are repeated tokens)."""
    vocab = len(run.tokenizer)
    if max(max(row) for row in sequences.ids) >= vocab:
        raise UsageError(f"the sequences hold token ids beyond this model's vocabulary ({vocab}); generate them with "
                         f"nr.tasks.repeated_tokens(..., tokenizer=model.tokenizer)")
    context = getattr(run.model.config, "max_position_embeddings", None)
    length = max(len(row) for row in sequences.ids)
    if context is not None and length > context:  # positions it never saw: scores there mean nothing
        raise UsageError(f"the sequences are {length} tokens, longer than this model's context ({context}): use "
                         f"seq_len <= {(context - 1) // 2}")
    return sequences


def query_positions(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The query positions the scores average over: 2..n (first copy, previous token) and
    n+1..2n (second copy)."""
    return np.arange(2, n + 1), np.arange(n + 1, 2 * n + 1)


def attention_scores(a: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The previous-token, duplicate-token and induction scores (b, layers, heads) of a batch from
    its attention probabilities ``a`` (b, layers, heads, T, T), ``n`` = seq_len."""
    q_prev, q_rep = query_positions(n)
    return {"previous_token": a[..., q_prev, q_prev - 1].mean(-1),
            "duplicate_token": a[..., q_rep, q_rep - n].mean(-1),
            "induction": a[..., q_rep, q_rep - n + 1].mean(-1)}


def sequence_scores(a: np.ndarray, eff: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The per-sequence scores (b, layers, heads) of a batch from its attention probabilities
    ``a`` and direct logit effects ``eff`` (both (b, layers, heads, T, T)), ``n`` = seq_len."""
    q_prev, q_rep = query_positions(n)
    written = (a[..., q_rep, 1:] * eff[..., q_rep, 1:]).sum(-1)  # attention-weighted effect on attended tokens
    return {**attention_scores(a, n), "copy_suppression_proxy": -written.mean(-1)}


def chance_levels(n: int, n_ordinals: int) -> list[float]:
    """Each score's chance level, in :data:`SCORES` order: a head attending uniformly to every
    position it can see (1/(i+1) at query i); a random ranking of the K ordinal tokens; no
    effect on the logits."""
    q_prev, q_rep = query_positions(n)
    return [np.mean(1 / (q_prev + 1)), np.mean(1 / (q_rep + 1)), np.mean(1 / (q_rep + 1)), 1 / n_ordinals, 0.0]


def successor_tokens(tokenizer: Any, limit: int = 100) -> list[int]:
    """Token ids of the numbers 1, 2, 3, … (as the model writes them after a space), up to the
    first that is not a single token or ``limit``."""
    ids = []
    for k in range(1, limit + 1):
        t = single_token_id(tokenizer, str(k))
        if t is None:
            break
        ids.append(t)
    if len(ids) < 3:
        raise UsageError("the successor score needs the numbers 1, 2, 3 as single tokens; this tokenizer splits them")
    return ids


def successor_scores(run: Run, ordinals: Sequence[int]) -> np.ndarray:
    """(layers, heads): the fraction of ``ordinals[j]`` (j < K − 1) for which the head's output,
    on the one-token input ``ordinals[j]``, raises ``ordinals[j + 1]`` most among all of them
    (one pass of K one-token rows)."""
    ids = torch.tensor(list(ordinals))
    eff = run.call(head_logit_effects, ids[:, None], ids[None].repeat(len(ids), 1))
    best = eff[:, :, :, 0].argmax(-1).numpy()  # (K, L, H)
    return (best[:-1] == np.arange(1, len(ids))[:, None, None]).mean(0)


def summarize(ds: xr.Dataset) -> list[Any]:
    """The three top heads of every score (mean over sequences) at the (last) checkpoint, with
    each score's chance level."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    names = [str(c) for c in ds["checkpoint"].values] if "checkpoint" in ds.dims else []
    where = f" over {len(names)} checkpoints ({names[0]} … {names[-1]})" if names else f"@{ds.attrs['revision']}"
    if ds.attrs.get("method") == "successor_ov":  # the static score (successor_heads)
        flat = last["successor_ov"].stack(lh=("layer", "head"))
        top = flat.argsort().values[::-1][:3]
        lines = [f"successor heads (static OV circuit) · {ds.attrs['model']}{where} · {ds.attrs['n_examples']} "
                 f"ordinal examples · chance {ds.attrs['chance']:.3f}",
                 f"top heads at {last.attrs['revision']}: " + ", ".join(
                     f"L{flat['lh'].values[i][0]}H{flat['lh'].values[i][1]} {float(flat.values[i]):.2f}" for i in top)]
        if names:
            best = ds["successor_ov"].max(("layer", "head")).values
            lines.append("best head per checkpoint: " + ", ".join(f"{n} {b:.2f}" for n, b in zip(names, best)))
        return lines
    head = (f"{ds.attrs.get('task')} · {ds.attrs['model']}{where} · {ds.sizes['prompt']} sequences of "
            f"2 × {ds.attrs.get('seq_len')} tokens")
    table = Table(title=f"top heads per score ({model_at(last)}, mean over sequences)")
    for col in ("score", "chance", "1st", "2nd", "3rd"):
        table.add_column(col)
    for score in SCORES:
        flat = grid(last, score).stack(lh=("layer", "head"))
        top = flat.argsort().values[::-1][:3]
        table.add_row(score, f"{float(last['uniform'].sel(score=score)):.2f}",
                      *[f"L{flat['lh'].values[i][0]}H{flat['lh'].values[i][1]} {float(flat.values[i]):.2f}" for i in top])
    return [head, table]
