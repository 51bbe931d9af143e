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

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import resid as _br
from ..errors import UsageError
from ..runner import Run, experiment
from ..sites import context_length
from ..tasks.binding import EXPERIMENT_FAMILIES, BindingContext, BindingContexts
from ..tasks.mcq import McqContexts

INTERVENTIONS = ("entity", "attribute")
VECTORS = ("mean", "random")
WINDOWS = ("full", "local")  # the position sweep's offsets: binding-iclr's Fig. 4, or its local test
_NONE = torch.zeros(0, dtype=torch.long)
#: tokens edited from each entity's and each attribute's first token: binding-iclr's
#: ``entity_width=2`` and ``country_width=1`` (``scripts/run_experiment.py:868-869``): its names
#: are one token, so the entity's window is the name and the token after it
TOKENS = (2, 1)


@dataclass(frozen=True)
class Located:
    """A prompt's token ids and the token index of each pair's entity and attribute."""

    ids: list[int]
    entities: list[int]
    attributes: list[int]
    context_end: int = 0  # tokens of the context section (binding-iclr freezes them)


def locate(model: Any, ctx: BindingContext, text: str) -> Located:
    """Token ids of ``text`` (a prompt of ``ctx``) and where each entity and attribute of the
    context is; each must be one token."""
    return _locate(model, [(ctx, text)])[0]


def _locate(model: Any, items: Sequence[tuple[BindingContext, str]], tokens: Sequence[int] | None = None
            ) -> list[Located]:
    """Located prompts; with ``tokens`` (the edit windows), each checked by :func:`_check_spans`."""
    encoded = backend.tokenize_with_offsets(model, [text for _, text in items])
    unk = getattr(model.tokenizer, "unk_token_id", None)
    for (ctx, text), (ids, spans) in zip(items, encoded):
        if unk is not None and unk in ids:  # a word-level vocabulary without the family's words
            words = sorted({text[a:b] for i, (a, b) in zip(ids, spans) if i == unk})
            raise UsageError(f"the {ctx.family} prompts use words this tokenizer does not know ({', '.join(words)}); "
                             f"use a model whose vocabulary has them, or another family")
    located = [_find_words(ctx, text, ids, spans) for (ctx, text), (ids, spans) in zip(items, encoded)]
    if tokens is not None:
        _check_spans(located, tokens)
    return located


def _find_words(ctx: BindingContext, text: str, ids: list[int], spans: list[tuple[int, int]]) -> Located:
    """Each entity's and attribute's first token in the context section (a word stands alone,
    between spaces, once there; any order of entity and attribute, one sentence or several)."""
    end = len(ctx.context())

    def find(word: str) -> int:
        hit = re.search(rf"(?<!\S){re.escape(word)}(?!\S)", text[:end])
        if hit is None:
            raise UsageError(f"{word!r} is not in the context {text[:end]!r}")
        inside = [i for i, (a, b) in enumerate(spans) if a < hit.end() and b > hit.start()]
        if text[spans[inside[0]][0]:spans[inside[-1]][1]].strip() != word:
            raise UsageError(f"{word!r} is not a whole number of tokens for this tokenizer (it shares a token with "
                             f"its neighbours); binding needs words that tokenize on their own")
        return inside[0]

    return Located(ids, [find(e) for e in ctx.entities], [find(a) for a in ctx.attributes],
                   sum(1 for a, b in spans if b <= end))


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


MEASURES = ("accuracy", "factorization", "position", "means", "cyclic", "pairwise", "subspace", "cross_subspace",
            "mcq")
#: the roots of binding-iclr's Fig. 5 panels (``scripts/run_experiment.py:289-441``, without the unplotted (.2, .1))
SUBSPACE_ROOTS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5), (0.5, 0.7), (0.7, 0.1), (0.0, 0.5))
CYCLES = ((1, 2, 0), (2, 0, 1))
# rep.get_pairwise_switches(3): (0, 1), (0, 2), (1, 2), as permutations of the three sides
SWITCHES = ((1, 0, 2), (2, 1, 0), (0, 2, 1))
MEAN_INTERVENTIONS = ("none", "attribute", "entity", "both")


@experiment("binding_ids", batch_size=64)
def binding(run: Run, contexts: BindingContexts | McqContexts, *, measure: str = "accuracy",
            freeze_context: bool = True, max_offset: int = 10, window: str = "full",
            roots: Sequence[Sequence[float]] = SUBSPACE_ROOTS, grid: int = 10, cross_attributes: bool = False,
            entity_tokens: int = TOKENS[0], attribute_tokens: int = TOKENS[1], max_width: int = 5) -> xr.Dataset:
    """Binding IDs; ``measure`` picks the experiment (see the module doc):

    - "accuracy": factorizability, position independence and mean interventions as accuracies
      (this toolkit's summary; edits propagate through the context);
    - "factorization": binding-iclr's Fig. 3, the 2×2 substitution by side
      (:func:`_factorization`);
    - "position": binding-iclr's Fig. 4, the position sweep (:func:`_position`);
    - "means": binding-iclr's Table 1, mean interventions with its Δ estimator and calibrated
      accuracy (:func:`_means`; make the data with ``split=True`` for its train/test words);
    - "cyclic": binding-iclr's Fig. 6 (right), cyclic swaps of 3 binding IDs (:func:`_cyclic`;
      3 pairs);
    - "pairwise": binding-iclr's Table 1 without ``--cyclic``, two of 3 binding IDs switched, each
      pair of sides in turn (:func:`_cyclic` with ``measure="pairwise"``; 3 pairs);
    - "subspace": binding-iclr's Fig. 5, side 1's binding ID moved over a grid in the plane of
      Δ_1 and Δ_2 (:func:`_subspace`; 2 pairs, estimate contexts of 3: ``estimate_pairs=3``).
      ``roots``: side 0's coordinates, one panel each; ``grid``: points per axis on [−0.5, 1.5];
      ``cross_attributes``: the attributes' coordinates on the opposite sides (binding-iclr's
      ``--cross_countries``);
    - "cross_subspace": binding-iclr's Table 2, 3-pair contexts bound by another task's
      binding-ID differences (:func:`_cross_subspace`; ``estimate_family=``, ``estimate_pairs=4``);
    - "mcq": binding-iclr's multiple-choice test, letters bound to options, the last 0 …
      ``max_width`` tokens of each option's line exchanged with a context whose letters are
      swapped (:func:`_mcq`; data ``nr.tasks.mcq_contexts(...)``, SST-2 reviews).

    ``freeze_context`` (every measure but "accuracy"): the context tokens keep their clean values at
    every layer, as binding-iclr's interventions do, so only the question reads an edit.
    ``max_offset``: the position sweep runs from −max_offset to max_offset + Δ − 1 (Δ the
    distance between the two pairs), within the positions that exist. ``window="local"``:
    binding-iclr's local position test instead (``run_local_position_independence``: offsets
    −2 … 2 around the stated positions and Δ − 2 … Δ + 2 around the exchanged ones, per target).
    ``entity_tokens``, ``attribute_tokens`` (every binding-iclr measure): how many tokens from
    each entity's (attribute's) first token an edit covers — binding-iclr's ``entity_width=2``
    and ``country_width=1``, so by default an entity's window is its name and the token after
    it; substitution, position shifts and binding-ID vectors (one Δ per token of the window)
    act on the whole window.

    Returns a Dataset whose variables are named by the measure (each measure's function above
    documents its dims; docs/experiments/binding.md shows a schema): log-probabilities of the
    answers over the full vocabulary in nats (``factor_logprob``, ``position_logprob``,
    ``means_logprob``, ``cyclic_logprob``, ``cross_logprob``, ``subspace_logprob``,
    ``mcq_logprob``), what the binding-ID account predicts and whether it won (``*_correct``,
    ``*_expected``, ``*_intended``, ``mcq_swapped``), accuracies in [0, 1] (``*_accuracy``), and
    the binding-ID vectors used (``delta``, per depth and d_model; ``delta_norm``). "accuracy"
    gives per context (``prompt``) and queried entity (``query``) ``correct``,
    ``factor_correct``, ``position_correct`` and ``swap``, with their accuracies.
    """
    if measure not in MEASURES:
        raise UsageError(f"unknown measure {measure!r}; choose from: {', '.join(MEASURES)}")
    tokens = (entity_tokens, attribute_tokens)
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 1 for t in tokens):
        raise UsageError(f"entity_tokens and attribute_tokens are integers >= 1 (got {entity_tokens!r}, "
                         f"{attribute_tokens!r})")
    if cross_attributes and measure != "subspace":
        raise UsageError("cross_attributes applies to measure='subspace' only")
    if measure == "mcq" or isinstance(contexts, McqContexts):
        if measure != "mcq" or not isinstance(contexts, McqContexts):
            raise UsageError("the mcq measure takes nr.tasks.mcq_contexts(n_contexts, seed, data), and only it does")
        if not isinstance(max_width, (int, np.integer)) or isinstance(max_width, bool) or max_width < 1:
            raise UsageError(f"max_width must be an integer >= 1 (got {max_width!r})")
        return _mcq(run, contexts, int(max_width), freeze_context)
    if measure == "accuracy":  # this toolkit's summary edits one token per word
        if contexts.contexts[0].family not in EXPERIMENT_FAMILIES:
            raise UsageError(f"the summary measure exchanges statements that start with their entity, one pair each "
                             f"({', '.join(EXPERIMENT_FAMILIES)}); {contexts.contexts[0].family!r} takes the "
                             f"binding-iclr measures (measure='factorization', 'position', 'means', …)")
        return _accuracy(run, contexts)
    tokens = tuple(int(t) for t in tokens)
    return _with_tokens(_measure(run, contexts, measure, freeze_context, max_offset, window, roots, grid, tokens,
                                 bool(cross_attributes)), tokens)


