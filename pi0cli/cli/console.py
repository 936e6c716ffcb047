"""Shared rich consoles (results to stdout, diagnostics to stderr) and the one progress drawer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from pi0cli.plugins.manager import Registry

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

__all__ = ["Progress", "err", "escape", "out", "registry", "warn"]


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def registry() -> Registry:
    """The plugin registry, with one warning line per plugin that failed to load."""
    from pi0cli.plugins.manager import get_registry

    registry = get_registry()
    for failure in registry.failures:
        warn(escape(failure.failure_message()))
    return registry


class Progress:
    """Progress of one long command: a bar on stderr when it is a terminal; plain lines on the ``lines``
    console (default stderr) when that one is not a terminal, so a log keeps the progress a bar would redraw in
    place. ``pi0 train`` sends its lines to stdout: ``pi0 train > log`` logs every step line.

    ``update(completed, **fields)`` or ``advance(n)``; ``line=True`` forces a plain line (training prints one
    per ``--log-interval``), otherwise plain lines come at most every ``every_s`` seconds and once at the end.
    The bar appears with the first update, so errors raised before any progress print alone.
    """

    def __init__(self, title: str, total: int | None = None, *, unit: str = "", completed: int = 0,
                 every_s: float = 10.0, transient: bool = False, lines: Console | None = None,
                 stderr: Console | None = None):
        self.title, self.total, self.unit, self.completed = title, total, unit, completed
        self.every_s, self.transient = every_s, transient
        self._err = stderr or err
        self._out = lines or self._err
        self.fields: dict[str, str] = {}
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        self._lines = not self._out.is_terminal
        self._last_line = float("-inf")
        self._started = time.perf_counter()
        self._dirty = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._lines and self._dirty and kind is None:
            self._line()

    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    def update(self, completed: int | None = None, *, total: int | None = None, line: bool = False,
               **fields: str) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self.fields.update({k: str(v) for k, v in fields.items()})
        self._dirty = True
        if self._err.is_terminal:
            self._draw()
        now = time.perf_counter()
        if self._lines and (line or now - self._last_line >= self.every_s):
            self._line()

    def _draw(self) -> None:
        extra = "  ".join(f"{k} {v}" for k, v in self.fields.items())
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{escape(self.title)}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(escape(self.unit)), TextColumn("{task.fields[extra]}"),
                                     TimeRemainingColumn(), console=self._err, transient=self.transient)
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=self.total, completed=self.completed, extra=extra)
        assert self._task is not None
        self._bar.update(self._task, total=self.total, completed=self.completed, extra=extra)

    def _line(self) -> None:
        self._last_line = time.perf_counter()
        self._dirty = False
        count = f"{self.completed}/{self.total}" if self.total is not None else str(self.completed)
        parts = [f"{self.title}: {count}" + (f" {self.unit}" if self.unit else "")]
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        parts.append(f"{self._last_line - self._started:.0f}s")
        self._out.print("  ".join(parts), markup=False, highlight=False)
