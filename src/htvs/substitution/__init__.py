"""Stage 1 of the funnel: elemental substitution on Li-containing prototypes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from htvs.prototypes.records import Prototype
from htvs.substitution.config import PAPER_ELEMENT_POOL, SubstitutionConfig, SubstitutionRule
from htvs.substitution.enumerate import (
    SitePattern,
    SubstitutionResult,
    assignment_table,
    count_assignments,
    enumerate_substitutions,
)
from htvs.substitution.tables import write_substitution_tables

__all__ = [
    "PAPER_ELEMENT_POOL",
    "SitePattern",
    "SubstitutionConfig",
    "SubstitutionResult",
    "SubstitutionRule",
    "assignment_table",
    "count_assignments",
    "enumerate_substitutions",
    "substitute",
    "write_substitution_tables",
]


def substitute(
    prototypes: Sequence[Prototype],
    config: SubstitutionConfig,
    progress: Callable[[int], None] | None = None,
) -> SubstitutionResult:
    """The substitution stage: every substitution of ``prototypes`` under ``config``.

    Structures are not materialized; only site patterns are used.
    """
    patterns = [SitePattern(p.id, dict(p.species_amounts)) for p in prototypes]
    return enumerate_substitutions(patterns, config, progress=progress)
