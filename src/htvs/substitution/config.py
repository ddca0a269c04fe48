"""Configuration of the substitution stage (stage 1 of the funnel)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pymatgen.core import Element

from htvs.errors import InvalidInput

#: The 28 elements of the seed paper (market-competitive, no transition metals besides Zn/Cd/Hg).
PAPER_ELEMENT_POOL: tuple[str, ...] = (
    "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ca",
    "Zn", "Ga", "Ge", "As", "Se", "Sr", "Cd", "In", "Sn", "Te", "I", "Ba", "Hg", "Pb",
)  # fmt: skip

#: Largest pool the packed formula keys support (6 bits per element index).
MAX_POOL_SIZE = 64


class SubstitutionRule(str, Enum):
    """How the non-kept species of a prototype are replaced.

    ``ONE_REQUIRED`` (the paper's rule): exactly one non-kept species becomes the required
    element; every other non-kept species takes a distinct element of the pool other than the
    kept and the required ones. A prototype with k non-kept species gives
    ``k * P(n - 2, k - 1)`` substitutions for a pool of n elements (52 for a ternary, 1,950 for
    a quaternary with the 28-element pool).

    ``ALL_DISTINCT``: every non-kept species takes a distinct pool element other than the kept
    one, no element required: ``P(n - 1, k)`` substitutions.
    """

    ONE_REQUIRED = "one_required"
    ALL_DISTINCT = "all_distinct"


@dataclass(frozen=True)
class SubstitutionConfig:
    """Settings of the substitution stage.

    Attributes:
        element_pool: symbols the substituted species may take (must include ``kept_element``
            and, for ``ONE_REQUIRED``, ``required_element``).
        kept_element: sites of this element keep it (Li).
        required_element: the element exactly one non-kept species becomes (S); ignored by
            ``ALL_DISTINCT``.
        rule: see :class:`SubstitutionRule`.
    """

    element_pool: tuple[str, ...] = PAPER_ELEMENT_POOL
    kept_element: str = "Li"
    required_element: str | None = "S"
    rule: SubstitutionRule = SubstitutionRule.ONE_REQUIRED

    def __post_init__(self) -> None:
        object.__setattr__(self, "element_pool", tuple(self.element_pool))
        object.__setattr__(self, "rule", SubstitutionRule(self.rule))
        for symbol in self.element_pool:
            if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol):
                raise InvalidInput(f"element_pool: {symbol!r} is not an element symbol")
        duplicates = sorted({s for s in self.element_pool if self.element_pool.count(s) > 1})
        if duplicates:
            raise InvalidInput(f"element_pool lists {duplicates} more than once")
        if len(self.element_pool) > MAX_POOL_SIZE:
            raise InvalidInput(
                f"element_pool has {len(self.element_pool)} elements (at most {MAX_POOL_SIZE})"
            )
        if self.kept_element not in self.element_pool:
            raise InvalidInput(f"kept_element {self.kept_element!r} is not in element_pool")
        if self.rule is SubstitutionRule.ONE_REQUIRED:
            if self.required_element is None:
                raise InvalidInput("rule 'one_required' needs a required_element")
            if self.required_element not in self.element_pool:
                raise InvalidInput(f"required_element {self.required_element!r} is not in element_pool")
            if self.required_element == self.kept_element:
                raise InvalidInput("required_element must differ from kept_element")

    @property
    def free_elements(self) -> tuple[str, ...]:
        """Pool elements the non-required species may take, in pool order."""
        excluded = {self.kept_element}
        if self.rule is SubstitutionRule.ONE_REQUIRED:
            excluded.add(self.required_element or "")
        return tuple(s for s in self.element_pool if s not in excluded)
