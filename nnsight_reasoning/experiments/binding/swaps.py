"""Accuracy, factorizability and position independence: the measures that read the clean run,
swap one binding's activations between contexts, or exchange two statements' positions."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ... import backend
from ...backend import resid as _br
from ...errors import UsageError
from ...runner import Run
from ...sites import context_length
from ...tasks.binding import BindingContexts
from ._common import (
    INTERVENTIONS, _NONE, TOKENS, _dataset, _deltas, _expected, _freeze_arg, _labels, _locate, _one_length, _passes,
    _queries, _span,
)


def _accuracy(run: Run, contexts: BindingContexts) -> xr.Dataset:
    """Factorizability, position independence and mean interventions as accuracies.

    ``contexts``: ``nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed)``; each
    context is queried once per pair, and ``batch_size`` rows hold ``batch_size // 2`` queries
    (clean rows plus their edited or donor rows).

    Returns, per context (``prompt``) and queried entity (``query``): ``correct`` (clean),
    ``factor_correct`` (target = entity/attribute), ``position_correct``, ``swap``
    (intervention = entity/attribute, vector = mean/random; 1 = the other pair's attribute
    won); their means ``accuracy``, ``factor_accuracy``, ``position_accuracy``,
    ``swap_accuracy``; and ``delta_norm`` (intervention, depth): |Δ| per depth (0 = embeddings).
    """
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


def _factorization(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int]) -> xr.Dataset:
    """binding-iclr's factorizability test by side (``factorization_parallel_exchange_by_side``,
    ``coref/data_collection.py:203-317``). For each context c, side s and (swap entity, swap
    attribute) in {0, 1}²: the residual stream at side s's entity window and/or attribute
    window (``tokens``) is replaced, at every depth, by the source context's (same family, new
    words, same positions); each of the 2n entity names is asked; the log-probability (full
    vocabulary) of each of the 2n attributes' answers is read at the last position."""
    model, n = run.model, contexts.n_pairs
    if not contexts.sources:
        raise UsageError("these binding contexts have no source contexts (a source needs 2 × n_pairs words of the "
                         "family); use fewer pairs")
    pairs = list(zip(contexts.contexts, contexts.sources))
    # per context: the source row, then the clean row of each of the 2n queries
    items = []
    for c, src in pairs:
        names = list(c.entities) + list(src.entities)
        items.append([(src, src.text(0))] + [(c, c.text(0, entity=e)) for e in names])
    located = _locate(model, [x for item in items for x in item], tokens)
    width = 1 + 2 * n
    rows = [located[i * width:(i + 1) * width] for i in range(len(pairs))]
    _one_length([r for item in rows for r in item])
    for item in rows:  # the source's words sit where the context's do
        if item[0].entities != item[1].entities or item[0].attributes != item[1].attributes:
            raise UsageError("a source context's words are not at its context's positions (one-token words needed)")
    cand = [backend.answer_tokens(model, list(c.answers) + list(src.answers), "attribute") for c, src in pairs]
    cells = [(s, e, a) for s in range(n) for e in (0, 1) for a in (0, 1) if e or a]
    logp = np.zeros((n, 2, 2, 2 * n, 2 * n, len(pairs)))
    for jobs in run.steps(_passes(run, len(pairs), width, len(cells), 2 * n), "factorization"):
        ids, answers, edits, frozen = [], [], [], []
        for i, _ in jobs:
            ids += [r.ids for r in rows[i]]
            answers += [cand[i]] * width
        first = len(ids)
        for j, (i, entries) in enumerate(jobs):
            src_row, clean = j * width, j * width + 1
            loc = rows[i][1]
            for s, e, a in (cells[c] for c in entries):
                for q in range(2 * n):
                    row = len(ids)
                    ids.append(rows[i][1 + q].ids)
                    answers.append(cand[i])
                    frozen.append((row, clean + q, rows[i][1 + q].context_end))
                    for kind, on in ((0, e), (1, a)):
                        if on:
                            edits += [(row, src_row, pos) for pos in _span(loc, kind, s, tokens)]
        e_rows, e_src, e_pos = (torch.tensor(list(x)) for x in zip(*edits))
        scores = run.call(_br.edited_scores, torch.tensor(ids), torch.tensor(answers), e_rows, e_src, e_pos,
                          freeze=_freeze_arg(frozen, len(ids[0])) if freeze else None)
        lp = scores.log_probs.numpy()
        k = first
        for j, (i, entries) in enumerate(jobs):
            logp[:, 0, 0, :, :, i] = lp[j * width + 1: j * width + 1 + 2 * n]  # the clean rows: (query, answer)
            for s, e, a in (cells[c] for c in entries):
                logp[s, e, a, :, :, i] = lp[k:k + 2 * n]
                k += 2 * n
    expected = np.array([[[_expected(n, s, e, a) for a in (0, 1)] for e in (0, 1)] for s in range(n)])
    best = logp.argmax(axis=4)  # (side, e, a, query, prompt)
    valid = expected >= 0
    hits = (best == expected[..., None]) & valid[..., None]
    acc = hits.sum(axis=(3, 4)) / (valid.sum(axis=3) * len(pairs))
    queries, answers_ = _labels(n)
    return xr.Dataset(
        {"factor_logprob": (("side", "swap_entity", "swap_attribute", "query", "answer", "prompt"), logp,
                            {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         "factor_mean": (("side", "swap_entity", "swap_attribute", "query", "answer"), logp.mean(-1),
                         {"units": "nats"}),
         "factor_expected": (("side", "swap_entity", "swap_attribute", "query"), expected,
                             {"long_name": "the answer binding IDs predict (index into answer; -1: the entity is "
                                           "not in the edited context)"}),
         "outcome_accuracy": (("side", "swap_entity", "swap_attribute"), acc,
                              {"long_name": "the predicted answer has the highest log-probability among the 2n"})},
        coords={"side": np.arange(n), "swap_entity": [0, 1], "swap_attribute": [0, 1],
                "query": np.array(queries, dtype=object), "answer": np.array(answers_, dtype=object),
                "prompt": np.arange(len(pairs)), "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "factorization", "metric": "log_prob",
               "freeze_context": int(freeze), "split": int(bool(contexts.params.get("split")))})


def _position(run: Run, contexts: BindingContexts, freeze: bool, max_offset: int, window: str = "full",
              tokens: tuple[int, int] = TOKENS) -> xr.Dataset:
    """binding-iclr's position test (``position_intervention``, ``coref/data_collection.py:332-403``):
    the position ids of side 0's entity (or attribute) window (``tokens``) move by +o and side 1's by −o,
    o from −max_offset to max_offset + Δ − 1 (at o = Δ the two are exchanged); queries E0 and
    E1; the log-probabilities of A0 and A1 (full vocabulary) at the last position, and their raw
    logits (``position_logit``: what the repository records with ``--no_normalize_logits``,
    ``lookup_answer_logits(normalize=False)``). With the context frozen, only the keys the
    question reads move (the repository rotates keys).
    ``window="local"``: o in −2 … 2 and Δ − 2 … Δ + 2 (``fixed_offset_start=-2,
    fixed_offset_end=3`` with ``is_tail`` False and True)."""
    model = run.model
    located = _locate(model, [(c, c.text(q)) for c in contexts.contexts for q in (0, 1)], tokens)
    T = _one_length(located)
    limit = context_length(model) or T
    spans = {}
    for w, (target, key) in zip(tokens, (("entity", "entities"), ("attribute", "attributes"))):
        p0 = {getattr(r, key)[0] for r in located}
        p1 = {getattr(r, key)[1] for r in located}
        if len(p0) != 1 or len(p1) != 1:
            raise UsageError("the pairs must sit at the same positions in every context (one-token words)")
        p0, p1 = p0.pop(), p1.pop()
        d = p1 - p0
        # the repository's range, within the positions that exist (ids >= 0 and below the context
        # size) for every token of both windows: p0 + o … p0 + w − 1 + o and p1 − o … p1 + w − 1 − o
        lo, hi = max(-p0, p1 + w - limit), min(p1, limit - w - p0)
        wanted = range(-max_offset, max_offset + d) if window == "full" else [*range(-2, 3), *range(d - 2, d + 3)]
        spans[target] = (p0, p1, sorted({o for o in wanted if lo <= o <= hi}))
    offsets = sorted({o for _, _, offs in spans.values() for o in offs})
    cand = [backend.answer_tokens(model, list(c.answers[:2]), "attribute") for c in contexts.contexts]
    logp = np.full((2, len(offsets), 2, 2, len(contexts)), np.nan)
    logit = np.full_like(logp, np.nan)
    plan = [(t, o) for t, target in enumerate(("entity", "attribute")) for o in spans[target][2]]
    for jobs in run.steps(_passes(run, len(contexts), 2, len(plan), 2), "position"):
        ids, answers, pos, frozen = [], [], [], []
        for i, _ in jobs:
            for q in (0, 1):
                ids.append(located[2 * i + q].ids)
                answers.append(cand[i])
                pos.append(list(range(T)))
        for j, (i, entries) in enumerate(jobs):
            for t, o in (plan[e] for e in entries):
                p0, p1, _ = spans[("entity", "attribute")[t]]
                for q in (0, 1):
                    frozen.append((len(ids), 2 * j + q, located[2 * i + q].context_end))
                    ids.append(located[2 * i + q].ids)
                    answers.append(cand[i])
                    shifted = list(range(T))
                    for k in range(tokens[t]):
                        shifted[p0 + k] += o
                        shifted[p1 + k] -= o
                    pos.append(shifted)
        scores = run.call(_br.edited_scores, torch.tensor(ids), torch.tensor(answers), _NONE, _NONE, _NONE,
                          position_ids=torch.tensor(pos), freeze=_freeze_arg(frozen, T) if freeze else None)
        lp, lg = scores.log_probs.numpy(), scores.logits.numpy()
        k = 2 * len(jobs)
        for i, entries in jobs:
            for t, o in (plan[e] for e in entries):
                logp[t, offsets.index(o), :, :, i] = lp[k:k + 2]
                logit[t, offsets.index(o), :, :, i] = lg[k:k + 2]
                k += 2
    return xr.Dataset(
        {"position_logprob": (("target", "offset", "query", "answer", "prompt"), logp,
                              {"long_name": "log-probability of each answer (full vocabulary); NaN: offset not "
                                            "run for this target", "units": "nats"}),
         "position_mean": (("target", "offset", "query", "answer"), logp.mean(-1), {"units": "nats"}),
         "position_logit": (("target", "offset", "query", "answer", "prompt"), logit,
                            {"long_name": "each answer's raw logit (the repository's --no_normalize_logits); NaN: "
                                          "offset not run for this target", "units": "logits"})},
        coords={"target": np.array(INTERVENTIONS, dtype=object), "offset": np.array(offsets),
                "query": np.array(["E0", "E1"], dtype=object), "answer": np.array(["A0", "A1"], dtype=object),
                "prompt": np.arange(len(contexts)), "text": ("prompt", [c.text(0) for c in contexts.contexts]),
                "distance": ("target", np.array([spans[t][1] - spans[t][0] for t in INTERVENTIONS])),
                "side0_position": ("target", np.array([spans[t][0] for t in INTERVENTIONS]))},
        attrs={"method": "binding_ids", "measure": "position", "metric": "log_prob", "freeze_context": int(freeze),
               "max_offset": max_offset, "window": window})