def _measure(run: Run, contexts: BindingContexts, measure: str, freeze_context: bool, max_offset: int, window: str,
             roots: Sequence[Sequence[float]], grid: int, tokens: tuple[int, int],
             cross_attributes: bool = False) -> xr.Dataset:
    """binding-iclr's measures (the dispatch of :func:`binding`)."""
    if measure == "factorization":
        return _factorization(run, contexts, freeze_context, tokens)
    if measure == "position":
        if not isinstance(max_offset, (int, np.integer)) or max_offset < 0:
            raise UsageError(f"max_offset must be an integer >= 0 (got {max_offset!r})")
        if window not in WINDOWS:
            raise UsageError(f"window must be one of {', '.join(WINDOWS)} (got {window!r})")
        return _position(run, contexts, freeze_context, int(max_offset), window, tokens)
    if measure == "means":
        return _means(run, contexts, freeze_context, tokens)
    if measure in ("cyclic", "pairwise"):
        return _cyclic(run, contexts, freeze_context, tokens, measure)
    if measure == "cross_subspace":
        return _cross_subspace(run, contexts, freeze_context, tokens)
    if measure == "subspace":
        try:
            root_list = [(float(a), float(b)) for a, b in roots]
        except (TypeError, ValueError):
            raise UsageError(f"roots is a list of (x, y) pairs (got {roots!r})") from None
        if not root_list or not isinstance(grid, (int, np.integer)) or grid < 2:
            raise UsageError(f"subspace needs at least one root and grid >= 2 (got {len(root_list)} roots, grid={grid!r})")
        return _subspace(run, contexts, freeze_context, root_list, int(grid), tokens, cross_attributes)
    raise AssertionError(measure)  # every measure is dispatched above


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


def _labels(n: int) -> tuple[list[str], list[str]]:
    """Query and answer labels of the substitution test: the context's entities and attributes,
    then the source context's (primed)."""
    return ([f"E{k}" for k in range(n)] + [f"E{k}'" for k in range(n)],
            [f"A{k}" for k in range(n)] + [f"A{k}'" for k in range(n)])


def _expected(n: int, side: int, swap_e: int, swap_a: int) -> list[int]:
    """Per query (E0…, E0'…) the answer index (A0…, A0'…) binding IDs predict after the
    substitution at ``side``, −1 where the queried entity is not in the edited context."""
    entity = {k: k for k in range(n)}  # slot -> entity index among the 2n queries
    attribute = {k: k for k in range(n)}
    if swap_e:
        entity[side] = n + side
    if swap_a:
        attribute[side] = n + side
    out = [-1] * (2 * n)
    for slot in range(n):
        out[entity[slot]] = attribute[slot]
    return out


