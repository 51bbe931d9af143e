"""Binding IDs (Feng & Steinhardt 2024, "How do language models bind entities in context?").

Contexts state n entity–attribute pairs ("Alice lives in Paris . Bob lives in Rome .") and
ask for one entity's attribute. The answer is read among the candidate attributes (those of
the context, plus the donor's in attribute substitution): ``correct`` = the expected one
has the highest logit. All edits act on the residual stream at one token position at every
depth (embeddings and every layer output), replacing it by a clean value (plus a vector).

- **Factorizability**: in context c, the activations of entity k (or attribute k) are
  replaced by those of entity k (attribute k) of another context c' at the same position.
  Entity: the query names c''s entity, which c never mentions; binding by ID predicts c's
  attribute k. Attribute: the query names c's entity k; binding by ID predicts c''s
  attribute k, which c never mentions.
- **Position independence**: the position ids of statements 0 and 1 are exchanged (tokens
  stay in place, so only the positions the model sees change); accuracy against the clean run.
- **Mean interventions**: binding-ID difference vectors Δ_E = mean(h[E1] − h[E0]) and
  Δ_A = mean(h[A1] − h[A0]) per depth over ``n_estimate`` other contexts (seed + 1). Adding
  Δ to the first pair and subtracting it from the second (entity or attribute tokens) should
  swap the bindings: the query for entity 0 then answers attribute 1 and vice versa
  (``swap``). Baseline: random vectors with the same norm at each depth.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .. import backend
from .. import remote as _remote
from ..backend import resid as _br
from ..errors import UsageError
from ..models import load_model, model_info
from ..progress import progress_bar
from ..results.io import provenance
from ..tasks.binding import BindingContext, binding_contexts

INTERVENTIONS = ("entity", "attribute")
VECTORS = ("mean", "random")


def _positions(model: Any, ctx: BindingContext, text: str) -> tuple[list[int], list[int], list[int]]:
    """Token ids of ``text`` and the token index of each entity and attribute in its context;
    each must be one token."""
    tok = model.tokenizer
    enc = tok(text, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], enc["offset_mapping"]

    def find(word: str, start: int) -> int:
        at = text.index(word, start)
        hits = [i for i, (a, b) in enumerate(spans) if a <= at < b]  # spans never overlap: at most one
        if not hits or text[slice(*spans[hits[0]])].strip() != word:
            raise UsageError(f"{word!r} is not a single token for this tokenizer; binding needs one-token names")
        return hits[0]

    ents, atts, cursor = [], [], 0
    for e, a in zip(ctx.entities, ctx.attributes):
        ents.append(find(e, cursor))
        atts.append(find(a, text.index(e, cursor) + len(e)))
        cursor = text.index(a, cursor) + len(a)
    return ids, ents, atts


def binding(
    model: Any,
    *,
    n_contexts: int = 200,
    n_pairs: int = 2,
    n_estimate: int = 200,
    seed: int = 0,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
) -> xr.Dataset:
    """Factorizability, position independence and mean interventions (see module doc).

    Returns, per context (``prompt``) and queried entity (``query``): ``correct`` (clean),
    ``factor_correct`` (target = entity/attribute), ``position_correct``, ``swap``
    (intervention = entity/attribute, vector = mean/random; 1 = the other pair's attribute
    won); their means ``accuracy``, ``factor_accuracy``, ``position_accuracy``,
    ``swap_accuracy``; and ``delta_norm`` (intervention, depth): |Δ| per depth (0 = embeddings).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if n_pairs < 2:
        raise UsageError(f"binding needs at least 2 pairs per context (got {n_pairs})")
    _remote.preflight(model, remote)
    contexts = binding_contexts(n_contexts, n_pairs, seed)
    donors = contexts[1:] + contexts[:1]  # context c's donor is context c + 1
    rows = []  # one per (context, query)
    for c, d in zip(contexts, donors):
        for k in range(n_pairs):
            ids, ents, atts = _positions(model, c, c.text(k))
            span = ents[1] - ents[0]  # one statement; all have the same length (one-token words)
            perm = list(range(len(ids)))
            perm[ents[0]:ents[0] + span], perm[ents[1]:ents[1] + span] = perm[ents[1]:ents[1] + span], \
                perm[ents[0]:ents[0] + span]
            rows.append({"ids": ids, "ents": ents, "atts": atts, "k": k, "perm": perm,
                         "cand": backend.answer_tokens(model, list(c.attributes) + [d.attributes[k]], "attribute"),
                         "donor": _positions(model, d, d.text(k))[0],
                         "renamed": _positions(model, c, c.text(k, entity=d.entities[k]))[0],
                         "valid": (d.entities[k] not in c.entities, d.attributes[k] not in c.attributes)})
    if len({len(r["ids"]) for r in rows}) != 1:
        raise UsageError("binding contexts must all have the same token length for this tokenizer")
    n = len(rows)
    correct, position = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8)
    factor = np.full((2, n), np.nan)
    swap = np.zeros((2, 2, n), dtype=np.int8)
    per = max(1, batch_size // 2)
    chunks = [list(range(j, min(j + per, n))) for j in range(0, n, per)]
    none = torch.zeros(0, dtype=torch.long)

    def wins(scores, expect):  # the expected candidate has the top logit, on the last len(expect) rows
        return (scores.logits[-len(expect):].argmax(-1).numpy() == np.array(expect)).astype(np.int8)

    def field(chunk, key):
        return torch.tensor([rows[i][key] for i in chunk])

    for chunk in progress_bar(chunks, "binding", enabled=progress):
        p, ids, cand, ks = len(chunk), field(chunk, "ids"), field(chunk, "cand"), [rows[i]["k"] for i in chunk]
        correct[chunk] = wins(_br.edited_scores(model, ids, cand, none, none, none, remote=remote), ks)
        position[chunk] = wins(_br.edited_scores(model, ids, cand, none, none, none, position_ids=field(chunk, "perm"),
                                                 remote=remote), ks)
        for t, target in enumerate(INTERVENTIONS):  # factorizability: copy the donor's token activations in
            own = field(chunk, "renamed") if target == "entity" else ids
            pos = torch.tensor([rows[i]["ents" if target == "entity" else "atts"][rows[i]["k"]] for i in chunk])
            s = _br.edited_scores(model, torch.cat([field(chunk, "donor"), own]), torch.cat([cand, cand]),
                                  torch.arange(p, 2 * p), torch.arange(p), pos, remote=remote)
            got = wins(s, ks if target == "entity" else [n_pairs] * p)
            factor[t, chunk] = np.where([rows[i]["valid"][t] for i in chunk], got, np.nan)
    delta = _deltas(model, n_estimate, n_pairs, seed + 1, batch_size, remote)  # (2, depth, d)
    rand = torch.randn(delta.shape, generator=torch.Generator().manual_seed(seed), dtype=delta.dtype)
    rand = rand / rand.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True)
    for chunk in progress_bar(chunks, "mean interventions", enabled=progress):
        p, ids, cand = len(chunk), field(chunk, "ids"), field(chunk, "cand")
        other = [{0: 1, 1: 0}.get(rows[i]["k"], rows[i]["k"]) for i in chunk]  # pairs 0 and 1 swap bindings
        for t, target in enumerate(INTERVENTIONS):
            key = "ents" if target == "entity" else "atts"
            pos = torch.tensor([rows[i][key][0] for i in chunk] + [rows[i][key][1] for i in chunk])
            for v, vec in enumerate((delta[t], rand[t])):
                # rows p..2p-1 are edited copies of the clean rows 0..p-1: +Δ at pair 0, −Δ at pair 1
                add = torch.cat([vec[:, None].expand(-1, p, -1), -vec[:, None].expand(-1, p, -1)], 1)
                s = _br.edited_scores(model, torch.cat([ids, ids]), torch.cat([cand, cand]),
                                      torch.arange(p, 2 * p).repeat(2), torch.arange(p).repeat(2), pos, add,
                                      remote=remote)
                swap[t, v, chunk] = wins(s, other)
    return _dataset(model, contexts, n_pairs, correct, factor, position, swap, delta, n_estimate, seed, remote)


