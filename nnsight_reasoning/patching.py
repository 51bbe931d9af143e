"""Activation patching / causal mediation analysis (Stolfo et al. 2023).

For every prompt pair, site, layer, position (and head for ``head``), the base prompt is
run with that one activation replaced by its value on the source prompt, and the metric
compares the answer scores with the clean base run.

Batching: one forward pass takes ``p`` source rows and ``p`` clean base rows as input, and
grows to ``p·(u+2) <= batch_size`` rows (``u`` patch units per pair): each patched copy of a
base row joins the batch at the layer of its site, because below it the copy would equal its
base row. A sweep over all layers thus computes about half the layer-rows of one full
forward per patch. Each copy reads its activation from its own pair's source row *in the
same pass*, so source activations never leave the model (or the NDIF server). Pairs are
grouped by token length, so no padding is ever used.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from . import attribution, backend, metrics
from . import remote as _remote
from .errors import UsageError
from .models import load_model, model_info
from .parts import Parts, digest
from .progress import progress_bar
from .results import provenance
from .sites import POSITIONS, check_layers, check_sites, dims, var_name
from .tasks import PromptPair, PromptPairs, ReasoningPrompts
from .tasks.base import group_by_length


METHODS = {"exact": "activation_patching", "attribution": "attribution_patching"}


def patch(
    model: Any,
    pairs: PromptPairs | Sequence[PromptPair],
    sites: Sequence[str] | str = ("mlp", "attn"),
    positions: str = "last",
    *,
    metric: str = "stolfo_ie",
    method: str = "exact",
    ig_steps: int = 1,
    layers: Sequence[int] | None = None,
    batch_size: int = 512,
    remote: bool | str = False,
    progress: bool = True,
    resume_dir: str | Path | None = None,
    revisions: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """Activation-patching sweep: the effect of each site's activation on the answer.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model` (or any nnsight ``TransformersModel``), or
        a name/directory to load.
    pairs : aligned prompt pairs, e.g. ``nr.tasks.arithmetic(...)``.
    sites : any of "mlp", "attn", "resid", "head".
    positions : "last" (the final prompt token) or "all" (every token).
    metric : "stolfo_ie" (default) or "logit_diff" (see :mod:`nnsight_reasoning.metrics`).
    method : "exact" (activation patching) or "attribution" (attribution patching: the
        gradient estimate of the same values from one forward + backward pass per batch; see
        :mod:`nnsight_reasoning.attribution`).
    ig_steps : attribution only: 1 = gradient at the base run; m > 1 = integrated gradients
        over m interpolations of the input embeddings (more accurate, m extra rows per pair).
    layers : subset of layers; default all.
    batch_size : most rows (sequences) in one forward pass; remotely, one pass is one request,
        so this is also the chunk of work per NDIF job.
    remote : True (or a host URL) to run on NDIF, one request per forward pass; "local" runs
        nnsight's remote serialisation path on this machine.
    resume_dir : keep each finished forward pass there; a later call with the same arguments
        skips them (see :mod:`nnsight_reasoning.parts`). The CLI uses ``<out>.nc.parts``.
    revisions : run on each of these checkpoints of ``model`` (``"all"``, ``"step0,main"``,
        a list; see :func:`nnsight_reasoning.over_revisions`); ``model`` may then be a name.

    Returns
    -------
    xarray.Dataset with one variable per site, dims ``(prompt, layer, position)``; the
    ``head`` site is stored as variable ``heads`` with an extra ``head`` dim; values of ``metric``; ``clean_p_base`` and
    ``clean_p_source`` along ``prompt``. With ``positions="last"`` and prompts of different
    lengths, the single ``position`` coordinate is -1 ("each prompt's last token").
    With ``revisions``, every variable gains a leading ``checkpoint`` dim.

    Examples
    --------
    >>> ds = nr.patch(nr.load_model(), nr.tasks.arithmetic(n_prompts=8), sites=["mlp"])
    >>> ds.mlp.mean("prompt")
    """
    sites = check_sites(sites)
    if isinstance(pairs, ReasoningPrompts):
        raise UsageError(f"{pairs.task} prompts are labelled single prompts (for attention/probe); patching needs "
                         f"pairs, e.g. nr.tasks.kth_smallest_pairs(...)")
    if revisions is not None:
        return _over_revisions(model, pairs, revisions, resume_dir, progress, sites=sites, positions=positions,
                               metric=metric, method=method, ig_steps=ig_steps, layers=layers, batch_size=batch_size,
                               remote=remote)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)} (got {positions!r})")
    if metric not in metrics.METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from: {', '.join(metrics.METRICS)}")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if not isinstance(ig_steps, int) or ig_steps < 1 or (ig_steps > 1 and method != "attribution"):
        raise UsageError(f"ig_steps must be an integer >= 1, and > 1 only with method='attribution' (got {ig_steps})")
    if batch_size < 3:
        raise UsageError(f"batch_size must be >= 3 (got {batch_size})")
    d = dims(model)
    layer_list = check_layers(list(layers) if layers is not None else None, d["n_layers"])
    pair_list = list(pairs)
    if not pair_list:
        raise UsageError("no prompt pairs given")
    base_ids, source_ids, answers = tokenize_pairs(model, pair_list)
    _remote.preflight(model, remote)

    lengths = [len(b) for b in base_ids]
    t_max = max(lengths)
    same_len = len(set(lengths)) == 1
    pos_coord = list(range(t_max)) if positions == "all" else [t_max - 1 if same_len else -1]
    n, n_layers, n_pos, n_heads = len(pair_list), len(layer_list), len(pos_coord), d["n_heads"]
    values = {s: np.full((n, n_layers, n_pos) + ((n_heads,) if s == "head" else ()), np.nan) for s in sites}
    clean = np.full((n, 2), np.nan)

    info = model_info(model)
    task = pairs.task if isinstance(pairs, PromptPairs) else "custom"
    params = pairs.params if isinstance(pairs, PromptPairs) else {}
    exact = method == "exact"
    jobs = list(_plan(lengths, sites, layer_list, positions, n_heads, batch_size)) if exact else \
        attribution.plan(lengths, batch_size, ig_steps)
    store = Parts(resume_dir, {"method": METHODS[method], "model": info.name, "model_path": info.path,
                               "revision": info.revision, "task": task, "task_params": params,
                               "pairs": digest(base_ids, source_ids, answers), "sites": sites,
                               "positions": positions, "metric": metric, "ig_steps": ig_steps, "layers": layer_list,
                               "batch_size": batch_size})
    traffic = _remote.TRAFFIC.copy()
    with store.resume_hint_on_failure():
        for k, job in enumerate(progress_bar(jobs, "patching" if exact else "attribution", enabled=progress)):
            if not exact:
                attribution.run_pass(model, k, job, base_ids, source_ids, answers, sites, layer_list, positions,
                                     metric, ig_steps, remote, store, values, clean)
                continue
            pair_idx, units = job
            rows, ans, plan, where = _pass_inputs(pair_idx, units, base_ids, source_ids, answers, layer_list)

            def compute(rows=rows, ans=ans, plan=plan):
                s = backend.answer_scores(model, torch.tensor(rows), torch.tensor(ans), plan, rank=False,
                                          remote=remote)
                return {"log_probs": s.log_probs.double().numpy(), "logits": s.logits.double().numpy()}

            _fill(store.fetch(f"pass-{k:06d}", (rows, ans, where), compute), pair_idx, where, metric, values, clean)

    attrs = provenance(task=task, task_params=params, model=info.name, model_path=info.path,
                       revision=info.revision, method=METHODS[method], metric=metric,
                       seed=params.get("seed"), remote=remote)
    if not exact:
        attrs.update(ig_steps=ig_steps)
    attrs.update(positions=positions, batch_size=batch_size, n_forward_passes=len(jobs), n_resumed_passes=store.resumed)
    if remote not in (False, "local"):
        attrs.update(_remote.TRAFFIC.since(traffic))
    tokens = _token_strings(model, base_ids, positions, t_max)
    return _dataset(pair_list, values, clean, layer_list, pos_coord, n_heads, tokens, lengths, attrs, metric)


def _over_revisions(model, pairs, revisions, resume_dir, progress, **kw) -> xr.Dataset:
    from .checkpoints import over_revisions

    pair_list = list(pairs)
    task = pairs.task if isinstance(pairs, PromptPairs) else "custom"
    config = {"method": METHODS[kw["method"]], "task": task,
              "task_params": pairs.params if isinstance(pairs, PromptPairs) else {},
              "pairs": digest([(p.base, p.source, p.base_answer, p.source_answer) for p in pair_list]),
              **{k: v for k, v in kw.items() if k != "remote"}}

    def run(m, resume_dir=None):
        return patch(m, pairs, progress=progress, resume_dir=resume_dir, **kw)

    return over_revisions(run, model, revisions, config=config, resume_dir=resume_dir, progress=progress,
                          remote=kw["remote"])


# --------------------------------------------------------------------------- planning
def _units(length: int, sites: list[str], layers: list[int], positions: str, n_heads: int) -> list[tuple]:
    """(site, layer_index, position, pos_index, head) for one prompt length."""
    pos = [(length - 1, 0)] if positions == "last" else [(p, p) for p in range(length)]
    out = []
    for s in sites:
        for li, _ in enumerate(layers):
            for p, pi in pos:
                for h in range(n_heads) if s == "head" else [None]:
                    out.append((s, li, p, pi, h))
    return out


def _plan(lengths: list[int], sites, layers, positions, n_heads, batch_size):
    """Yield (pair indices, units) per forward pass; pairs in a pass share one length."""
    for idx in group_by_length(lengths):
        units = _units(lengths[idx[0]], sites, layers, positions, n_heads)
        per_pair = min(len(units), batch_size - 2)
        n_pairs = max(1, batch_size // (per_pair + 2))
        for u0 in range(0, len(units), per_pair):
            for p0 in range(0, len(idx), n_pairs):
                yield idx[p0 : p0 + n_pairs], units[u0 : u0 + per_pair]


def n_forward_passes(n_pairs: int, n_units: int, batch_size: int = 512) -> int:
    """Forward passes of a sweep over ``n_pairs`` equal-length pairs with ``n_units`` patches each."""
    per_pair = min(n_units, batch_size - 2)
    return math.ceil(n_units / per_pair) * math.ceil(n_pairs / max(1, batch_size // (per_pair + 2)))


# --------------------------------------------------------------------------- execution
def _pass_inputs(pair_idx, units, base_ids, source_ids, answers, layer_list):
    """One forward pass: p source rows and p clean base rows go in; each unit of each pair adds
    a patched copy of its base row where its site is (see :class:`backend.Patch`).

    Returns the input rows, their answer ids, the patches, and where each copy's value goes:
    (output row, pair, site, layer index, position index, head, output row of its clean base).
    """
    p = len(pair_idx)
    rows = [source_ids[i] for i in pair_idx] + [base_ids[i] for i in pair_idx]
    ans = [answers[i] for i in pair_idx] * 2
    entries: dict[tuple, list[tuple]] = defaultdict(list)
    for j, i in enumerate(pair_idx):
        for site, li, pos, pi, head in units:
            entries[(site, layer_list[li])].append(((p + j, j, pos) + (() if head is None else (head,)),
                                                    (i, site, li, pi, head, p + j)))
    plan, where = [], []
    for (site, layer), es in entries.items():
        t = [torch.tensor(c) for c in zip(*(e[0] for e in es))]
        plan.append(backend.Patch(site, layer, t[0], t[1], t[2], t[3] if site == "head" else None))
        for e in es:
            where.append((len(rows) + len(where),) + e[1])
    return rows, ans, plan, where


def _fill(scores, pair_idx, where, metric, values, clean):
    """Write one pass's metric values into ``values[site][pair, layer, position(, head)]``."""
    lp, lg = scores["log_probs"], scores["logits"]
    p = len(pair_idx)
    for j, i in enumerate(pair_idx):
        clean[i] = np.exp(lp[p + j])
    r, i, site, li, pi, head, c = (np.array(x, dtype=object) for x in zip(*where))
    r, i, li, pi, c = (x.astype(int) for x in (r, i, li, pi, c))
    if metric == "stolfo_ie":
        val = metrics.stolfo_ie(np.exp(lp[c, 0]), np.exp(lp[c, 1]), np.exp(lp[r, 0]), np.exp(lp[r, 1]))
    else:
        val = metrics.logit_diff(lg[c, 0], lg[c, 1], lg[r, 0], lg[r, 1])
    for s in values:
        m = site == s
        if not m.any():
            continue
        if s == "head":
            values[s][i[m], li[m], pi[m], head[m].astype(int)] = val[m]
        else:
            values[s][i[m], li[m], pi[m]] = val[m]


