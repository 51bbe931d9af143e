"""MechanisticProbe (Hou et al. 2023): can the reasoning tree be read off the attention?

Features: for each statement, the attention from the answer position (the last token) to the
statement's tokens, summed over them, per layer and head; each prompt's features are divided
by their maximum, as in the paper. Two k-nearest-neighbour classifiers (scikit-learn,
distance-weighted) are trained on them:

- ``useful``: is the statement useful for the answer (all statements);
- ``step``: at which reasoning step is it used (useful statements only).

Each classifier is trained per layer (that layer's heads, or their mean with
``pool="mean"``, the paper's feature) and on all layers together. Scores are out-of-fold:
prompts (never single statements, which would leak a prompt's other statements) are split
into ``folds`` folds by a seeded permutation; every statement is predicted by a classifier
that never saw its prompt. The baseline model (``step0`` or a random initialisation) runs
the same probe; ``score = (F1 - F1_baseline) / (1 - F1_baseline)`` is the paper's probing score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..experiments.attention import attention
from ..errors import UsageError
from ..models import load_model, model_info
from ..results.io import provenance
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts

PROBES = ("useful", "step")
BASELINES = ("step0", "random", "none")


def probe(
    model: Any,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    baseline: str = "step0",
    n_neighbors: int = 8,
    folds: int = 2,
    pool: str = "heads",
    seed: int = 0,
    batch_size: int = 64,
    remote: bool | str = False,
    progress: bool = True,
    revisions: str | Sequence[str] | None = None,
) -> xr.Dataset:
    """kNN probes for the reasoning tree on attention features, per layer and over all layers.

    Parameters
    ----------
    prompts : labelled prompts (``nr.tasks.kth_smallest(...)``, a labelled data file).
    baseline : "step0" (the model's untrained checkpoint; embedded or Pythia-style revisions),
        "random" (a randomly initialised model of the same config, seeded) or "none".
    n_neighbors, folds : kNN neighbours and cross-validation folds (over prompts).
    pool : "heads" (each head a feature) or "mean" (mean over heads, as in the paper).
    seed : fold split and random baseline; same seed -> same scores.
    revisions : probe each checkpoint (the baseline is computed once).

    Returns
    -------
    xarray.Dataset with dims ``probe`` ("useful", "step") and ``layer``: ``f1`` (macro F1) and
    ``accuracy`` per layer, ``f1_all`` / ``accuracy_all`` on all layers' features,
    ``baseline_*`` the same for the baseline, ``score`` / ``score_all`` the probing score,
    ``majority`` (accuracy of always guessing the most frequent class) and ``n_samples``.
    With ``revisions``, the non-baseline variables gain a leading ``checkpoint`` dim.
    """
    if baseline not in BASELINES:
        raise UsageError(f"baseline must be one of {', '.join(BASELINES)} (got {baseline!r})")
    if baseline == "random" and remote not in (False, "local"):
        raise UsageError("baseline='random' runs locally only; use baseline='step0' or 'none' with --remote")
    if pool not in ("heads", "mean"):
        raise UsageError(f"pool must be heads or mean (got {pool!r})")
    if isinstance(prompts, ReasoningPrompts) and not prompts.labelled:
        raise UsageError("these prompts have no useful/steps labels; the probe needs them (add the columns to the file)")
    plist = list(prompts)
    if len(plist) < 2 * folds or folds < 2:
        raise UsageError(f"need folds >= 2 and at least 2 prompts per fold (got {len(plist)} prompts, {folds} folds)")
    labels = _labels(plist)
    n_steps = len(set(labels["step"][labels["useful"] == 1]))
    if n_steps < 2:
        raise UsageError("the step probe needs useful statements at two or more steps (kth_smallest: k >= 2)")
    opts = dict(n_neighbors=n_neighbors, folds=folds, pool=pool, seed=seed, batch_size=batch_size, remote=remote,
                progress=progress)
    if revisions is not None:
        from ..runner import over_revisions

        ds = over_revisions(lambda m: _probe_model(m, plist, labels, prompts, **opts), model, revisions,
                            progress=progress, remote=remote)
    else:
        if isinstance(model, (str, Path)):
            model = load_model(model)
        ds = _probe_model(model, plist, labels, prompts, **opts)
    if baseline != "none":
        base = _probe_model(_baseline_model(model, baseline, seed), plist, labels, prompts, **opts)
        for v in ("f1", "accuracy", "f1_all", "accuracy_all"):
            ds[f"baseline_{v}"] = base[v].assign_attrs(long_name=f"{base[v].attrs['long_name']}, {baseline} baseline")
        ds["score"] = ((ds.f1 - ds.baseline_f1) / (1 - ds.baseline_f1)).assign_attrs(
            long_name="probing score (F1 - F1_baseline) / (1 - F1_baseline)", units="1")
        ds["score_all"] = ((ds.f1_all - ds.baseline_f1_all) / (1 - ds.baseline_f1_all)).assign_attrs(
            long_name="probing score on all layers", units="1")
    ds.attrs["baseline"] = baseline
    return ds


def _labels(plist: list[ReasoningPrompt]) -> dict[str, np.ndarray]:
    """Per statement (all prompts, in order): prompt index, useful (0/1), step."""
    rows = [(i, int(s.useful), s.step) for i, p in enumerate(plist) for s in p.statements]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return {"prompt": arr[:, 0], "useful": arr[:, 1], "step": arr[:, 2]}


def statement_features(ds: xr.Dataset, plist: list[ReasoningPrompt], pool: str) -> np.ndarray:
    """(statements, layers, features) from an ``attention`` result with patterns "last": each
    statement's summed attention per head (or the head mean), divided by the prompt's max."""
    last = np.nan_to_num(ds["attention"].values[:, :, :, 0, :])  # (prompt, L, H, key)
    owner = ds["statement"].values
    out = []
    for i, p in enumerate(plist):
        f = np.stack([last[i][:, :, owner[i] == s].sum(-1) for s in range(len(p.statements))])  # (S, L, H)
        if pool == "mean":
            f = f.mean(-1, keepdims=True)
        out.append(f / max(f.max(), 1e-12))
    return np.concatenate(out)


def fold_of_prompt(n_prompts: int, folds: int, seed: int) -> np.ndarray:
    """Fold index per prompt: a seeded permutation dealt round-robin into ``folds`` folds."""
    fold = np.empty(n_prompts, np.int64)
    fold[np.random.default_rng(seed).permutation(n_prompts)] = np.arange(n_prompts) % folds
    return fold


def _probe_model(model, plist, labels, prompts, *, n_neighbors, folds, pool, seed, batch_size, remote, progress):
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier

    att = attention(model, prompts if isinstance(prompts, ReasoningPrompts) else plist, patterns="last",
                    batch_size=batch_size, remote=remote, progress=progress)
    feats = statement_features(att, plist, pool)  # (S, L, F)
    fold = fold_of_prompt(len(plist), folds, seed)[labels["prompt"]]
    n_layers = feats.shape[1]
    f1 = np.zeros((len(PROBES), n_layers + 1))
    acc = np.zeros_like(f1)
    majority, n_samples = np.zeros(len(PROBES)), np.zeros(len(PROBES), np.int64)
    for j, name in enumerate(PROBES):
        keep = np.ones(len(fold), bool) if name == "useful" else labels["useful"] == 1
        y = labels[name][keep]
        majority[j], n_samples[j] = np.bincount(y).max() / len(y), len(y)
        for li in range(n_layers + 1):
            x = feats[keep].reshape(len(y), -1) if li == n_layers else feats[keep][:, li]
            pred = np.empty_like(y)
            for f in range(folds):
                test = fold[keep] == f
                knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, int((~test).sum())), weights="distance")
                pred[test] = knn.fit(x[~test], y[~test]).predict(x[test])
            f1[j, li], acc[j, li] = f1_score(y, pred, average="macro"), accuracy_score(y, pred)
    info = model_info(model)
    task = prompts.task if isinstance(prompts, ReasoningPrompts) else "custom"
    params = prompts.params if isinstance(prompts, ReasoningPrompts) else {}
    attrs = provenance(task=task, task_params=params, model=info.name, model_path=info.path, revision=info.revision,
                       method="mechanistic_probe", metric="f1_macro", seed=seed, remote=remote)
    attrs.update(n_neighbors=n_neighbors, folds=folds, pool=pool, n_prompts=len(plist),
                 **{k: v for k, v in att.attrs.items() if k.startswith("remote_") or k == "n_forward_passes"})
    dims = ("probe", "layer")
    return xr.Dataset(
        {"f1": (dims, f1[:, :-1], {"long_name": "macro F1 (out-of-fold)", "units": "1"}),
         "accuracy": (dims, acc[:, :-1], {"long_name": "accuracy (out-of-fold)", "units": "1"}),
         "f1_all": ("probe", f1[:, -1], {"long_name": "macro F1, all layers' features", "units": "1"}),
         "accuracy_all": ("probe", acc[:, -1], {"long_name": "accuracy, all layers' features", "units": "1"}),
         "majority": ("probe", majority, {"long_name": "accuracy of the majority class", "units": "1"}),
         "n_samples": ("probe", n_samples, {"long_name": "statements classified"})},
        coords={"probe": np.array(PROBES, dtype=object), "layer": att["layer"].values},
        attrs=attrs,
    )


def _baseline_model(model: Any, baseline: str, seed: int) -> Any:
    """The untrained checkpoint of ``model``, or a seeded random initialisation of its config."""
    info = model_info(model) if not isinstance(model, (str, Path, type(None))) else None
    name = info.name if info else (str(model) if model is not None else "embedded")
    if baseline == "step0":
        from ..results.checkpoints import available_revisions

        revs = available_revisions(name)
        if revs is not None and "step0" not in revs:
            raise UsageError(f"{name} has no step0 revision; use baseline='random' (or 'none')")
        return load_model(name, "step0", **(info.load_kwargs if info else {}))
    import torch
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoModelForCausalLM

    m = model if info else load_model(name)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(m.config, attn_implementation="eager").eval()
    return TransformersModel(hf, tokenizer=m.tokenizer)
