"""Calibration of P(sigma >= 1e-4 S/cm): fitted on grouped-CV out-of-fold probabilities, checked by
reliability diagrams and the Brier score.

A probability is *calibrated* when, among the entries given P ≈ p, a fraction p is superionic.
The calibration map is fitted on the out-of-fold probabilities of the element-set-grouped CV on
the train split (:mod:`htvs.conductivity.cv`), never on the test split. Three maps are candidates:

* ``identity``: the probability as the model gives it;
* ``platt``: logistic regression on the log-odds, ``P' = sigmoid(a * logit(P) + b)`` (Platt 1999);
* ``isotonic``: scikit-learn's isotonic regression, stored as its breakpoints and applied by
  linear interpolation (monotone, so the ranking and the ROC-AUC barely move).

The map is chosen by a nested CV on the same folds: each candidate is fitted on the out-of-fold
probabilities of all folds but one and scored (Brier) on that one; the lowest mean Brier wins and
ties go to the simpler map (identity, then Platt). The winner is refitted on all folds and stored
in the model card (``calibration``); :func:`ProbabilityCalibration.apply` serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htvs.errors import InvalidInput

#: Calibration maps, simplest first (the order breaks ties).
METHODS = ("identity", "platt", "isotonic")
#: Probabilities are clipped to [EPS, 1 - EPS] before taking log-odds.
EPS = 1e-3
#: Bins of a reliability diagram (equal width in P).
RELIABILITY_BINS = 10


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class ProbabilityCalibration:
    """A fitted map from the model's P(superionic) to a calibrated one.

    Attributes:
        method: one of :data:`METHODS`.
        a, b: Platt's slope and intercept on the log-odds (``platt`` only).
        x, y: isotonic breakpoints, increasing in ``x`` (``isotonic`` only).
    """

    method: str = "identity"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = field(default_factory=tuple)
    y: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if not (np.isfinite(self.a) and np.isfinite(self.b)):
            raise InvalidInput(f"Platt calibration needs finite a and b, got a={self.a}, b={self.b}")
        if self.method == "isotonic":
            x, y = np.asarray(self.x, dtype=float), np.asarray(self.y, dtype=float)
            if x.size < 1 or x.shape != y.shape or np.any(np.diff(x) < 0) or not np.all((y >= 0) & (y <= 1)):
                raise InvalidInput("isotonic calibration needs as many increasing breakpoints x as values y in "
                                   f"[0, 1], got x={self.x!r}, y={self.y!r}")

    def apply(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of ``p`` (any shape)."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            return 1 / (1 + np.exp(-(self.a * logit(p) + self.b)))
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        return p

    def to_dict(self) -> dict:
        out: dict = {"method": self.method}
        if self.method == "platt":
            out.update(a=self.a, b=self.b)
        if self.method == "isotonic":
            out.update(x=list(self.x), y=list(self.y))
        return out

    @classmethod
    def from_dict(cls, data) -> ProbabilityCalibration:
        """From a model card's ``calibration`` entry; raises InvalidInput naming what is wrong."""
        if not isinstance(data, dict) or "method" not in data:
            raise InvalidInput(f"a calibration must be a mapping with a 'method', got {data!r}")
        unknown = set(data) - {"method", "a", "b", "x", "y"}
        if unknown:
            raise InvalidInput(f"unknown calibration keys {sorted(unknown)}")
        try:
            return cls(str(data["method"]), float(data.get("a", 1.0)), float(data.get("b", 0.0)),
                       tuple(float(v) for v in data.get("x", ())), tuple(float(v) for v in data.get("y", ())))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed calibration {data!r}: {exc}") from exc


def fit(method: str, p: np.ndarray, label: np.ndarray) -> ProbabilityCalibration:
    """Fit the ``method`` map on probabilities ``p`` and boolean labels (superionic or not)."""
    if method not in METHODS:
        raise InvalidInput(f"calibration method must be one of {METHODS}, got {method!r}")
    p, label = np.asarray(p, dtype=np.float64), np.asarray(label, dtype=bool)
    if method == "identity" or label.all() or not label.any():  # one class: nothing to fit a map to
        return ProbabilityCalibration("identity")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e6).fit(logit(p)[:, None], label)  # effectively unregularized
        return ProbabilityCalibration("platt", a=float(model.coef_[0, 0]), b=float(model.intercept_[0]))
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, label.astype(float))
    return ProbabilityCalibration("isotonic", x=tuple(map(float, model.X_thresholds_)),
                                  y=tuple(map(float, model.y_thresholds_)))


def brier(p: np.ndarray, label: np.ndarray) -> float:
    """Mean squared difference between P and the 0/1 label (lower is better; 0.25 for P = 0.5)."""
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(label, dtype=float)) ** 2))


def reliability(p: np.ndarray, label: np.ndarray, bins: int = RELIABILITY_BINS) -> dict:
    """Reliability diagram data: per equal-width bin of P, its count, mean P and observed fraction
    superionic; plus the expected calibration error (count-weighted mean |mean P - fraction|)."""
    p, label = np.asarray(p, dtype=np.float64), np.asarray(label, dtype=bool)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for k in range(bins):
        inside = which == k
        row = {"low": k / bins, "high": (k + 1) / bins, "n": int(inside.sum()), "mean_p": None, "fraction": None}
        if inside.any():
            row["mean_p"], row["fraction"] = float(p[inside].mean()), float(label[inside].mean())
            ece += inside.mean() * abs(row["mean_p"] - row["fraction"])
        rows.append(row)
    return {"bins": rows, "ece": float(ece), "brier": brier(p, label), "n": int(p.size)}


def choose(p: np.ndarray, label: np.ndarray, folds: np.ndarray, methods=METHODS
           ) -> tuple[ProbabilityCalibration, dict, np.ndarray]:
    """The map with the lowest nested-CV Brier on out-of-fold ``p`` (fold ids ``folds``).

    Returns:
        the winner refitted on all of ``p``; the per-method nested-CV Brier and accuracy; and the
        winner's nested-CV calibrated probabilities (each fold mapped by a fit on the others), which
        show how the map does on data it was not fitted on.
    """
    p, label, folds = np.asarray(p, dtype=np.float64), np.asarray(label, dtype=bool), np.asarray(folds)
    scores, nested = {}, {}
    for method in methods:
        calibrated = np.empty_like(p)
        for k in np.unique(folds):
            held = folds == k
            calibrated[held] = fit(method, p[~held], label[~held]).apply(p[held])
        nested[method] = calibrated
        scores[method] = {"nested_cv_brier": brier(calibrated, label),
                          "nested_cv_accuracy": float(np.mean((calibrated >= 0.5) == label))}
    best = min(methods, key=lambda m: (round(scores[m]["nested_cv_brier"], 6), METHODS.index(m)))
    return fit(best, p, label), scores, nested[best]


def plot_reliability(curves: dict[str, dict], path, title: str = "") -> None:
    """Write a reliability diagram (PNG/SVG by suffix) of ``{label: reliability(...)}`` curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, curve in curves.items():
        pts = [(b["mean_p"], b["fraction"], b["n"]) for b in curve["bins"] if b["n"]]
        xs, ys, ns = zip(*pts) if pts else ((), (), ())
        ax.plot(xs, ys, marker="o", label=f"{name} (Brier {curve['brier']:.3f}, ECE {curve['ece']:.3f})")
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6)  # entries in the bin
    ax.set_xlabel("predicted P(σ ≥ 10⁻⁴ S/cm)")
    ax.set_ylabel("observed fraction superionic")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\n(numbers: entries per bin)" if title else "numbers: entries per bin", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
