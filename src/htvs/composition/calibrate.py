"""Recalibration of a composition ensemble's spread, fitted on the validation split.

A Roost ensemble's member spread ``σ`` (population std of the members) is over-confident: far
fewer than 68 % of held-out errors fall within ``σ``. The calibrated spread is

    σ_cal = sqrt((a · σ)² + b²)

with a dimensionless scale ``a`` and a floor ``b`` in the model's units (a formula on which every
member agrees is still wrong sometimes). ``a`` and ``b`` live in the model card under
``calibration``; :class:`Calibration` reads them and the ONNX predictor applies them, so the std
that stage 2 reports is the calibrated one. A card without ``calibration`` is used as before.

Candidates, all fitted on the validation split of the split the members were trained on (the
test split only scores the chosen one):

* ``scale_nll``: ``b = 0``, ``a`` maximizing the Gaussian likelihood (closed form
  ``a² = mean((e/σ)²)``);
* ``scale_coverage``: ``b = 0``, ``a`` the 68.27 % quantile of ``|e|/σ`` (68.27 % within 1σ);
* ``affine_nll``: ``(a, b)`` minimizing the mean Gaussian NLL;
* ``affine_coverage``: ``(a, b)`` with 68.27 % of validation errors within 1σ_cal and the
  fraction within 2σ_cal as close to 95.45 % as the form allows.

Choice: the lowest validation NLL among the candidates whose validation fraction within 1σ_cal
lies in the coverage band (default 60-75 %); the lowest NLL overall when none does. The Gaussian
NLL alone is not the rule because heavy-tailed errors (a few formulas wrong by eV while every
member agrees) make its fit inflate σ until ~95 % of errors lie within 1σ.

Run it as ``python -m htvs.composition.calibrate MODEL_DIR --target e_form`` (``--dry-run`` prints
without writing the card).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from htvs.errors import InvalidInput, ModelNotReady

#: Card key holding the calibration.
CARD_KEY = "calibration"
#: Fraction of a standard normal within 1 and 2 standard deviations.
NOMINAL_1_SIGMA = 0.6827
NOMINAL_2_SIGMA = 0.9545
#: Validation fraction within 1σ_cal a candidate needs to be chosen (see the module docstring).
DEFAULT_COVERAGE_BAND = (0.60, 0.75)
METHODS = ("scale_nll", "scale_coverage", "affine_nll", "affine_coverage")


@dataclass(frozen=True)
class Calibration:
    """``σ_cal = sqrt((a·σ)² + b²)``; ``a`` dimensionless, ``b`` in the model's units."""

    a: float
    b: float = 0.0
    method: str = "affine"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and self.a > 0):
            raise ValueError(f"calibration scale a must be finite and > 0, got {self.a!r}")
        if not (math.isfinite(self.b) and self.b >= 0):
            raise ValueError(f"calibration floor b must be finite and >= 0, got {self.b!r}")

    def apply(self, std: np.ndarray) -> np.ndarray:
        """The calibrated spread of raw member spreads ``std`` (NaN stays NaN)."""
        std = np.asarray(std, dtype=np.float64)
        return np.sqrt((self.a * std) ** 2 + self.b**2)

    @classmethod
    def from_card(cls, card: Mapping[str, object], where: str = "model card") -> Calibration | None:
        """The card's ``calibration`` (None when it has none).

        Raises:
            ModelNotReady: ``calibration`` is there but not ``{"a": > 0, "b": >= 0, ...}``.
        """
        entry = card.get(CARD_KEY)
        if entry is None:
            return None
        if not isinstance(entry, Mapping):
            raise ModelNotReady(f"{where}: {CARD_KEY} is a {type(entry).__name__}, not a JSON object")
        a, b = entry.get("a"), entry.get("b", 0.0)
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) \
                or not isinstance(b, (int, float)):
            raise ModelNotReady(f"{where}: {CARD_KEY} needs numbers a and b, got a={a!r}, b={b!r}")
        try:
            return cls(float(a), float(b), str(entry.get("method", "affine")))
        except ValueError as exc:
            raise ModelNotReady(f"{where}: {exc}") from exc


# --- scores -------------------------------------------------------------------------------------


