"""Path patching: the effect of a sender component on receiver components' inputs through the
residual stream alone (Wang et al. 2022, "Interpretability in the wild"; Goldowsky-Dill et al.
2023, "Localizing model behavior with path patching").

On the clean prompt, for one sender u at a time, the receivers read their input plus
(a_u(corrupt) − a_u(clean)): u's output on the corrupted prompt reaches them, and only them;
every other component reads u's clean output. The receivers' outputs then propagate through
the rest of the model as usual, and the metric M (logit difference of the clean answer and
the corrupted one, or Tigges et al.'s set metrics; see :mod:`.circuit`) is read at the last
position. In the component graph of :mod:`.circuit` this is the clean run with the edges
u → receiver cut (:func:`backend.graph.edge_patched_logits`), so one pass serves every sender.

- ``receiver_input``: ``"all"`` (a head's whole input, an MLP's, or the logits'), or a head's
  query, key or value input alone (``"q"``, ``"k"``, ``"v"``: EAP-IG's q/k/v edges; Tigges
  et al.'s S-inhibition test patches the name movers' queries).
- ``position``: ``"all"`` (every position carries u's corrupted output) or ``"last"`` (only
  the last; circuits-over-time patches the END position only).

Effects: ``effect`` = M_patched − M_clean per prompt (metric units), and ``relative_effect`` =
(mean M_patched − mean M_clean) / mean M_clean, circuits-over-time's normalisation
(``utils/component_evaluation.py``, ``evaluate_s2i_candidates``).

Departure: circuits-over-time (``path_patching_cm``, ``direct_includes_mlps=True``) freezes every
head at its clean output but recomputes the MLPs, so its sender also reaches the receivers
through MLPs in between; here the path is the residual stream alone (its ``direct_includes_mlps
=False``), the definition of an edge in the component graph, so that path patching and edge
patching are one computation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks import PromptPair, PromptPairs
from .circuit import Shape, _answers, _edge_patched, _prepare, default_metric, node_table

RECEIVER_INPUTS = ("all", "q", "k", "v")
POSITIONS = ("all", "last")


def _nodes(names: str | Sequence[str], table: dict, what: str) -> list[int]:
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not names:
        raise UsageError(f"give at least one {what} (node names such as a2.1 for layer 2 head 1, m2, logits)")
    out = []
    for n in names:
        if n not in table["name"]:
            raise UsageError(f"unknown {what} {n!r}: node names are "
                             f"{', '.join(table['name'][:3])} … {table['name'][-1]} (aL.H = layer L head H, mL = "
                             f"MLP L)")
        out.append(table["name"].index(n))
    if len(set(out)) != len(out):
        raise UsageError(f"a {what} is named twice: {', '.join(names)}")
    return out


@experiment("path_patching", batch_size=64)
def path_patching(
    run: Run,
    pairs: PromptPairs | Sequence[PromptPair],
    *,
    receivers: str | Sequence[str],
    receiver_input: str = "all",
    senders: str | Sequence[str] | None = None,
    position: str = "all",
    metric: str | None = None,
) -> xr.Dataset:
    """Path patching from every sender to the ``receivers`` (definitions in
    :mod:`nnsight_reasoning.experiments.path_patching`).

    Parameters
    ----------
    model : a loaded model or a name/directory (see :func:`nnsight_reasoning.load_model`).
    pairs : clean (``base``) / corrupted (``source``) prompt pairs, e.g. ``nr.tasks.ioi(64,
        corruption="swap")`` (Tigges et al.'s S-inhibition test).
    receivers : node names, e.g. ``["a3.0", "a3.2"]`` or ``"a3.0,a3.2"`` (aL.H = layer L head
        H, mL = MLP L, ``logits``); all are patched together, as path patching's receiver set.
    receiver_input : ``"all"``, or ``"q"``, ``"k"``, ``"v"`` for heads' query, key or value input.
    senders : upstream node names (``input``, heads, MLPs); default every node that feeds a
        receiver. Each is patched alone.
    position : ``"all"`` or ``"last"`` (the corrupted output reaches the receivers at the last
        position only).
    metric : ``"logit_diff"`` or ``"prob_diff"``, as :func:`nnsight_reasoning.circuit`.

    Notes
    -----
    Batching: a pass of p pairs takes (1 + c)·p rows for c senders (plus the clean run);
    attention runs once per head on them, three times where a receiver's q, k or v is cut.

    Returns
    -------
    Dataset with ``effect`` (sender, prompt) = M_patched − M_clean and ``patched_logit_diff``
    (sender, prompt), in the metric's units; ``relative_effect`` (sender) = (mean patched − mean
    clean) / mean clean (1 = the metric doubled, −1 = gone); ``clean_logit_diff``,
    ``corrupt_logit_diff`` (prompt). Sender coordinates ``sender_layer`` (-1 = input),
    ``sender_kind`` (input/head/mlp), ``sender_head`` (-1 if not a head). ``attrs``: receivers
    (comma-separated), receiver_input, position, metric. With ``revisions`` every variable gains a leading
    ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.path_patching(model, nr.tasks.ioi(64, corruption="swap"), receivers=["a3.0"],
    ...                       receiver_input="q", position="last")
    >>> ds.relative_effect.sortby(ds.relative_effect)[:5]
    """
    if receiver_input not in RECEIVER_INPUTS:
        raise UsageError(f"receiver_input must be one of {', '.join(RECEIVER_INPUTS)} (got {receiver_input!r})")
    if position not in POSITIONS:
        raise UsageError(f"position must be one of {', '.join(POSITIONS)} (got {position!r})")
    if run.batch_size < 2:
        raise UsageError(f"batch_size must hold one pair's corrupted row and one patched row: >= 2 "
                         f"(got {run.batch_size})")
    shape = Shape.of(run.model)
    up, down = node_table(shape.n_layers, shape.n_heads)
    recv = _nodes(receivers, down, "receiver")
    if receiver_input != "all" and any(down["kind"][v] != "head" for v in recv):
        raise UsageError(f"receiver_input {receiver_input!r} is a head's query, key or value input: every receiver "
                         f"must be a head (aL.H); use receiver_input='all' for MLPs and the logits")
    feeds = shape.valid[:, recv].any(1)  # (n_up,) upstream nodes with an edge into some receiver
    if senders is None:
        send = [u for u in np.nonzero(feeds)[0]]
    else:
        send = _nodes(senders, up, "sender")
        late = [up["name"][u] for u in send if not feeds[u]]
        if late:
            raise UsageError(f"sender(s) {', '.join(late)} reach no receiver through the residual stream (they are "
                             f"computed after, or beside, every receiver)")
    if not send:
        raise UsageError("no component feeds these receivers (they read only the input embedding's layer?)")
    pair_list, tok = _prepare(run, pairs)
    metric = default_metric(pairs) if metric is None else metric
    answers = _answers(run, pair_list, tok, metric)
    cuts = np.zeros((len(send) + 1,) + shape.valid.shape, bool)  # variant 0 cuts nothing: the clean run
    cuts_qkv = None
    if receiver_input != "all":
        cuts_qkv = np.zeros((len(send) + 1, len(up["name"]), shape.n_layers, shape.n_heads, 3), bool)
    for k, u in enumerate(send, 1):
        for v in recv:
            if not shape.valid[u, v]:
                continue
            if cuts_qkv is None:
                cuts[k, u, v] = True
            else:
                cuts_qkv[k, u, down["layer"][v], down["head"][v], RECEIVER_INPUTS.index(receiver_input) - 1] = True
    patched, corrupt = _edge_patched(run, tok, cuts, "path patching", answers, removed_qkv=cuts_qkv,
                                     last_only=position == "last")
    clean = patched[0]
    names = [up["name"][u] for u in send]
    unit = "1" if metric == "prob_diff" else "logits"
    coords: dict[str, Any] = {
        "sender": ("sender", np.array(names, dtype=object),
                   {"long_name": "sender node: input (embeddings), aL.H (head H of layer L) or mL (layer L's MLP)"}),
        "prompt": ("prompt", np.arange(len(pair_list)), {"long_name": "prompt pair index"}),
        "sender_layer": ("sender", np.array([up["layer"][u] for u in send], dtype=int),
                         {"long_name": "the sender's layer (−1: input)"}),
        "sender_kind": ("sender", np.array([up["kind"][u] for u in send], dtype=object),
                        {"long_name": "the sender's kind: input, head or mlp"}),
        "sender_head": ("sender", np.array([up["head"][u] for u in send], dtype=int),
                        {"long_name": "the sender's head index (−1: not a head)"}),
        "base": ("prompt", [p.base for p in pair_list]), "source": ("prompt", [p.source for p in pair_list]),
        "base_answer": ("prompt", [p.base_answer for p in pair_list]),
        "source_answer": ("prompt", [p.source_answer for p in pair_list])}
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = (patched[1:].mean(1) - clean.mean()) / clean.mean()
    what = "the receivers' " + ("input" if receiver_input == "all" else f"{receiver_input} input")
    data = {
        "effect": (("sender", "prompt"), patched[1:] - clean,
                   {"long_name": f"change of the metric when the sender's corrupted output reaches {what}",
                    "units": unit}),
        "patched_logit_diff": (("sender", "prompt"), patched[1:], {"long_name": "metric, path-patched run",
                                                                   "units": unit}),
        "relative_effect": ("sender", relative, {"long_name": "(patched − clean) / clean, prompt means", "units": "1"}),
        "clean_logit_diff": ("prompt", clean, {"long_name": "metric, clean run", "units": unit}),
        "corrupt_logit_diff": ("prompt", corrupt, {"long_name": "metric, corrupted run", "units": unit}),
    }
    attrs = {**shape.attrs(), "method": "path_patching", "metric": metric, "answer_sets": int(answers.sets),
             "receivers": ",".join(down["name"][v] for v in recv), "receiver_input": receiver_input,
             "position": position}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def grid(ds: xr.Dataset, var: str = "relative_effect") -> xr.DataArray:
    """The head senders' ``var`` (prompt means where it has prompts) as a (layer, head) grid, NaN
    for heads that were not senders."""
    v = ds[var].mean("prompt") if "prompt" in ds[var].dims else ds[var]
    heads = v.where(v["sender_kind"] == "head", drop=True)
    out = np.full((int(ds.attrs["n_layers"]), int(ds.attrs["n_heads"])), np.nan)
    out[heads["sender_layer"].values.astype(int), heads["sender_head"].values.astype(int)] = heads.values
    return xr.DataArray(out, dims=("layer", "head"), name=var, attrs=dict(ds[var].attrs),
                        coords={"layer": np.arange(out.shape[0]), "head": np.arange(out.shape[1])})


def summarize(ds: xr.Dataset, top: int = 8) -> list[Any]:
    """The clean and corrupted metric and the ``top`` senders by |relative effect| (at the last
    checkpoint of a sweep)."""
    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    what = "input" if ds.attrs["receiver_input"] == "all" else f"{ds.attrs['receiver_input']} input"
    rel = last["relative_effect"].values
    order = np.argsort(-np.abs(np.nan_to_num(rel)))[:top]
    return [f"path patching · {ds.attrs.get('task')} · {ds.sizes['prompt']} pairs · "
            f"{model_at(last)}: receivers {ds.attrs['receivers']} ({what}, "
            f"{'every position' if ds.attrs['position'] == 'all' else 'last position'}); clean {str(ds.attrs['metric']).replace('_', ' ')} "
            f"{float(last['clean_logit_diff'].mean()):.2f}, corrupted {float(last['corrupt_logit_diff'].mean()):.2f}",
            "largest effects (patched − clean) / clean: " + ", ".join(
                f"{last['sender'].values[i]} {rel[i]:+.3f}" for i in order)]
