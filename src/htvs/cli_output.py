"""Output helpers shared by the ``htvs`` command modules: one-line errors, JSON, progress bars."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from htvs.errors import HTVSError

EXIT_BAD_INPUT = 2


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn project errors into one readable line on stderr and exit status 2."""
    try:
        yield
    except HTVSError as exc:
        _stderr().print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields a callback taking the number of items done."""
    if not enabled:
        yield lambda done: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_stderr(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)

