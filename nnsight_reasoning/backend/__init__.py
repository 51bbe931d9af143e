"""The one module that talks to nnsight: every trace, intervention and save lives here.

Experiments describe *what* to run as plain tensors (:class:`Patch`) and receive small
tensors back, so the same code runs locally and on NDIF (``remote=True``) and no experiment
file has to know nnsight's rules (forward-order access, in-place edits, ``.save()``).

Trace bodies are shipped to NDIF, where this package is not installed: they call nnsight,
torch, builtins and the helpers of :mod:`.trace_ops`, which is registered with
``nnsight.register`` below so that its functions travel with each request as source. Module
Envoys are resolved before a trace (from :mod:`..sites`), never inside one.

A trace body that opens ``with loss.backward():`` keeps every statement before that line on
one line of its own, with no comment-only or blank lines after its first statement: with
``remote="local"`` nnsight re-runs the block from ``ast.unparse``'d source but reads the
nested block from this file by line number (nnsight 0.8.1), so the two must line up.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import nnsight
import torch

from .. import remote as _remote
from ..errors import UsageError
from ..nnsight_shim import torch_module
from ..sites import EMBED_SITES, PROB_SITES, SITES, WHOLE_PROMPT_SITES, architecture, context_length, dims, resolve
from ..tasks.base import joined_token_id, single_token_id, space_token_id, spaced_answer_id
from . import packed, trace_ops
from .trace_ops import (on_device, batch_kwargs, batch_rows, gate_heads, head_columns, interpolate, join_columns,
                        packed_inputs, packed_mask, score_answers, site_values, split_heads)

nnsight.register(trace_ops)  # trace bodies name its helpers; NDIF rebuilds them from their source


@dataclass(frozen=True)
class Patch:
    """Patched copies of input rows: entry i adds one row to the batch, a copy of input row
    ``rows[i]`` in which the ``site`` activation at ``layer``, position ``positions[i]`` (head
    or neuron or dimension ``heads[i]``) is replaced by that of input row ``src_rows[i]``. An
    ``embed`` or ``embed_dim`` patch has ``layer`` 0: it edits the first layer's input. The
    whole-prompt sites (``attn_pattern``, ``attn_layer_pattern``) replace every query of the
    pattern from ``positions[i]`` on: 0 for the whole pattern, or the first token where the two
    prompts differ (the rows above it are the same in both runs, so the copy need not hold
    them); ``attn_layer_pattern`` (every head) has ``heads`` None.

    All index tensors have the same length k. A copy joins the batch only where its patch
    happens (the input of ``layer``; after it for ``resid``): up to there it would equal its
    original row, so the layers below are computed once per input row, not once per copy.
    Source rows are input rows, which are never patched, so every copy reads clean values.
    """

    site: str
    layer: int
    rows: torch.Tensor
    src_rows: torch.Tensor
    positions: torch.Tensor
    heads: torch.Tensor | None = None


@dataclass(frozen=True)
class Scores:
    """Next-token scores at the last position for K candidate tokens per row.

    ``log_probs``, ``logits``: (rows, K) float64; ``rank``: (rows,) int64, the rank of the row's
    best candidate (of those :func:`answer_scores`' ``best_of`` marks), 0 = argmax, and ``top``:
    (rows,) int64, the id of the row's most probable token; both None when not asked for (they
    cost a comparison over the whole vocabulary per row).
    """

    log_probs: torch.Tensor
    logits: torch.Tensor
    rank: torch.Tensor | None = None
    top: torch.Tensor | None = None


def answer_scores(
    model: Any,
    input_ids: torch.Tensor,
    answer_ids: torch.Tensor,
    patches: Sequence[Patch] = (),
    *,
    rank: bool | str = True,
    best_of: torch.Tensor | None = None,
    remote: bool | str = False,
) -> Scores:
    """One forward pass over ``input_ids`` (n, T) plus the patched copies ``patches`` describe.

    ``answer_ids`` (n, K): candidate tokens per input row; a copy scores its original row's.
    ``rank``: True (the rank of each row's best candidate, and top tokens), "top" (top tokens
    only: one argmax per row), False. ``best_of`` (n, K) bool: the candidates the rank is the
    best of (an answer set's members, not its distractors); all when None.
    Returns scores for n + Σ len(patch.rows) rows: the input rows, then each patch's copies in
    the order ``patches`` lists them. Only these scores come back, so remote runs download a
    few numbers per row, never activations or full logits. ``remote``: False (here), "local"
    (nnsight's serialisation path, run here), True or a host URL (one NDIF job).
    """
    _check_pattern_starts(input_ids, patches)
    d = dims(model)
    if ENGINE == "v2" and packed.usable(model, architecture(model), patches):
        return _packed_scores(model, input_ids, answer_ids, patches, rank, best_of, remote, d)
    plan, origin, order = _plan(model, patches, *input_ids.shape)
    saved = _run(model, _trace_scores, (model, input_ids, answer_ids[origin], plan, d["n_heads"], d["head_dim"], rank,
                                        None if best_of is None else best_of[origin]), remote, "scores")
    return Scores(*(None if t is None else t.detach().cpu()[order] for t in saved))


def _check_pattern_starts(input_ids: torch.Tensor, patches: Sequence[Patch]) -> None:
    """A whole-pattern patch may start at query p only where its row and source row share their
    first p tokens (the rows of the pattern above are then the same in both runs); otherwise it
    would silently be another intervention (at p = T - 1, one query's weights)."""
    t = input_ids.shape[1]
    for p in patches:
        if p.site in WHOLE_PROMPT_SITES and len(p.rows):
            starts = p.positions.to(torch.long)
            before = torch.arange(t)[None] < starts[:, None]  # (k, T): the rows left as they are
            if (starts < 0).any() or (starts >= t).any() or \
                    ((input_ids[p.rows] != input_ids[p.src_rows]) & before).any():
                raise ValueError(f"a {p.site} patch starts at query p (Patch.positions) only where its row and "
                                 f"source row share their first p tokens, 0 <= p < {t}")


# Scores.rank is (rows,), the best marked candidate's, since format 2 ((rows, K) before): parts kept
# by the older version are refused by a resumed run (runner.Run.call), recomputed, never misread.
answer_scores.parts_format = 2


#: The patching engine :func:`answer_scores` uses: "v2" (packed suffix rows, :mod:`.packed`,
#: wherever :func:`.packed.usable` allows; else v1) or "v1" (each copy a whole row from the
#: layer of its patch up). Switch it with :func:`engine`.
ENGINE = "v2"


def engine_in_use() -> str:
    """The patching engine now selected ("v1" or "v2"; see :func:`engine`)."""
    return ENGINE


@contextmanager
def engine(name: str) -> Iterator[None]:
    """Run :func:`answer_scores` with patching engine ``name`` ("v1" or "v2") for the duration
    (tests and benchmarks compare the two)."""
    global ENGINE
    if name not in ("v1", "v2"):
        raise ValueError(f"unknown patching engine {name!r}; choose v1 or v2")
    old, ENGINE = ENGINE, name
    try:
        yield
    finally:
        ENGINE = old


def _packed_scores(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, patches: Sequence[Patch],
                   rank: bool | str, best_of: torch.Tensor | None, remote: bool | str, d: dict[str, int]) -> Scores:
    """:func:`answer_scores` by engine v2: one forward pass over the packed layout of
    :func:`.packed.plan` (the copies' suffix columns beside their base rows)."""
    arch = architecture(model)
    layers, modules = _site_modules(model, patches)
    plan = packed.plan(input_ids, patches, list(layers), modules, d["d_model"])
    saved = _run(model, _trace_packed, (model, plan.ids, plan.pos, plan.seq, plan.pre, plan.lim, plan.n_seg, plan.steps,
                                        plan.out_rows, plan.out_cols, answer_ids[plan.origin],
                                        resolve(model, arch.unembed), arch.mask_arg, d["n_heads"], d["head_dim"],
                                        rank, None if best_of is None else best_of[plan.origin]), remote, "scores")
    return Scores(*(None if t is None else t.detach().cpu() for t in saved))


def _trace_packed(model, ids, pos, seq, pre, lim, n_seg, steps, out_rows, out_cols, answer_ids, unembed, mask_arg,
                  n_heads, head_dim, rank, best_of, remote=False, backend=None):
    scores = None  # a non-blocking remote backend leaves it unset; the job's result holds it
    full = ids.shape[1]
    with torch.no_grad(), model.trace(ids, position_ids=pos, remote=remote, backend=backend, logits_to_keep=0,
                                      use_cache=False):
        mask = None
        for layer, width, join_in, inner, join_out, outer in steps:
            args, kwargs = layer.inputs
            hidden = args[0]
            if mask is None:  # the first layer's input: every column's embedding; only the segments' are used
                mask = packed_mask(seq, pre, lim, pos, hidden)
                hidden = hidden[:, :n_seg]
            if join_in is not None:  # copies patched in this layer join with their base row's values
                hidden = join_columns(hidden, join_in)
            for kind, module, dst, src in inner:
                if kind in ("embed", "embed_dim"):  # the embeddings are this (first) layer's input
                    hidden[dst] = hidden[src]
            layer.inputs = packed_inputs(hidden, args, kwargs, full, width, mask, mask_arg)
            for kind, module, dst, src in inner:
                if kind not in ("embed", "embed_dim"):
                    x = site_values(kind, module, n_heads, head_dim)  # a view: the edit lands in the pass
                    x[dst] = x[src]
            if join_out is not None:  # resid copies join after the layer, patched there
                out = layer.output
                x = join_columns(out[0] if isinstance(out, tuple) else out, join_out)
                x[outer[0]] = x[outer[1]]
                layer.output = (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
        # the unembedding acts per column: it gets each output row's last column only
        args, kwargs = unembed.inputs
        unembed.inputs = ((args[0][out_rows, out_cols][None],) + tuple(args[1:]), kwargs)
        scores = nnsight.save(score_answers(model.output.logits[0], answer_ids, rank, best_of))
    return scores


def _run(model: Any, trace: Any, args: tuple, remote: bool | str, saved: str) -> Any:
    """``trace(*args)`` here (``remote`` False or "local"), or as one NDIF job whose result holds
    the trace's saved variable named ``saved``."""
    if remote is False or remote == "local":
        return trace(*args, remote=remote)
    return _remote.run(model, lambda backend: trace(*args, backend=backend), remote)[saved]


def _site_modules(model: Any, patches: Sequence[Patch]) -> tuple[Any, dict]:
    """The decoder-layer Envoys, and per (site, layer) of ``patches`` the Envoy its edit acts on
    (for the attention-probability sites (attention Envoy, ``.source`` path), which the trace
    walks; none for ``embed`` and ``resid``, which edit the layer's own input or output).
    Resolved outside the trace body, which may only touch nnsight, torch and builtins."""
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    paths = {**{s: arch.attn for s in PROB_SITES}, "head": arch.o_proj, "attn": arch.attn,
             "neuron": arch.mlp_out, "mlp": arch.mlp, "mlp_dim": arch.mlp}
    if any(p.site in EMBED_SITES and p.layer != 0 for p in patches):
        raise ValueError("an embed patch applies at layer 0 (the first layer's input)")
    modules = {}
    for p in patches:
        if p.site in paths:
            m = resolve(layers[p.layer], paths[p.site])
            modules[(p.site, p.layer)] = (m, arch.attn_probs) if p.site in PROB_SITES else m
    return layers, modules


def _forward_key(p: Patch) -> tuple[int, int]:
    return p.layer, SITES.index(p.site)


def _plan(model: Any, patches: Sequence[Patch], n_inputs: int, t: int) -> tuple[list[tuple], torch.Tensor,
                                                                               torch.Tensor]:
    """Per-layer trace steps for ``n_inputs`` input rows of ``t`` tokens; the input row of each
    output row; the order of output rows that puts the copies back in ``patches`` order.

    A step is (layer module, origin, grow_in, inner, grow_out, outer):
    ``origin`` maps each row entering the layer to its input row, for the layer's batch-shaped
    arguments (the attention mask is built once for the input batch); ``grow_in``/``grow_out``
    are the rows copied at the layer's input/output; ``inner`` holds (kind, module, dst, src) for
    sites inside the layer (:func:`_indices`), ``outer`` (dst, src) for ``resid``.
    Modules are resolved here because the trace body may only touch nnsight, torch and
    builtins: it is shipped to NDIF, where this package is not installed.
    """
    layers, modules = _site_modules(model, patches)
    ordered = sorted(range(len(patches)), key=lambda i: _forward_key(patches[i]))
    groups: dict[tuple[int, int], list[Patch]] = {}  # one intervention per module and layer
    for i in ordered:
        groups.setdefault(_forward_key(patches[i]), []).append(patches[i])
    merged: dict[int, list[Patch]] = {}
    for (li, _), ps in groups.items():
        heads = None if ps[0].heads is None else torch.cat([p.heads for p in ps])  # type: ignore[misc]
        merged.setdefault(li, []).append(Patch(ps[0].site, li, *(torch.cat(t) for t in zip(
            *[(p.rows, p.src_rows, p.positions) for p in ps])), heads))
    origin = torch.arange(n_inputs)
    steps, started = [], False
    for li in range(len(layers)) if merged else []:
        inner, outer, grow_in, grow_out = [], None, None, None
        new_in = [p for p in merged.get(li, []) if p.site != "resid"]
        if new_in:
            grow_in = torch.cat([p.rows for p in new_in])
            n = len(origin)
            for p in new_in:
                inner.append((p.site, modules.get((p.site, li)),
                              *_indices(p, torch.arange(n, n + len(p.rows)), t)))
                n += len(p.rows)
            origin = torch.cat([origin, grow_in])
            started = True
        step_origin = origin if started else None
        res = [p for p in merged.get(li, []) if p.site == "resid"]
        if res:
            grow_out = res[0].rows
            copies = torch.arange(len(origin), len(origin) + len(grow_out))
            outer = _indices(res[0], copies, t)
            origin = torch.cat([origin, grow_out])
            started = True
        if step_origin is not None or grow_out is not None:
            steps.append((layers[li], step_origin, grow_in, inner, grow_out, outer))
    sizes = [len(patches[i].rows) for i in ordered]
    starts = n_inputs + torch.cumsum(torch.tensor([0] + sizes), 0)[:-1]
    pos = {i: torch.arange(int(s), int(s) + k) for i, s, k in zip(ordered, starts, sizes)}
    order = torch.cat([torch.arange(n_inputs)] + [pos[i] for i in range(len(patches))])
    return steps, origin, order


def _indices(p: Patch, rows: torch.Tensor, t: int) -> tuple[tuple, tuple]:
    """(dst, src) index tuples of patch ``p``, its copies at ``rows`` of the batch (prompts of
    ``t`` tokens), into :func:`.trace_ops.site_values`' tensor: ``attn_weights`` one query row of
    one head, (row, head, query); ``attn_pattern`` the head's query rows from its position on,
    (row, head, query) per row; ``attn_layer_pattern`` every head's, (row, all heads, query); the
    rest by :func:`.packed.site_index` (position as the column)."""
    if p.site == "attn_weights":
        return (rows, p.heads, p.positions), (p.src_rows, p.heads, p.positions)
    if p.site in ("attn_pattern", "attn_layer_pattern"):
        n = t - p.positions  # query rows per copy
        q = torch.cat([torch.arange(int(s), t) for s in p.positions])
        dst, src = rows.repeat_interleave(n), p.src_rows.repeat_interleave(n)
        if p.site == "attn_layer_pattern":
            return (dst, slice(None), q), (src, slice(None), q)
        heads = p.heads.repeat_interleave(n)
        return (dst, heads, q), (src, heads, q)
    return packed.site_index(p.site, rows, p.positions, p.src_rows, p.positions, p.heads)


def _trace_scores(model, input_ids, answer_ids, steps, n_heads, head_dim, rank, best_of, remote=False, backend=None):
    scores = None  # a non-blocking remote backend leaves it unset; the job's result holds it
    n_inputs = input_ids.shape[0]
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        for layer, origin, grow_in, inner, grow_out, outer in steps:
            if origin is not None:
                args, kwargs = layer.inputs
                hidden = args[0]
                if grow_in is not None:
                    hidden = torch.cat([hidden, hidden[grow_in]])
                for kind, module, dst, src in inner:
                    if kind in ("embed", "embed_dim"):  # the embeddings are this (first) layer's input
                        hidden[dst] = hidden[src]
                # batch-shaped arguments (the attention mask) were built for the input rows;
                # some layers take them by keyword, some (GPT-2) by position
                layer.inputs = ((hidden,) + batch_rows(args[1:], n_inputs, origin),
                                batch_kwargs(kwargs, n_inputs, origin))
            for kind, module, dst, src in inner:
                if kind not in ("embed", "embed_dim"):
                    x = site_values(kind, module, n_heads, head_dim)  # a view: the edit lands in the pass
                    x[dst] = x[src]
            if grow_out is not None:
                out = layer.output
                if isinstance(out, tuple):
                    x = torch.cat([out[0], out[0][grow_out]])
                    layer.output = (x,) + tuple(out[1:])
                else:
                    x = torch.cat([out, out[grow_out]])
                    layer.output = x
                x[outer[0]] = x[outer[1]]
        scores = nnsight.save(score_answers(model.output.logits[:, -1], answer_ids, rank, best_of))
    return scores


def head_masked_scores(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, masks: torch.Tensor, *,
                       rank: bool | str = "top", remote: bool | str = False) -> Scores:
    """Scores of ``input_ids`` (n, T) under each head mask: ``masks`` (m, layers, heads), 0 where
    a head is pruned. A pruned head's output is zero (its slice of the output projection's input;
    the projection's bias stays), as transformers' ``head_mask`` multiplying its attention
    probabilities by 0. ``answer_ids`` (n, K). Returns m·n rows, mask by mask."""
    arch = architecture(model)
    d = dims(model)
    o_projs = [resolve(layer, arch.o_proj) for layer in resolve(model, arch.layers)]
    m, n = masks.shape[0], input_ids.shape[0]
    gates = head_columns(masks.repeat_interleave(n, 0), d["head_dim"])  # (m·n, L, H·head_dim)
    saved = _run(model, _trace_head_masked, (model, input_ids.repeat(m, 1), answer_ids.repeat(m, 1), o_projs, gates,
                                             rank), remote, "scores")
    return Scores(*(None if t is None else t.detach().cpu() for t in saved))


def _trace_head_masked(model, input_ids, answer_ids, o_projs, gates, rank, remote=False, backend=None):
    scores = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        li = 0
        for o_proj in o_projs:  # forward order
            gate_heads(o_proj, gates[:, li][:, None, :])
            li += 1
        scores = nnsight.save(score_answers(model.output.logits[:, -1], answer_ids, rank))
    return scores


def require_eager(model: Any, what: str) -> None:
    """Refuse ``what`` (it reads or edits the attention probabilities) unless the model runs
    eager attention: fused kernels never form the probability matrix."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise UsageError(f"{what} need eager attention, but this model runs {impl!r}: load it with "
                         f"nr.load_model(..., attn_implementation='eager') (the default)")


def require_local(remote: bool | str, what: str) -> None:
    """Refuse ``what`` on NDIF: it reads the model's weights, which a remote run never receives
    (only saved activations come back). ``remote="local"`` (the serialisation path run here)
    passes."""
    if remote not in (False, "local"):
        raise UsageError(f"{what} reads the model's weights, which NDIF does not send; run it locally")


def attention_probs(model: Any, input_ids: torch.Tensor, layers: Sequence[int], *, last_only: bool = True,
                    question_from: torch.Tensor | None = None, reduce: str = "max",
                    head_mask: torch.Tensor | None = None, remote: bool | str = False) -> torch.Tensor:
    """Attention probabilities of ``layers`` on ``input_ids`` (n, T), no padding.

    Returns (n, len(layers), heads, Q, T) float32: Q = 1 (the last query position) with
    ``last_only`` else T. With ``question_from`` (n,) the one row is instead the ``reduce``
    ("max" or "mean") over the query positions from ``question_from[i]`` to the end, computed in
    the trace (so only n·L·H·T numbers leave it, locally or from NDIF). The softmax output is
    read from the attention module, so the model must run eager attention (fused kernels never
    form the matrix). ``head_mask`` (all layers, heads), 0 where a head is pruned: the patterns of
    the model with those heads' outputs zeroed, as :func:`head_masked_scores` prunes them (a
    pruned head's own pattern is still read; only the layers after it change).
    """
    require_eager(model, "attention patterns")
    arch = architecture(model)
    blocks = resolve(model, arch.layers)
    wanted = sorted(layers)
    if head_mask is None:
        mods = [(resolve(blocks[li], arch.attn), None, None) for li in wanted]
    else:  # every layer up to the last read, in forward order: (attention or None, o_proj, gate)
        gates = head_columns(head_mask, dims(model)["head_dim"])  # (L, H·head_dim)
        mods = [(resolve(blocks[li], arch.attn) if li in wanted else None, resolve(blocks[li], arch.o_proj), gates[li])
                for li in range(max(wanted) + 1)]
    order = torch.argsort(torch.argsort(torch.tensor(list(layers))))  # forward order -> the order asked
    if question_from is not None and reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be max or mean (got {reduce!r})")
    rows = None if question_from is None else (torch.arange(input_ids.shape[1])[None] >= question_from[:, None])
    saved = _run(model, _trace_attention, (model, input_ids, mods, last_only, rows, reduce), remote, "probs")
    return saved.detach().cpu().float()[:, order]


def _trace_attention(model, input_ids, mods, last_only, rows, reduce, remote=False, backend=None):
    probs = None
    with torch.no_grad(), model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        out = []
        for mod, o_proj, gate in mods:  # forward order: nnsight reads module outputs as the model computes them
            if o_proj is not None:  # the head mask: o_proj runs inside the attention module, before its output
                gate_heads(o_proj, gate)
            if mod is None:
                continue
            weights = mod.output[1]
            if rows is not None:  # (n, H, T, T) -> the question's query rows reduced: (n, H, 1, T)
                keep = rows.to(weights.device)[:, None, :, None]
                if reduce == "max":  # probabilities are >= 0: masked rows at 0 never win
                    out.append((weights * keep).amax(2, keepdim=True))
                else:
                    out.append((weights * keep).sum(2, keepdim=True) / keep.sum(2, keepdim=True))
            else:
                out.append(weights[:, :, -1:] if last_only else weights)
        probs = nnsight.save(torch.stack(on_device(out, out[0]), 1))  # layers may sit on several devices
    return probs


def attributions(model: Any, input_ids: torch.Tensor, answer_ids: torch.Tensor, sites: Sequence[tuple[str, int]],
                 target: str, *, ig_steps: int = 1, remote: bool | str = False) -> tuple[list[torch.Tensor], Scores]:
    """Attribution patching (gradient × activation difference) in one forward and backward pass.

    ``input_ids`` (2p, T): p source rows, then their p base rows. ``answer_ids`` (2p, 2): base
    and source answer per row. The gradient of ``target``, "logit_diff" (logit r2 − logit r1)
    or "log_prob_diff" (log P(r2) − log P(r1)), is taken at each (site, layer) in ``sites``
    and dotted with the (source − base) activation. With ``ig_steps`` = 1 the gradient is the
    base run's; with m > 1 it is the mean over m runs whose token embeddings are interpolated
    from base to source at the midpoints α = (k + ½)/m (integrated gradients on the inputs,
    as in EAP-IG); those runs are extra rows of the same pass.
    Returns one tensor per site, (p, T) or (p, T, heads) for ``head``, in the order given, and
    the clean scores of the 2p input rows. Only these come back, never activations or gradients.
    """
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    paths = {"head": arch.o_proj, "attn": arch.attn, "mlp": arch.mlp}
    ordered = sorted(range(len(sites)), key=lambda i: (sites[i][1], SITES.index(sites[i][0])))
    mods = [(sites[i][0], layers[sites[i][1]] if sites[i][0] == "resid" else resolve(layers[sites[i][1]],
             paths[sites[i][0]])) for i in ordered]
    d = dims(model)
    p = input_ids.shape[0] // 2
    if ig_steps > 1:  # the interpolated rows follow the inputs: step k of pair j is row 2p + k·p + j
        input_ids = torch.cat([input_ids, input_ids[p:].repeat(ig_steps, 1)])
        answer_ids = torch.cat([answer_ids, answer_ids[p:].repeat(ig_steps, 1)])
    alphas = ((torch.arange(ig_steps, dtype=torch.float32) + 0.5) / ig_steps).repeat_interleave(p)[:, None, None]
    if (remote is False or remote == "local") and not model.dispatched:
        model.dispatch()  # the real weights, so that _frozen freezes the ones the trace uses
    with _frozen(model):
        saved = _run(model, _trace_attributions, (model, input_ids, answer_ids, mods, target == "logit_diff",
                                                  resolve(model, arch.embed), alphas, p, ig_steps, d["n_heads"],
                                                  d["head_dim"]), remote, "saved")
    attr = [a.detach().cpu().double() for a in saved[0]][::-1]  # gradients arrive in reverse order
    back = {i: attr[k] for k, i in enumerate(ordered)}
    return [back[i] for i in range(len(sites))], Scores(*(t.detach().cpu() for t in saved[1]))


@contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Weights without ``requires_grad`` for the duration: the backward pass then computes only
    activation gradients, and never writes ``.grad`` into the user's model."""
    params = [w for w in torch_module(model).parameters() if w.requires_grad]
    for w in params:
        w.requires_grad_(False)
    try:
        yield
    finally:
        for w in params:
            w.requires_grad_(True)


def _trace_attributions(model, input_ids, answer_ids, mods, logit_target, embed, alphas, p, steps, n_heads, head_dim,
                        remote=False, backend=None):
    saved = None
    with model.trace(input_ids, remote=remote, backend=backend, logits_to_keep=1, use_cache=False):
        # Gradients start at the embeddings, so they flow even where the weights are frozen
        # (NDIF serves models without requires_grad); no gradient reaches the weights.
        embed.output = interpolate(embed.output.detach().requires_grad_(True), p, steps, alphas)
        acts = []
        for kind, module in mods:  # forward order
            if kind == "head":
                acts.append(module.input)
            elif kind == "mlp":
                acts.append(module.output)
            else:  # attention and decoder layers may return tuples; [0] is the hidden state
                out = module.output
                acts.append(out[0] if isinstance(out, tuple) else out)
        chosen_lp, chosen_lg = score_answers(model.output.logits[:, -1], answer_ids, False)
        chosen = chosen_lg if logit_target else chosen_lp
        graded = slice(p, 2 * p) if steps == 1 else slice(2 * p, None)  # the rows whose gradient counts
        objective = (chosen[graded, 1] - chosen[graded, 0]).sum()
        attr = nnsight.save([])
        with objective.backward():
            for x, (kind, _) in zip(acts[::-1], mods[::-1]):  # gradients in reverse order
                grad = x.grad[graded]
                if steps > 1:
                    grad = grad.view((steps, p) + tuple(grad.shape[1:])).mean(0)
                delta = (x[:p] - x[p:2 * p]).detach() * grad
                if kind == "head":
                    delta = split_heads(delta, n_heads, head_dim)
                attr.append(delta.sum(-1))
        saved = nnsight.save((attr, (chosen_lp[:2 * p].detach(), chosen_lg[:2 * p].detach())))
    return saved


def tokenize(model: Any, texts: Sequence[str], suffix: Sequence[int] = (),
             special_tokens: bool | Sequence[bool] = True) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's own special tokens (e.g. <bos>; per text,
    ``special_tokens`` False leaves them out, as MechanisticProbe's repository tokenises its
    ProofWriter prompts), then ``suffix`` (:func:`answer_ids`' space token, where answers follow
    one); a prompt longer than the model's context is refused (learned position tables would fail
    on it). The one tokenisation path of the toolkit (see :func:`tokenize_with_offsets`)."""
    return [ids + list(suffix) for ids, _ in _encode(model, texts, offsets=False, extra=len(suffix),
                                                     special_tokens=special_tokens)]


def tokenize_with_offsets(model: Any, texts: Sequence[str], special_tokens: bool | Sequence[bool] = True
                          ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """As :func:`tokenize`, with each token's character span ``[start, end)`` in its text
    (for mapping statements, entities and attributes to tokens); needs a fast tokenizer."""
    if not getattr(model.tokenizer, "is_fast", False):
        raise UsageError("character offsets need a fast (Rust) tokenizer; load the model with its tokenizer.json")
    return _encode(model, texts, offsets=True, special_tokens=special_tokens)


def _encode(model: Any, texts: Sequence[str], offsets: bool, extra: int = 0,
            special_tokens: bool | Sequence[bool] = True) -> list[tuple[list[int], list[tuple[int, int]]]]:
    out = []
    special = [special_tokens] * len(texts) if isinstance(special_tokens, bool) else list(special_tokens)
    for t, add in zip(texts, special, strict=True):
        enc = model.tokenizer(t, return_offsets_mapping=offsets, add_special_tokens=add)
        out.append((list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]] if offsets else []))
    limit = context_length(model)
    longest = max((len(ids) for ids, _ in out), default=0) + extra
    if limit and longest > limit:
        raise UsageError(f"a prompt is {longest} tokens, longer than this model's context of {limit}; "
                         f"use fewer shots or steps, or shorter prompts")
    return out


def answer_token(model: Any, answer: str, joined: bool = False) -> int | None:
    """The single token id of ``" " + answer`` (``joined``: of ``answer`` itself, an answer that
    continues the prompt's last word, :class:`~nnsight_reasoning.tasks.PromptPair`), or None if
    it is not exactly one known token."""
    return (joined_token_id if joined else single_token_id)(model.tokenizer, answer)


def answer_tokens(model: Any, answers: Sequence[str], what: str = "answer") -> list[int]:
    """The token id of each answer, or a one-line error naming the first that is not one token.
    Answers are the one token of " " + answer; where that is two tokens, a space and the answer
    (LLaMA's digits), experiments that end their prompts with the space token use
    :func:`scored_prompts` instead, and this one says that it does not."""
    ids = [answer_token(model, a) for a in answers]
    if None in ids:
        k = ids.index(None)
        spaced = "" if spaced_answer_id(model.tokenizer, answers[k]) is None else (
            ": this tokenizer writes the space before it as a token of its own (LLaMA-style), which patching, "
            "circuits, evaluate, neurons, pruning and robustness score, this experiment not yet")
        raise UsageError(f"{what} {answers[k]!r} (number {k}) is not a single token for this model{spaced}")
    return ids  # type: ignore[return-value]


def scored_prompts(model: Any, texts: Sequence[str], answers: Sequence[str], what: str = "answer",
                   choices: Sequence[str] = (), joined: bool = False, special_tokens: bool | Sequence[bool] = True
                   ) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids of each prompt and of each answer as the next token (:func:`answer_ids`: where
    the tokenizer writes the space before answers as a token of its own, LLaMA's digits, every
    prompt ends with it, as lm-arithmetic scores LLaMA; ``joined``: each answer's own token),
    plus the ids of ``choices`` (candidate answers, the same convention). A one-line error names
    the first answer that is not one token."""
    ids, suffix = answer_ids(model, [*answers, *choices], joined=joined)
    if None in ids:
        k = ids.index(None)
        name = f"{what} {answers[k]!r} (number {k})" if k < len(answers) else f"choice {choices[k - len(answers)]!r}"
        raise UsageError(f"{name} is not a single token for this model")
    return (tokenize(model, texts, suffix, special_tokens),  # type: ignore[return-value]
            ids[:len(answers)], ids[len(answers):])


def answer_ids(model: Any, answers: Sequence[str], joined: bool = False) -> tuple[list[int | None], list[int]]:
    """Each answer's token id as the next token after a prompt (None where it is not one token),
    and the ids every prompt must end with for that: ``[]`` where answers are the one token of
    " " + answer (GPT-2, Pythia, the embedded model); ``[space]`` for a tokenizer that writes
    the space before them as a token of its own (LLaMA's split digits), the answers then being
    the bare tokens after it, as lm-arithmetic scores LLaMA (``interventions/__init__.py:54-61``).
    One convention per call: the spaced one only when no answer is one token with its space.
    ``joined``: answers that continue the prompt's last word, each the one token of the answer
    itself (:func:`~nnsight_reasoning.tasks.base.joined_token_id`), and no suffix."""
    tok = model.tokenizer
    if joined:
        return [joined_token_id(tok, a) for a in answers], []
    plain = [single_token_id(tok, a) for a in answers]
    if any(i is not None for i in plain) or not answers:
        return plain, []
    spaced = [spaced_answer_id(tok, a) for a in answers]
    if all(i is None for i in spaced):
        return plain, []
    return spaced, [space_token_id(tok)]
