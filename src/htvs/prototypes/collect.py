"""Admitting structures through the filter: the bookkeeping every prototype source shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pymatgen.core import Structure

from htvs.errors import InvalidInput
from htvs.prototypes.filters import (
    PrototypeFilter,
    disorder_reason,
    element_structure,
    element_symbols,
    finalize,
)
from htvs.prototypes.ordering import OrderingBudget, order_structure
from htvs.prototypes.records import Prototype, PrototypeSet, SkippedInput

#: Suffix of the id of an ordered approximant of a disordered input.
ORDERED_SUFFIX = ":ordered"


@dataclass
class Collector:
    """Prototypes and skipped inputs gathered by one load, admitted through the filter.

    Attributes:
        source: the ``Prototype.source`` of what it admits.
        prototype_filter: the filter.
        ordering_budget: None: disordered structures are skipped; else an ordered
            approximant is tried within this budget.
    """

    source: str
    prototype_filter: PrototypeFilter
    ordering_budget: OrderingBudget | None
    prototypes: list[Prototype] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(SkippedInput(name=name, reason=reason))

    def admit(
        self,
        prototype_id: str,
        name: str,
        structure: Structure,
        provenance: Mapping[str, str | float | int] | None = None,
    ) -> None:
        """Add ``structure`` as prototype ``prototype_id`` if the filter passes it.

        Args:
            prototype_id: the id it gets.
            name: how a skipped input is reported (file name or id).
            structure: as read; oxidation states are removed.
            provenance: recorded on the prototype (see :class:`Prototype`).
        """
        try:
            structure = element_structure(structure)
        except InvalidInput as e:
            self.skip(name, str(e))
            return
        flt = self.prototype_filter
        reason = flt.composition_reason(element_symbols(structure))
        if reason is None and not structure.is_ordered:
            reason = disorder_reason(structure)
            if self.ordering_budget is not None:
                reason = self._admit_approximant(prototype_id, structure, reason)
        if reason is None:
            reason = flt.size_reason(len(structure))
        if reason is not None:
            self.skip(name, reason)
            return
        self.prototypes.append(Prototype.from_structure(prototype_id, self.source, structure, provenance))

    def _admit_approximant(self, prototype_id: str, structure: Structure, disorder: str) -> str:
        """Try an ordered approximant; return the reason the disordered input is skipped."""
        assert self.ordering_budget is not None
        try:
            ordered = order_structure(structure, self.ordering_budget)
        except InvalidInput as e:
            return f"{disorder}; no ordered approximant: {e}"
        approximant_id = prototype_id + ORDERED_SUFFIX
        size = self.prototype_filter.size_reason(len(ordered))
        if size is not None:
            return f"{disorder}; ordered approximant rejected: {size}"
        self.prototypes.append(Prototype.from_structure(approximant_id, self.source, ordered))
        return f"{disorder}; ordered approximant loaded as {approximant_id}"

    def result(self) -> PrototypeSet:
        return finalize(self.prototypes, self.skipped)
