"""``reason-interp heads`` and ``reason-interp circuit`` (registered in ``main``): attention-head
scores and edge-attribution circuits, over checkpoints too."""
from __future__ import annotations

import time

import numpy as np
import typer
from rich.table import Table

from .common import Model, OutFile, Param, Progress, Remote, Revision, Revisions, Seed, Task, guard, out, out_path, \
    revision_label, sweep_revisions, task_params


@guard
def heads(
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_sequences: int = typer.Option(32, help="repeated random-token sequences"),
    seq_len: int = typer.Option(20, help="tokens per half of a sequence"),
    seed: Seed = 0,
    batch_size: int = typer.Option(32, help="most sequences per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Previous-token, duplicate-token, induction, successor and copy-suppression score of every
    attention head."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.heads import SCORES, grid
    from nnsight_reasoning.results import last_checkpoint

    names = sweep_revisions(model, revision, revisions)
    path = out_path(out_file, "heads", "repeated_tokens", model or "embedded", revision_label(revision, names))
    t0 = time.time()
    m = model if names else nr.load_model(model, revision)
    ds = nr.head_scores(m, n_sequences=n_sequences, seq_len=seq_len, seed=seed, batch_size=batch_size,
                        remote=remote, progress=progress, revisions=names)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({n_sequences} sequences)", highlight=False)
    last = last_checkpoint(ds)
    rev = last.attrs["revision"]
    table = Table(title=f"top heads per score ({ds.attrs['model']}@{rev}, mean over sequences)")
    for col in ("score", "chance", "1st", "2nd", "3rd"):
        table.add_column(col)
    for score in SCORES:
        flat = grid(last, score).stack(lh=("layer", "head"))
        top = flat.argsort().values[::-1][:3]
        table.add_row(score, f"{float(last['uniform'].sel(score=score)):.2f}",
                      *[f"L{flat['lh'].values[i][0]}H{flat['lh'].values[i][1]} {float(flat.values[i]):.2f}" for i in top])
    out.print(table)


@guard
def circuit(
    task: Task = "arithmetic",
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_prompts: int = typer.Option(32, help="number of clean/corrupted prompt pairs"),
    seed: Seed = 0,
    param: Param = [],
    ig_steps: int = typer.Option(5, help="1 = EAP; m > 1 = EAP-IG with m integration steps"),
    sizes: str = typer.Option("10,20,50,100,200", help="circuit sizes (top-n edges) whose faithfulness is measured; "
                                                       "'' for scores only"),
    batch_size: int = typer.Option(64, help="most input rows per pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Edge attribution (EAP / EAP-IG) over heads and MLPs, circuits of several sizes and their
    faithfulness by real patching (Tigges et al. 2024); over checkpoints with --revisions."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.results import last_checkpoint

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, e.g. 10,20,50 (got {sizes!r})") from None
    info = nr.tasks.get_task(task)
    if info.pairs is None:
        raise UsageError(f"task {task!r} has no clean/corrupted prompt pairs; use one of: "
                         f"{', '.join(n for n, t in nr.tasks.TASKS.items() if t.pairs)}")
    params = task_params(param)
    info.check_params({**params, "n_prompts": n_prompts, "seed": seed})
    names = sweep_revisions(model, revision, revisions)
    path = out_path(out_file, "circuit", task, model or "embedded", revision_label(revision, names))
    t0 = time.time()
    m = nr.load_model(model, names[-1] if names else revision)
    pairs = info.pairs(n_prompts=n_prompts, seed=seed, tokenizer=m.tokenizer, **params)
    ds = nr.circuits.eap(model if names else m, pairs, ig_steps=ig_steps, sizes=size_list, batch_size=batch_size,
                         remote=remote, progress=progress, revisions=names)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({ds.attrs['method']}, {n_prompts} pairs)",
              highlight=False)
    last = last_checkpoint(ds)
    rev = last.attrs["revision"]
    table = Table(title=f"circuits of {ds.attrs['model']}@{rev}: clean logit diff "
                        f"{float(last['clean_logit_diff'].mean()):.2f}, corrupted {float(last['corrupt_logit_diff'].mean()):.2f}")
    for col in ("top-n", "edges kept", "nodes", "faithfulness", "circuit / clean"):
        table.add_column(col, justify="right")
    for s in last["size"].values:
        v = last.sel(size=s)
        table.add_row(str(s), str(int(v["n_edges"])), str(int(v["n_nodes"])), f"{float(v['faithfulness']):.3f}",
                      f"{float(v['fraction']):.3f}")
    out.print(table)
    flat = last["score"].stack(edge=("upstream", "downstream")).dropna("edge")
    top = np.argsort(-np.abs(flat.values))[:8]
    out.print("top edges: " + ", ".join(f"{u}→{d} {float(flat.values[i]):+.2f}"
                                        for i, (u, d) in zip(top, flat["edge"].values[top])), highlight=False)
    if "checkpoint" in ds.dims and ds.sizes["size"]:
        from nnsight_reasoning.plot_circuits import chosen_size

        size = chosen_size(ds)
        jac = nr.circuits.overlap(ds, size).values
        steps = [str(c) for c in ds["checkpoint"].values]
        out.print(f"overlap (Jaccard) of top-{size} circuits with the last checkpoint: " + ", ".join(
            f"{n} {jac[k, -1]:.2f}" for k, n in enumerate(steps)), highlight=False)

