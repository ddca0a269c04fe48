"""Ordered approximants of slightly disordered structures, where pymatgen finds them cheaply.

An approximant keeps the cell the source gives (no supercell), rounds each group of
equivalent partially occupied sites to whole atoms, and takes the ordering with the lowest
Ewald energy (pymatgen's ``OrderDisorderedStructureTransformation``, oxidation states from
``Composition.oxi_state_guesses``). It is attempted only when

* every group's occupancies are within ``occupancy_tol`` of whole atoms *in the given cell*
  (so the composition is kept to within rounding noise), and
* the number of orderings to search is at most ``max_orderings``.

The budget is a count of orderings rather than a wall-clock time on purpose: a time budget
would make the prototype set depend on the machine's speed. With the defaults the slowest
bundled case (Li8GeP4, 10,626 orderings on 104 sites) takes ~1 s. Supercells were tried
(doubling the c axis) and added no bundled structure under the same budget, so they are not
attempted.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from pymatgen.core import Composition, Structure

from htvs.errors import InvalidInput


@dataclass(frozen=True)
class OrderingBudget:
    """Limits of the approximant search.

    Attributes:
        max_orderings: largest number of site orderings the Ewald search may face
            (product over site groups of the multinomial counts).
        occupancy_tol: largest distance (atoms) of a group's total occupancy of one species
            from a whole number.
    """

    max_orderings: int = 20_000
    occupancy_tol: float = 0.05

    def __post_init__(self) -> None:
        if self.max_orderings < 1:
            raise InvalidInput(f"max_orderings must be >= 1, got {self.max_orderings!r}")
        if not 0 <= self.occupancy_tol < 0.5:
            raise InvalidInput(f"occupancy_tol must be in [0, 0.5), got {self.occupancy_tol!r}")


def _site_groups(structure: Structure) -> list[list[int]]:
    """Indices of disordered sites grouped by (almost) equal species and occupancies.

    Same grouping as ``OrderDisorderedStructureTransformation`` without symmetrization.
    """
    groups: list[list[int]] = []
    exemplars: list[Composition] = []
    for index, site in enumerate(structure):
        if site.is_ordered:
            continue
        for group, exemplar in zip(groups, exemplars, strict=True):
            if site.species.almost_equals(exemplar):
                group.append(index)
                break
        else:
            groups.append([index])
            exemplars.append(site.species)
    return groups


def _target_composition(
    structure: Structure, groups: list[list[int]], budget: OrderingBudget
) -> tuple[Composition, int]:
    """The whole-atom composition an ordering would have, and the number of orderings."""
    amounts: dict[str, int] = {}
    for site in structure:
        if site.is_ordered:
            symbol = site.specie.symbol
            amounts[symbol] = amounts.get(symbol, 0) + 1
    n_orderings = 1
    for group in groups:
        totals = sum((structure[i].species for i in group), Composition())
        free = len(group)
        for specie, total in totals.items():
            whole = round(total)
            if abs(total - whole) > budget.occupancy_tol:
                raise InvalidInput(
                    f"{total:.3f} {specie.symbol} on {len(group)} equivalent sites is not a "
                    f"whole number of atoms in this cell (tolerance {budget.occupancy_tol})"
                )
            if whole > free:
                raise InvalidInput(f"{whole} {specie.symbol} do not fit on {len(group)} sites")
            n_orderings *= math.comb(free, whole)
            free -= whole
            amounts[specie.symbol] = amounts.get(specie.symbol, 0) + whole
    return Composition({k: v for k, v in amounts.items() if v > 0}), n_orderings


def order_structure(structure: Structure, budget: OrderingBudget | None = None) -> Structure:
    """The lowest-Ewald-energy ordering of ``structure`` in its own cell.

    Args:
        structure: a disordered structure without oxidation states.
        budget: limits of the search (defaults of :class:`OrderingBudget`).

    Returns:
        An ordered structure with plain elements and the rounded composition.

    Raises:
        InvalidInput: the structure is outside the budget, has no charge-balanced oxidation
            states, or the ordering lost an element; the message says which.
    """
    from pymatgen.transformations.standard_transformations import (
        OrderDisorderedStructureTransformation,
    )

    budget = budget or OrderingBudget()
    groups = _site_groups(structure)
    if not groups:
        return structure.copy()
    target, n_orderings = _target_composition(structure, groups, budget)
    lost = sorted({e.symbol for e in structure.composition} - {e.symbol for e in target})
    if lost:
        raise InvalidInput(f"rounding to whole atoms removes {', '.join(lost)}")
    if n_orderings > budget.max_orderings:
        raise InvalidInput(
            f"{n_orderings:,} orderings exceed the budget of {budget.max_orderings:,}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = target.oxi_state_guesses(max_sites=-1)
        if not guesses:
            raise InvalidInput(f"no charge-balanced oxidation states for {target.reduced_formula}")
        decorated = structure.copy()
        decorated.add_oxidation_state_by_element(dict(guesses[0]))
        transformation = OrderDisorderedStructureTransformation(
            algo=OrderDisorderedStructureTransformation.ALGO_FAST,
            occ_tol=budget.occupancy_tol,
        )
        ordered = transformation.apply_transformation(decorated)
    ordered.remove_oxidation_states()
    if not ordered.is_ordered or ordered.composition != target:
        raise InvalidInput(
            f"ordering gave {ordered.composition.formula}, expected {target.formula}"
        )
    return ordered
