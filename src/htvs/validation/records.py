"""Records of stage 7 (validate): relaxation, stability, MD trajectories, diffusion, the result.

Units are in the names: eV, eV/atom, V vs Li/Li+, K, fs, ps, Å, cm^2/s, mS/cm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

from htvs.errors import HTVSError


class ValidationCancelled(HTVSError):
    """The caller's ``should_stop`` hook asked the run to stop; the last checkpoint is kept."""


@dataclass(frozen=True)
class ValidationProgress:
    """One progress report of a validation run (passed to the ``progress`` callback).

    Attributes:
        stage: ``"relax"``, ``"md"``, ``"analysis"`` or ``"done"``.
        message: one human-readable line.
        temperature_k: the MD temperature, K (``stage == "md"``), else None.
        phase: MD phase: ``"heat"``, ``"equilibrate"`` or ``"production"`` (else ``""``).
        step: steps done at this temperature (MD) or optimizer steps (relax).
        total_steps: steps of this temperature (MD), or the relaxation's step limit.
        fraction: overall progress of the run, 0..1 (MD steps over all temperatures).
    """

    stage: str
    message: str
    temperature_k: float | None = None
    phase: str = ""
    step: int = 0
    total_steps: int = 0
    fraction: float = 0.0


#: The progress callback type.
ProgressCallback = Callable[[ValidationProgress], None]
#: The cancellation hook type: returns True when the run should stop.
StopHook = Callable[[], bool]


def no_progress(_: ValidationProgress) -> None:
    """The default progress callback: ignore."""


def never_stop() -> bool:
    """The default cancellation hook: never."""
    return False


@dataclass(frozen=True)
class RelaxResult:
    """A relaxed structure and its energy.

    Attributes:
        structure: the relaxed structure (input cell, not the MD supercell).
        energy_ev: total energy, eV, on the Materials Project 2020-compatible scale (CHGNet's
            own scale; VASP energies after ``MaterialsProject2020Compatibility``).
        converged: whether the maximum force fell below ``fmax``.
        n_steps: optimizer steps taken.
        max_force_ev_per_angstrom: the largest residual force, eV/Å.
    """

    structure: Structure = field(repr=False)
    energy_ev: float
    converged: bool
    n_steps: int
    max_force_ev_per_angstrom: float

    @property
    def energy_per_atom_ev(self) -> float:
        return self.energy_ev / len(self.structure)


@dataclass(frozen=True)
class StabilityResult:
    """Thermodynamic stability of the relaxed compound against the reference hull.

    Attributes:
        formula: pymatgen reduced formula.
        e_form_ev_per_atom: formation energy vs the MP elemental references, eV/atom.
        e_above_hull_ev_per_atom: energy above the reference hull, eV/atom (negative: below it).
        decomposition: ``(formula, atomic fraction)`` of the hull's phases at this composition.
        phi_red_v, phi_ox_v: electrochemical window, V vs Li/Li+.
        reduction_products, oxidation_products: phases beyond the window's limits.
    """

    formula: str
    e_form_ev_per_atom: float
    e_above_hull_ev_per_atom: float
    decomposition: tuple[tuple[str, float], ...]
    phi_red_v: float
    phi_ox_v: float
    reduction_products: tuple[str, ...] = ()
    oxidation_products: tuple[str, ...] = ()


