"""The filter every prototype source applies, and the bookkeeping shared by the sources.

A prototype is an ordered, Li-containing ternary or quaternary structure by default; the
:class:`PrototypeFilter` makes the element rules and the cell-size limit configurable.
Orderedness is not configurable: a substitution template must have exactly one element on
every site (see :class:`~htvs.prototypes.records.Prototype`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pymatgen.core import Element, Structure
from pymatgen.core.periodic_table import DummySpecies

from htvs.errors import InvalidInput
from htvs.prototypes.records import Prototype, PrototypeSet, SkippedInput


@dataclass(frozen=True)
class PrototypeFilter:
    """Which structures a source keeps as prototypes.

    Attributes:
        required_elements: element symbols every prototype must contain (default Li).
        allowed_n_elements: allowed numbers of distinct elements (default 3 and 4:
            ternaries and quaternaries, as in the seed paper).
        max_atoms: largest number of atoms in the prototype's cell (as given by the source,
            not reduced to the primitive cell).
    """

    required_elements: tuple[str, ...] = ("Li",)
    allowed_n_elements: tuple[int, ...] = (3, 4)
    max_atoms: int = 200

    def __post_init__(self) -> None:
        required = tuple(sorted(set(self.required_elements)))
        for symbol in required:
            if not Element.is_valid_symbol(symbol):
                raise InvalidInput(f"required element {symbol!r} is not an element symbol")
        allowed = tuple(sorted(set(self.allowed_n_elements)))
        if not allowed or any(int(n) != n or n < 1 for n in allowed):
            raise InvalidInput(
                f"allowed_n_elements must be positive integers, got {self.allowed_n_elements!r}"
            )
        if int(self.max_atoms) != self.max_atoms or self.max_atoms < 1:
            raise InvalidInput(f"max_atoms must be a positive integer, got {self.max_atoms!r}")
        object.__setattr__(self, "required_elements", required)
        object.__setattr__(self, "allowed_n_elements", tuple(int(n) for n in allowed))
        object.__setattr__(self, "max_atoms", int(self.max_atoms))

    def composition_reason(self, elements: Iterable[str]) -> str | None:
        """Why a structure made of ``elements`` is rejected, or None if its elements pass."""
        present = sorted(set(elements))
        missing = [symbol for symbol in self.required_elements if symbol not in present]
        if missing:
            return f"does not contain {', '.join(missing)} (elements: {'-'.join(present)})"
        if len(present) not in self.allowed_n_elements:
            allowed = ", ".join(str(n) for n in self.allowed_n_elements)
            return f"has {len(present)} elements ({'-'.join(present)}); allowed: {allowed}"
        return None

    def size_reason(self, n_atoms: int) -> str | None:
        """Why a cell of ``n_atoms`` atoms is rejected, or None."""
        if n_atoms > self.max_atoms:
            return f"{n_atoms} atoms in the cell exceed max_atoms={self.max_atoms}"
        return None



def element_symbols(structure: Structure) -> set[str]:
    """Element symbols present in ``structure`` (oxidation states ignored, vacancies absent)."""
    return {specie.symbol for site in structure for specie in site.species}


def disorder_reason(structure: Structure) -> str:
    """A human-readable description of why ``structure`` is not ordered."""
    n_mixed = sum(1 for site in structure if len(site.species) > 1)
    n_partial = sum(
        1 for site in structure if len(site.species) == 1 and site.species.num_atoms < 1 - 1e-8
    )
    parts = []
    if n_mixed:
        parts.append(f"{n_mixed} sites with mixed species")
    if n_partial:
        parts.append(f"{n_partial} partially occupied sites")
    return "disordered: " + (", ".join(parts) or "not fully ordered")


def element_structure(structure: Structure) -> Structure:
    """A copy of ``structure`` with plain elements on every site (oxidation states removed).

    Raises:
        InvalidInput: the structure is empty or holds a dummy species (e.g. ``X``).
    """
    if len(structure) == 0:
        raise InvalidInput("the structure has no sites")
    for site in structure:
        for specie in site.species:
            if isinstance(specie, DummySpecies):
                raise InvalidInput(f"the structure holds a dummy species {specie!s}")
    copy = structure.copy()
    copy.remove_oxidation_states()
    return copy


def finalize(
    prototypes: Iterable[Prototype], skipped: Iterable[SkippedInput]
) -> PrototypeSet:
    """A :class:`PrototypeSet` sorted by id (prototypes) and name (skipped inputs).

    A prototype whose id was already taken is moved to the skipped inputs, so ids are unique
    and the first one (in the order given) wins.
    """
    kept: dict[str, Prototype] = {}
    skipped_list = list(skipped)
    for prototype in prototypes:
        if prototype.id in kept:
            skipped_list.append(SkippedInput(prototype.id, f"duplicate id {prototype.id!r}"))
            continue
        kept[prototype.id] = prototype
    return PrototypeSet(
        prototypes=tuple(kept[key] for key in sorted(kept)),
        skipped=tuple(sorted(skipped_list, key=lambda s: (s.name, s.reason))),
    )
