"""CHGNet MD throughput (steps/s) against cell size, for planning stage-7 validation runs.

Runs the stage's MD protocol (:func:`htvs.validation.run_md`: ASE Nosé–Hoover chain NVT at
1000 K, 2 fs, CHGNet 0.3.0) on rock-salt LiCl supercells of 16, 32, 64 and 128 atoms (no heating
or equilibration, no checkpoints), after a few warm-up steps. The baseline, measured in the same
run on the same cells, is one CHGNet energy+forces call per step without the integrator: the
ratio MD / baseline shows what the MD machinery costs on top of the potential (1.0 = nothing).
From the rate follows the wall time of the paper's protocol (47 ps = 23,500 steps per
temperature, four temperatures).

    .venv/bin/python benchmarks/bench_md.py [--sizes 16,32,64,128] [--steps 20] [--threads 1]

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
SUPERCELLS = {8: (1, 1, 1), 16: (2, 1, 1), 32: (2, 2, 1), 64: (2, 2, 2), 128: (4, 2, 2), 256: (4, 4, 2)}
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


def time_md(backend, structure, steps: int, warmup: int) -> float:
    """Seconds per MD step (NVT production only)."""
    from htvs.validation import MDConfig, run_md

    def config(n: int) -> MDConfig:
        return MDConfig(temperatures_k=(1000, 1200), heat_ps=0.0, equilibrate_ps=0.0, production_ps=n * 0.002,
                        record_every_steps=1, checkpoint_every_steps=10_000)

    run_md(structure, backend.calculator(), 1000.0, config(warmup))
    start = time.perf_counter()
    run_md(structure, backend.calculator(), 1000.0, config(steps))
    return (time.perf_counter() - start) / steps


def time_forces(backend, structure, calls: int) -> float:
    """Seconds per CHGNet energy+forces call on slightly displaced copies (no caching)."""
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = backend.calculator()
    rng = np.random.default_rng(0)
    base = atoms.get_positions()
    atoms.get_forces()
    start = time.perf_counter()
    for _ in range(calls):
        atoms.set_positions(base + rng.normal(0, 0.01, base.shape))
        atoms.get_forces()
    return (time.perf_counter() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,32,64,128", help="atoms per cell (LiCl supercells)")
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps (and force calls) per size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    args = parser.parse_args()

    from htvs.validation.mlip import MlipBackend

    start = time.perf_counter()
    backend = MlipBackend(device=args.device, threads=args.threads)
    load_s = time.perf_counter() - start
    device = str(next(backend.model.parameters()).device)

    rows = []
    for n_atoms in (int(s) for s in args.sizes.split(",")):
        structure = licl_cell(n_atoms)
        md_s = time_md(backend, structure, args.steps, args.warmup)
        force_s = time_forces(backend, structure, args.steps)
        rows.append({
            "atoms": n_atoms,
            "md_steps_per_s": round(1 / md_s, 2),
            "md_ms_per_step": round(1000 * md_s, 1),
            "atom_steps_per_s": round(n_atoms / md_s, 1),
            "force_calls_per_s": round(1 / force_s, 2),
            "md_over_baseline": round(force_s / md_s, 2),
            "paper_protocol_h_per_T": round(PAPER_STEPS_PER_T * md_s / 3600, 2),
        })

    print(f"CHGNet 0.3.0 MD on {device}, {args.threads} torch thread(s), LiCl supercells, NVT 1000 K, 2 fs\n")
    print("| atoms | MD steps/s | ms/step | atom-steps/s | force calls/s (baseline) | MD / baseline "
          "| paper protocol, h per T |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['atoms']} | {row['md_steps_per_s']} | {row['md_ms_per_step']} | {row['atom_steps_per_s']} | "
              f"{row['force_calls_per_s']} | {row['md_over_baseline']} | {row['paper_protocol_h_per_T']} |")
    print()
    print(json.dumps({"benchmark": "md", **machine_info(), "device": device, "threads": args.threads,
                      "model_load_s": round(load_s, 2), "steps": args.steps, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
