"""The ``htvs`` command line (typer). Every command is a thin shell around a stage function.

Errors raised on purpose (:class:`htvs.errors.HTVSError`) print one line naming the offending
value and exit with status 2; ``--json`` output goes to stdout and nothing else does.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from htvs.cli_output import (
    EXIT_BAD_INPUT,
    _clear_errors,
    _emit_json,
    _finite_or_none,
    _progress,
    _stderr,
)
from htvs.screening_config import PAPER_THRESHOLDS

app = typer.Typer(
    name="htvs",
    help="High-throughput virtual screening for lithium solid electrolytes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _register_subcommands() -> None:
    from htvs.cli_campaign import campaign_app
    from htvs.cli_conductivity import conductivity_app
    from htvs.cli_train import train_app

    app.add_typer(train_app, name="train")
    app.add_typer(campaign_app, name="campaign")
    app.add_typer(conductivity_app, name="conductivity")
    app.add_typer(structures_app, name="structures")
    from htvs.cli_validate import validate

    app.command("validate")(validate)
    from htvs.cli_generate import register as register_generation

    register_generation(app, train_app)
    from htvs.cli_synth import register as register_synth

    register_synth(app, train_app)
    from htvs.cli_relax import register as register_relax

    register_relax(app)


_SOURCE_HELP = (
    "'mp-2018' (4,320 bundled Materials Project prototypes), 'obelix' (82 bundled OBELiX-derived), "
    "'mp' (the live MP API; needs MP_API_KEY) or a folder of CIF/JSON/POSCAR files."
)


@app.command()
def prototypes(
    source: str = typer.Option("mp-2018", "--source", "-s", help=_SOURCE_HELP),
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
    prototypes_source: str = typer.Option("mp-2018", "--prototypes", "-p", help=_SOURCE_HELP),
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
        from htvs.atomic import output_folder

        output_folder(out)
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
        if loaded.skipped and not as_json:
            _stderr().print(
                f"{len(loaded.skipped)} inputs skipped (list them with "
                f"`htvs prototypes --source {prototypes_source}`)",
                highlight=False,
            )
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


def _report_row_errors(rows: list[Any], as_json: bool) -> bool:
    """Print per-row errors on stderr; return True when any row failed."""
    from htvs.errors import RowError

    failed = [r for r in rows if isinstance(r, RowError)]
    for row in failed:
        _stderr().print(f"[bold red]error:[/] {row.message}", highlight=False)
    return bool(failed)


def _as_typed(typed: str, canonical: str) -> str:
    """The formula as the user typed it, with pymatgen's reduced formula beside it when they differ
    (Li10GeP2S12 is reduced to Li10Ge(PS6)2)."""
    return typed if typed == canonical else f"{typed} ({canonical})"


@app.command()
def window(
    formulas: list[str] = typer.Argument(..., help="Li-containing formulas, e.g. Li3PS4 Li7La3Zr2O12."),
    ef: list[float] | None = typer.Option(
        None,
        "--ef",
        help="Formation energy (eV/atom) per formula; a compound below the MP hull is inserted "
        "into the diagram. Without it, the window is that of the formula's equilibrium phases.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per formula on stdout."),
) -> None:
    """Electrochemical stability window (V vs Li/Li+) from the Li grand-potential phase diagram.

    Uses the bundled Materials Project formation energies (lowest per formula) as the hull.
    """
    from htvs.thermo import ReferenceHull, WindowResult, electrochemical_windows

    if ef and len(ef) != len(formulas):
        raise typer.BadParameter(f"got {len(ef)} --ef values for {len(formulas)} formulas", param_hint="--ef")
    with _clear_errors():
        hull = ReferenceHull.bundled()
        rows = electrochemical_windows(hull, formulas, list(ef) if ef else None)
    failed = _report_row_errors(rows, as_json)
    table = Table("formula", "phi_red (V)", "phi_ox (V)", "reduction products", "oxidation products")
    for text, row in zip(formulas, rows):
        if not isinstance(row, WindowResult):
            if as_json:
                _emit_json({"formula": text, "error": row.message})
            continue
        payload = {
            "input": text,
            "formula": row.formula,
            "phi_red": round(row.phi_red_v, 4),
            "phi_ox": round(row.phi_ox_v, 4),
            "reduction_products": list(row.reduction_products),
            "oxidation_products": list(row.oxidation_products),
            "inserted": row.inserted,
        }
        if as_json:
            _emit_json(payload)
        else:
            table.add_row(
                _as_typed(text, row.formula),
                f"{row.phi_red_v:.2f}",
                f"{row.phi_ox_v:.2f}",
                ", ".join(row.reduction_products) or "Li metal",
                ", ".join(row.oxidation_products),
            )
    if not as_json and table.row_count:
        Console().print(table)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def hull(
    formula: str = typer.Argument(..., help="Composition, e.g. Li3ClSO4."),
    ef: float = typer.Option(..., "--ef", help="Its formation energy in eV/atom."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object on stdout."),
) -> None:
    """Energy above the MP convex hull (eV/atom) of a composition with a given formation energy.

    Negative values mean the compound lies below the current hull by that much.
    """
    from htvs.thermo import ReferenceHull, e_above_hull

    with _clear_errors():
        if not math.isfinite(ef):
            raise typer.BadParameter(f"--ef must be finite, got {ef}", param_hint="--ef")
        result = e_above_hull(ReferenceHull.bundled(), formula, ef)
    payload = {
        "input": formula,
        "formula": result.formula,
        "e_form": result.e_form_ev_per_atom,
        "e_above_hull": round(result.e_above_hull_ev_per_atom, 6),
        "decomposition": [{"formula": f, "fraction": round(x, 6)} for f, x in result.decomposition],
    }
    if as_json:
        _emit_json(payload)
        return
    products = " + ".join(f"{x:.3f} {f}" for f, x in result.decomposition)
    Console().print(
        f"{_as_typed(formula, result.formula)}: E_hull = {result.e_above_hull_ev_per_atom:.3f} eV/atom; "
        f"decomposes to {products}"
    )



def _read_formula_table(path: Path) -> list[str]:
    from htvs.errors import InvalidInput

    if not path.exists():
        raise InvalidInput(f"input table {path} does not exist")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            column = pq.read_table(path, columns=["formula"]).column("formula")
            return [str(f) for f in column.to_pylist()]
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pyarrow / pandas raise many kinds
        raise InvalidInput(f"cannot read formulas from {path}: {exc}") from exc
    if "formula" not in frame.columns:
        raise InvalidInput(f"{path} has no 'formula' column (columns: {list(frame.columns)})")
    return frame["formula"].tolist()


def _write_table(frame, path: Path) -> None:
    from htvs.atomic import atomic_path, output_file

    with atomic_path(output_file(path)) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


@app.command()
def predict(
    formulas: list[str] | None = typer.Argument(None, help="Formulas to predict, e.g. Li3PS4."),
    table_in: Path | None = typer.Option(None, "--in", help="Bulk input: Parquet/CSV with a 'formula' column."),
    table_out: Path | None = typer.Option(None, "--out", help="Bulk output table (.parquet or .csv)."),
    e_form_models: Path | None = typer.Option(None, help="E_f ensemble folder (default: shipped)."),
    band_gap_models: Path | None = typer.Option(None, help="Band-gap ensemble folder (default: shipped)."),
    threads: int | None = typer.Option(None, help="onnxruntime intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per formula on stdout."),
) -> None:
    """Stage 2: formation energy (eV/atom) and band gap (eV) from the Roost ensembles (mean, std)."""
    from htvs.composition import predict_compositions
    from htvs.composition.ship import load_ensemble

    with _clear_errors():
        from htvs.errors import InvalidInput

        if table_out is not None:
            from htvs.atomic import output_file

            output_file(table_out)  # a path that cannot be written is refused before the work
        items = list(formulas or [])
        if table_in is not None:
            items += _read_formula_table(table_in)
        if not items:
            raise InvalidInput("give formulas as arguments or a table with --in")
        ef_model = load_ensemble("e_form", e_form_models, threads)
        gap_model = load_ensemble("band_gap", band_gap_models, threads)
        frame = predict_compositions(items, ef_model, gap_model)
        if table_out is not None:
            _write_table(frame, table_out)
    for row in frame.itertuples(index=False):
        if row.error is not None:
            _stderr().print(f"[bold red]error:[/] {row.error}", highlight=False)
    if as_json:
        for record in frame.to_dict(orient="records"):
            payload = {
                key: (_finite_or_none(value) if isinstance(value, float) else value)
                for key, value in record.items()
            }
            if payload["error"] is None:
                payload.pop("error")
            _emit_json(payload)
    elif (table_out is None or len(frame) <= 50) and frame["error"].isna().any():  # no empty table
        table = Table("formula", "E_f (eV/atom)", "band gap (eV)")
        for row in frame.itertuples(index=False):
            if row.error is None:
                table.add_row(
                    row.formula,
                    f"{row.e_form_mean:.3f} ± {row.e_form_std:.3f}",
                    f"{row.band_gap_mean:.2f} ± {row.band_gap_std:.2f}",
                )
        Console().print(table)
    if table_out is not None and not as_json:
        Console().print(f"{len(frame):,} rows written to {table_out}")
    if frame["error"].notna().any() and table_in is None:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def screen(
    formulas_table: Path | None = typer.Option(
        None, "--formulas", help="formulas.parquet of `htvs substitute` (or any table with 'formula')."
    ),
    predictions_table: Path | None = typer.Option(
        None, "--predictions", help="Instead of --formulas: a predictions table (a campaign's predictions.parquet, "
        "or `htvs predict --out`); stage 2 is skipped."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for screen.parquet and funnel.json."),
    max_e_form: float = typer.Option(
        PAPER_THRESHOLDS.max_e_form_ev_per_atom, help="Keep predicted E_f <= this (eV/atom)."
    ),
    max_e_hull: float = typer.Option(
        PAPER_THRESHOLDS.max_e_above_hull_ev_per_atom, help="Keep predicted E_above_hull <= this (eV/atom)."
    ),
    min_gap: float = typer.Option(PAPER_THRESHOLDS.min_band_gap_ev, help="Keep predicted band gap >= this (eV)."),
    min_phi_ox: float = typer.Option(
        PAPER_THRESHOLDS.min_phi_ox_v, help="Keep oxidation potential >= this (V vs Li/Li+)."
    ),
    rule: str = typer.Option(
        PAPER_THRESHOLDS.rule, help="'deterministic' (thresholds on the ensemble mean, the paper's) or "
        "'probabilistic' (P(all thresholds hold) >= --min-probability under the ensemble's Gaussian; "
        "the deterministic funnel is printed beside it)."
    ),
    min_probability: float = typer.Option(
        PAPER_THRESHOLDS.min_probability, help="Joint probability a formula needs under --rule probabilistic, (0, 1]."
    ),
    e_form_models: Path | None = typer.Option(None, help="E_f ensemble folder (default: shipped)."),
    band_gap_models: Path | None = typer.Option(None, help="Band-gap ensemble folder (default: shipped)."),
    as_json: bool = typer.Option(False, "--json", help="Print the funnel JSON (of --rule) on stdout."),
) -> None:
    """Stages 2+3: predict every formula (or read --predictions), then filter on E_f, E_hull, band gap
    and phi_ox by --rule; the probabilistic rule's table is printed beside the deterministic one."""
    from dataclasses import replace

    from htvs.screening import CompositionScreenConfig, screen_compositions
    from htvs.thermo import ReferenceHull

    with _clear_errors():
        from htvs.atomic import output_folder, write_text_atomic
        from htvs.errors import InvalidInput

        if (formulas_table is None) == (predictions_table is None):
            raise InvalidInput("give one of --formulas (predict, then screen) and --predictions (screen only)")
        output_folder(out)
        config = CompositionScreenConfig(
            max_e_form_ev_per_atom=max_e_form,
            max_e_above_hull_ev_per_atom=max_e_hull,
            min_band_gap_ev=min_gap,
            min_phi_ox_v=min_phi_ox,
            rule=rule,
            min_probability=min_probability,
        )
        if predictions_table is not None:
            frame = _read_prediction_table(predictions_table)
        else:
            from htvs.composition import predict_compositions
            from htvs.composition.ship import load_ensemble

            items = _read_formula_table(formulas_table)
            ef_model = load_ensemble("e_form", e_form_models)
            gap_model = load_ensemble("band_gap", band_gap_models)
            frame = predict_compositions(items, ef_model, gap_model)
        hull = ReferenceHull.bundled()
        result = screen_compositions(frame, hull, config)
        _write_table(result.table, out / "screen.parquet")
        write_text_atomic(out / "funnel.json", json.dumps(result.funnel, indent=1) + "\n")
        funnels = {config.rule: result.funnel}
        if config.rule == "probabilistic" and not as_json:
            mean = screen_compositions(frame, hull, replace(config, rule="deterministic"), probabilities=False)
            funnels = {"deterministic": mean.funnel, **funnels}
    if as_json:
        _emit_json(result.funnel)
        return
    headers = {
        "deterministic": "deterministic (mean)",
        "probabilistic": f"probabilistic (P >= {config.min_probability:g})",
    }
    table = Table("after filter", *(headers[name] for name in funnels))
    for step in result.funnel:
        table.add_row(step, *(f"{funnel[step]:,}" for funnel in funnels.values()))
    Console().print(table)


