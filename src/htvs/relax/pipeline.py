"""Relax structures (batched CHGNet FIRE) and place them on the CHGNet hull: no MD.

Shared by ``htvs relax`` and the campaign's ``relax`` stage: :func:`relax_and_assess` checks each
structure (ordered, Li-containing, at most ``max_atoms`` sites, a system the hull can be built
for), relaxes the accepted ones together and computes E_f / E_hull / decomposition on one scale
(:class:`htvs.relax.reference.ChgnetHull`). Every refused or failed structure gets an error in
its place; the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymatgen.core import Structure

from htvs.errors import HTVSError, InvalidInput
from htvs.relax.batch import BatchRelaxConfig, relax_batch
from htvs.relax.reference import ChgnetHull, StabilityOnScale

#: Default largest cell relaxed, sites.
DEFAULT_MAX_ATOMS = 200


@dataclass
class RelaxOutcome:
    """One structure through :func:`relax_and_assess`.

    Attributes:
        name: the structure's id or file name.
        structure: the relaxed structure (None when refused or failed).
        converged: FIRE reached fmax within max_steps.
        n_steps: FIRE steps taken.
        max_force_ev_per_angstrom: largest residual force, eV/Å.
        stability: E_f / E_hull / decomposition on the CHGNet scale (None when failed).
        error: why the structure was refused or failed (None when it was not).
    """

    name: str
    structure: Structure | None = field(default=None, repr=False)
    converged: bool = False
    n_steps: int = 0
    max_force_ev_per_angstrom: float = math.nan
    stability: StabilityOnScale | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "converged": self.converged, "n_steps": self.n_steps,
               "max_force_eV_per_A": None if math.isnan(self.max_force_ev_per_angstrom)
               else self.max_force_ev_per_angstrom, "error": self.error}
        out.update(self.stability.to_dict() if self.stability is not None else {})
        return out


def check_relaxable(structure: Structure, name: str, hull: ChgnetHull, max_atoms: int) -> Structure:
    """An element-only copy of ``structure`` that can be relaxed and placed on the hull.

    Raises:
        InvalidInput: disordered, Li-free or Li metal, a refused cell
            (:func:`htvs.validation.inputs.check_structure`), more than ``max_atoms`` sites, a
            system the hull refuses.
    """
    from htvs.validation.inputs import check_structure

    if len(structure) > max_atoms:
        raise InvalidInput(f"{name}: {len(structure)} sites, more than max_atoms = {max_atoms}")
    plain = check_structure(structure, name)
    hull.check_system((e.symbol for e in plain.composition.elements), name)
    return plain


def relax_and_assess(
    items: Sequence[tuple[str, Structure | None | str]],
    model,
    hull: ChgnetHull,
    config: BatchRelaxConfig = BatchRelaxConfig(),
    max_atoms: int = DEFAULT_MAX_ATOMS,
    progress: Callable[[int, int], None] | None = None,
) -> list[RelaxOutcome]:
    """Relax ``(name, structure)`` items together and place each on the CHGNet hull.

    An item whose structure is a string holds the reason it could not be read; it is reported
    as such. Returns one outcome per item, in order.
    """
    outcomes = [RelaxOutcome(name=name) for name, _ in items]
    accepted: list[tuple[int, Structure]] = []
    for i, (name, structure) in enumerate(items):
        if not isinstance(structure, Structure):
            outcomes[i].error = str(structure) if structure else f"{name}: no structure"
            continue
        try:
            accepted.append((i, check_relaxable(structure, name, hull, max_atoms)))
        except HTVSError as exc:
            outcomes[i].error = str(exc)
    results = relax_batch([s for _, s in accepted], model, config, progress)
    for (i, _), result in zip(accepted, results):
        outcome = outcomes[i]
        outcome.converged, outcome.n_steps = result.converged, result.n_steps
        outcome.max_force_ev_per_angstrom = result.max_force_ev_per_angstrom
        if result.error is not None:
            outcome.error = f"{outcome.name}: {result.error}"
            continue
        try:
            outcome.stability = hull.stability(result.structure, result.energy_ev, outcome.name)
            outcome.structure = result.structure
        except HTVSError as exc:
            outcome.error = str(exc)
    return outcomes
