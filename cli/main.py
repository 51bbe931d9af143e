"""``reason-interp``: commands only parse arguments, call the library and print.

Errors: one line on stderr; exit 2 for bad input, 1 for failures at run time. Set
``REASON_INTERP_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability of reasoning in language models (nnsight; local or NDIF).")
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn):
    """Run a command body, turning library errors into one-line messages and exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from nnsight_reasoning.errors import RunError, UsageError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UsageError as e:
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            _fail(str(e), 2)
        except KeyboardInterrupt:
            _fail("interrupted; no results file was written (finished parts are kept beside --out: "
                  "the same command resumes)", 1)
        except RunError as e:  # already a one-line message written for the user
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            _fail(" ".join(str(e).split())[:800], 1)
        except Exception as e:  # anything unexpected: a run-time failure
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _fail(f"{type(e).__name__}: {first} (set REASON_INTERP_DEBUG=1 for a traceback)", 1)

    return wrapper


def _task_params(params: List[str], **explicit) -> dict:
    """Explicit task options that were given, plus generic ``--param key=value`` (JSON values)."""
    from nnsight_reasoning.errors import UsageError

    out_: dict = {k: v for k, v in explicit.items() if v not in (None, [], ())}
    for item in params:
        if "=" not in item:
            raise UsageError(f"--param takes KEY=VALUE (got {item!r})")
        k, v = item.split("=", 1)
        try:
            out_[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out_[k.strip()] = v
    return out_


def _out_path(out_file: Optional[Path], kind: str, task: str, model: str, revision: str) -> Path:
    from nnsight_reasoning.errors import UsageError

    if out_file is None:
        safe = Path(model).name if model != "embedded" else "embedded"
        out_file = Path("results") / f"{kind}_{task}_{safe}_{revision or 'main'}.nc"
    if out_file.suffix != ".nc":
        raise UsageError(f"--out must be a .nc file (got {out_file})")
    return out_file


# Options shared by the experiment commands.
Task = Annotated[str, typer.Option(help="task name (see `reason-interp tasks`)")]
Model = Annotated[Optional[str], typer.Option(help="HF id or local directory; default: the embedded model")]
Revision = Annotated[Optional[str], typer.Option(help="checkpoint, e.g. step1000 (embedded) or step3000 (Pythia)")]
Revisions = Annotated[Optional[str], typer.Option(
    help="checkpoint sweep: R1,R2,… | all | stepSTART:STOP:EVERY; results gain a checkpoint dim (training order)")]
Seed = Annotated[int, typer.Option(help="random seed: same seed -> same prompts -> same numbers")]
Param = Annotated[List[str], typer.Option(help="any task parameter as KEY=VALUE, JSON value (repeatable)")]
Remote = Annotated[bool, typer.Option("--remote", help="run on NDIF: host NDIF_HOST, key NDIF_API_KEY "
                                     "(see `reason-interp remote status`)")]
Restart = Annotated[bool, typer.Option("--restart", help="discard finished parts of an earlier interrupted run "
                                       "of this --out instead of resuming from them")]
OutFile = Annotated[Optional[Path], typer.Option("--out", help="results file (.nc)")]
Progress = Annotated[bool, typer.Option(help="show a progress bar")]


@app.command()
@_guard
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
    batch_size: int = typer.Option(512, help="most sequences per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    restart: Restart = False,
    progress: Progress = True,
) -> None:
    """Activation patching / causal mediation (Stolfo et al. 2023) over layers and positions."""
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
    params = _task_params(param, intervention_type=intervention_type, n_operands=n_operands, n_shots=n_shots,
                          max_n=max_n, representation=representation, templates=template or None)
    info.check_params({**params, "n_prompts": n_prompts, "seed": seed})
    names = _revisions(model, revision, revisions)
    path = _out_path(out_file, "patch", task, model or "embedded", _revision_label(revision, names))
    t0 = time.time()
    m = nr.load_model(model, names[-1] if names else revision)
    pairs = info.pairs(n_prompts=n_prompts, seed=seed, tokenizer=m.tokenizer, **params)
    if names:
        m = model  # a sweep loads each revision itself, one at a time
    parts = _parts(path, restart)
    ds = nr.patch(m, pairs, sites=site, positions=positions, metric=metric, layers=layer or None,
                  batch_size=batch_size, remote=remote, progress=progress, resume_dir=parts, revisions=names)
    nr.save_result(ds, path)
    shutil.rmtree(parts, ignore_errors=True)  # merged into the results file
    what = f"{ds.attrs['n_forward_passes']} forward passes"
    if names:
        what = f"{len(names)} checkpoints × {what}"
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({what}{_resumed(ds)}{_traffic(ds)})",
              highlight=False)
    _summary(ds)


def _revisions(model: Optional[str], revision: Optional[str], revisions: Optional[str]) -> Optional[list]:
    """The checkpoints of a sweep (training order), or None for a single-revision run."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    if revisions is None:
        return None
    if revision is not None:
        raise UsageError("give --revision (one checkpoint) or --revisions (a sweep), not both")
    return nr.parse_revisions(revisions, model)


def _revision_label(revision: Optional[str], names: Optional[list]) -> str:
    if not names:
        return revision or "main"
    return names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"


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
@_guard
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

    params = _task_params(param)
    nr.tasks.get_task(task).check_params({**params, "seed": seed})
    names = _revisions(model, revision, revisions)
    # a sweep always writes a file (default name under results/), so that it can resume
    path = None
    if out_file is not None or names:
        path = _out_path(out_file, "evaluate", task, model or "embedded", _revision_label(revision, names))
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
@_guard
def tasks(name: Optional[str] = typer.Argument(None, help="show one task's parameters")) -> None:
    """List tasks, or document one task's parameters with their defaults."""
    from nnsight_reasoning.tasks import TASKS, get_task

    if name is None:
        table = Table(title="tasks")
        table.add_column("name")
        table.add_column("what")
        table.add_column("patch")
        for t in TASKS.values():
            table.add_row(t.name, t.summary, "yes" if t.pairs else "evaluate only")
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
@_guard
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
@_guard
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
@_guard
def plot(
    path: Path = typer.Argument(..., help="results file (.nc)"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="PNG file; default: beside the results file"),
) -> None:
    """Heatmap (layer × position, per site, mean over prompts) or accuracy plot, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import nnsight_reasoning as nr

    ds = nr.load_result(path)
    target = out_file or path.with_suffix(".png")
    nr.plot_result(ds, target)
    out.print(f"wrote [bold]{target}[/]", highlight=False)


remote_app = typer.Typer(no_args_is_help=True, help="NDIF remote execution: where runs go, what is served.")
app.add_typer(remote_app, name="remote")


@remote_app.command("status")
@_guard
def remote_status(
    host: Optional[str] = typer.Option(None, help="NDIF URL; default NDIF_HOST, else nnsight's config"),
) -> None:
    """Which NDIF host --remote uses, whether it answers, and which models it serves."""
    from nnsight_reasoning import remote

    st = remote.status(host or True)
    out.print(f"host      {st['host']}", highlight=False)
    out.print(f"api key   {st['api_key']}", highlight=False)
    if not st["reachable"]:
        _fail(f"NDIF at {st['host']} does not answer ({st['error']}); check NDIF_HOST or run locally", 1)
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
