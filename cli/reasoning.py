"""``reason-interp attention`` and ``reason-interp probe`` (registered in ``main``): attention analysis and MechanisticProbe
on labelled reasoning prompts (k-th smallest, ProofWriter/ARC files)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import (Model, OutFile, Param, Progress, Remote, Revision, Revisions, Seed, guard, out, out_path,
                     revision_label, sweep_revisions, task_params)

ReasonTask = typer.Option("kth_smallest", help="kth_smallest, or proofwriter / arc with --data FILE")
Data = typer.Option(None, help="proofwriter/arc: local .jsonl/.json/.csv file (columns: `reason-interp tasks proofwriter`)")
NPrompts = typer.Option(256, help="number of prompts (files: at most the first N rows)")
Length = typer.Option(None, help="kth_smallest: numbers per list (default 5)")
K = typer.Option(None, help="kth_smallest: which smallest to ask for (default 2)")
MaxN = typer.Option(None, help="kth_smallest: numbers are 0..max_n (default 99)")
Corrupt = typer.Option(None, help="robustness variant: shuffle | drop | perturb (kth_smallest only)")
NCorrupt = typer.Option(None, help="statements dropped or perturbed (default 1)")
BatchSize = typer.Option(64, help="most prompts per forward pass (remote: per request)")


def _setup(kind: str, task: str, data: Optional[Path], model: Optional[str], revision: Optional[str],
           revisions: Optional[str], n_prompts: Optional[int], seed: int, param: List[str], out_file: Optional[Path],
           **explicit):
    """Labelled prompts of ``task`` (the registry's generator), the revisions of a sweep, the
    results path and the model to run on (its name in a sweep, which loads each revision)."""
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
    prompts = info.labelled(n_prompts=n_prompts, seed=seed, **params)
    names = sweep_revisions(model, revision, revisions)
    path = out_path(out_file, kind, task, model or "embedded", revision_label(revision, names))
    return prompts, names, path, (model if names else nr.load_model(model, revision))


@guard
def attention(
    task: str = ReasonTask,
    data: Optional[Path] = Data,
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_prompts: Optional[int] = NPrompts,
    seed: Seed = 0,
    length: Optional[int] = Length,
    k: Optional[int] = K,
    max_n: Optional[int] = MaxN,
    corrupt: Optional[str] = Corrupt,
    n_corrupt: Optional[int] = NCorrupt,
    param: Param = [],
    layer: List[int] = typer.Option([], help="layer(s) to keep (repeatable); default all"),
    head: List[int] = typer.Option([], help="head(s) to keep (repeatable); default all"),
    patterns: str = typer.Option("last", help="attention rows stored: last (answer position) | all | none"),
    batch_size: int = BatchSize,
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Attention patterns, head entropy and attention mass per reasoning step (Hou et al. 2023)."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.results import last_checkpoint

    t0 = time.time()
    prompts, names, path, m = _setup("attention", task, data, model, revision, revisions, n_prompts, seed, param,
                                     out_file, length=length, k=k, max_n=max_n, corrupt=corrupt, n_corrupt=n_corrupt)
    ds = nr.attention(m, prompts, layers=layer or None, heads=head or None, patterns=patterns,
                      batch_size=batch_size, remote=remote, progress=progress, revisions=names)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({len(prompts)} prompts)", highlight=False)
    last = last_checkpoint(ds)
    mass = last["mass"].mean("prompt")
    table = Table(title=f"heads by attention from the answer position to useful statements "
                        f"({last.attrs['revision']}, mean over prompts)")
    for col in ("layer", "head", "entropy (nats)", *[str(g) for g in last["group"].values]):
        table.add_column(col, justify="right")
    useful = [g for g in last["group"].values if str(g).startswith("step")]
    score = mass.sel(group=useful).sum("group") if useful else mass.sel(group=mass["group"].values[-1])
    flat = score.stack(lh=("layer", "head"))
    for idx in flat.argsort().values[::-1][:8]:
        li, h = flat["lh"].values[idx]
        row = mass.sel(layer=li, head=h)
        table.add_row(str(li), str(h), f"{float(last['entropy'].sel(layer=li, head=h).mean()):.2f}",
                      *[f"{float(v):.3f}" for v in row.values])
    out.print(table)


@guard
def probe(
    task: str = ReasonTask,
    data: Optional[Path] = Data,
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_prompts: Optional[int] = NPrompts,
    seed: Seed = 0,
    length: Optional[int] = Length,
    k: Optional[int] = K,
    max_n: Optional[int] = MaxN,
    corrupt: Optional[str] = Corrupt,
    n_corrupt: Optional[int] = NCorrupt,
    param: Param = [],
    baseline: str = typer.Option("step0", help="step0 (untrained checkpoint) | random (seeded init) | none"),
    n_neighbors: int = typer.Option(8, help="kNN neighbours"),
    folds: int = typer.Option(2, help="cross-validation folds over prompts"),
    pool: str = typer.Option("heads", help="features per layer: heads (one per head) | mean (paper)"),
    batch_size: int = BatchSize,
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """MechanisticProbe: kNN probes for useful statements and reasoning steps on attention, per layer."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.results import last_checkpoint

    t0 = time.time()
    prompts, names, path, m = _setup("probe", task, data, model, revision, revisions, n_prompts, seed, param,
                                     out_file, length=length, k=k, max_n=max_n, corrupt=corrupt, n_corrupt=n_corrupt)
    ds = nr.probe(m, prompts, baseline=baseline, n_neighbors=n_neighbors, folds=folds, pool=pool, seed=seed,
                  batch_size=batch_size, remote=remote, progress=progress, revisions=names)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({len(prompts)} prompts)", highlight=False)
    last = last_checkpoint(ds)
    table = Table(title=f"macro F1 (out-of-fold) · {ds.attrs['revision']} vs baseline {baseline}")
    table.add_column("probe")
    table.add_column("layer", justify="right")
    for col in ("F1", "baseline F1", "score") if baseline != "none" else ("F1",):
        table.add_column(col, justify="right")
    for p in last["probe"].values:
        r = last.sel(probe=p)
        for li in [*map(str, r["layer"].values), "all"]:
            sfx = "_all" if li == "all" else ""
            pick = (lambda v: r[v + sfx]) if li == "all" else (lambda v: r[v].sel(layer=int(li)))
            vals = [pick("f1")] + ([pick("baseline_f1"), pick("score")] if baseline != "none" else [])
            table.add_row(str(p), li, *[f"{float(v):.3f}" for v in vals])
    out.print(table)
