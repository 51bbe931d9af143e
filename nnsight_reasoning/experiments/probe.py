"""MechanisticProbe (Hou et al. 2023): can the reasoning tree be read off the attention?

Features: for each statement, the attention from the answer position (the last token) to the
statement's tokens, summed over them, per layer and head; each prompt's features are divided
by their maximum, as in the paper. Two k-nearest-neighbour classifiers (scikit-learn,
distance-weighted) are trained on them:

- ``useful``: is the statement useful for the answer (all statements);
- ``step``: at which reasoning step is it used (useful statements only).

Each classifier is trained per layer and on all layers together. At layer l it reads, as the
paper's layer-wise probe does (``src/stask/probe.py:118``, ``a[:, :(l+1)]``), the features of
layers 0 … l (``cumulative=True``, the default), or those of layer l alone
(``cumulative=False``). A layer's features are the mean over its heads (``pool="mean"``, the
paper's, default) or one per head (``pool="heads"``). The kNN is distance-weighted with
k = 8, Euclidean as the repository's k-th smallest probe or Manhattan (``distance``) as its
ProofWriter/ARC probe. Scores are out-of-fold:
prompts (never single statements, which would leak a prompt's other statements) are split
into ``folds`` folds by a seeded permutation; every statement is predicted by a classifier
that never saw its prompt. The baseline model (``step0`` or a random initialisation) runs
the same probe; ``score = (F1 - F1_baseline) / (1 - F1_baseline)`` is the paper's probing score.
Prompts that carry a ``group`` (the repository's ProofWriter sets of m statements,
``nr.tasks.load_reasoning(..., by_size=...)``) are probed group by group, as the repository
runs one probe per m (``src/rtask/proofwriter_probe.py:119-123``): one pass reads every
prompt's features, then each group's classifiers see only that group's prompts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .. import remote as _remote
from ..errors import UsageError, checked_int
from ..models import load_model, model_info
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts
from . import attention as _attention

PROBES = ("useful", "step")
PROBE_NAME = "classifier: useful (is the statement useful) or step (its reasoning step; useful statements only)"
DISTANCES = ("euclidean", "manhattan")
QUERIES = ("last", "question_max", "question_mean")
STEP_F1 = ("classes", "repository")


@dataclass(frozen=True)
class Features:
    """How a statement's features are read from the attention (:func:`statement_features`)."""

    pool: str = "mean"
    query: str = "last"
    statement_pool: str = "sum"
    normalise: bool = True

BASELINES = ("auto", "step0", "random", "none")
BASELINE_VARIABLES = ("baseline_f1", "baseline_accuracy", "baseline_f1_all", "baseline_accuracy_all")


