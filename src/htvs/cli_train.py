"""``htvs train ...``: training, evaluation and export of the composition and conductivity models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from htvs.cli_output import (
    _clear_errors,
    _emit_json,
    _stderr,
)

train_app = typer.Typer(help="Train the project's models (fixed seeds, resumable).", no_args_is_help=True)


@train_app.command("composition")
def train_composition(
    target: str = typer.Option("ef", help="ef | ef-bartel | gap-mp | gap-expt | gap-expt-all (k-fold)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, metrics.json)."),
    n_models: int = typer.Option(10, help="Ensemble size (the paper: 10)."),
    max_epochs: int = typer.Option(60, help="Epochs per model (cosine schedule over this)."),
    patience: int = typer.Option(8, help="Early stopping: epochs without validation improvement."),
    batch_size: int = typer.Option(256),
    learning_rate: float = typer.Option(1e-3),
    seed: int = typer.Option(0, help="Seed of the ensemble (member k uses 1000*seed + k)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    init_from: Path | None = typer.Option(None, help="Pretraining run: member k starts from its model_k."),
    cv_fold: int | None = typer.Option(None, help="Test fold for k-fold targets (gap-expt-all)."),
    cv_folds: int = typer.Option(5, help="Number of folds for k-fold targets."),
    device: str = typer.Option("cpu", help="cpu | cuda: where members train and the test split is scored."),
    time_budget: float | None = typer.Option(
        None, help="Wall-clock budget in seconds: members keep their best completed epochs when it runs out."
    ),
    engine: str = typer.Option(
        "aviary",
        help="aviary: one member after another through aviary's Roost (the default). stacked: all "
        "members at once in one process on the split featurized once (RUN/data.npz), their weights "
        "stacked; same seeds, mini-batches, loss and optimizer per member, a checkpoint every epoch "
        "and at the --time-budget (rerun the same command to continue). Both write model_K/best.pt, "
        "so `htvs train evaluate` and `htvs train export` work on either; a run keeps its engine.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics JSON on stdout."),
) -> None:
    """Train (or resume) a Roost ensemble on a bundled dataset and score it on the test split."""
    import time

    from htvs.composition.train import TrainConfig, train_ensemble
    from htvs.errors import InvalidInput, finite_number

    with _clear_errors():
        config = TrainConfig(
            target=target,
            n_models=n_models,
            max_epochs=max_epochs,
            patience=patience,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            threads=threads,
            init_from=str(init_from) if init_from else None,
            cv_fold=cv_fold,
            cv_folds=cv_folds,
            device=device,
        )
        deadline = None
        if time_budget is not None:
            if finite_number("time_budget", time_budget) <= 0:
                raise InvalidInput(f"time_budget must be > 0 seconds, got {time_budget}")
            deadline = time.time() + time_budget
        log = (lambda line: _stderr().print(line, highlight=False))
        if engine == "stacked":
            from htvs.composition.stacked import train_stacked

            metrics = train_stacked(out, config, log=log, deadline=deadline)
        elif engine == "aviary":
            if (out / "stacked").is_dir():
                raise InvalidInput(f"{out} was started with --engine stacked; resume it with --engine stacked")
            metrics = train_ensemble(out, config, log=log, deadline=deadline)
        else:
            raise InvalidInput(f"engine must be aviary or stacked, got {engine!r}")
    if as_json:
        _emit_json(metrics)
    else:
        Console().print_json(json.dumps(metrics.get("test", metrics)))


@train_app.command("evaluate")
def train_evaluate(
    run: Path = typer.Argument(..., help="Training run directory."),
    device: str = typer.Option("cpu", help="cpu | cuda: where the members run for scoring."),
) -> None:
    """Score the members finished so far on the run's test split; writes RUN/metrics.json."""
    from htvs.composition.train import evaluate_run

    with _clear_errors():
        metrics = evaluate_run(run, device=device)
    _emit_json(metrics)


