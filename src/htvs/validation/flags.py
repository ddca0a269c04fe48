"""Sanity flags of a validation result: reasons not to trust its numbers.

A flagged result is kept and reported with its flags, but is not counted as *validated*
(funnel, reports). Each flag has a stable code and one line naming the value and the bound:

* ``relax_unconverged``: the relaxation stopped above its force criterion (the MD then starts
  away from a minimum and heats itself as the structure slides down).
* ``md_temperature``: a temperature's mean production temperature is more than
  ``max_temperature_deviation`` (10 %) off its set point; D then belongs to another temperature.
* ``atoms_collapsed``: two atoms (periodic images included) closer than half their summed bond
  radii, floor 0.5 Å, in the relaxed cell or at the end of an MD run
  (:func:`htvs.generation.sanity.closest_contact`, the generated-structure filter's rule).
* ``volume_out_of_range``: the relaxed cell's volume per atom outside 5-100 Å^3/atom (the same
  filter's bounds), or changed by the relaxation by more than a factor ``max_volume_ratio``.
* ``framework_displaced``: the non-Li atoms' drift-corrected RMS displacement at the end of a
  production run above ``max_framework_rms_angstrom``: the framework melts or flies apart, so
  Li motion is no solid's conduction.
* ``arrhenius``: Ea <= 0 eV, or fewer than ``min_arrhenius_temperatures`` temperatures (a line
  through two points cannot show Arrhenius behaviour).
* ``sigma_unphysical``: sigma(300 K) not finite, <= 0, or above ``max_sigma_mS_cm``
  (1,000 mS/cm: forty times the best solid Li conductor known, ~25 mS/cm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pymatgen.core import Structure

from htvs.validation.records import ConductivityResult, Flag, MDTrajectory, RelaxResult


@dataclass(frozen=True)
class FlagBounds:
    """The bounds of the flags (see the module docstring; units in the names)."""

    max_temperature_deviation: float = 0.10
    max_volume_ratio: float = 1.5
    max_framework_rms_angstrom: float = 1.5
    min_arrhenius_temperatures: int = 3
    max_sigma_mS_cm: float = 1000.0


def _contact_reason(structure: Structure, where: str) -> str | None:
    """Why ``structure`` fails the generated-structure filter's distance and volume rules."""
    from htvs.generation.sanity import SanityConfig, sanity_reason

    reason = sanity_reason(structure, SanityConfig())
    return None if reason is None else f"{where}: {reason}"


def _structure_flags(initial: Structure, relaxed: RelaxResult, bounds: FlagBounds) -> list[Flag]:
    flags = []
    reason = _contact_reason(relaxed.structure, "relaxed cell")
    if reason is not None:
        code = "volume_out_of_range" if reason.startswith("relaxed cell: volume") else "atoms_collapsed"
        flags.append(Flag(code, reason))
    ratio = relaxed.structure.volume / initial.volume if initial.volume > 0 else math.inf
    if not (1.0 / bounds.max_volume_ratio <= ratio <= bounds.max_volume_ratio):
        flags.append(Flag("volume_out_of_range",
                          f"the relaxation changed the cell volume by a factor {ratio:.3g} "
                          f"({initial.volume:.1f} -> {relaxed.structure.volume:.1f} Å^3), beyond "
                          f"{bounds.max_volume_ratio:g}x either way"))
    return flags


def _md_flags(trajectory: MDTrajectory, bounds: FlagBounds) -> list[Flag]:
    flags = []
    t_set, t_mean = trajectory.temperature_k, trajectory.mean_temperature_k
    off = abs(t_mean - t_set) / t_set if math.isfinite(t_mean) else math.inf
    if off > bounds.max_temperature_deviation:
        flags.append(Flag("md_temperature",
                          f"mean MD temperature {t_mean:.0f} K at the {t_set:g} K set point, {100 * off:.0f} % off "
                          f"(bound {100 * bounds.max_temperature_deviation:g} %)"))
    if trajectory.final_positions is not None:
        cell = trajectory.structure
        final = Structure(cell.lattice, cell.species, trajectory.final_positions, coords_are_cartesian=True)
        reason = _contact_reason(final, f"end of the {t_set:g} K run")
        if reason is not None:
            flags.append(Flag("atoms_collapsed", reason))
    rms = trajectory.framework_rms_displacement
    if rms is not None and len(rms) and math.isfinite(rms[-1]) and rms[-1] > bounds.max_framework_rms_angstrom:
        flags.append(Flag("framework_displaced",
                          f"framework atoms moved {rms[-1]:.2f} Å RMS (drift removed) during production at "
                          f"{t_set:g} K, above {bounds.max_framework_rms_angstrom:g} Å: the framework melts or "
                          "flies apart"))
    return flags


def _transport_flags(conductivity: ConductivityResult, bounds: FlagBounds) -> list[Flag]:
    flags = []
    n_temperatures = len({d.temperature_k for d in conductivity.diffusivities})
    ea = conductivity.activation_energy_ev
    if not (math.isfinite(ea) and ea > 0):
        flags.append(Flag("arrhenius", f"activation energy {ea:.3g} eV: an Arrhenius fit needs Ea > 0 eV"))
    if n_temperatures < bounds.min_arrhenius_temperatures:
        flags.append(Flag("arrhenius",
                          f"Arrhenius fit over {n_temperatures} temperatures, fewer than the "
                          f"{bounds.min_arrhenius_temperatures} required"))
    sigma = conductivity.sigma_mean_mS_cm
    if not math.isfinite(sigma):
        flags.append(Flag("sigma_unphysical", f"sigma(300 K) is {sigma} mS/cm, not a finite number"))
    elif not (0 < sigma <= bounds.max_sigma_mS_cm):
        flags.append(Flag("sigma_unphysical",
                          f"sigma(300 K) {sigma:.4g} mS/cm outside (0, {bounds.max_sigma_mS_cm:g}] mS/cm"))
    return flags


def validation_flags(
    initial: Structure,
    relaxed: RelaxResult,
    trajectories: Sequence[MDTrajectory],
    conductivity: ConductivityResult | None,
    fmax_ev_per_angstrom: float,
    bounds: FlagBounds | None = None,
) -> tuple[Flag, ...]:
    """Every flag of one validation run: relaxation and cell, each temperature's MD, the fit.

    Args:
        initial: the structure before relaxation.
        relaxed: the relaxation.
        trajectories: one production trajectory per temperature.
        conductivity: D(T), Ea, sigma (None: no MD asked for; no transport flags).
        fmax_ev_per_angstrom: the relaxation's force criterion, eV/Å (named in the reason).
        bounds: the bounds (default :class:`FlagBounds`).
    """
    bounds = bounds or FlagBounds()
    flags: list[Flag] = []
    if not relaxed.converged:
        flags.append(Flag("relax_unconverged",
                          f"relaxation did not converge: max force {relaxed.max_force_ev_per_angstrom:.3f} eV/Å "
                          f"after {relaxed.n_steps} steps, above fmax {fmax_ev_per_angstrom:g} eV/Å"))
    flags += _structure_flags(initial, relaxed, bounds)
    for trajectory in trajectories:
        flags += _md_flags(trajectory, bounds)
    if conductivity is not None:
        flags += _transport_flags(conductivity, bounds)
    return tuple(flags)