def tokenize_pairs(model, pairs: list[PromptPair]):
    """Base ids, source ids and [base, source] answer ids per pair, or a one-line error for a
    misaligned pair, an out-of-vocabulary word or a multi-token answer."""
    base_ids = backend.tokenize(model, [p.base for p in pairs])
    source_ids = backend.tokenize(model, [p.source for p in pairs])
    unk = getattr(model.tokenizer, "unk_token_id", None)
    answers = []
    for k, (p, b, s) in enumerate(zip(pairs, base_ids, source_ids)):
        if len(b) != len(s):
            raise UsageError(f"pair {k} is misaligned for this model's tokenizer ({len(b)} vs {len(s)} tokens); "
                             f"generate pairs with tokenizer=model.tokenizer")
        if unk is not None and (unk in b or unk in s):
            raise UsageError(f"pair {k} has words outside this model's vocabulary: {p.base!r}")
        ids = [backend.answer_token(model, a) for a in (p.base_answer, p.source_answer)]
        if None in ids:
            bad = p.base_answer if ids[0] is None else p.source_answer
            raise UsageError(f"answer {bad!r} of pair {k} is not a single token for this model; "
                             f"generate pairs with tokenizer=model.tokenizer or lower max_n")
        answers.append(ids)
    return base_ids, source_ids, answers


