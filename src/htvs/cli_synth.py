"""``htvs synth score`` and ``htvs train synthesizability``: the CLscore-like synthesizability model.

Thin shells around :mod:`htvs.synth`; the model loads only when a command runs, scikit-learn
only when training.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from htvs.cli_output import EXIT_BAD_INPUT, _clear_errors, _emit_json, _stderr

synth_app = typer.Typer(help="Synthesizability (CLscore-like PU model of compositions).", no_args_is_help=True)


def score(
    formulas: list[str] = typer.Argument(..., help="Compositions, e.g. Li3PS4 Li7La3Zr2O12."),
    model_dir: Path | None = typer.Option(None, "--model", help="Model folder (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help='One JSON object per formula: {"formula", "clscore"} '
                                 'or {"formula", "error"}.'),
) -> None:
    """CLscore of each composition (0..1; above 0.5: likely synthesizable).

    A formula that cannot be read, or holds an element without an embedding, is reported on
    stderr (an error object with --json) and the others are scored; the exit status is then 2.
    """
    with _clear_errors():
        from htvs.errors import RowError
        from htvs.synth.model import THRESHOLD, clscore, load_synth_model

        model = load_synth_model(model_dir)
        scores = clscore(formulas, model)
    table = Table("formula", "CLscore", f"> {THRESHOLD}")
    failed = False
    for formula, value in zip(formulas, scores, strict=True):
        if isinstance(value, RowError):
            failed = True
            _stderr().print(f"[bold red]error:[/] {value.message}", highlight=False)
            if as_json:
                _emit_json({"formula": formula, "error": value.message})
            continue
        if as_json:
            _emit_json({"formula": formula, "clscore": round(value, 6)})
        else:
            table.add_row(formula, f"{value:.3f}", "yes" if value > THRESHOLD else "no")
    if not as_json and table.row_count:
        Console().print(table)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def train_synthesizability(
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (weights.npz, model_card.json)."),
    seed: int = typer.Option(0, help="Seed of the held-out split, the unlabeled draws and the MLPs."),
    rounds: int = typer.Option(25, min=2, help="Bagging rounds (one MLP each)."),
    hidden: int = typer.Option(32, min=1, help="Hidden units of each MLP."),
    data_dir: Path | None = typer.Option(None, help="Folder with mp_structures/mp_structures.jsonl.gz "
                                         "(default: the checkout's data/ or $HTVS_DATA_DIR)."),
) -> None:
    """Train the synthesizability model (bagging PU learning, one thread) and write its model card."""
    with _clear_errors():
        from htvs.synth.train import train_synthesizability as run

        card = run(out, seed=seed, rounds=rounds, hidden=hidden, data_dir=data_dir,
                   log=lambda line: print(line, flush=True))
    print(json.dumps(card["metrics"], indent=1), flush=True)
    print(f"synthesizability model written to {out}", flush=True)


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add ``htvs synth score`` and ``htvs train synthesizability``."""
    synth_app.command("score")(score)
    app.add_typer(synth_app, name="synth")
    train_app.command("synthesizability")(train_synthesizability)
