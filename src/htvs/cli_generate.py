"""``htvs generate`` and ``htvs train generator*``: stage 5, crystal structure prediction (DiffCSP-style).

Thin shells around :mod:`htvs.generation`; torch and the model load only when a command runs.
The generator is trained on the MP-20-like train part (or perov_5 *val*, perov_5's train split not
being available here) and evaluated on the matching test part.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console

from htvs.cli_output import EXIT_BAD_INPUT, _clear_errors, _emit_json, _stderr


def train_generator(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoint, history, metrics); resumed if it exists."),
    max_steps: int = typer.Option(20_000, min=1, help="Total optimizer steps."),
    batch_size: int = typer.Option(128, min=1, help="Crystals per step."),
    learning_rate: float = typer.Option(1e-3, help="Adam learning rate (after a linear warm-up)."),
    seed: int = typer.Option(0, help="Seed of the initial weights, batches and noise."),
    threads: int = typer.Option(1, min=1, help="torch intra-op threads."),
    time_budget: float = typer.Option(0.0, min=0.0, help="Stop (after a checkpoint) after S seconds; 0: no limit."),
    checkpoint_every: int = typer.Option(250, min=1, help="Steps between checkpoints."),
    eval_structures: int = typer.Option(500, min=0, help="Test crystals evaluated after training (0: skip)."),
    data: str = typer.Option("mp20", help="mp20: the bundled MP-20-like train part; perov5: perov_5 val."),
    hidden: int = typer.Option(128, min=8, help="Width of the denoiser (fixed at a run's first start)."),
    layers: int = typer.Option(4, min=1, help="Message-passing layers (fixed at a run's first start)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (noise is drawn on the CPU, so a run may "
                               "change device when resumed)."),
) -> None:
    """Train the stage-5 generator (resumable, fixed seeds) on the MP-20-like set or on perov_5."""
    with _clear_errors():
        from htvs.generation.model import DenoiserConfig
        from htvs.generation.train import TrainConfig, train_generator as run

        config = TrainConfig(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                             threads=threads, time_budget_s=time_budget, checkpoint_every=checkpoint_every,
                             data=data, model=DenoiserConfig(hidden=hidden, layers=layers),
                             device=_training_device(device))
        summary = run(out, config, log=lambda line: print(line, flush=True))
        print(f"generator: {summary['step']} steps, {summary['seconds']:.0f} s of training in {out}", flush=True)
        if eval_structures:
            _evaluate(out, eval_structures, 0, threads, data=data, samples=(1,))


def _training_device(spec: str) -> str:
    """``spec`` checked like the generator service's device (``auto`` is not taken for training)."""
    from htvs.errors import InvalidInput
    from htvs.generation.device import resolve_device

    if spec.strip().lower() == "auto":
        raise InvalidInput("--device auto is for serving; for training say cpu, cuda or cuda:N")
    return resolve_device(spec)


def _evaluate(run: Path, n_structures: int, seed: int, threads: int, data: str = "mp20",
              samples: tuple[int, ...] | list[int] = (1, 20), li_structures: int = 100,
              max_atoms_per_call: int = 2_000, init: str = "noise", t_start: float = 1.0,
              split: str = "test") -> dict:
    from htvs.generation.evaluate import evaluate_run

    metrics = evaluate_run(run, n_structures=n_structures, seed=seed, threads=threads, data=data, samples=samples,
                           li_structures=li_structures, max_atoms_per_call=max_atoms_per_call, init=init,
                           t_start=t_start, split=split, log=lambda line: print(line, flush=True))
    print(json.dumps(metrics, indent=1), flush=True)
    return metrics


