"""Parsing chemical formulas into pymatgen compositions, with errors that name the formula."""

from __future__ import annotations

import math

from pymatgen.core import Composition, Element

from htvs.errors import InvalidInput

#: Largest number of atoms per formula unit accepted from user input; anything above is a typo.
MAX_ATOMS_PER_FORMULA = 10_000


def parse_composition(formula: str) -> Composition:
    """Parse ``formula`` (e.g. ``"Li3PS4"``) into a :class:`~pymatgen.core.Composition`.

    Raises:
        InvalidInput: empty or unparsable formula, unknown element symbol, non-positive or
            non-finite amounts, or an absurd number of atoms.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise InvalidInput(f"empty formula: {formula!r}")
    text = formula.strip()
    try:
        comp = Composition(text)
    except Exception as exc:  # pymatgen raises ValueError, CompositionError, KeyError...
        raise InvalidInput(f"cannot parse formula {formula!r}: {exc}") from exc
    if len(comp) == 0 or comp.num_atoms <= 0:
        raise InvalidInput(f"formula {formula!r} has no atoms")
    for el, amount in comp.items():
        if not isinstance(el, Element):
            raise InvalidInput(f"formula {formula!r}: {el} is not a chemical element")
        if not math.isfinite(amount) or amount <= 0:
            raise InvalidInput(f"formula {formula!r}: amount of {el} must be positive, got {amount}")
    if comp.num_atoms > MAX_ATOMS_PER_FORMULA:
        raise InvalidInput(
            f"formula {formula!r} has {comp.num_atoms:g} atoms per formula unit "
            f"(limit {MAX_ATOMS_PER_FORMULA})"
        )
    return comp


def reduced_formula(formula: str) -> str:
    """The pymatgen reduced formula of ``formula`` (e.g. ``"Li6P2S8"`` -> ``"Li3PS4"``)."""
    return parse_composition(formula).reduced_formula
