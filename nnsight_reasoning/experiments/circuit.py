"""Edge attribution (EAP, EAP-IG), circuit extraction and faithfulness (Tigges et al. 2024).

The component graph: upstream nodes are the input (residual stream entering layer 0), every
attention head and every MLP; downstream nodes are every head, every MLP and the logits. An
edge u → v is u's output as it reaches v's input through the residual stream (only where u is
computed before v reads: in parallel-residual models such as Pythia a layer's heads feed only
later layers). Names: ``input``, ``a3.1`` (layer 3, head 1), ``m3`` (MLP 3), ``logits``.

- **Score** of an edge (Syed, Rager & Conmy 2023, "Attribution patching outperforms automated
  circuit discovery"): (a_u(corrupt) − a_u(clean)) · ∂M/∂(input of v), summed over positions
  and averaged over prompts, with M = logit(r1) − logit(r2) on the clean prompt (r1 its answer,
  r2 the corrupted prompt's). It estimates how M changes if that one edge carried its
  corrupted value: strongly negative = the edge carries the answer.
- **EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have faith in faithfulness"), ``ig_steps`` =
  m > 1: the gradient is averaged over m runs with input embeddings interpolated from clean to
  corrupted at α = (k + ½)/m (the input variant; the activation variant is not offered).
- **Circuit** of size n: the n edges of largest |score|, then pruned to edges on a path from
  the input to the logits (the number kept is reported).
- **Faithfulness**: the clean prompts run with every edge outside the circuit carrying its
  corrupted value (real patching, :func:`backend.graph.edge_patched_logits`), as
  (M_circuit − M_corrupt) / (M_clean − M_corrupt) of the prompt means: 1 = the circuit
  alone recovers the model's logit difference, 0 = no better than the corrupted run.
  ``fraction`` = M_circuit / M_clean is reported too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..runner import plan_batches
from .. import remote as _remote
from ..backend import graph
from ..errors import UsageError
from ..models import load_model, model_info
from ..experiments.patch import tokenize_pairs
from ..progress import progress_bar
from ..results.io import provenance
from ..tasks import PromptPair, PromptPairs, ReasoningPrompts
from ..tasks.base import length_batches

DEFAULT_SIZES = (10, 20, 50, 100, 200)


def eap(
    model: Any,
    pairs: PromptPairs | Sequence[PromptPair],
    *,
    ig_steps: int = 5,
    sizes: Sequence[int] = DEFAULT_SIZES,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
    revisions: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """Edge scores of the whole component graph and the faithfulness of its top-n circuits.

    Parameters
    ----------
    model : a loaded model or a name/directory (see :func:`nnsight_reasoning.load_model`).
    pairs : clean (``base``) / corrupted (``source``) prompt pairs with single-token answers,
        e.g. ``nr.tasks.arithmetic(...)`` or ``nr.tasks.ioi(...)``.
    ig_steps : 1 = EAP (gradient at the clean run); m > 1 = EAP-IG with m steps (default 5).
    sizes : circuit sizes (edges before pruning) whose faithfulness is measured by real
        patching; empty for scores only.
    batch_size : most input rows per pass (remote: per request); a pass of p pairs takes
        (2 + ig_steps)·p rows, and attention runs once per head on them.
    revisions : run on each checkpoint (see :func:`nnsight_reasoning.over_revisions`); every
        variable gains a leading ``checkpoint`` dim and each checkpoint gets its own circuit.

    Returns
    -------
    Dataset with ``score`` (upstream, downstream) in logits, NaN where no edge exists;
    ``clean_logit_diff``, ``corrupt_logit_diff`` (prompt); ``circuit_logit_diff`` (size,
    prompt); ``faithfulness``, ``fraction``, ``n_edges``, ``n_nodes`` (size); ``in_circuit``
    (size, upstream, downstream) 0/1. Node coordinates: ``upstream_layer`` (-1 = input),
    ``upstream_kind`` (input/head/mlp), ``upstream_head`` (-1 if not a head), and the same
    for ``downstream`` (kind logits at layer n_layers).
    """
    _refuse_single_prompts(pairs)
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise UsageError(f"ig_steps must be an integer >= 1 (got {ig_steps})")
    sizes = sorted({int(s) for s in sizes})
    if any(s < 1 for s in sizes):
        raise UsageError(f"circuit sizes must be >= 1 edges (got {sizes})")
    if revisions is not None:
        from ..runner import over_revisions

        def run(m):
            return eap(m, pairs, ig_steps=ig_steps, sizes=sizes, batch_size=batch_size, remote=remote,
                       progress=progress)

        return over_revisions(run, model, revisions, progress=progress, remote=remote)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if batch_size < 2 + (ig_steps if ig_steps > 1 else 0):
        raise UsageError(f"batch_size must hold one pair's rows: >= {2 + (ig_steps if ig_steps > 1 else 0)}")
    pair_list, base_ids, source_ids, answers = _prepare(model, pairs, remote)
    n_layers, n_heads, parallel = graph.graph_shape(model)
    valid = graph.valid_edges(n_layers, n_heads, parallel).numpy()
    n = len(pair_list)
    per_prompt = np.zeros((n,) + valid.shape)
    clean, corrupt = np.zeros(n), np.zeros(n)
    traffic = _remote.Traffic()
    jobs = plan_batches([len(b) for b in base_ids], batch_size, 2 + (ig_steps if ig_steps > 1 else 0))
    for job in progress_bar(jobs, "edge scores", enabled=progress):
        ids = torch.tensor([source_ids[i] for i in job] + [base_ids[i] for i in job])
        scores, logits = graph.edge_attributions(model, ids, torch.tensor([answers[i] for i in job] * 2),
                                                 ig_steps=ig_steps, remote=remote)
        per_prompt[job] = scores.numpy()
        diff = (logits[:, 0] - logits[:, 1]).numpy()
        corrupt[job], clean[job] = diff[: len(job)], diff[len(job):]
    score = np.where(valid, per_prompt.mean(0), np.nan)
    circuits = np.stack([extract(score, s) for s in sizes]) if sizes else np.zeros((0,) + valid.shape, bool)
    circuit_diff, _, n_faith = _edge_patched(model, base_ids, source_ids, answers, valid & ~circuits, batch_size,
                                             remote, progress) if sizes else (np.zeros((0, n)), None, 0)
    attrs = _attrs(model, pairs, remote, "eap_ig" if ig_steps > 1 else "eap", n_layers, n_heads, parallel, batch_size,
                   len(jobs) + n_faith, traffic)
    attrs.update(ig_steps=ig_steps, circuit_selection="top-n edges by |score|, pruned to input-to-logits paths")
    return _dataset(pair_list, score, clean, corrupt, circuits, circuit_diff, sizes, n_layers, n_heads, attrs)


def _refuse_single_prompts(pairs) -> None:
    if isinstance(pairs, ReasoningPrompts):
        raise UsageError(f"{pairs.task} prompts are single labelled prompts; edge attribution needs clean/corrupted "
                         f"pairs, e.g. nr.tasks.kth_smallest_pairs(...)")


def _prepare(model, pairs, remote):
    """The pairs as a list, their token ids and answer ids; refuses bad pairs before any run."""
    _refuse_single_prompts(pairs)
    pair_list = list(pairs)
    if not pair_list:
        raise UsageError("no prompt pairs given")
    tok = tokenize_pairs(model, pair_list)
    base_ids, source_ids, answers = tok.base, tok.source, tok.answers
    _remote.preflight(model, remote)
    return pair_list, base_ids, source_ids, answers


def _attrs(model, pairs, remote, method, n_layers, n_heads, parallel, batch_size, n_passes, traffic) -> dict:
    info = model_info(model)
    task = pairs.task if isinstance(pairs, PromptPairs) else "custom"
    params = pairs.params if isinstance(pairs, PromptPairs) else {}
    attrs = provenance(task=task, task_params=params, model=info.name, model_path=info.path, revision=info.revision,
                       method=method, metric="logit_diff", seed=params.get("seed"), remote=remote)
    attrs.update(n_layers=n_layers, n_heads=n_heads, parallel_residual=int(parallel), batch_size=batch_size,
                 n_forward_passes=n_passes)
    if remote not in (False, "local"):
        attrs.update(traffic.as_attrs())
    return attrs


def _edge_patched(model, base_ids, source_ids, answers, removed, batch_size, remote, progress, label="faithfulness"):
    """(c, prompt) logit difference of each circuit (``removed`` (c, up, down): cut edges), (prompt)
    that of the corrupted run, and the number of passes. A pass takes p pairs and up to
    ``batch_size`` − 1 circuits."""
    c = removed.shape[0]
    out, corrupt = np.zeros((c, len(base_ids))), np.zeros(len(base_ids))
    per = max(1, batch_size - 1)
    chunks = [list(range(k, min(k + per, c))) for k in range(0, c, per)]
    lengths = [len(b) for b in base_ids]
    jobs = [(ch, job) for ch in chunks for job in length_batches(lengths, max(1, batch_size // (1 + len(ch))))]
    for ch, job in progress_bar(jobs, label, enabled=progress):
        ids = torch.tensor([source_ids[i] for i in job] + [base_ids[i] for i in job])
        logits = graph.edge_patched_logits(model, ids, torch.tensor([answers[i] for i in job] * 2),
                                           torch.tensor(removed[ch], dtype=torch.float32), remote=remote)
        diff = (logits[:, 0] - logits[:, 1]).numpy()
        corrupt[job] = diff[: len(job)]
        out[np.ix_(ch, job)] = diff[len(job):].reshape(len(ch), len(job))
    return out, corrupt, len(jobs)


def edge_patching(
    model: Any,
    pairs: PromptPairs | Sequence[PromptPair],
    *,
    batch_size: int = 256,
    remote: bool | str = False,
    progress: bool = True,
) -> xr.Dataset:
    """Exact edge scores, the quantity EAP estimates: for every edge, the clean run with that
    edge alone carrying its corrupted value, as (M_cut − M_clean), averaged over prompts.

    One extra row per edge and pair (graph: :mod:`nnsight_reasoning.circuits`), so it costs
    about n_edges forward passes' worth of rows; use it to validate EAP / EAP-IG on small
    models. Same ``score`` layout as :func:`eap` (NaN where no edge exists), no circuits;
    ``attrs["method"] = "edge_patching"``.
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    pair_list, base_ids, source_ids, answers = _prepare(model, pairs, remote)
    n_layers, n_heads, parallel = graph.graph_shape(model)
    valid = graph.valid_edges(n_layers, n_heads, parallel).numpy()
    edges = np.argwhere(valid)
    cuts = np.zeros((len(edges) + 1,) + valid.shape, bool)  # circuit 0 cuts nothing: the clean run
    cuts[np.arange(1, len(edges) + 1), edges[:, 0], edges[:, 1]] = True
    traffic = _remote.Traffic()
    diff, corrupt, n_passes = _edge_patched(model, base_ids, source_ids, answers, cuts, batch_size, remote, progress,
                                            "edge patching")
    score = np.full(valid.shape, np.nan)
    score[edges[:, 0], edges[:, 1]] = (diff[1:] - diff[0]).mean(1)
    attrs = _attrs(model, pairs, remote, "edge_patching", n_layers, n_heads, parallel, batch_size, n_passes, traffic)
    empty = np.zeros((0,) + valid.shape, bool)
    return _dataset(pair_list, score, diff[0], corrupt, empty, np.zeros((0, len(pair_list))), [], n_layers, n_heads,
                    attrs)