def _passes(run: Run, n_items: int, base_rows: int, n_entries: int, rows_per_entry: int) -> list[list[tuple]]:
    """Passes of (item, entries) jobs within ``batch_size`` rows: an item's entries are split so
    that a job (its ``base_rows`` clean rows plus ``rows_per_entry`` per entry) fits one pass,
    and jobs are packed into passes in order (all prompts share one token length)."""
    per = max(1, (run.batch_size - base_rows) // rows_per_entry)
    jobs = [(i, list(range(k, min(k + per, n_entries)))) for i in range(n_items) for k in range(0, n_entries, per)]
    passes: list[list[tuple]] = [[]]
    used = 0
    for job in jobs:
        size = base_rows + rows_per_entry * len(job[1])
        if passes[-1] and used + size > run.batch_size:
            passes.append([])
            used = 0
        passes[-1].append(job)
        used += size
    return passes


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


def _repository_deltas(run: Run, estimate: Sequence[BindingContext], tokens: tuple[int, int]) -> torch.Tensor:
    """(2, n − 1, token, depth, d): binding-iclr's binding-ID differences Δ_k = ID_k − ID_0 for
    entities and attributes, one per token of their windows (``tokens``; entries past a kind's
    window are 0) (``extract_k_means``, ``coref/datascience.py:358-465``): each
    estimate context is run as stated (E0A0, E1A1, …) and with its statements shifted by one
    (E1A1, …, E0A0), and Δ_k is a mean over contexts of a residual at side k minus one at
    side 0, at every depth: Δ_1 = E1 at side 1 (as stated) − E1 at side 0 (shifted), the same
    word, so its content cancels. For n = 3, Δ_2 = E0 at side 2 (shifted) − E0 at side 0 (as
    stated), the same word again. For other n the repository takes Δ_k = side k as stated −
    side 0 shifted for every k, which for k ≥ 2 subtracts *another* word (E_k − E1): its content
    cancels only on average over the draws (the cross-task subspace's 4-pair sources)."""
    n_pairs = len(estimate[0].entities)
    shifted = [BindingContext(c.entities[1:] + c.entities[:1], c.attributes[1:] + c.attributes[:1], c.family, c.hops)
               for c in estimate]
    located = _locate(run.model, [(c, c.text(0)) for c in estimate] + [(c, c.text(0)) for c in shifted], tokens)
    n, W = len(estimate), max(tokens)
    total = None
    for chunk in run.steps(run.batches([len(r.ids) for r in located[:n]], rows_per_item=2), "binding-ID vectors"):
        rows = [located[i] for i in chunk] + [located[n + i] for i in chunk]
        # every kind reads W tokens (a shorter window repeats its first token; zeroed below)
        pos = torch.tensor([[p + k if k < tokens[kind] else p for kind, firsts in enumerate((r.entities, r.attributes))
                             for p in firsts for k in range(W)] for r in rows])
        h = run.call(_br.resid_at, torch.tensor([r.ids for r in rows]), pos).double()  # (2b, D, 2·n·W, d)
        h = h.reshape(h.shape[0], h.shape[1], 2, n_pairs, W, h.shape[-1])  # (2b, D, kind, side, token, d)
        stated, moved = h[:len(chunk)], h[len(chunk):]
        if n_pairs == 3:
            diffs = [stated[:, :, :, 1] - moved[:, :, :, 0], moved[:, :, :, 2] - stated[:, :, :, 0]]
        else:
            diffs = [stated[:, :, :, k] - moved[:, :, :, 0] for k in range(1, n_pairs)]
        # (b, D, k, kind, token, d) summed over b -> (kind, k, token, D, d)
        part = torch.stack(diffs, 2).sum(0).permute(2, 1, 3, 0, 4)
        total = part if total is None else total + part
    out = (total / n).float()
    for kind, w in enumerate(tokens):
        out[kind, :, w:] = 0.0
    return out


def _means(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int]) -> xr.Dataset:
    """binding-iclr's mean interventions (Table 1; ``test_mean_interventions``,
    ``coref/data_collection.py:502-575``): +Δ at side 0 and −Δ at side 1 on the attribute
    windows, the entity windows or both (each token its own Δ), at every depth; queries E0, E1 and a name not in the
    context (the null query); log-probabilities (full vocabulary) of A0 and A1. Accuracy as the
    repository's ``reduce_distractor_acc``: from each answer's log-probability the median
    (over contexts) of the null query's is subtracted; the query is right when the original
    binding (E0 → A0, E1 → A1) wins. Binding IDs predict ≈ 0 for one swap and ≈ 1 for both
    (two swaps restore it). Baseline: random vectors of Δ's norm at each depth (seeded)."""
    model = run.model
    if contexts.n_pairs != 2:
        raise UsageError(f"the mean interventions are defined for 2 pairs (got {contexts.n_pairs})")
    located, _, cand = _null_queries(model, contexts, tokens)
    delta = _repository_deltas(run, contexts.estimate, tokens)[:, 0]  # (2, token, D, d): Δ_1
    gen = torch.Generator().manual_seed(contexts.seed)
    rand = torch.randn(delta.shape, generator=gen, dtype=torch.float64).float()
    # Δ's norm per token and depth (0 outside a window, where rand is 0 too)
    rand = rand / rand.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True)
    plan = [(i, v) for i in (1, 2, 3) for v in (0, 1)]  # (intervention, vector), none = the clean rows

    def edits(entry, loc):  # +Δ at side 0, −Δ at side 1 of the entity (kind 0) and/or attribute (kind 1) windows
        iv, v = entry
        vec = (delta, rand)[v]
        kinds = [k for k, on in ((0, iv in (2, 3)), (1, iv in (1, 3))) if on]
        return [(pos, sign * vec[kind, t]) for kind in kinds for side, sign in ((0, 1.0), (1, -1.0))
                for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, "mean interventions")
    logp = np.zeros((4, 2, 3, 2, len(contexts)))
    logp[0] = runs[0][None]  # none: the clean rows (both vector columns)
    for e, (iv, v) in enumerate(plan):
        logp[iv, v] = runs[1 + e]
    right = np.full((4, 2, 3, len(contexts)), np.nan)  # (intervention, vector, query, prompt); null: NaN
    right[:, :, :2] = _calibrated_right(logp)
    return xr.Dataset(
        {"means_logprob": (("intervention", "vector", "query", "answer", "prompt"), logp,
                           {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         "means_correct": (("intervention", "vector", "query", "prompt"), right,
                           {"long_name": "the original binding wins after null-query calibration (NaN: null)"}),
         "means_accuracy": (("intervention", "vector", "query"), right.mean(-1),
                            {"long_name": "binding-iclr's distractor-calibrated accuracy (original binding)"}),
         "delta": (("kind", "token", "depth", "d_model"), delta.numpy(),
                   {"long_name": "binding-ID difference: side 1 minus side 0 of the same word, per token of the "
                                 "window (NaN: not edited)"}),
         "random_vector": (("kind", "token", "depth", "d_model"), rand.numpy()),
         "delta_norm": (("kind", "token", "depth"), delta.norm(dim=-1).numpy())},
        coords={"intervention": np.array(MEAN_INTERVENTIONS, dtype=object),
                "vector": np.array(VECTORS, dtype=object), "query": np.array(["E0", "E1", "null"], dtype=object),
                "answer": np.array(["A0", "A1"], dtype=object), "kind": np.array(INTERVENTIONS, dtype=object),
                "token": np.arange(delta.shape[1]), "depth": np.arange(delta.shape[2]), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "means", "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split")))})


def _span(loc: Located, kind: int, side: int, tokens: Sequence[int]) -> range:
    """The token positions edited for side ``side``'s entity (kind 0) or attribute (kind 1):
    ``tokens[kind]`` of them from its first token (binding-iclr's widths)."""
    first = (loc.entities, loc.attributes)[kind][side]
    return range(first, first + tokens[kind])


def _check_spans(located: Sequence[Located], tokens: Sequence[int]) -> None:
    """Every edited window lies inside its prompt's context and no two windows overlap."""
    for loc in located:
        windows = [_span(loc, kind, side, tokens) for kind in (0, 1) for side in range(len(loc.entities))]
        taken = [p for w in windows for p in w]
        if max(taken) >= loc.context_end or len(set(taken)) != len(taken):
            raise UsageError(f"entity_tokens={tokens[0]}, attribute_tokens={tokens[1]}: the edited windows overlap "
                             f"each other or leave the context for this family; use fewer tokens")


def _with_tokens(ds: xr.Dataset, tokens: Sequence[int]) -> xr.Dataset:
    """Record the windows, and mark the vector entries of tokens a kind does not edit as NaN
    (they are zero inside, where they add nothing)."""
    ds.attrs.update(entity_tokens=int(tokens[0]), attribute_tokens=int(tokens[1]))
    if "token" not in ds.dims:
        return ds
    ds = ds.assign_coords(edited_tokens=("kind", np.array(tokens, dtype=np.int64)))
    edited = ds["token"] < ds["edited_tokens"]
    for v in ds.data_vars:
        if "token" in ds[v].dims and "kind" in ds[v].dims:
            ds[v] = ds[v].where(edited)
    return ds


