"""Stage 3 of the funnel: composition screening on predicted energies, gaps, hulls and windows.

The paper's thresholds are the defaults (:mod:`htvs.screening_config`): predicted E_f and
E_above_hull (the prediction taken as the formula's ground state, against the reference MP
hull), then band gap, then oxidation potential phi_ox from the Li grand-potential windows.
Filters apply in that order; windows are only computed for formulas that pass the first two,
which is where the cost is.

Every row gets ``charge_balanced``: whether its elements can take known oxidation states that
sum to zero (:mod:`htvs.charge_balance`). With ``config.charge_balance`` (off in the paper's
screen) that is a filter before all the others, counted in the funnel as ``charge_balanced``.

Two rules decide what passes (``CompositionScreenConfig.rule``):

* ``deterministic`` (the paper's, the default): the thresholds applied to the ensemble mean.
* ``probabilistic``: the thresholds applied to the ensemble's Gaussian, E_f ~ N(e_form_mean,
  e_form_std) and gap ~ N(band_gap_mean, band_gap_std); a formula passes when the probability
  that all four conditions hold is at least ``min_probability``.

The probabilities (columns :data:`PROBABILITY_COLUMNS`) of every survivor are computed under
either rule (the probabilistic rule needs them for every predicted row, the deterministic one
computes them for its survivors only), so every survivor carries them into the later stages and
the report; see :func:`screen_probabilities`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from htvs.errors import InvalidInput, shown
from htvs.screening_config import CompositionScreenConfig
from htvs.thermo import (
    HullResult,
    ReferenceHull,
    WindowResult,
    e_above_hull_many,
    electrochemical_windows,
)
from htvs.thermo.hull import MAX_ABS_E_FORM_EV_PER_ATOM

#: Columns of the per-formula prediction table (stage 2's output, this stage's input).
PREDICTION_COLUMNS = ("formula", "e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std", "error")
#: Probability columns of the screen table, whichever rule decides (see :func:`screen_probabilities`).
PROBABILITY_COLUMNS = ("p_e_form", "p_e_hull", "p_band_gap", "p_phi_ox", "p_joint")
#: A formula whose joint probability is proven below this (or below ``min_probability``, if that
#: is smaller) gets no root search for phi_ox: its ``p_phi_ox`` and ``p_joint`` are left NaN.
PLAUSIBLE_PROBABILITY = 1e-4
#: Root-search tolerance on E_f*, the formation energy at which phi_ox reaches its threshold:
#: the final bracket is at most this wide (0.01 meV/atom), and E_f* is its midpoint.
E_FORM_STAR_TOL_EV_PER_ATOM = 1e-5
#: Most root-search steps per formula (bisection alone takes a bracket of 200 eV/atom to the
#: tolerance in 25; the false-position search takes a few on the demo, never 3x bisection's).
MAX_ROOT_STEPS = 100
#: The root search spans up to this many std above the mean; an E_f* beyond it is taken as that
#: point, which changes P(phi_ox >= threshold) by less than Phi(-8) ~ 6e-16.
TAIL_SIGMAS = 8.0


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


def _check_stds(table: pd.DataFrame, predicted: np.ndarray) -> None:
    """A predicted row's stds are Gaussian sigmas: finite and >= 0."""
    for name, units in (("e_form_std", "eV/atom"), ("band_gap_std", "eV")):
        values = table[name].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(predicted & ~(np.isfinite(values) & (values >= 0)))
        if bad.size:
            i = int(bad[0])
            raise InvalidInput(
                f"prediction row {i} ({shown(table.at[i, 'formula'])}): {name} must be finite and >= 0 {units}, "
                f"got {float(values[i])!r}"
            )


