"""Do the two Materials Project sources agree? The 2018 structure snapshot vs the reference hull.

The reference hull of stage 3 is built from matbench ``mp_e_form`` (MP v2018.10, lowest E_f per
reduced formula); the MP prototypes bring their own formation energies from the CGCNN 2018
structure snapshot. This script measures, in one run:

1. E_f differences for reduced formulas in both sets (the snapshot's lowest polymorph vs the
   hull's lowest), over all 36,737 snapshot structures and over the Li ternary/quaternary
   prototypes;
2. each of the 4,320 Li ternary/quaternary prototypes inserted into the bundled hull with its own
   E_f: the distribution of its E_above_hull, and the fraction within 0.05 eV/atom of the hull,
   for all prototypes and for the lowest-E_f polymorph of each formula (higher polymorphs are
   above the hull by construction).

Prints a JSON document; the data README quotes it.

    .venv/bin/python benchmarks/check_mp_sources.py [--out agreement.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from htvs.datasets import load_mp_formation_energies, load_mp_li_structures, load_mp_structures
from htvs.thermo import HullResult, ReferenceHull, e_above_hull_many

NEAR_EV = 0.05


def _reduced(records) -> pd.DataFrame:
    from pymatgen.core import Composition

    rows = []
    for r in records:
        counts = r.element_counts()
        rows.append({
            "material_id": r.material_id,
            "formula": Composition(counts).reduced_formula,
            "n_elements": len(counts),
            "e_form": r.formation_energy_per_atom,
        })
    return pd.DataFrame(rows)


def _stats(values: np.ndarray) -> dict:
    a = np.abs(values)
    return {
        "n": int(values.size),
        "median_abs": float(np.median(a)),
        "mean_abs": float(np.mean(a)),
        "fraction_abs_le_0.001": float(np.mean(a <= 0.001)),
        "fraction_abs_le_0.01": float(np.mean(a <= 0.01)),
        "fraction_abs_le_0.05": float(np.mean(a <= NEAR_EV)),
        "fraction_abs_gt_0.1": float(np.mean(a > 0.1)),
        "max_abs": float(a.max()),
    }


def _differences(snapshot: pd.DataFrame, reference: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    lowest = snapshot.groupby("formula", sort=True)["e_form"].min().rename("snapshot")
    both = pd.concat([lowest, reference.set_index("formula")["e_form_ev_per_atom"].rename("hull")],
                     axis=1, join="inner")
    delta = (both["snapshot"] - both["hull"]).to_numpy()
    return {"formulas_in_snapshot": int(lowest.size), "formulas_in_both": int(both.shape[0]),
            **_stats(delta), "median_signed": float(np.median(delta))}, both


def _hull_distances(protos: pd.DataFrame, hull: ReferenceHull) -> dict:
    results = e_above_hull_many(hull, protos["formula"].tolist(), protos["e_form"].tolist())
    e = np.array([r.e_above_hull_ev_per_atom if isinstance(r, HullResult) else np.nan for r in results])
    ok = np.isfinite(e)
    frame = protos.assign(e_hull=e)[ok]
    ground = frame.loc[frame.groupby("formula")["e_form"].idxmin()]

    def summary(values: np.ndarray) -> dict:
        return {
            "n": int(values.size),
            "fraction_within_0.05": float(np.mean(np.abs(values) <= NEAR_EV)),
            "fraction_at_or_below_hull_plus_0.05": float(np.mean(values <= NEAR_EV)),
            "fraction_below_hull_by_more_than_0.05": float(np.mean(values < -NEAR_EV)),
            "fraction_above_hull_by_more_than_0.05": float(np.mean(values > NEAR_EV)),
            "percentiles_ev_per_atom": {str(q): float(np.percentile(values, q)) for q in (5, 25, 50, 75, 95)},
        }

    return {"errors": int((~ok).sum()), "all_prototypes": summary(frame["e_hull"].to_numpy()),
            "lowest_polymorph_per_formula": summary(ground["e_hull"].to_numpy())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    reference = load_mp_formation_energies()
    full = _reduced(load_mp_structures())
    li = _reduced(load_mp_li_structures())
    protos = li[li["n_elements"].isin((3, 4))].reset_index(drop=True)

    report = {"near_ev_per_atom": NEAR_EV}
    report["ef_difference_all_snapshot"], _ = _differences(full, reference)
    report["ef_difference_li_prototypes"], both = _differences(protos, reference)
    worst = (both["snapshot"] - both["hull"]).abs().sort_values(ascending=False).head(5)
    report["largest_ef_differences"] = {f: float(both.loc[f, "snapshot"] - both.loc[f, "hull"]) for f in worst.index}
    outlier = full[full["material_id"] == "mp-778012"]
    if len(outlier):
        row = outlier.iloc[0]
        report["outlier_mp-778012"] = {"formula": row["formula"], "e_form": float(row["e_form"])}
    report["prototypes_against_hull"] = _hull_distances(protos, ReferenceHull.bundled())
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
