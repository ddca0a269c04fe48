"""Deduplication benchmark (issue 5, stage 4): grouped matching vs naive all-pairs matching.

Input: the bundled prototypes' substitutions (the paper's rule), restricted to formulas that
several substitutions share (multiplicity >= 2), taken in a fixed pseudo-random order
(sha256 of the formula) until at least ``--n`` rows, all rows of each formula; every row is
materialized (ionic-radii volume rescaling).

(a) ``deduplicate``: formula groups, then reduced-cell site-count groups, cells reduced once,
    greedy representatives.
(b) ``deduplicate_all_pairs``: ``StructureMatcher.fit`` on every pair within each formula.

(b) is measured on a subset (the first formulas in the same order, at least
``--baseline-structures`` structures) because the whole would take too long here; (a) is run
on that subset and on the rest separately (formula groups are independent, so the two add up
to the full run). Counts of (a) and (b) on the subset must be identical. The full-set time of
(b) is extrapolated from the subset by pair count (pair cost varies with cell size: crude).
pymatgen's reduced-cell cache is cleared before each timed phase.

    .venv/bin/python benchmarks/bench_dedupe.py [--n 5000] [--baseline-structures 200]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402
from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402

from htvs.prototypes import load_prototypes  # noqa: E402
from htvs.structures import (  # noqa: E402
    DedupeConfig,
    DedupeResult,
    MaterializedStructure,
    deduplicate,
    deduplicate_all_pairs,
    materialize,
    select_for_survivors,
    split_results,
)
from htvs.substitution import SubstitutionConfig, substitute  # noqa: E402
from htvs.substitution.tables import substitution_table  # noqa: E402


def _order_key(formula: str) -> str:
    return hashlib.sha256(formula.encode()).hexdigest()


def pick_formulas(counts: dict[str, int], n_rows: int) -> list[str]:
    """Formulas of multiplicity >= 2 in sha256 order until their rows reach ``n_rows``."""
    chosen: list[str] = []
    total = 0
    for formula in sorted((f for f, c in counts.items() if c >= 2), key=_order_key):
        if total >= n_rows:
            break
        chosen.append(formula)
        total += counts[formula]
    return chosen


def n_pairs(structures: list[MaterializedStructure]) -> int:
    sizes: dict[str, int] = {}
    for s in structures:
        sizes[s.formula] = sizes.get(s.formula, 0) + 1
    return sum(k * (k - 1) // 2 for k in sizes.values())


def timed(fn, items, config) -> tuple[DedupeResult, float]:  # type: ignore[no-untyped-def]
    StructureMatcher._get_reduced_istructure.cache_clear()  # noqa: SLF001 - fair, cold start
    t0 = time.perf_counter()
    result = fn(items, config)
    return result, time.perf_counter() - t0


def summary(result: DedupeResult, seconds: float) -> dict[str, object]:
    return {**result.counts(), "groups": result.n_groups, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="structures to deduplicate (at least)")
    parser.add_argument(
        "--baseline-structures", type=int, default=200,
        help="structures (whole formulas) on which the all-pairs baseline runs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = DedupeConfig()

    t0 = time.perf_counter()
    prototypes = load_prototypes("bundled").prototypes
    table = substitution_table(substitute(prototypes, SubstitutionConfig())).to_pandas()
    counts = table["formula"].astype(str).value_counts().to_dict()
    formulas = pick_formulas(counts, args.n)
    rows = select_for_survivors(table, formulas)
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    structures, errors = split_results(materialize(prototypes, rows))
    materialize_s = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} rows failed to materialize, e.g. {errors[0]}")

    # order structures by formula in the chosen order (stable within a formula: table order)
    rank = {f: i for i, f in enumerate(formulas)}
    structures.sort(key=lambda s: rank[s.formula])
    subset_formulas = set(pick_formulas({f: counts[f] for f in formulas}, args.baseline_structures))
    subset = [s for s in structures if s.formula in subset_formulas]
    rest = [s for s in structures if s.formula not in subset_formulas]

    grouped_subset, grouped_subset_s = timed(deduplicate, subset, config)
    grouped_rest, grouped_rest_s = timed(deduplicate, rest, config)
    baseline, baseline_s = timed(deduplicate_all_pairs, subset, config)

    identical = (
        grouped_subset.unique_ids == baseline.unique_ids
        and grouped_subset.duplicate_of == baseline.duplicate_of
    )
    full_pairs = n_pairs(structures)
    subset_pairs = n_pairs(subset)
    grouped_full_s = grouped_subset_s + grouped_rest_s
    grouped_full = {
        "in": len(structures),
        "out": grouped_subset.n_out + grouped_rest.n_out,
        "removed": grouped_subset.n_removed + grouped_rest.n_removed,
        "refused": len(grouped_subset.refused) + len(grouped_rest.refused),
        "comparisons": grouped_subset.n_comparisons + grouped_rest.n_comparisons,
        "groups": grouped_subset.n_groups + grouped_rest.n_groups,
        "seconds": round(grouped_full_s, 2),
        "reduce_s": round(grouped_subset.timings["reduce_s"] + grouped_rest.timings["reduce_s"], 2),
        "match_s": round(grouped_subset.timings["match_s"] + grouped_rest.timings["match_s"], 2),
    }
    baseline_full_s = baseline_s * full_pairs / max(subset_pairs, 1)
    record = {
        "benchmark": "dedupe",
        "structures": len(structures),
        "formulas": len(formulas),
        "prototypes_used": len({s.prototype_id for s in structures}),
        "setup_s": round(setup_s, 2),
        "materialize_s": round(materialize_s, 2),
        "grouped_full": grouped_full,
        "subset": {
            "structures": len(subset),
            "formulas": len(subset_formulas),
            "pairs": subset_pairs,
            "grouped": summary(grouped_subset, grouped_subset_s),
            "all_pairs_baseline": summary(baseline, baseline_s),
            "identical_results": identical,
            "ratio": round(baseline_s / grouped_subset_s, 2),
        },
        "all_pairs_full_extrapolated": {
            "pairs": full_pairs,
            "seconds": round(baseline_full_s, 1),
            "ratio": round(baseline_full_s / grouped_full_s, 2),
            "note": "baseline measured on the subset only; full time scaled by pair count",
        },
        "config": {
            "ltol": config.ltol, "stol": config.stol, "angle_tol": config.angle_tol,
            "attempt_supercell": config.attempt_supercell,
            "group_by_site_count": config.group_by_site_count,
            "group_by_space_group": config.group_by_space_group,
        },  # fmt: skip
        "machine": machine_info(),
    }
    print(json.dumps(record))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