def extract(score: np.ndarray | xr.DataArray, n_edges: int) -> np.ndarray:
    """(upstream, downstream) bool: the ``n_edges`` edges of largest |score| (NaN = no edge),
    pruned to those on a path from the input to the logits."""
    s = np.nan_to_num(np.abs(np.asarray(score, dtype=float)), nan=-1.0)
    order = np.argsort(-s, axis=None, kind="stable")[: min(n_edges, int((s >= 0).sum()))]
    keep = np.zeros(s.shape, bool)
    keep.flat[order] = True
    return prune(keep)


def prune(edges: np.ndarray) -> np.ndarray:
    """Edges of ``edges`` whose upstream node is reached from the input and whose downstream
    node reaches the logits, through edges of ``edges``. Node j of the downstream axis is node
    j + 1 of the upstream axis (both in computation order), so one pass each way suffices."""
    n_up, n_down = edges.shape
    reached = np.zeros(n_up, bool)
    reached[0] = True
    for v in range(n_down - 1):
        reached[v + 1] = bool((edges[:, v] & reached).any())
    reaches = np.zeros(n_down, bool)
    reaches[-1] = True
    for v in range(n_down - 2, -1, -1):
        reaches[v] = bool((edges[v + 1] & reaches).any())
    return edges & reached[:, None] & reaches[None, :]


