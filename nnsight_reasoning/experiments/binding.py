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
  Δ_A = mean(h[A1] − h[A0]) per depth over the data's estimation contexts (an independent
  draw). Adding Δ to the first pair and subtracting it from the second (entity or attribute
  tokens) should swap the bindings: the query for entity 0 then answers attribute 1 and vice
  versa (``swap``). Baseline: random vectors with the same norm at each depth.

Data: ``nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed, family)``: the
family's statements (``cities`` by default; ``capitals``, ``fruits``, ``occupations`` and
``boxes`` in the question-and-answer frame); candidates are the context's answers (for
``capitals``, the capitals of the stated countries).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import resid as _br
from ..errors import UsageError
from ..runner import Run, experiment
from ..tasks.binding import BindingContext, BindingContexts

INTERVENTIONS = ("entity", "attribute")
VECTORS = ("mean", "random")
_NONE = torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class Located:
    """A prompt's token ids and the token index of each pair's entity and attribute."""

    ids: list[int]
    entities: list[int]
    attributes: list[int]


def locate(model: Any, ctx: BindingContext, text: str) -> Located:
    """Token ids of ``text`` (a prompt of ``ctx``) and where each entity and attribute of the
    context is; each must be one token."""
    return _locate(model, [(ctx, text)])[0]


def _locate(model: Any, items: Sequence[tuple[BindingContext, str]]) -> list[Located]:
    encoded = backend.tokenize_with_offsets(model, [text for _, text in items])
    return [_find_words(ctx, text, ids, spans) for (ctx, text), (ids, spans) in zip(items, encoded)]


def _find_words(ctx: BindingContext, text: str, ids: list[int], spans: list[tuple[int, int]]) -> Located:
    def find(word: str, start: int) -> int:
        at = text.index(word, start)
        hits = [i for i, (a, b) in enumerate(spans) if a <= at < b]  # spans never overlap: at most one
        if not hits or text[slice(*spans[hits[0]])].strip() != word:
            raise UsageError(f"{word!r} is not a single token for this tokenizer; binding needs one-token names")
        return hits[0]

    ents, atts, cursor = [], [], 0
    for e, a in zip(ctx.entities, ctx.attributes):
        ents.append(find(e, cursor))
        atts.append(find(a, spans[ents[-1]][1]))  # the attribute after its entity
        cursor = spans[atts[-1]][1]
    return Located(ids, ents, atts)


@dataclass(frozen=True)
class Query:
    """One (context, queried pair k) row: the clean prompt ``ids`` with its entity and attribute
    positions, ``perm`` (position ids with statements 0 and 1 exchanged), the candidate answer
    ids ``cand`` (the context's attributes, then the donor's attribute k), the ``donor``'s
    prompt, the prompt ``renamed`` to ask for the donor's entity k, and whether entity and
    attribute substitution are ``valid`` (the donor's entity/attribute k is new to the context)."""

    ids: list[int]
    ents: list[int]
    atts: list[int]
    k: int
    perm: list[int]
    cand: list[int]
    donor: list[int]
    renamed: list[int]
    valid: tuple[bool, bool]


def _queries(model: Any, contexts: Sequence[BindingContext], n_pairs: int) -> list[Query]:
    donors = list(contexts[1:]) + list(contexts[:1])  # context c's donor is context c + 1
    items = [(c, d, k) for c, d in zip(contexts, donors) for k in range(n_pairs)]
    clean = _locate(model, [(c, c.text(k)) for c, _, k in items])
    donor = _locate(model, [(d, d.text(k)) for _, d, k in items])
    renamed = _locate(model, [(c, c.text(k, entity=d.entities[k])) for c, d, k in items])
    rows = []
    for (c, d, k), loc, don, ren in zip(items, clean, donor, renamed):
        ents = loc.entities
        span = ents[1] - ents[0]  # one statement; all have the same length (one-token words)
        perm = list(range(len(loc.ids)))
        perm[ents[0]:ents[0] + span], perm[ents[1]:ents[1] + span] = perm[ents[1]:ents[1] + span], \
            perm[ents[0]:ents[0] + span]
        rows.append(Query(loc.ids, ents, loc.attributes, k, perm,
                          backend.answer_tokens(model, list(c.answers) + [d.answers[k]], "attribute"),
                          don.ids, ren.ids, (d.entities[k] not in c.entities, d.attributes[k] not in c.attributes)))
    return rows