def gaussian_nll(error: np.ndarray, std: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood (nats per formula) of ``error`` under N(0, std²).

    It depends on the units of ``error`` (a change of units shifts it by log of the factor).
    """
    error, std = np.asarray(error, np.float64), np.asarray(std, np.float64)
    with np.errstate(divide="ignore"):
        return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * (error / std) ** 2))


def within(error: np.ndarray, std: np.ndarray, k: float) -> float:
    """Fraction of ``|error| <= k·std``."""
    return float(np.mean(np.abs(error) <= k * np.asarray(std)))


def scores(error: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Coverage at 1σ and 2σ, mean NLL (nats) and mean σ of one (error, std) set."""
    return {
        "within_1_sigma": within(error, std, 1.0),
        "within_2_sigma": within(error, std, 2.0),
        "nll_nats": gaussian_nll(error, std),
        "mean_std": float(np.mean(std)),
    }


# --- fits ---------------------------------------------------------------------------------------


def _checked(error: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    error, std = np.asarray(error, np.float64).ravel(), np.asarray(std, np.float64).ravel()
    if error.shape != std.shape or error.size < 2:
        raise InvalidInput(f"need matching error and std arrays of >= 2 rows, got {error.size} and {std.size}")
    if not (np.all(np.isfinite(error)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
        raise InvalidInput("errors and spreads must be finite, spreads >= 0")
    return error, std


def _positive(std: np.ndarray) -> np.ndarray:
    """Spreads with exact zeros lifted to a tiny positive value (a pure scale cannot fix 0)."""
    tiny = max(float(np.max(std)) * 1e-9, 1e-300)
    return np.maximum(std, tiny)


def fit_scale_nll(error: np.ndarray, std: np.ndarray) -> Calibration:
    """``a`` maximizing the Gaussian likelihood of ``error`` under N(0, (a·σ)²): ``a² = mean((e/σ)²)``."""
    error, std = _checked(error, std)
    return Calibration(float(np.sqrt(np.mean((error / _positive(std)) ** 2))), 0.0, "scale_nll")


def fit_scale_coverage(error: np.ndarray, std: np.ndarray, level: float = NOMINAL_1_SIGMA) -> Calibration:
    """``a`` with a fraction ``level`` of errors within ``a·σ`` (the ``level`` quantile of ``|e|/σ``)."""
    error, std = _checked(error, std)
    return Calibration(float(np.quantile(np.abs(error) / _positive(std), level)), 0.0, "scale_coverage")


def fit_affine_nll(error: np.ndarray, std: np.ndarray) -> Calibration:
    """``(a, b)`` minimizing the mean Gaussian NLL of ``error`` under N(0, (a·σ)² + b²).

    Optimized over ``(log a, log b)`` from the best of a few starts (Nelder-Mead, scipy).
    """
    from scipy.optimize import minimize

    error, std = _checked(error, std)
    e2, s2 = error**2, std**2

    def nll(p: np.ndarray) -> float:
        var = np.exp(2 * p[0]) * s2 + np.exp(2 * p[1])
        return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * e2 / var))

    rms = float(np.sqrt(np.mean(e2))) or 1.0
    scale = fit_scale_nll(error, std).a
    best = None
    for a0, b0 in ((scale, rms * 1e-3), (1.0, rms), (scale / 3, rms / 3), (1.0, rms * 1e-2)):
        start = np.log([max(a0, 1e-6), max(b0, 1e-12)])
        result = minimize(nll, start, method="Nelder-Mead",
                          options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
        if best is None or result.fun < best.fun:
            best = result
    a, b = np.exp(best.x)
    return Calibration(float(a), float(b), "affine_nll")


def _scale_for_level(error: np.ndarray, std: np.ndarray, b: float, level: float) -> float | None:
    """Smallest ``a`` with a fraction ``level`` of ``|e| <= sqrt((a·σ)² + b²)`` (None: b alone does)."""
    abs_e = np.abs(error)
    # per row, the a at which the row becomes covered: (e² - b²)/σ² (rows with |e| <= b: always)
    need = np.where(abs_e <= b, 0.0, (abs_e**2 - b**2) / np.maximum(std, 1e-300) ** 2)
    a2 = float(np.quantile(need, level, method="higher"))
    return math.sqrt(a2) if a2 > 0 else None


def fit_affine_coverage(
    error: np.ndarray, std: np.ndarray, level_1: float = NOMINAL_1_SIGMA, level_2: float = NOMINAL_2_SIGMA,
    n_floors: int = 400,
) -> Calibration:
    """``(a, b)`` with a fraction ``level_1`` of errors within 1σ_cal and the fraction within
    2σ_cal closest to ``level_2`` (floors ``b`` on a grid up to the ``level_1`` quantile of ``|e|``;
    for each, ``a`` is set by the 1σ level; ties go to the smaller floor)."""
    error, std = _checked(error, std)
    top = float(np.quantile(np.abs(error), level_1))
    best: tuple[float, float, float] | None = None
    for b in np.linspace(0.0, top, n_floors, endpoint=False):
        a = _scale_for_level(error, std, float(b), level_1)
        if a is None:
            continue
        miss = abs(within(error, np.sqrt((a * std) ** 2 + b**2), 2.0) - level_2)
        if best is None or miss < best[0] - 1e-12:
            best = (miss, a, float(b))
    if best is None:  # the floor alone covers level_1 even at b = 0: degenerate (all errors 0)
        return Calibration(1.0, 0.0, "affine_coverage")
    return Calibration(best[1], best[2], "affine_coverage")


FITS = {
    "scale_nll": fit_scale_nll,
    "scale_coverage": fit_scale_coverage,
    "affine_nll": fit_affine_nll,
    "affine_coverage": fit_affine_coverage,
}


def choose(
    error: np.ndarray, std: np.ndarray, band: tuple[float, float] = DEFAULT_COVERAGE_BAND,
    methods: Sequence[str] = METHODS,
) -> tuple[Calibration, dict[str, dict[str, float]]]:
    """Fit every method on validation ``(error, std)``; pick by the rule of the module docstring.

    Returns:
        The chosen calibration and, per method, ``a``, ``b`` and its validation scores.
    """
    candidates: dict[str, dict[str, float]] = {}
    fitted: dict[str, Calibration] = {}
    for name in methods:
        cal = FITS[name](error, std)
        fitted[name] = cal
        candidates[name] = {"a": cal.a, "b": cal.b, **scores(error, cal.apply(std))}
    in_band = [n for n in methods if band[0] <= candidates[n]["within_1_sigma"] <= band[1]]
    pool = in_band or list(methods)
    name = min(pool, key=lambda n: candidates[n]["nll_nats"])
    return fitted[name], candidates


# --- the shipped models -------------------------------------------------------------------------


def split_of_card(card: Mapping[str, object]):
    """The :class:`~htvs.composition.datasets.DataSplit` the card's members were trained on
    (``train_config``: ``target``, ``split_seed``, ``cv_fold``, ``cv_folds``)."""
    from htvs.composition.datasets import load_split

    config = card.get("train_config")
    if not isinstance(config, Mapping) or not isinstance(config.get("target"), str):
        raise InvalidInput("the model card has no train_config with a training target")
    return load_split(
        str(config["target"]),
        seed=int(config.get("split_seed", 0)),
        cv_fold=config.get("cv_fold"),
        cv_folds=int(config.get("cv_folds", 5)),
    )


def errors_and_spread(ensemble, frame) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble-mean errors and raw member spreads on a split table (``formula``, ``target``)."""
    pred = ensemble.predict(frame["formula"].tolist())
    if not pred.valid.all():
        bad = [e.formula for e in pred.errors][:5]
        raise InvalidInput(f"{int((~pred.valid).sum())} split formulas were not predicted, e.g. {bad}")
    return pred.mean - frame["target"].to_numpy(np.float64), pred.raw_std


def calibrate_model(
    model_dir: str | Path,
    target: str,
    band: tuple[float, float] = DEFAULT_COVERAGE_BAND,
    threads: int | None = None,
    command: str | None = None,
    write: bool = True,
) -> dict[str, object]:
    """Fit the calibration of the ensemble in ``model_dir`` on its validation split, score it
    on the test split and (``write``) store it in the card under ``calibration``.

    Returns:
        The card's ``calibration`` entry.
    """
    from htvs.atomic import write_text_atomic
    from htvs.composition.ship import load_ensemble
    from htvs.model_cards import CARD_NAME

    folder = Path(model_dir)
    ensemble = load_ensemble(target, folder, threads=threads)  # checks the card and its members
    card_path = folder / CARD_NAME
    text = card_path.read_text(encoding="utf-8")
    card = json.loads(text)
    split = split_of_card(card)
    e_val, s_val = errors_and_spread(ensemble, split.val)
    e_test, s_test = errors_and_spread(ensemble, split.test)
    chosen, candidates = choose(e_val, s_val, band)
    units = str(card.get("units", ""))
    entry: dict[str, object] = {
        "method": chosen.method,
        "formula": "std = sqrt((a * member_std)**2 + b**2)",
        "a": chosen.a,
        "b": chosen.b,
        "b_units": units,
        "fitted_on": f"validation split (n={len(e_val)}) of {split.name}, seed "
                     f"{card['train_config'].get('split_seed', 0)}; also the members' early-stopping set",
        "selection": f"lowest validation Gaussian NLL among the fits with {band[0]:.0%}-{band[1]:.0%} "
                     "of validation errors within 1 sigma (lowest NLL overall if none)",
        "nll": "mean Gaussian negative log-likelihood, nats per formula, errors in " + units,
        "candidates": candidates,
        "validation": {"n": len(e_val), "before": scores(e_val, s_val), "after": scores(e_val, chosen.apply(s_val))},
        "test": {"n": len(e_test), "before": scores(e_test, s_test), "after": scores(e_test, chosen.apply(s_test))},
        "test_by_method": {
            name: scores(e_test, Calibration(c["a"], c["b"]).apply(s_test)) for name, c in candidates.items()
        },
        "date": date.today().isoformat(),
    }
    if command:
        entry["command"] = command
    if write:
        indent = _indent_of(text)
        card[CARD_KEY] = entry
        write_text_atomic(card_path, json.dumps(card, indent=indent) + "\n")
    return entry


def _indent_of(text: str) -> int:
    """The indent of a JSON card's second line (to keep its layout and a small diff)."""
    lines = text.splitlines()
    if len(lines) > 1:
        return max(1, len(lines[1]) - len(lines[1].lstrip(" ")))
    return 1


def report(entry: Mapping[str, object], target: str) -> str:
    """Human-readable before/after lines of a ``calibration`` entry."""
    def line(tag: str, s: Mapping[str, float]) -> str:
        return (f"  {tag:<24} {100 * s['within_1_sigma']:5.1f} % within 1 sigma, "
                f"{100 * s['within_2_sigma']:5.1f} % within 2 sigma, NLL {s['nll_nats']:8.3f}, "
                f"mean sigma {s['mean_std']:.4f}")

    out = [f"{target}: chose {entry['method']} a={entry['a']:.4g} b={entry['b']:.4g} {entry['b_units']} "
           f"({entry['fitted_on']})"]
    out.append("validation candidates:")
    for name, c in entry["candidates"].items():  # type: ignore[union-attr]
        out.append(line(f"{name} a={c['a']:.3g} b={c['b']:.3g}", c))
    for part in ("validation", "test"):
        block = entry[part]  # type: ignore[index]
        out.append(f"{part} (n={block['n']}):")
        out.append(line("before (raw spread)", block["before"]))
        out.append(line("after", block["after"]))
    out.append("test, every candidate:")
    for name, s in entry["test_by_method"].items():  # type: ignore[union-attr]
        out.append(line(name, s))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m htvs.composition.calibrate",
        description="Fit the spread calibration of a composition ensemble on its validation split, "
                    "store it in the model card and print before/after coverage and NLL.",
    )
    parser.add_argument("model_dir", type=Path, help="folder with model_card.json and the ONNX members")
    parser.add_argument("--target", required=True, choices=("e_form", "band_gap"))
    parser.add_argument("--band", type=float, nargs=2, default=DEFAULT_COVERAGE_BAND, metavar=("LOW", "HIGH"),
                        help="validation fraction within 1 sigma a fit needs to be chosen (default 0.60 0.75)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads per session")
    parser.add_argument("--dry-run", action="store_true", help="print the fit, leave the card unchanged")
    args = parser.parse_args(argv)
    command = "python -m htvs.composition.calibrate " + " ".join(
        [str(args.model_dir), "--target", args.target]
        + (["--band", *map(str, args.band)] if tuple(args.band) != DEFAULT_COVERAGE_BAND else [])
    )
    entry = calibrate_model(args.model_dir, args.target, tuple(args.band), args.threads, command,
                            write=not args.dry_run)
    print(report(entry, args.target))
    if not args.dry_run:
        print(f"wrote {CARD_KEY} into {Path(args.model_dir) / 'model_card.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
