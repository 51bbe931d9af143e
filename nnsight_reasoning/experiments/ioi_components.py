"""IOI components as circuits-over-time evaluates them over training
(``utils/component_evaluation.py``, driven by ``get_circuit_components_over_time.py``).

On IOI prompt pairs (clean: "When Mary and John …, John gave … to"; IO = Mary, S1 and S2 the
two mentions of John, END the last position):

- **Copy score** of a head (``compute_copy_score``): the residual stream after layer 0 at the
  IO, S1 and S2 positions, through the head's OV circuit and the unembedding
  (:func:`backend.graph.copy_top_tokens`: the norms without their scales, as the repository's
  folded weights); the percentage of (prompt, position) cases whose name is among the top
  ``top_k`` (5) tokens.
- **Attention** from END to IO, S1 and S2 (mean probability over prompts).
- **Name movers** (``filter_name_movers``): copy score > ``copy_threshold`` (10 %), and more
  attention to IO than to S1 and than to S2. Candidates: every head, or with ``circuit`` the
  heads with a circuit edge into the logits (the repository's candidates).
- **S-inhibition heads** (``evaluate_s2i_candidates`` with ``S2I_token_pos``): each candidate
  (a head that feeds a name mover; with ``circuit``, through a circuit edge) is path-patched
  alone into the queries of all name movers at END (:mod:`.path_patching`, ``receiver_input="q"``,
  ``position="last"``), the corrupted prompt being the pairs' source; with ``nr.tasks.ioi(n,
  corruption="swap")`` that is the repository's ``token_same_pos_oppo`` (IO and S1 trade
  places). Deltas relative to the clean run, (patched − clean) / clean, of the logit
  difference and of the name movers' attention from END to IO, S1 and S2 (mean over prompts
  and name movers). An S-inhibition head lowers the logit difference and the attention to IO
  and raises the attention to S1 (the repository's sign rule, no magnitude threshold).

- **Tertiary heads** (``evaluate_induction_scores``): every head's induction, duplicate-token
  and previous-token score (the definitions of :mod:`.heads`) on ``n_sequences`` seeded repeated
  random-token sequences of ``seq_len`` (the repository: 2 × 100, unseeded); with ``circuit``
  also ``in_circuit``, the heads the circuit touches (:func:`circuit_heads`), by which the
  repository masks them.

Departures: the name movers' candidates without ``circuit`` are every head (the repository
always has a circuit); the path from the S-inhibition candidate to the name movers is the
residual stream alone (see :mod:`.path_patching`). In a checkpoint sweep a circuit with a
``checkpoint`` dim (a circuit sweep's ``circuit.selected_circuit``) gives each checkpoint its
own, as the repository loads each checkpoint's graph; one without serves every checkpoint.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..backend import attention_probs, graph
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks import PromptPairs
from ..tasks.tokens import repeated_tokens
from .circuit import Shape, _answers, _edge_patched, _prepare, node_table
from .heads import ATTENTION_SCORES, attention_scores

WORDS = ("IO", "S1", "S2")


def _positions(tok, pairs) -> np.ndarray:
    """(prompt, 3) token positions of IO, S1 and S2 in each clean prompt."""
    out = np.zeros((len(pairs), 3), dtype=np.int64)
    for i, (ids, (io, s)) in enumerate(zip(tok.base, tok.answers)):
        io_at = [k for k, t in enumerate(ids) if t == io]
        s_at = [k for k, t in enumerate(ids) if t == s]
        if len(io_at) != 1 or len(s_at) != 2:
            raise UsageError(f"IOI pair {i} does not name the indirect object once and the subject twice as single "
                             f"tokens ({pairs[i].base!r}); use nr.tasks.ioi(..., tokenizer=model.tokenizer)")
        out[i] = [io_at[0], s_at[0], s_at[1]]
    return out


def circuit_heads(circuit: Any, n_layers: int | None = None, n_heads: int | None = None) -> xr.DataArray:
    """(layer, head) bool: the heads a circuit touches (an edge into or out of them), from an
    (upstream, downstream) 0/1 DataArray of :func:`nnsight_reasoning.circuit` (``ds.min_circuit``,
    ``ds.in_circuit.sel(size=n)``), as the repository masks its induction, duplicate-token and
    previous-token scores."""
    arr = circuit
    if not isinstance(arr, xr.DataArray) or "upstream" not in arr.dims:
        raise UsageError("circuit must be an (upstream, downstream) DataArray of nr.circuit's result, e.g. "
                         "ds.min_circuit or ds.in_circuit.sel(size=50)")
    n_layers = int(arr["upstream_layer"].max()) + 1 if n_layers is None else n_layers
    n_heads = int(arr["upstream_head"].max()) + 1 if n_heads is None else n_heads
    out = np.zeros((n_layers, n_heads), bool)
    a = np.asarray(arr.values, bool)
    for axis, table in ((0, "upstream"), (1, "downstream")):
        used = a.any(1 - axis)
        heads = (arr[f"{table}_kind"].values == "head") & used
        out[arr[f"{table}_layer"].values[heads].astype(int), arr[f"{table}_head"].values[heads].astype(int)] = True
    return xr.DataArray(out, dims=("layer", "head"), coords={"layer": np.arange(n_layers), "head": np.arange(n_heads)},
                        name="in_circuit")


def circuit_edges(run: Run, circuit: Any, shape: Shape) -> np.ndarray | None:
    """``circuit`` (an (upstream, downstream) 0/1 DataArray of :func:`nnsight_reasoning.circuit`
    on this model, the plain or the q/k/v graph) as an (upstream, downstream) bool array of the
    plain graph; a q/k/v circuit keeps, for each head, the edges into its query (the
    repository's rule for what feeds a name mover). None for no circuit."""
    if circuit is None:
        return None
    n_layers, n_heads = shape.n_layers, shape.n_heads
    qkv_shape = Shape.of(run.model, qkv=True).valid.shape
    if not isinstance(circuit, xr.DataArray) or circuit.dims != ("upstream", "downstream") or \
            circuit.shape not in (shape.valid.shape, qkv_shape):
        raise UsageError("circuit must be an (upstream, downstream) DataArray of this model's nr.circuit result, "
                         "e.g. ds.min_circuit or ds.in_circuit.sel(size=50)")
    edges = np.asarray(circuit.values, bool)
    if edges.shape == qkv_shape:  # EAP-IG's graph: a head's candidates feed its query (the repository's rule)
        q_cols = [graph.qkv_columns(n_layers, n_heads).index(v) for v in range(shape.valid.shape[1])]
        edges = edges[:, q_cols]  # the q input's column for a head, the MLP's or the logits' own
    return edges


def upstream_heads(rows: np.ndarray, n_layers: int, n_heads: int) -> np.ndarray:
    """(layer, head) bool: the heads among the upstream nodes flagged in ``rows`` (n_upstream,),
    e.g. ``edges[:, -1]`` (a circuit edge into the logits) or ``edges.any(1)`` (any circuit edge
    out)."""
    up, _ = node_table(n_layers, n_heads)
    out = np.zeros((n_layers, n_heads), bool)
    for u in np.nonzero(rows)[0]:
        if up["kind"][u] == "head":
            out[up["layer"][u], up["head"][u]] = True
    return out


def logit_candidates(edges: np.ndarray | None, n_layers: int, n_heads: int) -> np.ndarray:
    """(layer, head) bool: the heads with a circuit edge into the logits (the repository's
    name-mover candidates, ``candidate_nmh``), or every head without a circuit."""
    if edges is None:
        return np.ones((n_layers, n_heads), bool)
    return upstream_heads(edges[:, -1], n_layers, n_heads)


def check_copy_options(top_k: Any, copy_threshold: Any, strict: bool = True) -> None:
    """Refuse a copy score's options that cannot be: ``top_k`` an integer >= 1, the threshold a
    percentage a head can pass: below 100 when the rule is strict (copy score > threshold,
    ioi_components'), up to 100 when it is not (>=, backup_heads')."""
    import numbers

    checked_int("top_k", top_k, 1)
    high = 100 if not strict else np.nextafter(100, 0)
    if not isinstance(copy_threshold, numbers.Real) or isinstance(copy_threshold, bool) or \
            not 0 <= copy_threshold <= high:
        raise UsageError(f"copy_threshold is a copy score in percent, in [0, 100{')' if strict else ']'} "
                         f"(got {copy_threshold!r})")


def copy_hits(run: Run, ids: torch.Tensor, pos: np.ndarray, answers: Sequence[tuple[int, int]],
              top_k: int) -> np.ndarray:
    """(layer, head) counts, over the rows of one batch of clean prompts ``ids`` (p, T) and their
    IO, S1, S2 positions ``pos`` (p, 3), of the cases whose name (IO at IO, S at S1 and S2; from
    ``answers``, (IO, S) token ids per row) is among the head's top-``top_k`` OV tokens: the
    copy score's numerator (``compute_copy_score``)."""
    top = run.call(graph.copy_top_tokens, ids, torch.tensor(pos), top_k)  # (L, H, p, 3, k)
    names = torch.tensor([[io, s, s] for io, s in answers])
    return (top == names[None, None, :, :, None]).any(-1).sum((2, 3)).numpy()


@experiment("ioi_components", batch_size=64, reads_weights="ioi_components' copy score")
def ioi_components(
    run: Run,
    pairs: PromptPairs,
    *,
    copy_threshold: float = 10.0,
    top_k: int = 5,
    circuit: Any = None,
    n_sequences: int = 2,
    seq_len: int = 100,
    seed: int = 0,
) -> xr.Dataset:
    """Name movers and S-inhibition heads on IOI pairs (definitions in
    :mod:`nnsight_reasoning.experiments.ioi_components`).

    Parameters
    ----------
    model : a loaded local model or a name/directory (the copy score reads its weights).
    pairs : ``nr.tasks.ioi(70, corruption="swap", tokenizer=model.tokenizer)`` (the repository:
        70 mixed prompts; ``swap`` is its S-inhibition corruption).
    copy_threshold : a name mover's copy score must exceed it, in percent (repository: 10).
    top_k : a name counts as copied when among the head's top-k tokens (repository: 5).
    circuit : optional (upstream, downstream) 0/1 DataArray of a :func:`nnsight_reasoning.circuit`
        result ``ds``, ``nr.experiments.circuit.selected_circuit(ds)``: name-mover candidates are
        then the heads with a circuit edge into the logits, S-inhibition candidates those with a
        circuit edge into a name mover's query (``qkv=True`` circuits, the repository's rule) or
        its input (the default graph). With ``revisions``, that of a circuit sweep,
        (checkpoint, upstream, downstream), gives each checkpoint its own.
    n_sequences, seq_len, seed : the repeated random tokens of the tertiary scores
        (``nr.tasks.repeated_tokens``; the repository: 2 sequences of 100).

    Notes
    -----
    Batching: per batch of pairs, one pass for the residual stream after layer 0 and one for
    the attention patterns; the path patching takes (1 + c)·p rows for c candidates, attention
    three times per head in the name movers' layers.

    Returns
    -------
    Dataset over (layer, head): ``copy_score`` (%), ``attention`` (word: IO, S1, S2; END's
    attention probability, prompt mean), ``name_mover`` and ``s_inhibition`` (0/1),
    ``s2i_logit_diff_delta`` and ``s2i_attention_delta`` (word) (relative changes under path
    patching, NaN for heads that were not candidates); ``induction``, ``duplicate_token``,
    ``previous_token`` (attention fractions) and, with ``circuit``, ``in_circuit`` (0/1);
    ``clean_logit_diff`` (prompt) in logits.
    With ``revisions`` every variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.ioi_components(model, nr.tasks.ioi(70, corruption="swap", tokenizer=model.tokenizer))
    >>> ds.name_mover.where(ds.name_mover, drop=True)
    """
    if pairs.task != "ioi":  # the harness has checked that these are PromptPairs
        raise UsageError("ioi_components needs IOI pairs: nr.tasks.ioi(n, corruption='swap', "
                         "tokenizer=model.tokenizer)")
    check_copy_options(top_k, copy_threshold)
    sequences = repeated_tokens(n_sequences, seq_len, seed, tokenizer=run.tokenizer)  # refused before any pass
    shape = Shape.of(run.model)
    n_layers, n_heads = shape.n_layers, shape.n_heads
    up, down = node_table(n_layers, n_heads)
    head_of = {name: (layer, head) for name, layer, head in zip(up["name"], up["layer"], up["head"]) if head >= 0}
    edges = circuit_edges(run, circuit, shape)
    pair_list, tok = _prepare(run, pairs)
    pos = _positions(tok, pair_list)
    n = len(pair_list)
    hits = np.zeros((n_layers, n_heads))
    attn = np.zeros((n, n_layers, n_heads, 3))
    for job in run.steps(run.batches([len(b) for b in tok.base]), "copy scores and attention"):
        ids = torch.tensor([tok.base[i] for i in job])
        hits += copy_hits(run, ids, pos[job], [tok.answers[i] for i in job], top_k)
        probs = run.call(attention_probs, ids, list(range(n_layers)))[:, :, :, 0]  # (p, L, H, T)
        attn[job] = np.take_along_axis(probs.numpy(), pos[job][:, None, None, :], 3)
    copy = 100 * hits / (3 * n)
    mean_attn = attn.mean(0)  # (L, H, 3)
    nmh_candidates = logit_candidates(edges, n_layers, n_heads)
    nmh = nmh_candidates & (copy > copy_threshold) & (mean_attn[..., 0] > mean_attn[..., 1]) & \
        (mean_attn[..., 0] > mean_attn[..., 2])
    ld_delta = np.full((n_layers, n_heads), np.nan)
    attn_delta = np.full((n_layers, n_heads, 3), np.nan)
    answers = _answers(run, pair_list, tok, "logit_diff")
    clean = None
    movers = [down["name"].index(f"a{layer}.{head}") for layer, head in zip(*np.nonzero(nmh))]
    if movers:
        feeds = shape.valid[:, movers] if edges is None else shape.valid[:, movers] & edges[:, movers]
        cands = [u for u in np.nonzero(feeds.any(1))[0] if up["name"][u] in head_of]
        cuts = np.zeros((len(cands) + 1,) + shape.valid.shape, bool)  # variant 0: the clean run
        cuts_qkv = np.zeros((len(cands) + 1, len(up["name"]), n_layers, n_heads, 3), bool)
        for k, u in enumerate(cands, 1):
            for v in movers:
                if feeds[u, movers.index(v)]:
                    cuts_qkv[k, u, down["layer"][v], down["head"][v], 0] = True
        layers = sorted({down["layer"][v] for v in movers})
        patched, _, probs = _edge_patched(run, tok, cuts, "S-inhibition candidates", answers, removed_qkv=cuts_qkv,
                                          last_only=True, attention=(layers, pos))
        clean = patched[0]
        # (variant, prompt, word): the name movers' mean attention from END
        mover_attn = np.mean([probs[:, :, layers.index(down["layer"][v]), down["head"][v]] for v in movers], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ld = (patched[1:].mean(1) - clean.mean()) / clean.mean()
            ad = (mover_attn[1:].mean(1) - mover_attn[0].mean(0)) / mover_attn[0].mean(0)
        for k, u in enumerate(cands):
            ld_delta[head_of[up["name"][u]]] = ld[k]
            attn_delta[head_of[up["name"][u]]] = ad[k]
    if clean is None:  # no name movers: the clean metric still describes the run
        clean, _ = _edge_patched(run, tok, np.zeros((1,) + shape.valid.shape, bool), "clean run", answers)
        clean = clean[0]
    s2i = (ld_delta < 0) & (attn_delta[..., 0] < 0) & (attn_delta[..., 1] > 0)
    ids = torch.tensor(sequences.ids)
    tertiary = {k: np.zeros((n_layers, n_heads)) for k in ATTENTION_SCORES}
    for job in run.steps(run.batches([ids.shape[1]] * len(sequences)), "induction scores"):
        a = run.call(attention_probs, ids[job], list(range(n_layers)), last_only=False).double().numpy()
        for k, v in attention_scores(a, seq_len).items():
            tertiary[k] += v.sum(0) / len(sequences)
    lh = ("layer", "head")
    data = {
        "copy_score": (lh, copy, {"long_name": f"IO/S1/S2 names among the head's top-{top_k} OV tokens", "units": "%"}),
        "attention": (lh + ("word",), mean_attn, {"long_name": "attention probability from END", "units": "1"}),
        "name_mover": (lh, nmh.astype(np.int8), {"long_name": f"copy score > {copy_threshold} %, attention to IO "
                                                             f"above S1 and S2"}),
        "s2i_logit_diff_delta": (lh, ld_delta, {"long_name": "logit difference, (path-patched − clean) / clean",
                                                "units": "1"}),
        "s2i_attention_delta": (lh + ("word",), attn_delta, {"long_name": "name movers' attention from END, "
                                                                          "(path-patched − clean) / clean",
                                                             "units": "1"}),
        "s_inhibition": (lh, s2i.astype(np.int8), {"long_name": "lowers the logit difference and the name movers' "
                                                                "attention to IO, raises it to S1"}),
        "clean_logit_diff": ("prompt", clean, {"long_name": "logit(IO) − logit(S), clean run", "units": "logits"}),
        **{k: (lh, v, {"long_name": f"{k.replace('_', '-')} score on repeated random tokens", "units": "1"})
           for k, v in tertiary.items()},
    }
    if edges is not None:
        heads_in = circuit_heads(circuit, n_layers, n_heads)
        data["in_circuit"] = (lh, heads_in.values.astype(np.int8), {"long_name": "head touched by the circuit"})
    coords = {"layer": np.arange(n_layers), "head": np.arange(n_heads),
              "word": ("word", np.array(WORDS, dtype=object),
                       {"long_name": "name token attended to: IO (indirect object), S1 / S2 (the subject's first / "
                                     "second mention)"}),
              "prompt": ("prompt", np.arange(n), {"long_name": "prompt pair index"}),
              "base": ("prompt", [p.base for p in pair_list]),
              "source": ("prompt", [p.source for p in pair_list])}
    attrs = {"method": "ioi_components", "metric": "logit_diff", "copy_threshold": float(copy_threshold),
             "top_k": top_k, "candidates": "circuit" if edges is not None else "all heads"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def summarize(ds: xr.Dataset) -> list[Any]:
    """Name movers and S-inhibition heads (per checkpoint in a sweep) with their scores."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    lines: list[Any] = [f"IOI components · {ds.sizes['prompt']} pairs · {model_at(last)}"
                        f" (candidates: {ds.attrs['candidates']}); clean logit difference "
                        f"{float(last['clean_logit_diff'].mean()):.2f}"]
    if "checkpoint" in ds.dims:
        for c in ds["checkpoint"].values:
            one = ds.sel(checkpoint=c)
            lines.append(f"{c}: name movers {_heads(one['name_mover'])}, S-inhibition {_heads(one['s_inhibition'])}")
    for layer, head in zip(*np.nonzero(last["name_mover"].values)):
        v = last.isel(layer=layer, head=head)
        a = v["attention"].values
        lines.append(f"name mover a{layer}.{head}: copy score {float(v['copy_score']):.0f} %, attention IO {a[0]:.2f} "
                     f"S1 {a[1]:.2f} S2 {a[2]:.2f}")
    for layer, head in zip(*np.nonzero(last["s_inhibition"].values)):
        v = last.isel(layer=layer, head=head)
        a = v["s2i_attention_delta"].values
        lines.append(f"S-inhibition a{layer}.{head}: logit difference {float(v['s2i_logit_diff_delta']):+.3f}, "
                     f"name movers' attention IO {a[0]:+.3f} S1 {a[1]:+.3f} S2 {a[2]:+.3f}")
    if not last["name_mover"].values.any():
        lines.append("no name movers (copy score and attention criteria)")
    for k in ("induction", "duplicate_token"):
        if k in last:
            v = last[k].where(last["in_circuit"] > 0) if "in_circuit" in last else last[k]
            if np.isfinite(v.values).any():
                layer, head = np.unravel_index(np.nanargmax(v.values), v.shape)
                where = " in the circuit" if "in_circuit" in last else ""
                lines.append(f"strongest {k.replace('_', '-')} head{where}: a{layer}.{head} "
                             f"({float(v.values[layer, head]):.2f})")
    return lines


def _heads(mask: xr.DataArray) -> str:
    found = [f"a{layer}.{head}" for layer, head in zip(*np.nonzero(mask.values))]
    return ", ".join(found) if found else "none"


__all__: Sequence[str] = ("ioi_components", "circuit_heads", "circuit_edges", "upstream_heads", "logit_candidates",
                          "copy_hits", "check_copy_options", "summarize")