@experiment("mechanistic_probe", batch_size=64, shared=BASELINE_VARIABLES + ("group_prompts",))
def probe(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    baseline: str = "auto",
    n_neighbors: int = 8,
    folds: int = 2,
    pool: str = "mean",
    cumulative: bool = True,
    distance: str = "euclidean",
    query: str = "last",
    statement_pool: str = "sum",
    normalise: bool = True,
    step_f1: str = "classes",
    drop_layers: Sequence[int] = (),
    seed: int = 0,
) -> xr.Dataset:
    """kNN probes for the reasoning tree on attention features, per layer and over all layers.

    Parameters
    ----------
    model : from :func:`nnsight_reasoning.load_model`, or a name/directory to load (eager attention).
    prompts : labelled prompts (``nr.tasks.kth_smallest(...)``, a labelled data file).
    baseline : "auto" (the default: an untrained model, as the paper's "scratch" baseline is:
        ``step0`` where that is an untrained checkpoint, the embedded model's and Pythia's, and
        "random" otherwise: a model without revisions such as GPT-2, and a directory of
        :func:`nnsight_reasoning.finetune`, whose step0 is the model before fine-tuning), "step0"
        (the model's step0 revision, whatever it is: on a fine-tuned directory the score is then
        what fine-tuning added), "random" (a randomly initialised model of the same config,
        seeded) or "none". ``attrs["baseline"]`` records the one used.
    n_neighbors, folds : kNN neighbours and cross-validation folds (over prompts); the
        repository uses 8 and 2 (k-th smallest) or 5 (ProofWriter, ARC). A fold with fewer
        training statements than ``n_neighbors`` uses them all (``attrs["n_neighbors_used"]``
        then records the smallest k used).
    pool : "mean" (mean over a layer's heads, as in the paper) or "heads" (each head a feature).
    cumulative : the probe at layer l reads layers 0 … l (True, the paper's) or layer l alone.
    distance : the kNN's, "euclidean" (the repository's k-th smallest probe) or "manhattan"
        (its ProofWriter and ARC probes).
    query : whose attention: "last" (the answer position, the repository's k-th smallest
        probe), "question_max" or "question_mean" (every token of the question, after the last
        statement, reduced by max or mean: its ProofWriter/ARC probe uses max in-context and mean
        for its untrained baseline).
    statement_pool : a statement's tokens "sum" (one token per number in the k-th smallest
        probe) or "mean" (its ProofWriter/ARC probe).
    normalise : divide each prompt's features by their maximum (the repository's k-th smallest
        probe; its ProofWriter/ARC probe does not).
    step_f1 : how the step probe is scored. "classes": one classifier over the steps, macro F1
        over them. "repository": as the k-th smallest probe scores it (``src/stask/probe.py:46-61,
        81-93``): two labels per useful statement, "useful" (always 1) and "at the prompt's last
        step" (the answer), one kNN over both, F1 averaged over the two labels, which is
        (1 + F1 of the answer label) / 2; ``accuracy`` is then both labels right.
    drop_layers : layers the all-layers probe leaves out of its features (``f1_all``,
        ``score_all``; the per-layer probes are unchanged), as the repository drops LLaMA-7B's
        layers 17, 18, 20-27 and 29-31 (``src/rtask/proofwriter_probe.py:219, 270``); the
        baseline's features drop them too. With ``normalise`` the features are still divided by
        the prompt's maximum over every layer (the repository's pruned features are not normalised).
    seed : fold split and random baseline; same seed -> same scores.

    Returns
    -------
    xarray.Dataset with dims ``probe`` ("useful", "step") and ``layer``: ``f1`` (macro F1) and
    ``accuracy`` per layer, ``f1_all`` / ``accuracy_all`` on all layers' features,
    ``baseline_*`` the same for the baseline, ``score`` / ``score_all`` the probing score,
    ``majority`` (accuracy of always guessing the most frequent class) and ``n_samples``.
    With ``revisions``, every variable but ``baseline_*`` (the same baseline for all
    checkpoints) gains a leading ``checkpoint`` dim. Prompts with a ``group`` add a ``group`` dim
    after it (one probe per group; ``group_prompts`` counts each group's prompts). A probe whose
    labels have one class (in a group: m = 1's steps, m = 2's usefulness; or in all the prompts,
    or a robustness subset) is NaN: there is nothing to classify (scikit-learn would report 1.0).
    """
    how = Features(pool, query, statement_pool, normalise)
    baseline = check_options(run, baseline, how, distance, n_neighbors)
    plist, labels = labelled_prompts(prompts, folds)
    if step_f1 not in STEP_F1:
        raise UsageError(f"step_f1 must be one of {', '.join(STEP_F1)} (got {step_f1!r})")
    read = kept_layers(run, drop_layers)
    knn = dict(labels=labels, n_neighbors=n_neighbors, folds=folds, seed=seed, cumulative=cumulative, distance=distance,
               step_f1=step_f1, all_layers=read)
    layers, feats, base_feats = features(run, prompts, plist, how, baseline, seed)
    scores = grouped_scores(feats, **knn)
    # what a group is: the loader's description (load_reasoning(by_size=...): m statements)
    group_name = prompts.params.get("group", "prompt group") if isinstance(prompts, ReasoningPrompts) else \
        "prompt group"
    ds = _dataset(scores, layers, drop_layers, group_name)
    if base_feats is not None:
        base = _dataset(grouped_scores(base_feats, **knn), layers, drop_layers, group_name)
        for v in ("f1", "accuracy", "f1_all", "accuracy_all"):
            ds[f"baseline_{v}"] = base[v].assign_attrs(long_name=f"{base[v].attrs['long_name']}, {baseline} baseline")
        # NaN where the baseline is perfect (F1_baseline = 1): nothing is left to explain, as robustness does
        ds["score"] = ((ds.f1 - ds.baseline_f1) / (1 - ds.baseline_f1).where(ds.baseline_f1 < 1)).assign_attrs(
            long_name="probing score (F1 - F1_baseline) / (1 - F1_baseline)", units="1")
        ds["score_all"] = ((ds.f1_all - ds.baseline_f1_all) /
                           (1 - ds.baseline_f1_all).where(ds.baseline_f1_all < 1)).assign_attrs(
            long_name="probing score on all layers", units="1")
    ds.attrs = {"method": "mechanistic_probe", "metric": "f1_macro", "seed": seed, "n_neighbors": n_neighbors,
                "folds": folds, "pool": pool, "cumulative": int(cumulative), "distance": distance, "query": query,
                "statement_pool": statement_pool, "normalise": int(normalise), "step_f1": step_f1,
                "n_prompts": len(plist), "baseline": baseline, **dropped_attr(drop_layers),
                # a fold with fewer training statements than n_neighbors uses them all: say so
                **({"n_neighbors_used": fewest} if (fewest := min(s.fewest_neighbors for _, s in scores)) < n_neighbors
                   else {})}
    return ds


