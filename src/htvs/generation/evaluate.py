"""CSP evaluation as in DiffCSP: match rate and normalized RMSE, 1 sample per test composition.

A sample matches its ground truth when pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10,
ltol=0.3)`` finds a mapping; its RMSE is ``get_rms_dist`` (normalized by ``(V/N)^(1/3)``).
Samples that are not structurally valid (non-finite lattice, volume < 0.1 Å^3 or two atoms closer
than 0.5 Å) count as misses. The same run scores a baseline: random fractional coordinates in a
cubic cell with the training set's mean volume per atom (Å^3/atom).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from htvs.atomic import write_json_atomic
from htvs.generation.data import CrystalArrays, load_perov5
from htvs.generation.sampling import sample_crystals, to_structures
from htvs.generation.train import crystal_tensors, load_run_model

METRICS = "metrics.json"
#: DiffCSP (Jiao et al., NeurIPS 2023, Table 1), perov_5 test, 1 sample: match rate and RMSE.
PUBLISHED_DIFFCSP = {"match_rate": 0.5202, "rmse": 0.0760, "source": "Jiao et al., NeurIPS 2023, Table 1"}
MIN_DISTANCE_A = 0.5
MIN_VOLUME_A3 = 0.1


def is_valid_structure(structure) -> bool:
    """Finite, volume >= 0.1 Å^3 and no two atoms (periodic images included) closer than 0.5 Å."""
    if structure is None:
        return False
    try:
        if not np.isfinite(structure.lattice.matrix).all() or structure.volume < MIN_VOLUME_A3:
            return False
        distances = structure.distance_matrix
    except Exception:  # noqa: BLE001 - a degenerate lattice is simply invalid
        return False
    if len(structure) == 1:
        return True
    return float(distances[np.triu_indices(len(structure), 1)].min()) >= MIN_DISTANCE_A


def match_metrics(predicted: Sequence, truth: Sequence) -> dict[str, float | int]:
    """Match rate (fraction) and mean normalized RMSE over matched pairs (NaN when none matched)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    rms, valid = [], 0
    for pred, gt in zip(predicted, truth, strict=True):
        if not is_valid_structure(pred):
            continue
        valid += 1
        try:
            result = matcher.get_rms_dist(pred, gt)
        except Exception:  # noqa: BLE001 - pymatgen may fail on a pathological cell: a miss
            result = None
        if result is not None:
            rms.append(float(result[0]))
    n = len(truth)
    return {"n": n, "valid_fraction": valid / n, "match_rate": len(rms) / n,
            "rmse": float(np.mean(rms)) if rms else float("nan"), "matched": len(rms)}


def random_baseline(crystals: CrystalArrays, volume_per_atom_a3: float, seed: int) -> list:
    """Random fractional coordinates in a cubic cell of ``volume_per_atom_a3`` × atoms (Å^3)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    structures = []
    for start, n in zip(crystals.offsets, crystals.num_atoms):
        edge = float((volume_per_atom_a3 * n) ** (1 / 3))
        species = [int(z) for z in crystals.atomic_numbers[start : start + n]]
        structures.append(Structure(Lattice.cubic(edge), species, rng.random((int(n), 3))))
    return structures


def test_subset(n_structures: int, seed: int) -> tuple[np.ndarray, CrystalArrays]:
    """Sorted indices of a fixed-seed subset of perov_5 test and the crystals."""
    test = load_perov5("test")
    n = min(n_structures, len(test))
    indices = np.sort(np.random.default_rng(seed).choice(len(test), size=n, replace=False))
    return indices, test.subset(indices)


def evaluate_run(
    run_dir: str | Path,
    n_structures: int = 500,
    seed: int = 0,
    threads: int = 1,
    step_lr: float = 1e-5,
    log: Callable[[str], None] = print,
) -> dict:
    """Sample 1 structure per test composition with the run's EMA model; score it and the baseline.

    Writes ``run_dir/metrics.json`` and returns it.
    """
    torch.set_num_threads(threads)
    model, schedule, settings, _ = load_run_model(run_dir)
    indices, subset = test_subset(n_structures, seed)
    truth = [subset.structure(i) for i in range(len(subset))]
    tensors = crystal_tensors(subset)
    started = time.monotonic()

    def progress(done: int) -> None:
        if done % 100 == 0:
            log(f"sampling: step {done}/{schedule.timesteps}  {time.monotonic() - started:.0f} s")

    result = sample_crystals(model, schedule, tensors["atomic_numbers"], tensors["num_atoms"],
                             torch.Generator().manual_seed(seed), step_lr=step_lr, progress=progress)
    sample_seconds = time.monotonic() - started
    predicted = to_structures(result, tensors["atomic_numbers"])
    model_metrics = match_metrics(predicted, truth)
    volume_per_atom = float(load_perov5("val").volume_per_atom().mean())
    baseline_metrics = match_metrics(random_baseline(subset, volume_per_atom, seed), truth)
    metrics = {
        "task": "CSP on perov_5 test, 1 sample per composition",
        "trained_on": "perov_5 val (the train split is not available here)",
        "test_structures": len(indices),
        "subset_seed": seed,
        "steps": settings["step"],
        "train_seconds": round(settings["seconds"], 1),
        "sampling": {"timesteps": schedule.timesteps, "step_lr": step_lr, "seconds": round(sample_seconds, 1),
                     "threads": threads},
        "matcher": {"stol": 0.5, "angle_tol": 10, "ltol": 0.3},
        "model": model_metrics,
        "baseline_random_cubic": {**baseline_metrics, "volume_per_atom_a3": round(volume_per_atom, 4)},
        "published_diffcsp": PUBLISHED_DIFFCSP,
    }
    write_json_atomic(metrics, Path(run_dir) / METRICS)
    log(json.dumps({"model": model_metrics, "baseline": baseline_metrics}))
    return metrics
