"""Progress bars that render in a terminal and in Jupyter (rich).

Bars nest: a bar started while another is running (a sweep's inner work under its bar over
revisions) becomes a second line of the same display, since rich allows one live display.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
# the rich Progress on screen in this context, if any (bars started under it become its lines)
_LIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("reason_interp_progress", default=None)
# bars off whatever callers ask (work running on a Dask worker, whose output is a log)
_SILENT: contextvars.ContextVar[bool] = contextvars.ContextVar("reason_interp_silent", default=False)


@contextmanager
def silenced() -> Iterator[None]:
    """No progress bars inside (a unit of work on a cluster worker)."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


@contextmanager
def hf_bars_off() -> Iterator[None]:
    """No transformers progress bars inside (its per-tensor "Loading weights", "Writing model
    shards"); the user's setting is back afterwards. For work the toolkit shows a bar of its own
    over: one such bar per revision of a sweep would bury it. The Hub's download bars stay as the
    user set them (transformers' switch turns both off): a revision being downloaded is news."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    shown, downloads_shown = hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if downloads_shown:
        hub.enable_progress_bars()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # also the Hub's: set them back as they were
        if not downloads_shown:
            hub.disable_progress_bars()


def progress_bar(items: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None,
                 label: Callable[[T], str] | None = None) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar (to stderr) unless ``enabled`` is False.

    ``label(item)`` is shown after the description while that item is worked on.
    """
    if not enabled or _SILENT.get():
        yield from items
        return
    items = list(items) if total is None else items
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    with counter(description, n) as step:
        for item in items:
            if label is not None:
                step(0, label(item))
            yield item
            step()


@contextmanager
def counter(description: str, total: int, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A bar advanced by hand: ``step(n=1, note=None)`` counts n items done and shows ``note``
    after the description. Started under a bar on screen, it is a line of that display, gone
    when its work is done; the outer one stays."""
    nested = _LIVE.get() is not None  # a line of a display on screen already
    with display(enabled) as live:
        if live is None:
            yield lambda n=1, note=None: None
            return
        task = live.add_task(description, total=total)

        def step(n: int = 1, note: str | None = None) -> None:
            live.update(task, advance=n, **({} if note is None else {"description": f"{description} {note}"}))

        try:
            yield step
        finally:
            if nested:
                live.remove_task(task)


@contextmanager
def display(enabled: bool = True) -> Iterator[Any]:
    """The live display bars started inside join as lines of their own (also from threads that
    run in a copy of this context): the one on screen if there is one, else a new one; None
    when disabled."""
    if not enabled or _SILENT.get():
        yield None
        return
    if _LIVE.get() is not None:
        yield _LIVE.get()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    # In Jupyter, rich's capture of stdout/stderr re-enters its own display when an nnsight trace
    # writes (RecursionError in every notebook cell with a bar), so output is left alone there.
    redirect = not console.is_jupyter
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False, redirect_stdout=redirect,
                  redirect_stderr=redirect) as bar:
        token = _LIVE.set(bar)
        try:
            yield bar
        finally:
            _LIVE.reset(token)
