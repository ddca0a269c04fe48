"""Content hashing of configurations and inputs, and the store layout of stage outputs.

``config_hash`` turns a configuration (a pydantic model, a dataclass, or plain containers) into a
canonical JSON text (sorted keys, no whitespace, UTF-8) and hashes it with SHA-256, so two equal
configurations hash equal in any process, on any machine, whatever their key order. Floats are
written with ``repr`` (the shortest text that round-trips), so ``0.1`` always hashes the same;
``1`` and ``1.0`` hash differently on purpose (they are different JSON values).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from htvs.errors import InvalidInput

__all__ = ["canonical_json", "config_hash", "content_hash", "stage_key"]

_STAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEX_RE = re.compile(r"^[0-9a-f]{16,}$")


def _to_plain(obj: Any, path: str) -> Any:
    """Convert ``obj`` to JSON-ready builtins, deterministically; ``path`` names it in errors."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return _to_plain(obj.value, path)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return {"__float__": repr(float(obj))}
        return float(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # numpy scalar, 0-d array
        return _to_plain(obj.item(), path)
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"__bytes_sha256__": content_hash(bytes(obj))}
    if isinstance(obj, decimal.Decimal):
        return {"__decimal__": str(obj)}
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _to_plain(getattr(obj, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(obj)
        }
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump) and not isinstance(obj, type):  # pydantic v2 model
        return _to_plain(model_dump(mode="json"), path)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            sk = _key_text(k, path)
            if sk in out:
                raise InvalidInput(f"cannot hash {path}: two keys both read as {sk!r}")
            out[sk] = _to_plain(v, f"{path}[{sk!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [_to_plain(v, f"{path}{{}}") for v in obj]
        return sorted(items, key=_dumps)
    raise InvalidInput(
        f"cannot hash {path}: values of type {type(obj).__qualname__} ({obj!r:.80}) have no "
        "canonical form; use builtins, dataclasses, pydantic models, paths or enums"
    )


def _key_text(key: Any, path: str) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, int, float, PurePath)) or key is None:
        return json.dumps(_to_plain(key, path))
    raise InvalidInput(f"cannot hash {path}: mapping key {key!r} of type {type(key).__qualname__}")


def _dumps(plain: Any) -> str:
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj`` (sorted keys, no whitespace) that ``config_hash`` hashes.

    Raises:
        InvalidInput: ``obj`` holds a value with no canonical form (an arbitrary object).
    """
    return _dumps(_to_plain(obj, "config"))


def config_hash(obj: Any) -> str:
    """SHA-256 (64 hex characters) of the canonical JSON of a configuration."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 (64 hex characters) of raw bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"content_hash takes bytes, got {type(data).__qualname__}")
    return hashlib.sha256(data).hexdigest()


def stage_key(stage: str, input_hash: str) -> str:
    """The store prefix of one run of a stage: ``stages/<stage>/<first 16 hex of input_hash>``.

    Raises:
        InvalidInput: ``stage`` is not a plain name or ``input_hash`` is not lowercase hex.
    """
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise InvalidInput(
            f"stage name {stage!r} must be letters, digits, '_', '.' or '-' (no '/')"
        )
    if not isinstance(input_hash, str) or not _HEX_RE.match(input_hash):
        raise InvalidInput(f"input hash {input_hash!r} must be >= 16 lowercase hex characters")
    return f"stages/{stage}/{input_hash[:16]}"
