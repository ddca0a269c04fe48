"""Paper-scale substitution benchmark (issue 2).

Builds 16,205 site patterns by replicating the bundled prototypes' patterns in the paper's
ternary/quaternary mix (2,661 ternary + 13,544 quaternary -> 26,549,172 substitutions with the
paper's rule, against the paper's 26,549,208), enumerates them and reduces them to unique
formulas with the vectorized path, and compares with a straightforward per-substitution loop
over pymatgen ``Composition`` measured on a sample in the same run.

Goals: vectorized enumerate + unique <= 60 s wall and <= 4 GB peak RSS; >= 20x the loop.

    .venv/bin/python benchmarks/bench_substitution.py [--sample 20000] [--write DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

from htvs.prototypes import load_prototypes  # noqa: E402
from htvs.substitution import (  # noqa: E402
    SitePattern,
    SubstitutionConfig,
    assignment_table,
    enumerate_substitutions,
)
from htvs.substitution.tables import write_substitution_tables  # noqa: E402

PAPER_TERNARY = 2_661
PAPER_QUATERNARY = 13_544


def paper_scale_patterns(config: SubstitutionConfig) -> list[SitePattern]:
    """16,205 patterns cycling through the bundled ternary and quaternary site patterns."""
    bundled = load_prototypes("bundled").prototypes
    by_size: dict[int, list[dict[str, int]]] = {3: [], 4: []}
    for proto in bundled:
        if proto.n_elements in by_size:
            by_size[proto.n_elements].append(dict(proto.species_amounts))
    patterns: list[SitePattern] = []
    for size, count in ((3, PAPER_TERNARY), (4, PAPER_QUATERNARY)):
        source = by_size[size]
        for i in range(count):
            patterns.append(SitePattern(f"synthetic-{size}-{i:05d}", source[i % len(source)]))
    return patterns


def naive_rate(patterns: list[SitePattern], config: SubstitutionConfig, sample: int) -> tuple[float, int]:
    """Substitutions/s of a per-substitution pymatgen Composition loop on the first ``sample``."""
    from pymatgen.core import Composition

    formulas: Counter[str] = Counter()
    done = 0
    start = time.perf_counter()
    for pattern in patterns:
        others = [s for s in pattern.species_amounts if s != config.kept_element]
        for row in assignment_table(config, len(others)).tolist():
            amounts = {config.kept_element: pattern.species_amounts[config.kept_element]}
            for species, element in zip(others, row):
                amounts[config.element_pool[element]] = pattern.species_amounts[species]
            formulas[Composition(amounts).reduced_formula] += 1
            done += 1
            if done >= sample:
                return done / (time.perf_counter() - start), done
    return done / (time.perf_counter() - start), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=20_000, help="substitutions in the loop baseline")
    parser.add_argument("--write", type=Path, default=None, help="also write the Parquet tables here")
    args = parser.parse_args()

    config = SubstitutionConfig()
    patterns = paper_scale_patterns(config)

    start = time.perf_counter()
    result = enumerate_substitutions(patterns, config)
    fast_s = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB

    write_s = None
    if args.write is not None:
        start = time.perf_counter()
        write_substitution_tables(result, args.write)
        write_s = time.perf_counter() - start

    loop_rate, loop_n = naive_rate(patterns, config, args.sample)
    fast_rate = result.n_substitutions / fast_s
    report = {
        "benchmark": "substitution_paper_scale",
        **machine_info(),
        "prototypes": len(patterns),
        "substitutions": result.n_substitutions,
        "unique_formulas": result.n_unique,
        "vectorized_s": round(fast_s, 2),
        "vectorized_per_s": round(fast_rate),
        "peak_rss_gb": round(peak_rss_gb, 2),
        "parquet_write_s": None if write_s is None else round(write_s, 2),
        "loop_sample": loop_n,
        "loop_per_s": round(loop_rate),
        "loop_extrapolated_s": round(result.n_substitutions / loop_rate, 1),
        "speedup": round(fast_rate / loop_rate, 1),
    }
    print(json.dumps(report))
    ok = fast_s <= 60 and peak_rss_gb <= 4 and report["speedup"] >= 20
    if not ok:
        print("FAILED: goals are <= 60 s, <= 4 GB and >= 20x", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
