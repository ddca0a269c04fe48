"""The ``htvs`` command line (typer). Every command is a thin shell around a stage function.

Errors raised on purpose (:class:`htvs.errors.HTVSError`) print one line naming the offending
value and exit with status 2; ``--json`` output goes to stdout and nothing else does.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from htvs.errors import HTVSError

app = typer.Typer(
    name="htvs",
    help="High-throughput virtual screening for lithium solid electrolytes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2


def _stderr() -> Console:
    return Console(stderr=True)


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


@app.command()
def prototypes(
    source: str = typer.Option(
        "bundled", "--source", "-s", help="'bundled', 'mp' (needs MP_API_KEY) or a folder of CIF/JSON files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    list_ids: bool = typer.Option(False, "--ids", help="Include every prototype id in the output."),
) -> None:
    """Load Li-containing ternary/quaternary prototypes and report what was loaded or skipped."""
    from htvs.prototypes import load_prototypes

    with _clear_errors():
        loaded = load_prototypes(source)
    by_size: dict[str, int] = {}
    for proto in loaded.prototypes:
        key = {3: "ternary", 4: "quaternary"}.get(proto.n_elements, f"{proto.n_elements}-ary")
        by_size[key] = by_size.get(key, 0) + 1
    payload = {
        "source": source,
        "prototypes": len(loaded.prototypes),
        "by_elements": by_size,
        "skipped": [{"name": s.name, "reason": s.reason} for s in loaded.skipped],
    }
    if list_ids:
        payload["ids"] = [p.id for p in loaded.prototypes]
    if as_json:
        _emit_json(payload)
        return
    console = Console()
    console.print(
        f"{len(loaded.prototypes)} prototypes from {source!r} "
        + ", ".join(f"{n} {k}" for k, n in sorted(by_size.items()))
        + f"; {len(loaded.skipped)} inputs skipped"
    )
    if loaded.skipped:
        table = Table("skipped input", "reason")
        for skipped in loaded.skipped[:20]:
            table.add_row(skipped.name, skipped.reason)
        console.print(table)
        if len(loaded.skipped) > 20:
            console.print(f"... and {len(loaded.skipped) - 20} more (use --json for all)")
    if list_ids:
        console.print(" ".join(payload["ids"]))


def _split_symbols(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


@app.command()
def substitute(
    prototypes_source: str = typer.Option(
        "bundled", "--prototypes", "-p", help="'bundled', 'mp' (needs MP_API_KEY) or a folder of CIF/JSON files."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the Parquet tables."),
    pool: str | None = typer.Option(
        None, help="Comma-separated element pool (default: the paper's 28 elements)."
    ),
    kept: str = typer.Option("Li", help="Element whose sites are kept."),
    required: str | None = typer.Option("S", help="Element exactly one other species becomes."),
    rule: str = typer.Option("one_required", help="'one_required' (the paper's) or 'all_distinct'."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Stage 1: enumerate elemental substitutions and reduce them to unique formulas (Parquet)."""
    from htvs.prototypes import load_prototypes
    from htvs.substitution import SubstitutionConfig, SubstitutionRule, substitute as run
    from htvs.substitution.tables import write_substitution_tables

    with _clear_errors():
        try:
            rule_value = SubstitutionRule(rule)
        except ValueError:
            raise typer.BadParameter(
                f"unknown rule {rule!r}; choose from {[r.value for r in SubstitutionRule]}",
                param_hint="--rule",
            ) from None
        config_args: dict[str, Any] = {"kept_element": kept, "required_element": required, "rule": rule_value}
        symbols = _split_symbols(pool)
        if symbols is not None:
            config_args["element_pool"] = symbols
        config = SubstitutionConfig(**config_args)
        loaded = load_prototypes(prototypes_source)
        for skipped in loaded.skipped:
            _stderr().print(f"skipped {skipped.name}: {skipped.reason}", highlight=False)
        with _progress("substituting prototypes", len(loaded.prototypes), not as_json) as tick:
            result = run(loaded.prototypes, config, progress=tick)
        paths = write_substitution_tables(result, out)
    payload = {
        "prototypes": len(loaded.prototypes),
        "substitutions": result.n_substitutions,
        "unique_formulas": result.n_unique,
        "tables": {name: str(path) for name, path in paths.items()},
    }
    if as_json:
        _emit_json(payload)
    else:
        Console().print(
            f"{payload['prototypes']:,} prototypes -> {payload['substitutions']:,} substitutions -> "
            f"{payload['unique_formulas']:,} unique formulas; tables in {out}"
        )


def main() -> None:  # pragma: no cover - console entry point
    app()
