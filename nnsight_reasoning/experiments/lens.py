"""The logit lens: the answer as each layer's residual stream predicts it.

At each prompt's last position the residual stream after every layer (and the embeddings,
layer -1) is read through the model's own final norm and unembedding (and its logit soft cap,
Gemma 2's), the map the model applies to its last layer's output (nostalgebraist 2020), with the
answer's probability and rank, so that
"where does the answer appear" is a curve over layers (and over checkpoints with ``revisions``).

Rai & Yao's repository reads the residual stream in the middle of each layer, after its
attention and before its MLP: ``layer_residual_L`` is the input of layer L's ``ffn_norm``
(``scripts/Llama_refined.py:290-305``), read through ``model.norm`` and ``output.weight``,
softmax, top ``TOP_K = 10`` (``extract_mlp_updates``, ``:362-385``). ``read="mid"`` reads that
stream; the default, ``read="output"``, reads each layer's output, whose last layer is the
model's own output (a parallel-residual model, as the embedded one, has no stream between its
attention and MLP).

The lens of the last layer is the model's own next-token distribution: ``p_answer`` there equals
``nr.evaluate``'s (checked in ``tests/test_lens.py`` against plain Hugging Face hooks).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import graph
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment
from ..sites import EMBED_LAYER, check_layers, dims, parallel_residual
from ..tasks import Example, Examples
from .evaluate import scored_tokens

#: What ``read`` reads at layer L (layer -1 is the embeddings, the first layer's input, for both).
READS = {"output": "layer whose output is read (-1: the embeddings)",
         "mid": "layer whose residual between attention and MLP is read (-1: the embeddings)"}


@experiment("logit_lens", batch_size=256)
def logit_lens(run: Run, examples: Examples | Sequence[Example], *, layers: Sequence[int] | None = None,
               top_k: int = 10, read: str = "output") -> xr.Dataset:
    """The answer's probability and rank, and the top tokens, under the logit lens of each layer.

    ``batch_size`` counts rows of the unembedding: a prompt takes one per layer read.

    Parameters
    ----------
    examples : prompts with an answer each (``nr.tasks.examples("arithmetic", 64)``); where an
        example has a set of correct answers (greater-than, sentiment), the set counts.
    layers : layers to read (-1: the embeddings; default every layer and the embeddings).
    top_k : top tokens kept per prompt and layer (Rai & Yao's ``TOP_K = 10``).
    read : "output" (each layer's output; the last layer's lens is the model's own output) or
        "mid" (the residual between the layer's attention and its MLP, the input of the MLP's
        norm: Rai & Yao's ``layer_residual``; refused for parallel-residual models).

    Returns
    -------
    xarray.Dataset with dims ``prompt``, ``layer`` (-1 = the embeddings) and ``k`` (0 = the most
    probable): ``p_answer`` and ``answer_rank`` (prompt, layer; the answer's (set's) probability
    under the lens's softmax, and the rank of its best-ranked member, 0 = top-1 over the
    vocabulary), ``top_token`` (prompt, layer, k; token ids), ``top_text`` (the same decoded),
    ``top_p`` (their probabilities), and per layer ``accuracy`` (share of prompts whose top-1
    token is the answer), ``mean_p_answer`` and ``mean_rank``; coordinates ``text`` and
    ``answer``. With ``revisions`` every variable gains a leading ``checkpoint`` dim.
    """
    items = list(examples)
    if not items:
        raise UsageError("no examples given")
    if read not in READS:
        raise UsageError(f"read must be one of {', '.join(READS)} (got {read!r})")
    if read == "mid" and parallel_residual(run.model):
        raise UsageError("read='mid' needs a residual stream between each layer's attention and MLP; this model's "
                         "attention and MLP read the same stream in parallel: use read='output'")
    vocab = len(run.tokenizer)
    top_k = checked_int("top_k", top_k, 1, vocab, bound=f"in 1..{vocab} (the vocabulary)")
    layer_list = check_layers(layers, dims(run.model)["n_layers"], embeddings=True)
    ids, answers, member, _ = scored_tokens(run.model, items)
    n, m = len(items), len(layer_list)
    lp, rank = np.zeros((n, m, answers.shape[1])), np.zeros((n, m), np.int64)
    top_ids, top_lp = np.zeros((n, m, top_k), np.int64), np.zeros((n, m, top_k))
    label = f"logit lens {getattr(examples, 'task', '')}".rstrip()
    for chunk in run.steps(run.batches([len(x) for x in ids], rows_per_item=m), label):
        got = run.call(graph.residual_lens, torch.tensor([ids[i] for i in chunk]), torch.from_numpy(answers[chunk]),
                       layer_list, top_k=int(top_k), read=read)
        lp[chunk], rank[chunk], top_ids[chunk], top_lp[chunk] = (t.numpy() for t in got)
    p = np.where(member[:, None], np.exp(lp), 0.0).sum(-1)  # (n, m): P(the answer set)
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
                "layer": ("layer", np.array(layer_list), {"long_name": READS[read]}),
                "k": ("k", np.arange(top_k), {"long_name": "rank among the lens's top tokens (0 = most probable)"}),
                "text": ("prompt", [e.prompt for e in items]),
                "answer": ("prompt", [e.answer for e in items])},
        attrs={"method": "logit_lens", "metric": "p_answer", "top_k": int(top_k), "read": read},
    )


def summarize(ds: xr.Dataset) -> list[Any]:
    """Per layer: accuracy, mean P(answer), mean rank and the lens's most common top token (at
    the last checkpoint of a sweep)."""
    from rich.table import Table

    sweep = "checkpoint" in ds.dims
    last = ds.isel(checkpoint=-1) if sweep else ds
    where = (f"{ds.attrs.get('model')} at checkpoint {ds['checkpoint'].values[-1]}" if sweep
             else f"{model_at(ds)}")
    table = Table(title=f"logit lens ({ds.attrs.get('read', 'output')}) · {ds.attrs.get('task')} · {where} · "
                        f"{ds.sizes['prompt']} prompts")
    for col in ("layer", "accuracy", "mean P(answer)", "mean rank", "most common top-1"):
        table.add_column(col, justify="left" if col.startswith("most") else "right")
    for li in last["layer"].values:
        r = last.sel(layer=li)
        first = r["top_token"].isel(k=0).values
        token, count = Counter(first.tolist()).most_common(1)[0]  # by id: distinct tokens may decode alike
        word = str(r["top_text"].isel(k=0).values[list(first).index(token)])
        table.add_row("embed" if li == EMBED_LAYER else str(li), f"{float(r.accuracy):.3f}",
                      f"{float(r.mean_p_answer):.3f}", f"{float(r.mean_rank):.1f}",
                      f"{word!r} ({count}/{ds.sizes['prompt']})" if count > 1 else "— (each its own)")
    return [table]