@train_app.command("export")
def train_export(
    run: Path = typer.Argument(..., help="Training run directory (from `htvs train composition`)."),
    target: str = typer.Option(..., help="e_form | band_gap: what the models predict."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model folder (default: the shipped one)."),
    attach: list[str] | None = typer.Option(
        None, help="NAME=RUN: add another run's metrics to the card (pretraining, ablation, CV fold)."
    ),
    note: list[str] | None = typer.Option(
        None, help="A line for the card's notes (caveats, the command); repeatable."
    ),
) -> None:
    """Export a run's finished members to ONNX with a model card (data, split, seeds, metrics, sha256)."""
    from htvs.composition.ship import export_run, shipped_model_dir

    with _clear_errors():
        card = export_run(run, out or shipped_model_dir(target), target, _related_runs(attach), note)
    Console().print(f"wrote {card}")


@train_app.command("calibrate")
def train_calibrate(
    model_dir: Path = typer.Argument(..., help="Model folder (model_card.json and the ONNX members)."),
    target: str = typer.Option(..., help="e_form or band_gap."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the fit and leave the card unchanged."),
) -> None:
    """Fit the ensemble spread's calibration, sigma_cal = sqrt((a sigma)^2 + b^2), on the validation
    split, and store it (with test coverage before and after) in the model card."""
    from htvs.composition.calibrate import main

    with _clear_errors():
        main([str(model_dir), "--target", target, *(["--dry-run"] if dry_run else [])])


@train_app.command("attach")
def train_attach(
    target: str = typer.Option(..., help="e_form | band_gap: whose card gets the runs."),
    runs: list[str] = typer.Argument(..., help="NAME=RUN: runs whose metrics.json joins the card's related_runs."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model folder (default: the shipped one)."),
) -> None:
    """Add other runs' metrics (e.g. the Bartel-split comparison) to a model card without re-exporting."""
    from htvs.composition.ship import attach_runs, shipped_model_dir

    with _clear_errors():
        card = attach_runs(out or shipped_model_dir(target), _related_runs(runs))
    Console().print(f"updated {card}")


def _related_runs(items: list[str] | None) -> dict[str, Path]:
    from htvs.errors import InvalidInput

    related: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(f"expected NAME=RUN_DIR, got {item!r}")
        related[name] = Path(path)
    return related



@train_app.command("conductivity")
def train_conductivity(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (graph cache, checkpoints, metrics.json)."),
    n_models: int = typer.Option(5, help="Ensemble size; the spread of the members is the uncertainty."),
    max_epochs: int = typer.Option(120, help="Most epochs per member."),
    patience: int = typer.Option(20, help="Early stopping: epochs without validation improvement."),
    val_grouping: str = typer.Option("element_set", help="element_set (whole chemical systems) | random."),
    structure_dropout: float = typer.Option(0.0, help="Training-time probability of hiding an entry's graph."),
    seed: int = typer.Option(0, help="Seed of the ensemble (member k uses 1000*seed + k)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics JSON on stdout."),
) -> None:
    """Train (or resume) the conductivity GNN ensemble on the OBELiX train split; score it, the
    train-set mean and a random forest on the OBELiX test split in the same run."""
    with _clear_errors():
        from htvs.conductivity.train import ConductivityTrainConfig, train_ensemble

        config = ConductivityTrainConfig(n_models=n_models, max_epochs=max_epochs, patience=patience,
                                         val_grouping=val_grouping, structure_dropout=structure_dropout,
                                         seed=seed, threads=threads)
        metrics = train_ensemble(out, config, log=lambda line: _stderr().print(line, highlight=False))
    if as_json:
        _emit_json(metrics)
    else:
        from htvs.conductivity.predict import metrics_table

        Console().print(metrics_table(metrics))


@train_app.command("conductivity-export")
def train_conductivity_export(
    run: Path = typer.Argument(..., help="Training run directory (from `htvs train conductivity`)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model folder (default: the shipped one)."),
) -> None:
    """Export a finished conductivity run to ONNX with its model card (checked against torch)."""
    from htvs.conductivity.predict import ship_ensemble

    with _clear_errors():
        card = ship_ensemble(run, out)
    Console().print(f"wrote {card}")