def evaluate_generator(
    run: Path = typer.Argument(..., help="Run directory of `htvs train generator`."),
    data: str = typer.Option("mp20", help="Test set: mp20 (bundled MP-20-like test part) or perov5 (perov_5 test)."),
    n_structures: int = typer.Option(300, help="Test structures (fixed-seed subset)."),
    samples: list[int] = typer.Option([1, 20], "--samples",
                                      help="Samples per composition K, 1..100; repeat: --samples 1 --samples 20."),
    li_structures: int = typer.Option(100, help="Separate sample of Li ternary/quaternary test structures "
                                                "(0: those of the subset)."),
    seed: int = typer.Option(0, help="Seed of the subsets, the samples and the baselines."),
    threads: int = typer.Option(1, help="torch intra-op threads."),
    max_atoms_per_call: int = typer.Option(2_000, help="Atoms per batched sampling call (bounds the memory)."),
    init: str = typer.Option("noise", help="Start of the model's reverse loop: noise (pure noise at step T) or "
                                           "template (the template baseline's structure noised to --t-start)."),
    t_start: float = typer.Option(1.0, "--t-start", help="With --init template: starting fraction of the "
                                                         "diffusion steps, in (0, 1]."),
    split: str = typer.Option("test", help="Evaluated part: test, or val (mp20) to choose settings."),
) -> None:
    """CSP match rate and normalized RMSE (best of K samples per composition) of the run, of a random
    baseline and of a template baseline, on the whole subset and on Li ternary/quaternary structures."""
    with _clear_errors():
        _evaluate(run, n_structures, seed, threads, data=data, samples=samples, li_structures=li_structures,
                  max_atoms_per_call=max_atoms_per_call, init=init, t_start=t_start, split=split)


def export_generator(
    run: Path = typer.Argument(..., help="Run directory of `htvs train generator` (with metrics.json)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default: the shipped src/htvs/models/generator)."),
) -> None:
    """Write the EMA weights (torch state dict) and model_card.json."""
    with _clear_errors():
        from htvs.generation.stage import export_generator as run_export

        folder = run_export(run, out)
    Console().print(f"generator exported to {folder}", highlight=False)


def generate(
    formulas: list[str] = typer.Argument(..., help="Compositions, e.g. SrTiO3 (atom counts of the cell as written)."),
    n_samples: int = typer.Option(1, "--n-samples", "-n", help="Candidate structures per formula."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the CIF files (FORMULA_SAMPLE.cif)."),
    seed: int = typer.Option(0, help="Seed of the sampler (same seed, same structures)."),
    max_atoms: int = typer.Option(20, "--max-atoms", min=1, help="Largest cell generated (atoms)."),
    max_samples: int = typer.Option(100, "--max-samples", min=1, help="Largest --n-samples accepted."),
    step_lr: float = typer.Option(1e-5, help="Langevin corrector step scale (0: predictor only)."),
    threads: int = typer.Option(1, min=1, help="torch intra-op threads."),
    model_dir: Path | None = typer.Option(None, "--model", help="Generator folder (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help='One JSON line per structure: {"formula", "sample", "cif"}.'),
) -> None:
    """Stage 5: generate candidate crystal structures for compositions (DiffCSP-style diffusion).

    A formula that cannot be parsed, holds an element the model has no trained embedding for, or
    has more atoms than --max-atoms is reported (stderr; an error row with --json) and the others
    are generated. Exit status 2 when nothing was generated or an option is out of range.
    """
    with _clear_errors():
        from htvs.atomic import output_folder
        from htvs.errors import RowError
        from htvs.generation.stage import GenerationConfig, generate_structures, load_generator

        if out is not None:
            output_folder(out)  # refused before the sampling, not after

        config = GenerationConfig(n_samples=n_samples, max_atoms=max_atoms, max_samples=max_samples, seed=seed,
                                  step_lr=step_lr, threads=threads)
        model = load_generator(model_dir)
        results = generate_structures(formulas, model, config)
    generated = 0
    for result in results:
        if isinstance(result, RowError):
            _stderr().print(f"[bold red]error:[/] {result.message}", highlight=False)
            if as_json:
                _emit_json({"formula": result.value, "error": result.message})
            continue
        generated += 1
        if out is not None:
            safe = re.sub(r"[^A-Za-z0-9().-]", "_", result.formula)
            (out / f"{safe}_{result.sample}.cif").write_text(result.cif)
        if as_json:
            _emit_json({"formula": result.formula, "sample": result.sample, "cif": result.cif})
        else:
            Console().print(f"{result.formula} sample {result.sample}: {result.summary()}", highlight=False)
    if not generated:
        raise typer.Exit(EXIT_BAD_INPUT)


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add ``htvs generate`` and ``htvs train generator|generator-evaluate|generator-export``."""
    app.command("generate")(generate)
    train_app.command("generator")(train_generator)
    train_app.command("generator-evaluate")(evaluate_generator)
    train_app.command("generator-export")(export_generator)
