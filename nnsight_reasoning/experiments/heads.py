"""Attention-head scores per (layer, head) from attention patterns on repeated random tokens.

Input: ``n_sequences`` sequences ``<bos> x_1 … x_n x_1 … x_n``, the x drawn uniformly
without replacement from the vocabulary's non-special tokens (seeded). Positions: 0 is
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

- ``copy_suppression`` (CSPA-style; McDougall et al. 2023, "Copy suppression"): on the same
  sequences, mean over i = n+1..2n of −Σ_{k≥1} A[i, k]·DLE_h(i, x_k), in logits: how much the
  head lowers the logits of the tokens it attends to (negative = it copies them).
- ``successor`` (Gould et al. 2023, "Successor heads"): the ordinal tokens 1, 2, 3, …
  (``successor_tokens``, those that are single tokens) each run alone, so every head attends
  only to it; the score is the fraction of tokens t_j (all but the last) for which, among all
  the ordinal tokens, the head's output raises t_{j+1}'s logit most. Chance: 1/K. It has no
  ``prompt`` dim.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend.graph import head_logit_effects
from .. import remote as _remote
from ..errors import UsageError
from ..models import load_model, model_info
from ..progress import progress_bar
from ..results.io import provenance
from ..sites import dims
from ..tasks.base import single_token_id

SCORES = ("previous_token", "duplicate_token", "induction", "successor", "copy_suppression")
ATTENTION_SCORES = SCORES[:3]


def grid(ds: xr.Dataset, score: str) -> xr.DataArray:
    """The (layer, head) grid of one score (mean over sequences where it has them)."""
    v = ds[score]
    return v.mean("prompt") if "prompt" in v.dims else v


def repeated_tokens(tokenizer: Any, n_sequences: int, seq_len: int, seed: int) -> torch.Tensor:
    """(n_sequences, 1 + 2·seq_len) token ids: ``<bos>`` (else ``<eos>``), x, x."""
    special = set(tokenizer.all_special_ids)
    pool = np.array([i for i in range(len(tokenizer)) if i not in special])
    if seq_len < 2 or seq_len > len(pool):
        raise UsageError(f"seq_len must be between 2 and {len(pool)} (the tokenizer's ordinary tokens; got {seq_len})")
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if first is None:
        raise UsageError("head scores start each sequence with the tokenizer's bos (or eos) token; it has neither")
    rng = np.random.default_rng(seed)
    x = np.stack([rng.choice(pool, seq_len, replace=False) for _ in range(n_sequences)])
    return torch.tensor(np.concatenate([np.full((n_sequences, 1), first), x, x], 1), dtype=torch.long)


def head_scores(
    model: Any,
    *,
    n_sequences: int = 32,
    seq_len: int = 20,
    seed: int = 0,
    batch_size: int = 32,
    remote: bool | str = False,
    progress: bool = True,
    revisions: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """Previous-token, duplicate-token, induction, successor and copy-suppression scores of
    every head (definitions in the module doc).

    Returns a Dataset with one variable per score, dims ``(prompt, layer, head)`` (prompt =
    sequence; ``successor``: ``(layer, head)``); attention scores and ``successor`` are
    fractions in [0, 1], ``copy_suppression`` is in logits. ``ds.induction.mean("prompt")`` is
    the layer × head grid. ``uniform`` (along ``score``) is each score's chance level: uniform
    attention, a random ranking (successor), no effect (copy suppression). With ``revisions``
    every variable gains a leading ``checkpoint`` dim.
    """
    if revisions is not None:
        from ..runner import over_revisions

        def run(m):
            return head_scores(m, n_sequences=n_sequences, seq_len=seq_len, seed=seed, batch_size=batch_size,
                               remote=remote, progress=progress)

        return over_revisions(run, model, revisions, progress=progress, remote=remote)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if n_sequences < 1 or batch_size < 1:
        raise UsageError("n_sequences and batch_size must be >= 1")
    _remote.preflight(model, remote)
    ids = repeated_tokens(model.tokenizer, n_sequences, seq_len, seed)
    d = dims(model)
    n = seq_len
    out = {k: np.zeros((n_sequences, d["n_layers"], d["n_heads"])) for k in SCORES if k != "successor"}
    q_prev = np.arange(2, n + 1)
    q_rep = np.arange(n + 1, 2 * n + 1)
    chunks = [list(range(j, min(j + batch_size, n_sequences))) for j in range(0, n_sequences, batch_size)]
    traffic = _remote.Traffic()
    for chunk in progress_bar(chunks, "head scores", enabled=progress):
        a = backend.attention_probs(model, ids[chunk], range(d["n_layers"]), last_only=False,
                                    remote=remote).double().numpy()  # (b, L, H, T, T)
        out["previous_token"][chunk] = a[..., q_prev, q_prev - 1].mean(-1)
        out["duplicate_token"][chunk] = a[..., q_rep, q_rep - n].mean(-1)
        out["induction"][chunk] = a[..., q_rep, q_rep - n + 1].mean(-1)
        eff = head_logit_effects(model, ids[chunk], ids[chunk], remote=remote).numpy()  # (b,L,H,T,T)
        written = (a[..., q_rep, 1:] * eff[..., q_rep, 1:]).sum(-1)  # attention-weighted effect on attended tokens
        out["copy_suppression"][chunk] = -written.mean(-1)
    ordinals = successor_tokens(model.tokenizer)
    succ = successor_scores(model, ordinals, remote=remote)
    info = model_info(model)
    attrs = provenance(task="repeated_random_tokens", task_params={"n_sequences": n_sequences, "seq_len": seq_len,
                                                                   "seed": seed},
                       model=info.name, model_path=info.path, revision=info.revision, method="head_scores",
                       metric="attention_probability", seed=seed, remote=remote)
    attrs.update(n_forward_passes=2 * len(chunks) + 1, seq_len=seq_len,
                 successor_tokens=model.tokenizer.convert_ids_to_tokens(ordinals))
    if remote not in (False, "local"):
        attrs.update(traffic.as_attrs())
    names = {"previous_token": "attention to the previous token", "duplicate_token": "attention to the earlier "
             "copy of the same token", "induction": "attention to the token after the earlier copy",
             "copy_suppression": "lowering of the attended tokens' logits"}
    data = {k: (("prompt", "layer", "head"), v, {"long_name": names[k], "units": "logits" if k == "copy_suppression"
                                                  else "1"}) for k, v in out.items()}
    data["successor"] = (("layer", "head"), succ, {"long_name": "fraction of ordinal tokens whose successor the "
                                                                "head promotes most", "units": "1"})
    # chance: a head attending uniformly to every position it can see (1/(i+1) at query i);
    # a random ranking of the K ordinal tokens; no effect on the logits
    data["uniform"] = ("score", [np.mean(1 / (q_prev + 1)), np.mean(1 / (q_rep + 1)), np.mean(1 / (q_rep + 1)),
                                 1 / len(ordinals), 0.0],
                       {"long_name": "chance level of each score", "units": "1"})
    return xr.Dataset(data, coords={"prompt": np.arange(n_sequences), "layer": np.arange(d["n_layers"]),
                                    "head": np.arange(d["n_heads"]), "score": np.array(SCORES, dtype=object)},
                      attrs=attrs)


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


def successor_scores(model: Any, ordinals: Sequence[int], *, remote: bool | str = False) -> np.ndarray:
    """(layers, heads): the fraction of ``ordinals[j]`` (j < K − 1) for which the head's output,
    on the one-token input ``ordinals[j]``, raises ``ordinals[j + 1]`` most among all of them."""
    ids = torch.tensor(list(ordinals))
    eff = head_logit_effects(model, ids[:, None], ids[None].repeat(len(ids), 1), remote=remote)
    best = eff[:, :, :, 0].argmax(-1).numpy()  # (K, L, H)
    return (best[:-1] == np.arange(1, len(ids))[:, None, None]).mean(0)