@dataclass(frozen=True)
class MDTrajectory:
    """The production part of one MD run: Li unwrapped positions and framework drift.

    Attributes:
        temperature_k: thermostat temperature, K.
        timestep_fs: integration time step, fs.
        record_every_steps: steps between frames.
        structure: the MD cell (all atoms; NVT keeps its lattice): the Li count and volume
            of Nernst–Einstein and the site order of the DiffusionAnalyzer.
        li_positions: ``(n_frames, n_li, 3)`` Cartesian unwrapped Li positions, Å.
        framework_displacement: ``(n_frames, 3)`` mean displacement of the non-Li atoms since
            the first frame, Å (the drift correction).
        mean_temperature_k: average instantaneous temperature over production, K.
        framework_rms_displacement: ``(n_frames,)`` root-mean-square displacement of the non-Li
            atoms since the first frame, drift removed, Å (None: not recorded). A few tenths of
            an Å is thermal vibration; Å upwards means the framework melts or flies apart.
        final_positions: ``(n_atoms, 3)`` Cartesian positions of every atom at the end of the
            run, Å (None: not recorded), for the closest-contact check.
    """

    temperature_k: float
    timestep_fs: float
    record_every_steps: int
    structure: Structure = field(repr=False)
    li_positions: np.ndarray = field(repr=False)
    framework_displacement: np.ndarray = field(repr=False)
    mean_temperature_k: float = math.nan
    framework_rms_displacement: np.ndarray | None = field(default=None, repr=False)
    final_positions: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.li_positions.shape[0])

    @property
    def frame_interval_fs(self) -> float:
        return self.timestep_fs * self.record_every_steps

    @property
    def duration_ps(self) -> float:
        """Time spanned by the frames, ps."""
        return (self.n_frames - 1) * self.frame_interval_fs / 1000.0

    def first(self, n_frames: int) -> MDTrajectory:
        """The trajectory cut to its first ``n_frames`` frames (a production window)."""
        return MDTrajectory(
            self.temperature_k,
            self.timestep_fs,
            self.record_every_steps,
            self.structure,
            self.li_positions[:n_frames],
            self.framework_displacement[:n_frames],
            self.mean_temperature_k,
            None if self.framework_rms_displacement is None else self.framework_rms_displacement[:n_frames],
            self.final_positions,
        )


@dataclass(frozen=True)
class DiffusivityEstimate:
    """Li tracer diffusivity at one temperature from one production window.

    Attributes:
        temperature_k: K.
        window_ps: production window used, ps.
        diffusivity_cm2_s: D, cm^2/s.
        diffusivity_std_cm2_s: statistical standard error of D from the MSD fit, cm^2/s.
        conductivity_mS_cm: Nernst–Einstein sigma at this temperature, mS/cm.
        mean_temperature_k: the run's mean production temperature, K (NaN: not known).
        msd_t_ps, msd_li_a2: the Li mean-square displacement the fit used (drift-corrected,
            averaged as the smoothing says), against the lag time: ps and Å^2, at most
            :data:`MAX_MSD_POINTS` points (evenly thinned).
    """

    temperature_k: float
    window_ps: float
    diffusivity_cm2_s: float
    diffusivity_std_cm2_s: float
    conductivity_mS_cm: float
    mean_temperature_k: float = math.nan
    msd_t_ps: tuple[float, ...] = ()
    msd_li_a2: tuple[float, ...] = ()


@dataclass(frozen=True)
class ArrheniusFit:
    """``D = D0 exp(-Ea / kT)`` over temperatures, and sigma extrapolated to a target T.

    Attributes:
        window_ps: production window the diffusivities came from, ps.
        temperatures_k: fitted temperatures, K.
        activation_energy_ev: Ea, eV.
        prefactor_cm2_s: D0, cm^2/s.
        target_temperature_k: extrapolation temperature, K.
        diffusivity_target_cm2_s: D at the target temperature, cm^2/s.
        sigma_target_mS_cm: Nernst–Einstein sigma at the target temperature, mS/cm.
    """

    window_ps: float
    temperatures_k: tuple[float, ...]
    activation_energy_ev: float
    prefactor_cm2_s: float
    target_temperature_k: float
    diffusivity_target_cm2_s: float
    sigma_target_mS_cm: float


@dataclass(frozen=True)
class ConductivityResult:
    """sigma at the target temperature with the paper's range and a statistical uncertainty.

    Attributes:
        diffusivities: the full-window D(T) estimates, one per temperature.
        fits: one Arrhenius fit per production window (the last is the full run).
        activation_energy_ev: Ea of the full run, eV.
        activation_energy_std_ev: its statistical standard deviation (bootstrap over D(T)
            errors; NaN without bootstrap).
        sigma_mean_mS_cm: sigma(target T) of the full run, mS/cm.
        sigma_low_mS_cm, sigma_high_mS_cm: min / max over the production windows, mS/cm.
        sigma_std_log10: standard deviation of log10 sigma from the bootstrap (NaN without).
        skipped_windows: windows that gave no estimate, with the reason.
    """

    diffusivities: tuple[DiffusivityEstimate, ...]
    fits: tuple[ArrheniusFit, ...]
    activation_energy_ev: float
    activation_energy_std_ev: float
    sigma_mean_mS_cm: float
    sigma_low_mS_cm: float
    sigma_high_mS_cm: float
    sigma_std_log10: float
    skipped_windows: tuple[tuple[float, str], ...] = ()


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


