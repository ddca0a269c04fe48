"""Records of the structure stage (stage 4): materialized substituted structures (per-row errors
are :class:`htvs.errors.RowError`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

from htvs.prototypes.readers import structure_from_json

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
            structure=structure_from_json(data["structure"]),
        )

    @classmethod
    def from_json(cls, text: str) -> MaterializedStructure:
        return cls.from_dict(json.loads(text))

    def to_cif(self) -> str:
        """CIF text of the structure (symmetry P1, every site written out)."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.structure))
