"""Batched CHGNet relaxation (htvs.relax.batch) vs one-by-one ASE FIRE (MlipBackend.relax).

The same structures (small MP Li compounds, lattice strained by ``--strain`` and positions
perturbed by ``--perturb`` Å, fixed seed) are relaxed both ways in the same run, on one torch
thread and one BLAS thread (both paths); reports relaxations/s of each, the ratio, and the
largest |energy per atom difference|
between the two paths (eV/atom) and step-count agreement.

    .venv/bin/python benchmarks/bench_relax_batched.py --n 8 --batch-size 8 --max-steps 60

Measured (2026-11-30, 2-core CPU shared with other jobs; 8 structures of 4.75 sites on average):
batched 0.27 relaxations/s vs one-by-one 0.18/s, 1.5x (goal was 3x; not reached on this CPU: the
CHGNet forward + backward pass, which scales with atoms, is 70 % of a batched step, and the ASE
cell filter's per-structure linear algebra most of the rest); energies per atom agree within
1e-6 eV/atom, with the same step counts. Both paths ran with one BLAS thread: with two, the cell
filter's 3x3 logm was 6x slower and both paths ~3.4x slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="structures")
    parser.add_argument("--max-atoms", type=int, default=8, help="largest cell picked, sites")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--strain", type=float, default=0.03, help="isotropic lattice strain")
    parser.add_argument("--perturb", type=float, default=0.05, help="random displacement, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from pymatgen.core import Structure

    from _machine import machine_info
    from htvs.datasets import load_mp_li_structures
    from htvs.relax.batch import BatchRelaxConfig, relax_batch
    from htvs.validation.config import RelaxConfig
    from htvs.validation.mlip import MlipBackend, shared_chgnet

    rng = np.random.default_rng(args.seed)
    records = [r for r in load_mp_li_structures() if sum(r.element_counts().values()) <= args.max_atoms]
    picked = [records[i] for i in rng.choice(len(records), size=args.n, replace=False)]
    structures = []
    for record in picked:
        s = Structure.from_str(record.cif, fmt="cif")
        s.scale_lattice(s.volume * (1 + args.strain) ** 3)
        moved = s.cart_coords + rng.normal(0, args.perturb, (len(s), 3))
        structures.append(Structure(s.lattice, s.species, moved, coords_are_cartesian=True))
    model = shared_chgnet("cpu")
    backend = MlipBackend(model=model)
    relax_batch(structures[:1], model, BatchRelaxConfig(max_steps=1))  # warm-up (lazy imports)

    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # what relax_batch does: a fair comparison
        single = [backend.relax(s, RelaxConfig(fmax_ev_per_angstrom=args.fmax, max_steps=args.max_steps))
                  for s in structures]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = relax_batch(structures, model, BatchRelaxConfig(fmax_ev_per_angstrom=args.fmax, max_steps=args.max_steps,
                                                              batch_size=args.batch_size))
    batched_s = time.perf_counter() - start

    diffs = [abs(b.energy_per_atom_ev - s.energy_per_atom_ev) for b, s in zip(batched, single) if b.error is None]
    summary = {
        "structures": len(structures), "atoms_mean": float(np.mean([len(s) for s in structures])),
        "one_by_one_seconds": single_s, "batched_seconds": batched_s,
        "one_by_one_relaxations_per_s": len(structures) / single_s,
        "batched_relaxations_per_s": len(structures) / batched_s,
        "speedup": single_s / batched_s,
        "max_abs_energy_diff_eV_per_atom": float(max(diffs)) if diffs else None,
        "median_abs_energy_diff_eV_per_atom": float(np.median(diffs)) if diffs else None,
        "same_step_count": int(sum(b.n_steps == s.n_steps for b, s in zip(batched, single))),
        "steps_one_by_one": [s.n_steps for s in single], "steps_batched": [b.n_steps for b in batched],
        "errors": [b.error for b in batched if b.error], "settings": vars(args) | {"out": str(args.out)},
        "machine": machine_info(),
    }
    if args.out is not None:
        from htvs.atomic import write_json_atomic

        write_json_atomic(summary, args.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