def overlap(ds: xr.Dataset, n_edges: int) -> xr.DataArray:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of the checkpoints' circuits of ``n_edges`` edges
    (re-extracted from each checkpoint's ``score``), dims (checkpoint, checkpoint_b)."""
    if "checkpoint" not in ds.dims:
        raise UsageError("circuit overlap compares checkpoints: run eap(..., revisions=...) first")
    sets = [extract(ds["score"].isel(checkpoint=k).values, n_edges) for k in range(ds.sizes["checkpoint"])]
    jac = np.array([[(a & b).sum() / max(1, (a | b).sum()) for b in sets] for a in sets])
    names = ds["checkpoint"].values
    return xr.DataArray(jac, dims=("checkpoint", "checkpoint_b"), coords={"checkpoint": names, "checkpoint_b": names},
                        name="jaccard", attrs={"long_name": f"Jaccard similarity of {n_edges}-edge circuits",
                                               "units": "1", "n_edges": n_edges})


def node_table(n_layers: int, n_heads: int) -> tuple[dict, dict]:
    """Coordinates of the upstream and downstream axes: names, layer, kind, head."""
    up = {"name": ["input"], "layer": [-1], "kind": ["input"], "head": [-1]}
    down: dict[str, list] = {"name": [], "layer": [], "kind": [], "head": []}
    for li in range(n_layers):
        for h in range(n_heads + 1):
            mlp = h == n_heads
            for t in (up, down):
                t["name"].append(f"m{li}" if mlp else f"a{li}.{h}")
                t["layer"].append(li)
                t["kind"].append("mlp" if mlp else "head")
                t["head"].append(-1 if mlp else h)
    for k, v in (("name", "logits"), ("layer", n_layers), ("kind", "logits"), ("head", -1)):
        down[k].append(v)
    return up, down


def _dataset(pairs, score, clean, corrupt, circuits, circuit_diff, sizes, n_layers, n_heads, attrs) -> xr.Dataset:
    up, down = node_table(n_layers, n_heads)
    coords: dict[str, Any] = {"upstream": np.array(up["name"], dtype=object),
                              "downstream": np.array(down["name"], dtype=object),
                              "size": np.array(sizes, dtype=int), "prompt": np.arange(len(pairs)),
                              "base": ("prompt", [p.base for p in pairs]),
                              "source": ("prompt", [p.source for p in pairs]),
                              "base_answer": ("prompt", [p.base_answer for p in pairs]),
                              "source_answer": ("prompt", [p.source_answer for p in pairs])}
    for axis, table in (("upstream", up), ("downstream", down)):
        for k in ("layer", "kind", "head"):
            coords[f"{axis}_{k}"] = (axis, np.array(table[k], dtype=object if k == "kind" else int))
    gap = clean.mean() - corrupt.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        faith = (circuit_diff.mean(1) - corrupt.mean()) / gap
        frac = circuit_diff.mean(1) / clean.mean()
    n_nodes = [len(set(np.nonzero(c)[0]) | {j + 1 for j in np.nonzero(c)[1]}) for c in circuits]
    logit = "logit(clean answer) − logit(corrupted answer)"
    data = {
        "score": (("upstream", "downstream"), score, {"long_name": f"estimated change of {logit} when the edge is "
                                                                  f"corrupted", "units": "logits"}),
        "clean_logit_diff": ("prompt", clean, {"long_name": f"{logit}, clean run", "units": "logits"}),
        "corrupt_logit_diff": ("prompt", corrupt, {"long_name": f"{logit}, corrupted run", "units": "logits"}),
        "circuit_logit_diff": (("size", "prompt"), circuit_diff, {"long_name": f"{logit}, circuit only (edges "
                                                                              f"outside it corrupted)",
                                                                  "units": "logits"}),
        "faithfulness": ("size", faith, {"long_name": "(circuit − corrupted) / (clean − corrupted)", "units": "1"}),
        "fraction": ("size", frac, {"long_name": "circuit / clean logit difference", "units": "1"}),
        "n_edges": ("size", circuits.sum((1, 2)), {"long_name": "edges kept after pruning"}),
        "n_nodes": ("size", np.array(n_nodes, dtype=int), {"long_name": "nodes touched by the pruned circuit "
                                                                        "(the logits count once)"}),
        "in_circuit": (("size", "upstream", "downstream"), circuits.astype(np.int8), {"long_name": "edge in the "
                                                                                                  "pruned circuit"}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
circuit = eap  # until ported