def check_options(run: Run, baseline: str, how: Features, distance: str, n_neighbors: int) -> str:
    """Refuse bad probe options before any work (one-line errors); the baseline to use ("auto"
    resolved by :func:`untrained_baseline`)."""
    checked_int("n_neighbors", n_neighbors, 1)
    if baseline not in BASELINES:
        raise UsageError(f"baseline must be one of {', '.join(BASELINES)} (got {baseline!r})")
    auto = baseline == "auto"
    if auto:
        baseline = untrained_baseline(run.model)
    if baseline == "random" and _remote.is_ndif(run.remote):
        why = f" (baseline='auto': {model_info(run.model).name} has no untrained step0 checkpoint)" if auto else ""
        raise UsageError(f"baseline='random' runs locally only{why}; use baseline='step0' or 'none' with --remote")
    if how.pool not in ("heads", "mean"):
        raise UsageError(f"pool must be heads or mean (got {how.pool!r})")
    if distance not in DISTANCES:
        raise UsageError(f"distance must be one of {', '.join(DISTANCES)} (got {distance!r})")
    if how.query not in QUERIES:
        raise UsageError(f"query must be one of {', '.join(QUERIES)} (got {how.query!r})")
    if how.statement_pool not in ("sum", "mean"):
        raise UsageError(f"statement_pool must be sum or mean (got {how.statement_pool!r})")
    return baseline


def kept_layers(run: Run, drop_layers: Sequence[int]) -> np.ndarray:
    """The layers the all-layers probe reads: every layer but ``drop_layers`` (refused unless they
    are distinct layers of the model and leave at least one)."""
    from ..sites import as_index, dims

    n = dims(run.model)["n_layers"]
    drop = [as_index(x) for x in drop_layers]
    if any(x is None or not 0 <= x < n for x in drop) or len(set(drop)) != len(drop) or len(drop) >= n:
        raise UsageError(f"drop_layers must be distinct layers in 0..{n - 1}, leaving at least one "
                         f"(got {drop_layers!r})")
    return np.array([layer for layer in range(n) if layer not in drop])


def all_layers_label(drop_layers: Sequence[int]) -> str:
    """What the all-layers probe reads, for its variables' long names."""
    return "all layers' features" + (f" but layers {dropped_attr(drop_layers)['drop_layers']}" if len(drop_layers)
                                     else "")


def dropped_attr(drop_layers: Sequence[int]) -> dict[str, str]:
    """The result attribute naming the dropped layers ("17,18,20"), none when nothing is dropped."""
    return {"drop_layers": ",".join(str(int(x)) for x in sorted(drop_layers))} if len(drop_layers) else {}


