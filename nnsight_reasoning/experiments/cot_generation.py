"""Neurons of chain-of-thought arithmetic while the model writes its own chain of thought
(Rai & Yao 2024, the repository's pipeline: ``gsm8k_inference.py``, ``experiments/
neuron_discovery/algorithm_one.py``, ``algorithm_two.py``, ``prompt_gpt.py``,
``experiments/ablation_study/corrupt_inference.py``).

:func:`cot_generation` (``nr.cot_generation``; CLI ``reason-interp neurons --generate``):

1. **Generation.** Every prompt of every prompt type (``nr.tasks.cot_generation``) is
   completed greedily for ``max_new_tokens`` tokens; the answer is parsed from the text
   (:func:`nnsight_reasoning.tasks.cot_generation.parse_answer`) and compared with the gold
   number: ``accuracy`` per prompt type. Steps are read until the model starts a new
   exemplar or a second answer phrase (``n_read``); later steps are not read.
2. **Algorithm one** (``ranking="algorithm_one"``): at every generated step, per layer, the
   ``top_k`` neurons by |a_n| · ‖w_n‖₂ (a_n the activation at the step's last position, w_n
   the output weight's column). ``ranking="direct_contribution"`` ranks by the neuron's
   direct effect on the logit of the token the step generates instead (this toolkit's
   answer-logit ranking, applied at every step).
3. **Candidates**: the neurons in some step's top k on the ``discover_on`` prompts the model
   answered correctly (the repository samples 20 correct ones), with ``frequency`` = the
   fraction of those read steps that rank them.
4. **Algorithm two**: each candidate's 20 most promoted tokens (logit lens of w_n through the
   final norm's gain; the repository's softmax(W_U w_n) ranks the same tokens, without the
   gain), then the **concept rule** (``neurons.CONCEPTS``: more than one of the 20 in a
   concept's list, from layer ``concept_min_layer`` up; the repository asks GPT-4 about the
   neurons this rule keeps). ``select="concepts"`` keeps the concept neurons (the paper);
   ``select="frequency"`` keeps the candidates ranked in at least ``min_frequency`` of the
   read steps. Either way the units are ordered by frequency.
5. **Activations**: each unit's activation at every step of every prompt type, and its mean
   over the read steps (the paper compares these across prompt types).
6. **Ablation during generation**, each a fresh generation of every prompt type:
   ``noise`` adds ε ~ N(−1, 1) (the repository's ``normal(-1, 1)``, seeded) times
   ``noise_scale`` (1: the repository's) to every unit's output-weight column; ``zero`` sets
   the units to 0 and ``mean`` to their mean activation on the read steps of the correctly
   answered ``discover_on`` prompts, at every position; ``random`` is ``noise`` on as many
   other neurons of the same layers (the repository's baseline draws 10 from any layers: see
   docs/rai_yao.md), ``random_zero`` those
   neurons zeroed (the baseline of ``zero``).

Departures from the repository, and why, are listed in ``docs/rai_yao.md``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..backend import generation as _bg
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment, named
from ..sites import context_length, dims
from ..tasks.cot_generation import (PROMPT_TYPES, CotGeneration, GenPrompt, parse_answer, parse_zero_shot,
                                    zero_shot_followup)
from .neurons import CONCEPT_NAME, CONCEPT_TOKENS, CONCEPTS, _check_units, describe_units, parse_units, random_control

ABLATIONS = ("noise", "zero", "mean", "random", "random_zero")
SELECT = ("concepts", "frequency")


def _check(prompts: Any, discover_on: str, ranking: str, select: str, ablations: Sequence[str], top_k: int,
           max_new_tokens: int, min_frequency: float, noise_scale: float, n_neurons: int) -> list[str]:
    if discover_on not in PROMPT_TYPES and discover_on not in prompts.prompts:  # (an exemplar file's stem is one)
        raise UsageError(f"unknown prompt type {discover_on!r}; choose from: {', '.join(PROMPT_TYPES)}")
    if discover_on not in prompts.prompts:
        raise UsageError(f"discover_on={discover_on!r} is not among the data's prompt types "
                         f"({', '.join(prompts.prompts)}); generate them with it")
    if ranking not in _bg.RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r}; choose from: {', '.join(_bg.RANKINGS)}")
    if select not in SELECT:
        raise UsageError(f"unknown select {select!r}; choose from: {', '.join(SELECT)}")
    bad = [a for a in ablations if a not in ABLATIONS]
    if bad:
        raise UsageError(f"unknown ablation(s) {bad}; choose from: {', '.join(ABLATIONS)}")
    checked_int("top_k", top_k, 1, n_neurons, bound=f"between 1 and {n_neurons} (the neurons per layer)")
    checked_int("max_new_tokens", max_new_tokens, 1)
    if not 0 < min_frequency <= 1:
        raise UsageError(f"min_frequency must be in (0, 1] (got {min_frequency})")
    if not noise_scale > 0:
        raise UsageError(f"noise_scale must be > 0 (got {noise_scale})")
    return [discover_on] + [v for v in prompts.prompts if v != discover_on]


def _read_steps(tokenizer: Any, tokens: torch.Tensor, style: Any) -> tuple[list[str], np.ndarray]:
    """Each row's text up to its first end token, and the steps read: the tokens before the
    model starts a new exemplar (``style.stop``) or a second answer phrase (the window
    :func:`parse_answer` reads its answer from)."""
    eos = tokenizer.eos_token_id
    texts, n_read = [], np.zeros(len(tokens), np.int64)
    for r, row in enumerate(tokens.tolist()):
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        text = tokenizer.decode(row)
        texts.append(text)
        ends = [text.find(style.stop)] if style.stop.strip() and style.stop in text else []
        first = text.find(style.phrase)
        if first >= 0 and style.phrase in text[first + 1:]:
            ends.append(text.index(style.phrase, first + 1))
        if not ends:
            n_read[r] = len(row)
            continue
        end = min(ends)  # the tokens whose text lies before it
        n_read[r] = max(k for k in range(len(row) + 1) if len(tokenizer.decode(row[:k]).rstrip()) <= end)
    return texts, n_read


def _generate(run: Run, prompts: Sequence[GenPrompt], max_new_tokens: int, **kw: Any) -> list[tuple[list[int], Any]]:
    """Generation in batches of ``run.batch_size`` rows (any lengths: rows are left-padded)."""
    ids = backend.tokenize(run.model, [p.prompt for p in prompts])
    limit = context_length(run.model)
    if limit is not None and max(map(len, ids)) + max_new_tokens > limit:
        raise UsageError(f"the longest prompt ({max(map(len, ids))} tokens) plus max_new_tokens={max_new_tokens} "
                         f"exceeds the model's context of {limit}; lower max_new_tokens or use fewer exemplars")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    chunks = [order[k:k + run.batch_size] for k in range(0, len(order), run.batch_size)]
    return [(chunk, run.call(_bg.generate, [ids[i] for i in chunk], max_new_tokens, **kw)) for chunk in chunks]


def _units_found(run: Run, top: np.ndarray, n_read: np.ndarray, correct: np.ndarray, select: str,
                 min_frequency: float, n_tokens: int) -> dict[str, Any]:
    """Candidates, their promoted tokens and concepts, and the units kept (see module doc, 3–4)."""
    model = run.model
    n_layers, n_neurons = dims(model)["n_layers"], dims(model)["n_neurons"]
    counts = np.zeros((n_layers, n_neurons), np.int64)
    rows = np.flatnonzero(correct)
    total = int(n_read[rows].sum())
    for p in rows:
        for layer in range(n_layers):
            np.add.at(counts[layer], top[p, : n_read[p], layer].ravel(), 1)
    if total == 0:
        raise UsageError("the model answered no discover_on prompt correctly (or wrote nothing before its answer), "
                         "so no neuron can be discovered; check the accuracy (nr.cot_generation(..., units=...) "
                         "measures given neurons)")
    freq = counts / total
    cand = [(li, nn) for li, nn in zip(*np.nonzero(counts))]
    cand.sort(key=lambda u: (-freq[u], u))
    desc = describe_units(run, cand, n_tokens)
    keep = [k for k, u in enumerate(cand)
            if (desc.concepts[k] if select == "concepts" else freq[u] >= min_frequency - 1e-12)]
    return {"cand": cand, "freq": np.array([freq[u] for u in cand]), "desc": desc, "keep": keep}


def _sweep_units(run: Run, prompts: Any, **options: Any) -> list[tuple[int, int]]:
    """The units a checkpoint sweep tracks when none are given: those this experiment discovers
    on the sweep's last revision (the harness runs this there), with the sweep's options."""
    options = {k: v for k, v in options.items() if k not in ("units", "ablations", "labeller")}
    ds = _compute(run, prompts, ablations=(), **options)
    return list(zip(ds["unit_layer"].values.tolist(), ds["unit_neuron"].values.tolist()))


@experiment("cot_generation", batch_size=16, fixed_in_sweeps=("units", _sweep_units))
def cot_generation(
    run: Run,
    prompts: CotGeneration,
    *,
    discover_on: str = "cot",
    max_new_tokens: int = 48,
    ranking: str = "algorithm_one",
    top_k: int = 20,
    select: str = "concepts",
    min_frequency: float = 0.1,
    ablations: Sequence[str] = ABLATIONS,
    units: Sequence[Any] | None = None,
    n_tokens: int = 8,
    labeller: Callable[[list[str]], str] | None = None,
    noise_scale: float = 1.0,
    seed: int = 0,
) -> xr.Dataset:
    """Generate chain-of-thought answers per prompt type; find, describe, measure and ablate
    the neurons active while the model reasons (see the module doc for each step).

    ``prompts``: ``nr.tasks.cot_generation(n_prompts, variants, style=, prompts_dir=, data=)``.
    ``units``: measure and ablate these neurons ((layer, neuron) pairs or names like "L3N488")
    instead of discovering them. ``seed``: the noise and the random baseline's neurons;
    ``noise_scale``: the noise's multiplier (1: the repository's N(−1, 1), which is large
    against a small model's output weights: on the embedded model it breaks every generation,
    random neurons included).
    ``labeller``: a function of a unit's promoted tokens returning a label (e.g. one that asks
    an LLM with your key); only its result is stored. A checkpoint sweep (``revisions``)
    measures fixed units on every checkpoint: ``units``, or else those discovered on its last
    revision.

    Returns dims ``variant`` (``discover_on`` first), ``prompt``, ``generated_token``,
    ``layer``, ``rank``, ``unit``, ``ablation`` ("none" then ``ablations``), ``concept``,
    ``token_rank``, ``candidate``, with

    - ``generated`` / ``predicted`` / ``correct`` (ablation, variant, prompt): the text
      (up to an end token), the parsed answer (−1: none) and whether it is the gold one;
      ``accuracy`` (ablation, variant);
    - ``n_read`` (variant, prompt): generated tokens before the model starts a new exemplar;
    - ``top_neuron`` / ``top_score`` (variant, prompt, generated_token, layer, rank): the ranking;
    - ``candidate_layer`` / ``candidate_neuron`` / ``candidate_frequency`` /
      ``candidate_concepts`` (candidate): every neuron ranked on a correct ``discover_on`` step;
    - per unit (coords ``unit_layer``, ``unit_neuron`` and the random baseline's
      ``control_layer``, ``control_neuron``): ``frequency``, ``promoted`` / ``promoted_logit``
      (unit, token_rank), ``concept_matches`` (unit, concept), ``concepts``, ``label`` (with
      ``labeller``), ``activation`` (variant, prompt, generated_token, unit; NaN past ``n_read``) and
      ``mean_activation`` (variant, unit).
    """
    model = run.model
    n_neurons = dims(model)["n_neurons"]
    variants = _check(prompts, discover_on, ranking, select, ablations, top_k, max_new_tokens, min_frequency,
                      noise_scale, n_neurons)
    if labeller is not None and not callable(labeller):
        raise UsageError(f"labeller must be a function of the promoted tokens (got {type(labeller).__name__})")
    n_layers = dims(model)["n_layers"]
    fixed = None if units is None else _check_units(parse_units(units), list(range(n_layers)), n_neurons)
    style, n = prompts.style, len(prompts)
    S, V = max_new_tokens, len(variants)
    kinds = ["none", *dict.fromkeys(ablations)]
    generated = np.full((len(kinds), V, n), "", dtype=object)
    answered = np.full((len(kinds), V, n), "", dtype=object)  # the zero-shot second answers
    predicted = np.full((len(kinds), V, n), -1, np.int64)
    n_read = np.zeros((V, n), np.int64)
    top = np.zeros((V, n, S, n_layers, top_k), np.int64)
    score = np.zeros((V, n, S, n_layers, top_k))

    def record(ki: int, vi: int, results: list, **again: Any) -> None:
        """Store one generation of variant ``vi`` under ablation ``ki``; the zero-shot type asks
        its second question with the same ``again`` edits (the repository's two passes)."""
        v = variants[vi]
        for chunk, g in results:
            texts, read = _read_steps(model.tokenizer, g.tokens, style)
            got = [parse_answer(t, style) for t in texts]
            if v == "zero_shot" and style.answer_prompt:
                second = [GenPrompt(zero_shot_followup(prompts.prompts[v][i].prompt, texts[j], style), "", v, i)
                          for j, i in enumerate(chunk)]
                answers = [""] * len(second)
                for sub, g2 in _generate(run, second, S, **again):
                    for j2, k in enumerate(sub):
                        answers[k] = _read_steps(model.tokenizer, g2.tokens[j2:j2 + 1], style)[0][0]
                got = [parse_zero_shot(a) for a in answers]
                answered[ki, vi, chunk] = answers
            for j, i in enumerate(chunk):
                generated[ki, vi, i] = texts[j]
                predicted[ki, vi, i] = -1 if got[j] is None else got[j]
                if ki == 0:
                    n_read[vi, i] = read[j]
                    if g.top_neurons is not None:
                        top[vi, i], score[vi, i] = g.top_neurons[j].numpy(), g.top_scores[j].numpy()

    gold = np.array([_gold(p.answer) for p in prompts.prompts[discover_on]])
    for vi, v in enumerate(run.steps(variants, "generation")):
        record(0, vi, _generate(run, prompts.prompts[v], S, ranking=ranking, top_k=top_k))
    found = None
    if fixed is None:
        found = _units_found(run, top[0], n_read[0], predicted[0, 0] == gold, select, min_frequency, n_tokens)
        pairs = [found["cand"][k] for k in found["keep"]]
        if not pairs:
            rule = ("matched a concept (more than one of its 20 promoted tokens in one list)" if select == "concepts"
                    else f"was ranked in at least {min_frequency} of the read steps")
            raise UsageError(f"no candidate neuron {rule}; try select='frequency' (--select frequency), a lower "
                             f"min_frequency, or give units")
    else:
        pairs = fixed
    # activations of the units at every step, clean (a second pass: the ranking pass does not know them)
    U = len(pairs)
    act = np.full((V, n, S, U), np.nan)
    for vi, v in enumerate(run.steps(variants, "activations")):
        for chunk, g in _generate(run, prompts.prompts[v], S, units=pairs):
            a = g.activations.numpy().astype(np.float64)
            for j, i in enumerate(chunk):
                act[vi, i, : n_read[vi, i]] = a[j, : n_read[vi, i]]
    mean_act = np.nanmean(act, axis=(1, 2)) if np.isfinite(act).any() else np.zeros((V, U))
    on = predicted[0, 0] == gold
    ref = act[0][on] if on.any() else act[0]
    mean_ablate = np.nan_to_num(np.nanmean(ref, axis=(0, 1))) if np.isfinite(ref).any() else np.zeros(U)
    rng = np.random.default_rng(seed)
    d_model = dims(model)["d_model"]
    noise = noise_scale * rng.normal(-1.0, 1.0, size=(U, d_model))  # the repository's normal(-1, 1) per entry
    control = random_control(pairs, n_neurons, rng)
    plans = {"noise": _edits(pairs, noise=noise), "zero": _edits(pairs, values=np.zeros(U)),
             "mean": _edits(pairs, values=mean_ablate), "random": _edits(control, noise=noise),
             "random_zero": _edits(control, values=np.zeros(U))}
    for ki, kind in enumerate(kinds[1:], 1):
        for vi, v in enumerate(run.steps(variants, f"ablation {kind}")):
            record(ki, vi, _generate(run, prompts.prompts[v], S, edits=plans[kind]), edits=plans[kind])
    golds = np.array([[_gold(p.answer) for p in prompts.prompts[v]] for v in variants])
    correct = predicted == golds[None]
    ds = _dataset(prompts, variants, kinds, generated, predicted, correct, n_read, top, score, pairs, control,
                  act, mean_act, mean_ablate, found, fixed, run, n_tokens, labeller,
                  {"discover_on": discover_on, "max_new_tokens": S, "ranking": ranking, "top_k": top_k,
                   "select": select, "min_frequency": min_frequency, "seed": seed, "noise_scale": noise_scale,
                   "noise": "noise_scale * normal(mean=-1, std=1) per output-weight entry, added once"})
    if "zero_shot" in variants and style.answer_prompt:  # the text generated after the second question
        ds["answer_generated"] = (("ablation", "variant", "prompt"), answered,
                                  {"long_name": "zero-shot: the answer generated after the second question"})
    return ds


def _gold(answer: str) -> int:
    try:
        return int(float(answer))
    except ValueError:
        raise UsageError(f"a gold answer must be a number (got {answer!r})") from None


def _edits(pairs: Sequence[tuple[int, int]], *, values: np.ndarray | None = None,
           noise: np.ndarray | None = None) -> list[_bg.Edit]:
    out = []
    for layer in sorted({li for li, _ in pairs}):
        idx = [k for k, (li, _) in enumerate(pairs) if li == layer]
        neurons = torch.tensor([pairs[k][1] for k in idx])
        if values is not None:
            out.append(_bg.Edit(layer, set_neurons=neurons, set_values=torch.tensor(values[idx], dtype=torch.float32)))
        else:
            out.append(_bg.Edit(layer, noise_neurons=neurons, noise=torch.tensor(noise[idx], dtype=torch.float32)))
    return out


def _dataset(prompts, variants, kinds, generated, predicted, correct, n_read, top, score, pairs, control, act,
             mean_act, mean_ablate, found, fixed, run, n_tokens, labeller, attrs) -> xr.Dataset:
    model = run.model
    U = len(pairs)
    if found is not None:
        index = {u: k for k, u in enumerate(found["cand"])}
        ks = [index[u] for u in pairs]
        desc, freq = found["desc"].select(ks), found["freq"][ks]
    else:  # given units: describe them the same way
        desc, freq = describe_units(run, pairs, n_tokens), np.full(U, np.nan)
    matches, concepts, first = desc.matches, desc.concepts, desc.first
    promoted = desc.promoted(model.tokenizer, n_tokens)
    data: dict[str, Any] = {
        "generated": (("ablation", "variant", "prompt"), generated,
                      {"long_name": "generated text (up to an end token)"}),
        "predicted": (("ablation", "variant", "prompt"), predicted, {"long_name": "parsed answer (-1: none)"}),
        "correct": (("ablation", "variant", "prompt"), correct.astype(np.int8),
                    {"long_name": "parsed answer is the gold one"}),
        "accuracy": (("ablation", "variant"), correct.mean(-1),
                     {"long_name": "accuracy (parsed answer is the gold one)", "units": "1"}),
        "n_read": (("variant", "prompt"), n_read, {"long_name": "generated steps before a new exemplar starts"}),
        "top_neuron": (("variant", "prompt", "generated_token", "layer", "rank"), top,
                       {"long_name": "index of the layer's neuron at this rank of the step's ranking"}),
        "top_score": (("variant", "prompt", "generated_token", "layer", "rank"), score,
                      {"long_name": attrs["ranking"].replace("_", " ") + " score"}),
        "frequency": ("unit", freq, {"long_name": "fraction of correct discover_on read steps ranking the unit "
                                                  "(NaN: given units)", "units": "1"}),
        "promoted": (("unit", "token_rank"), promoted, {"long_name": "tokens the output direction promotes most"}),
        "promoted_logit": (("unit", "token_rank"), desc.logits[:, :n_tokens].numpy(),
                           {"long_name": "the promoted token's logit", "units": "logits per unit activation"}),
        "concept_matches": (("unit", "concept"), matches,
                            {"long_name": f"of the top {CONCEPT_TOKENS} promoted tokens, those in the concept's list"}),
        "concepts": ("unit", np.array(concepts, dtype=object),
                     {"long_name": f"concepts with more than one match, from layer {first} up ('' = none)"}),
        "activation": (("variant", "prompt", "generated_token", "unit"), act,
                       {"long_name": "activation at the step's last position (NaN past n_read)"}),
        "mean_activation": (("variant", "unit"), mean_act,
                            {"long_name": "mean activation over the prompts' read steps"}),
        "ablation_value": ("unit", mean_ablate, {"long_name": "the mean ablation's value"}),
    }
    if labeller is not None:
        data["label"] = ("unit", np.array([str(labeller([str(t) for t in row])) for row in promoted], dtype=object),
                         {"long_name": "the labeller's label of the promoted tokens"})
        attrs["labeller"] = named(labeller)
    coords: dict[str, Any] = {
        "variant": ("variant", np.array(variants, dtype=object), {"long_name": "prompt type (discover_on first)"}),
        "ablation": ("ablation", np.array(kinds, dtype=object),
                     {"long_name": "ablation of the units during generation: none, noise, zero, mean, random (the "
                                   "noise on as many other neurons of their layers) or random_zero (those zeroed)"}),
        "prompt": ("prompt", np.arange(len(prompts)),
                   {"long_name": "problem index (the same problem in every prompt type)"}),
        # not "step": a checkpoint sweep's training-step coordinate has that name
        "generated_token": ("generated_token", np.arange(top.shape[2]),
                            {"long_name": "generated token index (0 = the first)"}),
        "layer": np.arange(top.shape[3]),
        "rank": ("rank", np.arange(top.shape[4]), {"long_name": "rank in the layer's top_k at the step (0 = highest "
                                                               "score)"}),
        "unit": ("unit", np.arange(U), {"long_name": "unit: a kept neuron (most frequent first; given units in their "
                                                     "order)"}),
        "token_rank": ("token_rank", np.arange(n_tokens), {"long_name": "rank of the promoted token (0 = most "
                                                                        "promoted)"}),
        "concept": ("concept", np.array(list(CONCEPTS), dtype=object), {"long_name": CONCEPT_NAME}),
        "unit_layer": ("unit", np.array([li for li, _ in pairs], dtype=int), {"long_name": "the unit's layer"}),
        "unit_neuron": ("unit", np.array([nn for _, nn in pairs], dtype=int),
                        {"long_name": "the unit's MLP hidden unit index in its layer"}),
        "control_layer": ("unit", np.array([li for li, _ in control], dtype=int),
                          {"long_name": "layer of the unit's random-baseline neuron (the unit's own)"}),
        "control_neuron": ("unit", np.array([nn for _, nn in control], dtype=int),
                           {"long_name": "MLP hidden unit index of the unit's random-baseline neuron"}),
        "answer": ("prompt", [p.answer for p in prompts.prompts[variants[0]]], {"long_name": "the gold answer"}),
        "text": (("variant", "prompt"), np.array([[p.prompt for p in prompts.prompts[v]] for v in variants],
                                                 dtype=object)),
    }
    if found is not None:
        coords.update({"candidate_layer": ("candidate", np.array([li for li, _ in found["cand"]], dtype=int),
                                           {"long_name": "the candidate neuron's layer"}),
                       "candidate_neuron": ("candidate", np.array([nn for _, nn in found["cand"]], dtype=int),
                                            {"long_name": "the candidate neuron's MLP hidden unit index in its "
                                                          "layer"})})
        data["candidate_frequency"] = ("candidate", found["freq"],
                                       {"long_name": "fraction of correct discover_on read steps ranking the neuron",
                                        "units": "1"})
        data["candidate_concepts"] = ("candidate", np.array(found["desc"].concepts, dtype=object),
                                      {"long_name": f"concepts with more than one match, from layer {first} up "
                                                    "('' = none)"})
    attrs.update({"method": "cot_generation", "metric": "accuracy", "style": prompts.style.name,
                  "concept_min_layer": first})
    if fixed is not None:
        attrs["fixed_units"] = ",".join(f"L{li}N{nn}" for li, nn in fixed)
    return xr.Dataset(data, coords=coords, attrs=attrs)


_compute = cot_generation.__wrapped__  # the compute function, for _sweep_units


# --------------------------------------------------------------------------- summary
def summarize(ds: xr.Dataset, top: int = 12) -> list[Any]:
    """Accuracy per prompt type under each ablation, and the units (most frequent first) with
    their concepts, promoted tokens and mean activation per prompt type."""
    from rich.table import Table

    variants = [str(v) for v in ds["variant"].values]
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} prompts per "
            f"type · {ds.sizes['generated_token']} generated tokens · {ds.sizes['unit']} units "
            f"({'given' if ds.attrs.get('fixed_units') else ds.attrs['select'] + ' of ' + ds.attrs['ranking']} on "
            f"{ds.attrs['discover_on']})")
    acc = Table(title="accuracy of the generated answers (rows: ablation of the units during generation; "
                      "random = the noise on as many other neurons)")
    acc.add_column("ablation")
    for v in variants:
        acc.add_column(v, justify="right")
    for a in ds["ablation"].values:
        acc.add_row(str(a), *[f"{x:.3f}" for x in ds["accuracy"].sel(ablation=a).values])
    units = Table(title="units (most frequent first)")
    for col in ("neuron", "frequency", "concepts", "promotes", *variants):
        units.add_column(col)
    for u in range(min(top, ds.sizes["unit"])):
        v = ds.isel(unit=u)
        units.add_row(f"L{int(v['unit_layer'])}N{int(v['unit_neuron'])}", f"{float(v['frequency']):.3f}",
                      str(v["concepts"].values) or "-", " ".join(map(str, v["promoted"].values[:4])),
                      *[f"{x:.3f}" for x in v["mean_activation"].values])
    return [head, acc, units]
