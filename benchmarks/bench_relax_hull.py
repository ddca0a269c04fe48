"""Validate the CHGNet hull (htvs.relax) on MP Li compounds that lie on the MP hull.

Picks Li compounds of the 2018 MP snapshot with E_hull = 0 against the hull of the snapshot's own
formation energies (:class:`htvs.thermo.ReferenceHull`, lowest polymorph per formula), at most
``--max-atoms`` sites and 2-6 elements, in a fixed random order (``--seed``). Each is relaxed
with CHGNet (cell + positions, batched FIRE) and placed on the CHGNet hull of its chemical
system; on-hull compounds should come out at |E_hull| ~ 0. Reports median, mean and 90th
percentile of |E_hull| (eV/atom) and the fractions within 0.03 / 0.05 / 0.1 eV/atom.

Resumable: one JSON file per compound under ``--work`` (and the reference energies in
``--work/chgnet-hull``), so a killed run picks up where it stopped; ``--limit`` may grow between
runs. The summary also has a stricter leave-one-out check (each compound against the other
phases only, CHGNet vs MP decomposition energy). ``--reference-sample N`` also relaxes N MP
phases and reports static - relaxed energy per
atom (why the hull uses static energies of the MP structures).

    .venv/bin/python benchmarks/bench_relax_hull.py --limit 50 --work .benchmarks/relax-hull

Measured (2026-11-30, 2-core CPU shared with other jobs, one torch thread; 772 candidates with
<= 24 sites, first 50 of seed 0): |E_hull| median 0.26 meV/atom, mean 1.6, 90th percentile 5.2
meV/atom, 100 % within 0.03 eV/atom, all 50 converged; leave-one-out decomposition energy,
CHGNet vs MP: |error| median 14 meV/atom, mean 21, p90 51; 90 % stay on the CHGNet hull.
~5.5 s per compound to relax (batch 4) and ~35 s per new chemical system to compute its
reference phases' energies (cached).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def on_hull_li_compounds(records, max_atoms: int, seed: int) -> list:
    """The lowest-E_f polymorph of each Li formula on the MP formation-energy hull, shuffled."""
    import pandas as pd
    from pymatgen.core import Composition

    from htvs.thermo import ReferenceHull, e_above_hull

    table = pd.DataFrame({"formula": [Composition(r.formula_sum.replace(" ", "")).reduced_formula for r in records],
                          "e_form_ev_per_atom": [r.formation_energy_per_atom for r in records]})
    hull = ReferenceHull.from_table(table, source="MP snapshot", validate=False)
    lowest: dict[str, object] = {}
    for record, formula in zip(records, table["formula"]):
        counts = record.element_counts()
        if "Li" not in counts or not 2 <= len(counts) <= 6 or sum(counts.values()) > max_atoms:
            continue
        if formula not in lowest or record.formation_energy_per_atom < lowest[formula].formation_energy_per_atom:
            lowest[formula] = record
    picked = []
    for formula, record in sorted(lowest.items()):
        try:
            result = e_above_hull(hull, formula, record.formation_energy_per_atom)
        except Exception:  # noqa: BLE001 - a formula the MP hull refuses is skipped
            continue
        if abs(result.e_above_hull_ev_per_atom) <= 1e-6:
            picked.append(record)
    random.Random(seed).shuffle(picked)
    return picked


def _loo_e_hull(phases: list[tuple[str, float]], formula: str, energy_per_atom: float) -> float:
    """Energy (eV/atom) of ``formula`` above the hull of ``phases`` (formula, eV/atom) without it."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    others = [PDEntry(Composition(f), e * Composition(f).num_atoms) for f, e in phases if f != formula]
    diagram = PhaseDiagram(others)
    comp = Composition(formula)
    return float(diagram.get_e_above_hull(PDEntry(comp, energy_per_atom * comp.num_atoms), allow_negative=True))