def labelled_prompts(prompts: ReasoningPrompts | Sequence[ReasoningPrompt], folds: int
                     ) -> tuple[list[ReasoningPrompt], "Labels"]:
    """The prompts as a list and their statements' labels; refuses prompts a probe cannot use."""
    if isinstance(prompts, ReasoningPrompts) and not prompts.labelled:
        raise UsageError("these prompts have no useful/steps labels; the probe needs them (add the columns to the file)")
    plist = list(prompts)
    labels = _labels(plist)
    sets = [labels] if labels.group is None else [labels.subset(g) for g in np.unique(labels.group)]
    for sub in sets:
        where = "" if labels.group is None else f" in group {sub.group[0]}"
        if sub.n_prompts < 2 * folds or folds < 2:
            raise UsageError(f"need folds >= 2 and at least 2 prompts per fold{where} (got {sub.n_prompts} prompts, "
                             f"{folds} folds)")
    if not any(len(set(sub.step[sub.useful == 1])) >= 2 for sub in sets):
        raise UsageError("the step probe needs useful statements at two or more steps (kth_smallest: k >= 2)")
    return plist, labels


def features(run: Run, prompts: Any, plist: list[ReasoningPrompt], how: Features, baseline: str, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The layers, and the statements' features on the model and on the baseline (None for
    "none"). The baseline model is loaded first: a missing checkpoint or one NDIF does not
    serve is refused before any work."""
    data = prompts if isinstance(prompts, ReasoningPrompts) else plist
    if how.query != "last":
        owners = [np.asarray(t.statement) for t in _attention.token_statements(run.model, plist)]
        if any(o[-1] >= 0 for o in owners):
            raise UsageError(f"query={how.query!r} reads the question's tokens, after the last statement; these "
                             f"prompts end with a statement (no question): use query='last'")
    base_model = None if baseline == "none" or _is_own_baseline(run.model, baseline) else \
        _baseline_model(run.model, baseline, seed)
    if base_model is not None:
        _remote.preflight(base_model, run.remote)
    layers, rows, owners = statement_rows(run, data, plist, how, "attention")
    feats = statement_features(rows, owners, plist, how)
    if baseline == "none":
        return layers, feats, None
    if base_model is None:
        return layers, feats, feats
    with run.with_model(base_model) as base:  # shares the probe's parts and traffic: resumes and counts with it
        _, rows, owners = statement_rows(base, data, plist, how, f"attention ({baseline} baseline)")
    return layers, feats, statement_features(rows, owners, plist, how)


def statement_rows(run: Run, data: Any, plist: list[ReasoningPrompt], how: Features, label: str
                   ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The layers; per prompt the (L, H, T) attention row the features read (the answer
    position's, or the question's rows reduced by max or mean, reduced in the trace) and each
    token's statement (-1: none)."""
    if how.query == "last":
        att = _attention.measure(run, data, patterns="last", label=label)
        owner = att["statement"].values
        lengths = (att["token"].values != "").sum(1)
        rows = [np.nan_to_num(att["attention"].values[i, :, :, 0, :t]) for i, t in enumerate(lengths)]
        return att["layer"].values, rows, [owner[i, :t] for i, t in enumerate(lengths)]
    import torch

    from .. import backend
    from ..sites import dims

    toks = _attention.token_statements(run.model, plist)
    layers = list(range(dims(run.model)["n_layers"]))
    first = [int(np.flatnonzero(np.asarray(t.statement) >= 0).max()) + 1 for t in toks]
    rows: list[np.ndarray] = [np.empty(0)] * len(plist)
    for chunk in run.steps(run.batches([len(t.ids) for t in toks]), f"{label} ({how.query})"):
        probs = run.call(backend.attention_probs, torch.tensor([toks[i].ids for i in chunk]), layers,
                         question_from=torch.tensor([first[i] for i in chunk]),
                         reduce=how.query.split("_")[1]).double().numpy()
        for b, i in enumerate(chunk):
            rows[i] = probs[b, :, :, 0]
    return np.array(layers), rows, [np.asarray(t.statement) for t in toks]


@dataclass(frozen=True)
class Labels:
    """Per statement (all prompts, in order): its prompt's index, useful (0/1) and step;
    ``n_prompts`` prompts in all; ``group``: per statement its prompt's group (None: ungrouped)."""

    n_prompts: int
    prompt: np.ndarray
    useful: np.ndarray
    step: np.ndarray
    group: np.ndarray | None = None

    def rows(self, group: int) -> np.ndarray:
        """Boolean mask of the statements of ``group``'s prompts."""
        assert self.group is not None
        return self.group == group

    def subset(self, group: int) -> "Labels":
        """The labels of ``group``'s statements, its prompts numbered 0.. in order."""
        keep = self.rows(group)
        owners, prompt = np.unique(self.prompt[keep], return_inverse=True)
        return Labels(len(owners), prompt, self.useful[keep], self.step[keep], self.group[keep])


