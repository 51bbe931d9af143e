"""The logit lens: the answer as each layer's residual stream predicts it.

At each prompt's last position the residual stream after every layer (and the embeddings,
layer -1) is read through the model's own final norm and unembedding, the map the model applies
to its last layer's output (nostalgebraist 2020). Rai & Yao's repository reads each layer's
residual this way, top ``TOP_K = 10`` tokens and their probabilities at the position being
predicted (``scripts/Llama_refined.py`` ``extract_mlp_updates``, ``model.norm`` then
``output.weight``, softmax); so does this module, with the answer's probability and rank added,
so that "where does the answer appear" is a curve over layers (and over checkpoints with
``revisions``).

The lens of the last layer is the model's own next-token distribution: ``p_answer`` there equals
``nr.evaluate``'s (checked in ``tests/test_lens.py`` against plain Hugging Face hooks).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import graph
from ..errors import UsageError
from ..runner import Run, experiment
from ..sites import EMBED_LAYER, dims
from ..tasks import Example, Examples
from ..tasks.base import joined_answers


@experiment("logit_lens", batch_size=64)
def logit_lens(run: Run, examples: Examples | Sequence[Example], *, layers: Sequence[int] | None = None,
               top_k: int = 10) -> xr.Dataset:
    """The answer's probability and rank, and the top tokens, under the logit lens of each layer.

    Parameters
    ----------
    examples : prompts with one answer each (``nr.tasks.examples("arithmetic", 64)``).
    layers : layers to read (-1: the embeddings; default every layer and the embeddings).
    top_k : top tokens kept per prompt and layer (Rai & Yao's ``TOP_K = 10``).

    Returns
    -------
    xarray.Dataset with dims ``prompt``, ``layer`` (-1 = the embeddings) and ``k`` (0 = the most
    probable): ``p_answer`` and ``answer_rank`` (prompt, layer; probability under the lens's
    softmax, rank 0 = top-1 over the vocabulary), ``top_token`` (prompt, layer, k; token ids),
    ``top_text`` (the same decoded), ``top_p`` (their probabilities), and per layer ``accuracy``
    (share of prompts whose top-1 token is the answer), ``mean_p_answer`` and ``mean_rank``;
    coordinates ``text`` and ``answer``. With ``revisions`` every variable gains a leading
    ``checkpoint`` dim.
    """
    items = list(examples)
    if not items:
        raise UsageError("no examples given")
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
        raise UsageError(f"top_k must be an integer >= 1 (got {top_k!r})")
    n_layers = dims(run.model)["n_layers"]
    layer_list = sorted(set(range(EMBED_LAYER, n_layers) if layers is None else layers))
    bad = [li for li in layer_list if not isinstance(li, (int, np.integer)) or not EMBED_LAYER <= li < n_layers]
    if bad or not layer_list:
        raise UsageError(f"layers must lie in {EMBED_LAYER}..{n_layers - 1} (-1: the embeddings; got {list(layers or [])})")
    # as evaluate's: every answer the token of " " + answer (or after a space suffix); an example with a
    # set of correct answers (``answers``) counts the set's probability and its best-ranked member
    sets = [list(getattr(e, "answers", (e.answer,))) for e in items]
    words = [a for s in sets for a in s]
    flat, suffix = backend.answer_ids(run.model, words, joined=joined_answers(items))
    if None in flat:
        raise UsageError(f"answer {words[flat.index(None)]!r} is not a single token for this model")
    ids = backend.tokenize(run.model, [e.prompt for e in items], suffix)
    width = max(len(s) for s in sets)
    starts = np.cumsum([0] + [len(s) for s in sets])
    answers = np.array([flat[a:b] + flat[a:a + 1] * (width - (b - a)) for a, b in zip(starts[:-1], starts[1:])])
    member = np.arange(width)[None] < np.array([len(s) for s in sets])[:, None]  # (n, K): padding excluded
    n, m = len(items), len(layer_list)
    lp, ranks = np.zeros((n, m, width)), np.zeros((n, m, width), np.int64)
    top_ids, top_lp = np.zeros((n, m, top_k), np.int64), np.zeros((n, m, top_k))
    for chunk in run.steps(run.batches([len(x) for x in ids]), f"logit lens {getattr(examples, 'task', '')}".rstrip()):
        got = run.call(graph.residual_lens, torch.tensor([ids[i] for i in chunk]), torch.from_numpy(answers[chunk]),
                       layer_list, top_k=top_k)
        lp[chunk], ranks[chunk], top_ids[chunk], top_lp[chunk] = (t.numpy() for t in got)
    p = np.where(member[:, None], np.exp(lp), 0.0).sum(-1)  # (n, m): P(the answer set)
    rank = np.where(member[:, None], ranks, np.iinfo(np.int64).max).min(-1)
    tok = run.tokenizer
    text = np.array([tok.decode([int(i)]) for i in top_ids.ravel()], dtype=object).reshape(top_ids.shape)
    return xr.Dataset(
        {"p_answer": (("prompt", "layer"), p, {"long_name": "P(answer) under the layer's logit lens", "units": "1"}),
         "answer_rank": (("prompt", "layer"), rank,
                         {"long_name": "rank of the answer under the layer's logit lens (0 = top-1)", "units": "1"}),
         "top_token": (("prompt", "layer", "k"), top_ids, {"long_name": "the lens's most probable tokens (ids)"}),
         "top_text": (("prompt", "layer", "k"), text, {"long_name": "the lens's most probable tokens"}),
         "top_p": (("prompt", "layer", "k"), np.exp(top_lp),
                   {"long_name": "probability of each top token under the lens", "units": "1"}),
         "accuracy": ("layer", (rank == 0).mean(0), {"long_name": "share of prompts whose lens top-1 is the answer",
                                                     "units": "1"}),
         "mean_p_answer": ("layer", p.mean(0), {"long_name": "mean P(answer) under the lens", "units": "1"}),
         "mean_rank": ("layer", rank.mean(0), {"long_name": "mean rank of the answer under the lens", "units": "1"})},
        coords={"prompt": ("prompt", np.arange(n), {"long_name": "prompt (example) index"}),
                "layer": ("layer", np.array(layer_list), {"long_name": "layer whose output is read (-1: the "
                                                                        "embeddings)"}),
                "k": ("k", np.arange(top_k), {"long_name": "rank among the lens's top tokens (0 = most probable)"}),
                "text": ("prompt", [e.prompt for e in items]),
                "answer": ("prompt", [e.answer for e in items])},
        attrs={"method": "logit_lens", "metric": "p_answer", "top_k": int(top_k),
               "read": "residual stream at the last position, through the final norm and the unembedding"},
    )


def summarize(ds: xr.Dataset) -> list[Any]:
    """Per layer: accuracy, mean P(answer), mean rank and the lens's most common top token (at
    the last checkpoint of a sweep)."""
    from rich.table import Table

    last = ds.isel(checkpoint=-1) if "checkpoint" in ds.dims else ds
    at = f" at checkpoint {ds['checkpoint'].values[-1]}" if "checkpoint" in ds.dims else ""
    table = Table(title=f"logit lens · {ds.attrs.get('task')} · {ds.attrs.get('model')}@{ds.attrs.get('revision')} · "
                        f"{ds.sizes['prompt']} prompts{at}")
    for col in ("layer", "accuracy", "mean P(answer)", "mean rank", "most common top-1"):
        table.add_column(col, justify="left" if col.startswith("most") else "right")
    for li in last["layer"].values:
        r = last.sel(layer=li)
        word, count = Counter(str(t) for t in r["top_text"].isel(k=0).values).most_common(1)[0]
        table.add_row("embed" if li == EMBED_LAYER else str(li), f"{float(r.accuracy):.3f}",
                      f"{float(r.mean_p_answer):.3f}", f"{float(r.mean_rank):.1f}",
                      f"{word!r} ({count}/{ds.sizes['prompt']})")
    return [table]
