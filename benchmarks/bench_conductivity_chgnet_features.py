"""Do CHGNet's pretrained crystal features help the conductivity forest on OBELiX?

One measured experiment, not part of the shipped model. For every OBELiX CIF an ordered structure
is prepared, CHGNet 0.3.0 (pretrained on MPtrj) runs on it once (energy head only, one torch
thread) and its pooled 64-wide crystal feature vector is cached in ``WORK/chgnet_feas_{majority,rounded}.npz``
(reruns read the cache). Ordered structures come from, in order of preference:

* ``ordered``: the CIF has no partial occupancy;
* ``ewald``: :func:`htvs.prototypes.ordering.order_structure` (lowest-Ewald ordering in the
  CIF's own cell, within its default budget);
* ``majority``: otherwise every site becomes its majority species and is kept only if its total
  occupancy is at least 0.5; sites closer than 0.5 Å to a kept one are dropped. A crude
  approximant, used only by the ``majority`` coverage below. If it loses an element of the CIF the
  entry gets no CHGNet features.

* ``rounded``: the alternative fallback, :func:`rounded_approximant` (whole atoms per group of
  equivalent sites in proportion to occupancy, every element kept when possible).

Three coverages are compared: ``strict`` (ordered + ewald only), ``majority`` and ``rounded``
(ordered + ewald + that approximant). An entry
of the project's "with CIF" set whose CIF has no CHGNet vector under a coverage, and every entry
without a CIF, is predicted by the composition-only forest (configuration ``a``) instead:
the CHGNet configurations fall back, they never impute features.

Configurations (all scored the same way; the test split is scored once for every one of them):

* ``a_forest``: the shipped forest half — extra trees on the project's global descriptors
  (:func:`htvs.conductivity.train.make_entries`), median of trees, P = fraction of trees >= -4;
* ``b_forest+chgnet_{strict,majority,rounded}``: the same forest on descriptors + CHGNet vector, fitted on the
  train entries that have the vector, with the fallback above;
* ``c_chgnet_{strict,majority,rounded}``: the same forest on the CHGNet vector alone, with the fallback;
* ``d_random_forest``: the project's random-forest baseline
  (:func:`htvs.conductivity.baselines.random_forest_baseline`).

Choice is by 5-fold element-set-grouped CV on the train split
(:func:`htvs.conductivity.cv.fold_of_groups`, the project's folds, seed 0); forests use seeds
``--seeds``. Metrics: :func:`htvs.conductivity.baselines.score`; paired bootstrap of test MAE vs
the RF baseline: :func:`htvs.conductivity.baselines.paired_bootstrap_mae`. Writes
``WORK/results.json`` and prints a summary.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_conductivity_chgnet_features.py \
        --work runs/chgnet-feas [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

N_FOLDS = 5
CHGNET_WIDTH = 64
MIN_SITE_OCCUPANCY = 0.5
MIN_SEPARATION = 0.5  # Å


def _element_symbol(specie) -> str:
    """The element symbol of a pymatgen Element or Species (``"Li"`` for Li+)."""
    return getattr(specie, "element", specie).symbol


def _approximant(structure, species: list[str], coords: list):
    """The ordered structure of ``species`` at ``coords`` in ``structure``'s lattice, sites closer than
    0.5 Å to a kept one dropped; None if it is empty or lost an element of ``structure``."""
    from pymatgen.core import Structure

    if not species:
        return None
    out = Structure(structure.lattice, species, coords)
    if len(out) > 1:
        out.merge_sites(tol=MIN_SEPARATION, mode="delete")
    if {e.symbol for e in out.composition} != {e.symbol for e in structure.composition.element_composition}:
        return None
    return out


def majority_approximant(structure):
    """Each site -> its majority species, sites with total occupancy < 0.5 dropped, near duplicates
    (< 0.5 Å) removed. Returns None if an element is lost."""
    species, coords = [], []
    for site in structure:
        total = sum(site.species.values())
        if total < MIN_SITE_OCCUPANCY:
            continue
        specie, _ = max(site.species.items(), key=lambda kv: kv[1])
        species.append(_element_symbol(specie))
        coords.append(site.frac_coords)
    return _approximant(structure, species, coords)


def _largest_remainder(totals: dict, n_sites: int) -> dict:
    """Whole counts summing to ``n_sites`` (key None = vacancy), every present species >= 1 if it fits."""
    vacancy = max(n_sites - sum(totals.values()), 0.0)
    shares = {**totals, None: vacancy}
    counts = {k: int(np.floor(v)) for k, v in shares.items()}
    missing = max(n_sites - sum(counts.values()), 0)  # 0 for an over-full group (none in OBELiX)
    for k in sorted(shares, key=lambda k: counts[k] - shares[k])[:missing]:
        counts[k] += 1
    for k in totals:  # keep every element: take a site from the vacancies, else from the largest count
        if counts[k] == 0:
            donor = None if counts[None] > 0 else max(counts, key=lambda d: counts[d])
            if counts[donor] > 1 or donor is None:
                counts[donor] -= 1
                counts[k] += 1
    return counts


def rounded_approximant(structure):
    """Each group of equivalent disordered sites (same species and occupancies) gets whole atoms in
    proportion to its total occupancies (largest remainder; every element kept when the group has
    room; the rest vacancies), assigned to the group's sites in file order; sites closer than
    0.5 Å to a kept one are then dropped. No supercell, no energy ranking. None if an element is lost."""
    from htvs.prototypes.ordering import _site_groups

    species, coords = [], []
    for site in structure:
        if site.is_ordered:
            species.append(_element_symbol(site.specie))
            coords.append(site.frac_coords)
    for group in _site_groups(structure):
        totals: dict[str, float] = {}
        for i in group:
            for sp, occ in structure[i].species.items():
                el = _element_symbol(sp)
                totals[el] = totals.get(el, 0.0) + float(occ)
        counts = _largest_remainder(totals, len(group))
        labels = [el for el in sorted(totals, key=lambda e: -totals[e]) for _ in range(counts[el])]
        for i, el in zip(group, labels):
            species.append(el)
            coords.append(structure[i].frac_coords)
    return _approximant(structure, species, coords)


def prepare(structure, approximant: str):
    """(ordered structure or None, kind); ``approximant`` ("majority" or "rounded") is the fallback."""
    from htvs.errors import InvalidInput
    from htvs.prototypes.ordering import order_structure

    if structure.is_ordered:
        return structure, "ordered"
    try:
        return order_structure(structure), "ewald"
    except InvalidInput:
        pass
    except Exception:  # noqa: BLE001 - pymatgen failures inside the ordering: try the crude approximant
        pass
    approx = (majority_approximant if approximant == "majority" else rounded_approximant)(structure)
    return (approx, approximant) if approx is not None else (None, "none")


def chgnet_features(cifs, path: Path, approximant: str, log) -> dict[str, tuple[np.ndarray, str]]:
    """id -> (64-vector, kind) for every CIF that yields one; cached in ``path``."""
    if path.exists():
        with np.load(path) as arrays:
            ids, kinds, feas = list(arrays["ids"]), list(arrays["kinds"]), arrays["feas"]
            meta = json.loads(str(arrays["meta"]))
        log(f"CHGNet features read from {path} ({meta})")
        return {str(i): (f, str(k)) for i, k, f in zip(ids, kinds, feas) if k != "none"}
    import torch

    torch.set_num_threads(1)
    from chgnet.model import CHGNet

    from htvs.prototypes.readers import parse_cif

    model = CHGNet.load(verbose=False)
    ids, kinds, feas, seconds = [], [], [], {"prepare": 0.0, "chgnet": 0.0}
    failures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, cif in enumerate(cifs):
            t0 = time.perf_counter()
            structure = parse_cif(cif.text)[0]
            ordered, kind = prepare(structure, approximant)
            t1 = time.perf_counter()
            vector = np.full(CHGNET_WIDTH, np.nan, np.float32)
            if ordered is not None:
                try:
                    pred = model.predict_structure(ordered, task="e", return_crystal_feas=True)
                    vector = np.asarray(pred["crystal_fea"], np.float32)
                except Exception as err:  # noqa: BLE001 - e.g. an isolated atom in the graph
                    failures[cif.id] = f"{kind}: {type(err).__name__}: {err}"[:200]
                    kind = "none"
            seconds["prepare"] += t1 - t0
            seconds["chgnet"] += time.perf_counter() - t1
            ids.append(cif.id)
            kinds.append(kind)
            feas.append(vector)
            if (n + 1) % 50 == 0:
                log(f"  {n + 1}/{len(cifs)} CIFs, {seconds}")
    meta = {"chgnet": "0.3.0", "n": len(ids), "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "kinds": {k: kinds.count(k) for k in sorted(set(kinds))}, "chgnet_failures": failures}
    np.savez(path, ids=np.array(ids), kinds=np.array(kinds), feas=np.stack(feas), meta=np.array(json.dumps(meta)))
    log(f"CHGNet features computed: {meta}")
    return {i: (f, k) for i, k, f in zip(ids, kinds, feas) if k != "none"}


def coverage_mask(entries, feas, coverage: str) -> np.ndarray:
    """Entries (of the project's with-CIF set) that have a CHGNet vector under ``coverage``."""
    kinds = ("ordered", "ewald") if coverage == "strict" else ("ordered", "ewald", coverage)
    return np.array([g is not None and i in feas and feas[i][1] in kinds
                     for i, g in zip(entries.ids, entries.graphs)])


def chgnet_matrix(entries, feas, coverage: str) -> np.ndarray:
    """(n, 64) CHGNet vectors of ``coverage`` (NaN rows where there is none; never read by a model)."""
    mask = coverage_mask(entries, feas, coverage)
    return np.stack([feas[i][0] if ok else np.full(CHGNET_WIDTH, np.nan, np.float32)
                     for i, ok in zip(entries.ids, mask)])


def fit_predict(config: str, tr, te, data, seed: int):
    """(log10 sigma, P superionic) of rows ``te`` from a model fitted on rows ``tr`` of ``data``."""
    from htvs.conductivity.baselines import random_forest_baseline
    from htvs.conductivity.forest import ForestConfig, fit_forest

    forest_config = ForestConfig(seed=seed)
    g, y, frame = data["globals"], data["y"], data["frame"]
    if config == "d_random_forest":
        rf = random_forest_baseline(frame.iloc[tr], frame.iloc[te], seed=seed)
        return rf.log10_sigma, rf.p_superionic
    base = fit_forest(g[tr], y[tr], forest_config).predict(g[te])
    pred, prob = base.log10_sigma.copy(), base.p_superionic.copy()
    if config == "a_forest":
        return pred, prob
    kind, coverage = config.rsplit("_", 1)
    has, chg = data[f"has_{coverage}"], data[f"chgnet_{coverage}"]
    x = np.hstack([g, chg]) if kind.startswith("b_") else chg
    tr_c, te_c = tr[has[tr]], te[has[te]]
    if te_c.size:
        fitted = fit_forest(x[tr_c], y[tr_c], forest_config).predict(x[te_c])
        pred[has[te]], prob[has[te]] = fitted.log10_sigma, fitted.p_superionic
    return pred, prob


APPROXIMANTS = ("majority", "rounded")
COVERAGES = ("strict", *APPROXIMANTS)
CONFIGS = ("a_forest", *(f"b_forest+chgnet_{c}" for c in COVERAGES), *(f"c_chgnet_{c}" for c in COVERAGES),
           "d_random_forest")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/chgnet-feas"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    from htvs.conductivity.baselines import paired_bootstrap_mae, score
    from htvs.conductivity.cv import fold_of_groups
    from htvs.conductivity.graph import GraphConfig
    from htvs.conductivity.train import build_graph_cache, make_entries
    from htvs.datasets import load_obelix, load_obelix_cifs

    train_frame, test_frame = load_obelix("train"), load_obelix("test")
    cifs = load_obelix_cifs()
    graphs = build_graph_cache(cifs, GraphConfig(), args.work / "graphs.npz", log)
    feas = {a: chgnet_features(cifs, args.work / f"chgnet_feas_{a}.npz", a, log) for a in APPROXIMANTS}
    t_features = time.perf_counter() - start

    splits = {}
    for name, frame in (("train", train_frame), ("test", test_frame)):
        entries = make_entries(frame, graphs)
        d = {"entries": entries, "frame": frame.reset_index(drop=True),
             "globals": np.stack(entries.globals_).astype(np.float32), "y": entries.log10_sigma.astype(float),
             "cif": entries.has_structure}
        for coverage in COVERAGES:
            source = feas["rounded" if coverage == "strict" else coverage]
            d[f"has_{coverage}"] = coverage_mask(entries, source, coverage)
            d[f"chgnet_{coverage}"] = chgnet_matrix(entries, source, coverage)
        splits[name] = d
    counts = {name: {"n": len(d["y"]), "with_cif": int(d["cif"].sum()),
                     **{f"chgnet_{c}": int(d[f"has_{c}"].sum()) for c in COVERAGES}} for name, d in splits.items()}
    log(f"entries: {counts}")

    train, test = splits["train"], splits["test"]
    folds = fold_of_groups(train["entries"].groups, N_FOLDS, seed=0)
    n_train = len(train["y"])
    cv: dict[str, dict] = {}
    for config in CONFIGS:
        per_seed = []
        for seed in args.seeds:
            pred, prob = np.empty(n_train), np.empty(n_train)
            for k in range(N_FOLDS):
                tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
                pred[te], prob[te] = fit_predict(config, tr, te, train, seed)
            per_seed.append({"all": score(pred, prob, train["y"]),
                             **{f"chgnet_{c}": score(pred[train[f"has_{c}"]], prob[train[f"has_{c}"]],
                                                     train["y"][train[f"has_{c}"]]) for c in COVERAGES}})
        cv[config] = {"per_seed": per_seed, "mean": {s: {m: float(np.mean([p[s][m] for p in per_seed]))
                                                         for m in ("mae_log10_sigma", "accuracy", "roc_auc")}
                                                     for s in per_seed[0]}}
        log(f"cv {config}: {cv[config]['mean']['all']}")

    # final fits on all train rows, predictions for the test rows: the two splits stacked so that
    # row indices address one table
    import pandas as pd

    keys = ("globals", "y", *(f"{k}_{c}" for k in ("has", "chgnet") for c in COVERAGES))
    stacked = {key: np.concatenate([train[key], test[key]]) for key in keys}
    stacked["frame"] = pd.concat([train["frame"], test["frame"]], ignore_index=True)
    all_idx, test_idx = np.arange(n_train), n_train + np.arange(len(test["y"]))
    subsets = {"all": np.ones(len(test["y"]), bool), "with_cif": test["cif"],
               **{f"chgnet_{c}": test[f"has_{c}"] for c in COVERAGES}}
    results_test: dict[str, dict] = {}
    preds0: dict[str, np.ndarray] = {}
    for config in CONFIGS:
        per_seed = []
        for seed in args.seeds:
            pred, prob = fit_predict(config, all_idx, test_idx, stacked, seed)
            if seed == args.seeds[0]:
                preds0[config] = pred
            per_seed.append({s: score(pred[m], prob[m], test["y"][m]) for s, m in subsets.items()})
        results_test[config] = {"per_seed": per_seed,
                                "mean": {s: {m: float(np.mean([p[s][m] for p in per_seed]))
                                             for m in ("mae_log10_sigma", "accuracy", "roc_auc")} for s in subsets}}
        log(f"test {config}: {results_test[config]['mean']['all']}")
    bootstrap = {config: paired_bootstrap_mae(preds0[config], preds0["d_random_forest"], test["y"])
                 for config in CONFIGS if config != "d_random_forest"}
    bootstrap_cif = {config: paired_bootstrap_mae(preds0[config][test["cif"]], preds0["d_random_forest"][test["cif"]],
                                                   test["y"][test["cif"]])
                     for config in CONFIGS if config != "d_random_forest"}
    out = {"machine": machine_info(), "seeds": args.seeds, "counts": counts, "cv": cv, "test": results_test,
           "bootstrap_vs_random_forest_seed0": {"all": bootstrap, "with_cif": bootstrap_cif},
           "seconds": {"features_and_graphs": round(t_features, 1), "total": round(time.perf_counter() - start, 1)}}
    (args.work / "results.json").write_text(json.dumps(out, indent=1))
    print("config | CV MAE / acc / AUC (mean over seeds) | test MAE all / with CIF / acc / AUC")
    for config in CONFIGS:
        c, t = cv[config]["mean"]["all"], results_test[config]["mean"]
        print(f"{config} | {c['mae_log10_sigma']:.3f} / {c['accuracy']:.3f} / {c['roc_auc']:.3f} | "
              f"{t['all']['mae_log10_sigma']:.3f} / {t['with_cif']['mae_log10_sigma']:.3f} / "
              f"{t['all']['accuracy']:.3f} / {t['all']['roc_auc']:.3f}")
    print(json.dumps({"counts": counts, "bootstrap_all": bootstrap, "seconds": out["seconds"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
