"""Stage 3 of the funnel: composition screening on predicted energies, gaps, hulls and windows.

The paper's thresholds are the defaults (:mod:`htvs.screening_config`): predicted E_f and
E_above_hull (the prediction taken as the formula's ground state, against the reference MP
hull), then band gap, then oxidation potential phi_ox from the Li grand-potential windows.
Filters apply in that order; windows are only computed for formulas that pass the first two,
which is where the cost is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from htvs.errors import InvalidInput
from htvs.screening_config import CompositionScreenConfig
from htvs.thermo import (
    HullResult,
    ReferenceHull,
    WindowResult,
    e_above_hull_many,
    electrochemical_windows,
)

#: Columns of the per-formula prediction table (stage 2's output, this stage's input).
PREDICTION_COLUMNS = ("formula", "e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std", "error")


@dataclass(frozen=True)
class ScreenResult:
    """Per-formula values and the funnel (count after every filter, in order)."""

    table: pd.DataFrame
    funnel: dict[str, int]

    @property
    def survivors(self) -> pd.DataFrame:
        return self.table[self.table["passed"]].reset_index(drop=True)


def _check_predictions(predictions: pd.DataFrame) -> None:
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise InvalidInput(f"prediction table lacks columns {missing}")


def screen_compositions(
    predictions: pd.DataFrame,
    hull: ReferenceHull,
    config: CompositionScreenConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScreenResult:
    """Apply the screening filters to stage 2's predictions.

    Args:
        predictions: one row per formula with :data:`PREDICTION_COLUMNS` (``error`` is None for
            rows that were predicted; rows with an error are kept in the table, never passed).
        hull: the reference hull.
        config: thresholds.
        progress: called with (step, done, total).

    Returns:
        The input columns plus ``e_above_hull``, ``phi_red``, ``phi_ox``, one boolean column per
        filter, ``passed`` and ``screen_error``; the funnel counts.
    """
    _check_predictions(predictions)
    table = predictions.loc[:, list(PREDICTION_COLUMNS)].reset_index(drop=True).copy()
    n = len(table)
    predicted = table["error"].isna().to_numpy()
    e_form = table["e_form_mean"].to_numpy(dtype=float)
    gap = table["band_gap_mean"].to_numpy(dtype=float)
    table["e_above_hull"] = np.nan
    table["phi_red"] = np.nan
    table["phi_ox"] = np.nan
    table["screen_error"] = None

    pass_ef = predicted & (e_form <= config.max_e_form_ev_per_atom)
    candidates = np.flatnonzero(pass_ef)
    if progress:
        progress("hull", 0, candidates.size)
    total = candidates.size
    hull_rows = e_above_hull_many(
        hull, table["formula"].to_numpy()[candidates].tolist(), e_form[candidates].tolist(),
        progress=(lambda done: progress("hull", done, total)) if progress else None,
    )
    e_hull = np.full(n, np.nan)
    for i, row in zip(candidates.tolist(), hull_rows):
        if isinstance(row, HullResult):
            e_hull[i] = row.e_above_hull_ev_per_atom
        else:
            table.at[i, "screen_error"] = row.message
    table["e_above_hull"] = e_hull
    if progress:
        progress("hull", candidates.size, candidates.size)
    with np.errstate(invalid="ignore"):
        pass_stability = pass_ef & (e_hull <= config.max_e_above_hull_ev_per_atom)
        pass_gap = pass_stability & (gap >= config.min_band_gap_ev)

    candidates = np.flatnonzero(pass_gap)
    if progress:
        progress("window", 0, candidates.size)
    total = candidates.size
    windows = electrochemical_windows(
        hull, table["formula"].to_numpy()[candidates].tolist(), e_form[candidates].tolist(),
        progress=(lambda done: progress("window", done, total)) if progress else None,
    )
    phi_red = np.full(n, np.nan)
    phi_ox = np.full(n, np.nan)
    for i, row in zip(candidates.tolist(), windows):
        if isinstance(row, WindowResult):
            phi_red[i], phi_ox[i] = row.phi_red_v, row.phi_ox_v
        else:
            table.at[i, "screen_error"] = row.message
    table["phi_red"] = phi_red
    table["phi_ox"] = phi_ox
    if progress:
        progress("window", candidates.size, candidates.size)
    with np.errstate(invalid="ignore"):
        pass_window = pass_gap & (phi_ox >= config.min_phi_ox_v)

    table["passed_e_form_and_hull"] = pass_stability
    table["passed_band_gap"] = pass_gap
    table["passed_oxidation_window"] = pass_window
    table["passed"] = pass_window
    funnel = {
        "formulas": int(n),
        "predicted": int(predicted.sum()),
        "e_form_and_hull": int(pass_stability.sum()),
        "band_gap": int(pass_gap.sum()),
        "oxidation_window": int(pass_window.sum()),
    }
    return ScreenResult(table=table, funnel=funnel)
