"""What the binding measures share: locating entities and attributes in a context, the queries,
the batched passes and their edits, the binding-ID difference vectors, and the result's
accuracy dataset. See the package docstring for the measures."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ... import backend
from ...backend import resid as _br
from ...errors import UsageError
from ...runner import Run
from ...tasks.binding import BindingContext, BindingContexts


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
