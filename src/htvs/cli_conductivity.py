"""``htvs conductivity ...``: stage 6, Li-ion conductivity of structures from the GNN ensemble blended with extra trees.

Thin shells around :func:`htvs.conductivity.predict.predict_conductivity` and the model card;
torch and the models are loaded only when a command runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from htvs.cli_output import EXIT_BAD_INPUT, _clear_errors, _emit_json, _stderr

conductivity_app = typer.Typer(
    help="Stage 6: room-temperature Li-ion conductivity of structures (GNN ensemble + random forest, trained on OBELiX).",
    no_args_is_help=True,
)

#: Default largest cell (sites) predicted; the stage's own default.
DEFAULT_MAX_ATOMS = 500


def read_structure_files(paths: list[Path]) -> tuple[list[tuple[int, str, object]], list[tuple[int, str, str]]]:
    """Read CIF (text, parsed by the stage) and pymatgen JSON files.

    Returns:
        ``(items, errors)``: ``(position, id, CIF text or Structure)`` of the readable files and
        ``(position, id, message)`` of the others; ``id`` is the file name without extension.
    """
    from htvs.errors import InvalidInput
    from htvs.prototypes.readers import FileKind, parse_structures

    items: list[tuple[int, str, object]] = []
    errors: list[tuple[int, str, str]] = []
    for position, path in enumerate(paths):
        item_id = path.stem
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            errors.append((position, item_id, f"{item_id}: cannot read {path}: {exc.strerror or exc}"))
            continue
        if path.suffix.lower() != ".json":
            items.append((position, item_id, text))
            continue
        try:
            items.append((position, item_id, parse_structures(text, FileKind.JSON)[0]))
        except InvalidInput as exc:
            errors.append((position, item_id, f"{item_id}: {path.name}: {exc}"))
    return items, errors


def _finite_json(value: Any) -> Any:
    """``value`` with every NaN/infinite float replaced by None (a card may hold NaN metrics)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(item) for item in value]
    return value


@conductivity_app.command("predict")
def predict(
    files: list[Path] = typer.Argument(
        ..., help="CIF files (or pymatgen Structure .json files); a row's id is the file name without extension."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON list on stdout: {id, log10_sigma_mean, log10_sigma_std, p_superionic} per "
        "predicted file, {id, error, no_lithium} per file that was not predicted.",
    ),
    max_atoms: int = typer.Option(
        DEFAULT_MAX_ATOMS,
        "--max-atoms",
        min=1,
        help="Largest cell (number of sites) predicted; larger cells are refused.",
    ),
    models: Path | None = typer.Option(
        None, "--models", help="Ensemble folder with its model_card.json (default: the shipped model)."
    ),
) -> None:
    """Predict log10 sigma (S/cm, 300 K; ensemble mean and std) and P(sigma >= 1e-4 S/cm) of structures.

    The batch goes on past bad files: a file that cannot be read, a malformed CIF, a cell above
    --max-atoms, NaN coordinates, or a structure without Li (flagged "no Li; not predicted") is
    reported on stderr as "error: <id>: <reason>" (and, with --json, as an error row) while the
    other files are predicted. Exit status: 0 when at least one file was predicted, 2 when none
    was (or on bad options / a missing model).
    """
    with _clear_errors():
        from htvs.conductivity.predict import ConductivityConfig, load_ensemble, predict_conductivity
        from htvs.errors import NO_LITHIUM, RowError

        config = ConductivityConfig(max_atoms=max_atoms)
        items, read_errors = read_structure_files(files)
        ensemble = load_ensemble(models)
        results = predict_conductivity([(item_id, item) for _, item_id, item in items], ensemble, config)
    rows: list[dict[str, Any] | None] = [None] * len(files)
    for position, item_id, message in read_errors:
        rows[position] = {"id": item_id, "error": message, "no_lithium": False}
    for (position, _, _), result in zip(items, results, strict=True):
        if isinstance(result, RowError):
            rows[position] = {"id": result.value, "error": result.message, "no_lithium": result.kind == NO_LITHIUM}
        elif all(math.isfinite(v) for v in (result.log10_sigma_mean, result.log10_sigma_std, result.p_superionic)):
            rows[position] = result.to_dict()
        else:
            rows[position] = {"id": result.id, "error": f"{result.id}: non-finite prediction", "no_lithium": False}
    done = [row for row in rows if row is not None]
    failed = [row for row in done if "error" in row]
    for row in failed:
        _stderr().print(f"[bold red]error:[/] {row['error']}", highlight=False)
    if as_json:
        _emit_json(done)
    else:
        table = Table("id", "log10 σ (S/cm)", "std", "P(σ ≥ 1e-4 S/cm)")
        for row in done:
            if "error" not in row:
                table.add_row(
                    row["id"],
                    f"{row['log10_sigma_mean']:.2f}",
                    f"{row['log10_sigma_std']:.2f}",
                    f"{row['p_superionic']:.2f}",
                )
        console = Console()
        if table.row_count:
            console.print(table)
        console.print(f"{len(done) - len(failed)} predicted, {len(failed)} not predicted", highlight=False)
    if len(failed) == len(done):
        raise typer.Exit(EXIT_BAD_INPUT)


