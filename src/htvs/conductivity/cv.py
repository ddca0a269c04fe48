"""Element-set-grouped cross-validation on the OBELiX train split: picks the GNN/forest blend weight.

The official OBELiX test split shares the element set of a training entry for only 36 of its 121
entries, so model choices are made on folds that keep every element set on one side. Each fold
trains one GNN member (the member-k recipe of :mod:`htvs.conductivity.train`) and one forest on
the other folds and predicts the held-out fold; the blend weight ``w`` of
:func:`htvs.conductivity.forest.blend` is the grid value with the lowest out-of-fold MAE of log10
sigma (ties go to the larger GNN weight).
The test split is never read here.

Layout (resumable: finished folds are skipped)::

    RUN/cv/fold_K/...        the fold's GNN member (checkpoints as in training)
    RUN/cv/fold_K.npz        out-of-fold GNN predictions of the fold
    RUN/cv/cv.json           per-weight scores and the chosen weight
    RUN/cv/oof.npz           out-of-fold predictions of every train entry (rows, fold, y, and the
                             blend at the chosen weight: log10 sigma, std, P) for the calibration
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from htvs.atomic import atomic_path, write_json_atomic
from htvs.conductivity.baselines import score
from htvs.conductivity.forest import ForestConfig, ForestPrediction, blend, fit_forest

#: Candidate GNN weights of the blend.
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def fold_of_groups(groups: list[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold index of every entry: element-set groups dealt round-robin in a seeded random order."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold = {names[g]: i % n_folds for i, g in enumerate(order)}
    return np.array([fold[g] for g in groups])


def grouped_cv(run_dir: Path, config, data, n_folds: int = 5, forest: ForestConfig | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the grouped CV of ``config`` on ``data`` (train-split Entries).

    Only the GNN fold members are cached (``fold_K.npz``); the forest folds are refitted every
    time (seconds), so a change of forest settings never retrains a GNN.
    """
    from htvs.conductivity.train import load_member, predict_entries, train_member

    cv_dir = Path(run_dir) / "cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    folds = fold_of_groups(data.groups, n_folds, config.split_seed)
    member_config = replace(config, n_models=1)
    parts = []
    for k in range(n_folds):
        path = cv_dir / f"fold_{k}.npz"
        train_rows, test_rows = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        train, test = data.subset(train_rows), data.subset(test_rows)
        if not path.exists():
            member = train_member(cv_dir / f"fold_{k}", 0, member_config, train, log)
            model = load_member(cv_dir / f"fold_{k}" / "model_0" / "best.pt", config.model)
            reg, logit = predict_entries(model, test)
            with atomic_path(path) as tmp:
                np.savez(tmp, rows=test_rows, gnn=reg, gnn_p=1 / (1 + np.exp(-logit)))
            log(f"cv fold {k}: {len(test)} entries, GNN member {member['epochs']} epochs")
        with np.load(path) as arrays:
            part = {key: arrays[key] for key in ("gnn", "gnn_p")}
        fitted = fit_forest(np.stack(train.globals_), train.log10_sigma, forest).predict(np.stack(test.globals_))
        part.update(rows=test_rows, forest=fitted.log10_sigma, forest_p=fitted.p_superionic,
                    forest_spread=fitted.spread)
        parts.append(part)
    oof = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    y = data.log10_sigma[oof["rows"]].astype(float)
    trees = ForestPrediction(oof["forest"], oof["forest_p"], oof["forest_spread"])
    table = {}
    for w in WEIGHT_GRID:
        pred = blend(oof["gnn"][None, :], oof["gnn_p"][None, :], trees, w)
        err = np.abs(pred.log10_sigma_mean - y)
        table[str(w)] = {**score(pred.log10_sigma_mean, pred.p_superionic, y),
                         "within_1_std": float(np.mean(err <= pred.log10_sigma_std))}
    best = min(WEIGHT_GRID, key=lambda w: (table[str(w)]["mae_log10_sigma"], -w))
    chosen = blend(oof["gnn"][None, :], oof["gnn_p"][None, :], trees, best)
    with atomic_path(cv_dir / "oof.npz") as tmp:
        np.savez(tmp, rows=oof["rows"], fold=folds[oof["rows"]], y=y, log10_sigma=chosen.log10_sigma_mean,
                 std=chosen.log10_sigma_std, p_superionic=chosen.p_superionic)
    result = {"n_folds": n_folds, "grouping": "element_set", "n": int(y.size), "blend_weight": best,
              "forest": (forest or ForestConfig()).to_dict(), "by_gnn_weight": table}
    write_json_atomic(result, cv_dir / "cv.json")
    log(f"cv: GNN weight {best} (out-of-fold MAE {table[str(best)]['mae_log10_sigma']:.3f}; "
        f"forest alone {table['0.0']['mae_log10_sigma']:.3f}, GNN alone {table['1.0']['mae_log10_sigma']:.3f})")
    return result
