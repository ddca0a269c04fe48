"""Thermo screen benchmark: batch E_above_hull and Li windows against per-formula pymatgen.

Draws Li-containing ternary and quaternary formulas from the bundled MP table (every known
compound of each chosen chemical system, up to a cap) plus hypothetical stoichiometries in the
same systems, with formation energies perturbed around the system's known ones (fixed seed).
Measures, from a cold cache (per-chemical-system diagrams and facet precomputation included),
``electrochemical_windows`` and ``e_above_hull_many``; and, on a random sample of the same
formulas in the same run, the baseline that builds a ``PhaseDiagram`` per formula and calls
``get_element_profile`` / ``get_decomp_and_e_above_hull``. The baseline results double as a
correctness check (max deviation must be <= 1e-6).

Goal: each fast path >= 20x the baseline (exit status 1 otherwise).

    .venv/bin/python benchmarks/bench_thermo.py [--systems 60] [--per-system 170] [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

from htvs.datasets import load_mp_formation_energies  # noqa: E402
from htvs.thermo import (  # noqa: E402
    HullResult,
    ReferenceHull,
    WindowResult,
    e_above_hull_many,
    electrochemical_windows,
)

GOAL_RATIO = 20.0
_SYMBOL = re.compile(r"[A-Z][a-z]?")


def draw_formulas(
    n_systems: int, per_system: int, seed: int
) -> tuple[list[str], list[float], list[frozenset[str]]]:
    """Formulas, formation energies (eV/atom) and the chemical systems they were drawn from."""
    table = load_mp_formation_energies()
    by_system: dict[frozenset[str], list[tuple[str, float]]] = {}
    for formula, energy in zip(table["formula"], table["e_form_ev_per_atom"], strict=True):
        system = frozenset(_SYMBOL.findall(formula))
        if "Li" in system and len(system) in (3, 4):
            by_system.setdefault(system, []).append((formula, float(energy)))
    rng = random.Random(seed)
    candidates = sorted(
        (s for s, rows in by_system.items() if len(rows) >= 2), key=lambda s: "-".join(sorted(s))
    )
    ternary = [s for s in candidates if len(s) == 3]
    quaternary = [s for s in candidates if len(s) == 4]
    systems = rng.sample(ternary, n_systems // 2) + rng.sample(quaternary, n_systems - n_systems // 2)
    formulas: list[str] = []
    energies: list[float] = []
    for system in systems:
        known = by_system[system][: per_system // 4]
        mean = sum(e for _, e in known) / len(known)
        for formula, energy in known:
            formulas.append(formula)
            energies.append(energy + rng.gauss(0.0, 0.05))
        elements = sorted(system)
        for _ in range(per_system - len(known)):
            formulas.append("".join(f"{el}{rng.randint(1, 8)}" for el in elements))
            energies.append(mean + rng.gauss(0.0, 0.3))
    return formulas, energies, systems


def baseline(
    hull: ReferenceHull, formulas: list[str], energies: list[float]
) -> tuple[float, float, list[tuple[float, float]], list[float]]:
    """Per-formula pymatgen: (windows/s, hulls/s, windows, e_above_hull values)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition, Element

    li = Element("Li")
    windows: list[tuple[float, float]] = []
    start = time.perf_counter()
    for formula in formulas:
        comp = Composition(formula)
        diagram = PhaseDiagram(hull.entries(comp))
        profile = diagram.get_element_profile(li, comp)
        evolution = [step["evolution"] for step in profile]
        k = next(i for i, amount in enumerate(evolution) if amount <= 1e-6)
        upper = k + 1 if abs(evolution[k]) <= 1e-6 else k
        windows.append((-profile[k]["chempot"], -profile[upper]["chempot"]))
    window_rate = len(formulas) / (time.perf_counter() - start)
    e_hull: list[float] = []
    start = time.perf_counter()
    for formula, energy in zip(formulas, energies, strict=True):
        comp = Composition(formula)
        diagram = PhaseDiagram(hull.entries(comp))
        entry = PDEntry(comp, energy * comp.num_atoms)
        e_hull.append(diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)[1])
    hull_rate = len(formulas) / (time.perf_counter() - start)
    return window_rate, hull_rate, windows, e_hull


