"""The artifact-store interface shared by the local-directory and S3 backends.

A store holds immutable-looking *objects* under *keys*: relative, ``/``-separated strings such as
``stages/substitute/0123456789abcdef/formulas.parquet``. Every write is atomic: a reader sees
either the previous object or the complete new one, never a torn one, and a writer that fails
leaves nothing behind (see the backends for how). Backends implement ``open_write`` and the
read/list/delete primitives; bytes, files, JSON and Arrow tables are built on top of them.
"""

from __future__ import annotations

import abc
import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from htvs.atomic import TEMP_PREFIX  # in-flight temporary files: keys may not use it, listings skip it
from htvs.errors import DataNotFound, InvalidInput, StageFailed

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TEMP_PREFIX", "ArtifactStore", "validate_key", "validate_prefix"]

#: Parquet compression codec of ``put_table``.
PARQUET_COMPRESSION = "zstd"


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "has an empty segment (a leading, trailing or doubled '/')"
    if segment in (".", ".."):
        return f"has a {segment!r} segment"
    if segment.startswith(TEMP_PREFIX):
        return f"uses the reserved prefix {TEMP_PREFIX!r}"
    return None


def _text_problem(text: str) -> str | None:
    if "\\" in text:
        return "contains a backslash (use '/')"
    if text.startswith("/"):
        return "starts with '/' (keys are relative)"
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        return "contains a control character"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key.

    Raises:
        InvalidInput: the key is not a string, is empty, or has a backslash, a leading ``/``,
            an empty, ``.`` or ``..`` segment, a control character or the temp-file prefix.
    """
    if not isinstance(key, str):
        raise InvalidInput(f"store key must be a str, got {type(key).__qualname__} {key!r}")
    if key == "":
        raise InvalidInput("store key must not be empty")
    problem = _text_problem(key)
    if problem is None:
        problem = next(filter(None, map(_segment_problem, key.split("/"))), None)
    if problem is not None:
        raise InvalidInput(f"invalid store key {key!r}: it {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix (``""`` lists everything).

    A prefix is matched as a plain string, as S3 does: ``"stages/sub"`` matches
    ``"stages/substitute/x"``. Its complete segments follow the key rules.

    Raises:
        InvalidInput: the prefix breaks the key rules.
    """
    if not isinstance(prefix, str):
        raise InvalidInput(f"store prefix must be a str, got {type(prefix).__qualname__}")
    problem = _text_problem(prefix)
    if problem is None:
        complete = prefix.split("/")[:-1]
        problem = next(filter(None, map(_segment_problem, complete)), None)
    if problem is not None:
        raise InvalidInput(f"invalid store prefix {prefix!r}: it {problem}")
    return prefix


class ArtifactStore(abc.ABC):
    """Objects under ``/``-separated keys, with atomic writes; see the module docstring.

    Missing keys raise ``DataNotFound`` naming the key and the store; malformed keys raise
    ``InvalidInput`` naming the key.
    """

    # ----------------------------------------------------------------- backend primitives

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where the store lives, e.g. ``file:///abs/root`` or ``s3://bucket/prefix``."""

    @abc.abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A binary file to write one object; it becomes visible only when the block exits.

        If the block raises, the object is not created (an existing one is left unchanged).
        """

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of the object at ``key``."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key`` (a mere prefix is not an object)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of all objects whose key starts with ``prefix`` (string match)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key``; deleting a missing object is not an error."""

    @abc.abstractmethod
    @abc.abstractmethod
    def below(self, prefix: str) -> ArtifactStore:
        """The store of the keys under ``prefix`` (a valid key) of this one, same credentials."""

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Copy the object at ``key`` to the local ``path`` (atomically); return the path."""

    # ----------------------------------------------------------------- built on top

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``key``, replacing any object there."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"put_bytes({key!r}) takes bytes, got {type(data).__qualname__}")
        with self.open_write(key) as f:
            f.write(data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Store the content of the local file ``path`` at ``key``."""
        validate_key(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise InvalidInput(f"put_file({key!r}): no readable file at {str(path)!r}") from e
        with src, self.open_write(key) as f:
            _copy(src, f)

    def put_json(self, key: str, obj: Any) -> None:
        """Store ``obj`` as UTF-8 JSON (sorted keys, indented; NaN and Infinity refused)."""
        try:
            text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"put_json({key!r}): value is not JSON-serializable: {e}") from e
        self.put_bytes(key, text.encode("utf-8") + b"\n")

    def get_json(self, key: str) -> Any:
        """The JSON value stored at ``key``."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StageFailed(f"object {key!r} in {self.url} is not valid JSON") from e

    def put_table(self, key: str, table: pa.Table) -> None:
        """Store an Arrow table at ``key`` as Parquet (zstd-compressed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not isinstance(table, pa.Table):
            raise InvalidInput(
                f"put_table({key!r}) takes a pyarrow.Table, got {type(table).__qualname__}"
            )
        with self.open_write(key) as f:
            pq.write_table(table, f, compression=PARQUET_COMPRESSION)

    def get_table(self, key: str) -> pa.Table:
        """The Arrow table stored (as Parquet) at ``key``."""
        import pyarrow as pa

        return _read_parquet(pa.BufferReader(self.get_bytes(key)), key, self.url)

    # ----------------------------------------------------------------- helpers

    def _missing(self, key: str) -> DataNotFound:
        return DataNotFound(f"no object {key!r} in store {self.url}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _read_parquet(source: Any, key: str, url: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataNotFound(f"no object {key!r} in store {url}") from e
        raise StageFailed(f"object {key!r} in {url} is not a readable Parquet table") from e


_CHUNK = 1 << 20


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
