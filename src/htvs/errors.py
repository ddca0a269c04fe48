"""The project's error hierarchy, and the one per-row error record of batch stages.

Every message names the offending value so that a person can act on it. The gRPC interceptor
maps these classes to status codes (``InvalidInput`` -> ``INVALID_ARGUMENT`` and so on).

A batch stage does not raise for one bad row: it returns a :class:`RowError` in that row's place
and computes the others. Every stage uses this one record, which has the fields of the gRPC
``htvs.v1.RowError`` message.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass


class HTVSError(Exception):
    """Base class of every error raised on purpose by htvs."""


class InvalidInput(HTVSError, ValueError):
    """The caller passed a value the stage cannot accept (bad formula, file, threshold...)."""


class DataNotFound(HTVSError, LookupError):
    """A requested reference datum (element, chemical system, file) is not available."""


class ModelNotReady(HTVSError):
    """A model or other heavy resource is missing or could not be loaded."""


class StageFailed(HTVSError):
    """A stage failed for a reason that is not the caller's input."""


#: :attr:`RowError.kind` of a structure that was not predicted because it holds no Li.
NO_LITHIUM = "NoLithium"


@dataclass(frozen=True)
class RowError:
    """A batch row that could not be computed; the other rows of the batch are unaffected.

    Attributes:
        index: position of the row in the stage's input (0-based).
        value: the offending input as given, or the row's id (a formula, a structure id...).
        message: what is wrong, naming the offending value.
        kind: class of the error, e.g. ``"InvalidInput"``, or a label such as
            :data:`NO_LITHIUM`; empty when the stage does not report one.
    """

    index: int
    value: str
    message: str
    kind: str = ""

    @classmethod
    def of(cls, index: int, value: object, exc: BaseException) -> RowError:
        """The record of row ``index`` that raised ``exc`` (``kind`` is the exception's class name)."""
        return cls(index=index, value=str(value), message=str(exc), kind=type(exc).__name__)


def finite_number(name: str, value: object) -> float:
    """``value`` as a finite float, or InvalidInput naming ``name`` and the value (bools refused)."""
    import math

    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be a number, got {shown(value)}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{name} must be a number, got {shown(value)}") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be finite, got {shown(value)}")
    return number


#: Longest text of an offending value in a message, characters.
MAX_SHOWN_CHARS = 80


@functools.cache
def _bounded_repr():
    """``reprlib`` with small limits, and huge integers described instead of converted to text
    (Python refuses ``str`` of an int above 4300 digits)."""
    import math
    import reprlib

    class BoundedRepr(reprlib.Repr):
        def __init__(self) -> None:
            super().__init__()
            self.maxlevel = 3
            self.maxstring = self.maxother = MAX_SHOWN_CHARS
            self.maxlong = 40
            self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = 6
            self.maxdict = 4

        def repr_int(self, x: int, level: int) -> str:
            if x.bit_length() > 128:
                return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
            return super().repr_int(x, level)

    return BoundedRepr()


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters: the one way a caller's value
    is echoed, so that no message grows with the input (a gRPC status message must fit in the
    metadata). Never raises: nested containers are shown to three levels and six items, huge
    integers by their size, a failing ``__repr__`` by the type; a long string is cut and its
    length given, e.g. ``'xxxxxxx...' (5000 characters)``.
    """
    try:
        text = _bounded_repr().repr(value)
    except Exception:  # noqa: BLE001 - a __repr__ that fails; the type still names the value
        text = f"<{type(value).__name__}>"
    size = f" ({len(value)} characters)" if isinstance(value, str) and len(repr(value)) > limit else ""
    if len(text) + len(size) > limit:
        text = text[: max(limit - 3 - len(size), 1)] + "..."
    return text + size
