"""Task performance: next-token accuracy, probability and rank of the correct answer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from . import backend
from . import remote as _remote
from .models import load_model, model_info
from .parts import Parts, digest
from .progress import progress_bar
from .results import provenance
from .tasks import Example, get_task
from .tasks.base import length_batches


def evaluate(
    model: Any,
    task: str = "arithmetic",
    n_prompts: int = 200,
    *,
    seed: int = 0,
    batch_size: int = 256,
    remote: bool | str = False,
    progress: bool = True,
    resume_dir: str | Path | None = None,
    revisions: str | Sequence[str] | None = None,
    **task_params: Any,
) -> xr.Dataset:
    """Score the model's next token on ``n_prompts`` prompts of ``task``.

    Returns a Dataset along ``prompt`` with ``correct`` (0/1: the answer is the argmax),
    ``p_answer`` (probability of the answer token) and ``answer_rank`` (0 = top-1; not
    ``rank``, which would shadow ``Dataset.rank``), coordinates ``text`` and ``answer``, and
    the aggregates ``accuracy``, ``mean_p_answer``, ``mean_rank`` (0-d).
    ``remote`` and ``resume_dir`` work as in :func:`nnsight_reasoning.patch` (one request and
    one kept part per chunk of ``batch_size`` prompts). With ``revisions`` (see
    :func:`nnsight_reasoning.over_revisions`) every variable gains a leading ``checkpoint``
    dim: the learning curve is ``ds.accuracy`` along ``checkpoint``.
    """
    info = get_task(task)
    info.check_params({**task_params, "seed": seed})
    if revisions is not None:
        from .checkpoints import over_revisions

        def run(m, resume_dir=None):
            return evaluate(m, task, n_prompts, seed=seed, batch_size=batch_size, remote=remote, progress=progress,
                            resume_dir=resume_dir, **task_params)

        config = {"method": "evaluate", "task": task, "task_params": {**task_params, "n_prompts": n_prompts, "seed": seed},
                  "batch_size": batch_size}
        return over_revisions(run, model, revisions, config=config, resume_dir=resume_dir, progress=progress,
                              remote=remote)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    _remote.preflight(model, remote)
    examples: list[Example] = info.examples(n=n_prompts, seed=seed, tokenizer=model.tokenizer, **task_params)
    ids = backend.tokenize(model, [e.prompt for e in examples])
    answers = backend.answer_tokens(model, [e.answer for e in examples])
    chunks = length_batches([len(x) for x in ids], batch_size)
    lp = np.zeros(len(examples))
    rank = np.zeros(len(examples), dtype=np.int64)
    m = model_info(model)
    params = {**task_params, "n_prompts": n_prompts, "seed": seed}
    store = Parts(resume_dir, {"method": "evaluate", "model": m.name, "model_path": m.path, "revision": m.revision,
                               "task": task, "task_params": params, "prompts": digest(ids, answers),
                               "batch_size": batch_size})
    traffic = _remote.TRAFFIC.copy()
    with store.resume_hint_on_failure():
        for k, chunk in enumerate(progress_bar(chunks, f"evaluating {task}", enabled=progress)):
            rows, ans = [ids[i] for i in chunk], [[answers[i]] for i in chunk]

            def compute(rows=rows, ans=ans):
                s = backend.answer_scores(model, torch.tensor(rows), torch.tensor(ans), remote=remote)
                return {"log_prob": s.log_probs[:, 0].double().numpy(), "rank": s.rank[:, 0].numpy()}

            got = store.fetch(f"chunk-{k:06d}", (rows, ans), compute)
            lp[chunk], rank[chunk] = got["log_prob"], got["rank"]
    attrs = provenance(task=task, task_params=params, model=m.name, model_path=m.path, revision=m.revision,
                       method="evaluate", metric="accuracy", seed=seed, remote=remote)
    p = np.exp(lp)
    attrs.update(batch_size=batch_size, n_forward_passes=len(chunks), n_resumed_passes=store.resumed)
    if remote not in (False, "local"):
        attrs.update(_remote.TRAFFIC.since(traffic))
    return xr.Dataset(
        {"correct": ("prompt", (rank == 0).astype(np.int8), {"long_name": "answer is the top-1 token"}),
         "p_answer": ("prompt", p, {"long_name": "P(answer | prompt)", "units": "1"}),
         "answer_rank": ("prompt", rank, {"long_name": "rank of the answer token (0 = top-1)"}),
         "accuracy": ((), (rank == 0).mean(), {"long_name": "accuracy (top-1)", "units": "1"}),
         "mean_p_answer": ((), p.mean(), {"long_name": "mean P(answer | prompt)", "units": "1"}),
         "mean_rank": ((), rank.mean(), {"long_name": "mean rank of the answer token"})},
        coords={"prompt": np.arange(len(examples)), "text": ("prompt", [e.prompt for e in examples]),
                "answer": ("prompt", [e.answer for e in examples])},
        attrs=attrs,
    )