def leave_one_out(docs: list[dict], hull) -> dict:
    """The stricter check: each compound against the hull of the OTHER phases of its system, on
    the CHGNet scale and on the MP formation-energy scale (the snapshot's own E_f; elements at 0).
    For an MP on-hull compound both are <= 0 (its decomposition energy); the CHGNet - MP
    difference is the error of the CHGNet decomposition energy, eV/atom."""
    from pymatgen.core import Composition

    diffs, rows = [], []
    for doc in docs:
        formula = doc["formula_reduced"] if "formula_reduced" in doc else Composition(doc["formula"].replace(" ", "")).reduced_formula
        elements = [e.symbol for e in Composition(formula).elements]
        chgnet = [(p.formula, p.energy_per_atom_ev) for p in hull.phases(elements)]
        mp: dict[str, float] = {e: 0.0 for e in elements}
        for record in hull.index.within(frozenset(elements)):
            name = Composition(record.formula_sum.replace(" ", "")).reduced_formula
            if len(record.element_counts()) > 1:
                mp[name] = min(mp.get(name, 0.0), record.formation_energy_per_atom)
        try:
            c = _loo_e_hull(chgnet, formula, doc["energy_per_atom_eV"])
            m = _loo_e_hull(list(mp.items()), formula, mp[formula])
        except Exception:  # noqa: BLE001 - a system with no other phases is skipped
            continue
        diffs.append(c - m)
        rows.append({"formula": formula, "chgnet": c, "mp": m})
    d = np.abs(np.array(diffs))
    return {"n": len(d), "abs_error_eV_per_atom": {"median": float(np.median(d)) if len(d) else None,
                                                    "mean": float(d.mean()) if len(d) else None,
                                                    "p90": float(np.percentile(d, 90)) if len(d) else None},
            "fraction_still_on_hull_chgnet": float(np.mean([r["chgnet"] <= 1e-6 for r in rows])) if rows else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="compounds to evaluate")
    parser.add_argument("--work", type=Path, default=Path("bench-out/relax-hull"))
    parser.add_argument("--max-atoms", type=int, default=24, help="largest cell picked, sites")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-sample", type=int, default=0,
                        help="also relax this many MP phases: static - relaxed energy, eV/atom")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from pymatgen.core import Structure

    from _machine import machine_info
    from htvs.atomic import write_json_atomic
    from htvs.datasets import load_mp_structures
    from htvs.relax.batch import BatchRelaxConfig, relax_batch
    from htvs.relax.reference import ChgnetHull
    from htvs.validation.mlip import shared_chgnet

    model = shared_chgnet("cpu")
    records = load_mp_structures()
    picked = on_hull_li_compounds(records, args.max_atoms, args.seed)
    print(f"{len(picked)} on-hull Li compounds with <= {args.max_atoms} sites; evaluating {args.limit}", flush=True)
    chosen = picked[: args.limit]
    per = args.work / "compounds"
    per.mkdir(parents=True, exist_ok=True)
    hull = ChgnetHull(model, cache_dir=args.work / "chgnet-hull", records=records)
    config = BatchRelaxConfig(fmax_ev_per_angstrom=args.fmax, max_steps=args.max_steps, batch_size=args.batch_size)
    for lo in range(0, len(chosen), args.batch_size):
        group = [r for r in chosen[lo: lo + args.batch_size] if not (per / f"{r.material_id}.json").is_file()]
        if not group:
            continue
        start = time.perf_counter()
        structures = [Structure.from_str(r.cif, fmt="cif") for r in group]
        results = relax_batch(structures, model, config)
        relax_s = time.perf_counter() - start
        for record, structure, result in zip(group, structures, results):
            doc = {"material_id": record.material_id, "formula": record.formula_sum, "n_atoms": len(structure),
                   "converged": result.converged, "n_steps": result.n_steps, "error": result.error,
                   "relax_seconds_per_compound": relax_s / len(group)}
            if result.error is None:
                t0 = time.perf_counter()
                try:
                    doc.update(hull.stability(result.structure, result.energy_ev, record.material_id).to_dict())
                except Exception as exc:  # noqa: BLE001 - recorded per compound
                    doc["error"] = str(exc)
                doc["hull_seconds"] = time.perf_counter() - t0
            write_json_atomic(doc, per / f"{record.material_id}.json")
            print(f"{record.material_id} {record.formula_sum}: E_hull {doc.get('e_above_hull_eV_per_atom')} "
                  f"steps {result.n_steps} ({doc['relax_seconds_per_compound']:.1f} s relax, "
                  f"{doc.get('hull_seconds', 0):.1f} s hull)", flush=True)

    docs = [json.loads((per / f"{r.material_id}.json").read_text()) for r in chosen
            if (per / f"{r.material_id}.json").is_file()]
    ok = [d for d in docs if d.get("error") is None]
    e = np.abs(np.array([d["e_above_hull_eV_per_atom"] for d in ok]))
    summary = {
        "compounds": len(docs), "evaluated": len(ok), "errors": len(docs) - len(ok),
        "converged": sum(d["converged"] for d in ok),
        "abs_e_hull_eV_per_atom": {
            "median": float(np.median(e)) if len(e) else None, "mean": float(e.mean()) if len(e) else None,
            "p90": float(np.percentile(e, 90)) if len(e) else None,
            **{f"fraction_le_{t}": float((e <= t).mean()) if len(e) else None for t in (0.03, 0.05, 0.1)},
        },
        "signed_e_hull_median_eV_per_atom": float(np.median([d["e_above_hull_eV_per_atom"] for d in ok])) if ok else None,
        "relax_seconds_per_compound_mean": float(np.mean([d["relax_seconds_per_compound"] for d in docs])) if docs else None,
        "worst": sorted(({"id": d["material_id"], "formula": d["formula"], "e_hull": d["e_above_hull_eV_per_atom"],
                          "decomposition": d["decomposition"]} for d in ok), key=lambda x: -abs(x["e_hull"]))[:10],
        "settings": vars(args) | {"work": str(args.work)}, "machine": machine_info(),
    }
    if args.reference_sample:
        sample = random.Random(args.seed + 1).sample([r for r in records if sum(r.element_counts().values()) <= 16],
                                                      args.reference_sample)
        structures = [Structure.from_str(r.cif, fmt="cif") for r in sample]
        static = relax_batch(structures, model, BatchRelaxConfig(max_steps=0, batch_size=8))
        relaxed = relax_batch(structures, model, BatchRelaxConfig(max_steps=args.max_steps, batch_size=8))
        diff = np.array([s.energy_per_atom_ev - r.energy_per_atom_ev for s, r in zip(static, relaxed)
                         if s.error is None and r.error is None])
        summary["reference_static_minus_relaxed_eV_per_atom"] = {
            "n": int(len(diff)), "median": float(np.median(diff)), "mean": float(diff.mean()),
            "p90": float(np.percentile(diff, 90)), "max": float(diff.max())}
    summary["leave_one_out"] = leave_one_out(ok, hull)
    write_json_atomic(summary, args.work / "summary.json")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
