"""Roost ensemble training speed: the stacked trainer (K members in one process) vs train.py's
per-member loop, in member-samples per second (K x formulas per second).

Both train the shipped width (``SHIPPED_ROOST``, 273 k parameters per member) on the MP
formation-energy training split (eV/atom), batch 256, AdamW, the same torch thread count, for the
same number of optimizer steps. Baseline: ``htvs.composition.train._train_epoch`` on
``Featurized`` (one member; the per-member engine trains members one after another, so its
member-samples/s is its formulas/s). Stacked: ``htvs.composition.stacked.train_step`` with K
members, each on its own mini-batch per step. The two alternate in rounds (the machines are
shared), and the rates are totals over all rounds. Prints one JSON line.

    .venv/bin/python benchmarks/bench_composition_training.py [--steps 200] [--members 10]
        [--threads 2] [--rounds 4]
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

GOAL_RATIO = 10.0
BATCH = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps for each loop (all rounds)")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    import torch

    from htvs.composition.datasets import load_split
    from htvs.composition.model import build_roost
    from htvs.composition.stacked import DenseSplit, StackedRoost, _representatives, train_step
    from htvs.composition.train import SHIPPED_ROOST, Featurized, _train_epoch

    torch.set_num_threads(args.threads)
    split = load_split("ef")
    t0 = time.perf_counter()
    featurized = Featurized.from_frame(split.train)
    dense = DenseSplit.from_frame(split.train)
    prep_s = time.perf_counter() - t0
    n = len(featurized)
    k_members = args.members

    baseline = build_roost(SHIPPED_ROOST, seed=0)
    base_opt = torch.optim.AdamW(baseline.parameters(), lr=1e-3, weight_decay=1e-6)
    stacked = StackedRoost.from_models(SHIPPED_ROOST, [build_roost(SHIPPED_ROOST, seed=k) for k in range(k_members)])
    stack_opt = torch.optim.AdamW(stacked.parameters(), lr=1e-3, weight_decay=1e-6)
    stacked.train()
    tensors = tuple(torch.from_numpy(a) for a in (dense.z, dense.fractions, dense.targets))
    counts = dense.counts
    reps = _representatives(counts)
    device = torch.device("cpu")

    per_round = max(args.steps // args.rounds, 1)
    base_s = stack_s = 0.0
    base_steps = stack_steps = 0
    # one warm-up step each (allocator, thread pool), not timed
    _train_epoch(baseline, base_opt, featurized, np.arange(BATCH), BATCH, device, None)
    warm = np.stack([np.arange(BATCH) + k for k in range(k_members)])
    train_step(stacked, stack_opt, tensors, counts, reps, warm)
    for r in range(args.rounds):
        order = np.random.default_rng([0, r]).permutation(n)[: per_round * BATCH]
        t = time.perf_counter()
        _train_epoch(baseline, base_opt, featurized, order, BATCH, device, None)
        base_s += time.perf_counter() - t
        base_steps += per_round
        orders = np.stack([np.random.default_rng([0, k, r]).permutation(n) for k in range(k_members)])
        t = time.perf_counter()
        for step in range(per_round):
            train_step(stacked, stack_opt, tensors, counts, reps, orders[:, step * BATCH : (step + 1) * BATCH])
        stack_s += time.perf_counter() - t
        stack_steps += per_round
    base_rate = base_steps * BATCH / base_s
    stack_rate = stack_steps * BATCH * k_members / stack_s
    result = {
        "benchmark": "composition_training",
        "width": "SHIPPED_ROOST (273 k parameters per member)",
        "formulas": n,
        "batch_size": BATCH,
        "threads": args.threads,
        "members": k_members,
        "steps_each": base_steps,
        "baseline_member_samples_per_s": round(base_rate, 1),
        "stacked_member_samples_per_s": round(stack_rate, 1),
        "ratio": round(stack_rate / base_rate, 2),
        "goal_ratio": GOAL_RATIO,
        "baseline_s_per_epoch_per_member": round(n / base_rate, 1),
        "stacked_s_per_epoch_all_members": round(n * k_members / stack_rate, 1),
        "featurize_s (both layouts, once)": round(prep_s, 1),
        **machine_info(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