#: Most points of an MSD curve kept in a result (a report plots them).
MAX_MSD_POINTS = 200


def thinned(values: np.ndarray, most: int = MAX_MSD_POINTS) -> np.ndarray:
    """At most ``most`` evenly spaced items of ``values``, the first and the last kept."""
    values = np.asarray(values)
    if len(values) <= most:
        return values
    return values[np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


@dataclass(frozen=True)
class Flag:
    """A reason not to trust a validation result.

    Attributes:
        code: a short stable name (``relax_unconverged``, ``md_temperature``, ...; see
            :mod:`htvs.validation.flags`).
        reason: one human line naming the value and the bound it broke.
    """

    code: str
    reason: str


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of stage 7 for one structure.

    Attributes:
        id: the caller's identifier (the CLI: file name without extension).
        backend: ``"mlip"`` or ``"vasp"``.
        relax: the relaxation.
        stability: E_f, E_hull, decomposition and window of the relaxed compound.
        conductivity: D(T), Ea and sigma(300 K); None when no temperature was asked for.
        supercell_atoms: atoms in the MD cell.
        notes: caveats worth reading next to the numbers.
        flags: reasons not to trust the result (:mod:`htvs.validation.flags`); a flagged result
            is not counted as validated.
    """

    id: str
    backend: str
    relax: RelaxResult
    stability: StabilityResult
    conductivity: ConductivityResult | None
    supercell_atoms: int = 0
    notes: tuple[str, ...] = ()
    flags: tuple[Flag, ...] = ()

    @property
    def trusted(self) -> bool:
        """No flag was raised."""
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``htvs validate --json`` (units: see the keys' docs).

        ``flags`` lists ``{"code", "reason"}`` of every flag and ``trusted`` is True without any;
        ``msd_curves`` maps each temperature (K, as text) to ``{"t_ps", "msd_li_A2",
        "mean_temperature_K"}``: the Li MSD the diffusivity was fitted to, at most
        :data:`MAX_MSD_POINTS` points, and the run's mean production temperature."""
        stability = self.stability
        out: dict[str, Any] = {
            "id": self.id,
            "formula": stability.formula,
            "backend": self.backend,
            "e_form": _finite(stability.e_form_ev_per_atom),
            "e_above_hull": _finite(stability.e_above_hull_ev_per_atom),
            "decomposition": [{"formula": f, "fraction": x} for f, x in stability.decomposition],
            "phi_red": _finite(stability.phi_red_v),
            "phi_ox": _finite(stability.phi_ox_v),
            "relaxed_energy_per_atom": _finite(self.relax.energy_per_atom_ev),
            "relax_converged": self.relax.converged,
            "supercell_atoms": self.supercell_atoms,
            "diffusivity": {},
            "activation_energy_eV": None,
            "activation_energy_std_eV": None,
            "sigma_300K_mS_cm": {"mean": None, "low": None, "high": None, "std_log10": None},
            "notes": list(self.notes),
            "flags": [{"code": f.code, "reason": f.reason} for f in self.flags],
            "trusted": self.trusted,
            "msd_curves": {},
        }
        cond = self.conductivity
        if cond is not None:
            out["diffusivity"] = {
                f"{d.temperature_k:g}": {"mean": _finite(d.diffusivity_cm2_s), "std": _finite(d.diffusivity_std_cm2_s)}
                for d in cond.diffusivities
            }
            out["activation_energy_eV"] = _finite(cond.activation_energy_ev)
            out["activation_energy_std_eV"] = _finite(cond.activation_energy_std_ev)
            out["sigma_300K_mS_cm"] = {
                "mean": _finite(cond.sigma_mean_mS_cm),
                "low": _finite(cond.sigma_low_mS_cm),
                "high": _finite(cond.sigma_high_mS_cm),
                "std_log10": _finite(cond.sigma_std_log10),
            }
            out["windows_ps"] = [fit.window_ps for fit in cond.fits]
            out["msd_curves"] = {
                f"{d.temperature_k:g}": {
                    "t_ps": [_finite(t) for t in d.msd_t_ps],
                    "msd_li_A2": [_finite(m) for m in d.msd_li_a2],
                    "mean_temperature_K": _finite(d.mean_temperature_k),
                }
                for d in cond.diffusivities
            }
        return out
