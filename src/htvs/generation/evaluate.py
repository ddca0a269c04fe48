"""CSP evaluation as in DiffCSP: match rate and normalized RMSE with K samples per test composition.

A sample matches its ground truth when pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10,
ltol=0.3)`` finds a mapping; its RMSE is ``get_rms_dist`` (normalized by ``(V/N)^(1/3)``). With K
samples a test structure is matched when ANY of its K samples matches, with the RMSE of the best
one. Samples that are not structurally valid (non-finite lattice, volume < 0.1 Å^3 or two atoms
closer than 0.5 Å) count as misses.

The structures are a fixed-seed subset of the test part of the dataset (``mp20``: the bundled
MP-20-like set; ``perov5``: perov_5 test), plus a separate fixed-seed sample of its Li-containing
ternary and quaternary structures, scored on their own. ``K_max`` (the largest K) samples are
drawn per composition and K < K_max is scored on the first K of them: the samples are independent
draws, so this is the same estimate as a separate run with K samples, at no extra cost.

With ``split="val"`` (mp20) the subsets are drawn from the validation part instead, to choose
settings (such as the starting step of template-seeded sampling, :mod:`htvs.generation.seeded`)
without looking at test.

The same structures and K are scored for the two baselines of :mod:`htvs.generation.baselines`
(random cell and coordinates; a training template with the species swapped).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from htvs.atomic import write_json_atomic
from htvs.errors import InvalidInput
from htvs.generation.data import CrystalArrays

METRICS = "metrics.json"
DATASETS = ("mp20", "perov5")
MAX_SAMPLES = 100
#: Default atoms per batched sampling call. It bounds the memory, and on CPU ~2,000-atom batches
#: (~25,000 edges) cost ~1.5x less time per edge than 20,000-atom ones (measured on 1 thread).
ATOMS_PER_CALL = 2_000
MATCHER = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}
#: DiffCSP (Jiao et al., NeurIPS 2023, Table 1): match rate (fraction) and RMSE by samples per composition.
PUBLISHED_DIFFCSP = {
    "source": "Jiao et al., NeurIPS 2023, Table 1",
    "mp20": {"1": {"match_rate": 0.5149, "rmse": 0.0631}, "20": {"match_rate": 0.7793, "rmse": 0.0492}},
    "perov5": {"1": {"match_rate": 0.5202, "rmse": 0.0760}, "20": {"match_rate": 0.9860, "rmse": 0.0128}},
}
#: Parts of a dataset that can be evaluated (val: for choosing settings such as t_start).
SPLITS = ("test", "val")
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


def rms_matrix(samples: Sequence[Sequence], truth: Sequence, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized RMS distance of sample ``j`` of test structure ``i`` to its truth, ``[n, k]``.

    NaN where the sample does not match, is invalid or is missing (``samples[i]`` shorter than
    ``k``); the second array says which samples are valid.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(**MATCHER)
    rms = np.full((len(truth), k), np.nan)
    valid = np.zeros((len(truth), k), dtype=bool)
    for i, (drawn, gt) in enumerate(zip(samples, truth, strict=True)):
        for j, sample in enumerate(list(drawn)[:k]):
            if not is_valid_structure(sample):
                continue
            valid[i, j] = True
            try:
                result = matcher.get_rms_dist(sample, gt)
            except Exception:  # noqa: BLE001 - pymatgen may fail on a pathological cell: a miss
                result = None
            if result is not None:
                rms[i, j] = float(result[0])
    return rms, valid


def best_of_k(rms: np.ndarray, valid: np.ndarray, k: int, rows: Sequence[int] | None = None) -> dict:
    """Match rate and mean best RMSE over ``rows`` using their first ``k`` samples.

    ``valid_fraction`` is over all ``n * k`` samples; ``rmse`` is None when nothing matched.
    """
    rows = np.arange(len(rms)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    first = rms[rows, :k]
    hit = ~np.isnan(first).all(axis=1) if n else np.zeros(0, dtype=bool)
    best = np.nanmin(first[hit], axis=1) if hit.any() else np.zeros(0)
    return {"n": n, "valid_fraction": float(valid[rows, :k].mean()) if n else None,
            "match_rate": float(hit.mean()) if n else None,
            "rmse": float(best.mean()) if len(best) else None, "matched": int(hit.sum())}


def match_metrics(predicted: Sequence, truth: Sequence) -> dict:
    """1-sample metrics: one predicted structure (or None) per truth."""
    return best_of_k(*rms_matrix([[p] for p in predicted], truth, 1), 1)


def evaluation_subsets(test: CrystalArrays, n_structures: int, li_structures: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted test indices of the fixed-seed subset and of the Li ternary/quaternary sample.

    ``li_structures == 0``: the Li sample is the subset's own Li ternary/quaternary structures.
    """
    from htvs.generation.mp_data import li_ternary_quaternary

    main = np.sort(np.random.default_rng(seed).choice(len(test), size=min(n_structures, len(test)), replace=False))
    li_all = li_ternary_quaternary(test)
    if li_structures == 0:
        return main, np.intersect1d(main, li_all)
    size = min(li_structures, len(li_all))
    return main, np.sort(np.random.default_rng([seed, 1]).choice(li_all, size=size, replace=False))


