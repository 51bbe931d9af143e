"""``reason-interp``: commands only parse arguments, call the library and print.

Errors: one line on stderr; exit 2 for bad input, 1 for failures at run time. Set
``REASON_INTERP_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import circuits, mechanisms, reasoning
from .common import (Model, OutFile, Param, Progress, Remote, Restart, Revision, Revisions, Seed, Task, fail, guard,
                     out, out_path, revision_label, sweep_revisions, task_params)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability of reasoning in language models (nnsight; local or NDIF).")

@app.command()
@guard
def patch(
    task: Task = "arithmetic",
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    site: List[str] = typer.Option(["mlp", "attn"], help="site(s) to patch: mlp, attn, resid, head (repeatable)"),
    positions: str = typer.Option("last", help="last | all"),
    layer: List[int] = typer.Option([], help="layer(s) to patch (repeatable); default all"),
    n_prompts: int = typer.Option(64, help="number of prompt pairs"),
    seed: Seed = 0,
    intervention_type: Optional[str] = typer.Option(None, help="arithmetic: operands | same_result | operation"),
    n_operands: Optional[int] = typer.Option(None, help="arithmetic: 2 or 3 operands"),
    n_shots: Optional[int] = typer.Option(None, help="arithmetic: few-shot exemplars"),
    max_n: Optional[int] = typer.Option(None, help="arithmetic: largest operand"),
    representation: Optional[str] = typer.Option(None, help="arithmetic: arabic | words"),
    template: List[str] = typer.Option([], help="arithmetic: template with {expr} (repeatable)"),
    param: Param = [],
    metric: str = typer.Option("stolfo_ie", help="stolfo_ie | logit_diff"),
    method: str = typer.Option("exact", help="exact (activation patching) | attribution (gradient estimate)"),
    ig_steps: int = typer.Option(1, help="attribution: 1 = plain; m > 1 = integrated gradients over m steps"),
    batch_size: int = typer.Option(512, help="most sequences per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    restart: Restart = False,
    progress: Progress = True,
) -> None:
    """Activation patching / causal mediation (Stolfo et al. 2023) over layers and positions;
    --method attribution for the gradient estimate (one forward + backward per batch)."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.sites import check_sites

    check_sites(site)
    if positions not in ("last", "all"):
        raise UsageError(f"--positions must be last or all (got {positions!r})")
    if metric not in nr.METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from: {', '.join(nr.METRICS)}")
    info = nr.tasks.get_task(task)
    if info.pairs is None:
        raise UsageError(f"task {task!r} has no prompt pairs for patching yet; patchable: "
                         f"{', '.join(n for n, t in nr.tasks.TASKS.items() if t.pairs)}")
    params = task_params(param, intervention_type=intervention_type, n_operands=n_operands, n_shots=n_shots,
                          max_n=max_n, representation=representation, templates=template or None)
    info.check_params({**params, "n_prompts": n_prompts, "seed": seed})
    names = sweep_revisions(model, revision, revisions)
    kind = "patch" if method == "exact" else "attribution"  # its own default file: never overwrites exact results
    path = out_path(out_file, kind, task, model or "embedded", revision_label(revision, names))
    t0 = time.time()
    m = nr.load_model(model, names[-1] if names else revision)
    pairs = info.pairs(n_prompts=n_prompts, seed=seed, tokenizer=m.tokenizer, **params)
    if names:
        m = model  # a sweep loads each revision itself, one at a time
    parts = _parts(path, restart)
    ds = nr.patch(m, pairs, sites=site, positions=positions, metric=metric, method=method, ig_steps=ig_steps,
                  layers=layer or None,
                  batch_size=batch_size, remote=remote, progress=progress, resume_dir=parts, revisions=names)
    nr.save_result(ds, path)
    shutil.rmtree(parts, ignore_errors=True)  # merged into the results file
    what = f"{ds.attrs['n_forward_passes']} forward passes"
    if names:
        what = f"{len(names)} checkpoints × {what}"
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({what}{_resumed(ds)}{_traffic(ds)})",
              highlight=False)
    _summary(ds)


def _parts(results: Path, restart: bool) -> Path:
    """Where finished work of ``results`` is kept until the file is written (resume on rerun)."""
    from nnsight_reasoning.parts import parts_dir

    d = parts_dir(results)
    if restart:
        shutil.rmtree(d, ignore_errors=True)
    return d


def _resumed(ds) -> str:
    if "checkpoint" in ds.dims:
        n = ds.attrs.get("n_resumed_revisions", 0)
        return f"; {n} checkpoints resumed from finished parts" if n else ""
    n = ds.attrs.get("n_resumed_passes", 0)
    return f", {n} of them resumed from finished parts" if n else ""


def _traffic(ds) -> str:
    if "remote_jobs" not in ds.attrs:
        return ""
    return (f"; NDIF: {ds.attrs['remote_jobs']} requests, {ds.attrs['remote_bytes_sent'] / 1e3:.1f} kB up, "
            f"{ds.attrs['remote_bytes_received'] / 1e3:.1f} kB down")


