"""Inference speed of the conductivity model on the demo's structures, this checkout vs another.

Scores the demo campaign's 56 prototype structures (the ids of ``configs/demo.yaml``, read from
the bundled MP snapshot; the demo's stage 6 scores substitutions of exactly these cells) with
:func:`htvs.conductivity.predict.predict_conductivity` and the shipped model, one onnxruntime
thread, in a fresh process per checkout. Reported per checkout: model load time, and the best of
``--repeats`` timed passes over all structures, both for the whole call (CIF parse, crystal graph,
model) and for the model alone (members + forest + calibration on prebuilt graph arrays).

    .venv/bin/python benchmarks/bench_conductivity_inference.py --before-src /tmp/htvs-before/src

``--before-src`` is another checkout's ``src`` folder (e.g. ``git worktree add /tmp/htvs-before
HEAD~3``); the ratio after/before is printed for each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

MEASURE = r"""
import gzip, json, sys, time, warnings
import numpy as np
import yaml
warnings.simplefilter("ignore")
root, repeats = sys.argv[1], int(sys.argv[2])
ids = yaml.safe_load(open(f"{root}/configs/demo.yaml"))["prototypes"]["ids"]
wanted = set(ids)
cifs = {}
with gzip.open(f"{root}/src/htvs/data/mp_structures/mp_li_structures.jsonl.gz", "rt") as fh:
    for line in fh:
        row = json.loads(line)
        if row["material_id"] in wanted:
            cifs[row["material_id"]] = row["cif"]
items = [(i, cifs[i]) for i in ids]
import htvs.conductivity.predict as predict
from htvs.conductivity.graph import build_graph, collate_arrays
from htvs.prototypes.readers import parse_cif
start = time.perf_counter()
ensemble = predict.load_ensemble(threads=1)
load_s = time.perf_counter() - start
whole = []
for _ in range(repeats):
    start = time.perf_counter()
    out = predict.predict_conductivity(items, ensemble)
    whole.append(time.perf_counter() - start)
graphs = [build_graph(parse_cif(text)[0], ensemble.graph_config) for _, text in items]
arrays = collate_arrays(graphs, [g.global_features for g in graphs])
model = []
for _ in range(repeats):
    start = time.perf_counter()
    outs = np.stack([member(arrays) for member in ensemble.models])
    trees = ensemble.forest.predict(arrays["global_features"]) if ensemble.forest is not None else None
    pred = predict.blend(outs[:, :, 0], 1 / (1 + np.exp(-outs[:, :, 1])), trees, ensemble.gnn_weight)
    getattr(ensemble, "calibration", None) and ensemble.calibration.apply(pred.p_superionic)
    model.append(time.perf_counter() - start)
print(json.dumps({"n": len(items), "predicted": sum(hasattr(r, "p_superionic") for r in out),
                  "load_s": load_s, "whole_s": min(whole), "model_s": min(model),
                  "card": ensemble.card.get("format")}))
"""


def measure(src: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(repeats)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, required=True, help="the other checkout's src folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (args.before_src / "htvs").is_dir():
        parser.error(f"--before-src {args.before_src} has no htvs package")
    before, after = measure(args.before_src, args.repeats), measure(ROOT / "src", args.repeats)
    print(json.dumps({"machine": machine_info(), "before": before, "after": after}, indent=1))
    for key in ("load_s", "whole_s", "model_s"):
        print(f"{key}: before {before[key]:.3f} s, after {after[key]:.3f} s, after/before {after[key] / before[key]:.2f}x")
    n = after["n"]
    print(f"structures/s (whole call): before {n / before['whole_s']:.1f}, after {n / after['whole_s']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
