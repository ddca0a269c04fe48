"""Records of the prototype stage: a known Li-containing structure used as a substitution template."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pymatgen.core import Structure


@dataclass(frozen=True)
class Prototype:
    """An ordered crystal structure used as a template for elemental substitution.

    Attributes:
        id: stable identifier, unique within a prototype set (``"mp-1234"``,
            ``"obelix:jqc"``, ``"pymatgen:LiFePO4"``, or a file stem for local folders).
        source: where it came from: ``"materials_project"``, ``"folder"`` or ``"bundled"``.
        structure: the ordered pymatgen structure (every site fully occupied by one element).
        species_amounts: element symbol -> number of atoms of that element in ``structure``'s
            cell (integers), in order of first appearance in the structure.
        provenance: where the structure comes from, as JSON-ready values (e.g. ``database``,
            ``material_id``, ``formation_energy_per_atom`` in eV/atom, ``band_gap`` in eV,
            ``licence``); empty when the source knows nothing beyond the file.
    """

    id: str
    source: str
    structure: Structure = field(repr=False, compare=False)
    species_amounts: dict[str, int] = field(compare=False)
    provenance: Mapping[str, str | float | int] = field(default_factory=dict, compare=False)

    @classmethod
    def from_structure(
        cls,
        id: str,
        source: str,
        structure: Structure,
        provenance: Mapping[str, str | float | int] | None = None,
    ) -> Prototype:
        """Build a prototype from an ordered structure (the caller checks orderedness)."""
        amounts: dict[str, int] = {}
        for site in structure:
            symbol = site.specie.symbol
            amounts[symbol] = amounts.get(symbol, 0) + 1
        return cls(id=id, source=source, structure=structure, species_amounts=amounts,
                   provenance=dict(provenance or {}))

    @property
    def n_elements(self) -> int:
        """Number of distinct elements (3 = ternary, 4 = quaternary)."""
        return len(self.species_amounts)


@dataclass(frozen=True)
class SkippedInput:
    """An input that was not loaded as a prototype, with the reason (reported, never fatal)."""

    name: str
    reason: str


@dataclass(frozen=True)
class PrototypeSet:
    """The prototypes loaded from one source, plus the inputs skipped with their reasons."""

    prototypes: tuple[Prototype, ...]
    skipped: tuple[SkippedInput, ...] = ()

    def copy(self) -> PrototypeSet:
        """The same set with fresh structure, amount and provenance copies (callers may edit them)."""
        return PrototypeSet(
            prototypes=tuple(
                Prototype(p.id, p.source, p.structure.copy(), dict(p.species_amounts), dict(p.provenance))
                for p in self.prototypes
            ),
            skipped=self.skipped,
        )


def check_ids_known(wanted: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise InvalidInput naming (up to ten of) the ``wanted`` ids that are not ``known``.

    Args:
        where: how the message names the set, e.g. ``"the source"``.
    """
    from htvs.errors import InvalidInput

    missing = sorted(set(wanted) - set(known))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InvalidInput(f"{len(missing)} prototype id(s) are not in {where}: {shown}")
