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
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from . import backend
from . import remote as _remote
from .errors import UsageError
from .models import load_model, model_info
from .progress import progress_bar
from .results import provenance
from .sites import dims

SCORES = ("previous_token", "duplicate_token", "induction")


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
    """Previous-token, duplicate-token and induction scores of every head (see module doc).

    Returns a Dataset with one variable per score, dims ``(prompt, layer, head)`` (prompt =
    sequence), values in [0, 1]; ``ds.induction.mean("prompt")`` is the layer × head grid.
    ``uniform`` (along ``score``) is each score of a head attending uniformly (the chance level).
    With ``revisions`` every variable gains a leading ``checkpoint`` dim.
    """
    if revisions is not None:
        from .checkpoints import over_revisions

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
    out = {k: np.zeros((n_sequences, d["n_layers"], d["n_heads"])) for k in SCORES}
    q_prev = np.arange(2, n + 1)
    q_rep = np.arange(n + 1, 2 * n + 1)
    chunks = [list(range(j, min(j + batch_size, n_sequences))) for j in range(0, n_sequences, batch_size)]
    traffic = _remote.TRAFFIC.copy()
    for chunk in progress_bar(chunks, "head scores", enabled=progress):
        a = backend.attention_probs(model, ids[chunk], range(d["n_layers"]), last_only=False,
                                    remote=remote).double().numpy()  # (b, L, H, T, T)
        out["previous_token"][chunk] = a[..., q_prev, q_prev - 1].mean(-1)
        out["duplicate_token"][chunk] = a[..., q_rep, q_rep - n].mean(-1)
        out["induction"][chunk] = a[..., q_rep, q_rep - n + 1].mean(-1)
    info = model_info(model)
    attrs = provenance(task="repeated_random_tokens", task_params={"n_sequences": n_sequences, "seq_len": seq_len,
                                                                   "seed": seed},
                       model=info.name, model_path=info.path, revision=info.revision, method="head_scores",
                       metric="attention_probability", seed=seed, remote=remote)
    attrs.update(n_forward_passes=len(chunks), seq_len=seq_len)
    if remote not in (False, "local"):
        attrs.update(_remote.TRAFFIC.since(traffic))
    names = {"previous_token": "attention to the previous token", "duplicate_token": "attention to the earlier "
             "copy of the same token", "induction": "attention to the token after the earlier copy"}
    data = {k: (("prompt", "layer", "head"), v, {"long_name": names[k], "units": "1"}) for k, v in out.items()}
    # the score of a head that attends uniformly to every position it can see (1/(i+1) at query i)
    data["uniform"] = ("score", [np.mean(1 / (q_prev + 1)), np.mean(1 / (q_rep + 1)), np.mean(1 / (q_rep + 1))],
                       {"long_name": "score under uniform attention (chance level)", "units": "1"})
    return xr.Dataset(data, coords={"prompt": np.arange(n_sequences), "layer": np.arange(d["n_layers"]),
                                    "head": np.arange(d["n_heads"]), "score": np.array(SCORES, dtype=object)},
                      attrs=attrs)