@experiment("binding_ids", batch_size=64)
def binding(run: Run, contexts: BindingContexts) -> xr.Dataset:
    """Factorizability, position independence and mean interventions (see module doc).

    ``contexts``: ``nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed)``; each
    context is queried once per pair, and ``batch_size`` rows hold ``batch_size // 2`` queries
    (clean rows plus their edited or donor rows).

    Returns, per context (``prompt``) and queried entity (``query``): ``correct`` (clean),
    ``factor_correct`` (target = entity/attribute), ``position_correct``, ``swap``
    (intervention = entity/attribute, vector = mean/random; 1 = the other pair's attribute
    won); their means ``accuracy``, ``factor_accuracy``, ``position_accuracy``,
    ``swap_accuracy``; and ``delta_norm`` (intervention, depth): |Δ| per depth (0 = embeddings).
    """
    if not isinstance(contexts, BindingContexts):
        raise UsageError("binding takes nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed): the "
                         "contexts and the estimation contexts of the binding-ID vectors")
    model, n_pairs = run.model, contexts.n_pairs
    rows = _queries(model, contexts.contexts, n_pairs)
    if len({len(r.ids) for r in rows}) != 1:
        raise UsageError("binding contexts must all have the same token length for this tokenizer")
    n = len(rows)
    correct, position = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8)
    factor = np.full((2, n), np.nan)
    swap = np.zeros((2, 2, n), dtype=np.int8)
    # a query takes 2 rows in a pass: its clean row and an edited copy (or its donor's row)
    chunks = run.batches([len(r.ids) for r in rows], rows_per_item=2)

    def wins(scores, expect):  # the expected candidate has the top logit, on the last len(expect) rows
        return (scores.logits[-len(expect):].argmax(-1).numpy() == np.array(expect)).astype(np.int8)

    def field(chunk, key):
        return torch.tensor([getattr(rows[i], key) for i in chunk])

    for chunk in run.steps(chunks, "binding"):
        p, ids, cand, ks = len(chunk), field(chunk, "ids"), field(chunk, "cand"), [rows[i].k for i in chunk]
        correct[chunk] = wins(run.call(_br.edited_scores, ids, cand, _NONE, _NONE, _NONE), ks)
        position[chunk] = wins(run.call(_br.edited_scores, ids, cand, _NONE, _NONE, _NONE,
                                        position_ids=field(chunk, "perm")), ks)
        for t, target in enumerate(INTERVENTIONS):  # factorizability: copy the donor's token activations in
            own = field(chunk, "renamed") if target == "entity" else ids
            pos = torch.tensor([(rows[i].ents if target == "entity" else rows[i].atts)[rows[i].k] for i in chunk])
            s = run.call(_br.edited_scores, torch.cat([field(chunk, "donor"), own]), torch.cat([cand, cand]),
                         torch.arange(p, 2 * p), torch.arange(p), pos)
            got = wins(s, ks if target == "entity" else [n_pairs] * p)
            factor[t, chunk] = np.where([rows[i].valid[t] for i in chunk], got, np.nan)
    delta = _deltas(run, contexts.estimate)  # (2, depth, d)
    rand = torch.randn(delta.shape, generator=torch.Generator().manual_seed(contexts.seed), dtype=delta.dtype)
    rand = rand / rand.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True)
    for chunk in run.steps(chunks, "mean interventions"):
        p, ids, cand = len(chunk), field(chunk, "ids"), field(chunk, "cand")
        other = [{0: 1, 1: 0}.get(rows[i].k, rows[i].k) for i in chunk]  # pairs 0 and 1 swap bindings
        for t, target in enumerate(INTERVENTIONS):
            key = "ents" if target == "entity" else "atts"
            pos = torch.tensor([getattr(rows[i], key)[0] for i in chunk] + [getattr(rows[i], key)[1] for i in chunk])
            for v, vec in enumerate((delta[t], rand[t])):
                # rows p..2p-1 are edited copies of the clean rows 0..p-1: +Δ at pair 0, −Δ at pair 1
                add = torch.cat([vec[:, None].expand(-1, p, -1), -vec[:, None].expand(-1, p, -1)], 1)
                s = run.call(_br.edited_scores, torch.cat([ids, ids]), torch.cat([cand, cand]),
                             torch.arange(p, 2 * p).repeat(2), torch.arange(p).repeat(2), pos, add)
                swap[t, v, chunk] = wins(s, other)
    return _dataset(contexts, n_pairs, correct, factor, position, swap, delta)


def _deltas(run: Run, estimate: Sequence[BindingContext]) -> torch.Tensor:
    """(2, depth, d): mean over contexts of h[pair 1] − h[pair 0] at the entity and attribute tokens."""
    located = _locate(run.model, [(c, c.text(0)) for c in estimate])
    total = None
    for chunk in run.steps(run.batches([len(r.ids) for r in located]), "binding-ID vectors"):
        rows = [located[i] for i in chunk]
        pos = torch.tensor([[r.entities[0], r.entities[1], r.attributes[0], r.attributes[1]] for r in rows])
        h = run.call(_br.resid_at, torch.tensor([r.ids for r in rows]), pos).double()  # (b, D, 4, d)
        part = torch.stack([h[:, :, 1] - h[:, :, 0], h[:, :, 3] - h[:, :, 2]], 1).sum(0)  # (2, D, d)
        total = part if total is None else total + part
    return (total / len(estimate)).float()


def _dataset(contexts: BindingContexts, n_pairs, correct, factor, position, swap, delta) -> xr.Dataset:
    shape = (len(contexts), n_pairs)
    f = factor
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
        attrs={"method": "binding_ids", "metric": "accuracy", "chance": 1 / n_pairs})


def summarize(ds: xr.Dataset) -> list[Any]:
    """Each binding measure's accuracy against chance; over checkpoints, one column each."""
    from rich.table import Table

    sweep = "checkpoint" in ds.dims
    n_pairs = ds.sizes["query"]
    head = (f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} contexts "
            f"of {n_pairs} pairs, each queried once per pair")
    table = Table(title=f"binding with {n_pairs} pairs (chance {float(ds.attrs.get('chance', 1 / n_pairs)):.2f})")
    table.add_column("measure")
    columns = [str(c) for c in ds["checkpoint"].values] if sweep else ["accuracy"]
    for c in columns:
        table.add_column(c, justify="right")
    rows = [("clean", ds["accuracy"]), ("positions of pairs 0 and 1 exchanged", ds["position_accuracy"])]
    rows += [(f"factorizability: {t} substituted", ds["factor_accuracy"].sel(target=t)) for t in ds["target"].values]
    rows += [(f"swap by {v} vector on {i} tokens", ds["swap_accuracy"].sel(intervention=i, vector=v))
             for i in ds["intervention"].values for v in ds["vector"].values]
    for name, value in rows:
        table.add_row(name, *[f"{x:.3f}" for x in np.atleast_1d(value.values).astype(float)])
    return [head, table]
