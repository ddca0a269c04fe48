"""Li trajectories -> D(T) -> Arrhenius -> sigma(300 K), with pymatgen-analysis-diffusion.

* D at each temperature: pymatgen's ``DiffusionAnalyzer`` (Ong et al. 2013; Deng et al. 2016)
  on the unwrapped Li positions, drift-corrected by the framework's mean displacement. With
  the default smoothing ``"max"`` the MSD averages over every time origin and is fitted
  (variance-weighted) from a lag of 1 ps. The standard error of D comes from resampling the
  Li atoms (bootstrap over the per-atom MSDs the analyzer keeps).
* Ea, D0: ``fit_arrhenius`` (ln D against 1/T); D(300 K) by extrapolation.
* sigma: Nernst–Einstein ``sigma = n z^2 e^2 D / (k_B T)`` with n the Li number density of the
  MD cell, z = 1 (pymatgen's ``get_conversion_factor``), in mS/cm.
* The paper's range: D from the first 10, 20, 30 and 40 ps of production (configurable
  fractions), one Arrhenius fit per window; low/high are the min/max of sigma(300 K).
* Statistical uncertainty: a parametric bootstrap of the full-run fit, drawing ln D(T) from
  normal distributions with the MSD fits' relative errors (seeded); reported as the standard
  deviations of Ea and log10 sigma(300 K).

Why pymatgen-analysis-diffusion (not kinisi): both install on Python 3.11 with our torch and
numpy, but this one adds only seaborn to what pymatgen already brings, runs in milliseconds
(kinisi 2 samples posteriors with emcee/dynesty and adds scipp, statsmodels and more), and is
the analysis of the Materials Project AIMD studies the paper follows. Its D error comes from
a least-squares fit to correlated MSD points and is known to be optimistic; kinisi's Bayesian
estimate would be the upgrade if the uncertainties matter more than the range.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput
from htvs.validation.config import AnalysisConfig
from htvs.validation.records import ArrheniusFit, ConductivityResult, DiffusivityEstimate, MDTrajectory, thinned

LI = "Li"


def li_conversion_factor(structure: Structure, temperature_k: float) -> float:
    """Nernst–Einstein factor of Li (z = 1) in ``structure``: sigma [mS/cm] = factor * D [cm^2/s]."""
    from pymatgen.analysis.diffusion.analyzer import get_conversion_factor

    if structure.composition[LI] <= 0:
        raise InvalidInput(f"{structure.composition.reduced_formula}: no Li for Nernst–Einstein")
    return float(get_conversion_factor(structure, LI, temperature_k))


def nernst_einstein_mS_cm(diffusivity_cm2_s: float, structure: Structure, temperature_k: float) -> float:
    """Li-ion conductivity (mS/cm) from the Li tracer diffusivity (cm^2/s) at ``temperature_k``.

    ``sigma = N_Li / V * e^2 * D / (k_B T)`` (Haven ratio 1, z = 1).
    """
    return float(diffusivity_cm2_s) * li_conversion_factor(structure, temperature_k)


def _displacements(trajectory: MDTrajectory) -> np.ndarray:
    """``(n_sites, n_frames, 3)`` displacements in the site order of ``trajectory.structure``.

    Li rows are the recorded unwrapped positions minus the first frame; framework rows all
    carry the recorded mean framework displacement, so that the analyzer's drift (the average
    over framework rows) is exactly that mean.
    """
    structure = trajectory.structure
    is_li = np.array([site.specie.symbol == LI for site in structure])
    n_frames = trajectory.n_frames
    disp = np.empty((len(structure), n_frames, 3), dtype=np.float64)
    li_disp = trajectory.li_positions - trajectory.li_positions[:1]
    disp[is_li] = np.transpose(li_disp, (1, 0, 2))
    disp[~is_li] = trajectory.framework_displacement[None, :, :]
    return disp


def estimate_diffusivity(trajectory: MDTrajectory, config: AnalysisConfig | None = None) -> DiffusivityEstimate:
    """D (cm^2/s) of Li with its standard error, and sigma at the run temperature (mS/cm).

    Raises:
        InvalidInput: too few frames for the chosen smoothing (e.g. under 1 ps with ``"max"``),
            or a structure whose Li count does not match the trajectory.
    """
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer

    config = config or AnalysisConfig()
    structure = trajectory.structure
    n_li = int(round(structure.composition[LI]))
    if trajectory.li_positions.ndim != 3 or trajectory.li_positions.shape[1:] != (n_li, 3):
        raise InvalidInput(
            f"trajectory Li positions have shape {trajectory.li_positions.shape}, expected (frames, {n_li}, 3)"
        )
    if trajectory.n_frames < 3:
        raise InvalidInput(f"trajectory at {trajectory.temperature_k:g} K has {trajectory.n_frames} frames; need >= 3")
    smoothed: str | bool = False if config.smoothing == "none" else config.smoothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            analyzer = DiffusionAnalyzer(
                structure,
                _displacements(trajectory),
                LI,
                trajectory.temperature_k,
                trajectory.timestep_fs,
                trajectory.record_every_steps,
                smoothed=smoothed,
                min_obs=config.min_obs,
                avg_nsteps=config.avg_nsteps,
            )
        except ValueError as exc:  # "Not enough data to calculate diffusivity"
            raise InvalidInput(
                f"{trajectory.duration_ps:g} ps at {trajectory.temperature_k:g} K is too short for "
                f"smoothing {config.smoothing!r} ({exc})"
            ) from exc
    diffusivity = float(analyzer.diffusivity)
    std = _li_bootstrap_std(analyzer, smoothed, config)
    lag_ps = thinned(np.asarray(analyzer.dt, dtype=np.float64) / 1000.0)
    msd_a2 = thinned(np.asarray(analyzer.msd, dtype=np.float64))
    return DiffusivityEstimate(
        temperature_k=trajectory.temperature_k,
        window_ps=trajectory.duration_ps,
        diffusivity_cm2_s=diffusivity,
        diffusivity_std_cm2_s=std,
        conductivity_mS_cm=float(analyzer.conductivity),
        mean_temperature_k=float(trajectory.mean_temperature_k),
        msd_t_ps=tuple(lag_ps.tolist()),
        msd_li_a2=tuple(msd_a2.tolist()),
    )


def _li_bootstrap_std(analyzer, smoothed: str | bool, config: AnalysisConfig) -> float:
    """Standard error of D (cm^2/s) by resampling the Li atoms (NaN without bootstrap).

    The analyzer keeps each ion's time-origin-averaged squared displacement per lag
    (``sq_disp_ions``); a draw averages a resample of the Li rows with replacement and refits
    with pymatgen's ``get_diffusivity_from_msd``. The fit's own ``diffusivity_std_dev`` is not
    used: with smoothing it is orders of magnitude too small (pymatgen says it "makes sense
    only for non-smoothed analyses"). Resampling atoms treats them as independent, so
    collective (correlated) hops make this an underestimate.
    """
    from pymatgen.analysis.diffusion.analyzer import get_diffusivity_from_msd

    rows = np.asarray(analyzer.sq_disp_ions)[np.asarray(analyzer.indices)]
    n_li = rows.shape[0]
    if config.n_bootstrap < 2 or n_li < 2:
        return math.nan
    rng = np.random.default_rng(config.seed)
    draws = np.empty(config.n_bootstrap)
    for b in range(config.n_bootstrap):
        msd = rows[rng.integers(0, n_li, n_li)].mean(axis=0)
        draws[b] = get_diffusivity_from_msd(msd, analyzer.dt, smoothed)[0]
    return float(np.std(draws, ddof=1))


def fit_arrhenius_sigma(
    estimates: Sequence[DiffusivityEstimate], structure: Structure, target_temperature_k: float = 300.0
) -> ArrheniusFit:
    """Arrhenius fit of D(T) (pymatgen ``fit_arrhenius``) and sigma at ``target_temperature_k``.

    Raises:
        InvalidInput: fewer than two temperatures, repeated temperatures, or D <= 0.
    """
    from pymatgen.analysis.diffusion.analyzer import fit_arrhenius, get_extrapolated_diffusivity

    temps = np.array([e.temperature_k for e in estimates], dtype=np.float64)
    diffs = np.array([e.diffusivity_cm2_s for e in estimates], dtype=np.float64)
    if len(temps) < 2 or len(set(temps.tolist())) < 2:
        raise InvalidInput(f"an Arrhenius fit needs at least two distinct temperatures, got {temps.tolist()}")
    if np.any(~np.isfinite(diffs)) or np.any(diffs <= 0):
        raise InvalidInput(f"an Arrhenius fit needs positive finite diffusivities, got {diffs.tolist()}")
    ea, prefactor, _ = fit_arrhenius(temps, diffs)
    d_target = float(get_extrapolated_diffusivity(temps, diffs, target_temperature_k))
    return ArrheniusFit(
        window_ps=float(min(e.window_ps for e in estimates)),
        temperatures_k=tuple(float(t) for t in temps),
        activation_energy_ev=float(ea),
        prefactor_cm2_s=float(prefactor),
        target_temperature_k=float(target_temperature_k),
        diffusivity_target_cm2_s=d_target,
        sigma_target_mS_cm=nernst_einstein_mS_cm(d_target, structure, target_temperature_k),
    )


def _bootstrap(
    estimates: Sequence[DiffusivityEstimate], structure: Structure, config: AnalysisConfig
) -> tuple[float, float]:
    """Std of Ea (eV) and of log10 sigma(target) over draws of ln D ~ N(ln D, std_D / D)."""
    from pymatgen.analysis.diffusion.analyzer import fit_arrhenius
    from scipy import constants

    k_b_ev = constants.k / constants.e
    if config.n_bootstrap < 2:
        return math.nan, math.nan
    temps = np.array([e.temperature_k for e in estimates])
    log_d = np.log([e.diffusivity_cm2_s for e in estimates])
    rel = np.array([e.diffusivity_std_cm2_s / e.diffusivity_cm2_s for e in estimates])
    if not np.all(np.isfinite(rel)):
        return math.nan, math.nan
    rng = np.random.default_rng(config.seed)
    target = config.target_temperature_k
    factor = li_conversion_factor(structure, target)
    eas, log_sigmas = [], []
    for _ in range(config.n_bootstrap):
        draw = np.exp(log_d + rng.normal(0.0, 1.0, len(temps)) * rel)
        ea, prefactor, _ = fit_arrhenius(temps, draw)
        eas.append(ea)
        log_sigmas.append(math.log10(prefactor * factor) - ea / (k_b_ev * target * math.log(10)))
    return float(np.std(eas, ddof=1)), float(np.std(log_sigmas, ddof=1))


def conductivity_from_trajectories(
    trajectories: Sequence[MDTrajectory], config: AnalysisConfig | None = None
) -> ConductivityResult:
    """D(T), Ea, and sigma(target T) with the windows' range and a bootstrap uncertainty.

    Args:
        trajectories: one production trajectory per temperature, same MD cell.
        config: analysis settings.

    Raises:
        InvalidInput: fewer than two temperatures, or the full production too short to
            estimate D at some temperature.
    """
    config = config or AnalysisConfig()
    if len(trajectories) < 2:
        raise InvalidInput(
            f"sigma(300 K) needs MD at two or more temperatures for the Arrhenius fit, got {len(trajectories)}"
        )
    structure = trajectories[0].structure
    fits: list[ArrheniusFit] = []
    skipped: list[tuple[float, str]] = []
    full: list[DiffusivityEstimate] = []
    for fraction in config.window_fractions:
        estimates = []
        reason = ""
        for trajectory in trajectories:
            n_frames = int(round((trajectory.n_frames - 1) * fraction)) + 1
            try:
                estimates.append(estimate_diffusivity(trajectory.first(n_frames), config))
            except InvalidInput as exc:
                if fraction == 1.0:
                    raise
                reason = str(exc)
                break
        window_ps = fraction * trajectories[0].duration_ps
        if reason:
            skipped.append((window_ps, reason))
            continue
        fits.append(fit_arrhenius_sigma(estimates, structure, config.target_temperature_k))
        if fraction == 1.0:
            full = estimates
    sigmas = [fit.sigma_target_mS_cm for fit in fits]
    ea_std, log_sigma_std = _bootstrap(full, structure, config)
    return ConductivityResult(
        diffusivities=tuple(full),
        fits=tuple(fits),
        activation_energy_ev=fits[-1].activation_energy_ev,
        activation_energy_std_ev=ea_std,
        sigma_mean_mS_cm=fits[-1].sigma_target_mS_cm,
        sigma_low_mS_cm=float(min(sigmas)),
        sigma_high_mS_cm=float(max(sigmas)),
        sigma_std_log10=log_sigma_std,
        skipped_windows=tuple(skipped),
    )