def _deltas(model, n_estimate, n_pairs, seed, batch_size, remote) -> torch.Tensor:
    """(2, depth, d): mean over contexts of h[pair 1] − h[pair 0] at the entity and attribute tokens."""
    if n_estimate < 1:
        raise UsageError(f"n_estimate must be >= 1 (got {n_estimate})")
    est = binding_contexts(n_estimate, n_pairs, seed)
    total = None
    for j in range(0, n_estimate, batch_size):
        rows = [_positions(model, c, c.text(0)) for c in est[j:j + batch_size]]
        pos = torch.tensor([[e[0], e[1], a[0], a[1]] for _, e, a in rows])
        h = _br.resid_at(model, torch.tensor([r[0] for r in rows]), pos, remote=remote).double()  # (b, D, 4, d)
        part = torch.stack([h[:, :, 1] - h[:, :, 0], h[:, :, 3] - h[:, :, 2]], 1).sum(0)  # (2, D, d)
        total = part if total is None else total + part
    return (total / n_estimate).float()


def _dataset(model, contexts, n_pairs, correct, factor, position, swap, delta, n_estimate, seed, remote) -> xr.Dataset:
    shape = (len(contexts), n_pairs)
    f = factor
    info = model_info(model)
    attrs = provenance(task="binding", task_params={"n_contexts": len(contexts), "n_pairs": n_pairs,
                                                    "n_estimate": n_estimate, "seed": seed},
                       model=info.name, model_path=info.path, revision=info.revision, method="binding_ids",
                       metric="accuracy", seed=seed, remote=remote)
    attrs["chance"] = 1 / n_pairs
    return xr.Dataset(
        {"correct": (("prompt", "query"), correct.reshape(shape)),
         "factor_correct": (("target", "prompt", "query"), f.reshape((2,) + shape),
                            {"long_name": "the attribute binding IDs predict wins after substitution (NaN: no "
                                          "new entity in the donor)"}),
         "position_correct": (("prompt", "query"), position.reshape(shape)),
         "swap": (("intervention", "vector", "prompt", "query"), swap.reshape((2, 2) + shape),
                  {"long_name": "the other pair's attribute wins after the intervention"}),
         "accuracy": ((), correct.mean()),
         "factor_accuracy": ("target", np.nanmean(f, axis=1)),
         "position_accuracy": ((), position.mean()),
         "swap_accuracy": (("intervention", "vector"), swap.mean(-1)),
         "delta_norm": (("intervention", "depth"), delta.norm(dim=-1).numpy(),
                        {"long_name": "norm of the binding-ID difference vector (depth 0 = embeddings)"})},
        coords={"prompt": np.arange(len(contexts)), "query": np.arange(n_pairs),
                "target": np.array(INTERVENTIONS, dtype=object), "intervention": np.array(INTERVENTIONS, dtype=object),
                "vector": np.array(VECTORS, dtype=object), "depth": np.arange(delta.shape[1]),
                "text": ("prompt", [c.text(0) for c in contexts])},
        attrs=attrs)