@dataclass(frozen=True)
class Scores:
    """Out-of-fold scores per probe (rows, :data:`PROBES` order): ``f1`` and ``accuracy`` per
    layer with all layers' features last (probe, layers + 1); ``majority`` (accuracy of the
    most frequent class) and ``n_samples`` (statements classified) per probe; ``fewest_neighbors``:
    the smallest k any fold used (k is capped at a fold's training statements)."""

    f1: np.ndarray
    accuracy: np.ndarray
    majority: np.ndarray
    n_samples: np.ndarray
    fewest_neighbors: int
    n_prompts: int = 0


def _labels(plist: list[ReasoningPrompt]) -> Labels:
    rows = [(i, int(s.useful), s.step) for i, p in enumerate(plist) for s in p.statements]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    groups = [p.group for p in plist]
    if all(g is None for g in groups):
        return Labels(len(plist), arr[:, 0], arr[:, 1], arr[:, 2])
    if any(g is None for g in groups):
        raise UsageError("some prompts have a group and some do not; probe one kind (load_reasoning(by_size=...) "
                         "groups every prompt)")
    return Labels(len(plist), arr[:, 0], arr[:, 1], arr[:, 2], np.asarray(groups, np.int64)[arr[:, 0]])


def grouped_scores(feats: np.ndarray, *, labels: Labels, **knn: Any) -> list[tuple[int | None, "Scores"]]:
    """:func:`knn_scores` on every prompt (group None), or group by group on its prompts alone
    (ascending groups); each group's folds are drawn from its own prompts."""
    if labels.group is None:
        return [(None, knn_scores(feats, labels=labels, **knn))]
    return [(int(g), knn_scores(feats[labels.rows(g)], labels=labels.subset(g), **knn))
            for g in np.unique(labels.group)]


def statement_features(rows: Sequence[np.ndarray], owners: Sequence[np.ndarray], plist: list[ReasoningPrompt],
                       how: Features = Features()) -> np.ndarray:
    """(statements, layers, features) from each prompt's (L, H, T) attention row
    (:func:`statement_rows`) and its tokens' statements: per head, the row's attention to each
    statement's tokens (summed or averaged), then the mean over heads (or each head), divided by
    the prompt's maximum when ``how.normalise``."""
    out = []
    for row, owner, p in zip(rows, owners, plist):
        f = np.stack([row[:, :, owner == s].sum(-1) if how.statement_pool == "sum"
                      else row[:, :, owner == s].mean(-1) for s in range(len(p.statements))])  # (S, L, H)
        if how.pool == "mean":
            f = f.mean(-1, keepdims=True)
        out.append(f / max(f.max(), 1e-12) if how.normalise else f)
    return np.concatenate(out)


def fold_of_prompt(n_prompts: int, folds: int, seed: int) -> np.ndarray:
    """Fold index per prompt: a seeded permutation dealt round-robin into ``folds`` folds."""
    fold = np.empty(n_prompts, np.int64)
    fold[np.random.default_rng(seed).permutation(n_prompts)] = np.arange(n_prompts) % folds
    return fold