def _p_at_most(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(X <= x) for X ~ N(mean, std), elementwise; std 0 is a point mass at the mean. NaN in,
    NaN out."""
    x, mean, std = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (x, mean, std)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = ndtr((x - mean) / std)
        point = std == 0
        out[point] = np.where(mean[point] <= x[point], 1.0, 0.0)
        out[np.isnan(x) | np.isnan(mean) | np.isnan(std)] = np.nan
    return out


def _phi_ox_at(
    hull: ReferenceHull, formulas: Sequence[str], e_forms: np.ndarray | None
) -> tuple[np.ndarray, dict[int, str]]:
    """phi_ox (V vs Li/Li+) of each formula at the given E_f (eV/atom; None: the reference
    hull's equilibrium at the composition), and the row errors by position."""
    given = None if e_forms is None else [float(e) for e in e_forms]
    windows = electrochemical_windows(hull, list(formulas), given)
    phi = np.full(len(windows), np.nan)
    errors: dict[int, str] = {}
    for j, row in enumerate(windows):
        if isinstance(row, WindowResult):
            phi[j] = row.phi_ox_v
        else:
            errors[j] = row.message
    return phi, errors


def e_form_at_phi_ox(
    hull: ReferenceHull,
    formulas: Sequence[str],
    low_ev_per_atom: np.ndarray,
    high_ev_per_atom: np.ndarray,
    min_phi_ox_v: float,
    *,
    phi_ox_low_v: np.ndarray | None = None,
    phi_ox_high_v: np.ndarray | None = None,
    tol_ev_per_atom: float = E_FORM_STAR_TOL_EV_PER_ATOM,
    max_steps: int = MAX_ROOT_STEPS,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """E_f* with phi_ox(E_f*) = ``min_phi_ox_v``: a bracketing root search on the thermo window code.

    phi_ox is a non-increasing function of the compound's formation energy (checked in
    ``tests/test_screening_probabilistic.py``), so the set where phi_ox >= the threshold is
    E_f <= E_f*. Each row's bracket must hold the crossing: phi_ox(low) >= the threshold >
    phi_ox(high) (the caller has checked both ends). All rows step together, one
    :func:`~htvs.thermo.electrochemical_windows` call per step, and each step halves or cuts a
    row's bracket at the point evaluated; a row stops when its bracket is at most
    ``tol_ev_per_atom`` wide, or after ``max_steps``, and E_f* is the bracket's midpoint.

    Without the end values (``phi_ox_low_v``, ``phi_ox_high_v``) every step bisects. With them a
    step takes the false-position point, where the chord between the bracket's ends crosses the
    threshold: phi_ox is piecewise linear in E_f (the chemical potentials of the facets around
    the inserted compound are linear in its energy), so on one linear piece that point is the
    root. It is kept 0.45 * tol inside the bracket (a root found exactly closes the bracket on
    the next step), and a step bisects whenever the bracket did not halve over the two steps
    before, so the search never takes more than about three times as many steps as bisection.

    Returns:
        E_f* per row (NaN where a window failed) and the failed rows' messages by position.
    """
    lo = np.array(low_ev_per_atom, dtype=np.float64)
    hi = np.array(high_ev_per_atom, dtype=np.float64)
    false_position = phi_ox_low_v is not None and phi_ox_high_v is not None
    if false_position:
        g_lo = np.array(phi_ox_low_v, dtype=np.float64) - min_phi_ox_v  # >= 0
        g_hi = np.array(phi_ox_high_v, dtype=np.float64) - min_phi_ox_v  # < 0
    width_1 = np.full(lo.size, np.inf)  # the bracket's width one and two steps before
    width_2 = np.full(lo.size, np.inf)
    margin = 0.45 * tol_ev_per_atom
    formulas = list(formulas)
    errors: dict[int, str] = {}
    failed = np.zeros(lo.size, dtype=bool)
    for _ in range(max_steps):
        active = np.flatnonzero(~failed & (hi - lo > tol_ev_per_atom))
        if active.size == 0:
            break
        if progress is not None:
            progress(lo.size - active.size)
        a, b = lo[active], hi[active]
        x = 0.5 * (a + b)
        if false_position:
            width = b - a
            ga, gb = g_lo[active], g_hi[active]
            with np.errstate(divide="ignore", invalid="ignore"):
                chord = np.clip(a + ga * width / (ga - gb), a + margin, b - margin)
            use = (width <= 0.5 * width_2[active]) & np.isfinite(chord)
            x = np.where(use, chord, x)
            width_2[active] = width_1[active]
            width_1[active] = width
        phi, step_errors = _phi_ox_at(hull, [formulas[i] for i in active], x)
        for j, message in step_errors.items():
            errors[int(active[j])] = message
            failed[active[j]] = True
        ok = ~np.isnan(phi)
        up = ok & (phi >= min_phi_ox_v)
        down = ok & ~up
        lo[active[up]] = x[up]
        hi[active[down]] = x[down]
        if false_position:
            g_lo[active[up]] = phi[up] - min_phi_ox_v
            g_hi[active[down]] = phi[down] - min_phi_ox_v
    star = 0.5 * (lo + hi)
    star[failed] = np.nan
    return star, errors


@dataclass(frozen=True)
class Probabilities:
    """Per-row probabilities of :func:`screen_probabilities` (NaN where not computed).

    Attributes:
        p_e_form, p_e_hull, p_band_gap, p_phi_ox, p_joint: see :func:`screen_probabilities`.
        p_e_form_and_hull: P(E_f <= t_f and E_above_hull <= t_h), the first filter's.
        errors: window failures by row position.
        n_root_searches: rows whose E_f* was searched for (:func:`e_form_at_phi_ox`).
    """

    p_e_form: np.ndarray
    p_e_hull: np.ndarray
    p_band_gap: np.ndarray
    p_phi_ox: np.ndarray
    p_joint: np.ndarray
    p_e_form_and_hull: np.ndarray
    errors: dict[int, str]
    n_root_searches: int


def screen_probabilities(
    hull: ReferenceHull,
    formulas: Sequence[str],
    e_form_mean: np.ndarray,
    e_form_std: np.ndarray,
    band_gap_mean: np.ndarray,
    band_gap_std: np.ndarray,
    e_hull_ref: np.ndarray,
    config: CompositionScreenConfig,
    progress: Callable[[int, int], None] | None = None,
) -> Probabilities:
    """The probability of each screening condition under the ensemble's Gaussian, exactly.

    With E_f ~ N(mu_f, sigma_f) and gap ~ N(mu_g, sigma_g), independent, and the thresholds
    t_f, t_h, t_g, t_ox of ``config``:

    * ``p_e_form = P(E_f <= t_f) = Phi((t_f - mu_f) / sigma_f)``.
    * ``p_e_hull = P(E_above_hull <= t_h)``: E_above_hull = E_f - E_hull_ref(composition) is
      linear in E_f (the reference hull's energy at the composition, ``e_hull_ref``, does not
      depend on the compound), so it is ``Phi((t_h + ref - mu_f) / sigma_f)``.
    * ``p_band_gap = P(gap >= t_g) = Phi((mu_g - t_g) / sigma_g)``.
    * ``p_phi_ox = P(phi_ox >= t_ox)``: phi_ox is a non-increasing function of E_f (a more
      stable compound has a window at least as wide; at or above the hull it is the reference
      equilibrium's, below it the window of the compound inserted as a new phase), so the event
      is ``E_f <= E_f*`` where phi_ox(E_f*) = t_ox, found by a bracketing root search with the
      window code (:func:`e_form_at_phi_ox`: false position safeguarded by bisection, bounded
      steps, final bracket <= :data:`E_FORM_STAR_TOL_EV_PER_ATOM`, 0.01 meV/atom;
      the error it makes in a probability is below 0.4 * 0.5e-5 / sigma_f). E_f* is +inf when
      the reference window already reaches t_ox.
    * The three E_f conditions are one event, ``E_f <= min(t_f, t_h + ref, E_f*)``, and the
      gap is independent: ``p_joint = Phi((min(t_f, t_h + ref, E_f*) - mu_f) / sigma_f) *
      p_band_gap``.

    This is exact under the Gaussian model, with no sampling (``tests/test_screening_probabilistic.py``
    compares it with Monte Carlo). A std of 0 is a point mass at the mean (the probabilistic
    rule then agrees with the deterministic one).

    Cost: the root search runs only where ``p_joint`` could reach the plausibility floor
    ``floor = min(PLAUSIBLE_PROBABILITY, config.min_probability)``: not where the upper bound
    ``P(E_f <= min(t_f, t_h + ref)) * p_band_gap`` is below it, nor where phi_ox at the E_f with
    ``p_band_gap * Phi((E_f - mu_f) / sigma_f) = floor`` (one window) is below t_ox, as then
    E_f* lies lower and ``p_joint < floor``. Those rows keep ``p_phi_ox`` and ``p_joint`` NaN
    (not computed; the row cannot pass). Root searches stop at ``mu_f + TAIL_SIGMAS * sigma_f``
    above and at -:data:`~htvs.thermo.hull.MAX_ABS_E_FORM_EV_PER_ATOM` below.

    Args:
        hull: the reference hull.
        formulas: one per row.
        e_form_mean, e_form_std: eV/atom; NaN for rows not predicted.
        band_gap_mean, band_gap_std: eV.
        e_hull_ref: the reference hull's energy at each composition, eV/atom (NaN where unknown:
            every probability but ``p_e_form`` and ``p_band_gap`` is then NaN).
        config: thresholds and ``min_probability``.
        progress: called with (done, total) rows of the root search.
    """
    mu, sigma = np.asarray(e_form_mean, dtype=np.float64), np.asarray(e_form_std, dtype=np.float64)
    ref = np.asarray(e_hull_ref, dtype=np.float64)
    n = mu.size
    t_f, t_h = config.max_e_form_ev_per_atom, config.max_e_above_hull_ev_per_atom
    t_ox = config.min_phi_ox_v
    p_e_form = _p_at_most(np.full(n, t_f), mu, sigma)
    p_e_hull = _p_at_most(t_h + ref, mu, sigma)
    gap_mu = np.asarray(band_gap_mean, dtype=np.float64)
    p_band_gap = _p_at_most(-np.full(n, config.min_band_gap_ev), -gap_mu, np.asarray(band_gap_std, dtype=np.float64))
    stability_bound = np.minimum(t_f, t_h + ref)  # NaN where ref is
    p_stability = _p_at_most(stability_bound, mu, sigma)
    floor = min(PLAUSIBLE_PROBABILITY, config.min_probability)
    with np.errstate(invalid="ignore"):
        plausible = np.flatnonzero(p_stability * p_band_gap >= floor)
    star = np.full(n, np.nan)
    errors: dict[int, str] = {}

    def fail(rows: np.ndarray, row_errors: dict[int, str]) -> None:
        for j, message in row_errors.items():
            errors[int(rows[j])] = message

    names = np.asarray(list(formulas), dtype=object)
    phi_low = np.full(n, np.nan)  # phi_ox at the root search's bracket ends, V
    phi_high = np.full(n, np.nan)
    # the reference equilibrium's window (E_f at or above the hull): E_f* = +inf where it
    # already reaches t_ox, else E_f* < ref
    search = plausible
    if plausible.size:
        phi_ref, ref_errors = _phi_ox_at(hull, names[plausible].tolist(), None)
        fail(plausible, ref_errors)
        star[plausible[phi_ref >= t_ox]] = np.inf
        search = plausible[phi_ref < t_ox]
        phi_high[plausible] = phi_ref
    # the probe: where p_joint would be the floor if E_f* were there
    probe = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = ndtri(np.minimum(floor / p_band_gap[search], 1.0))
        probe[search] = np.where(sigma[search] > 0, mu[search] + sigma[search] * z, mu[search])
    probe[search] = np.maximum(probe[search], -MAX_ABS_E_FORM_EV_PER_ATOM)
    search = search[probe[search] < ref[search]]  # else E_f* < ref <= probe: below the floor
    if search.size:
        phi_probe, probe_errors = _phi_ox_at(hull, names[search].tolist(), probe[search])
        fail(search, probe_errors)
        phi_low[search] = phi_probe
        search = search[phi_probe >= t_ox]  # else E_f* < probe: below the floor
    # the top of the bracket: the reference hull, or TAIL_SIGMAS above the mean if lower
    with np.errstate(over="ignore", invalid="ignore"):
        top = np.minimum(ref, mu + TAIL_SIGMAS * sigma)
    at_top = search[probe[search] >= top[search]]  # phi_ox(probe) >= t_ox: E_f* >= probe >= top
    star[at_top] = probe[at_top]
    search = search[probe[search] < top[search]]
    check = search[top[search] < ref[search]]
    if check.size:
        phi_top, top_errors = _phi_ox_at(hull, names[check].tolist(), top[check])
        fail(check, top_errors)
        phi_high[check] = phi_top
        high = check[phi_top >= t_ox]
        star[high] = top[high]
        search = np.setdiff1d(search, np.concatenate([high, check[np.isnan(phi_top)]]))
    if search.size:
        total = int(search.size)
        roots, root_errors = e_form_at_phi_ox(
            hull, names[search].tolist(), probe[search], top[search], t_ox,
            phi_ox_low_v=phi_low[search], phi_ox_high_v=phi_high[search],
            progress=(lambda done: progress(done, total)) if progress else None,
        )
        fail(search, root_errors)
        star[search] = roots
        if progress is not None:
            progress(total, total)
    with np.errstate(invalid="ignore"):
        p_joint = _p_at_most(np.minimum(stability_bound, star), mu, sigma) * p_band_gap
    return Probabilities(
        p_e_form=p_e_form,
        p_e_hull=p_e_hull,
        p_band_gap=p_band_gap,
        p_phi_ox=_p_at_most(star, mu, sigma),
        p_joint=p_joint,
        p_e_form_and_hull=p_stability,
        errors=errors,
        n_root_searches=int(search.size),
    )


def screen_compositions(
    predictions: pd.DataFrame,
    hull: ReferenceHull,
    config: CompositionScreenConfig,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    probabilities: bool = True,
) -> ScreenResult:
    """Apply the screening filters to stage 2's predictions.

    Under the deterministic rule (the paper's) each filter compares the ensemble mean with its
    threshold. Under the probabilistic rule a row passes a filter when the probability that it
    and every earlier one hold is at least ``config.min_probability``: the first filter uses
    P(E_f <= t_f and E_above_hull <= t_h), the band-gap filter that times ``p_band_gap``, the
    oxidation-window filter ``p_joint``. The survivors' probabilities are computed under
    either rule (:func:`screen_probabilities`; the deterministic rule leaves the other rows' NaN); the funnel has the same keys and order under both.

    Args:
        predictions: one row per formula with :data:`PREDICTION_COLUMNS` (``error`` is None for
            rows that were predicted; rows with an error are kept in the table, never passed).
        hull: the reference hull.
        config: thresholds and rule.
        progress: called with (step, done, total); the steps are ``hull`` (every predicted row),
            ``probability`` (the rows whose E_f* is searched) and ``window`` (the rows that
            passed E_f, E_hull and band gap).
        probabilities: False leaves the probability columns NaN, for a caller that needs only
            the funnel of the deterministic rule (the probabilistic rule needs them).

    Returns:
        The input columns plus ``charge_balanced``, ``e_above_hull``, ``phi_red``, ``phi_ox``
        (at the mean), the probabilities :data:`PROBABILITY_COLUMNS`, one boolean column per
        filter (``passed_charge_balance`` only when that filter is on), ``passed`` and
        ``screen_error``; the funnel counts (``charge_balanced`` only when that filter is on). ``e_above_hull`` is set for the rows that passed
        the E_f threshold (deterministic) or for every predicted row (probabilistic); the
        windows for the rows that passed the band-gap filter.

    Raises:
        InvalidInput: a missing column, or a predicted row whose std is negative or not finite
            (named with its position, formula and value).
    """
    _check_predictions(predictions)
    table = predictions.loc[:, list(PREDICTION_COLUMNS)].reset_index(drop=True).copy()
    n = len(table)
    probabilistic = config.rule == "probabilistic"
    predicted = table["error"].isna().to_numpy()
    _check_stds(table, predicted)
    formulas = table["formula"].to_numpy()
    e_form = table["e_form_mean"].to_numpy(dtype=float)
    gap = table["band_gap_mean"].to_numpy(dtype=float)
    table["e_above_hull"] = np.nan
    table["phi_red"] = np.nan
    table["phi_ox"] = np.nan
    table["screen_error"] = None
    balanced = _charge_balance_column(table, predicted)
    eligible = predicted & balanced if config.charge_balance else predicted

    # E_above_hull at the mean and the reference energy: of every predicted row for the
    # probabilistic rule, of the rows under the E_f threshold (the only ones it can pass) for the
    # deterministic one
    with np.errstate(invalid="ignore"):
        under_e_form = eligible & (e_form <= config.max_e_form_ev_per_atom)
    rows = np.flatnonzero(eligible if probabilistic else under_e_form)
    total = rows.size
    if progress:
        progress("hull", 0, total)
    hull_rows = e_above_hull_many(
        hull, formulas[rows].tolist(), e_form[rows].tolist(),
        progress=(lambda done: progress("hull", done, total)) if progress else None,
    )
    e_hull = np.full(n, np.nan)
    hull_errors: dict[int, str] = {}
    for i, row in zip(rows.tolist(), hull_rows):
        if isinstance(row, HullResult):
            e_hull[i] = row.e_above_hull_ev_per_atom
        else:
            hull_errors[i] = row.message
    if progress:
        progress("hull", total, total)

    e_form_std = table["e_form_std"].to_numpy(dtype=float)
    gap_std = table["band_gap_std"].to_numpy(dtype=float)

    def probabilities_of(rows: np.ndarray) -> Probabilities:
        """:func:`screen_probabilities` of ``rows``, NaN elsewhere."""
        got = screen_probabilities(
            hull, formulas[rows].tolist(), e_form[rows], e_form_std[rows], gap[rows], gap_std[rows],
            e_form[rows] - e_hull[rows], config,
            progress=(lambda done, total: progress("probability", done, total)) if progress else None,
        )
        columns = {}
        for name in ("p_e_form", "p_e_hull", "p_band_gap", "p_phi_ox", "p_joint", "p_e_form_and_hull"):
            columns[name] = np.full(n, np.nan)
            columns[name][rows] = getattr(got, name)
        return Probabilities(**columns, errors={int(rows[j]): m for j, m in got.errors.items()},
                             n_root_searches=got.n_root_searches)

    # the probabilistic rule needs them for every predicted row; the deterministic one computes
    # them for its survivors only (they carry them on), once they are known
    p = probabilities_of(np.flatnonzero(eligible)) if probabilistic else None

    with np.errstate(invalid="ignore"):
        if probabilistic:
            reported = eligible
            pass_stability = eligible & (p.p_e_form_and_hull >= config.min_probability)
            pass_gap = pass_stability & (p.p_e_form_and_hull * p.p_band_gap >= config.min_probability)
        else:
            reported = under_e_form
            pass_stability = reported & (e_hull <= config.max_e_above_hull_ev_per_atom)
            pass_gap = pass_stability & (gap >= config.min_band_gap_ev)
    table["e_above_hull"] = np.where(reported, e_hull, np.nan)
    for i, message in hull_errors.items():
        if reported[i]:
            table.at[i, "screen_error"] = message

    candidates = np.flatnonzero(pass_gap)
    if progress:
        progress("window", 0, candidates.size)
    total = candidates.size
    windows = electrochemical_windows(
        hull, formulas[candidates].tolist(), e_form[candidates].tolist(),
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
        if probabilistic:
            pass_window = pass_gap & (p.p_joint >= config.min_probability)
        else:
            pass_window = pass_gap & (phi_ox >= config.min_phi_ox_v)
    if probabilistic:
        for i, message in p.errors.items():
            if table.at[i, "screen_error"] is None:
                table.at[i, "screen_error"] = message
    elif probabilities:
        p = probabilities_of(np.flatnonzero(pass_window))
    else:
        nan = np.full(n, np.nan)
        p = Probabilities(nan, nan, nan, nan, nan, nan, errors={}, n_root_searches=0)

    for name in PROBABILITY_COLUMNS:
        table[name] = getattr(p, name)
    if config.charge_balance:
        table["passed_charge_balance"] = eligible
    table["passed_e_form_and_hull"] = pass_stability
    table["passed_band_gap"] = pass_gap
    table["passed_oxidation_window"] = pass_window
    table["passed"] = pass_window
    funnel = {"formulas": int(n), "predicted": int(predicted.sum())}
    if config.charge_balance:
        funnel["charge_balanced"] = int(eligible.sum())
    funnel |= {
        "e_form_and_hull": int(pass_stability.sum()),
        "band_gap": int(pass_gap.sum()),
        "oxidation_window": int(pass_window.sum()),
    }
    return ScreenResult(table=table, funnel=funnel)


def _charge_balance_column(table: pd.DataFrame, predicted: np.ndarray) -> np.ndarray:
    """Set ``table["charge_balanced"]`` (:func:`htvs.charge_balance.charge_balanced`) and return it;
    a formula that cannot be read is False, with its message in ``screen_error`` when the row was
    predicted (a row with a prediction error keeps that error alone)."""
    from htvs.charge_balance import charge_balanced

    formulas = [f if isinstance(f, str) else "" for f in table["formula"].tolist()]
    balanced, errors = charge_balanced(formulas)
    table["charge_balanced"] = balanced
    for i, message in errors.items():
        if predicted[i] and table.at[i, "screen_error"] is None:
            table.at[i, "screen_error"] = message
    return balanced