@conductivity_app.command("info")
def info(
    models: Path | None = typer.Option(
        None, "--models", help="Ensemble folder with its model_card.json (default: the shipped model)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the model card's summary and test metrics as JSON."),
    reliability_plot: Path | None = typer.Option(
        None, "--reliability-plot", metavar="PNG",
        help="Also write the reliability diagram of P(superionic) (grouped CV and test split, before and after "
             "calibration) to this image file (.png, .svg or .pdf).",
    ),
) -> None:
    """The model card: training data, split, and test metrics of the ensemble against the baselines."""
    with _clear_errors():
        from htvs.conductivity.predict import load_ensemble, metrics_table
        from htvs.errors import ModelNotReady

        card = load_ensemble(models).card
        try:
            table = metrics_table(card)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelNotReady(f"the model card has no complete test metrics ({type(exc).__name__}: {exc})") from exc
        if reliability_plot is not None:
            _write_reliability_plot(card, reliability_plot)
    n_models = len(card.get("models") or [])
    if as_json:
        keys = ("format", "target", "units", "data", "split", "censoring", "model_uncertainty", "model_vs_random_forest",
                "pretraining", "calibration", "test")
        _emit_json(_finite_json({"n_models": n_models, **{key: card[key] for key in keys if key in card}}))
        return
    console = Console(soft_wrap=True)
    console.print(f"{card.get('target', 'conductivity')} ({card.get('units', '')}); {n_models} models", highlight=False)
    if card.get("data"):
        console.print(f"data: {card['data']}", highlight=False)
    if isinstance(card.get("split"), dict):
        console.print("split: " + ", ".join(f"{k} {v}" for k, v in card["split"].items()), highlight=False)
    console.print(table, highlight=False, markup=False)
    for line in _card_summary(card):
        console.print(line, highlight=False, markup=False)


def _write_reliability_plot(card: dict, path: Path) -> None:
    """The card's reliability diagrams as one image; a card without them, or a bad path, is a clear error."""
    from htvs.conductivity.calibration import plot_reliability
    from htvs.errors import InvalidInput, ModelNotReady

    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InvalidInput(f"--reliability-plot must end in .png, .svg or .pdf, got {str(path)!r}")
    probability = card.get("calibration") or {}
    cv = probability.get("cv") or {}
    curves = {"grouped CV, as predicted": cv.get("before"), "grouped CV, calibrated (nested)": cv.get("after_nested_cv"),
              "test, as predicted": probability.get("test_before"), "test, calibrated": probability.get("test_after")}
    method = (probability.get("map") or {}).get("method", "?")
    if method == "identity":  # the calibrated curves are the same as the predicted ones: draw them once
        curves = {"grouped CV (out of fold)": curves["grouped CV, as predicted"], "test split": curves["test, as predicted"]}
    curves = {name: curve for name, curve in curves.items() if isinstance(curve, dict) and "bins" in curve}
    if not curves:
        raise ModelNotReady("the model card has no reliability data (a card written before calibration was added)")
    if not path.parent.is_dir():
        raise InvalidInput(f"--reliability-plot: folder {str(path.parent)!r} does not exist")
    plot_reliability(curves, path, f"P(σ ≥ 10⁻⁴ S/cm), calibration: {method}")
    Console(stderr=True).print(f"reliability diagram: {path}", highlight=False)


def _card_summary(card: dict) -> list[str]:
    """Blend weight, the bootstrap against the RF baseline and the calibration, where the card has them."""
    lines = []
    blend = card.get("blend")
    if isinstance(blend, dict) and "gnn_weight" in blend:
        lines.append(f"blend: GNN weight {blend['gnn_weight']} ({blend.get('chosen_by', '')})")
    versus = card.get("model_vs_random_forest")
    if isinstance(versus, dict) and {"mae_difference", "ci95_low", "ci95_high"} <= set(versus):
        lines.append(f"model - random forest, MAE log10 sigma: {versus['mae_difference']:+.3f} "
                     f"(paired bootstrap 95 % interval {versus['ci95_low']:+.3f} .. {versus['ci95_high']:+.3f}; "
                     f"model better in {100 * versus.get('fraction_a_better', float('nan')):.0f} % of resamples)")
    calibration = card.get("model_uncertainty")
    if isinstance(calibration, dict) and {"within_1_std", "within_2_std"} <= set(calibration):
        lines.append(f"uncertainty: {100 * calibration['within_1_std']:.0f} % of test errors within 1 std, "
                     f"{100 * calibration['within_2_std']:.0f} % within 2 std (ideal 68 % / 95 %)")
    if isinstance(card.get("pretraining"), str):
        lines.append(f"pretraining: {card['pretraining']}")
    probability = card.get("calibration")
    if isinstance(probability, dict) and isinstance(probability.get("map"), dict):
        before, after = probability.get("test_before") or {}, probability.get("test_after") or {}
        line = f"P(superionic) calibration: {probability['map'].get('method')} ({probability.get('chosen_by', '')})"
        if {"brier", "ece"} <= set(before) and {"brier", "ece"} <= set(after):
            line += (f"; test Brier {before['brier']:.3f} -> {after['brier']:.3f}, "
                     f"expected calibration error {before['ece']:.3f} -> {after['ece']:.3f}")
        lines.append(line)
    return lines
