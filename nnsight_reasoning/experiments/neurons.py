"""Neurons in chain-of-thought arithmetic (Rai & Yao 2024, ACL).

A neuron is a hidden unit of an MLP: its activation a_n is the input of the MLP's output
projection at index n, its output direction w_n that projection's column n.

- :func:`activations`: the ``neuron`` site, dims (prompt, layer, neuron, position), streamed
  in batches; only the requested layers, positions and neurons leave the model (``top_k``
  keeps the k neurons of each layer with the largest mean |activation|, found in a first
  pass that returns only sums).
- :func:`discover`: (1) per prompt, every neuron's direct contribution to the correct answer
  token, a_n · (w_n through the final norm, scale frozen) · (W_U[answer] − mean W_U), at the
  last position; its ``top_k`` neurons; (2) the neurons in the top k of at least
  ``min_frequency`` of the prompts; (3) each described by the tokens its output direction
  promotes most (logit lens of w_n). ``labeller``, a function you pass (for example one that
  asks an LLM with your own key), can name each neuron from those tokens; it is off by
  default, the toolkit never sees a key, and only the returned label is stored.
- :func:`cot_neurons`: the paper's link between neurons and prompt variants. The same
  problems in every variant (``full``, ``text_only``, ``equation_only``, ``no_cot``; see
  ``nr.tasks.cot_arithmetic``); neurons discovered on one variant; their mean activation
  per variant; accuracy per variant with them intact, zeroed, and set to their mean.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from .. import remote as _remote
from ..backend import neurons as _bn
from ..errors import UsageError
from ..models import load_model, model_info
from ..progress import progress_bar
from ..results.io import provenance
from ..sites import check_layers, dims
from ..tasks.base import length_batches
from ..tasks.cot import VARIANTS, CotPrompt, cot_arithmetic, load_gsm8k


def _texts(prompts: Sequence[Any]) -> list[str]:
    return [p if isinstance(p, str) else p.prompt for p in prompts]


def _n_neurons(model: Any) -> int:
    return int(getattr(model.config, "intermediate_size", None) or getattr(model.config, "n_inner", None)
               or 4 * dims(model)["d_model"])


def activations(
    model: Any,
    prompts: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    positions: str = "last",
    top_k: int | None = None,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
) -> xr.Dataset:
    """MLP neuron activations, dims (prompt, layer, neuron, position).

    ``prompts``: strings or objects with ``.prompt``. ``positions``: "last" or "all" (NaN
    past a prompt's end). ``top_k``: keep only the k neurons per layer with the largest mean
    |activation| over the prompts and kept positions; ``neuron`` then counts 0..k−1 and the
    coordinate ``neuron_id`` (layer, neuron) names them. Without it all neurons are kept.
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if positions not in ("last", "all"):
        raise UsageError(f"positions must be last or all (got {positions!r})")
    layer_list = check_layers(list(layers) if layers is not None else None, dims(model)["n_layers"])
    texts = _texts(prompts)
    if not texts:
        raise UsageError("no prompts given")
    ids = backend.tokenize(model, texts)
    _remote.preflight(model, remote)
    chunks = length_batches([len(x) for x in ids], batch_size)
    last = positions == "last"
    n_all = _n_neurons(model)
    select = None
    if top_k is not None:
        if not 1 <= top_k <= n_all:
            raise UsageError(f"top_k must be between 1 and {n_all} (the neurons per layer; got {top_k})")
        total = torch.zeros(len(layer_list), n_all)
        for chunk in progress_bar(chunks, "neuron means", enabled=progress):
            total += _bn.neuron_activations(model, torch.tensor([ids[i] for i in chunk]), layer_list, last_only=last,
                                            abs_sum=True, remote=remote)
        select = [row for row in total.topk(top_k, -1).indices.sort(-1).values]
    k = n_all if select is None else top_k
    t_max = 1 if last else max(map(len, ids))
    out = np.full((len(ids), len(layer_list), k, t_max), np.nan, dtype=np.float32)
    for chunk in progress_bar(chunks, "neurons", enabled=progress):
        a = _bn.neuron_activations(model, torch.tensor([ids[i] for i in chunk]), layer_list, last_only=last,
                                   select=select, remote=remote).numpy()  # (b, L, T', k)
        out[chunk, :, :, : a.shape[2]] = a.transpose(0, 1, 3, 2)
    coords: dict[str, Any] = {"prompt": np.arange(len(ids)), "layer": np.array(layer_list),
                              "neuron": np.arange(k), "position": np.array([-1] if last else range(t_max)),
                              "text": ("prompt", texts), "n_tokens": ("prompt", np.array([len(x) for x in ids]))}
    if select is not None:
        coords["neuron_id"] = (("layer", "neuron"), torch.stack(select).numpy())
    attrs = _attrs(model, prompts, "neuron_activations", "activation", remote)
    attrs.update(positions=positions, top_k=-1 if top_k is None else top_k, n_forward_passes=len(chunks) * (1 + (
        top_k is not None)))
    return xr.Dataset({"activation": (("prompt", "layer", "neuron", "position"), out,
                                      {"long_name": "input of the MLP output projection"})}, coords=coords, attrs=attrs)


def _attrs(model, prompts, method, metric, remote, **params) -> dict:
    info = model_info(model)
    task = getattr(prompts, "task", "custom")
    variants = sorted({p.variant for p in prompts if isinstance(p, CotPrompt)})
    attrs = provenance(task="cot_arithmetic" if variants else task, task_params=params, model=info.name,
                       model_path=info.path, revision=info.revision, method=method, metric=metric,
                       seed=params.get("seed"), remote=remote)
    return attrs


def _contributions(model, prompts, layer_list, batch_size, remote, progress) -> np.ndarray:
    ids = backend.tokenize(model, _texts(prompts))
    answers = backend.answer_tokens(model, [p.answer for p in prompts])
    out = np.zeros((len(ids), len(layer_list), _n_neurons(model)))
    batches = length_batches([len(x) for x in ids], batch_size)
    for chunk in progress_bar(batches, "contributions", enabled=progress):
        out[chunk] = _bn.neuron_contributions(model, torch.tensor([ids[i] for i in chunk]),
                                              torch.tensor([answers[i] for i in chunk]), layer_list,
                                              remote=remote).numpy()
    return out


def discover(
    model: Any,
    prompts: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 20,
    min_frequency: float = 0.25,
    n_tokens: int = 8,
    labeller: Callable[[list[str]], str] | None = None,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
) -> xr.Dataset:
    """Neurons that recur among each prompt's ``top_k`` contributors to its answer (see module doc).

    Returns dims ``unit`` (the discovered neurons, most frequent first; coords ``layer``,
    ``neuron``) with ``frequency`` (fraction of prompts with the unit in their top k),
    ``mean_contribution`` (logits, over all prompts), ``contribution`` (prompt, unit), and
    ``promoted`` / ``promoted_logit`` (unit, rank): the ``n_tokens`` tokens its output
    direction raises most; with ``labeller``, ``label`` (unit): ``labeller(promoted tokens)``.
    ``prompts`` need ``.prompt`` and ``.answer`` (one token).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not 0 < min_frequency <= 1:
        raise UsageError(f"min_frequency must be in (0, 1] (got {min_frequency})")
    layer_list = check_layers(list(layers) if layers is not None else None, dims(model)["n_layers"])
    if not prompts:
        raise UsageError("no prompts given")
    _remote.preflight(model, remote)
    contrib = _contributions(model, prompts, layer_list, batch_size, remote, progress)  # (n, L, N)
    n, n_layers, n_neurons = contrib.shape
    if not 1 <= top_k <= n_layers * n_neurons:
        raise UsageError(f"top_k must be between 1 and {n_layers * n_neurons} (got {top_k})")
    flat = contrib.reshape(n, -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
    freq = np.zeros(flat.shape[1])
    np.add.at(freq, top.ravel(), 1.0 / n)
    mean = flat.mean(0)
    found = [u for u in np.lexsort((-mean, -freq)) if freq[u] >= min_frequency - 1e-12]
    unit_layer = [layer_list[u // n_neurons] for u in found]
    unit_neuron = [int(u % n_neurons) for u in found]
    if found:
        tok_ids, tok_val = _bn.neuron_logit_lens(model, unit_layer, unit_neuron, n_tokens, remote=remote)
        promoted = np.array([model.tokenizer.convert_ids_to_tokens(r) for r in tok_ids.tolist()], dtype=object)
    else:
        tok_val, promoted = torch.zeros((0, n_tokens)), np.zeros((0, n_tokens), dtype=object)
    attrs = _attrs(model, prompts, "neuron_discovery", "direct_logit_contribution", remote)
    attrs.update(top_k=top_k, min_frequency=min_frequency, n_candidates=int(flat.shape[1]))
    labels = {} if labeller is None else {"label": ("unit", np.array([str(labeller([str(t) for t in row]))
                                                                      for row in promoted], dtype=object))}
    return xr.Dataset(
        {"frequency": ("unit", freq[found], {"long_name": f"fraction of prompts with the neuron in their top {top_k}"}),
         "mean_contribution": ("unit", mean[found], {"long_name": "mean direct contribution to the answer logit",
                                                     "units": "logits"}),
         "contribution": (("prompt", "unit"), flat[:, found], {"units": "logits"}),
         "promoted": (("unit", "rank"), promoted, {"long_name": "tokens the output direction promotes most"}),
         "promoted_logit": (("unit", "rank"), tok_val.numpy(), {"units": "logits per unit activation"}), **labels},
        coords={"unit": np.arange(len(found)), "layer": ("unit", np.array(unit_layer, dtype=int)),
                "neuron": ("unit", np.array(unit_neuron, dtype=int)), "rank": np.arange(n_tokens),
                "prompt": np.arange(n), "text": ("prompt", _texts(prompts))},
        attrs=attrs)


ABLATIONS = ("none", "zero", "mean", "random")


def cot_neurons(
    model: Any,
    *,
    n_prompts: int = 200,
    variants: Sequence[str] = VARIANTS,
    data: str | Path | None = None,
    n_shots: int = 1,
    n_steps: int = 2,
    seed: int = 0,
    discover_on: str = "full",
    top_k: int = 20,
    min_frequency: float = 0.25,
    labeller: Callable[[list[str]], str] | None = None,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
) -> xr.Dataset:
    """Discover arithmetic neurons on one prompt variant, then measure them on every variant.

    The problems come from ``nr.tasks.cot_arithmetic`` (``n_steps``, seeded), or from a GSM8K
    JSON Lines file ``data``; each variant renders the same problems with ``n_shots`` solved
    exemplars. Returns the :func:`discover` variables (dim ``unit``) plus ``activation``
    (variant, unit): mean activation at the last position; ``correct`` and ``p_answer``
    (ablation, variant, prompt) and ``accuracy`` (ablation, variant), ablation ``none``,
    ``zero`` (the units set to 0 at every position) or ``mean`` (set to their mean activation
    at the last position over the ``discover_on`` prompts).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    for v in list(variants) + [discover_on]:
        if v not in VARIANTS:
            raise UsageError(f"unknown variant {v!r}; choose from: {', '.join(VARIANTS)}")
    variants = list(dict.fromkeys([discover_on] + list(variants)))

    def make(v):
        if data is not None:
            return load_gsm8k(data, v, n_prompts=n_prompts, n_shots=n_shots, seed=seed, tokenizer=model.tokenizer)
        return cot_arithmetic(n_prompts, v, n_shots=n_shots, n_steps=n_steps, seed=seed, tokenizer=model.tokenizer)

    sets = {v: make(v) for v in variants}
    found = discover(model, sets[discover_on], top_k=top_k, min_frequency=min_frequency, labeller=labeller,
                     batch_size=batch_size, remote=remote, progress=progress)
    units = list(zip(found["layer"].values.tolist(), found["neuron"].values.tolist()))
    layers = sorted({li for li, _ in units})
    width = max([sum(1 for li, _ in units if li == layer) for layer in layers], default=0)
    # per layer the units' neurons, padded to equal length (the activations trace wants a tensor per layer)
    select = [torch.tensor(([n for li, n in units if li == layer] * width)[:width]) for layer in layers]
    where = [(layers.index(li), [n for l2, n in units if l2 == li].index(n)) for li, n in units]
    rng, taken, control = np.random.default_rng(seed), set(units), []
    for li, _ in units:  # the random baseline: other neurons of the same layers, no repeats
        pick = int(rng.choice([c for c in range(_n_neurons(model)) if (li, c) not in taken]))
        taken.add((li, pick))
        control.append((li, pick))
    n = len(sets[discover_on])
    act = np.zeros((len(variants), len(units)))
    correct = np.zeros((len(ABLATIONS), len(variants), n), dtype=np.int8)
    p_answer = np.zeros((len(ABLATIONS), len(variants), n))
    tokens = {v: (backend.tokenize(model, _texts(sets[v])), backend.answer_tokens(model, [p.answer for p in sets[v]]))
              for v in variants}
    if units:  # activations first: mean ablation uses the discovery variant's means
        for vi, v in enumerate(variants):
            ids = tokens[v][0]
            batches = length_batches([len(x) for x in ids], batch_size)
            for chunk in progress_bar(batches, f"activations {v}", enabled=progress):
                a = _bn.neuron_activations(model, torch.tensor([ids[i] for i in chunk]), layers, select=select,
                                           remote=remote).numpy()[:, :, 0]
                act[vi] += np.stack([a[:, li, k] for li, k in where], 1).sum(0) / n
    for vi, v in enumerate(variants):
        ids, answers = tokens[v]
        batches = length_batches([len(x) for x in ids], batch_size)
        for chunk in progress_bar(batches, f"ablations {v}", enabled=progress):
            rows, ans = torch.tensor([ids[i] for i in chunk]), torch.tensor([[answers[i]] for i in chunk])
            for ai, ablation in enumerate(ABLATIONS):
                if ablation == "none" or not units:
                    s = backend.answer_scores(model, rows, ans, remote=remote)
                else:
                    chosen = control if ablation == "random" else units
                    vals = act[0] if ablation == "mean" else np.zeros(len(units))  # variants[0] is discover_on
                    plan = [(layer, torch.tensor([nn for li, nn in chosen if li == layer]),
                             torch.tensor([vals[k] for k, (li, _) in enumerate(chosen) if li == layer]))
                            for layer in layers]
                    s = _bn.ablated_scores(model, rows, ans, plan, remote=remote)
                correct[ai, vi, chunk] = (s.rank[:, 0] == 0).numpy()
                p_answer[ai, vi, chunk] = np.exp(s.log_probs[:, 0].numpy())
    ds = found.drop_vars("text")
    ds["activation"] = (("variant", "unit"), act, {"long_name": "mean activation at the last position"})
    ds["correct"] = (("ablation", "variant", "prompt"), correct, {"long_name": "answer is the top-1 token"})
    ds["p_answer"] = (("ablation", "variant", "prompt"), p_answer, {"units": "1"})
    ds["accuracy"] = (("ablation", "variant"), correct.mean(-1), {"long_name": "accuracy (top-1)", "units": "1"})
    ds = ds.assign_coords(variant=np.array(variants, dtype=object), ablation=np.array(ABLATIONS, dtype=object),
                          text=(("variant", "prompt"), np.array([_texts(sets[v]) for v in variants], dtype=object)),
                          answer=("prompt", [p.answer for p in sets[discover_on]]))
    params = {"n_prompts": n_prompts, "n_shots": n_shots, "n_steps": n_steps, "seed": seed,
              "source": str(data) if data is not None else "synthetic"}
    ds.attrs = {**_attrs(model, sets[discover_on], "cot_neurons", "accuracy", remote, **params),
                "discover_on": discover_on, "top_k": top_k, "min_frequency": min_frequency}
    return ds
neurons = cot_neurons  # until ported
