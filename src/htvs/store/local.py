"""The local-directory artifact store (the embedded default).

Each object is a file ``<root>/<key>``. Writes are atomic: the bytes go to a temporary file in the
object's own directory (``.htvs-tmp-*``, hidden from listings), which is flushed and fsynced and
then renamed over the target with ``os.replace``, an atomic rename on POSIX and Windows; the
directory is fsynced afterwards so the rename survives a power cut. A failed writer removes its
temporary file. A process killed outright can leave a ``.htvs-tmp-*`` file behind; it is never
visible as an object.

Limitation of a file system (S3 has none): a key cannot be both an object and a "directory", so
``a`` and ``a/b`` cannot coexist; such a write raises ``InvalidInput``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from htvs.atomic import atomic_file
from htvs.errors import DataNotFound, InvalidInput
from htvs.store.base import (
    TEMP_PREFIX,
    ArtifactStore,
    _copy,
    _read_parquet,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LocalStore", "atomic_file"]

class LocalStore(ArtifactStore):
    """Artifact store in a local directory.

    Args:
        root: Directory holding the objects; created (with parents) when ``create`` is true.
        create: Create ``root`` if it is missing; otherwise a missing root is ``DataNotFound``.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        path = Path(root).expanduser()
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise InvalidInput(f"store root {str(path)!r} exists and is not a directory") from e
        elif not path.is_dir():
            raise DataNotFound(f"store root {str(path)!r} is not an existing directory")
        self.root = path.resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def below(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    # ------------------------------------------------------------------------- writes

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise InvalidInput(
                f"cannot write {key!r} in {self.url}: a parent of it is already an object"
            ) from e
        if path.is_dir():
            raise InvalidInput(
                f"cannot write {key!r} in {self.url}: other objects are stored under {key + '/'!r}"
            )
        with atomic_file(path) as f:
            yield f

    # ------------------------------------------------------------------------- reads

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise self._missing(key) from e

    def get_table(self, key: str) -> pa.Table:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        return _read_parquet(str(path), key, self.url)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        src = self._path(key)
        dest = Path(path)
        try:
            f_in = open(src, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise self._missing(key) from e
        dest.parent.mkdir(parents=True, exist_ok=True)
        with f_in, atomic_file(dest) as f_out:
            _copy(f_in, f_out)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            # descend only into directories that can hold matching keys
            dirnames[:] = [
                d
                for d in dirnames
                if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")
            ]
            keys.extend(
                rel + name
                for name in filenames
                if not name.startswith(TEMP_PREFIX) and (rel + name).startswith(prefix)
            )
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
