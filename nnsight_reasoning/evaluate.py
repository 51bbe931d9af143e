"""Task performance: next-token accuracy, probability and rank of the correct answer."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from . import backend
from .errors import UsageError
from .models import model_info
from .progress import progress_bar
from .results import provenance
from .tasks import Example, get_task
from .tasks.base import group_by_length


def evaluate(
    model: Any,
    task: str = "arithmetic",
    n_prompts: int = 200,
    *,
    seed: int = 0,
    batch_size: int = 256,
    remote: bool | str = False,
    progress: bool = True,
    **task_params: Any,
) -> xr.Dataset:
    """Score the model's next token on ``n_prompts`` prompts of ``task``.

    Returns a Dataset along ``prompt`` with ``correct`` (0/1: the answer is the argmax),
    ``p_answer`` (probability of the answer token) and ``answer_rank`` (0 = top-1; not
    ``rank``, which would shadow ``Dataset.rank``), coordinates
    ``text`` and ``answer``; ``attrs`` hold ``accuracy``, ``mean_p_answer``, ``mean_rank``.
    """
    info = get_task(task)
    info.check_params({**task_params, "seed": seed})
    examples: list[Example] = info.examples(n=n_prompts, seed=seed, tokenizer=model.tokenizer, **task_params)
    ids = backend.tokenize(model, [e.prompt for e in examples])
    answers = [backend.answer_token(model, e.answer) for e in examples]
    if None in answers:
        k = answers.index(None)
        raise UsageError(f"answer {examples[k].answer!r} is not a single token for this model")
    chunks = [idx[j : j + batch_size] for idx in group_by_length([len(x) for x in ids])
              for j in range(0, len(idx), batch_size)]
    lp = np.zeros(len(examples))
    rank = np.zeros(len(examples), dtype=np.int64)
    for chunk in progress_bar(chunks, f"evaluating {task}", enabled=progress):
        s = backend.answer_scores(model, torch.tensor([ids[i] for i in chunk]),
                                  torch.tensor([[answers[i]] for i in chunk]), remote=remote)
        lp[chunk] = s.log_probs[:, 0].double().numpy()
        rank[chunk] = s.rank[:, 0].numpy()
    m = model_info(model)
    params = {**task_params, "n_prompts": n_prompts, "seed": seed}
    attrs = provenance(task=task, task_params=params, model=m.name, model_path=m.path, revision=m.revision,
                       method="evaluate", metric="accuracy", seed=seed, remote=remote)
    p = np.exp(lp)
    attrs.update(accuracy=float((rank == 0).mean()), mean_p_answer=float(p.mean()), mean_rank=float(rank.mean()))
    return xr.Dataset(
        {"correct": ("prompt", (rank == 0).astype(np.int8), {"long_name": "answer is the top-1 token"}),
         "p_answer": ("prompt", p, {"long_name": "P(answer | prompt)", "units": "1"}),
         "answer_rank": ("prompt", rank, {"long_name": "rank of the answer token (0 = top-1)"})},
        coords={"prompt": np.arange(len(examples)), "text": ("prompt", [e.prompt for e in examples]),
                "answer": ("prompt", [e.answer for e in examples])},
        attrs=attrs,
    )