def knn_scores(feats: np.ndarray, *, labels: Labels, n_neighbors: int, folds: int, seed: int,
               cumulative: bool = True, distance: str = "euclidean", step_f1: str = "classes",
               all_layers: np.ndarray | None = None) -> Scores:
    """Out-of-fold macro F1 and accuracy of both probes on ``feats`` (statements, layers, features),
    per layer (layers 0 … l with ``cumulative``, else layer l) and on the features of
    ``all_layers`` (default: every layer) together; the step probe scored as ``step_f1`` says
    (see :func:`probe`)."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier

    fold = fold_of_prompt(labels.n_prompts, folds, seed)[labels.prompt]
    n_layers = feats.shape[1]
    f1 = np.zeros((len(PROBES), n_layers + 1))
    acc = np.zeros_like(f1)
    majority, n_samples = np.zeros(len(PROBES)), np.zeros(len(PROBES), np.int64)
    fewest = n_neighbors
    for j, name in enumerate(PROBES):
        keep = np.ones(len(fold), bool) if name == "useful" else labels.useful == 1
        y = getattr(labels, name)[keep]
        if name == "step" and step_f1 == "repository":  # (useful, at the prompt's last step) per statement
            last = np.zeros(labels.n_prompts, y.dtype)
            np.maximum.at(last, labels.prompt[keep], y)
            y = np.stack([np.ones_like(y), (y == last[labels.prompt[keep]]).astype(y.dtype)], 1)
        majority[j] = np.unique(y, axis=0, return_counts=True)[1].max() / len(y) if len(y) else np.nan
        n_samples[j] = len(y)
        if len(np.unique(y, axis=0)) < 2:  # one class (a group's every statement useful, one step): nothing to tell
            f1[j], acc[j] = np.nan, np.nan
            continue
        kept = feats[keep]
        for li in range(n_layers + 1):
            if li == n_layers:  # the all-layers probe
                x = kept if all_layers is None else kept[:, all_layers]
            else:
                x = kept[:, :li + 1] if cumulative else kept[:, li:li + 1]
            x = x.reshape(len(y), -1)
            pred = np.empty_like(y)
            for f in range(folds):
                test = fold[keep] == f
                k = min(n_neighbors, int((~test).sum()))
                fewest = min(fewest, k)
                knn = KNeighborsClassifier(n_neighbors=k, weights="distance", metric=distance)
                pred[test] = knn.fit(x[~test], y[~test]).predict(x[test])
            f1[j, li], acc[j, li] = f1_score(y, pred, average="macro"), accuracy_score(y, pred)
    return Scores(f1, acc, majority, n_samples, fewest, labels.n_prompts)


def _dataset(scores: list[tuple[int | None, Scores]], layers: np.ndarray, drop_layers: Sequence[int] = (),
             group_name: str = "prompt group") -> xr.Dataset:
    """The result of :func:`grouped_scores`: one group (None) as before, or a ``group`` dim."""
    one = [_group_dataset(s, layers, drop_layers) for _, s in scores]
    if scores[0][0] is None:
        return one[0]
    ds = xr.concat(one, dim="group", coords="minimal", compat="override")
    ds = ds.assign_coords(group=("group", np.array([g for g, _ in scores]), {"long_name": group_name}))
    ds["group_prompts"] = ("group", np.array([s.n_prompts for _, s in scores]),
                           {"long_name": "prompts probed in the group"})
    return ds


def _group_dataset(s: Scores, layers: np.ndarray, drop_layers: Sequence[int] = ()) -> xr.Dataset:
    dims = ("probe", "layer")
    every = all_layers_label(drop_layers)
    return xr.Dataset(
        {"f1": (dims, s.f1[:, :-1], {"long_name": "macro F1 (out-of-fold)", "units": "1"}),
         "accuracy": (dims, s.accuracy[:, :-1], {"long_name": "accuracy (out-of-fold)", "units": "1"}),
         "f1_all": ("probe", s.f1[:, -1], {"long_name": f"macro F1, {every}", "units": "1"}),
         "accuracy_all": ("probe", s.accuracy[:, -1], {"long_name": f"accuracy, {every}", "units": "1"}),
         "majority": ("probe", s.majority, {"long_name": "accuracy of the majority class", "units": "1"}),
         "n_samples": ("probe", s.n_samples, {"long_name": "statements classified"})},
        coords={"probe": ("probe", np.array(PROBES, dtype=object), {"long_name": PROBE_NAME}),
                "layer": ("layer", layers, {"long_name": "0-based layer whose attention the probe reads (with the "
                                                         "layers below it when cumulative)"})},
    )


# --------------------------------------------------------------------------- baseline
def untrained_baseline(model: Any) -> str:
    """What ``baseline="auto"`` means for ``model``: "step0" where its step0 revision is an
    untrained checkpoint (the embedded model's, Pythia's, a directory of revisions from a training
    run), else "random": a model without known revisions (GPT-2, the repository's model, whose
    probing score is taken against a random GPT-2, ``src/stask/probe.py:162-179``) and a
    directory written by :func:`~nnsight_reasoning.finetune`, whose step0 is the model before
    fine-tuning (it leaves ``finetune.json`` at its root)."""
    from ..results.checkpoints import available_revisions
    from ..training import LOG

    info = model_info(model)
    root = Path(info.name).expanduser()
    if root.is_dir() and (root / LOG).is_file():
        return "random"
    revisions = available_revisions(info.name)
    return "step0" if revisions and "step0" in revisions else "random"


def _is_own_baseline(model: Any, baseline: str) -> bool:
    """Whether ``model`` is its own baseline (the step0 checkpoint, e.g. in a sweep): its features
    are the baseline's, so the baseline is neither loaded nor run again."""
    return baseline == "step0" and model_info(model).revision == "step0"


