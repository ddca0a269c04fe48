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
#: One token of a formula as a person writes it: a symbol-like word, a lowercase run, a number,
#: a bracket, a separator, or any other single character.
_TOKEN = re.compile(r"(?P<symbol>[A-Z][a-z]*)|(?P<lower>[a-z]+)|(?P<number>\d*\.?\d+)|(?P<open>[(\[])"
                    r"|(?P<close>[)\]])|(?P<space>[\s.·*])|(?P<other>.)")


def _is_element(symbol: str) -> bool:
    return Element.is_valid_symbol(symbol)


def _capitalized(word: str) -> str | None:
    """``word`` (lowercase letters, digits) split greedily into element symbols, or None."""
    out, i = "", 0
    while i < len(word):
        if word[i].isdigit() or word[i] == ".":
            out += word[i]
            i += 1
            continue
        two, one = word[i : i + 2].capitalize(), word[i].upper()
        if len(two) == 2 and two.isalpha() and _is_element(two):
            out, i = out + two, i + 2
        elif _is_element(one):
            out, i = out + one, i + 1
        else:
            return None
    return out


def _close_symbols(word: str) -> list[str]:
    """Element symbols a mistyped ``word`` may have meant (case-insensitive near matches)."""
    import difflib

    symbols = [el.symbol for el in Element]
    by_lower = {sym.lower(): sym for sym in symbols}
    near = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)
    return [by_lower[name] for name in near]


def explain_formula(text: str) -> str:
    """What is wrong with a formula that does not parse, in the writer's terms (no library text).

    Names the first offending part: an unknown element symbol (with near symbols), a lowercase
    word (with the capitalized reading when there is one), an unexpected character, or an
    unbalanced bracket.
    """
    if text.islower() or (text.replace(".", "").isalnum() and not any(c.isupper() for c in text)):
        reading = _capitalized(text)
        hint = f"; did you mean {reading!r}?" if reading else ""
        return f"element symbols start with a capital letter{hint}"
    depth = 0
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group()
        if kind == "symbol" and not _is_element(value):
            near = _close_symbols(value)
            hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
            return f"{value!r} is not an element symbol{hint}"
        if kind == "lower":
            return f"unexpected lowercase {value!r} at position {match.start() + 1}"
        if kind == "other":
            return f"unexpected character {value!r} at position {match.start() + 1}"
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth < 0:
                return f"unmatched {value!r} at position {match.start() + 1}"
    if depth > 0:
        return "a bracket is opened and not closed"
    return "it is not a formula of element symbols and amounts (e.g. Li3PS4)"


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
        raise InvalidInput(f"cannot read formula {shown(formula)}: {explain_formula(text)}") from exc
    if len(comp) == 0 or comp.num_atoms <= 0:
        raise InvalidInput(f"formula {shown(formula)} has no atoms")
    for el, amount in comp.items():
        if not isinstance(el, Element):  # pymatgen reads an unknown symbol as a dummy species
            raise InvalidInput(f"cannot read formula {shown(formula)}: {explain_formula(text)}")
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
