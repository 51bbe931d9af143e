"""Progress bars that render in a terminal and in Jupyter (rich).

Bars nest: a bar started while another is running (a sweep's inner work under its bar over
revisions) becomes a second line of the same display, since rich allows one live display.
"""
from __future__ import annotations

import contextvars
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
# the rich Progress on screen in this context, if any (bars started under it become its lines)
_LIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("reason_interp_progress", default=None)


def progress_bar(items: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None,
                 label: Callable[[T], str] | None = None) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar (to stderr) unless ``enabled`` is False.

    ``label(item)`` is shown after the description while that item is worked on.
    """
    if not enabled:
        yield from items
        return
    items = list(items) if total is None else items
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    live = _LIVE.get()
    if live is not None:
        task = live.add_task(description, total=n)
        try:
            yield from _advance(live, task, items, description, label)
        finally:
            live.remove_task(task)  # an inner bar goes when its work is done; the outer one stays
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
            yield from _advance(bar, bar.add_task(description, total=n), items, description, label)
        finally:
            _LIVE.reset(token)


def _advance(bar: Any, task: Any, items: Iterable[T], description: str, label: Callable[[T], str] | None) -> Iterator[T]:
    for item in items:
        if label is not None:
            bar.update(task, description=f"{description} {label(item)}")
        yield item
        bar.advance(task)
