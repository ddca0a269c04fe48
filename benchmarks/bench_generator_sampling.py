"""Stage-5 sampling speed: one batched denoising loop over many formulas x samples vs one
``generate_structures`` call per formula, in structures per second.

Both sample the same formulas with the same model (the shipped generator, or ``--model``), its
full noise schedule (every timestep of its card, predictor and corrector), the same number of
samples per formula, seed and torch thread count. Batched: ``generate_structures(formulas)``
once, all ``formulas x samples`` crystals in one loop. Per formula: ``generate_structures([f])``
for each formula in turn (what a caller looping over formulas does). The formulas are the cells
(atom counts as stored) of Li ternary and quaternary crystals of the bundled MP-20-like test
part whose elements the model knows, at most ``--max-atoms`` atoms, distinct, taken in a fixed
pseudo-random order (numpy ``default_rng(0)``). One untimed warm-up call first (allocator,
thread pool); with ``--rounds`` above 1 the two alternate and the rates are totals over all
rounds. Prints one JSON line.

    .venv/bin/python benchmarks/bench_generator_sampling.py [--formulas 8] [--samples 4]
        [--threads 1] [--rounds 1] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402


def pick_formulas(elements: frozenset[int], n_formulas: int, max_atoms: int) -> list[str]:
    """Cell formulas of Li ternary/quaternary MP-20-like test crystals the model can take."""
    from pymatgen.core import Element

    from htvs.generation.mp_data import li_ternary_quaternary, load_mp20

    crystals = load_mp20("test")
    chosen: list[str] = []
    for index in np.random.default_rng(0).permutation(li_ternary_quaternary(crystals)):
        start, count = int(crystals.offsets[index]), int(crystals.num_atoms[index])
        numbers = crystals.atomic_numbers[start : start + count].tolist()
        if count > max_atoms or not set(numbers) <= elements:
            continue
        formula = "".join(f"{Element.from_Z(z).symbol}{numbers.count(z)}" for z in sorted(set(numbers)))
        if formula not in chosen:
            chosen.append(formula)
        if len(chosen) == n_formulas:
            return chosen
    raise SystemExit(f"only {len(chosen)} formulas of known elements with <= {max_atoms} atoms were found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formulas", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="samples per formula")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both ways)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="generator folder (default: the shipped one)")
    args = parser.parse_args()

    from htvs.errors import RowError
    from htvs.formula import parse_composition
    from htvs.generation.stage import GenerationConfig, generate_structures, load_generator

    generator = load_generator(args.model)
    formulas = pick_formulas(generator.elements, args.formulas, args.max_atoms)
    config = GenerationConfig(n_samples=args.samples, max_atoms=args.max_atoms, seed=args.seed,
                              threads=args.threads)
    generate_structures(formulas[:1], generator, GenerationConfig(n_samples=1, max_atoms=args.max_atoms,
                                                                  threads=args.threads))  # warm-up
    batched_s = loop_s = 0.0
    made = {"batched": 0, "per_formula": 0}
    for _ in range(args.rounds):
        t = time.perf_counter()
        rows = generate_structures(formulas, generator, config)
        batched_s += time.perf_counter() - t
        made["batched"] += sum(not isinstance(r, RowError) for r in rows)
        t = time.perf_counter()
        for formula in formulas:
            rows = generate_structures([formula], generator, config)
            made["per_formula"] += sum(not isinstance(r, RowError) for r in rows)
        loop_s += time.perf_counter() - t
    n = args.rounds * len(formulas) * args.samples
    batched_rate, loop_rate = n / batched_s, n / loop_s
    atoms = [parse_composition(f).num_atoms for f in formulas]
    result = {
        "benchmark": "generator_sampling",
        "model": generator.card.get("data", "")[:80],
        "timesteps": generator.schedule.timesteps,
        "denoiser_calls_per_step": 2 if config.step_lr > 0 else 1,
        "formulas": len(formulas),
        "samples_per_formula": args.samples,
        "atoms_per_cell_mean": round(float(np.mean(atoms)), 1),
        "threads": args.threads,
        "rounds": args.rounds,
        "batched_structures_per_s": round(batched_rate, 3),
        "per_formula_structures_per_s": round(loop_rate, 3),
        "ratio": round(batched_rate / loop_rate, 2),
        "batched_s": round(batched_s, 1),
        "per_formula_s": round(loop_s, 1),
        "structures_made (non-degenerate)": made,
        **machine_info(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
