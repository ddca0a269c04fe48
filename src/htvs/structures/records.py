"""Records of the structure stage (stage 4): materialized substituted structures and errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

#: Separates the prototype id from the substitution in a structure id.
ID_SEPARATOR = "|"


def substitution_id(prototype_id: str, substitution: tuple[tuple[str, str], ...]) -> str:
    """``"<prototype_id>|<from>:<to>,..."``, pairs in the prototype's species order."""
    return prototype_id + ID_SEPARATOR + ",".join(f"{a}:{b}" for a, b in substitution)


@dataclass(frozen=True)
class MaterializedStructure:
    """An unrelaxed substituted structure: a prototype with its species replaced.

    Attributes:
        id: ``"<prototype_id>|<from>:<to>,..."`` (see :func:`substitution_id`).
        formula: pymatgen reduced formula of ``structure``.
        prototype_id: the prototype it was made from.
        substitution: ``(from, to)`` element pairs, in the prototype's species order.
        volume_scale: substituted cell volume over the prototype's (1.0 without rescaling).
        structure: the ordered structure (the prototype's fractional coordinates).
    """

    id: str
    formula: str
    prototype_id: str
    substitution: tuple[tuple[str, str], ...]
    volume_scale: float
    structure: Structure = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``structure`` is pymatgen's ``Structure.as_dict()``."""
        return {
            "id": self.id,
            "formula": self.formula,
            "prototype_id": self.prototype_id,
            "substitution": [list(pair) for pair in self.substitution],
            "volume_scale": self.volume_scale,
            "structure": self.structure.as_dict(),
        }

    def to_json(self) -> str:
        """The record as one JSON document (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaterializedStructure:
        return cls(
            id=str(data["id"]),
            formula=str(data["formula"]),
            prototype_id=str(data["prototype_id"]),
            substitution=tuple((str(a), str(b)) for a, b in data["substitution"]),
            volume_scale=float(data["volume_scale"]),
            structure=Structure.from_dict(data["structure"]),
        )

    @classmethod
    def from_json(cls, text: str) -> MaterializedStructure:
        return cls.from_dict(json.loads(text))

    def to_cif(self) -> str:
        """CIF text of the structure (symmetry P1, every site written out)."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.structure))


@dataclass(frozen=True)
class MaterializeError:
    """A substitution row that could not be materialized; the other rows are unaffected.

    Attributes:
        index: position of the row in the input table.
        id: the structure id the row would have had (as far as it could be built).
        prototype_id: the row's prototype id, as given.
        error: a message naming the offending value.
        kind: the exception class, e.g. ``"InvalidInput"``.
    """

    index: int
    id: str
    prototype_id: str
    error: str
    kind: str


@dataclass(frozen=True)
class RefusedStructure:
    """A structure :func:`~htvs.structures.dedupe.deduplicate` did not compare, with the reason.

    Attributes:
        index: position in the input sequence.
        id: the structure's id.
        error: why it was refused (names the offending value).
    """

    index: int
    id: str
    error: str
