"""The project's error hierarchy.

Every message names the offending value so that a person can act on it. The gRPC interceptor
maps these classes to status codes (``InvalidInput`` -> ``INVALID_ARGUMENT`` and so on).
"""

from __future__ import annotations


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


def finite_number(name: str, value: object) -> float:
    """``value`` as a finite float, or InvalidInput naming ``name`` and the value (bools refused)."""
    import math

    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be finite, got {value!r}")
    return number
