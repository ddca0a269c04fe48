"""Parsing chemical formulas into pymatgen compositions, with errors that name the formula."""

from __future__ import annotations

import math
import re

from pymatgen.core import Composition, Element

from htvs.errors import InvalidInput, shown

#: Largest number of atoms per formula unit accepted from user input; anything above is a typo.
MAX_ATOMS_PER_FORMULA = 10_000
#: Longest formula text accepted (characters); real formulas are tens of characters long.
MAX_FORMULA_CHARS = 256

_SYMBOL_TOKEN = re.compile(r"[A-Z][a-z]*")


def parse_composition(formula: str) -> Composition:
    """Parse ``formula`` (e.g. ``"Li3PS4"``) into a :class:`~pymatgen.core.Composition`.

    Raises:
        InvalidInput: empty, overlong (more than :data:`MAX_FORMULA_CHARS` characters) or
            unparsable formula, unknown element symbol, zero, non-positive or non-finite amounts,
            or an absurd number of atoms (more than :data:`MAX_ATOMS_PER_FORMULA`). The message
            names the formula (cut by :func:`htvs.errors.shown`).
    """
    if not isinstance(formula, str) or not formula.strip():
        raise InvalidInput(f"empty formula: {shown(formula)}")
    text = formula.strip()
    if len(text) > MAX_FORMULA_CHARS:
        raise InvalidInput(
            f"formula {shown(formula)} is {len(text):,} characters long (limit {MAX_FORMULA_CHARS})"
        )
    try:
        comp = Composition(text)
    except Exception as exc:  # pymatgen raises ValueError, CompositionError, KeyError...
        raise InvalidInput(f"cannot parse formula {shown(formula)}: {shown(str(exc), 200)}") from exc
    if len(comp) == 0 or comp.num_atoms <= 0:
        raise InvalidInput(f"formula {shown(formula)} has no atoms")
    for el, amount in comp.items():
        if not isinstance(el, Element):
            raise InvalidInput(f"formula {shown(formula)}: {el} is not a chemical element")
        if not math.isfinite(amount) or amount <= 0:
            raise InvalidInput(f"formula {shown(formula)}: amount of {el} must be positive and finite, got {amount}")
    # pymatgen drops an element whose amount is 0 (or below its tolerance): "Li0S" would be "S"
    dropped = sorted(set(_SYMBOL_TOKEN.findall(text)) - {el.symbol for el in comp})
    if dropped:
        raise InvalidInput(
            f"formula {shown(formula)}: amount of {', '.join(dropped)} must be positive, got 0 "
            f"(or below {Composition.amount_tolerance})"
        )
    if comp.num_atoms > MAX_ATOMS_PER_FORMULA:
        raise InvalidInput(
            f"formula {shown(formula)} has {comp.num_atoms:g} atoms per formula unit "
            f"(limit {MAX_ATOMS_PER_FORMULA})"
        )
    return comp


def reduced_formula(formula: str) -> str:
    """The pymatgen reduced formula of ``formula`` (e.g. ``"Li6P2S8"`` -> ``"Li3PS4"``)."""
    return parse_composition(formula).reduced_formula
