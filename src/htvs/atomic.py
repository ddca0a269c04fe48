"""Atomic file writes: the one mechanism every writer of a local file uses (the local artifact
store included).

A file is written to a temporary file in its own folder (``.htvs-tmp-*``), flushed to disk, then
renamed over the target (``os.replace``: atomic on POSIX and Windows), and the folder is synced so
that the rename survives a power cut. A reader never sees a partial file; a writer that fails
removes its temporary file and leaves the old file (or none) behind. A process killed outright
can leave a ``.htvs-tmp-*`` file, never a partial target.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: Name prefix of temporary files (the artifact store reserves it: no key may use it).
TEMP_PREFIX = ".htvs-tmp-"
#: Mode of written files.
FILE_MODE = 0o644


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; best effort (some platforms cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. file systems without directory fsync; the rename itself already happened
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends.

    The temporary name keeps the suffix (``.npz``, ``.parquet``: some writers append or check
    it). The parent folder must exist. If the block raises, the temporary file is removed and
    ``path`` is untouched.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Like :func:`atomic_path`, for writers that take an open binary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1))
