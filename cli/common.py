"""Pieces every ``reason-interp`` command shares: consoles, error handling, options, output paths."""
from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
import typer.core
from rich.console import Console

out = Console()
err = Console(stderr=True)


def show_item(item: Any, console: Console | None = None) -> None:
    """Print a summary item; a table with none of its values cut off. Rich shortens any column
    that does not fit the terminal with "…" (a mean effect of +3.221e+05 read "+3.221e…", a
    revision column of `models --all` nothing at all): here every column keeps its longest short
    cell (numbers, labels, up to 24 characters) whole, longer text folds within 16 or more, and a
    table that does not fit so is printed as wide as it needs (the terminal wraps it; piped, it is
    whole)."""
    from rich.table import Table

    console = console or out
    if not isinstance(item, Table):
        console.print(item, highlight=False)
        return
    need = 1 + 3 * len(item.columns)  # borders and padding
    for column in item.columns:
        column.overflow = "fold"
        texts = [column.header, *column.cells]
        longest = max(len(text.plain if hasattr(text, "plain") else str(text)) for text in texts)
        # short cells whole; longer text gets a readable share (16) and folds within it
        column.min_width = max(column.min_width or 0, longest if longest <= 24 else 16)
        need += column.min_width or 1
    console.print(item, highlight=False, width=max(console.width, need), crop=False)


def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _click() -> Any:
    """The click the commands run under: typer >= 0.24 vendors it (its context is the one a
    command sees); older versions use click itself."""
    try:
        from typer import _click as click
    except ImportError:
        import click
    return click


