"""The two reference baselines of the OBELiX benchmark, and the shared scoring.

* train-set mean: predicts the training mean of log10 sigma for every entry and, for the
  classification, the training fraction of superionic entries as P (ROC-AUC 0.5 by construction);
* random forest on composition + lattice + space-group features taken from the OBELiX table (the
  dataset paper's strong simple baseline): descriptors of :func:`table_global_features` plus the
  atomic-fraction vector; a regressor for log10 sigma and a classifier for sigma >= 1e-4 S/cm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from htvs.conductivity.graph import table_global_features

#: sigma (S/cm) at and above which an entry counts as superionic.
SUPERIONIC_S_CM = 1e-4
LOG10_THRESHOLD = float(np.log10(SUPERIONIC_S_CM))


def rf_features(frame) -> np.ndarray:
    """(n, n_features) table descriptors (they end with the atomic fractions) for OBELiX rows."""
    return np.stack([table_global_features(row) for _, row in frame.iterrows()])


def score(log10_pred: np.ndarray, p_superionic: np.ndarray, log10_true: np.ndarray) -> dict[str, float]:
    """MAE (log10 S/cm), accuracy at P >= 0.5 and ROC-AUC against sigma >= 1e-4 S/cm."""
    from sklearn.metrics import roc_auc_score

    label = log10_true >= LOG10_THRESHOLD
    out = {
        "n": int(log10_true.size),
        "mae_log10_sigma": float(np.mean(np.abs(log10_pred - log10_true))),
        "accuracy": float(np.mean((p_superionic >= 0.5) == label)),
        "roc_auc": float("nan"),
        "fraction_superionic": float(np.mean(label)),
    }
    if 0 < label.sum() < label.size:
        out["roc_auc"] = float(roc_auc_score(label, p_superionic))
    return out


@dataclass
class BaselinePredictions:
    """Test-set predictions of one baseline."""

    log10_sigma: np.ndarray
    p_superionic: np.ndarray


def mean_baseline(train_log10: np.ndarray, n_test: int) -> BaselinePredictions:
    """Constant predictions from the training targets."""
    mean = float(np.mean(train_log10))
    p = float(np.mean(train_log10 >= LOG10_THRESHOLD))
    return BaselinePredictions(np.full(n_test, mean), np.full(n_test, p))


def random_forest_baseline(train_frame, test_frame, seed: int = 0, n_estimators: int = 500) -> BaselinePredictions:
    """Random forests (regression + classification) on table features; ``seed`` fixes them."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    x_train, x_test = rf_features(train_frame), rf_features(test_frame)
    y = train_frame["log10_sigma"].to_numpy(dtype=float)
    reg = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(x_train, y)
    clf = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(
        x_train, y >= LOG10_THRESHOLD
    )
    proba = clf.predict_proba(x_test)
    if proba.shape[1] == 1:  # one class only in the training labels
        proba = np.full(len(x_test), float(clf.classes_[0]))
    else:
        proba = proba[:, list(clf.classes_).index(True)]
    return BaselinePredictions(reg.predict(x_test), proba)
