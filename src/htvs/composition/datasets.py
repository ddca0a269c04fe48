"""Training sets of the composition models, with fixed, documented splits.

Every split is a deterministic function of the bundled data and a seed, so a model card's
"data + split + seed" reproduces the exact rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from htvs import datasets
from htvs.errors import InvalidInput

#: Targets `htvs train composition --target` accepts, with what they mean.
TARGETS: dict[str, str] = {
    "ef": "MP formation energy (eV/atom), lowest per reduced formula; 10 % random test split",
    "ef-bartel": "MP formation energy (eV/atom), Bartel et al. 2020 train+val / test split",
    "gap-mp": "MP PBE band gap (eV) of non-metals (gap > 0), median per formula; pretraining",
    "gap-expt": "experimental band gap (eV) of non-metals (gap > 0); 10 % random test split",
    "gap-expt-all": "experimental band gap (eV), metals included (matbench expt_gap); k-fold CV",
}

UNITS = {"ef": "eV/atom", "ef-bartel": "eV/atom", "gap-mp": "eV", "gap-expt": "eV", "gap-expt-all": "eV"}


@dataclass(frozen=True)
class DataSplit:
    """Train / validation (early stopping) / test tables with columns ``formula``, ``target``."""

    name: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _random_split(
    frame: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = int(round(test_fraction * len(frame)))
    n_val = int(round(val_fraction * len(frame)))
    test = frame.iloc[order[:n_test]]
    val = frame.iloc[order[n_test : n_test + n_val]]
    train = frame.iloc[order[n_test + n_val :]]
    return (t.reset_index(drop=True) for t in (train, val, test))  # type: ignore[return-value]


def _reduced(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["formula"] = datasets._reduce_formulas(frame["formula"])
    return frame.groupby("formula", sort=True)["target"].agg(how).reset_index()


def _cv_split(
    frame: pd.DataFrame, fold: int, n_folds: int, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    folds = np.array_split(order, n_folds)
    test = frame.iloc[folds[fold]]
    rest = np.concatenate([f for i, f in enumerate(folds) if i != fold])
    n_val = int(round(val_fraction * len(frame)))
    val, train = frame.iloc[rest[:n_val]], frame.iloc[rest[n_val:]]
    return (t.reset_index(drop=True) for t in (train, val, test))  # type: ignore[return-value]


def load_split(
    target: str,
    seed: int = 0,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    cv_fold: int | None = None,
    cv_folds: int = 5,
) -> DataSplit:
    """The data of ``target`` (a key of :data:`TARGETS`) split with ``seed``.

    Elements-only rows (E_f = 0 by definition) are kept for ``ef``: the model must learn them.
    ``gap-expt-all`` needs ``cv_fold`` in ``range(cv_folds)``: its test set is that fold.
    """
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}; choose from {sorted(TARGETS)}")
    if target == "gap-expt-all":
        if cv_fold is None or not 0 <= cv_fold < cv_folds:
            raise InvalidInput(f"target 'gap-expt-all' needs a cv_fold in 0..{cv_folds - 1}, got {cv_fold}")
        frame = _reduced(datasets.load_formula_table("expt_gap"), "median")
        return DataSplit(f"{target}[{cv_fold}/{cv_folds}]", *_cv_split(frame, cv_fold, cv_folds, val_fraction, seed))
    if target == "ef":
        frame = datasets.load_mp_formation_energies().rename(columns={"e_form_ev_per_atom": "target"})
        return DataSplit(target, *_random_split(frame, test_fraction, val_fraction, seed))
    if target == "ef-bartel":
        train = datasets.load_formula_table("bartel_ef_train")
        val = datasets.load_formula_table("bartel_ef_val")
        test = datasets.load_formula_table("bartel_ef_test")
        return DataSplit(target, train, val, test)
    if target == "gap-mp":
        frame = _reduced(datasets.load_formula_table("mp_gap"), "median")
        frame = frame[frame["target"] > 0].reset_index(drop=True)
        return DataSplit(target, *_random_split(frame, 0.0, val_fraction, seed))
    frame = _reduced(datasets.load_formula_table("expt_gap"), "median")
    frame = frame[frame["target"] > 0].reset_index(drop=True)
    return DataSplit(target, *_random_split(frame, test_fraction, val_fraction, seed))
