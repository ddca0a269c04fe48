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


def paired_bootstrap_mae(pred_a: np.ndarray, pred_b: np.ndarray, truth: np.ndarray, n_resamples: int = 10_000,
                         seed: int = 0) -> dict[str, float]:
    """How sure is "A has a lower MAE than B" on this test set? Resamples the entries with
    replacement (both models' errors together) and reports MAE(A) - MAE(B) in log10 units: the
    observed value, its 95 % percentile interval and the fraction of resamples where A is better.
    """
    err_a, err_b = np.abs(pred_a - truth), np.abs(pred_b - truth)
    rows = np.random.default_rng(seed).integers(0, truth.size, size=(n_resamples, truth.size))
    diff = err_a[rows].mean(axis=1) - err_b[rows].mean(axis=1)
    low, high = np.percentile(diff, [2.5, 97.5])
    return {"mae_difference": float(err_a.mean() - err_b.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "fraction_a_better": float(np.mean(diff < 0)), "n_resamples": int(n_resamples)}


def paired_bootstrap_classification(p_a: np.ndarray, p_b: np.ndarray, log10_true: np.ndarray,
                                    n_resamples: int = 2_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """The paired bootstrap of :func:`paired_bootstrap_mae` for the classification: accuracy (at
    P >= 0.5) and ROC-AUC of A minus those of B, each with its 95 % interval and the fraction of
    resamples where A is better (resamples holding one class only are skipped for the ROC-AUC)."""
    from sklearn.metrics import roc_auc_score

    label = log10_true >= LOG10_THRESHOLD
    right_a, right_b = (p_a >= 0.5) == label, (p_b >= 0.5) == label
    rows = np.random.default_rng(seed).integers(0, label.size, size=(n_resamples, label.size))
    accuracy = right_a[rows].mean(axis=1) - right_b[rows].mean(axis=1)
    auc = np.array([roc_auc_score(label[r], p_a[r]) - roc_auc_score(label[r], p_b[r])
                    for r in rows if 0 < label[r].sum() < label.size])
    one_class = label.all() or not label.any()
    out = {}
    for name, observed, diff in (("accuracy", right_a.mean() - right_b.mean(), accuracy),
                                 ("roc_auc", np.nan if one_class else roc_auc_score(label, p_a) - roc_auc_score(label, p_b),
                                  auc)):
        if diff.size == 0:  # a ROC-AUC needs both classes: none of the resamples had them
            out[name] = {"difference": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"),
                         "fraction_a_better": float("nan"), "n_resamples": 0}
            continue
        low, high = np.percentile(diff, [2.5, 97.5])
        out[name] = {"difference": float(observed), "ci95_low": float(low), "ci95_high": float(high),
                     "fraction_a_better": float(np.mean(diff > 0)), "n_resamples": int(diff.size)}
    return out
