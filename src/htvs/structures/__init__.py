"""Stage 4 of the funnel: materialize the substituted structures of surviving formulas, dedupe.

``select_for_survivors`` narrows stage 1's substitution table to the formulas that passed
composition screening, ``materialize`` builds their structures from the prototypes, and
``deduplicate`` removes duplicates with pymatgen's ``StructureMatcher``.
"""

from __future__ import annotations

from htvs.structures.dedupe import (
    DedupeConfig,
    DedupeItem,
    DedupeResult,
    deduplicate,
    deduplicate_all_pairs,
)
from htvs.structures.materialize import (
    MaterializeConfig,
    VolumeRescaling,
    materialize,
    select_for_survivors,
    split_results,
)
from htvs.structures.records import (
    MaterializedStructure,
    substitution_id,
)

__all__ = [
    "DedupeConfig",
    "DedupeItem",
    "DedupeResult",
    "MaterializeConfig",
    "MaterializedStructure",
    "VolumeRescaling",
    "deduplicate",
    "deduplicate_all_pairs",
    "materialize",
    "select_for_survivors",
    "split_results",
    "substitution_id",
]
