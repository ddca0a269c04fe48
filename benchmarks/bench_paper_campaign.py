"""The paper-scale campaign, stages 1-3 (and optionally 4-6), through the campaign runner.

Runs ``htvs campaign stage STEP --config CONFIG --store STORE`` in a child process (so its peak
RSS is measured by the kernel: ``getrusage(RUSAGE_CHILDREN).ru_maxrss``), then reads the stage
manifests of the store and prints:

* the funnel (prototypes, substitutions, unique formulas, survivors after each filter) next to
  the seed paper's, with the fraction of unique formulas passing each filter;
* the wall time of every stage (from the manifests) and of the whole command, the peak RSS;
* an extrapolation to the paper's 16,205 prototypes: substitution time scaled by the number of
  substitutions (26,549,208), prediction and screening by the number of unique formulas
  (1,379,333), at the rates measured here.

With ``--report-only`` it only summarizes a store that a previous run filled.

    .venv/bin/python benchmarks/bench_paper_campaign.py configs/paper.yaml --store paper-store [--step screen]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

from htvs.report.funnel import PAPER_FUNNEL as PAPER  # noqa: E402  (the paper's counts, one copy)


def _latest(store: Path, stage: str) -> list[dict]:
    return sorted(
        (json.loads(p.read_text()) for p in (store / "stages" / stage).glob("*/manifest.json")),
        key=lambda m: m["created"],
    )


def summarize(store: Path) -> dict:
    """Funnel, stage timings and the extrapolation from the manifests in ``store``."""
    funnel: dict[str, int] = {}
    timings: dict[str, float] = {}
    for stage in ("prototypes", "substitute", "screen", "structures", "conductivity"):
        manifests = _latest(store, stage)
        if not manifests:
            continue
        m = manifests[-1]
        timings[stage] = m["timings_s"]["total"]
        counts = m["row_counts"]
        if stage == "prototypes":
            funnel["prototypes"] = counts["prototypes"]
        elif stage == "substitute":
            funnel["substitutions"] = counts["substitutions"]
            funnel["unique_formulas"] = counts["unique_formulas"]
        elif stage == "screen":
            for key in ("predicted", "e_form_and_hull", "band_gap", "oxidation_window"):
                funnel[key] = counts[key]
        elif stage == "structures":
            funnel["structures"] = counts["structures"]
            funnel["unique_structures"] = counts["unique_structures"]
        else:
            funnel["scored_structures"] = counts["scored_structures"]
            funnel["superionic_shortlist"] = counts["superionic_shortlist"]
    predict = _latest(store, "predict")
    if predict:
        timings["predict"] = sum(m["timings_s"]["total"] for m in predict)
        timings["predict_shards"] = len(predict)
    base = funnel.get("unique_formulas")
    rows = []
    for key, value in funnel.items():
        row = {"step": key, "here": value, "paper": PAPER.get(key)}
        if base and key in ("unique_formulas", "predicted", "e_form_and_hull", "band_gap", "oxidation_window"):
            row["fraction_here"] = value / base
            if key in PAPER:
                row["fraction_paper"] = PAPER[key] / PAPER["unique_formulas"]
        rows.append(row)
    extrapolation = {}
    if {"substitute", "predict", "screen"} <= set(timings) and base:
        sub = timings["substitute"] * PAPER["substitutions"] / funnel["substitutions"]
        pred = timings["predict"] * PAPER["unique_formulas"] / base
        scr = timings["screen"] * PAPER["unique_formulas"] / base
        extrapolation = {"substitute_s": sub, "predict_s": pred, "screen_s": scr,
                         "stages_1_3_s": sub + pred + scr,
                         "note": "prototype loading excluded (the paper's prototypes come from the MP API)"}
    return {"funnel": rows, "timings_s": timings, "extrapolation_to_16205_prototypes": extrapolation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--step", default="screen", help="last step to run (screen = stages 1-3)")
    parser.add_argument("--report-only", action="store_true", help="summarize the store without running")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine_info()}
    if not args.report_only:
        htvs = Path(sys.executable).with_name("htvs")
        command = [str(htvs), "campaign", "stage", args.step, "--config", str(args.config), "--store", str(args.store)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        report["command"] = " ".join(command)
        report["wall_s"] = time.perf_counter() - start
        report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    report.update(summarize(args.store))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