def _summary(ds, top: int = 8) -> None:
    """Clean performance and the sites with the largest mean effect."""
    import numpy as np

    from nnsight_reasoning.results import site_variables

    p = ds["clean_p_base"]
    sweep = "checkpoint" in ds.dims
    clean = (" · ".join(f"{c} {v:.3f}" for c, v in zip(ds["checkpoint"].values, p.mean("prompt").values))
             if sweep else f"{float(p.mean()):.3f}")
    out.print(f"{ds.attrs['task']} · {ds.attrs['model']}@{ds.attrs['revision']} · {ds.sizes['prompt']} pairs · "
              f"metric = {ds.attrs['metric']} · mean P(base answer) = {clean}", highlight=False)
    rows = []
    for v in site_variables(ds):
        da = ds[v].isel(checkpoint=-1) if "checkpoint" in ds[v].dims else ds[v]
        mean, median = da.mean("prompt"), da.median("prompt")
        for idx in np.ndindex(mean.shape):
            val = float(mean.values[idx])
            if np.isfinite(val):
                coords = {d: mean[d].values[i] for d, i in zip(mean.dims, idx)}
                rows.append((abs(val), val, float(median.values[idx]), v, coords))
    rows.sort(key=lambda r: -r[0])
    at = f" at checkpoint {ds['checkpoint'].values[-1]}" if sweep else ""
    table = Table(title=f"top {top} sites by |mean effect|{at}")
    # stolfo_ie divides by probabilities that are tiny on a confident model, so a few
    # prompts can dominate the mean; the median shows the typical prompt.
    for col in ("site", "layer", "position", "token", "head", "mean effect", "median"):
        table.add_column(col)
    for _, val, med, v, c in rows[:top]:
        pos = int(c["position"])
        j = list(ds["position"].values).index(pos)
        tokens = set(str(t) for t in ds["token"].values[:, j] if t)
        tok = tokens.pop() if len(tokens) == 1 else "(varies)"
        table.add_row(v, str(c["layer"]), "last" if pos == -1 else str(pos), tok,
                      str(c.get("head", "")), f"{val:+.4g}", f"{med:+.4g}")
    out.print(table)


