"""Output helpers shared by the ``htvs`` command modules: one-line errors, JSON, progress."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from htvs.errors import HTVSError

EXIT_BAD_INPUT = 2


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn project errors, and a module of an extra that is not installed, into one readable
    line on stderr and exit status 2."""
    try:
        yield
    except HTVSError as exc:
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ModuleNotFoundError as exc:
        from htvs.extras import extra_for, missing_extra_message

        extra = extra_for(exc)
        if extra is None:
            raise
        _stderr().print(f"[bold red]error:[/] {escape(missing_extra_message(exc.name, extra))}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Progress on stderr (see :func:`_step_progress`); yields a callback taking the items done."""
    with _step_progress(enabled, transient=True) as update:
        yield lambda done: update(description, done, total)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class LogLines:
    """Progress as plain lines, for a stderr that is not a terminal (a log file, a pod's log).

    Each step prints when it starts, at most every ``every_s`` seconds while it runs (items done
    of total, percent, rate, ETA from the rate since the step started) and when it finishes.
    """

    def __init__(self, write: Callable[[str], None], every_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every_s, self.clock = write, every_s, clock
        self.started: dict[str, tuple[float, int]] = {}
        self.last: dict[str, float] = {}
        self.finished: set[str] = set()

    def __call__(self, step: str, done: int, total: int | None) -> None:
        now = self.clock()
        if step not in self.started:
            self.started[step] = (now, done)
            self.last[step] = now
            self.write(f"{step}: started" + (f", {total:,} to do" if total is not None else ""))
        if total is None:
            return
        if done >= total:
            if step not in self.finished:
                self.finished.add(step)
                self.write(f"{step}: {done:,}/{total:,} done in {_format_seconds(now - self.started[step][0])}")
            return
        self.finished.discard(step)
        if now - self.last[step] < self.every_s:
            return
        self.last[step] = now
        t0, done0 = self.started[step]
        rate = (done - done0) / (now - t0) if now > t0 else 0.0
        eta = f", ETA {_format_seconds((total - done) / rate)}" if rate > 0 else ""
        pct = 100.0 * done / total if total else 100.0
        self.write(f"{step}: {done:,}/{total:,} ({pct:.0f} %), {rate:,.1f}/s{eta}")


@contextmanager
def _step_progress(
    enabled: bool, transient: bool = False
) -> Iterator[Callable[[str, int, int | None], None]]:
    """A callback ``(step, done, total)`` showing one progress line per step on stderr.

    On a terminal: rich bars with counts, elapsed time and ETA. Otherwise (stderr redirected to
    a file or a pod's log): :class:`LogLines`, so a long run can be followed with ``tail -f``.
    """
    if not enabled:
        yield lambda step, done, total: None
        return
    console = _stderr()
    if not console.is_terminal:
        def write(line: str) -> None:
            sys.stderr.write(time.strftime("%H:%M:%S ") + line + "\n")
            sys.stderr.flush()

        yield LogLines(write)
        return
    columns = (TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as bar:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update