class OneLineErrors(typer.core.TyperGroup):
    """The command group whose parse errors (an unknown option, a value of the wrong type, a
    missing argument) are one line on stderr with exit 2, like every other bad input, instead
    of click's usage box; and whose help shows no value slot (typer >= 0.2x: ``<bool>``) for a
    flag, which takes none."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_without_metavar(command, ctx)
        return command

    def get_help(self, ctx: Any) -> str:
        _flags_without_metavar(self, ctx)
        return super().get_help(ctx)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        click = _click()
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:  # a bare group: its help (click >= 8.2)
            # the error was made with the help as its message; typer's rich help is printed while it is
            # made (and the message is then empty), a plain help is the message: printed once either way
            message = e.format_message()
            if message.strip():
                click.echo(message)
            sys.exit(0)
        except click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "reason-interp"
            err.print(f"[bold red]error:[/] {' '.join(e.format_message().split())} (see {where} --help)",
                      highlight=False, soft_wrap=True)
            sys.exit(2)
        except click.exceptions.ClickException as e:
            err.print(f"[bold red]error:[/] {' '.join(e.format_message().split())}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("[bold red]error:[/] aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # non-standalone click returns an Exit's code


def warn_line(message: Warning | str, category: type, *_: Any, **__: Any) -> None:
    """A warning as one line on stderr, as errors are (Python's shows its file and source line)."""
    err.print(f"[bold yellow]warning:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)


def _flags_without_metavar(command: Any, ctx: Any) -> None:
    """A flag's (``--force``, ``--no-progress``, ``--help``) empty value slot in the help."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def guard(fn):
    """Run a command body, turning library errors into one-line messages and exit codes, and
    warnings into one-line notes."""
    import functools
    import warnings

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from nnsight_reasoning.errors import RunError, UsageError

        try:
            with warnings.catch_warnings():
                warnings.showwarning = warn_line
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UsageError as e:
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            fail(str(e), 2)
        except KeyboardInterrupt:
            fail("interrupted; no results file was written (finished parts are kept beside --out: "
                  "the same command resumes)", 1)
        except RunError as e:  # already a one-line message written for the user
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            fail(" ".join(str(e).split())[:800], 1)
        except Exception as e:  # anything unexpected: a run-time failure
            if os.environ.get("REASON_INTERP_DEBUG"):
                raise
            from nnsight_reasoning.results.parts import disk_fault, disk_fault_message

            if disk_fault(e):  # before any part was kept (later ones say where the parts are)
                fail(disk_fault_message(e, "a file", "the same command runs again"), 1)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            fail(f"{type(e).__name__}: {first} (set REASON_INTERP_DEBUG=1 for a traceback)", 1)

    return wrapper


def typed(*names: str) -> list[str]:
    """The options among ``names`` (parameter names) that were given on the command line, as
    ``--option`` spellings, whatever their value (a default restated is still given)."""
    click = _click()
    ctx = click.globals.get_current_context(silent=True)
    if ctx is None:  # called outside a command (from Python): nothing was typed
        return []
    return [f"--{n.replace('_', '-')}" for n in names
            if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]


def given(**options: Any) -> dict:
    """The options that were given (not None), so that the library's own defaults apply to the rest."""
    return {k: v for k, v in options.items() if v is not None}


def int_ranges(text: str, option: str) -> list[int]:
    """``"17-18,20"`` -> ``[17, 18, 20]`` (comma-separated integers and inclusive ranges a-b); ""
    -> []. Anything else is a one-line error naming ``option``."""
    from nnsight_reasoning.errors import UsageError

    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UsageError(f"{option} takes integers and ranges like 17-18,20 (got {text!r})") from None
        if b < a:
            raise UsageError(f"{option}: range {part} runs backwards; write {b}-{a}")
        out += range(a, b + 1)
    return out


# task keywords the commands set with options of their own: a --param for one would reach the
# generator twice (a TypeError), so it is refused with the option's name
OWN_OPTIONS = {"n_prompts": "--n-prompts", "seed": "--seed", "tokenizer": "--model"}


def task_params(params: List[str], *, own: dict | None = None, **explicit) -> dict:
    """Explicit task options that were given, plus generic ``--param key=value`` (JSON values).
    ``own``: keywords the command sets itself, to the option that does (default :data:`OWN_OPTIONS`)."""
    from nnsight_reasoning.errors import UsageError

    own = OWN_OPTIONS if own is None else own
    out_: dict = {k: v for k, v in explicit.items() if v not in (None, [], ())}
    for item in params:
        if "=" not in item:
            raise UsageError(f"--param takes KEY=VALUE (got {item!r})")
        k, v = (s.strip() for s in item.split("=", 1))
        if k in own:
            raise UsageError(f"--param {k}: the command sets it with {own[k]}")
        if explicit.get(k) not in (None, [], ()):  # given twice: by its own option and by --param
            raise UsageError(f"--param {k} and the command's own option for {k} both set it: give it once")
        try:
            out_[k] = json.loads(v)
        except json.JSONDecodeError:
            out_[k] = v
    return out_


def pair_data(task: str, n_prompts: int, seed: int, params: dict) -> Callable[[Any], Any]:
    """``tokenizer -> prompt pairs`` of ``task`` with ``params``, checked before any model loads."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    info = nr.tasks.get_task(task)
    if info.pairs is None:
        raise UsageError(f"task {task!r} has no clean/corrupted prompt pairs; use one of: "
                         f"{', '.join(n for n, t in nr.tasks.TASKS.items() if t.pairs)}")
    info.check_params({**params, "n_prompts": n_prompts, "seed": seed})
    return lambda tokenizer: info.pairs(n_prompts=n_prompts, seed=seed, tokenizer=tokenizer, **params)


def example_data(task: str, n_prompts: int, seed: int, param: list[str]) -> Callable[[Any], Any]:
    """``tokenizer -> examples`` of ``task`` with the ``--param`` values, checked before any model loads."""
    import nnsight_reasoning as nr

    params = task_params(param)
    nr.tasks.get_task(task).check_params({**params, "seed": seed})
    return lambda tokenizer: nr.tasks.examples(task, n_prompts, seed=seed, tokenizer=tokenizer, **params)


def out_path(out_file: Optional[Path], kind: str, task: str, model: str, revision: str) -> Path:
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.results.io import writable

    if out_file is None:
        safe = Path(model).name if model != "embedded" else "embedded"
        out_file = Path("results") / f"{kind}_{task}_{safe}_{revision or 'main'}.nc"
    if out_file.suffix != ".nc":
        raise UsageError(f"--out must be a .nc file (got {out_file})")
    writable(out_file)
    return out_file


# Options shared by the experiment commands.
Task = Annotated[str, typer.Option(help="task name (see `reason-interp tasks`)")]
Model = Annotated[Optional[str], typer.Option(help="HF id or local directory; default: the embedded model")]
Models = Annotated[Optional[List[str]], typer.Option(
    "--model", help="HF id or local directory; default: the embedded model. Repeat for several models (--model A "
                    "--model B): one run each, results gain a leading model dim")]
Revision = Annotated[Optional[str], typer.Option(help="checkpoint, e.g. step1000 (embedded) or step3000 (Pythia)")]
Adapter = Annotated[Optional[str], typer.Option(help="PEFT adapter (LoRA …; directory or HF id) merged into --model "
                                                     "at load, e.g. Goat over LLaMA-7B; local runs only")]
Revisions = Annotated[Optional[str], typer.Option(
    help="checkpoint sweep: R1,R2,… | all | stepSTART:STOP:EVERY; results gain a checkpoint dim (training order)")]
Seed = Annotated[int, typer.Option(help="random seed: same seed -> same prompts -> same numbers")]
Param = Annotated[List[str], typer.Option(help="any task parameter as KEY=VALUE, JSON value (repeatable)")]
Remote = Annotated[bool, typer.Option("--remote", help="run on NDIF: host NDIF_HOST, key NDIF_API_KEY "
                                     "(see `reason-interp remote status`)")]
Restart = Annotated[bool, typer.Option("--restart", help="discard finished parts of an earlier interrupted run "
                                       "of this --out instead of resuming from them")]
Force = Annotated[bool, typer.Option("--force", help="overwrite --out if it exists (without it an existing results "
                                     "file is refused)")]
OutFile = Annotated[Optional[Path], typer.Option("--out", help="results file (.nc)")]
Progress = Annotated[bool, typer.Option(help="show a progress bar")]
DeviceMap = Annotated[Optional[str], typer.Option(
    help="place the model across this machine's GPUs and CPU (accelerate): auto | balanced | sequential, or a JSON "
         "object / JSON file mapping modules to devices (0, \"cuda:1\", \"cpu\", \"disk\")")]
Workers = Annotated[Optional[int], typer.Option(
    help="run the sweep's revisions and models as tasks on a local Dask cluster of N worker processes (one model "
         "in memory each); results equal the serial run's")]
Scheduler = Annotated[Optional[str], typer.Option(
    help="run them on a running Dask cluster instead: its scheduler's address, e.g. tcp://host:8786 (workers "
         "write parts beside --out: on several machines, a shared filesystem)")]
BatchSize = Annotated[Optional[int], typer.Option(help="most rows (sequences) per forward pass; remote: per NDIF request "
                                                  "(default: the experiment's)")]


@dataclass(frozen=True)
class Harness:
    """The options every experiment command shares, as parsed (:data:`HARNESS`)."""

    model: Optional[List[str]] = None
    adapter: Optional[str] = None
    revision: Optional[str] = None
    revisions: Optional[str] = None
    batch_size: Optional[int] = None
    remote: bool = False
    out_file: Optional[Path] = None
    restart: bool = False
    force: bool = False
    progress: bool = True
    workers: Optional[int] = None
    scheduler: Optional[str] = None
    device_map: Optional[str] = None

    def run(self, experiment: Callable[..., Any], data: Callable[[Any], Any], *, kind: str, task: str,
            **options: Any) -> Any:
        """:func:`run_command` with these options."""
        return run_command(experiment, data, kind=kind, task=task, **vars(self), **options)


@dataclass(frozen=True)
class OptionGroup:
    """Options several commands share: ``options`` (name -> (annotated type, default)) are added
    to each command's signature, and the command receives ``build(**values)`` as ``name``."""

    name: str
    options: dict[str, tuple[Any, Any]]
    build: Callable[..., Any]


# the options of every experiment command
HARNESS = OptionGroup("h", dict(
    model=(Models, None), adapter=(Adapter, None), revision=(Revision, None), revisions=(Revisions, None), batch_size=(BatchSize, None),
    remote=(Remote, False), out_file=(OutFile, None), restart=(Restart, False), force=(Force, False),
    progress=(Progress, True), workers=(Workers, None), scheduler=(Scheduler, None),
    device_map=(DeviceMap, None)), Harness)


def experiment_command(*groups: OptionGroup) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A typer command from ``fn(h: Harness, <group names>, **own_options)``: the options of
    :data:`HARNESS` (model, revision, revisions, batch size, remote, out, restart, progress) and
    of ``groups`` are added after the command's own, so no command repeats them, and errors
    become one line (:func:`guard`)."""
    groups = groups + (HARNESS,)

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        names = {g.name for g in groups}
        # eval_str: the commands' annotations are strings (PEP 563), and typer keeps the
        # help of an Annotated option only when it gets the evaluated type
        own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name not in names]
        shared = [(name, a, d) for g in groups for name, (a, d) in g.options.items()]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                 for name, a, d in shared]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            built = {g.name: g.build(**{k: kwargs.pop(k) for k in g.options}) for g in groups}
            return fn(**built, **kwargs)

        command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        command.__annotations__ = {**{p.name: p.annotation for p in own}, **{n: a for n, a, _ in shared}}
        return guard(command)

    return wrap


def run_command(experiment: Callable[..., Any], data: Callable[[Any], Any], *, kind: str, task: str,
                model: Optional[List[str]], adapter: Optional[str], revision: Optional[str], revisions: Optional[str],
                out_file: Optional[Path], restart: bool, remote: bool, progress: bool, batch_size: Optional[int],
                force: bool = False, workers: Optional[int] = None, scheduler: Optional[str] = None,
                device_map: Optional[str] = None, **options: Any) -> Any:
    """What every experiment command does once its options are parsed: pick the revisions and
    the results path, load the model (for its tokenizer), make the data with ``data(tokenizer)``,
    run ``experiment(model, data, **options)`` with the harness options (finished passes kept
    in ``<out>.parts`` until the file is written), write the file and print the experiment's
    summary. Several ``--model``: the harness runs each with data made by its own tokenizer,
    one model in memory at a time (``runner.over_models``)."""
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.results.parts import writer_lock

    if isinstance(model, str):  # a single name, as Python callers of Harness pass it
        model = [model]
    models = list(model or [None])
    if adapter and revisions:
        raise UsageError("--adapter is fine-tuned on one base checkpoint: use --revision, not --revisions")
    if adapter and len(models) > 1:
        raise UsageError("--adapter is fine-tuned on one base model: give one --model with it")
    from nnsight_reasoning.models import parse_device_map

    load = {"device_map": parse_device_map(device_map)} if device_map is not None else {}
    if load and remote:
        raise UsageError("--device-map places the model here; NDIF places it on its own GPUs: drop one of them")
    names = [sweep_revisions(m, revision, revisions) for m in models][-1]
    label = "+".join(Path(m).name if m else "embedded" for m in models)
    path = out_path(out_file, kind, task, label, revision_label(revision, names))
    with writer_lock(path):  # a second run on this --out is refused, never interleaved
        return _run_locked(experiment, data, path=path, models=models, names=names, adapter=adapter, revision=revision,
                           revisions=revisions, restart=restart, remote=remote, progress=progress,
                           batch_size=batch_size, force=force, options=options,
                           cluster={"workers": workers, "scheduler": scheduler}, load=load)


def _run_locked(experiment: Callable[..., Any], data: Callable[[Any], Any], *, path: Path, models: list,
                names: Any, adapter: Optional[str], revision: Optional[str], revisions: Optional[str], restart: bool,
                remote: bool, progress: bool, batch_size: Optional[int], force: bool, options: dict,
                cluster: dict, load: dict) -> Any:
    """:func:`run_command` once its output is checked and locked."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import RunError, UsageError
    from nnsight_reasoning.experiments import summarize
    from nnsight_reasoning.results.parts import disk_fault, disk_fault_message, parts_dir

    if path.exists() and not force:  # checked under the lock: no other run can be writing it now
        raise UsageError(f"{path} exists: pass --force to overwrite it, or choose another --out")
    parts = parts_dir(path)
    if restart:
        shutil.rmtree(parts, ignore_errors=True)
    t0 = time.time()
    if len(models) > 1:
        if revision:
            raise UsageError("with several --model, give a checkpoint as --revisions REV (every model has it) "
                             "instead of --revision")
        loaded, made = [], data  # the harness makes each model's data
        for m in models:  # every model loads (lazily: no weights) and makes its data before any work
            lazy = nr.load_model(m, sweep_revisions(m, None, revisions)[-1] if revisions else None, **load)
            data(lazy.tokenizer)
            # by name, unless load options must travel with it (a sweep loads each revision so)
            loaded.append(lazy if load else m or "embedded")
        names = revisions  # each model parses the sweep against its own revisions
    else:
        loaded = nr.load_model(models[0], names[-1] if names else revision, **({"adapter": adapter} if adapter else {}),
                               **load)
        made = data(loaded.tokenizer)
        if names and not load:  # a sweep loads each revision itself: hold no model meanwhile (one in memory at
            loaded = models[0] or "embedded"  # a time); a lazily loaded model (no weights) carries load options
    harness = {"remote": remote, "progress": progress, "resume_dir": parts, "revisions": names, **cluster}
    if batch_size is not None:
        harness["batch_size"] = batch_size
    ds = experiment(loaded, made, **options, **harness)
    try:
        nr.save_result(ds, path)
    except OSError as e:
        if not disk_fault(e):
            raise
        kept = (f"the finished parts are kept in {parts}; the same command writes it from them" if parts.is_dir()
                else "the same command runs again")
        raise RunError(disk_fault_message(e, path, kept)) from None
    shutil.rmtree(parts, ignore_errors=True)  # merged into the results file
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({_passes(ds)}{_traffic(ds)})", highlight=False)
    for item in summarize(ds):
        show_item(item)
    return ds


def _passes(ds: Any) -> str:
    if "model" in ds.dims:
        n = ds.attrs.get("n_resumed_models", 0)
        return f"{ds.sizes['model']} models" + (f"; {n} models resumed from finished parts" if n else "")
    if "checkpoint" in ds.dims:
        n = ds.attrs.get("n_resumed_revisions", 0)
        return f"{ds.sizes['checkpoint']} checkpoints" + (f"; {n} checkpoints resumed from finished parts" if n else "")
    n, k = ds.attrs.get("n_resumed_passes", 0), ds.attrs.get("n_forward_passes", 0)
    return f"{k} forward pass{'es' if k != 1 else ''}" + (
        f", {n} of them resumed from finished parts" if n else "")


def _traffic(ds: Any) -> str:
    if "remote_jobs" not in ds.attrs:
        return ""
    return (f"; NDIF: {ds.attrs['remote_jobs']} requests, {ds.attrs['remote_bytes_sent'] / 1e3:.1f} kB up, "
            f"{ds.attrs['remote_bytes_received'] / 1e3:.1f} kB down")


def sweep_revisions(model: Optional[str], revision: Optional[str], revisions: Optional[str]) -> Optional[list]:
    """The checkpoints of a sweep (training order), or None for a single-revision run."""
    from nnsight_reasoning.errors import UsageError

    if revisions is None:
        return None
    if revision is not None:
        raise UsageError("give --revision (one checkpoint) or --revisions (a sweep), not both")
    from nnsight_reasoning.results.checkpoints import parse_revisions

    return parse_revisions(revisions, model)


def revision_label(revision: Optional[str], names: Optional[list]) -> str:
    if not names:
        return revision or "main"
    return names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