def _one_length(located: Sequence[Located]) -> int:
    """The token length all the prompts share (the edits address positions), or an error."""
    if len({len(r.ids) for r in located}) != 1:
        raise UsageError("binding contexts must all have the same token length for this tokenizer")
    return len(located[0].ids)


def _null_queries(model: Any, contexts: BindingContexts, tokens: Sequence[int]
                  ) -> tuple[list[Located], int, list[list[int]]]:
    """Per context its prompts asking for E0, E1 and a *null* entity (the source's E0, not in
    the context): located prompts (3 per context), their token length, and the answer ids
    (A0, A1) per context."""
    if not contexts.sources:
        raise UsageError("these binding contexts have no source contexts (a source needs 2 × n_pairs words of the "
                         "family); use fewer pairs")
    names = [(c, [c.entities[0], c.entities[1], s.entities[0]]) for c, s in zip(contexts.contexts, contexts.sources)]
    located = _locate(model, [(c, c.text(0, entity=e)) for c, es in names for e in es], tokens)
    cand = [backend.answer_tokens(model, list(c.answers[:2]), "attribute") for c in contexts.contexts]
    return located, _one_length(located), cand


def _calibrated_right(logp: np.ndarray) -> np.ndarray:
    """binding-iclr's ``reduce_distractor_acc`` on (..., query (E0, E1, null), answer (A0, A1),
    prompt) log-probabilities: each answer minus the median over prompts of the null query's,
    then whether the stated binding wins; (..., 2, prompt) booleans for E0 and E1."""
    calibrated = logp[..., :2, :, :] - np.median(logp[..., 2:3, :, :], axis=-1, keepdims=True)
    return calibrated.argmax(axis=-2) == np.arange(2)[:, None]


def _edited_runs(run: Run, located: Sequence[Located], cand: Sequence[list[int]], n_queries: int, plan: Sequence[Any],
                 edits: Any, freeze: bool, label: str) -> np.ndarray:
    """The vector interventions' shared runs: per context its ``n_queries`` clean prompts
    (``located[n_queries · i + q]``) and, per entry of ``plan``, an edited copy of each, frozen
    to its clean row; ``edits(entry, loc)`` lists the copy's (position, vector (D, d)) additions
    to the clean values at every depth. Returns log-probabilities (1 + len(plan), query, answer,
    context): index 0 the clean rows, 1 + e entry e's copies; passes within ``batch_size``."""
    n_ctx = len(located) // n_queries
    T = _one_length(located)
    out = np.zeros((1 + len(plan), n_queries, len(cand[0]), n_ctx))
    for jobs in run.steps(_passes(run, n_ctx, n_queries, len(plan), n_queries), label):
        ids = [located[n_queries * i + q].ids for i, _ in jobs for q in range(n_queries)]
        answers = [cand[i] for i, _ in jobs for _ in range(n_queries)]
        e_rows, e_src, e_pos, e_add, frozen = [], [], [], [], []
        for j, (i, entries) in enumerate(jobs):
            for e in entries:
                for q in range(n_queries):
                    row, clean, loc = len(ids), n_queries * j + q, located[n_queries * i + q]
                    ids.append(loc.ids)
                    answers.append(cand[i])
                    frozen.append((row, clean, loc.context_end))
                    for pos, vec in edits(plan[e], loc):
                        e_rows.append(row)
                        e_src.append(clean)
                        e_pos.append(pos)
                        e_add.append(vec.float())
        scores = run.call(_br.edited_scores, torch.tensor(ids), torch.tensor(answers), torch.tensor(e_rows),
                          torch.tensor(e_src), torch.tensor(e_pos), torch.stack(e_add, 1),
                          freeze=_freeze_arg(frozen, T) if freeze else None)
        lp = scores.log_probs.numpy()
        k = n_queries * len(jobs)
        for j, (i, entries) in enumerate(jobs):
            out[0, :, :, i] = lp[n_queries * j:n_queries * (j + 1)]
            for e in entries:
                out[1 + e, :, :, i] = lp[k:k + n_queries]
                k += n_queries
    return out


def _freeze_arg(frozen: list[tuple[int, int, int]], T: int) -> tuple:
    """``edited_scores``' freeze argument from (row, clean row, context end) triples."""
    mask = torch.tensor([[t < end for t in range(T)] for _, _, end in frozen])
    return torch.tensor([r for r, _, _ in frozen]), torch.tensor([c for _, c, _ in frozen]), mask