def _token_strings(model, base_ids, positions, t_max):
    tok = model.tokenizer
    if positions == "last":
        return [[tok.convert_ids_to_tokens(b[-1])] for b in base_ids]
    return [tok.convert_ids_to_tokens(b) + [""] * (t_max - len(b)) for b in base_ids]


def _dataset(pairs, values, clean, layers, pos_coord, n_heads, tokens, lengths, attrs, metric) -> xr.Dataset:
    coords: dict[str, Any] = {
        "prompt": np.arange(len(pairs)),
        "layer": np.array(layers),
        "position": np.array(pos_coord),
        "base": ("prompt", [p.base for p in pairs]),
        "source": ("prompt", [p.source for p in pairs]),
        "base_answer": ("prompt", [p.base_answer for p in pairs]),
        "source_answer": ("prompt", [p.source_answer for p in pairs]),
        "n_tokens": ("prompt", np.array(lengths)),
        "token": (("prompt", "position"), np.array(tokens, dtype=object)),
    }
    data = {}
    for s, v in values.items():
        dims_ = ("prompt", "layer", "position") + (("head",) if s == "head" else ())
        data[var_name(s)] = (dims_, v, {"metric": metric, "long_name": f"{metric} of patching {s}" + (" (attribution estimate)" if attrs["method"] == METHODS["attribution"] else ""),
                              "units": "nats" if metric == "logit_diff" else "1"})
    if "head" in values:
        coords["head"] = np.arange(n_heads)
    data["clean_p_base"] = ("prompt", clean[:, 0], {"long_name": "P(base answer | base prompt)", "units": "1"})
    data["clean_p_source"] = ("prompt", clean[:, 1], {"long_name": "P(source answer | base prompt)", "units": "1"})
    return xr.Dataset(data, coords=coords, attrs=attrs)
