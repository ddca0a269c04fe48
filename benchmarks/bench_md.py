"""CHGNet MD throughput (steps/s) against cell size, for planning stage-7 validation runs.

Runs the stage's MD protocol (:func:`htvs.validation.run_md`: ASE Nosé–Hoover chain NVT at
1000 K, 2 fs, CHGNet 0.3.0) on rock-salt LiCl supercells of 16, 32, 64 and 128 atoms (no heating
or equilibration, no checkpoints), after a few warm-up steps. The baseline, measured in the same
run on the same cells, is one CHGNet energy+forces call per step without the integrator: the
ratio MD / baseline shows what the MD machinery costs on top of the potential (1.0 = nothing).
From the rate follows the wall time of the paper's protocol (47 ps = 23,500 steps per
temperature, four temperatures).

    .venv/bin/python benchmarks/bench_md.py [--sizes 16,32,64,128] [--steps 20] [--threads 1]
        [--device cpu|cuda] [--max-seconds S] [--out result.json]

``--device cuda`` runs CHGNet on the GPU through the same backend (``MlipBackend(device=...)``)
and calculator as stage 7; ASE's integrator and CHGNet's graph construction stay on the CPU.
``--max-seconds`` caps each timed measurement (MD, then the baseline) of each size: the step
count is cut to fit, judged from the warm-up (at least ``--min-steps``), so that large cells
on a slow device end in a known time; the steps actually timed are in each row. ``--out``
rewrites a JSON file after every size, so an interrupted run keeps the sizes it finished;
a size that fails is recorded with its error and the others still run.

Prints a markdown table and one JSON line; results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

#: Repetitions of the 8-atom conventional LiCl cell giving each size.
SUPERCELLS = {8: (1, 1, 1), 16: (2, 1, 1), 32: (2, 2, 1), 64: (2, 2, 2), 128: (4, 2, 2), 256: (4, 4, 2),
              512: (4, 4, 4)}
#: Steps of the paper's protocol per temperature: (2 + 5 + 40) ps at 2 fs.
PAPER_STEPS_PER_T = 23_500


def licl_cell(n_atoms: int):
    from pymatgen.core import Lattice, Structure

    frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
            [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]  # fmt: skip
    cell = Structure(Lattice.cubic(5.14), ["Li"] * 4 + ["Cl"] * 4, frac)
    if n_atoms not in SUPERCELLS:
        raise SystemExit(f"size {n_atoms} not in {sorted(SUPERCELLS)}")
    return cell * SUPERCELLS[n_atoms]


def capped_steps(steps: int, per_step_s: float, max_seconds: float | None, min_steps: int) -> int:
    """``steps``, cut so that ``steps * per_step_s`` fits ``max_seconds`` (never below ``min_steps``)."""
    if max_seconds is None or per_step_s <= 0:
        return steps
    return max(min(min_steps, steps), min(steps, int(max_seconds / per_step_s)))


def time_md(backend, structure, steps: int, warmup: int, max_seconds: float | None = None,
            min_steps: int = 3) -> tuple[float, int]:
    """Seconds per MD step (NVT production only) and the number of steps timed."""
    from htvs.validation import MDConfig, run_md

    def config(n: int) -> MDConfig:
        return MDConfig(temperatures_k=(1000, 1200), heat_ps=0.0, equilibrate_ps=0.0, production_ps=n * 0.002,
                        record_every_steps=1, checkpoint_every_steps=10_000)

    start = time.perf_counter()
    run_md(structure, backend.calculator(), 1000.0, config(warmup))
    steps = capped_steps(steps, (time.perf_counter() - start) / max(warmup, 1), max_seconds, min_steps)
    start = time.perf_counter()
    run_md(structure, backend.calculator(), 1000.0, config(steps))
    return (time.perf_counter() - start) / steps, steps


def time_forces(backend, structure, calls: int, max_seconds: float | None = None,
                min_calls: int = 3) -> tuple[float, int]:
    """Seconds per CHGNet energy+forces call on slightly displaced copies (no caching), and the calls."""
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = backend.calculator()
    rng = np.random.default_rng(0)
    base = atoms.get_positions()
    atoms.get_forces()
    start = time.perf_counter()  # one more untimed call: the estimate for the cap
    atoms.set_positions(base + rng.normal(0, 0.01, base.shape))
    atoms.get_forces()
    calls = capped_steps(calls, time.perf_counter() - start, max_seconds, min_calls)
    start = time.perf_counter()
    for _ in range(calls):
        atoms.set_positions(base + rng.normal(0, 0.01, base.shape))
        atoms.get_forces()
    return (time.perf_counter() - start) / calls, calls


def software_versions() -> dict[str, str]:
    """Versions of the packages on the MD path (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "chgnet", "ase", "pymatgen-core", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else ``device``."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,32,64,128", help="atoms per cell (LiCl supercells)")
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps (and force calls) per size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="cap on each timed measurement per size, s (default: none, always --steps)")
    parser.add_argument("--min-steps", type=int, default=3, help="fewest steps timed under --max-seconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON result, rewritten after every size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for n_atoms in sizes:
        licl_cell(n_atoms)  # unknown sizes refused before the model loads
    if args.steps < 1 or args.warmup < 0 or args.min_steps < 1:
        raise SystemExit("--steps and --min-steps must be >= 1, --warmup >= 0")

    from htvs.validation.mlip import MlipBackend

    start = time.perf_counter()
    backend = MlipBackend(device=args.device, threads=args.threads)
    load_s = time.perf_counter() - start
    device = str(next(backend.model.parameters()).device)
    result = {"benchmark": "md", **machine_info(), "device": device, "device_name": device_name(device),
              "threads": args.threads, "software": software_versions(), "model_load_s": round(load_s, 2),
              "steps": args.steps, "max_seconds": args.max_seconds, "rows": []}
    rows = result["rows"]

    def save() -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    save()
    for n_atoms in sizes:
        try:
            structure = licl_cell(n_atoms)
            md_s, md_steps = time_md(backend, structure, args.steps, args.warmup, args.max_seconds, args.min_steps)
            force_s, calls = time_forces(backend, structure, args.steps, args.max_seconds, args.min_steps)
        except Exception as exc:  # noqa: BLE001 - one size failing (out of memory...) must not lose the others
            rows.append({"atoms": n_atoms, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{n_atoms} atoms on {device}: failed, {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            save()
            continue
        rows.append({
            "atoms": n_atoms,
            "md_steps_per_s": round(1 / md_s, 2),
            "md_ms_per_step": round(1000 * md_s, 1),
            "atom_steps_per_s": round(n_atoms / md_s, 1),
            "force_calls_per_s": round(1 / force_s, 2),
            "md_over_baseline": round(force_s / md_s, 2),
            "paper_protocol_h_per_T": round(PAPER_STEPS_PER_T * md_s / 3600, 2),
            "md_steps_timed": md_steps,
            "force_calls_timed": calls,
        })
        print(f"{n_atoms} atoms on {device}: {1 / md_s:.2f} MD steps/s ({md_steps} steps), "
              f"{1 / force_s:.2f} force calls/s ({calls} calls)", file=sys.stderr, flush=True)
        save()

    print(f"CHGNet 0.3.0 MD on {device} ({result['device_name']}), {args.threads} torch thread(s), "
          "LiCl supercells, NVT 1000 K, 2 fs\n")
    print("| atoms | MD steps/s | ms/step | atom-steps/s | force calls/s (baseline) | MD / baseline "
          "| paper protocol, h per T |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['atoms']} | failed: {row['error']} | | | | | |")
            continue
        print(f"| {row['atoms']} | {row['md_steps_per_s']} | {row['md_ms_per_step']} | {row['atom_steps_per_s']} | "
              f"{row['force_calls_per_s']} | {row['md_over_baseline']} | {row['paper_protocol_h_per_T']} |")
    print()
    print(json.dumps(result))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