def load_dataset(name: str, split: str = "test") -> tuple[CrystalArrays, CrystalArrays, dict[str, int | str]]:
    """Training crystals, evaluated crystals (the ``split`` part: ``test``, or ``val`` for mp20,
    to choose settings without looking at test) and split sizes of dataset ``name``."""
    if split not in SPLITS:
        raise InvalidInput(f"evaluated split must be one of {SPLITS}, got {split!r}")
    if name == "mp20":
        from htvs.generation.mp_data import load_mp20

        train, test, val = load_mp20("train"), load_mp20("test"), load_mp20("val")
        return train, (val if split == "val" else test), {"train": len(train), "val": len(val), "test": len(test)}
    if split != "test":
        raise InvalidInput(f"perov5 has no validation part apart from the training one; split must be 'test', "
                           f"got {split!r}")
    from htvs.generation.data import load_perov5

    train, test = load_perov5("val"), load_perov5("test")
    return train, test, {"train": len(train), "test": len(test), "train_is": "perov_5 val (train not bundled)"}


def sample_model(model, schedule, compositions: Sequence[Sequence[int]], k: int, seed: int, step_lr: float,
                 max_atoms_per_call: int, log: Callable[[str], None]) -> list[list]:
    """``k`` samples per composition, batched: one ``sample_crystals`` call per chunk of crystals."""
    import torch

    from htvs.generation.sampling import atom_chunks, sample_crystals, to_structures

    jobs = [list(map(int, numbers)) for numbers in compositions for _ in range(k)]
    chunks = atom_chunks([len(j) for j in jobs], max_atoms_per_call)
    cost = np.array([sum(len(jobs[i]) ** 2 for i in chunk) for chunk in chunks], dtype=float)  # edges
    started, structures = time.monotonic(), []
    for c, chunk in enumerate(chunks):
        numbers = torch.tensor([z for i in chunk for z in jobs[i]], dtype=torch.long)
        counts = torch.tensor([len(jobs[i]) for i in chunk], dtype=torch.long)

        def progress(done: int, c: int = c, atoms: int = len(numbers)) -> None:
            if done % 100 == 0 or done == schedule.timesteps:
                elapsed = time.monotonic() - started
                fraction = (cost[:c].sum() + cost[c] * done / schedule.timesteps) / cost.sum()
                log(f"sampling chunk {c + 1}/{len(chunks)} ({atoms} atoms): step {done}/{schedule.timesteps}  "
                    f"{elapsed:.0f} s, about {elapsed / fraction - elapsed:.0f} s left")

        result = sample_crystals(model, schedule, numbers, counts, torch.Generator().manual_seed(seed * 1_000_003 + c),
                                 step_lr=step_lr, progress=progress)
        structures += to_structures(result, numbers)
    return [structures[i * k : (i + 1) * k] for i in range(len(compositions))]