def inserted_windows(
    hull: ReferenceHull, formulas: list[str], energies: list[float], hulls: list, sample: int
) -> dict[str, float]:
    """Windows of compounds given below the hull (inserted as new phases), warm cache: the
    beneath-beyond step on cached facets vs a new ``PhaseDiagram`` per compound, same run."""
    from htvs.thermo.window import _inserted_window

    below = [i for i, r in enumerate(hulls) if isinstance(r, HullResult) and r.e_above_hull_ev_per_atom < -1e-6]
    chosen = below[:sample]
    names = [formulas[i] for i in chosen]
    given = [energies[i] for i in chosen]
    electrochemical_windows(hull, names, given)  # warm the per-system caches
    start = time.perf_counter()
    fast = electrochemical_windows(hull, names, given)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = [_inserted_window(hull, hull.composition(f), e) for f, e in zip(names, given, strict=True)]
    slow_s = time.perf_counter() - start
    deviation = max(
        max(abs(a.phi_red_v - b.phi_red_v), abs(a.phi_ox_v - b.phi_ox_v))  # type: ignore[union-attr]
        for a, b in zip(fast, slow, strict=True)
    )
    return {
        "inserted_compounds": len(chosen),
        "inserted_windows_per_s": round(len(chosen) / fast_s, 1),
        "inserted_phase_diagram_per_s": round(len(chosen) / slow_s, 1),
        "inserted_ratio": round(slow_s / fast_s, 1),
        "max_inserted_dev_v": deviation,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", type=int, default=60, help="chemical systems (half ternary)")
    parser.add_argument("--per-system", type=int, default=170, help="formulas per chemical system")
    parser.add_argument("--sample", type=int, default=200, help="formulas in the per-formula baseline")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()

    start = time.perf_counter()
    load_mp_formation_energies()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    hull = ReferenceHull.bundled(cache_size=max(256, args.systems))
    index_s = time.perf_counter() - start

    formulas, energies, systems = draw_formulas(args.systems, args.per_system, args.seed)
    n = len(formulas)

    hull.clear_cache()
    start = time.perf_counter()
    windows = electrochemical_windows(hull, formulas)
    window_s = time.perf_counter() - start
    start = time.perf_counter()
    electrochemical_windows(hull, formulas)
    window_warm_s = time.perf_counter() - start

    hull.clear_cache()
    start = time.perf_counter()
    hulls = e_above_hull_many(hull, formulas, energies)
    hull_s = time.perf_counter() - start
    start = time.perf_counter()
    e_above_hull_many(hull, formulas, energies)
    hull_warm_s = time.perf_counter() - start

    errors = sum(not isinstance(r, WindowResult) for r in windows) + sum(
        not isinstance(r, HullResult) for r in hulls
    )

    rng = random.Random(args.seed + 1)
    sample = rng.sample(range(n), min(args.sample, n))
    hull.clear_cache()  # the baseline reuses only the element-set index
    base_window_rate, base_hull_rate, base_windows, base_hulls = baseline(
        hull, [formulas[i] for i in sample], [energies[i] for i in sample]
    )
    window_dev = max(
        max(abs(w[0] - windows[i].phi_red_v), abs(w[1] - windows[i].phi_ox_v))  # type: ignore[union-attr]
        for i, w in zip(sample, base_windows, strict=True)
    )
    hull_dev = max(
        abs(e - hulls[i].e_above_hull_ev_per_atom)  # type: ignore[union-attr]
        for i, e in zip(sample, base_hulls, strict=True)
    )

    inserted = inserted_windows(hull, formulas, energies, hulls, args.sample)

    window_rate = n / window_s
    hull_rate = n / hull_s
    result = {
        "benchmark": "thermo",
        **machine_info(),
        "formulas": n,
        "chemical_systems": len(systems),
        "baseline_sample": len(sample),
        "row_errors": errors,
        "table_load_s": round(load_s, 2),
        "index_build_s": round(index_s, 2),
        "windows_per_s_cold": round(window_rate, 1),
        "windows_per_s_warm": round(n / window_warm_s, 1),
        "windows_baseline_per_s": round(base_window_rate, 1),
        "windows_ratio": round(window_rate / base_window_rate, 1),
        "hulls_per_s_cold": round(hull_rate, 1),
        "hulls_per_s_warm": round(n / hull_warm_s, 1),
        "hulls_baseline_per_s": round(base_hull_rate, 1),
        "hulls_ratio": round(hull_rate / base_hull_rate, 1),
        "max_window_dev_v": window_dev,
        "max_hull_dev_ev_per_atom": hull_dev,
        "goal_ratio": GOAL_RATIO,
        **inserted,
    }
    print(json.dumps(result))
    ok = (
        result["windows_ratio"] >= GOAL_RATIO
        and result["hulls_ratio"] >= GOAL_RATIO
        and window_dev <= 1e-6
        and hull_dev <= 1e-6
        and errors == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
