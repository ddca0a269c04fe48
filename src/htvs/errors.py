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