def _read_prediction_table(path: Path):
    """A stage-2 predictions table (Parquet or CSV) for ``htvs screen --predictions``."""
    import pandas as pd

    from htvs.errors import InvalidInput
    from htvs.screening import PREDICTION_COLUMNS

    if not path.exists():
        raise InvalidInput(f"input table {path} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow / pandas raise many kinds
        raise InvalidInput(f"cannot read predictions from {path}: {exc}") from exc
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{path} is not a predictions table: no column(s) {missing} (columns: {list(frame.columns)})")
    frame = frame.loc[:, list(PREDICTION_COLUMNS)]
    frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), None)
    return frame


@app.command()
def serve(
    name: str = typer.Argument(
        ..., help="Service: substitution, composition, structure, generator, conductivity or dft."
    ),
    port: int = typer.Option(..., min=0, max=65535, help="gRPC port (0: a free port, printed on stdout)."),
    metrics_port: int | None = typer.Option(None, min=0, max=65535, help="Prometheus /metrics port (default: none)."),
    max_workers: int = typer.Option(8, min=1, max=1024, help="Worker threads handling calls."),
    host: str = typer.Option("127.0.0.1", help="Interface of the gRPC port: loopback by default; 0.0.0.0 or "
                             "[::] to serve other machines (the chart does, in its pods)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Interface of the metrics endpoint (default loopback)."),
    e_form_models: Path | None = typer.Option(None, help="E_f ensemble folder (composition; default: shipped)."),
    band_gap_models: Path | None = typer.Option(None, help="Band-gap ensemble folder (composition; default: shipped)."),
    prototypes_source: list[str] | None = typer.Option(
        None,
        "--prototypes",
        help="Prototype set served by name (substitution, structure; repeatable): 'mp-2018', 'obelix', "
        "'mp' or a folder. A given list replaces the default (bundled, the older name of obelix): "
        "--prototypes bundled --prototypes mp-2018 serves both (the 4,320 MP prototypes add about 30 s "
        "at start-up).",
    ),
    conductivity_models: Path | None = typer.Option(
        None, help="Conductivity ensemble folder with model_card.json (conductivity; default: shipped)."
    ),
    dft_workdir: Path | None = typer.Option(
        None, help="dft: folder for the jobs' MD checkpoints (a job submitted again resumes from it)."
    ),
    generator_model: Path | None = typer.Option(
        None, help="generator: folder with weights.pt and model_card.json (default: $HTVS_GENERATOR_MODEL, "
        "else the shipped model)."
    ),
    generator_threads: int | None = typer.Option(
        None, min=1, max=256, help="generator: torch CPU threads (default: $HTVS_GENERATOR_THREADS, else 1)."
    ),
    generator_device: str | None = typer.Option(
        None, help="generator: auto (cuda when torch sees a GPU), cpu, cuda or cuda:N "
        "(default: $HTVS_GENERATOR_DEVICE, else auto)."
    ),
    store: str | None = typer.Option(
        None, help="Store of the campaign stages this service runs (htvs.v1.StageService): a directory or "
        "s3://bucket/prefix; requests may name it or a prefix below it (default: $HTVS_STORE; none: refused).",
    ),
    tls_cert: Path | None = typer.Option(
        None, envvar="HTVS_TLS_CERT", help="PEM certificate chain of the gRPC port; with --tls-key it serves TLS "
        "(default: plaintext)."),
    tls_key: Path | None = typer.Option(None, envvar="HTVS_TLS_KEY", help="PEM private key of --tls-cert."),
    tls_client_ca: Path | None = typer.Option(
        None, envvar="HTVS_TLS_CLIENT_CA", help="PEM CA bundle: clients must present a certificate it signed "
        "(mutual TLS; needs --tls-cert/--tls-key)."),
    reflection: bool = typer.Option(
        True, "--reflection/--no-reflection", envvar="HTVS_GRPC_REFLECTION",
        help="Serve gRPC server reflection (lists the services and their messages)."),
    health_port: int | None = typer.Option(
        None, min=0, max=65535, envvar="HTVS_HEALTH_PORT", help="Also serve grpc.health.v1 alone, in plaintext, "
        "on this port (for the kubelet's gRPC probe when the gRPC port is TLS; default: none)."),
    health_host: str = typer.Option("127.0.0.1", envvar="HTVS_HEALTH_HOST",
                                    help="Interface of --health-port (default loopback)."),
) -> None:
    """Serve a stage over gRPC (htvs.v1) until SIGTERM/SIGINT, then stop gracefully.

    Every service also serves htvs.v1.StageService: the campaign stages it hosts, run on data in
    its store. Prints one JSON line on stdout once serving: service, port, metrics_port, health_port.
    """
    import logging

    from htvs.grpc.serve import check_service_name, serve as run
    from htvs.grpc.tls import ServerTls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resources: dict[str, Any] = {}
    if name == "composition":
        resources = {"e_form_models": e_form_models, "band_gap_models": band_gap_models}
    elif name in ("substitution", "structure") and prototypes_source:
        resources = {"prototype_sources": tuple(prototypes_source)}
    elif name == "conductivity":
        resources = {"conductivity_models": conductivity_models}
    elif name == "dft":
        resources = {"dft_workdir": dft_workdir}
    elif name == "generator":
        resources = {"generator_model": generator_model, "generator_threads": generator_threads,
                     "generator_device": generator_device}

    def announce(server, bound: int) -> None:
        _emit_json({"service": server.service_names[0], "port": bound, "metrics_port": server.metrics_port,
                    "health_port": server.health_port})
        sys.stdout.flush()

    with _clear_errors():
        check_service_name(name)
        tls = ServerTls.from_options(tls_cert, tls_key, tls_client_ca)
        run(name, port, metrics_port, host=host, metrics_host=metrics_host, max_workers=max_workers, ready=announce,
            store=store, tls=tls, reflection=reflection, health_port=health_port, health_host=health_host,
            **resources)



