"""``reason-interp attention`` and ``reason-interp probe`` (registered in ``main``): attention analysis and MechanisticProbe
on labelled reasoning prompts (k-th smallest, ProofWriter/ARC files)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from .common import Harness, OptionGroup, Param, Seed, experiment_command, task_params


def _prompts(task: str, data: Optional[Path], n_prompts: Optional[int], seed: int, param: List[str],
             **explicit: Any) -> Any:
    """Labelled prompts of ``task`` (the registry's generator), made before any model loads so
    that a bad task, option or data file fails at once."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    info = nr.tasks.get_task(task)
    if info.labelled is None:
        raise UsageError(f"task {task!r} has no reasoning-tree labels; use one of: "
                         f"{', '.join(n for n, t in nr.tasks.TASKS.items() if t.labelled)}")
    params = task_params(param, **explicit)
    if data is not None:
        params["path"] = str(data)
    info.check_params({**params, "seed": seed})
    return info.labelled(n_prompts=n_prompts, seed=seed, **params)


# the labelled-prompt options of both commands; they receive the prompts as `prompts`
PROMPTS = OptionGroup("prompts", dict(
    task=(Annotated[str, typer.Option(help="kth_smallest, or proofwriter / arc with --data FILE")], "kth_smallest"),
    data=(Annotated[Optional[Path], typer.Option(help="proofwriter/arc: local .jsonl/.json/.csv file (columns: "
                                                      "`reason-interp tasks proofwriter`)")], None),
    n_prompts=(Annotated[Optional[int], typer.Option(help="number of prompts (files: at most the first N rows)")], 256),
    seed=(Seed, 0),
    length=(Annotated[Optional[int], typer.Option(help="kth_smallest: numbers per list (default 5)")], None),
    k=(Annotated[Optional[int], typer.Option(help="kth_smallest: which smallest to ask for (default 2)")], None),
    max_n=(Annotated[Optional[int], typer.Option(help="kth_smallest: numbers are 0..max_n (default 99)")], None),
    corrupt=(Annotated[Optional[str], typer.Option(help="robustness variant: shuffle | drop | perturb (kth_smallest "
                                                        "only)")], None),
    n_corrupt=(Annotated[Optional[int], typer.Option(help="statements dropped or perturbed (default 1)")], None),
    param=(Param, [])), lambda task, data, n_prompts, seed, param, **explicit: _prompts(task, data, n_prompts, seed,
                                                                                      param, **explicit))


@experiment_command(PROMPTS)
def attention(
    h: Harness,
    prompts: Any,
    layer: List[int] = typer.Option([], help="layer(s) to keep (repeatable); default all"),
    head: List[int] = typer.Option([], help="head(s) to keep (repeatable); default all"),
    patterns: str = typer.Option("last", help="attention rows stored: last (answer position) | all | none"),
) -> None:
    """Attention patterns, head entropy and attention mass per reasoning step (Hou et al. 2023)."""
    import nnsight_reasoning as nr

    h.run(nr.attention, lambda tokenizer: prompts, kind="attention", task=prompts.task, layers=layer or None,
          heads=head or None, patterns=patterns)


@experiment_command(PROMPTS)
def probe(
    h: Harness,
    prompts: Any,
    baseline: str = typer.Option("step0", help="step0 (untrained checkpoint) | random (seeded init) | none"),
    n_neighbors: int = typer.Option(8, help="kNN neighbours"),
    folds: int = typer.Option(2, help="cross-validation folds over prompts"),
    pool: str = typer.Option("heads", help="features per layer: heads (one per head) | mean (paper)"),
) -> None:
    """MechanisticProbe: kNN probes for useful statements and reasoning steps on attention, per layer."""
    import nnsight_reasoning as nr

    h.run(nr.probe, lambda tokenizer: prompts, kind="probe", task=prompts.task, baseline=baseline,
          n_neighbors=n_neighbors, folds=folds, pool=pool, seed=prompts.params.get("seed", 0))
