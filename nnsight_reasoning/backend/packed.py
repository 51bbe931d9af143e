"""Patching engine v2: each patched copy computes only the rows a patch can change.

With causal attention, a patch at layer l and position p changes nothing at positions < p
and nothing below layer l. A patched copy therefore needs only the *suffix* of its prompt,
positions p … T−1, from layer l up; those rows attend to the keys and values of positions
< p, which are its base row's.

The engine gets this without a key/value cache, inside one ordinary forward pass, by
*packing along the sequence axis*: a copy's suffix rows become extra columns of its base
row's batch row, and a block attention mask lets them attend to their base's prefix columns
and to themselves only. Columns join where their patch happens: the forward starts with the
input rows' columns only, and at the input of layer l (after it for ``resid``) the copies
patched there are appended, holding their base row's values at those positions; the layer's
attention mask and rotary/absolute positions are the matching slice of the full ones. So each
copy costs (T − p) rows for each layer from l up — the minimum — plus attention over its
base's prefix, and the base's prefix is computed once, not once per copy.

Layout (:func:`plan`): a *packed row* holds one or more *segments* (whole input rows, each
with positions 0 … T−1) and then the copies of its first segment. A base row's copies are
spread over its own packed row and, beyond a width budget, duplicates of it; input rows
without copies (source prompts) ride along as extra segments of the least full rows (or get
rows of their own when fewer than the rows, if cheaper). The batch is as wide as its widest
row at each layer: a narrower row's later copies start early, as copies of their base row,
and its spare columns are *dummies* that attend only to themselves. Output rows come back in
:func:`backend.answer_scores` order. ``docs/engine.md`` has the design and the figures.

Requires an attention that honours an arbitrary mask (eager or sdpa) and an architecture
whose decoder layers take one attention mask (``Architecture.mask_arg``); otherwise, and for a
pass without patches, the caller uses engine v1 (:func:`backend._trace_scores`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..sites import PROB_SITES, SITES, UNIT_DIMS

#: Attention implementations that add an arbitrary (additive float) 4-D mask.
MASKED_ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True)
class Plan:
    """Everything the trace body needs, as tensors and plain tuples.

    ``ids``/``pos`` (R, C): token and position id of every column; ``seq``/``pre``/``lim``
    (R, C): the mask's description (:func:`..trace_ops.packed_mask`); ``n_seg``: the columns
    taken from the embeddings (the most segments of any row; a row with fewer has copies there,
    which start early); ``steps``: one per decoder layer
    (layer module, width at its input, columns joining at its input, patches inside it,
    columns joining at its output, resid patch); ``out_rows``/``out_cols``: where each output
    row's last position is.
    """

    ids: torch.Tensor
    pos: torch.Tensor
    seq: torch.Tensor
    pre: torch.Tensor
    lim: torch.Tensor
    n_seg: int
    steps: list
    out_rows: torch.Tensor
    out_cols: torch.Tensor
    origin: torch.Tensor  # (outputs,) the input row each output row scores


def usable(model: Any, arch: Any, patches: Sequence[Any]) -> bool:
    """Whether engine v2 can run these patches (or edge-patched circuits) on this model, else
    the caller uses v1: there are some, the attention honours an arbitrary mask and the layers
    take one mask."""
    impl = getattr(model.config, "_attn_implementation", None)
    return bool(patches) and arch.mask_arg is not None and impl in MASKED_ATTENTION


def plan(input_ids: torch.Tensor, patches: Sequence[Any], layers: list, modules: dict, d_model: int) -> Plan:
    """The packed layout of ``input_ids`` (n, T) and its patched copies (see the module doc).

    ``layers``: the decoder-layer Envoys; ``modules[(site, layer)]``: the Envoy (or, for the
    attention-probability sites, (attention Envoy, ``.source`` path)) a site edits.
    """
    n, t = input_ids.shape
    cat = (lambda f: np.concatenate([np.asarray(f(p), dtype=np.int64).reshape(-1) for p in patches]))
    origin, src, position = cat(lambda p: p.rows), cat(lambda p: p.src_rows), cat(lambda p: p.positions)
    head = cat(lambda p: np.full(len(p.rows), -1) if p.heads is None else p.heads)
    site = cat(lambda p: np.full(len(p.rows), SITES.index(p.site)))
    layer = cat(lambda p: np.full(len(p.rows), p.layer))
    k = len(origin)
    start = position  # a whole-prompt site's copy starts at the first query it replaces
    join = 2 * layer + (site == SITES.index("resid"))
    width = t - start
    # packed rows: a base row's copies split into ceil(width / cap) chunks; chunk 0 rides on
    # the base row, the others on duplicates of it. Copies are dealt in join order, each to
    # the chunk with the fewest columns so far, so the chunks grow alike at every join point.
    cap = max(t, width_budget(t, d_model) - t)
    order = np.lexsort((-width, join, origin))
    o_s, w_s = origin[order], width[order]
    chunk = np.zeros(k, np.int64)
    n_chunks = -(-np.bincount(origin, weights=width, minlength=n).astype(np.int64) // cap)
    load: dict[int, list[int]] = {}
    for i in range(k):
        loads = load.setdefault(int(o_s[i]), [0] * int(n_chunks[o_s[i]]))
        c = loads.index(min(loads))
        chunk[i] = c
        loads[c] += int(w_s[i])
    _, row_s = np.unique(o_s * (k + 1) + chunk, return_inverse=True)  # packed rows in (origin, chunk) order
    n_rows = int(row_s.max()) + 1
    row = np.empty(k, np.int64)
    row[order] = row_s
    row_origin = np.zeros(n_rows, np.int64)
    row_origin[row] = origin
    segs: list[list[int]] = [[int(o)] for o in row_origin]
    used = (t + np.bincount(row, weights=width, minlength=n_rows)).tolist()
    # passengers: input rows without copies (source prompts). Onto the least full rows; but
    # when there are fewer than rows, one extra segment widens every row by T (the batch is as
    # wide as its widest row), so each may get a row of its own instead, if that costs less.
    riders = sorted(set(range(n)) - set(origin.tolist()))
    if riders and len(riders) < n_rows and len(riders) * (max(used) - t) < t * (n_rows - len(riders)):
        segs += [[i] for i in riders]
        used += [t] * len(riders)
        n_rows += len(riders)
        riders = []
    for i in riders:
        r = min(range(n_rows), key=lambda r: (used[r], r))
        segs[r].append(i)
        used[r] += t
    n_seg = t * max(len(x) for x in segs)
    home_row, home_col = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for r in range(n_rows - 1, -1, -1):  # an input row's home: its first packed row (a duplicate's is a later one)
        for j, i in enumerate(segs[r]):
            home_row[i], home_col[i] = r, j * t
    # columns: the row's segments, then its copies in join order. The batch is as wide as its
    # widest row, so it starts as wide as the most segments and at a join point widens to the
    # widest row's columns joined so far: a narrower row's later copies then start early, as
    # copies of their base row's values (which they stay: same prefix, same inputs; from the
    # embeddings, their tokens and positions are their base row's), and are reset to them at
    # their own join point.
    own = t * np.array([len(x) for x in segs])  # the row's segment columns
    by_row = np.lexsort((-width, join, row))
    r_b, w_b = row[by_row], width[by_row]
    first = np.r_[True, r_b[1:] != r_b[:-1]]
    cum = np.cumsum(w_b) - w_b
    col = np.empty(k, np.int64)
    col[by_row] = own[r_b] + cum - np.maximum.accumulate(np.where(first, cum, 0))
    joins = np.unique(join)
    reach = np.zeros((n_rows, len(joins)), np.int64)  # per row: columns joined by each join point
    np.maximum.at(reach, (row, np.searchsorted(joins, join)), col + width)
    reach = np.maximum.accumulate(np.maximum(reach, own[:, None]), 1)
    at_join = dict(zip(joins.tolist(), reach.max(0).tolist()))
    total = max(at_join.values())
    ids = torch.zeros(n_rows, total, dtype=torch.long)
    pos = torch.zeros(n_rows, total, dtype=torch.long)
    seq = -2 - torch.arange(total).repeat(n_rows, 1)  # dummies: each a sequence of its own
    pre = torch.full((n_rows, total), -1, dtype=torch.long)
    lim = torch.zeros(n_rows, total, dtype=torch.long)
    for r in range(n_rows):
        for j, i in enumerate(segs[r]):
            ids[r, j * t:(j + 1) * t], pos[r, j * t:(j + 1) * t], seq[r, j * t:(j + 1) * t] = input_ids[i], torch.arange(t), j
    # every copy column: (row, column, position); the origin is segment 0 of its packed rows
    cc = np.repeat(np.arange(k), width)
    offset = np.arange(int(width.sum())) - np.repeat(np.cumsum(width) - width, width)
    c_row, c_col, c_pos = (torch.from_numpy(x) for x in (row[cc], col[cc] + offset, start[cc] + offset))
    ids[c_row, c_col] = input_ids[torch.from_numpy(origin[cc]), c_pos]
    pos[c_row, c_col] = c_pos
    seq[c_row, c_col] = torch.from_numpy(n + cc)  # above every segment index
    pre[c_row, c_col] = 0
    lim[c_row, c_col] = torch.from_numpy(start[cc])
    # a join point: the columns that enter the batch there, and the copies joining there that
    # entered earlier; both take their base row's values (the column at their position: the
    # base is segment 0), dummies column 0's
    joined, widths = {}, n_seg
    c_join = torch.from_numpy(join[cc])
    for jp in joins.tolist():
        early = (c_join == jp) & (c_col < widths)
        joined[jp] = (pos[:, widths:at_join[jp]], c_row[early], c_col[early], c_pos[early])
        widths = at_join[jp]
    # the patches: (dst, src) index tuples into the site's tensor (trace_ops.site_values)
    edits = {}
    for key_ in sorted(set(zip(site.tolist(), layer.tolist()))):
        name, li = SITES[key_[0]], key_[1]
        m = (site == key_[0]) & (layer == li)
        if name in PROB_SITES:
            edits[(name, li)] = _prob_edits(name, row[m], col[m], position[m], head[m], home_row[src[m]],
                                            home_col[src[m]], t)
        else:
            edits[(name, li)] = site_index(name, *(torch.from_numpy(x) for x in (
                row[m], col[m] + position[m] - start[m], home_row[src[m]], home_col[src[m]] + position[m], head[m])))
    steps = []
    for li, lay in enumerate(layers):
        inner = [(name, modules.get((name, li))) + edits[(name, li)]
                 for name in SITES[:-1] if (name, li) in edits]
        w_in = max([n_seg] + [w for jp, w in at_join.items() if jp <= 2 * li])
        steps.append((lay, w_in, joined.get(2 * li), inner, joined.get(2 * li + 1), edits.get(("resid", li))))
    out_rows = np.r_[home_row, row]
    out_cols = np.r_[home_col + t - 1, col + width - 1]
    return Plan(ids, pos, seq, pre, lim, n_seg, steps, torch.from_numpy(out_rows), torch.from_numpy(out_cols),
                torch.from_numpy(np.r_[np.arange(n), origin]))


def width_budget(t: int, d_model: int) -> int:
    """Widest packed row, in columns. A row of C columns spends ~C/(6·d_model) of its work on
    attention (4·C²·d flops against ~24·d² per column in the projections and MLP), and a
    duplicate base row costs T columns per row: their sum is least at C = √(6·d_model·T). At
    least 4·T, so that a row holds several copies even on tiny models (coarse rows balance badly)."""
    return max(4 * t, int(math.sqrt(6 * d_model * t)))


def site_index(kind: str, rows, cols, src_rows, src_cols, heads) -> tuple[tuple, tuple]:
    """(dst, src) index tuples of a vector site's patch into :func:`.trace_ops.site_values`' tensor:
    (row, column) of the residual stream, a module's output or the embeddings, and (row, column,
    unit) of the heads and neurons (``heads`` holds the head or neuron index)."""
    if kind in UNIT_DIMS:
        return (rows, cols, heads), (src_rows, src_cols, heads)
    return (rows, cols), (src_rows, src_cols)


def _prob_edits(name: str, row, col, position, head, src_row, src_col, t: int) -> tuple[tuple, tuple]:
    """(dst, src) index tuples, each (row, head, query, key), of the attention-probability
    patches, a copy holding positions p… from its column ``col`` (p its ``position``), the keys
    below p being its origin's prefix (segment 0: column = key): ``attn_weights`` copies query p's
    row; ``attn_pattern`` the head's whole pattern from query p on (the rows above are the same in
    both runs when p is at most the first token where the prompts differ); ``attn_layer_pattern``
    every head's: its head index is ``slice(None)``, so both sides select (entries, heads), head h
    of an entry written from head h."""
    row, col, position, head, src_row, src_col = (torch.as_tensor(x, dtype=torch.long) for x in (
        row, col, position, head, src_row, src_col))
    lower = torch.tril_indices(t, t)
    parts = []
    for p in torch.unique(position).tolist():  # the entries starting at p share their (query, key) pairs
        e = position == p
        q, k = (torch.full((p + 1,), p), torch.arange(p + 1)) if name == "attn_weights" else lower[:, lower[0] >= p]
        c, sc = col[e, None], src_col[e, None]  # (entries, 1) against (pairs,)
        dk = torch.where(k < p, k, c + k - p)
        parts.append([x.reshape(-1) for x in torch.broadcast_tensors(
            row[e, None], c + q - p, dk, src_row[e, None], sc + q, sc + k, head[e, None])])
    r, dq, dk, sr, sq, sk, h = (torch.cat(f) for f in zip(*parts))
    if name == "attn_layer_pattern":  # every head (the slice keeps them in place)
        return (r, slice(None), dq, dk), (sr, slice(None), sq, sk)
    return (r, h, dq, dk), (sr, h, sq, sk)


@dataclass(frozen=True)
class EdgePlan:
    """The packed layout of an edge-patched pass (:func:`plan_edges`), as the trace body needs it.

    Every packed row has the same columns: its pair's clean prompt (0 … T−1), its corrupted
    prompt (T … 2T−1), then ``n_slots`` *slots* of ``w`` columns, each one circuit's clean run
    at positions T−w … T−1 with edges cut. Row g·p + j holds pair j and the circuits of chunk g.
    ``ids``/``pos`` (R, C); ``seq``/``pre``/``lim``/``mask_pos`` (1, C): the mask's tables
    (:func:`..trace_ops.packed_mask`); ``joins[l]`` (l = 0 … n_layers; n_layers: after the
    last layer) the :func:`..trace_ops.join_columns` argument of the slots that join there, or
    None; ``n_at[l]``: slots present in layer l (l = n_layers: at the final norm); ``removed``
    (G, n_slots, n_up, n_down) float32, 1 where slot i of chunk g cuts the edge (a spare slot
    cuts nothing); ``out_rows``/``out_cols``: the corrupted rows' last columns, then each
    circuit's, circuit by circuit in the caller's order.
    """

    ids: torch.Tensor
    pos: torch.Tensor
    seq: torch.Tensor
    pre: torch.Tensor
    lim: torch.Tensor
    mask_pos: torch.Tensor
    t: int
    w: int
    joins: list
    n_at: list
    removed: torch.Tensor
    out_rows: torch.Tensor
    out_cols: torch.Tensor
    cost: float  # estimated work, in column-layers (:func:`layer_cost`)


def layer_cost(width: int, d_model: int) -> float:
    """Work of one decoder layer on a batch row ``width`` columns wide, in columns: the
    projections and MLP cost ~24·d² per column, the attention scores and mix 4·width·d more
    (:func:`width_budget`)."""
    return width * (1.0 + width / (6.0 * d_model))


def edge_cost_v1(p: int, c: int, t: int, n_layers: int, d_model: int) -> float:
    """:func:`layer_cost` units of an edge-patched pass under engine v1: the corrupted rows and
    one clean row per circuit, whole, at every layer."""
    return (1 + c) * p * n_layers * layer_cost(t, d_model)


def plan_edges(input_ids: torch.Tensor, removed: torch.Tensor, n_layers: int, n_heads: int, d_model: int) -> EdgePlan:
    """The packed layout of an edge-patched pass: ``input_ids`` (2p, T), p corrupted rows then
    their p clean rows; ``removed`` (c, n_up, n_down), the edges each circuit cuts
    (:func:`..graph.edge_patched_logits`).

    Two savings, both exact. (1) Positions before the first token where any pair's prompts
    differ, s, carry the same activations in the corrupted run as in the clean one, so an edge
    there carries no change and a circuit's run equals the clean run: a slot computes only
    positions s … T−1 and reads the clean prompt's keys and values before s. (2) A circuit that
    cuts no edge into a node below layer l equals the clean run below l: its slot joins the
    batch at layer l (circuits are sorted by that layer and dealt round-robin to the chunks, so
    a slot joins where the earliest of its circuits must; a later one entering early stays
    equal to the clean run until its own cuts begin). Rows hold at most ``width_budget`` columns;
    more circuits spread over chunks of duplicate rows.

    Each row also carries its pair's clean and corrupted prompts (2T columns), so without a
    shared prefix and with few slots per row the layout can cost more than engine v1's whole
    rows: ``cost`` against :func:`edge_cost_v1` decides (``graph.edge_patched_logits``).
    """
    n2, t = input_ids.shape
    p, c = n2 // 2, removed.shape[0]
    if not c:
        raise ValueError("an edge-patched pass needs at least one circuit")
    corrupt, clean = input_ids[:p], input_ids[p:]
    same = torch.cumprod((corrupt == clean).long(), 1).sum(1)  # leading tokens the pair shares
    s = min(int(same.min()), t - 1)
    w = t - s
    # the layer of each downstream node: per layer its heads and MLP, then the logits
    node_layer = torch.cat([torch.arange(n_layers).repeat_interleave(n_heads + 1), torch.tensor([n_layers])])
    cut_into = removed.bool().any(1)  # (c, n_down)
    join = torch.where(cut_into, node_layer, n_layers).min(1).values
    order = torch.argsort(join, stable=True)
    n_slots = max(1, min(c, (width_budget(t, d_model) - 2 * t) // w))
    g = -(-c // n_slots)
    n_slots = -(-c // g)  # as few slots as the chunks need: at most g − 1 spare ones, all in the last slot
    # sorted circuit q goes to chunk q % g, slot q // g; spare slots (index >= c) cut nothing
    slot_of = torch.arange(g * n_slots).view(n_slots, g).T  # (g, n_slots) sorted index
    real = slot_of < c
    rem = torch.zeros((g, n_slots) + tuple(removed.shape[1:]), dtype=torch.float32)
    rem[real] = removed[order[slot_of[real]]].float()
    slot_join = join[order[torch.arange(0, c, g)]]  # a slot joins where its chunk-0 circuit must (the earliest)
    r = g * p
    suffix = torch.arange(s, t)
    ids = torch.cat([clean, corrupt] + [clean[:, s:]] * n_slots, 1).repeat(g, 1)
    pos1 = torch.cat([torch.arange(t), torch.arange(t)] + [suffix] * n_slots)[None]
    seq = torch.cat([torch.zeros(t), torch.ones(t), 2 + torch.arange(n_slots).repeat_interleave(w)]).long()[None]
    pre = torch.cat([torch.full((2 * t,), -1), torch.zeros(n_slots * w)]).long()[None]
    lim = torch.cat([torch.zeros(2 * t), torch.full((n_slots * w,), s)]).long()[None]
    joins, n_at = [], []
    for layer in range(n_layers + 1):
        new = torch.nonzero(slot_join == layer).flatten()
        n_at.append(int((slot_join <= layer).sum()))
        if len(new):  # the joining slots take the clean prompt's columns s … T−1
            index = suffix.repeat(len(new))[None].expand(r, -1).contiguous()
            none = torch.zeros(0, dtype=torch.long)
            joins.append((index, none, none, none))
        else:
            joins.append(None)
    rank = torch.empty(c, dtype=torch.long)
    rank[order] = torch.arange(c)
    j = torch.arange(p)
    out_rows = torch.cat([j] + [(int(rank[k]) % g) * p + j for k in range(c)])
    out_cols = torch.cat([torch.full((p,), 2 * t - 1)]
                         + [torch.full((p,), 2 * t + (int(rank[k]) // g + 1) * w - 1) for k in range(c)])
    cost = r * sum(layer_cost(2 * t + n_at[layer] * w, d_model) for layer in range(n_layers))
    return EdgePlan(ids, pos1.expand(r, -1).contiguous(), seq, pre, lim, pos1, t, w, joins, n_at, rem, out_rows,
                    out_cols, cost)