def _baseline_model(model: Any, baseline: str, seed: int) -> Any:
    """The untrained checkpoint of ``model``, or a seeded random initialisation of its config."""
    info = model_info(model)
    if baseline == "step0":
        from ..results.checkpoints import available_revisions

        revs = available_revisions(info.name)
        if revs is not None and "step0" not in revs:
            raise UsageError(f"{info.name} has no step0 revision; use baseline='random' (or 'none')")
        return load_model(info.name, "step0", **info.load_kwargs)
    import torch
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state is left as it was
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(model.config, attn_implementation="eager").eval()
    return TransformersModel(hf, tokenizer=model.tokenizer)


def summarize(ds: xr.Dataset) -> list[Any]:
    """Macro F1 per probe and layer (and on all layers), with the baseline's F1 and the probing
    score, at the last checkpoint of a sweep."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    baseline = ds.attrs.get("baseline", "none")
    has_base = "baseline_f1" in ds
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · "
            f"{ds.attrs.get('n_prompts')} prompts · kNN k={ds.attrs.get('n_neighbors')}, {ds.attrs.get('folds')} "
            f"folds, {ds.attrs.get('distance', 'euclidean')}, pool = {ds.attrs.get('pool')}, "
            f"{'layers 0..l' if ds.attrs.get('cumulative', 0) else 'layer l alone'}")
    if "group" in last.dims:
        return [head, _group_table(last, baseline, has_base)]
    majority = "majority-class accuracy: " + " · ".join(
        f"{p} {float(last['majority'].sel(probe=p)):.3f}" for p in last["probe"].values)
    table = Table(title=f"macro F1 (out-of-fold) · {last.attrs.get('revision')} vs baseline {baseline}")
    table.add_column("probe")
    table.add_column("layer", justify="right")
    for col in ("F1", "baseline F1", "score") if has_base else ("F1",):
        table.add_column(col, justify="right")
    for p in last["probe"].values:
        r = last.sel(probe=p)
        for li in [*map(str, r["layer"].values), "all"]:
            names = ("f1", "baseline_f1", "score") if has_base else ("f1",)
            vals = [r[v + "_all"] if li == "all" else r[v].sel(layer=int(li)) for v in names]
            table.add_row(str(p), li, *[f"{float(v):.3f}" for v in vals])
    return [head, majority, table]


def _group_table(last: xr.Dataset, baseline: str, has_base: bool) -> Any:
    """One row per group and probe: all layers' F1, the baseline's, the score (the repository's
    printout per m, ``proofwriter_probe.py:123``)."""
    from rich.table import Table

    table = Table(title=f"macro F1 on all layers' features, per group · {last.attrs.get('revision')} "
                        f"vs baseline {baseline} (NaN: one class in the group)")
    # the group's symbol where its description names one ("…, m (…)": ProofWriter's sets; "…, k (…)": several k)
    named = re.search(r", (\w+) \(", str(last["group"].attrs.get("long_name", "")))
    first = named.group(1) if named else "group"
    for col in (first, "prompts", "probe", "F1", "majority", *(("baseline F1", "score") if has_base else ())):
        table.add_column(col, justify="left" if col == "probe" else "right")
    for g in last["group"].values:
        r = last.sel(group=g)
        for p in r["probe"].values:
            q = r.sel(probe=p)
            vals = [q["f1_all"], q["majority"], *((q["baseline_f1_all"], q["score_all"]) if has_base else ())]
            table.add_row(str(int(g)), str(int(r["group_prompts"])), str(p), *[f"{float(v):.3f}" for v in vals])
    return table
