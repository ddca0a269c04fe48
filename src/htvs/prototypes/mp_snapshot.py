"""The bundled Materials Project prototypes: the Li subset of the 2018 MP structure snapshot.

The snapshot is the one CGCNN (Xie & Grossman, PRL 120, 145301 (2018)) trained on: 36,737
ordered MP structures with formation energies and PBE band gaps (MP data CC BY 4.0; attribute
the Materials Project and CGCNN). Its 5,255 Li-containing structures ship in
``htvs/data/mp_structures/mp_li_structures.jsonl.gz``. With the default
:class:`~htvs.prototypes.filters.PrototypeFilter` (Li + 3 or 4 elements, at most 200 atoms in
the cell) 4,320 of them become prototypes — 1,804 ternary and 2,516 quaternary, the seed
paper's prototype kinds (it had 16,205 from the full, current MP).

Selection happens on the record's ``formula_sum`` before any CIF is parsed, so a subset
(``ids``) or a restrictive filter loads in well under a second per hundred prototypes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from htvs.errors import InvalidInput
from htvs.prototypes.collect import Collector
from htvs.prototypes.filters import PrototypeFilter
from htvs.prototypes.readers import parse_cif
from htvs.prototypes.records import PrototypeSet, check_ids_known

#: ``Prototype.source`` and the source name of this set.
MP_2018_SOURCE = "mp-2018"
#: Provenance fields every prototype of this source carries (besides its energies).
MP_2018_PROVENANCE = {
    "database": "Materials Project",
    "snapshot": "2018 structure set of CGCNN (Xie & Grossman 2018)",
    "licence": "CC BY 4.0",
}


@dataclass(frozen=True)
class MPSnapshotSource:
    """Li-containing structures of the 2018 MP snapshot bundled with htvs; needs no network.

    A prototype's id is its MP id (``"mp-1001079"``); ``provenance`` holds the database,
    snapshot, licence, ``material_id``, ``formation_energy_per_atom`` (eV/atom, MP 2018) and
    ``band_gap`` (eV, PBE).

    Attributes:
        prototype_filter: which structures become prototypes.
        ids: only these MP ids (in any order); None = every record. An id that is not in the
            snapshot is refused with its name; one that the filter rejects is reported in
            ``skipped`` like any other.
    """

    prototype_filter: PrototypeFilter = PrototypeFilter()
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.ids is not None:
            object.__setattr__(self, "ids", tuple(sorted(set(self.ids))))

    def load(self, progress: Callable[[int, int], None] | None = None) -> PrototypeSet:
        """The prototypes (fresh copies; the parsed set is cached per process and settings).

        Args:
            progress: called with (records done, records) while CIFs are parsed (~7 ms each).
        """
        key = (self.prototype_filter, self.ids)
        if key not in _LOADED:
            if len(_LOADED) >= 4:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = _load_snapshot(self.prototype_filter, self.ids, progress)
        return _LOADED[key].copy()


def select_records(records: Iterable, ids: tuple[str, ...] | None) -> list:
    """The records whose ``material_id`` is in ``ids`` (all when None), in file order.

    Raises:
        InvalidInput: some ids are not in the records (the message names up to ten of them).
    """
    records = list(records)
    if ids is None:
        return records
    wanted = set(ids)
    chosen = [r for r in records if r.material_id in wanted]
    check_ids_known(wanted, (r.material_id for r in chosen), f"the {MP_2018_SOURCE} set")
    return chosen


#: Parsed sets by (filter, ids), filled on first load (at most four kept).
_LOADED: dict[tuple, PrototypeSet] = {}


def _load_snapshot(
    prototype_filter: PrototypeFilter,
    ids: tuple[str, ...] | None,
    progress: Callable[[int, int], None] | None = None,
) -> PrototypeSet:
    from htvs.datasets import load_mp_li_structures

    collector = Collector(MP_2018_SOURCE, prototype_filter, ordering_budget=None)
    records = select_records(load_mp_li_structures(), ids)
    for done, record in enumerate(records):
        if progress is not None and done % 100 == 0:
            progress(done, len(records))
        counts = record.element_counts()  # reject by formula_sum before parsing the CIF
        reason = prototype_filter.composition_reason(counts)
        if reason is None:
            reason = prototype_filter.size_reason(sum(counts.values()))
        if reason is not None:
            collector.skip(record.material_id, reason)
            continue
        try:
            structure = parse_cif(record.cif)[0]
        except InvalidInput as e:
            collector.skip(record.material_id, str(e))
            continue
        provenance = {
            **MP_2018_PROVENANCE,
            "material_id": record.material_id,
            "formation_energy_per_atom": record.formation_energy_per_atom,
            "band_gap": record.band_gap,
        }
        collector.admit(record.material_id, record.material_id, structure, provenance)
    if progress is not None:
        progress(len(records), len(records))
    return collector.result()