@app.command()
@guard
def evaluate(
    task: Task = "arithmetic",
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_prompts: int = typer.Option(200, help="number of prompts"),
    seed: Seed = 0,
    param: Param = [],
    batch_size: int = typer.Option(256, help="most prompts per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    restart: Restart = False,
    progress: Progress = True,
) -> None:
    """Task performance: accuracy, mean probability and rank of the correct answer.

    With --revisions, over training checkpoints (a learning curve; written to --out, default
    under results/, and drawn by `reason-interp plot`).
    """
    import nnsight_reasoning as nr

    params = task_params(param)
    nr.tasks.get_task(task).check_params({**params, "seed": seed})
    names = sweep_revisions(model, revision, revisions)
    # a sweep always writes a file (default name under results/), so that it can resume
    path = None
    if out_file is not None or names:
        path = out_path(out_file, "evaluate", task, model or "embedded", revision_label(revision, names))
    parts = _parts(path, restart) if path is not None else None
    m = model if names else nr.load_model(model, revision)
    ds = nr.evaluate(m, task, n_prompts, seed=seed, batch_size=batch_size, remote=remote, progress=progress,
                     resume_dir=parts, revisions=names, **params)
    if names:
        table = Table(title=f"{task} · {ds.attrs['model']} · {n_prompts} prompts over training")
        for col in ("checkpoint", "accuracy", "mean P(answer)", "mean rank", "load s", "run s"):
            table.add_column(col, justify="right")
        for c in ds["checkpoint"].values:
            r = ds.sel(checkpoint=c)
            table.add_row(str(c), f"{float(r.accuracy):.3f}", f"{float(r.mean_p_answer):.3f}",
                          f"{float(r.mean_rank):.2f}", f"{float(r.seconds_load):.2f}", f"{float(r.seconds_run):.2f}")
        out.print(table)
        if ds.attrs.get("n_resumed_revisions"):
            out.print(f"{ds.attrs['n_resumed_revisions']} checkpoints resumed from finished parts", highlight=False)
    else:
        out.print(f"{task} · {ds.attrs['model']}@{ds.attrs['revision']} · {n_prompts} prompts: "
                  f"accuracy {float(ds.accuracy):.3f} · mean P(answer) {float(ds.mean_p_answer):.3f} · "
                  f"mean rank {float(ds.mean_rank):.2f}{_traffic(ds)}", highlight=False)
    if path is not None:
        out.print(f"wrote [bold]{nr.save_result(ds, path)}[/]", highlight=False)
        shutil.rmtree(parts, ignore_errors=True)


@app.command()
@guard
def tasks(name: Optional[str] = typer.Argument(None, help="show one task's parameters")) -> None:
    """List tasks, or document one task's parameters with their defaults."""
    from nnsight_reasoning.tasks import TASKS, get_task

    if name is None:
        table = Table(title="tasks")
        table.add_column("name")
        table.add_column("what")
        table.add_column("commands")
        for t in TASKS.values():
            # circuit takes any task with pairs; neurons and binding have their own prompt builders
            extra = {"cot_arithmetic": "neurons", "binding": "binding"}.get(t.name)
            table.add_row(t.name, t.summary, ", ".join(c for c, ok in (
                ("patch, circuit", t.pairs), ("evaluate", True), ("attention, probe", t.labelled), (extra, extra))
                if ok))
        out.print(table)
        return
    t = get_task(name)
    table = Table(title=f"{t.name}: {t.summary}")
    for col in ("parameter", "default", "meaning"):
        table.add_column(col)
    for k, (default, meaning) in t.params.items():
        table.add_row(k, json.dumps(default), meaning)
    out.print(table)


@app.command()
@guard
def models() -> None:
    """List the embedded model's revisions and their measured accuracy."""
    from nnsight_reasoning import embedded

    card = embedded.card()
    accs = card.get("accuracy", {})
    task_names = list(card.get("evals", {})) or sorted({t for r in accs.values() for t in r})
    revs = embedded.revisions()
    table = Table(title=f"embedded model ({card.get('parameters', '?')} parameters): accuracy per revision; "
                        f"load with nr.load_model(revision=...) or --revision")
    table.add_column("task \\ revision")
    for rev in revs:
        table.add_column(rev, justify="right")
    for t in task_names:
        table.add_row(t, *[f"{accs.get(rev, {}).get(t, float('nan')):.3f}" for rev in revs])
    out.print(table)
    out.print(f"files: {embedded.REVISIONS_DIR}", highlight=False)
    out.print("any other model: --model EleutherAI/pythia-160m --revision step3000, or a local directory",
              highlight=False)


@app.command()
@guard
def show(path: Path = typer.Argument(..., help="results file (.nc)")) -> None:
    """Summarise a results file: provenance, dimensions, top effects."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.results import site_variables

    ds = nr.load_result(path)
    table = Table(title=str(path), show_header=False)
    for k, v in ds.attrs.items():
        table.add_row(k, str(v))
    table.add_row("dims", ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    table.add_row("variables", ", ".join(ds.data_vars))
    out.print(table)
    if site_variables(ds):
        _summary(ds)


@app.command()
@guard
def plot(
    path: Path = typer.Argument(..., help="results file (.nc)"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="PNG file; default: beside the results file"),
    kind: Optional[str] = typer.Option(None, help="attention results: heatmap | entropy | mass; "
                                                  "circuit results: circuit | faithfulness | overlap"),
    prompt: int = typer.Option(0, help="attention heatmap: which prompt"),
) -> None:
    """Patching heatmap (layer × position per site), accuracy, attention (heatmap of one prompt,
    head entropy, mass per reasoning step), probe F1 per layer, head scores or a circuit (graph,
    faithfulness by size, overlap across checkpoints), as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import nnsight_reasoning as nr

    ds = nr.load_result(path)
    target = out_file or path.with_suffix(f".{kind}.png" if kind else ".png")
    nr.plot_result(ds, target, kind=kind, prompt=prompt)
    out.print(f"wrote [bold]{target}[/]", highlight=False)


app.command()(reasoning.attention)
app.command()(reasoning.probe)
app.command()(circuits.heads)
app.command()(circuits.circuit)
app.command()(mechanisms.neurons)
app.command()(mechanisms.binding)

remote_app = typer.Typer(no_args_is_help=True, help="NDIF remote execution: where runs go, what is served.")
app.add_typer(remote_app, name="remote")


@remote_app.command("status")
@guard
def remote_status(
    host: Optional[str] = typer.Option(None, help="NDIF URL; default NDIF_HOST, else nnsight's config"),
) -> None:
    """Which NDIF host --remote uses, whether it answers, and which models it serves."""
    from nnsight_reasoning import remote

    st = remote.status(host or True)
    out.print(f"host      {st['host']}", highlight=False)
    out.print(f"api key   {st['api_key']}", highlight=False)
    if not st["reachable"]:
        fail(f"NDIF at {st['host']} does not answer ({st['error']}); check NDIF_HOST or run locally", 1)
    out.print(f"answers   yes ({st['latency_ms']} ms)", highlight=False)
    # Plain lines, not a table: repo ids are often long local paths that a user copies,
    # and a table would cut them to the terminal width.
    out.print(f"serves    {len(st['models'])} models (state, revision, repo)", highlight=False)
    for m in st["models"]:
        out.print(f"  {m['state']:<12} {m['revision']:<12} {m['repo_id']}", highlight=False, soft_wrap=True)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury ours
    app()


if __name__ == "__main__":
    sys.exit(main())