def _cyclic(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int],
            measure: str = "cyclic") -> xr.Dataset:
    """binding-iclr's cyclic swaps of three binding IDs (Fig. 6 right; ``rx:598-670``,
    ``coref/data_collection.py:789-861``): with Δ_0 = 0 and Δ_1, Δ_2 estimated as for the mean
    interventions, a permutation π moves the binding ID of the entities (or of the attributes)
    at side i to that of side π(i), adding Δ_π(i) − Δ_i there (per token of the window) at every depth with the context
    frozen. Binding IDs predict that E_i then answers A_π(i) (entities moved), or A_π⁻¹(i)
    (attributes moved). Accuracy as the repository's ``reduce_balanced_acc``: each answer's
    log-probability minus its median over the queries and contexts of that run, then the
    argmax among the three answers; averaged over the two 3-cycles and the queries. The
    control is the clean run scored the same way against the stated binding.

    ``measure="pairwise"``: the same with the three switches of two sides, (0, 1), (0, 2) and
    (1, 2), instead of the 3-cycles (``run_category_means_interventions``,
    ``test_category_mean_interventions``, ``coref/data_collection.py:720-786``: the sides i and j
    get Δ_j − Δ_i and Δ_i − Δ_j, the third none; the notebook's ``build_intended_answers`` with
    ``is_cyclic=False``). A switch is its own inverse, so E_i answers A_π(i) either way.
    Variables ``pairwise_*`` over a ``switch`` dim."""
    model = run.model
    if contexts.n_pairs != 3 or len(contexts.estimate[0].entities) != 3:
        raise UsageError(f"the {measure} swaps are defined for 3 pairs in the contexts and the estimate contexts (got "
                         f"{contexts.n_pairs} and {len(contexts.estimate[0].entities)}); use n_pairs=3")
    perms, dim = (CYCLES, "cycle") if measure == "cyclic" else (SWITCHES, "switch")
    delta = _repository_deltas(run, contexts.estimate, tokens)  # (kind, 2, token, D, d): Δ_1, Δ_2
    ids_ = torch.cat([torch.zeros_like(delta[:, :1]), delta], 1)  # (kind, 3, token, D, d): Δ_0 = 0
    located = _locate(model, [(c, c.text(q)) for c in contexts.contexts for q in range(3)], tokens)
    cand = [backend.answer_tokens(model, list(c.answers), "attribute") for c in contexts.contexts]
    plan = [(p, kind) for p in range(len(perms)) for kind in (0, 1)]  # kind 0: entities, 1: attributes

    def edits(entry, loc):  # side i takes side π(i)'s binding ID (a side π leaves in place gets nothing)
        p, kind = entry
        return [(pos, ids_[kind, perms[p][side], t] - ids_[kind, side, t]) for side in range(3)
                if perms[p][side] != side for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, f"{measure} swaps")
    logp = np.zeros((len(perms), 3, 3, 3, len(contexts)))  # (perm, target: control/entity/attribute, query, answer)
    logp[:, 0] = runs[0][None]
    for e, (p, kind) in enumerate(plan):
        logp[p, 1 + kind] = runs[1 + e]
    intended = np.zeros((len(perms), 3, 3), np.int64)  # (perm, target, query)
    for p, perm in enumerate(perms):
        inverse = [perm.index(q) for q in range(3)]
        intended[p, 0], intended[p, 1], intended[p, 2] = range(3), perm, inverse
    balanced = logp - np.median(logp, axis=(2, 4), keepdims=True)  # per answer, over queries and contexts
    right = balanced.argmax(axis=3) == intended[..., None]  # (perm, target, query, prompt)
    over = "both 3-cycles" if measure == "cyclic" else "the three switches"
    labels = ["→".join(map(str, c)) for c in perms] if measure == "cyclic" else \
        ["↔".join(str(i) for i in range(3) if perm[i] != i) for perm in perms]
    return xr.Dataset(
        {f"{measure}_logprob": ((dim, "target", "query", "answer", "prompt"), logp,
                                {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         f"{measure}_intended": ((dim, "target", "query"), intended,
                                 {"long_name": "the answer binding IDs predict (index into answer)"}),
         f"{measure}_correct": ((dim, "target", "query", "prompt"), right.astype(np.int8)),
         f"{measure}_accuracy": ("target", right.mean(axis=(0, 2, 3)),
                                 {"long_name": f"binding-iclr's balanced accuracy, over {over} and the queries"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), delta.numpy(),
                   {"long_name": "binding-ID differences Δ_k = ID_k − ID_0, k = 1, 2, per token of the window"})},
        coords={dim: np.array(labels, dtype=object),
                "target": np.array(["control", "entity", "attribute"], dtype=object),
                "query": np.array(["E0", "E1", "E2"], dtype=object), "answer": np.array(["A0", "A1", "A2"], dtype=object),
                "kind": np.array(INTERVENTIONS, dtype=object), "k": [1, 2], "token": np.arange(delta.shape[2]),
                "depth": np.arange(delta.shape[3]),
                "prompt": np.arange(len(contexts)), "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": measure, "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split")))})


