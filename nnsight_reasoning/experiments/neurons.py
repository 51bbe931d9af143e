"""Neurons in chain-of-thought arithmetic (Rai & Yao 2024, ACL).

A neuron is a hidden unit of an MLP: its activation a_n is the input of the MLP's output
projection at index n, its output direction w_n that projection's column n.

- :func:`activations` (``neuron_activations``): the ``neuron`` site, dims (prompt, layer,
  neuron, position), streamed in batches; only the requested layers, positions and neurons
  leave the model (``top_k`` keeps the k neurons of each layer with the largest mean
  |activation|, found in a first pass that returns only sums).
- :func:`discover` (``neuron_discovery``): (1) per prompt, every neuron's direct contribution
  to the correct answer token, a_n · (w_n through the final norm, scale frozen) · (W_U[answer]
  − mean W_U), at the last position; its ``top_k`` neurons; (2) the neurons in the top k of
  at least ``min_frequency`` of the prompts; (3) each described by the tokens its output
  direction promotes most (logit lens of w_n); (4) labelled offline by the paper's rule:
  ``concepts`` lists the concepts (:data:`CONCEPTS`, the repository's seven token lists) of
  which more than one of the unit's top 20 promoted tokens is a member, for units from
  :func:`concept_min_layer` up (the repository skips layers 0–5 of 32, then asks GPT-4 about
  the neurons this rule keeps). ``labeller``, a function you pass (for example
  one that asks an LLM with your own key), can name each neuron from those tokens; it is off
  by default, the toolkit never sees a key, and only the returned label is stored (the run
  knows the function by its qualified name only).
- :func:`neurons` (``cot_neurons``, the public ``nr.neurons``): the paper's link between
  neurons and prompt variants. The same problems in every variant (``full``, ``text_only``,
  ``equation_only``, ``no_cot``; data from ``nr.tasks.cot_variants``); neurons discovered on
  one variant (:func:`discover`'s computation, in the same run); their mean activation per
  variant; accuracy per variant with them intact, zeroed, set to their mean, and with as many
  random other neurons of the same layers zeroed.

Checkpoint sweeps (``revisions``) measure fixed neurons on every checkpoint, so results stack
along ``checkpoint``: the ``units`` given, or else those :func:`discover` finds on the last
revision (the trained model), whose development over training is then what the sweep shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import neurons as _bn
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment, named
from ..sites import as_index, check_layers, dims
from ..tasks.cot import VARIANTS, CotPrompt, CotVariants

ABLATIONS = ("none", "zero", "mean", "random")

#: Rai & Yao's seven concepts and their token lists (the repository's
#: ``experiments/neuron_discovery/prompt_gpt.py:16-48``; the rule: ``:78-93``), as data.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "connections": ("first", "originally", "initially", "so", "meaning", "therefore", "then", "next", "hence", "now"),
    "add": ("add", "addition", "+", "sum", "plus"),
    "subtract": ("subtract", "-", "minus", "sub"),
    "multiply": ("mult", "multiply", "product", "times", "*", "x"),
    "division": ("divide", "division", "/", "%", "div"),
    "equals_to": ("=", "total", "equals", "equal", "equivalent"),
    "formula": ("formula", "equation", "calculation", "algorithm", "expression", "computation"),
}
CONCEPT_TOKENS = 20  # promoted tokens the rule reads (the repository's algorithm two: top 20)
CONCEPT_NAME = "Rai & Yao's concept (a list of tokens)"


def concept_matches(tokenizer: Any, promoted_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """(units, concepts) how many of each unit's promoted tokens are in each concept's list: a
    token is decoded alone, stripped and lowercased, and must equal a list entry (the
    repository's ``filter_neurons``; two ids that decode alike count twice)."""
    out = np.zeros((len(promoted_ids), len(CONCEPTS)), np.int64)
    for u, ids in enumerate(promoted_ids):
        words = [tokenizer.decode([int(i)]).strip().lower() for i in ids]
        for c, tokens in enumerate(CONCEPTS.values()):
            out[u, c] = sum(w in tokens for w in words)
    return out


def concept_labels(matches: np.ndarray, layers: Sequence[int], first: int) -> list[str]:
    """Per unit (``matches`` row, its layer) the concepts with more than one match, comma-joined;
    '' for none or for a unit below layer ``first`` (:func:`concept_min_layer`)."""
    return [",".join(c for c, m in zip(CONCEPTS, row) if m > 1) if li >= first else ""
            for row, li in zip(matches, layers)]


@dataclass(frozen=True)
class UnitDescription:
    """Algorithm two and the concept rule for some units (see :func:`describe_units`)."""

    ids: torch.Tensor  # (unit, width) token ids each unit's output direction promotes most, best first
    logits: torch.Tensor  # (unit, width) their logits per unit of activation
    matches: np.ndarray  # (unit, concept) promoted tokens (of the top CONCEPT_TOKENS) in each concept's list
    concepts: list[str]  # per unit: concepts with more than one match ('' below layer ``first``)
    first: int  # the first layer the rule labels

    def select(self, rows: Sequence[int]) -> "UnitDescription":
        """The description of a subset of the units (rows in this one's order)."""
        rows = list(rows)
        return UnitDescription(self.ids[rows], self.logits[rows], self.matches[rows], [self.concepts[r] for r in rows],
                               self.first)

    def promoted(self, tokenizer: Any, n_tokens: int) -> np.ndarray:
        """(unit, n_tokens) the top promoted tokens as strings."""
        out = np.empty((len(self.concepts), n_tokens), dtype=object)
        for u, row in enumerate(self.ids[:, :n_tokens].tolist()):
            out[u] = tokenizer.convert_ids_to_tokens(row)
        return out


def describe_units(run: Run, units: Sequence[tuple[int, int]], n_tokens: int) -> UnitDescription:
    """Each (layer, neuron) unit described as Rai & Yao describe a neuron: the tokens its output
    direction promotes through the final norm and unembedding (at least ``n_tokens``; the rule
    reads the top ``CONCEPT_TOKENS``), their concept matches, and the concepts from layer
    :func:`concept_min_layer` up. One lens pass; none for no units."""
    model = run.model
    first = concept_min_layer(dims(model)["n_layers"])
    width = max(n_tokens, CONCEPT_TOKENS)
    if not units:
        return UnitDescription(torch.zeros((0, width), dtype=torch.long), torch.zeros((0, width)),
                               np.zeros((0, len(CONCEPTS)), np.int64), [], first)
    layers = [li for li, _ in units]
    ids, logits = run.call(_bn.neuron_logit_lens, layers, [nn for _, nn in units], width)
    matches = concept_matches(model.tokenizer, ids[:, :CONCEPT_TOKENS].tolist())
    return UnitDescription(ids, logits, matches, concept_labels(matches, layers, first), first)


def random_control(pairs: Sequence[tuple[int, int]], n_neurons: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The random baseline: for each unit another neuron of its layer, none drawn twice."""
    taken, control = set(pairs), []
    for li, _ in pairs:
        pick = int(rng.choice([c for c in range(n_neurons) if (li, c) not in taken]))
        taken.add((li, pick))
        control.append((li, pick))
    return control


def concept_min_layer(n_layers: int) -> int:
    """The first layer whose neurons the concept rule labels: the repository skips layers 0–5 of
    Llama-2-7B's 32; the same fraction of this model's layers."""
    return int(round(6 * n_layers / 32))


# --------------------------------------------------------------------------- helpers
def _texts(prompts: Sequence[Any]) -> list[str]:
    return [p if isinstance(p, str) else p.prompt for p in prompts]


def _n_neurons(model: Any) -> int:
    return dims(model)["n_neurons"]


def parse_units(units: Sequence[Any]) -> list[tuple[int, int]]:
    """Neurons as (layer, neuron) pairs, from pairs or from names as results print them ("L3N488")."""
    import re

    out = []
    for u in units:
        if isinstance(u, str):
            m = re.fullmatch(r"\s*L?(\d+)\s*[N:/]\s*(\d+)\s*", u, re.IGNORECASE)
            if m is None:
                raise UsageError(f"a unit is a neuron named like L3N488 (layer 3, neuron 488); got {u!r}")
            out.append((int(m.group(1)), int(m.group(2))))
        else:
            try:
                pair = [as_index(x) for x in u]
            except TypeError:  # not a pair at all
                pair = []
            if len(pair) != 2 or None in pair:  # integers, not floats or bools (int() would take 1.7 and True)
                raise UsageError(f"a unit is a (layer, neuron) pair or a name like L3N488; got {u!r}")
            out.append((pair[0], pair[1]))
    if len(set(out)) != len(out):
        raise UsageError(f"units lists a neuron twice: {[f'L{a}N{b}' for a, b in out]}")
    return out


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    return check_layers(layers, dims(model)["n_layers"])


# --------------------------------------------------------------------------- activations
@experiment("neuron_activations", batch_size=64)
def activations(
    run: Run,
    prompts: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    positions: str = "last",
    top_k: int | None = None,
) -> xr.Dataset:
    """MLP neuron activations, dims (prompt, layer, neuron, position).

    ``prompts``: strings or objects with ``.prompt`` (e.g. ``nr.tasks.cot_variants(...).variant
    ("full")``). ``positions``: "last" or "all" (NaN past a prompt's end). ``top_k``: keep only
    the k neurons per layer with the largest mean |activation| over the prompts and kept
    positions; ``neuron`` then counts 0..k−1 and the coordinate ``neuron_id`` (layer, neuron)
    names them. Without it all neurons are kept.
    """
    model = run.model
    if positions not in ("last", "all"):
        raise UsageError(f"positions must be last or all (got {positions!r})")
    layer_list = _layers(model, layers)
    texts = _texts(prompts)
    if not texts:
        raise UsageError("no prompts given")
    n_all = _n_neurons(model)
    if top_k is not None and run.in_sweep:
        raise UsageError("top_k picks other neurons per checkpoint, so a sweep cannot stack them; sweep all neurons "
                         "of a few layers (layers=...) instead")
    if top_k is not None and not 1 <= top_k <= n_all:
        raise UsageError(f"top_k must be between 1 and {n_all} (the neurons per layer; got {top_k})")
    ids = backend.tokenize(model, texts)
    chunks = run.batches([len(x) for x in ids])
    last = positions == "last"
    select = None
    if top_k is not None:
        total = torch.zeros(len(layer_list), n_all)
        for chunk in run.steps(chunks, "neuron means"):
            total += run.call(_bn.neuron_activations, torch.tensor([ids[i] for i in chunk]), layer_list,
                              last_only=last, abs_sum=True)
        select = [row for row in total.topk(top_k, -1).indices.sort(-1).values]
    k = n_all if select is None else top_k
    t_max = 1 if last else max(map(len, ids))
    out = np.full((len(ids), len(layer_list), k, t_max), np.nan, dtype=np.float32)
    for chunk in run.steps(chunks, "neurons"):
        a = run.call(_bn.neuron_activations, torch.tensor([ids[i] for i in chunk]), layer_list, last_only=last,
                     select=select).numpy()  # (b, L, T', k)
        out[chunk, :, :, : a.shape[2]] = a.transpose(0, 1, 3, 2)
    coords: dict[str, Any] = {"prompt": ("prompt", np.arange(len(ids)), {"long_name": "prompt index"}),
                              "layer": np.array(layer_list),
                              "neuron": ("neuron", np.arange(k), {"long_name": "MLP hidden unit index in its layer"
                                                                 if select is None else "slot among its layer's kept "
                                                                 "neurons (neuron_id names it)"}),
                              "position": ("position", np.array([-1] if last else range(t_max)),
                                           {"long_name": "0-based token index (−1: each prompt's last token)"}),
                              "text": ("prompt", texts), "n_tokens": ("prompt", np.array([len(x) for x in ids]))}
    if select is not None:
        coords["neuron_id"] = (("layer", "neuron"), torch.stack(select).numpy(),
                               {"long_name": "MLP hidden unit index in its layer"})
    return xr.Dataset({"activation": (("prompt", "layer", "neuron", "position"), out,
                                      {"long_name": "input of the MLP output projection"})}, coords=coords,
                      attrs={"method": "neuron_activations", "metric": "activation", "positions": positions,
                             "top_k": -1 if top_k is None else top_k})


# --------------------------------------------------------------------------- discovery
def _check_discovery(top_k: int, min_frequency: float, n_tokens: int) -> None:
    if not 0 < min_frequency <= 1:
        raise UsageError(f"min_frequency must be in (0, 1] (got {min_frequency})")
    checked_int("top_k", top_k, 1)
    checked_int("n_tokens", n_tokens, 1)


def _check_units(units: list[tuple[int, int]], layer_list: list[int], n_neurons: int) -> list[tuple[int, int]]:
    if not units:
        raise UsageError("units is empty; give at least one (layer, neuron), or None to discover them")
    for li, nn in units:
        if li not in layer_list:
            raise UsageError(f"unit L{li}N{nn}: layer {li} is not among the layers searched ({layer_list})")
        if not 0 <= nn < n_neurons:
            raise UsageError(f"unit L{li}N{nn}: neuron {nn} is out of range (layers have {n_neurons} neurons)")
    return units


def _contributions(run: Run, prompts: Sequence[Any], layer_list: list[int]) -> np.ndarray:
    """(prompt, layer, neuron): each neuron's direct contribution to the prompt's answer logit."""
    model = run.model
    ids, answers, _ = backend.scored_prompts(model, _texts(prompts), [p.answer for p in prompts])
    out = np.zeros((len(ids), len(layer_list), _n_neurons(model)))
    for chunk in run.steps(run.batches([len(x) for x in ids]), "contributions"):
        out[chunk] = run.call(_bn.neuron_contributions, torch.tensor([ids[i] for i in chunk]),
                              torch.tensor([answers[i] for i in chunk]), layer_list).numpy()
    return out


def _discover(run: Run, prompts: Sequence[Any], layers: Sequence[int] | None, top_k: int, min_frequency: float,
              n_tokens: int, labeller: Callable[[list[str]], str] | None,
              units: Sequence[Any] | None = None) -> xr.Dataset:
    """The discovery computation (see :func:`discover`), shared with :func:`neurons`."""
    model = run.model
    _check_discovery(top_k, min_frequency, n_tokens)
    if labeller is not None and not callable(labeller):
        raise UsageError(f"labeller must be a function of the promoted tokens (got {type(labeller).__name__})")
    layer_list = _layers(model, layers)
    fixed = None if units is None else _check_units(parse_units(units), layer_list, _n_neurons(model))
    prompts = list(prompts)
    if not prompts:
        raise UsageError("no prompts given")
    if not 1 <= top_k <= len(layer_list) * _n_neurons(model):  # before any pass
        raise UsageError(f"top_k must be between 1 and {len(layer_list) * _n_neurons(model)} (got {top_k})")
    contrib = _contributions(run, prompts, layer_list)  # (n, L, N)
    n, n_layers, n_neurons = contrib.shape
    flat = contrib.reshape(n, -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
    # count, then divide: summing 1/n a hundred times gives 1.0000000000000007
    freq = np.bincount(top.ravel(), minlength=flat.shape[1]) / n
    mean = flat.mean(0)
    if fixed is None:
        found = [u for u in np.lexsort((-mean, -freq)) if freq[u] >= min_frequency - 1e-12]
    else:  # the given neurons, in the given order
        found = [layer_list.index(li) * n_neurons + nn for li, nn in fixed]
    unit_layer = [layer_list[u // n_neurons] for u in found]
    unit_neuron = [int(u % n_neurons) for u in found]
    desc = describe_units(run, list(zip(unit_layer, unit_neuron)), n_tokens)
    promoted, first = desc.promoted(model.tokenizer, n_tokens), desc.first
    concept = np.array(desc.concepts, dtype=object)
    labels = {} if labeller is None else {"label": ("unit", np.array([str(labeller([str(t) for t in row]))
                                                                      for row in promoted], dtype=object))}
    attrs: dict[str, Any] = {"method": "neuron_discovery", "metric": "direct_logit_contribution", "top_k": top_k,
                             "min_frequency": min_frequency, "n_candidates": int(flat.shape[1]),
                             "concept_min_layer": first}
    if labeller is not None:
        attrs["labeller"] = named(labeller)
    if fixed is not None:
        attrs["fixed_units"] = ",".join(f"L{li}N{nn}" for li, nn in fixed)
    return xr.Dataset(
        {"frequency": ("unit", freq[found], {"long_name": f"fraction of prompts with the neuron in their top {top_k}",
                                             "units": "1"}),
         "mean_contribution": ("unit", mean[found], {"long_name": "mean direct contribution to the answer logit",
                                                     "units": "logits"}),
         "contribution": (("prompt", "unit"), flat[:, found], {"long_name": "direct contribution to the answer logit",
                                                               "units": "logits"}),
         "promoted": (("unit", "rank"), promoted, {"long_name": "tokens the output direction promotes most"}),
         "promoted_logit": (("unit", "rank"), desc.logits[:, :n_tokens].numpy(),
                            {"long_name": "the promoted token's logit", "units": "logits per unit activation"}),
         "concept_matches": (("unit", "concept"), desc.matches,
                             {"long_name": f"of the top {CONCEPT_TOKENS} promoted tokens, those in the concept's list"}),
         "concepts": ("unit", concept, {"long_name": "concepts with more than one match, from layer "
                                                    f"{first} up (Rai & Yao's rule; '' = none)"}), **labels},
        coords={"concept": ("concept", np.array(list(CONCEPTS), dtype=object), {"long_name": CONCEPT_NAME}),
                "unit": ("unit", np.arange(len(found)),
                         {"long_name": "neuron (most recurrent first; given units in their order)"}),
                "layer": ("unit", np.array(unit_layer, dtype=int), {"long_name": "the unit's layer"}),
                "neuron": ("unit", np.array(unit_neuron, dtype=int),
                           {"long_name": "the unit's MLP hidden unit index in its layer"}),
                "rank": ("rank", np.arange(n_tokens), {"long_name": "rank of the promoted token (0 = most promoted)"}),
                "prompt": ("prompt", np.arange(n), {"long_name": "prompt index"}),
                "text": ("prompt", _texts(prompts))},
        attrs=attrs)


def _discovered_units(run: Run, prompts: Any, *, layers: Sequence[int] | None = None, top_k: int = 20,
                      min_frequency: float = 0.25, discover_on: str | None = None, **_: Any) -> list[tuple[int, int]]:
    """The neurons a checkpoint sweep tracks when none are given: those discovery finds on the
    run's model (the harness runs this on the sweep's last revision) with the sweep's prompts
    (for ``neurons``, its ``discover_on`` variant), ``top_k`` and ``min_frequency``."""
    if discover_on is not None:
        sets, _ = _by_variant(prompts)
        if discover_on not in sets:
            raise UsageError(f"discover_on={discover_on!r} is not among the data's variants ({', '.join(sets)}); "
                             f"generate them with it")
        prompts, layers = sets[discover_on], None
    found = _discover(run, prompts, layers, top_k, min_frequency, 1, None, None)
    units = list(zip(found["layer"].values.tolist(), found["neuron"].values.tolist()))
    if not units:
        raise UsageError(f"no neuron is in the top {top_k} of at least {min_frequency} of the prompts"
                         f"{f' ({discover_on})' if discover_on else ''} on the sweep's last revision, where a sweep "
                         f"discovers the neurons it tracks; lower min_frequency or pass units")
    return units


@experiment("neuron_discovery", batch_size=64, fixed_in_sweeps=("units", _discovered_units))
def discover(
    run: Run,
    prompts: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 20,
    min_frequency: float = 0.25,
    n_tokens: int = 8,
    labeller: Callable[[list[str]], str] | None = None,
    units: Sequence[Any] | None = None,
) -> xr.Dataset:
    """Neurons that recur among each prompt's ``top_k`` contributors to its answer (see module doc).

    Returns dims ``unit`` (the discovered neurons, most frequent first; coords ``layer``,
    ``neuron``) with ``frequency`` (fraction of prompts with the unit in their top k),
    ``mean_contribution`` (logits, over all prompts), ``contribution`` (prompt, unit), and
    ``promoted`` / ``promoted_logit`` (unit, rank): the ``n_tokens`` tokens its output
    direction raises most; ``concept_matches`` (unit, concept) and ``concepts`` (unit): the paper's
    offline concept rule (module doc; comma-separated names, '' for none); with ``labeller``, ``label`` (unit): ``labeller(promoted
    tokens)``.
    ``prompts`` need ``.prompt`` and ``.answer`` (one token), e.g.
    ``nr.tasks.cot_variants(...).variant("full")``. ``units``: measure these neurons ((layer,
    neuron) pairs or names like "L3N488"), in this order, instead of the recurring ones
    (``min_frequency`` is then unused). A checkpoint sweep (``revisions``) measures fixed
    neurons on every checkpoint: ``units``, or else those discovered on its last revision
    (named in ``attrs["units_chosen_on"]``).
    """
    return _discover(run, prompts, layers, top_k, min_frequency, n_tokens, labeller, units)


# --------------------------------------------------------------------------- CoT neurons
@dataclass(frozen=True)
class Units:
    """The discovered neurons as the activation and ablation traces want them: ``pairs`` (layer,
    neuron) per unit; ``layers`` (sorted); ``select``, per layer its units' neurons padded to
    one length; ``where``, each unit's (layer index, slot) in ``select``; ``control``, as many
    other neurons of the same layers (the random baseline)."""

    pairs: list[tuple[int, int]]
    layers: list[int]
    select: list[torch.Tensor]
    where: list[tuple[int, int]]
    control: list[tuple[int, int]]

    def ablation(self, chosen: list[tuple[int, int]], values: np.ndarray) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(layer, neuron indices, values) per layer: what :func:`backend.neurons.ablated_scores` takes."""
        return [(layer, torch.tensor([nn for li, nn in chosen if li == layer]),
                 torch.tensor([values[k] for k, (li, _) in enumerate(chosen) if li == layer]))
                for layer in self.layers]


def _units(found: xr.Dataset, n_neurons: int, seed: int) -> Units:
    pairs = list(zip(found["layer"].values.tolist(), found["neuron"].values.tolist()))
    layers = sorted({li for li, _ in pairs})
    width = max([sum(1 for li, _ in pairs if li == layer) for layer in layers], default=0)
    # per layer the units' neurons, padded to equal length (the activations trace wants a tensor per layer)
    select = [torch.tensor(([n for li, n in pairs if li == layer] * width)[:width]) for layer in layers]
    where = [(layers.index(li), [n for l2, n in pairs if l2 == li].index(n)) for li, n in pairs]
    return Units(pairs, layers, select, where, random_control(pairs, n_neurons, np.random.default_rng(seed)))


def _by_variant(prompts: Any) -> tuple[dict[str, list[CotPrompt]], dict[str, Any]]:
    """Prompts per variant (problem k at index k in each) and the data's params."""
    if isinstance(prompts, CotVariants):
        return {v: list(ps) for v, ps in prompts.prompts.items()}, dict(prompts.params)
    items = list(prompts)  # CotPrompt objects (the harness checked): of several variants
    if not items:
        raise UsageError("no prompts given: nr.tasks.cot_variants(n_prompts, variants, ...)")
    sets: dict[str, list[CotPrompt]] = {}
    for p in items:
        sets.setdefault(p.variant, []).append(p)
    return sets, dict(getattr(prompts, "params", {}) or {})


@experiment("cot_neurons", batch_size=64, fixed_in_sweeps=("units", _discovered_units))
def neurons(
    run: Run,
    prompts: CotVariants | Sequence[CotPrompt],
    *,
    discover_on: str = "full",
    top_k: int = 20,
    min_frequency: float = 0.25,
    labeller: Callable[[list[str]], str] | None = None,
    units: Sequence[Any] | None = None,
) -> xr.Dataset:
    """Discover arithmetic neurons on one prompt variant, then measure them on every variant.

    ``prompts``: ``nr.tasks.cot_variants(n_prompts, variants, n_shots=, n_steps=, seed=,
    data=)``, the same problems in each variant (synthetic, or from a GSM8K JSON Lines file);
    ``discover_on`` must be one of its variants. Returns the :func:`discover` variables (dim
    ``unit``) plus ``activation`` (variant, unit): mean activation at the last position (the
    MLP's hidden activation after its nonlinearity, in the model's units);
    ``correct`` and ``p_answer`` (ablation, variant, prompt) and ``accuracy`` (ablation,
    variant), ablation ``none``, ``zero`` (the units set to 0 at every position), ``mean`` (set
    to their mean activation at the last position over the ``discover_on`` prompts) or
    ``random`` (as many other neurons of the same layers set to 0). The ``variant`` dim starts
    with ``discover_on``. ``units``: measure these neurons instead of discovering them (see
    :func:`discover`). A checkpoint sweep (``revisions``) tracks fixed neurons: ``units``, or
    else those discovered on its last revision (the trained model; ``attrs["fixed_units"]``
    and ``attrs["units_chosen_on"]`` name them).
    """
    model = run.model
    sets, params = _by_variant(prompts)
    if discover_on not in VARIANTS:
        raise UsageError(f"unknown variant {discover_on!r}; choose from: {', '.join(VARIANTS)}")
    if discover_on not in sets:
        raise UsageError(f"discover_on={discover_on!r} is not among the data's variants ({', '.join(sets)}); "
                         f"generate them with it")
    variants = [discover_on] + [v for v in sets if v != discover_on]
    n = len(sets[discover_on])
    if any(len(sets[v]) != n for v in variants):
        counts = ", ".join(f"{v}: {len(sets[v])}" for v in variants)
        raise UsageError(f"every variant needs the same problems (got {counts} prompts)")
    _check_discovery(top_k, min_frequency, 8)
    tokens = {v: backend.scored_prompts(model, _texts(sets[v]), [p.answer for p in sets[v]])[:2] for v in variants}
    found = _discover(run, sets[discover_on], None, top_k, min_frequency, 8, labeller, units)
    picked = _units(found, _n_neurons(model), int(params.get("seed", 0)))
    act = np.zeros((len(variants), len(picked.pairs)))
    correct = np.zeros((len(ABLATIONS), len(variants), n), dtype=np.int8)
    p_answer = np.zeros((len(ABLATIONS), len(variants), n))
    if picked.pairs:  # activations first: mean ablation uses the discovery variant's means
        for vi, v in enumerate(variants):
            ids = tokens[v][0]
            for chunk in run.steps(run.batches([len(x) for x in ids]), f"activations {v}"):
                a = run.call(_bn.neuron_activations, torch.tensor([ids[i] for i in chunk]), picked.layers,
                             select=picked.select).numpy()[:, :, 0]
                act[vi] += np.stack([a[:, li, k] for li, k in picked.where], 1).sum(0) / n
    plans = {"zero": picked.ablation(picked.pairs, np.zeros(len(picked.pairs))),
             "mean": picked.ablation(picked.pairs, act[0]),  # variants[0] is discover_on
             "random": picked.ablation(picked.control, np.zeros(len(picked.pairs)))}
    for vi, v in enumerate(variants):
        ids, answers = tokens[v]
        for chunk in run.steps(run.batches([len(x) for x in ids]), f"ablations {v}"):
            rows, ans = torch.tensor([ids[i] for i in chunk]), torch.tensor([[answers[i]] for i in chunk])
            clean = run.call(backend.answer_scores, rows, ans)
            for ai, ablation in enumerate(ABLATIONS):
                s = clean if ablation == "none" or not picked.pairs else run.call(_bn.ablated_scores, rows, ans,
                                                                                  plans[ablation])
                correct[ai, vi, chunk] = (s.rank == 0).numpy()
                p_answer[ai, vi, chunk] = np.exp(s.log_probs[:, 0].numpy())
    ds = found.drop_vars("text")
    ds["activation"] = (("variant", "unit"), act, {"long_name": "mean activation at the last position"})
    ds["correct"] = (("ablation", "variant", "prompt"), correct, {"long_name": "answer is the top-1 token"})
    ds["p_answer"] = (("ablation", "variant", "prompt"), p_answer, {"long_name": "P(answer | prompt)", "units": "1"})
    ds["accuracy"] = (("ablation", "variant"), correct.mean(-1), {"long_name": "accuracy (top-1)", "units": "1"})
    ds = ds.assign_coords(variant=("variant", np.array(variants, dtype=object),
                                   {"long_name": "prompt variant (discover_on first)"}),
                          ablation=("ablation", np.array(ABLATIONS, dtype=object),
                                    {"long_name": "ablation of the units: none, zero, mean (their mean last-position "
                                                  "activation on discover_on) or random (as many other neurons of "
                                                  "their layers zeroed)"}),
                          text=(("variant", "prompt"), np.array([_texts(sets[v]) for v in variants], dtype=object)),
                          answer=("prompt", [p.answer for p in sets[discover_on]]))
    ds["prompt"].attrs["long_name"] = "problem index (the same problem in every variant)"
    attrs = {"method": "cot_neurons", "metric": "accuracy", "discover_on": discover_on, "top_k": top_k,
             "min_frequency": min_frequency}
    attrs.update({k: found.attrs[k] for k in ("labeller", "fixed_units", "concept_min_layer") if k in found.attrs})
    ds.attrs = attrs
    return ds


# --------------------------------------------------------------------------- summary
def summarize(ds: xr.Dataset, top: int = 12) -> list[Any]:
    """The neurons (most recurrent first: frequency, mean contribution, the tokens they
    promote, mean activation per variant) and accuracy per variant under each ablation; for a
    sweep, these at its last checkpoint and the accuracy intact and zeroed over checkpoints."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    sweep = "checkpoint" in ds.dims
    last = last_checkpoint(ds)
    at = f" at checkpoint {last.attrs['revision']}" if sweep else ""
    tracked = ds.attrs.get("units_chosen_on")  # a sweep of the neurons its last revision has
    given = bool(ds.attrs.get("fixed_units")) and not tracked
    which = "given neurons" if given else "discovered neurons"
    on = f" on {ds.attrs['discover_on']}" if "discover_on" in ds.attrs else ""
    n = ds.sizes["unit"]
    found = f"{n} given neurons, scored{on}" if given else f"{n} neurons discovered{on}"
    if tracked:
        found += f" at {tracked}, measured at every checkpoint"
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} prompts"
            f"{' per variant' if 'variant' in ds.dims else ''} · {found}")
    variants = [str(v) for v in ds["variant"].values] if "variant" in ds.dims else []
    table = Table(title=f"{which}{'' if given else ' (most recurrent first)'}{at}")
    concepts = "concepts" in ds.data_vars
    for col in ("neuron", "frequency", "mean contribution", "promotes", *variants, *(["concepts"] if concepts else []),
                *(["label"] if "label" in ds.data_vars else [])):
        table.add_column(col)
    for u in range(min(top, ds.sizes["unit"])):
        v = last.isel(unit=u)
        table.add_row(f"L{int(v['layer'])}N{int(v['neuron'])}", f"{float(v['frequency']):.2f}",
                      f"{float(v['mean_contribution']):+.2f}", " ".join(map(str, v["promoted"].values[:4])),
                      *([f"{x:.2f}" for x in v["activation"].values] if variants else []),
                      *([str(v["concepts"].values) or "-"] if concepts else []),
                      *([str(v["label"].values)] if "label" in ds.data_vars else []))
    items: list[Any] = [head, table]
    if "accuracy" not in ds.data_vars:
        return items
    acc = Table(title=f"accuracy per variant{at} (rows: ablation of the {which}; random = as many other neurons)")
    acc.add_column("ablation")
    for name in variants:
        acc.add_column(name, justify="right")
    for a in ds["ablation"].values:
        acc.add_row(str(a), *[f"{x:.3f}" for x in last["accuracy"].sel(ablation=a).values])
    items.append(acc)
    if sweep:
        curve = Table(title=f"accuracy over checkpoints: intact → the {which} zeroed")
        curve.add_column("checkpoint")
        for name in variants:
            curve.add_column(name, justify="right")
        for c in ds["checkpoint"].values:
            r = ds["accuracy"].sel(checkpoint=c)
            curve.add_row(str(c), *[f"{float(r.sel(ablation='none', variant=v)):.3f} → "
                                    f"{float(r.sel(ablation='zero', variant=v)):.3f}" for v in variants])
        items.append(curve)
    return items