def _check(data: str, n_structures: int, samples: Sequence[int], li_structures: int, threads: int,
           max_atoms_per_call: int) -> list[int]:
    if data not in DATASETS:
        raise InvalidInput(f"dataset must be one of {DATASETS}, got {data!r}")
    if n_structures < 1:
        raise InvalidInput(f"number of test structures must be at least 1, got {n_structures}")
    if li_structures < 0:
        raise InvalidInput(f"number of Li test structures must be >= 0, got {li_structures}")
    if not samples:
        raise InvalidInput("give at least one number of samples per composition")
    for k in samples:
        if not 1 <= int(k) <= MAX_SAMPLES:
            raise InvalidInput(f"samples per composition must be between 1 and {MAX_SAMPLES}, got {k}")
    if threads < 1:
        raise InvalidInput(f"threads must be at least 1, got {threads}")
    if max_atoms_per_call < 1:
        raise InvalidInput(f"atoms per sampling call must be at least 1, got {max_atoms_per_call}")
    return sorted({int(k) for k in samples})


def evaluate_run(
    run_dir: str | Path,
    n_structures: int = 300,
    seed: int = 0,
    threads: int = 1,
    step_lr: float = 1e-5,
    log: Callable[[str], None] = print,
    data: str = "mp20",
    samples: Sequence[int] = (1, 20),
    li_structures: int = 100,
    max_atoms_per_call: int = ATOMS_PER_CALL,
    init: str = "noise",
    t_start: float = 1.0,
    split: str = "test",
) -> dict:
    """Score the run's EMA model and the two baselines on the same test structures for each K in
    ``samples``; writes ``run_dir/metrics.json`` (atomically) and returns it.

    Args:
        n_structures: size of the fixed-seed test subset (all of test when larger).
        seed: seed of the subsets, of the model's samples and of the baselines.
        li_structures: size of the separate Li ternary/quaternary sample (0: those of the subset).
        max_atoms_per_call: atoms per batched sampling call (bounds the memory; a cell larger than
            this is sampled alone).
        init: ``noise`` (the model samples from pure noise at step T) or ``template`` (from the
            template baseline's structures noised to ``t_start * T``, :mod:`htvs.generation.seeded`).
        t_start: starting fraction of the diffusion steps for ``init="template"`` (0, 1].
        split: ``test``, or ``val`` (mp20 only) to choose settings without looking at test.
    """
    import torch

    from htvs.generation import baselines
    from htvs.generation.mp_data import li_ternary_quaternary
    from htvs.generation.train import load_run_model

    from htvs.generation.seeded import TemplatePrior, check_init, check_t_start, sample_seeded, start_step

    ks = _check(data, n_structures, samples, li_structures, threads, max_atoms_per_call)
    init, t_start = check_init(init), check_t_start(t_start)
    if split not in SPLITS:
        raise InvalidInput(f"evaluated split must be one of {SPLITS}, got {split!r}")
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidInput(f"run directory {str(run)!r} does not exist")
    torch.set_num_threads(threads)
    model, schedule, settings, trained = load_run_model(run)
    train, test, sizes = load_dataset(data, split)
    main, li = evaluation_subsets(test, n_structures, li_structures, seed)
    union = np.union1d(main, li)
    main_rows, li_rows = np.searchsorted(union, main), np.searchsorted(union, li)
    truth = [test.structure(int(i)) for i in union]
    compositions = [test.atomic_numbers[test.offsets[i] : test.offsets[i] + test.num_atoms[i]] for i in union]
    untrained = sum(1 for numbers in compositions if not set(numbers.tolist()) <= set(trained))
    if untrained:
        log(f"note: {untrained} of {len(union)} test structures hold elements the run never trained on")
    k_max = ks[-1]
    log(f"CSP on {data} {split}: {len(main)} structures + {len(li)} Li ternary/quaternary ({len(union)} distinct), "
        f"K = {ks}, {len(union) * k_max} samples of {schedule.timesteps} steps")
    volumes = baselines.fit_volume_model(train)
    library = baselines.template_library(train)
    started = time.monotonic()
    if init == "template":
        drawn = {"model": sample_seeded(model, schedule, compositions, k_max, seed, t_start,
                                        TemplatePrior(library, volumes), step_lr, max_atoms_per_call, log)}
    else:
        drawn = {"model": sample_model(model, schedule, compositions, k_max, seed, step_lr, max_atoms_per_call,
                                       log)}
    sample_seconds = time.monotonic() - started
    drawn["random"] = baselines.random_structures(compositions, volumes, k_max, seed)
    drawn["template"] = baselines.template_structures(compositions, library, volumes, k_max, seed)
    started = time.monotonic()
    scored = {name: rms_matrix(structures, truth, k_max) for name, structures in drawn.items()}
    match_seconds = time.monotonic() - started
    no_template = np.array([len(s) == 0 for s in drawn["template"]])

    def per_k(rows: np.ndarray) -> dict:
        out = {}
        for k in ks:
            out[str(k)] = {name: best_of_k(*scored[name], k, rows) for name in scored}
            out[str(k)]["template"]["no_template"] = int(no_template[rows].sum())
        return out

    n_sampled = len(union) * k_max
    metrics = {
        "task": f"CSP on {data} {split}, best of K samples per composition (DiffCSP protocol)",
        "dataset": data,
        "split": split,
        "init": {"kind": init, "t_start": t_start if init == "template" else 1.0,
                 "start_step": start_step(schedule, t_start) if init == "template" else schedule.timesteps},
        "trained_on": settings.get("data", "perov_5 val"),
        "split_sizes": sizes,
        "test_structures": len(main),
        "li_structures": len(li),
        "li_in_subset": int(np.isin(main, li_ternary_quaternary(test)).sum()),
        "subset_seed": seed,
        "untrained_element_structures": untrained,
        "steps": settings["step"],
        "train_seconds": round(settings["seconds"], 1),
        "samples": ks,
        "sampling": {"timesteps": schedule.timesteps, "step_lr": step_lr, "seconds": round(sample_seconds, 1),
                     "structures": n_sampled, "structures_per_s": round(n_sampled / max(sample_seconds, 1e-9), 3),
                     "max_atoms_per_call": max_atoms_per_call, "threads": threads},
        "matching_seconds": round(match_seconds, 1),
        "matcher": MATCHER,
        "per_k": per_k(main_rows),
        "li_ternary_quaternary": {"n": len(li), "per_k": per_k(li_rows)},
        "baselines": {
            "random": {"cell": "volume from per-element atomic volumes (NNLS on train), lengths lognormal "
                               "around the cube edge, angles 60-120 deg",
                       "volume_fit_rms_relative_error": round(volumes.rms_relative_error, 4)},
            "template": {"rule": "training structures of the same stoichiometry pattern, closest mean "
                                 "electronegativity difference first; species swapped, volume rescaled"},
        },
        "published_diffcsp": {"source": PUBLISHED_DIFFCSP["source"], "per_k": PUBLISHED_DIFFCSP[data],
                              "note": "the real MP-20 (2021 snapshot, E_hull cut, random split)" if data == "mp20"
                              else "perov_5 test with the full train split"},
    }
    write_json_atomic(metrics, run / METRICS)
    log(json.dumps({"per_k": metrics["per_k"], "li_ternary_quaternary": metrics["li_ternary_quaternary"]}))
    return metrics