structures_app = typer.Typer(help="Stage 4: structures of substituted compounds.", no_args_is_help=True)


@structures_app.command("dedupe")
def structures_dedupe(
    files: list[Path] = typer.Argument(
        ..., help="CIF or pymatgen Structure .json files; an id is the file name without extension."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print unique ids, duplicates, refused files and counts."),
) -> None:
    """Remove duplicate structures (pymatgen StructureMatcher, default tolerances).

    The first of a set of duplicates (in argument order) is kept. Files that cannot be read, or
    hold a disordered structure, are refused (listed with the reason) and not compared.
    """
    from htvs.errors import InvalidInput
    from htvs.prototypes.readers import FileKind, parse_structures
    from htvs.structures import deduplicate

    items, refused = [], []
    for path in files:
        try:
            kind = FileKind.JSON if path.suffix.lower() == ".json" else FileKind.CIF
            items.append((path.stem, parse_structures(path.read_text(encoding="utf-8"), kind)[0]))
        except (OSError, UnicodeDecodeError, InvalidInput) as exc:
            refused.append({"id": path.stem, "error": f"{path}: {exc}"})
    with _clear_errors():
        result = deduplicate(items)
    refused += [{"id": r.value, "error": r.message} for r in result.refused]
    counts = {**result.counts(), "in": len(files), "refused": len(refused)}
    payload = {"unique": result.unique_ids, "duplicate_of": result.duplicate_of, "refused": refused, "counts": counts}
    if as_json:
        _emit_json(payload)
        return
    for row in refused:
        _stderr().print(f"[bold red]refused:[/] {row['id']}: {row['error']}", highlight=False)
    console = Console()
    console.print(f"{counts['in']} structures -> {counts['out']} unique ({counts['removed']} duplicates, "
                  f"{counts['refused']} refused)", highlight=False)
    for rep, members in result.members().items():
        console.print(rep + (f"  (= {', '.join(members[1:])})" if len(members) > 1 else ""), highlight=False)


_register_subcommands()


def main() -> None:  # pragma: no cover - console entry point
    app()