def _cross_subspace(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int]) -> xr.Dataset:
    """binding-iclr's cross-task subspace test (Table 2; ``rx:738-811``
    ``run_cross_mean_interventions_cyclic_subspace``, ``coref/data_collection.py``
    ``test_cross_mean_interventions_cyclic_subspace``): can binding IDs made from *another
    task's* difference vectors bind the measured task's pairs?

    The measured family's own IDs, ID_i − ID_0 = B_i (B_0 = 0; B_1, B_2 from
    ``contexts.base_estimate``, 3 pairs), are taken out of every entity and attribute, and the
    source's differences D_1, D_2, D_3 (``contexts.estimate``: 4 pairs of ``estimate_family``)
    are put in: at side i the entity gets D_{i+1} − B_i and the attribute D_{π(i)+1} − B_i, for
    each 3-cycle π, at every depth with the context frozen. No side keeps its old ID, so the
    model can answer by the new IDs only: E_i answers A_π⁻¹(i) if the source's vectors span
    binding IDs for this task. Baselines as the repository's: ``zeros`` (every D = 0, so all
    six tokens get ID_0) and ``random`` (D_{i+1} a random vector of B_i's norm per depth,
    seeded). Accuracy: ``reduce_balanced_acc`` as for the cyclic swaps; ``control`` is the
    clean run against the stated binding."""
    model = run.model
    est = contexts.estimate
    if contexts.n_pairs != 3 or len(est[0].entities) != 4 or not contexts.base_estimate:
        raise UsageError(f"the cross-task subspace test measures 3 pairs with difference vectors of 4-pair "
                         f"estimate contexts (got {contexts.n_pairs} and {len(est[0].entities)}); CLI: --n-pairs 3; Python: "
                         f"binding_contexts(n, 3, m, seed, family, estimate_family=F, estimate_pairs=4)")
    base = _repository_deltas(run, contexts.base_estimate, tokens)  # (kind, 2, token, D, d): B_1, B_2
    base = torch.cat([torch.zeros_like(base[:, :1]), base], 1)  # (kind, 3, token, D, d), B_0 = 0
    source = _repository_deltas(run, est, tokens)  # (kind, 3, token, D, d): D_1, D_2, D_3 (per-token, unspread)
    gen = torch.Generator().manual_seed(contexts.seed)
    rand = torch.randn(base.shape, generator=gen, dtype=torch.float64).float()
    rand = rand / rand.norm(dim=-1, keepdim=True) * base.norm(dim=-1, keepdim=True)  # 0 where B_0 = 0
    family = est[0].family
    vectors = {family: source, "zeros": torch.zeros_like(base), "random": rand}
    names = list(vectors)
    located = _locate(model, [(c, c.text(q)) for c in contexts.contexts for q in range(3)], tokens)
    cand = [backend.answer_tokens(model, list(c.answers), "attribute") for c in contexts.contexts]
    plan = [(s, p) for s in range(len(names)) for p in range(len(CYCLES))]

    def edits(entry, loc):  # side i: entity D_{i+1} − B_i, attribute D_{π(i)+1} − B_i (per token)
        s, p = entry
        vec = vectors[names[s]]
        return ([(pos, vec[0, i, t] - base[0, i, t]) for i in range(3) for t, pos in enumerate(_span(loc, 0, i, tokens))]
                + [(pos, vec[1, CYCLES[p][i], t] - base[1, i, t]) for i in range(3)
                   for t, pos in enumerate(_span(loc, 1, i, tokens))])

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, "cross-task subspace")
    logp = np.zeros((len(names), len(CYCLES), 3, 3, len(contexts)))  # (source, cycle, query, answer, prompt)
    for e, (s, p) in enumerate(plan):
        logp[s, p] = runs[1 + e]
    intended = np.array([[cyc.index(q) for q in range(3)] for cyc in CYCLES])  # (cycle, query): A_π⁻¹(i)
    balanced = logp - np.median(logp, axis=(2, 4), keepdims=True)
    right = balanced.argmax(axis=3) == intended[None, :, :, None]  # (source, cycle, query, prompt)
    clean = runs[0] - np.median(runs[0], axis=(0, 2), keepdims=True)  # (query, answer, prompt)
    control = clean.argmax(axis=1) == np.arange(3)[:, None]
    return xr.Dataset(
        {"cross_logprob": (("source", "cycle", "query", "answer", "prompt"), logp,
                           {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         "cross_correct": (("source", "cycle", "query", "prompt"), right.astype(np.int8)),
         "cross_accuracy": ("source", right.mean(axis=(1, 2, 3)),
                            {"long_name": "binding-iclr's balanced accuracy of A_π⁻¹(i), over both 3-cycles"}),
         # Table 2's second row: reduce_mean_correct_logit (paper_plots cell 36), unbalanced
         "cross_intended_logprob": ("source", np.take_along_axis(logp, intended[None, :, :, None, None], 3)
                                    .mean(axis=(1, 2, 3, 4)),
                                    {"long_name": "mean log-probability of the intended answer A_π⁻¹(i)",
                                     "units": "nats"}),
         "control_accuracy": ((), float(control.mean()),
                              {"long_name": "balanced accuracy of the stated binding, clean run"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), base[:, 1:].numpy(),
                   {"long_name": "the measured family's binding-ID differences B_k, k = 1, 2"}),
         "source_delta": (("kind", "j", "token", "depth", "d_model"), source.numpy(),
                          {"long_name": f"the source's ({family}) differences D_j, j = 1, 2, 3 (4 pairs)"})},
        coords={"source": np.array(names, dtype=object),
                "cycle": np.array(["→".join(map(str, c)) for c in CYCLES], dtype=object),
                "query": np.array(["E0", "E1", "E2"], dtype=object), "answer": np.array(["A0", "A1", "A2"], dtype=object),
                "kind": np.array(INTERVENTIONS, dtype=object), "k": [1, 2], "j": [1, 2, 3],
                "token": np.arange(base.shape[2]), "depth": np.arange(base.shape[3]), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "cross_subspace", "metric": "accuracy",
               "freeze_context": int(freeze), "split": int(bool(contexts.params.get("split")))})


def _subspace(run: Run, contexts: BindingContexts, freeze: bool, roots: list[tuple[float, float]],
              grid: int, tokens: tuple[int, int], cross: bool = False) -> xr.Dataset:
    """binding-iclr's binding subspace (Fig. 5; ``test_subspace``, ``coref/data_collection.py:
    578-717``, ``scripts/run_experiment.py:240-441``): Δ_1 and Δ_2 from 3-pair estimate contexts;
    the basis s0 = Δ_1 and o = Δ_2 − ⟨ŝ0, Δ_2⟩ ŝ0 (one Gram–Schmidt step over the entity and
    attribute vectors of every token and depth together); in a 2-pair context, side 0's entity and
    attribute get r0·Δ_1 + r1·o (the root) and side 1's get −Δ_1 + x·Δ_1 + y·o, for x and y on
    ``grid`` points of [−0.5, 1.5], at every depth with the context frozen. Queries E0, E1 and a
    null entity; the accuracy is the mean-interventions' calibrated one (the stated binding wins
    after subtracting the null query's median), averaged over E0 and E1: high where side 1's
    ID stays distinguishable from side 0's. Δ_2's own coordinates are ``delta2_coords``.

    ``cross`` (the repository's ``--cross_countries``, ``coref/data_collection.py:626-628``): the
    attributes' coordinates go to the opposite sides, side 1's −Δ_1 staying where it is: side 0's
    attribute gets x·Δ_1 + y·o and side 1's −Δ_1 + r0·Δ_1 + r1·o."""
    model = run.model
    if contexts.n_pairs != 2 or len(contexts.estimate[0].entities) != 3:
        raise UsageError("the subspace test uses contexts of 2 pairs and estimate contexts of 3: "
                         "nr.tasks.binding_contexts(n, 2, n_estimate, estimate_pairs=3, split=True)")
    located, _, cand = _null_queries(model, contexts, tokens)
    delta = _repository_deltas(run, contexts.estimate, tokens).double()  # (kind, 2, token, D, d)
    s0, s1 = delta[:, 0], delta[:, 1]
    unit = s0 / s0.norm()
    ortho = s1 - (unit * s1).sum() * unit
    coords = [float((s1 * s0).sum() / (s0 * s0).sum()), float((s1 * ortho).sum() / (ortho * ortho).sum())]
    axis = np.linspace(-0.5, 1.5, grid)
    cells = [(r, xi, yi) for r in range(len(roots)) for xi in range(grid) for yi in range(grid)]

    def edits(cell, loc):  # side 0 at the root, side 1 at (x, y) (the attributes' crossed with ``cross``)
        r, xi, yi = cell
        at = (roots[r][0] * s0 + roots[r][1] * ortho, axis[xi] * s0 + axis[yi] * ortho)  # coefficients' side

        def vec(kind, side):  # side 1's base ID (Δ_1) is taken out where it is, the coordinates put in
            return (-s0 if side == 1 else 0) + at[1 - side if cross and kind == 1 else side]
        return [(pos, vec(kind, side)[kind, t]) for kind in (0, 1) for side in (0, 1)
                for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, cells, edits, freeze, "subspace")
    logp = runs[1:].reshape(len(roots), grid, grid, *runs.shape[1:])
    right = _calibrated_right(logp)  # (root, x, y, query, prompt)
    return xr.Dataset(
        {"subspace_logprob": (("root", "x", "y", "query", "answer", "prompt"), logp, {"units": "nats"}),
         "subspace_accuracy": (("root", "x", "y"), right.mean(axis=(3, 4)),
                               {"long_name": "calibrated accuracy of the stated binding, over E0 and E1"}),
         "delta2_coords": ("basis", np.array(coords), {"long_name": "Δ_2 in the basis (Δ_1, o)"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), delta.float().numpy())},
        coords={"root": np.arange(len(roots)), "root_x": ("root", [a for a, _ in roots]),
                "root_y": ("root", [b for _, b in roots]), "x": axis, "y": axis,
                "query": np.array(["E0", "E1", "null"], dtype=object), "answer": np.array(["A0", "A1"], dtype=object),
                "basis": np.array(["delta1", "ortho"], dtype=object), "kind": np.array(INTERVENTIONS, dtype=object),
                "k": [1, 2], "token": np.arange(delta.shape[2]), "depth": np.arange(delta.shape[3]),
                "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "subspace", "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split"))), "cross_attributes": int(cross)})


def _mcq(run: Run, contexts: McqContexts, max_width: int, freeze: bool = True) -> xr.Dataset:
    """binding-iclr's MCQ test (``mcq_parallel_exchange``, ``coref/data_collection.py:962-1076``;
    ``run_mcq``, ``scripts/run_experiment.py:813-834``, ``max_width=5``). For width w = 1 …
    ``max_width``, the residual stream (every depth) of the last w tokens of each option's line
    — up to and including the first token after it, the repository's exclusive end — is
    overwritten by the source context's, which states the same options with the two letters
    exchanged; w = 0 is the clean run. Queries: each option's review; answers: the
    log-probabilities (full vocabulary) of the two letters at the last position. If the lines'
    last tokens carry which letter goes with which option, the model answers the *other*
    letter: ``mcq_swap_accuracy`` (w) is the share of queries where it does (argmax);
    ``mcq_balanced_swap_accuracy`` (w) scores it as the repository (``reduce_balanced_acc(t, [1,
    0])``, notebook cell 42: each letter's log-probability minus its median over the queries and
    contexts of that width, then the argmax). The source row reads the same review (the options
    come first, so its edited positions are the repository's). With ``freeze`` the context (the
    option lines, up to the first token after them) keeps its clean values at every depth
    before the edits, as the repository's runner does (``run_intervened_model``, dependent
    start = the context section's end), so an edit of one line does not reach the other's
    tokens; only the review and the answer read it."""
    model = run.model
    items = [(i, q) for i in range(len(contexts)) for q in (0, 1)]
    ctxs = contexts.contexts
    encoded = backend.tokenize_with_offsets(model, [ctxs[i].text(q) for i, q in items]
                                            + [ctxs[i].text(q, swapped=True) for i, q in items])
    clean, source = encoded[:len(items)], encoded[len(items):]
    windows = []  # per item and statement: (first token of the line, the first token after it)
    for (i, q), (ids, spans), (sids, _) in zip(items, clean, source):
        if len(sids) != len(ids):
            raise UsageError("exchanging the letters changes the prompt's token length for this tokenizer; "
                             "use letters of one token each")
        lines = []
        for a, b in ctxs[i].statement_spans():
            first = next(t for t, (x, y) in enumerate(spans) if y > a)
            after = next(t for t, (x, y) in enumerate(spans) if y > b)  # the token holding the line's end
            if after - max_width + 1 < first:
                raise UsageError(f"max_width={max_width} reaches past the start of an option's line ({after - first + 1} "
                                 f"tokens with the next one) for this tokenizer; use a smaller max_width")
            lines.append(after)
        windows.append(lines)
    cand = [backend.answer_tokens(model, list(ctxs[i].labels), "letter") for i, _ in items]
    W = max_width
    logp = np.zeros((W + 1, len(items), 2))
    for chunk in run.steps(run.batches([len(ids) for ids, _ in clean], rows_per_item=2 + W), "mcq exchange"):
        ids, answers, e_rows, e_src, e_pos, frozen = [], [], [], [], [], []
        for k in chunk:  # the clean row, the source row, then one edited row per width
            base = len(ids)
            ids += [clean[k][0], source[k][0]] + [clean[k][0]] * W
            answers += [cand[k]] * (2 + W)
            for w in range(1, W + 1):
                # the context section ends where the last option's line does (its window's end token)
                frozen.append((base + 1 + w, base, windows[k][-1]))
                for end in windows[k]:
                    for pos in range(end - w + 1, end + 1):
                        e_rows.append(base + 1 + w)
                        e_src.append(base + 1)
                        e_pos.append(pos)
        lp = run.call(_br.edited_scores, torch.tensor(ids), torch.tensor(answers), torch.tensor(e_rows),
                      torch.tensor(e_src), torch.tensor(e_pos),
                      freeze=_freeze_arg(frozen, len(ids[0])) if freeze else None).log_probs.numpy()
        for j, k in enumerate(chunk):
            row = j * (2 + W)
            logp[0, k] = lp[row]
            logp[1:, k] = lp[row + 2: row + 2 + W]
    logp = logp.reshape(W + 1, len(contexts), 2, 2).transpose(0, 2, 3, 1)  # (width, query, answer, prompt)
    best = logp.argmax(axis=2)  # (width, query, prompt)
    swapped = best == (1 - np.arange(2))[None, :, None]
    # reduce_balanced_acc: per width and letter, the median over queries and contexts subtracted
    balanced = (logp - np.median(logp, axis=(1, 3), keepdims=True)).argmax(axis=2) == (1 - np.arange(2))[None, :, None]
    return xr.Dataset(
        {"mcq_logprob": (("width", "query", "answer", "prompt"), logp,
                         {"long_name": "log-probability of each statement's letter (full vocabulary)", "units": "nats"}),
         "mcq_swapped": (("width", "query", "prompt"), swapped.astype(np.int8),
                         {"long_name": "the other statement's letter wins (what the exchanged lines predict)"}),
         "mcq_swap_accuracy": ("width", swapped.mean(axis=(1, 2)),
                               {"long_name": "share of queries answered with the exchanged letter"}),
         "mcq_balanced_swap_accuracy": ("width", balanced.mean(axis=(1, 2)),
                                        {"long_name": "binding-iclr's balanced accuracy of the exchanged letter (each "
                                                      "letter's median over queries and contexts subtracted)"}),
         "control_accuracy": ((), float((best[0] == np.arange(2)[:, None]).mean()),
                              {"long_name": "clean run: the queried option's own letter wins"})},
        coords={"width": np.arange(W + 1), "query": np.array(["option 0", "option 1"], dtype=object),
                "answer": np.array(["L0", "L1"], dtype=object), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in ctxs])},
        attrs={"method": "binding_ids", "measure": "mcq", "metric": "accuracy", "max_width": W,
               "freeze_context": int(freeze)})


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
        {"correct": (("prompt", "query"), correct.reshape(shape),
                     {"long_name": "the queried pair's attribute wins among the candidates (clean run)"}),
         "factor_correct": (("target", "prompt", "query"), f.reshape((2,) + shape),
                            {"long_name": "the attribute binding IDs predict wins after substitution (NaN: the "
                                          "donor's entity, for target attribute its attribute, is not new to the "
                                          "context)"}),
         "position_correct": (("prompt", "query"), position.reshape(shape),
                              {"long_name": "the queried pair's attribute wins with the position ids of statements "
                                            "0 and 1 exchanged"}),
         "swap": (("intervention", "vector", "prompt", "query"), swap.reshape((2, 2) + shape),
                  {"long_name": "after +vector at pair 0 and −vector at pair 1, the expected attribute wins: "
                                "pair 1's for query 0, pair 0's for query 1, its own for any other query"}),
         "accuracy": ((), correct.mean(), {"long_name": "accuracy, clean run (mean of correct)", "units": "1"}),
         "factor_accuracy": ("target", np.nanmean(f, axis=1),
                             {"long_name": "accuracy after substitution (mean of factor_correct, NaN rows left out)",
                              "units": "1"}),
         "position_accuracy": ((), position.mean(),
                               {"long_name": "accuracy with position ids exchanged (mean of position_correct)",
                                "units": "1"}),
         "swap_accuracy": (("intervention", "vector"), swap.mean(-1),
                           {"long_name": "accuracy of the swap (mean of swap)", "units": "1"}),
         "delta_norm": (("intervention", "depth"), delta.norm(dim=-1).numpy(),
                        {"long_name": "norm of the binding-ID difference vector (depth 0 = embeddings)"})},
        coords={"prompt": ("prompt", np.arange(len(contexts)),
                           {"long_name": "context index (its donor is the next context)"}),
                "query": ("query", np.arange(n_pairs), {"long_name": "queried pair: whose entity is asked about"}),
                "target": ("target", np.array(INTERVENTIONS, dtype=object),
                           {"long_name": "token substituted from the donor: the queried pair's entity or attribute"}),
                "intervention": ("intervention", np.array(INTERVENTIONS, dtype=object),
                                 {"long_name": "tokens the vector is added to: the entities or the attributes of "
                                               "pairs 0 and 1"}),
                "vector": ("vector", np.array(VECTORS, dtype=object),
                           {"long_name": "vector added: mean (binding-ID difference Δ) or random (Δ's norm at each "
                                         "depth)"}),
                "depth": ("depth", np.arange(delta.shape[1]),
                          {"long_name": "residual-stream depth: 0 = embeddings, d = output of layer d − 1"}),
                "text": ("prompt", [c.text(0) for c in contexts], {"long_name": "prompt text (querying pair 0)"})},
        attrs={"method": "binding_ids", "metric": "accuracy", "chance": 1 / n_pairs})


def _per_cycle_table(ds: xr.Dataset, title: str, row_dim: str, row_label: str, correct: str, accuracy: str) -> Any:
    """A table of balanced accuracy per ``row_dim`` entry and permutation (3-cycle or switch), and
    their mean."""
    from rich.table import Table

    table = Table(title=title)
    perms = ds["cycle"] if "cycle" in ds.dims else ds["switch"]
    for col in (row_label, *[str(c) for c in perms.values], "mean"):
        table.add_column(col, justify="left" if col == row_label else "right")
    per = ds[correct].mean(("query", "prompt"))
    for r in ds[row_dim].values:
        table.add_row(str(r), *[f"{float(x):.3f}" for x in per.sel({row_dim: r}).values],
                      f"{float(ds[accuracy].sel({row_dim: r})):.3f}")
    return table


def summarize(ds: xr.Dataset) -> list[Any]:
    """Each binding measure's accuracy against chance; over checkpoints, one column each. For
    the factorization test, the outcome accuracy per side and substitution; for the position
    sweep, the mean log-probabilities at the original and the exchanged positions."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    measure = ds.attrs.get("measure", "accuracy")
    if measure == "mcq":
        ds = last_checkpoint(ds)
        table = Table(title="share of queries answered with the other option's letter after the last w tokens of "
                            "each option's line come from the letter-swapped context")
        for col in ("w", "exchanged letter wins", "balanced", "mean log p(own letter)", "mean log p(other letter)"):
            table.add_column(col, justify="right")
        own = np.stack([ds["mcq_logprob"].values[:, q, q] for q in (0, 1)], 1).mean(axis=(1, 2))
        other = np.stack([ds["mcq_logprob"].values[:, q, 1 - q] for q in (0, 1)], 1).mean(axis=(1, 2))
        for w in ds["width"].values:
            balanced = ds["mcq_balanced_swap_accuracy"].sel(width=w) if "mcq_balanced_swap_accuracy" in ds else np.nan
            table.add_row(str(int(w)), f"{float(ds['mcq_swap_accuracy'].sel(width=w)):.3f}", f"{float(balanced):.3f}",
                          f"{own[w]:.2f}", f"{other[w]:.2f}")
        return [f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} contexts "
                f"· MCQ exchange (binding-iclr); clean accuracy {float(ds['control_accuracy']):.3f}", table]
    if measure == "subspace":
        ds = last_checkpoint(ds)
        table = Table(title="calibrated accuracy over the grid of side 1's binding ID (x·Δ_1 + y·o − Δ_1), per root")
        for col in ("root (side 0)", "mean", "min", "at Δ_2's coordinates"):
            table.add_column(col, justify="right")
        cx, cy = (float(v) for v in ds["delta2_coords"].values)
        for r in ds["root"].values:
            grid = ds["subspace_accuracy"].sel(root=r)
            near = grid.sel(x=cx, y=cy, method="nearest")
            table.add_row(f"({float(ds['root_x'][r]):.1f}, {float(ds['root_y'][r]):.1f})", f"{float(grid.mean()):.3f}",
                          f"{float(grid.min()):.3f}", f"{float(near):.3f}")
        crossed = " (attributes' coordinates on the opposite sides, --cross_countries)" \
            if ds.attrs.get("cross_attributes") else ""
        return [f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} contexts "
                f"· binding subspace (binding-iclr Fig. 5){crossed}; Δ_2 = {cx:.2f}·Δ_1 + {cy:.2f}·o", table]
    if measure == "cross_subspace":
        ds = last_checkpoint(ds)
        table = _per_cycle_table(ds, "balanced accuracy of the binding the source's IDs predict (E_i → A_π⁻¹(i))",
                                 "source", "source of D_1…D_3", "cross_correct", "cross_accuracy")
        return [f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} contexts "
                f"of 3 pairs · cross-task subspace (binding-iclr Table 2); control (clean run, stated binding) "
                f"{float(ds['control_accuracy']):.3f}", table]
    if measure in ("cyclic", "pairwise"):
        ds = last_checkpoint(ds)
        what = ("cyclic swap", "cyclic swaps of binding IDs (binding-iclr Fig. 6 right)") if measure == "cyclic" else \
            ("switch", "two of three binding IDs switched (binding-iclr Table 1 without --cyclic)")
        table = _per_cycle_table(ds, f"balanced accuracy of the binding the {what[0]} predicts (control: the stated "
                                     "one)", "target", "target", f"{measure}_correct", f"{measure}_accuracy")
        return [f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} contexts "
                f"of 3 pairs · {what[1]}", table]
    if measure == "means":
        ds = last_checkpoint(ds)
        head = (f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} "
                f"contexts · mean interventions (binding-iclr Table 1{', train/test words' if ds.attrs.get('split') else ''}"
                f"{', context frozen' if ds.attrs.get('freeze_context') else ''})")
        table = Table(title="accuracy of the original binding after +Δ at side 0, −Δ at side 1 (binding IDs: "
                            "≈ 0 for one swap, ≈ 1 for both)")
        table.add_column("intervention")
        for v in ds["vector"].values:
            table.add_column(f"{v} vector", justify="right")
        acc = ds["means_accuracy"].sel(query=["E0", "E1"]).mean("query")
        for i in ds["intervention"].values:
            table.add_row(str(i), *[f"{float(acc.sel(intervention=i, vector=v)):.3f}" for v in ds["vector"].values])
        return [head, table]
    if measure in ("factorization", "position"):
        ds = last_checkpoint(ds)
        head = (f"{ds.attrs.get('task')} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} "
                f"contexts · {measure} (binding-iclr{', context frozen' if ds.attrs.get('freeze_context') else ''})")
        if measure == "factorization":
            table = Table(title="accuracy of the answer binding IDs predict, per substitution (columns: side)")
            table.add_column("substituted")
            for s in ds["side"].values:
                table.add_column(f"side {int(s)}", justify="right")
            for e, a, name in ((0, 0, "none"), (0, 1, "attribute"), (1, 0, "entity"), (1, 1, "both")):
                table.add_row(name, *[f"{float(x):.3f}" for x in
                                      ds["outcome_accuracy"].sel(swap_entity=e, swap_attribute=a).values])
            return [head, table]
        table = Table(title="mean log-probability (query → answer) at the original and exchanged positions")
        table.add_column("target")
        table.add_column("offset")
        for q in ds["query"].values:
            for a in ds["answer"].values:
                table.add_column(f"{q} → {a}", justify="right")
        for t in ds["target"].values:
            for o in (0, int(ds["distance"].sel(target=t))):
                if o not in ds["offset"].values:
                    continue
                v = ds["position_mean"].sel(target=t, offset=o)
                table.add_row(str(t), str(o), *[f"{float(v.sel(query=q, answer=a)):.2f}" for q in ds["query"].values
                                                for a in ds["answer"].values])
        return [head, table]

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
