"""Roost inference: aviary's own pipeline (baseline) vs htvs featurize + onnxruntime (DenseRoost).

One model, N formulas drawn from the bundled MP table with a fixed seed, the same thread count for
torch and onnxruntime. Prints one JSON line: rates (predictions/s), their ratio (goal >= 3),
the max abs difference of the two predictions, and the extrapolated wall time of the paper-scale
workload (1.4 M formulas x 10 models x 2 targets) on this machine. Exits 1 if the ratio is < 3.

    .venv/bin/python benchmarks/bench_composition_inference.py [--n 16384] [--threads 2]
        [--model-dir RUN]   # a training run directory (train_config.json, model_0/best.pt)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

from htvs.composition.train import SHIPPED_ROOST  # noqa: E402

PAPER_FORMULAS = 1_379_333
PAPER_MODELS = 10
PAPER_TARGETS = 2
GOAL_RATIO = 3.0


def load_model(model_dir: str | None):
    from htvs.composition.model import build_roost

    if model_dir is None:
        config = SHIPPED_ROOST  # the width trained for the shipped ensembles
        return build_roost(config, seed=0).eval(), config
    from htvs.composition.train import TrainConfig, load_member

    run = Path(model_dir)
    config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text())).roost
    return load_member(run, 0, config), config


def run_aviary(model, formulas: list[str], batch_size: int) -> tuple[np.ndarray, float, float]:
    """aviary CompositionData + collate_batch + Roost.forward; returns (pred, featurize_s, forward_s)."""
    import pandas as pd
    import torch
    from aviary.roost.data import CompositionData, collate_batch

    frame = pd.DataFrame(
        {"material_id": np.arange(len(formulas)), "composition": formulas, "target": 0.0}
    )
    data = CompositionData(frame, task_dict={"target": "regression"})  # fresh: its cache is empty
    preds, t_feat, t_fwd = [], 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(formulas), batch_size):
            t0 = time.perf_counter()
            inputs, *_ = collate_batch([data[i] for i in range(lo, min(lo + batch_size, len(formulas)))])
            t1 = time.perf_counter()
            (out,) = model(*inputs)
            t2 = time.perf_counter()
            preds.append(out[:, 0].numpy())
            t_feat += t1 - t0
            t_fwd += t2 - t1
    return np.concatenate(preds).astype(np.float64), t_feat, t_fwd


def run_onnx(ensemble, formulas: list[str], batch_size: int) -> tuple[np.ndarray, float, float]:
    """htvs featurize + onnxruntime; returns (pred, featurize_s, forward_s)."""
    from htvs.composition.featurize import featurize

    t_feat = t_fwd = 0.0
    preds = np.full(len(formulas), np.nan)
    for lo in range(0, len(formulas), batch_size):
        t0 = time.perf_counter()
        batch, _ = featurize(formulas[lo : lo + batch_size], ensemble.embedding)
        t1 = time.perf_counter()
        preds[lo + batch.rows] = ensemble.predict_dense(batch.dense_z, batch.dense_weights)[0]
        t2 = time.perf_counter()
        t_feat += t1 - t0
        t_fwd += t2 - t1
    return preds, t_feat, t_fwd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16_384, help="formulas to predict")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=4096, help="formulas per batch (both)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="training run directory (else random init)")
    args = parser.parse_args(argv)

    import torch

    from htvs.composition.onnx_export import export_onnx
    from htvs.composition.predictor import OnnxRoostEnsemble
    from htvs.datasets import load_mp_formation_energies

    torch.set_num_threads(args.threads)
    table = load_mp_formation_energies()
    replace = args.n > len(table)
    formulas = table["formula"].sample(n=args.n, random_state=args.seed, replace=replace).tolist()
    model, config = load_model(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        size = path.stat().st_size
        ensemble = OnnxRoostEnsemble(
            [path], target="e_form", units="eV/atom", intra_op_threads=args.threads
        )
        best = {"aviary": (np.inf, 0.0, 0.0), "onnx": (np.inf, 0.0, 0.0)}
        for _ in range(args.repeats):  # interleaved, best of each (shared, noisy machine)
            ref, f_a, w_a = run_aviary(model, formulas, args.batch_size)
            best["aviary"] = min(best["aviary"], (f_a + w_a, f_a, w_a))
            ours, f_o, w_o = run_onnx(ensemble, formulas, args.batch_size)
            best["onnx"] = min(best["onnx"], (f_o + w_o, f_o, w_o))
    n = len(formulas)
    rate = {k: n / v[0] for k, v in best.items()}
    ratio = rate["onnx"] / rate["aviary"]

    def paper_hours(feat_s: float, fwd_s: float) -> float:
        # featurize once per target, one forward pass per model and target
        scale = PAPER_FORMULAS / n
        return (PAPER_TARGETS * feat_s + PAPER_TARGETS * PAPER_MODELS * fwd_s) * scale / 3600

    result = {
        "benchmark": "composition_inference",
        "n_formulas": n,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "model": "random init" if args.model_dir is None else args.model_dir,
        "roost_config": config.to_dict(),
        "onnx_bytes": size,
        "aviary_pred_per_s": round(rate["aviary"], 1),
        "onnx_pred_per_s": round(rate["onnx"], 1),
        "ratio": round(ratio, 2),
        "goal_ratio": GOAL_RATIO,
        "aviary_featurize_per_s": round(n / best["aviary"][1], 1),
        "aviary_forward_per_s": round(n / best["aviary"][2], 1),
        "htvs_featurize_per_s": round(n / best["onnx"][1], 1),
        "onnx_forward_per_s": round(n / best["onnx"][2], 1),
        "max_abs_diff": float(np.max(np.abs(ours - ref))),
        "paper_workload": f"{PAPER_FORMULAS} formulas x {PAPER_MODELS} models x {PAPER_TARGETS} targets",
        "paper_hours_aviary": round(paper_hours(best["aviary"][1], best["aviary"][2]), 2),
        "paper_hours_onnx": round(paper_hours(best["onnx"][1], best["onnx"][2]), 2),
        "machine": machine_info(),
    }
    print(json.dumps(result))
    return 0 if ratio >= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
