"""Task performance: next-token accuracy, probability and rank of the correct answer."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .. import backend
from ..errors import UsageError
from ..results.io import model_at
from ..runner import Run, experiment
from ..tasks import CotPrompt, Example, Examples
from ..tasks.base import joined_answers


@experiment("evaluate", batch_size=256)
def evaluate(run: Run, examples: Examples | Sequence[Example | CotPrompt]) -> xr.Dataset:
    """Score the model's next token on each example (``nr.tasks.examples("arithmetic", 200)``).

    Returns a Dataset along ``prompt`` with ``correct`` (0/1: the answer is the argmax),
    ``p_answer`` (probability of the answer token) and ``answer_rank`` (0 = top-1; not
    ``rank``, which would shadow ``Dataset.rank``); for examples with ``alternatives`` (a set
    of correct answers) ``correct`` means the top-1 token is in the set, ``p_answer`` is the
    set's total probability and ``answer_rank`` the best rank of a member; coordinates ``text`` and ``answer``, and
    the aggregates ``accuracy``, ``mean_p_answer``, ``mean_rank`` (0-d). With ``revisions``
    every variable gains a leading ``checkpoint`` dim: the learning curve is
    ``ds.accuracy`` along ``checkpoint``.

    Where every example has ``distractors`` (IOI, greater-than, sentiment), Tigges et al.'s task
    measures (circuits-over-time ``utils/metrics.py``, as ``get_model_task_performance.py`` runs
    them) are added: ``logit_diff`` (prompt; mean logit of the correct answers − mean logit of
    the distractors, logits), ``prob_diff`` (prompt; their summed probabilities' difference),
    and the aggregates ``mean_logit_diff``, ``mean_prob_diff`` and ``accuracy_logit_diff`` (share
    of prompts with ``logit_diff`` > 0, the repository's IOI accuracy). Its rank-0 rate is
    ``accuracy`` (the top-1 token over the vocabulary is correct) and its probability mass is
    ``p_answer``.
    """
    items = list(examples)
    if not items:
        raise UsageError("no examples given")
    tigges = all(getattr(e, "distractors", ()) for e in items)
    ids, answers, member, against = scored_tokens(run.model, items, distractors=tigges)
    width = answers.shape[1]
    lp = np.zeros((len(items), width))
    rank = np.zeros(len(items), dtype=np.int64)  # the best-ranked member's
    label = f"evaluating {getattr(examples, 'task', '')}".rstrip()
    for chunk in run.steps(run.batches([len(x) for x in ids]), label):
        s = run.call(backend.answer_scores, torch.tensor([ids[i] for i in chunk]), torch.from_numpy(answers[chunk]),
                     best_of=torch.from_numpy(member[chunk]))
        lp[chunk], rank[chunk] = s.log_probs.double().numpy(), s.rank.numpy()
    p = np.where(member, np.exp(lp), 0.0).sum(1)  # P(the answer set)
    extra = {}
    if tigges:
        # means of log-probabilities differ as the means of logits do (log Z cancels in a row)
        mean = lambda mask: np.where(mask, lp, 0.0).sum(1) / mask.sum(1)  # noqa: E731
        ld = mean(member) - mean(against)
        pd = p - np.where(against, np.exp(lp), 0.0).sum(1)
        extra = {"logit_diff": ("prompt", ld, {"long_name": "mean logit of the correct answers − mean logit of the "
                                                            "distractors (Tigges et al.)", "units": "logits"}),
                 "prob_diff": ("prompt", pd, {"long_name": "P(correct answers) − P(distractors) (Tigges et al.)",
                                              "units": "1"}),
                 "mean_logit_diff": ((), ld.mean(), {"long_name": "mean logit_diff over prompts (Tigges et al.)",
                                                     "units": "logits"}),
                 "mean_prob_diff": ((), pd.mean(), {"long_name": "mean prob_diff over prompts (Tigges et al.)",
                                                   "units": "1"}),
                 "accuracy_logit_diff": ((), (ld > 0).mean(), {"long_name": "share of prompts with logit_diff > 0",
                                                               "units": "1"})}
    return xr.Dataset(
        {"correct": ("prompt", (rank == 0).astype(np.int8), {"long_name": "answer is the top-1 token"}),
         "p_answer": ("prompt", p, {"long_name": "P(answer | prompt)", "units": "1"}),
         "answer_rank": ("prompt", rank, {"long_name": "rank of the answer token (0 = top-1)", "units": "1"}),
         "accuracy": ((), (rank == 0).mean(), {"long_name": "accuracy (top-1)", "units": "1"}),
         "mean_p_answer": ((), p.mean(), {"long_name": "mean P(answer | prompt)", "units": "1"}),
         "mean_rank": ((), rank.mean(), {"long_name": "mean rank of the answer token", "units": "1"}), **extra},
        coords={"prompt": ("prompt", np.arange(len(items)), {"long_name": "prompt (example) index"}),
                "text": ("prompt", [e.prompt for e in items]),
                "answer": ("prompt", [e.answer for e in items])},
        attrs={"method": "evaluate", "metric": "accuracy"},
    )


def scored_tokens(model: Any, items: Sequence[Example | CotPrompt], distractors: bool = False
                  ) -> tuple[list[list[int]], np.ndarray, np.ndarray, np.ndarray]:
    """What scoring ``items`` reads: each prompt's token ids, and per prompt its answer set's
    tokens then (``distractors``) its distractors', ``answers`` (n, K) int64, rows of unequal size
    padded with their first id; ``member`` and ``against`` (n, K) bool mark the set's and the
    distractors' columns (padding in neither). One convention for every answer: each the token
    of " " + answer (of the answer itself where it continues the last word, greater-than's
    years), or (LLaMA's digits) the token after a space that then ends every prompt
    (:func:`nnsight_reasoning.backend.answer_ids`)."""
    sets = [list(getattr(e, "answers", (e.answer,))) for e in items]
    wrong = [list(e.distractors) if distractors else [] for e in items]
    words = [(word, "answer" if j < len(a) else "distractor")
             for a, w in zip(sets, wrong) for j, word in enumerate(a + w)]
    flat, suffix = backend.answer_ids(model, [word for word, _ in words], joined=joined_answers(items))
    if None in flat:
        word, what = words[flat.index(None)]
        raise UsageError(f"{what} {word!r} is not a single token for this model")
    ids = backend.tokenize(model, [e.prompt for e in items], suffix)
    it = iter(flat)
    sets, wrong = zip(*[([next(it) for _ in a], [next(it) for _ in w]) for a, w in zip(sets, wrong)])
    width = max(len(a) + len(w) for a, w in zip(sets, wrong))
    answers = np.array([a + w + a[:1] * (width - len(a) - len(w)) for a, w in zip(sets, wrong)])
    col = np.arange(width)[None]
    member = col < np.array([len(a) for a in sets])[:, None]
    against = ~member & (col < np.array([len(a) + len(w) for a, w in zip(sets, wrong)])[:, None])
    return ids, answers, member, against


def summarize(ds: xr.Dataset) -> list[Any]:
    """Accuracy, mean P(answer) and mean rank; over checkpoints, one row per checkpoint."""
    from rich.table import Table

    task, n = ds.attrs.get("task"), ds.sizes["prompt"]
    tigges = "mean_logit_diff" in ds
    if "checkpoint" not in ds.dims:
        extra = (f" · logit diff {float(ds.mean_logit_diff):.2f} · prob diff {float(ds.mean_prob_diff):.3f}"
                 if tigges else "")
        return [f"{task} · {model_at(ds)} · {n} prompts: "
                f"accuracy {float(ds.accuracy):.3f} · mean P(answer) {float(ds.mean_p_answer):.3f} · "
                f"mean rank {float(ds.mean_rank):.2f}{extra}"]
    table = Table(title=f"{task} · {ds.attrs['model']} · {n} prompts over training")
    cols = ["checkpoint", "accuracy", "mean P(answer)", "mean rank"] + (["logit diff", "prob diff"] if tigges else [])
    for col in cols + ["load s", "run s"]:
        table.add_column(col, justify="right")
    for c in ds["checkpoint"].values:
        r = ds.sel(checkpoint=c)
        more = [f"{float(r.mean_logit_diff):.2f}", f"{float(r.mean_prob_diff):.3f}"] if tigges else []
        table.add_row(str(c), f"{float(r.accuracy):.3f}", f"{float(r.mean_p_answer):.3f}", f"{float(r.mean_rank):.2f}",
                      *more, f"{float(r.seconds_load):.2f}", f"{float(r.seconds_run):.2f}")
    return [table]
