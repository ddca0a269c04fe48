"""``htvs validate FILE.cif``: stage 7 (relax, stability, MD, sigma(300 K)) of one structure.

Register on the main app with ``app.command("validate")(validate)``. Progress goes to stderr
(rich); ``--json`` prints one JSON object on stdout and nothing else does. Bad input (a
malformed or disordered CIF, no Li, temperatures <= 0 K or > 5000 K or not numbers, negative
lengths) prints one line naming the value and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from htvs.cli_output import _clear_errors, _emit_json, _stderr


@contextmanager
def _progress_display(enabled: bool) -> Iterator[Callable]:
    """A rich progress bar on stderr fed by ValidationProgress reports."""
    if not enabled:
        yield lambda report: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn()
    )
    with Progress(*columns, console=_stderr(), transient=True) as bar:
        task = bar.add_task("validate", total=1.0)

        def update(report) -> None:
            bar.update(task, completed=report.fraction, description=report.message)
            if report.stage in ("relax", "analysis", "done") and report.message:
                bar.console.print(f"[dim]{report.stage}:[/] {report.message}", highlight=False)

        yield update


def validate(
    cif: Path = typer.Argument(..., help="An ordered Li-containing structure (.cif); its name is the result's id."),
    backend: str = typer.Option("mlip", help="mlip (CHGNet 0.3.0 through ASE) or vasp (MP inputs; needs "
                                "HTVS_VASP_COMMAND and PMG_VASP_PSP_DIR)."),
    temperatures: str = typer.Option("600,800,1000,1200", help="MD temperatures in K, comma-separated (>= 2)."),
    heat_ps: float = typer.Option(2.0, help="Heating from 100 K to T by velocity scaling, ps."),
    equilibrate_ps: float = typer.Option(5.0, help="NVT (Nosé–Hoover) equilibration, ps."),
    production_ps: float = typer.Option(40.0, help="NVT production, ps (sigma range from its 1/4..4/4 windows)."),
    timestep_fs: float = typer.Option(2.0, help="MD time step, fs."),
    min_supercell_length: float = typer.Option(8.0, help="Minimum length of each supercell vector, Å."),
    min_atoms: int = typer.Option(0, help="Minimum atoms in the MD cell."),
    max_atoms: int = typer.Option(200, help="Maximum atoms in the MD cell (larger ones are refused)."),
    fmax: float = typer.Option(0.05, help="Relaxation force criterion, eV/Å."),
    smoothing: str = typer.Option("max", help="MSD smoothing: max (fit from 1 ps lag), constant, none (short runs)."),
    checkpoint_every: int = typer.Option(250, help="MD steps between checkpoints and progress reports."),
    seed: int = typer.Option(0, help="Seed of the initial velocities."),
    device: str | None = typer.Option(None, help="torch device of the MLIP (cpu, cuda; default: cuda if present)."),
    threads: int = typer.Option(1, help="torch CPU threads of the MLIP (1: fastest for small cells, busy machine)."),
    workdir: Path | None = typer.Option(None, help="Directory of checkpoints and result.json; a rerun resumes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """Stage 7: relax, E_f / E_hull / window, MD at each T, D(T), Ea and sigma(300 K) of one structure."""
    from htvs.thermo import ReferenceHull
    from htvs.validation import (
        AnalysisConfig,
        MDConfig,
        RelaxConfig,
        SupercellConfig,
        ValidationConfig,
        load_backend,
        parse_temperatures,
        read_structure_file,
        validate_structure,
    )

    with _clear_errors():
        config = ValidationConfig(
            backend=backend,
            device=device,
            relax=RelaxConfig(fmax_ev_per_angstrom=fmax),
            supercell=SupercellConfig(
                min_length_angstrom=min_supercell_length, min_atoms=min_atoms, max_atoms=max_atoms
            ),
            md=MDConfig(
                temperatures_k=parse_temperatures(temperatures),
                timestep_fs=timestep_fs,
                heat_ps=heat_ps,
                equilibrate_ps=equilibrate_ps,
                production_ps=production_ps,
                checkpoint_every_steps=checkpoint_every,
                seed=seed,
            ),
            analysis=AnalysisConfig(smoothing=smoothing),
        )
        structure = read_structure_file(cif)
        loaded = load_backend(config.backend, device=config.device, threads=threads)
        hull = ReferenceHull.bundled()
        with _progress_display(not quiet) as progress:
            result = validate_structure(
                structure,
                config,
                loaded,
                hull,
                structure_id=cif.stem,
                workdir=workdir,
                progress=progress,
            )
    payload = result.to_dict()
    if as_json:
        _emit_json(payload)
        return
    _print_summary(payload)


def _print_summary(payload: dict) -> None:
    def fmt(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    console = Console()
    console.print(
        f"{payload['id']} ({payload['formula']}, {payload['backend']}): E_f {fmt(payload['e_form'], '.3f')} eV/atom, "
        f"E_hull {fmt(payload['e_above_hull'], '.3f')} eV/atom, window {fmt(payload['phi_red'], '.2f')}–"
        f"{fmt(payload['phi_ox'], '.2f')} V vs Li/Li+"
    )
    table = Table("T (K)", "D (cm^2/s)", "std (cm^2/s)")
    for temperature, d in payload["diffusivity"].items():
        table.add_row(temperature, fmt(d["mean"], ".3e"), fmt(d["std"], ".1e"))
    console.print(table)
    sigma = payload["sigma_300K_mS_cm"]
    console.print(
        f"Ea = {fmt(payload['activation_energy_eV'], '.3f')} ± {fmt(payload['activation_energy_std_eV'], '.3f')} eV; "
        f"sigma(300 K) = {fmt(sigma['mean'], '.3g')} mS/cm (windows: {fmt(sigma['low'], '.3g')}–"
        f"{fmt(sigma['high'], '.3g')})"
    )
    if payload["trusted"]:
        console.print("[green]no sanity flag: trusted[/]")
    else:
        console.print(f"[bold yellow]not trusted: {len(payload['flags'])} sanity flag(s)[/]")
    for flag in payload["flags"]:
        console.print(f"[yellow]flag {flag['code']}: {escape(flag['reason'])}[/]", highlight=False)
    for note in payload["notes"]:
        console.print(f"[dim]note: {note}[/]", highlight=False)
