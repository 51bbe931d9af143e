"""Probe score against robustness (Hou et al. 2023, the repository's ``corrupt_proofwriter``).

The paper asks whether the model is more robust where its attention follows the reasoning
tree more closely. The repository draws 1024 random subsets of 64–128 examples; on each it
measures the probing score S = (F1 − F1_baseline) / (1 − F1_baseline) of the depth probe and
the accuracy before and after a corruption that leaves the answer right ("That … is false"
for a sentence outside the proof), then bins S into 8 equal-width bins and reports the mean
accuracy drop per bin.

:func:`robustness` does the same for any labelled prompts and any corruption of them: the
probe runs on the clean prompts (both probes: ``useful`` and ``step``; the repository's
``sp1`` and ``sp2``), the accuracy (top-1 answer token) on the clean and the corrupted ones,
per subset; the subsets are seeded. Departures: the repository's last bin leaves out the
maximum (its bins are [min, max)); here it is included. It imports ``pearsonr`` but computes
no correlation; here the Pearson correlation of S and the drop is reported (the issue's
"correlation"). The probe's features and kNN are :func:`.probe`'s (the same options).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..errors import UsageError, checked_int
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks.base import joined_answers
from ..tasks.reasoning import ReasoningPrompt, ReasoningPrompts, scored_text_coords, special_tokens_of
from .probe import (PROBE_NAME, PROBES, Features, _labels, all_layers_label, check_options, dropped_attr, features,
                    kept_layers, knn_scores, labelled_prompts)


@experiment("probe_robustness", batch_size=64)
def robustness(
    run: Run,
    prompts: ReasoningPrompts | Sequence[ReasoningPrompt],
    *,
    corrupt: str | None = None,
    n_corrupt: int = 1,
    n_subsets: int = 256,
    subset_size: tuple[int, int] = (64, 128),
    n_bins: int = 8,
    baseline: str = "auto",
    n_neighbors: int = 8,
    folds: int = 2,
    pool: str = "mean",
    distance: str = "euclidean",
    query: str = "last",
    statement_pool: str = "sum",
    normalise: bool = True,
    choices: Sequence[str] | None = None,
    baseline_prompts: int | None = None,
    drop_layers: Sequence[int] = (),
    seed: int = 0,
) -> xr.Dataset:
    """Probing score against the accuracy drop under a corruption, over random subsets of prompts.

    Parameters
    ----------
    model : a loaded model or a name/directory (eager attention).
    prompts : labelled prompts, uncorrupted; answers must be single tokens.
    corrupt, n_corrupt : the corruption the accuracy is measured under: "negate" (the
        repository's "That … is false." for ``n_corrupt`` statements outside the proof; files),
        "shuffle", "drop" (``n_corrupt`` statements outside the proof removed), or "perturb"
        (``kth_smallest`` only: numbers replaced and answers recomputed, so it measures another
        thing: accuracy on other lists); default drop for ``kth_smallest``, negate otherwise. A
        prompt with too few statements outside the proof stays as it is
        (``attrs["n_uncorrupted"]`` counts them).
    n_subsets, subset_size : subsets drawn (without replacement within one), each of a size
        drawn uniformly from [lo, hi] (the repository: 1024 of 64–128). With
        ``rng = numpy.random.default_rng(seed)``, subset s is
        ``sorted(rng.choice(n, rng.integers(lo, hi + 1), replace=False))`` and its folds are
        the probe's with seed ``seed + s``.
    n_bins : equal-width bins of the score (the repository: 8).
    choices : None (default): a prompt is answered right when its answer is the top-1 token over
        the vocabulary. A list of answers, e.g. ``("True", "False")``: when its answer has the
        highest logit among theirs, as the repository compares P("True") with P("False")
        (``src/llama.py:33-40``); every answer, clean and corrupted, must be one of them.
    baseline, n_neighbors, folds, pool, distance, query, statement_pool, normalise : the
        probe's (:func:`nnsight_reasoning.probe`); with baseline "none" the score is the F1.
    baseline_prompts : None (default): the baseline's F1 is measured on each subset, beside the
        model's. An integer m: once, on one sample of m prompts, and used for every subset, as
        the repository measures its scratch baseline once on 128 examples
        (``src/rtask/proofwriter_probe.py:260-266``); the sample is
        ``sorted(numpy.random.default_rng(seed + n_subsets).choice(n, m, replace=False))``, its
        folds the probe's with seed ``seed + n_subsets``.
    drop_layers : layers left out of the probe's features (model and baseline), as the
        repository leaves LLaMA-7B's 17, 18, 20-27 and 29-31 out of its model's
        (``src/rtask/proofwriter_probe.py:270``; its scratch baseline keeps them, here both drop
        them so the score compares like with like).
    seed : subsets and folds.

    Returns
    -------
    xarray.Dataset with ``score`` and ``f1`` (subset, probe) (``baseline_f1`` too), ``accuracy``,
    ``accuracy_corrupt``, ``drop`` (= corrupted − clean accuracy, the repository's sign) and
    ``size`` (subset); ``correct``, ``correct_corrupt`` (prompt); ``bin_drop`` (mean drop),
    ``bin_accuracy`` (mean clean accuracy, the repository's ``bins_acc``), ``bin_count``,
    ``bin_lo``, ``bin_hi`` (probe, bin); ``correlation`` (probe): Pearson r of score and drop.
    Coordinates ``text`` and ``corrupted_text`` (prompt), and where answers are scored after
    another text than the probed one (ProofWriter's ``form="repository"``, the repository's
    evaluator prompt) ``scored_text`` and ``corrupted_scored_text``.
    """
    how = Features(pool, query, statement_pool, normalise)
    baseline = check_options(run, baseline, how, distance, n_neighbors)
    plist, labels = labelled_prompts(prompts, folds)
    if labels.group is not None and len(np.unique(labels.group)) > 1:
        raise UsageError(f"robustness draws its subsets from one set; these prompts are in groups "
                         f"{', '.join(map(str, np.unique(labels.group)))}: give one k (kth_smallest), or load "
                         f"them without by_size (the repository's pool: min_depth=1, max_depth=1)")
    lo, hi = (int(x) for x in subset_size)
    if not 2 * folds <= lo <= hi <= len(plist):
        raise UsageError(f"subset_size must satisfy 2·folds <= lo <= hi <= the number of prompts ({len(plist)}); "
                         f"got {subset_size} (CLI: --subset-min, --subset-max)")
    if n_subsets < 2 or n_bins < 1:
        raise UsageError(f"need n_subsets >= 2 and n_bins >= 1 (got {n_subsets}, {n_bins})")
    if baseline_prompts is not None:
        baseline_prompts = checked_int("baseline_prompts", baseline_prompts, 2 * folds, len(plist),
                                       bound=f"from 2·folds to the number of prompts ({len(plist)}), or None")
    if baseline_prompts is not None and baseline == "none":
        raise UsageError("baseline_prompts sizes the baseline's sample; with baseline='none' there is none")
    if corrupt is None:
        corrupt = "drop" if getattr(prompts, "task", None) == "kth_smallest" else "negate"
    bad = _corrupted(prompts, plist, corrupt, n_corrupt, seed)
    if len(bad) != len(plist):
        raise UsageError(f"the corrupted prompts are {len(bad)}, not {len(plist)}: give the prompts as the task made them")
    unchanged = sum(a.text == b.text for a, b in zip(plist, bad)) if corrupt != "shuffle" else 0
    if choices is not None:
        choices = [str(c) for c in choices]
        missing = sorted({p.answer for p in [*plist, *bad]} - set(choices))
        if len(choices) < 2 or missing:
            raise UsageError(f"choices must list two or more answers, every prompt's among them (missing: "
                             f"{', '.join(missing[:5]) or 'none'}; got {choices[:5]})")
    read = kept_layers(run, drop_layers)  # the score reads the all-layers probe only: drop them here
    correct = _correct(run, plist, "accuracy (clean)", choices)
    correct_bad = _correct(run, bad, "accuracy (corrupted)", choices)
    judged = "top-1" if choices is None else "among the choices"
    _, feats, base_feats = features(run, prompts, plist, how, baseline, seed)
    feats = feats[:, read]
    base_feats = None if base_feats is None else base_feats[:, read]
    # statement rows of each prompt in the feature matrix
    start = np.r_[0, np.cumsum([len(p.statements) for p in plist])]

    def rows_of(idx):
        return np.concatenate([np.arange(start[i], start[i + 1]) for i in idx])

    once = None
    if base_feats is not None and baseline_prompts is not None:  # the repository's one scratch measurement
        idx = np.sort(np.random.default_rng(seed + n_subsets).choice(len(plist), baseline_prompts, replace=False))
        once = knn_scores(base_feats[rows_of(idx)], labels=_labels([plist[i] for i in idx]), n_neighbors=n_neighbors,
                          folds=folds, seed=seed + n_subsets, distance=distance).f1[:, -1]
    rng = np.random.default_rng(seed)
    f1 = np.zeros((n_subsets, len(PROBES)))
    base_f1 = np.zeros_like(f1)
    sizes = np.zeros(n_subsets, np.int64)
    acc, acc_bad = np.zeros(n_subsets), np.zeros(n_subsets)
    fewest = n_neighbors
    for s in range(n_subsets):
        idx = np.sort(rng.choice(len(plist), int(rng.integers(lo, hi + 1)), replace=False))
        rows = rows_of(idx)
        sub = _labels([plist[i] for i in idx])
        knn = dict(labels=sub, n_neighbors=n_neighbors, folds=folds, seed=seed + s, distance=distance)
        scores = knn_scores(feats[rows], **knn)
        f1[s], fewest = scores.f1[:, -1], min(fewest, scores.fewest_neighbors)  # all layers' features
        if once is not None:
            base_f1[s] = once
        elif base_feats is not None:
            base_f1[s] = knn_scores(base_feats[rows], **knn).f1[:, -1]
        sizes[s], acc[s], acc_bad[s] = len(idx), correct[idx].mean(), correct_bad[idx].mean()
    with np.errstate(divide="ignore", invalid="ignore"):  # a perfect baseline leaves no room: NaN, not inf
        score = f1 if base_feats is None else np.where(base_f1 < 1, (f1 - base_f1) / (1 - base_f1), np.nan)
    drop = acc_bad - acc
    bin_drop, bin_count, edges = _bins(score, drop, n_bins)
    bin_accuracy = _bins(score, acc, n_bins)[0]  # the repository's bins_acc (proofwriter_probe.py:305-310)
    corr = np.array([_pearson(score[:, j], drop) for j in range(len(PROBES))])
    data = {
        "score": (("subset", "probe"), score, {"long_name": "probing score (F1 - F1_baseline) / (1 - F1_baseline)"
                                               if base_feats is not None else "macro F1 (no baseline)", "units": "1"}),
        "f1": (("subset", "probe"), f1, {"long_name": f"macro F1, {all_layers_label(drop_layers)}", "units": "1"}),
        "accuracy": ("subset", acc, {"long_name": f"accuracy ({judged}), clean prompts", "units": "1"}),
        "accuracy_corrupt": ("subset", acc_bad, {"long_name": f"accuracy ({judged}), corrupted prompts", "units": "1"}),
        "drop": ("subset", drop, {"long_name": "accuracy corrupted - clean", "units": "1"}),
        "size": ("subset", sizes, {"long_name": "prompts in the subset"}),
        "correct": ("prompt", correct, {"long_name": f"answer right, {judged} (clean)"}),
        "correct_corrupt": ("prompt", correct_bad, {"long_name": f"answer right, {judged} (corrupted)"}),
        "bin_drop": (("probe", "bin"), bin_drop, {"long_name": "mean accuracy drop of the subsets in the score bin",
                                                  "units": "1"}),
        "bin_accuracy": (("probe", "bin"), bin_accuracy, {"long_name": "mean clean accuracy of the subsets in the "
                                                                        "score bin", "units": "1"}),
        "bin_count": (("probe", "bin"), bin_count, {"long_name": "subsets in the score bin"}),
        "bin_lo": (("probe", "bin"), edges[:, :-1], {"long_name": "score bin's lower edge", "units": "1"}),
        "bin_hi": (("probe", "bin"), edges[:, 1:], {"long_name": "score bin's upper edge", "units": "1"}),
        "correlation": ("probe", corr, {"long_name": "Pearson r of score and accuracy drop", "units": "1"}),
    }
    if base_feats is not None:
        data["baseline_f1"] = (("subset", "probe"), base_f1, {
            "long_name": f"macro F1 of the {baseline} baseline" + (f", once on {baseline_prompts} prompts"
                                                                  if once is not None else ""), "units": "1"})
    return xr.Dataset(
        data,
        coords={"subset": ("subset", np.arange(n_subsets), {"long_name": "random subset of the prompts (seeded)"}),
                "probe": ("probe", np.array(PROBES, dtype=object), {"long_name": PROBE_NAME}),
                "bin": ("bin", np.arange(n_bins), {"long_name": "equal-width bin of the score (0 = lowest)"}),
                "prompt": ("prompt", np.arange(len(plist)), {"long_name": "prompt index"}),
                "text": ("prompt", np.array([p.text for p in plist], dtype=object), {"long_name": "clean prompt text"}),
                "corrupted_text": ("prompt", np.array([p.text for p in bad], dtype=object),
                                   {"long_name": f"prompt text after the {corrupt} corruption"}),
                **scored_text_coords({"scored_text": (plist, "clean prompt as its answer is scored"),
                                      "corrupted_scored_text": (bad, "corrupted prompt as its answer is scored")})},
        attrs={"method": "probe_robustness", "metric": "accuracy_drop", "seed": seed, "baseline": baseline,
               "n_neighbors": n_neighbors, "folds": folds, "pool": pool, "distance": distance, "query": query,
               "statement_pool": statement_pool, "normalise": int(normalise), "subset_size": f"{lo}-{hi}",
               "corruption": corrupt, "n_corrupt": n_corrupt, "n_uncorrupted": unchanged,
               **({"choices": ",".join(choices)} if choices is not None else {}),
               **({"baseline_prompts": baseline_prompts} if once is not None else {}), **dropped_attr(drop_layers),
               **({"n_neighbors_used": fewest} if fewest < n_neighbors else {})},  # as probe's
    )


def _corrupted(prompts: Any, plist: list[ReasoningPrompt], corrupt: str, n_corrupt: int, seed: int
               ) -> list[ReasoningPrompt]:
    """The prompts corrupted, one to one: ``kth_smallest`` regenerates its lists with the
    corruption (``perturb`` recomputes answers); other prompts go through
    :func:`nnsight_reasoning.tasks.reasoning.corrupted`."""
    from ..tasks import kth_smallest
    from ..tasks.reasoning import corrupted

    if isinstance(prompts, ReasoningPrompts) and prompts.task == "kth_smallest" and not prompts.params.get("corrupt"):
        return list(kth_smallest(**{**prompts.params, "corrupt": corrupt, "n_corrupt": n_corrupt}))
    return corrupted(plist, corrupt, n_corrupt, seed, strict=False)


def _correct(run: Run, plist: Sequence[Any], label: str, choices: Sequence[str] | None = None) -> np.ndarray:
    """(prompts,) 1 where the answer token is the top-1 next token after the prompt's scored text
    (its text, or the repository's accuracy prompt: :attr:`ReasoningPrompt.scored_text`), or with
    ``choices`` the one of highest logit among the choices' tokens."""
    # one tokenisation for both reads: the answers' tokens, or with choices the choices' alone
    ids, answer_ids, cand_ids = backend.scored_prompts(
        run.model, [p.scored_text for p in plist], [] if choices is not None else [p.answer for p in plist],
        choices=list(choices or ()), joined=joined_answers(plist),
        special_tokens=special_tokens_of(plist))
    if choices is not None:  # the repository's comparison of the choices' logits alone
        cand = torch.tensor(cand_ids)
        want = np.array([list(choices).index(p.answer) for p in plist])

        def right(chunk: list[int], rows: torch.Tensor) -> np.ndarray:
            s = run.call(backend.answer_scores, rows, cand.expand(len(chunk), -1), rank=False)
            return s.logits.numpy().argmax(1) == want[chunk]
    else:  # the top token over the vocabulary
        answers = np.array(answer_ids)

        def right(chunk: list[int], rows: torch.Tensor) -> np.ndarray:
            s = run.call(backend.answer_scores, rows, torch.from_numpy(answers[chunk, None]), rank="top")
            return s.top.numpy() == answers[chunk]
    out = np.zeros(len(plist), np.int8)
    for chunk in run.steps(run.batches([len(x) for x in ids]), label):
        out[chunk] = right(chunk, torch.tensor([ids[i] for i in chunk]))
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the subsets with a score (NaN where either side does not vary)."""
    ok = np.isfinite(x)
    if ok.sum() < 2 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def _bins(score: np.ndarray, drop: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: the mean drop and count in each of ``n_bins`` equal-width bins of the score
    over [min, max] (the maximum in the last bin; subsets without a score left out), and the
    (n_bins + 1) edges."""
    n_probes = score.shape[1]
    means, counts = np.full((n_probes, n_bins), np.nan), np.zeros((n_probes, n_bins), np.int64)
    edges = np.full((n_probes, n_bins + 1), np.nan)
    for j in range(n_probes):
        ok = np.isfinite(score[:, j])
        if not ok.any():
            continue
        x, d = score[ok, j], drop[ok]
        edges[j] = np.linspace(x.min(), x.max(), n_bins + 1)
        which = np.clip(np.searchsorted(edges[j], x, side="right") - 1, 0, n_bins - 1)
        for b in range(n_bins):
            counts[j, b] = int((which == b).sum())
            if counts[j, b]:
                means[j, b] = d[which == b].mean()
    return means, counts, edges


def summarize(ds: xr.Dataset) -> list[Any]:
    """Mean accuracy drop per score bin, per probe, and the correlation."""
    from rich.table import Table

    from ..results.io import last_checkpoint

    last = last_checkpoint(ds)
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · "
            f"{last.sizes['subset']} subsets of {ds.attrs.get('subset_size')} prompts · corruption "
            f"{ds.attrs.get('corruption')} · accuracy over all {last.sizes['prompt']} prompts "
            f"{float(last.correct.mean()):.3f} -> {float(last.correct_corrupt.mean()):.3f}")
    tables = [head]
    for p in last["probe"].values:
        r = last.sel(probe=p)
        table = Table(title=f"{p} probe: mean accuracy drop per score bin (Pearson r {float(r.correlation):+.2f})")
        for col in ("score bin", "subsets", "mean drop"):
            table.add_column(col, justify="right")
        for b in r["bin"].values:
            q = r.sel(bin=b)
            table.add_row(f"{float(q.bin_lo):.2f} .. {float(q.bin_hi):.2f}", str(int(q.bin_count)),
                          "" if np.isnan(float(q.bin_drop)) else f"{float(q.bin_drop):+.3f}")
        tables.append(table)
    return tables
