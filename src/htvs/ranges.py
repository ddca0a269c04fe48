"""Allowed ranges of numeric settings, checked one way everywhere.

A setting outside its :class:`Range` raises :class:`~htvs.errors.InvalidInput` naming the
setting, the offending value (shown at a bounded length by :func:`shown`) and the allowed range
with its unit, e.g. ``production time must be <= 100000 ps, got 1e+306 (allowed: (0, 100000]
ps)``. This module imports nothing heavy, so light modules (the screening thresholds, the
campaign config) can use it at start-up.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from htvs.errors import InvalidInput, shown

@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric setting: ``low`` to ``high`` (inclusive) in ``unit``.

    Attributes:
        low: smallest allowed value (excluded when ``low_open``).
        high: largest allowed value (included).
        unit: the unit, as written after a number ("ps", "K", "eV/Å"; "" for counts).
        low_open: ``low`` itself is not allowed (the range is ``(low, high]``).
        integer: only whole numbers are allowed (a float such as ``3.0`` is taken as 3).
    """

    low: float
    high: float
    unit: str = ""
    low_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        bracket = "(" if self.low_open else "["
        return f"{bracket}{self._text(self.low)}, {self._text(self.high)}]{self._unit}"

    @property
    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""

    @staticmethod
    def _text(bound: float) -> str:
        """A bound as written in messages: whole numbers in full (4294967295, 100000), others
        in ``g`` format."""
        return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e16 else f"{bound:g}"

    def check(self, name: str, value: object, *, as_given: object = None) -> float | int:
        """``value`` as a float (an int when ``integer``) within the range.

        Args:
            name: the setting, as the caller knows it ("production time", "validation.seed").
            value: the value to check: an int or a float (bools, strings and other types are
                refused).
            as_given: what the message shows instead of ``value`` (e.g. the text of a
                command-line item); None shows ``value``.

        Raises:
            InvalidInput: not a number, not finite, not whole (``integer``) or out of range; the
                message names ``name``, the value and the range.
        """

        def refuse(requirement: str) -> InvalidInput:
            got = shown(value if as_given is None else as_given)
            return InvalidInput(f"{name} must be {requirement}, got {got} (allowed: {self})")

        kind = "an integer" if self.integer else "a finite number"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise refuse(kind)
        number: float | int
        if isinstance(value, numbers.Integral):
            number = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise refuse(kind)
            if self.integer:
                if not number.is_integer():
                    raise refuse(kind)
                number = int(number)
        if number < self.low or (self.low_open and number == self.low):
            raise refuse(f"{'>' if self.low_open else '>='} {self._text(self.low)}{self._unit}")
        if number > self.high:
            raise refuse(f"<= {self._text(self.high)}{self._unit}")
        return int(number) if self.integer else float(number)
