"""Prototypes: known ordered Li-containing structures used as substitution templates.

``load_prototypes("mp-2018" | "obelix" | "mp" | <folder>)`` returns a :class:`PrototypeSet`; the sources
behind it share the :class:`PrototypeSource` interface and the :class:`PrototypeFilter`.
Nothing is read at import (the Materials Project client and key only when that source loads).
"""

from __future__ import annotations

from htvs.prototypes.collect import ORDERED_SUFFIX
from htvs.prototypes.filters import PrototypeFilter
from htvs.prototypes.materials_project import MaterialsProjectSource, prototypes_from_summary_docs
from htvs.prototypes.mp_snapshot import MP_2018_SOURCE, MPSnapshotSource
from htvs.prototypes.ordering import OrderingBudget, order_structure
from htvs.prototypes.records import Prototype, PrototypeSet, SkippedInput
from htvs.prototypes.sources import (
    BundledSource,
    FolderSource,
    SOURCE_NAMES,
    PrototypeSource,
    SelectedIds,
    load_prototypes,
    source_from_spec,
)

__all__ = [
    "ORDERED_SUFFIX",
    "BundledSource",
    "FolderSource",
    "MP_2018_SOURCE",
    "MPSnapshotSource",
    "MaterialsProjectSource",
    "OrderingBudget",
    "Prototype",
    "PrototypeFilter",
    "PrototypeSet",
    "PrototypeSource",
    "SOURCE_NAMES",
    "SelectedIds",
    "SkippedInput",
    "load_prototypes",
    "order_structure",
    "prototypes_from_summary_docs",
    "source_from_spec",
]
