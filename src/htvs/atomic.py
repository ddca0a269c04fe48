"""Atomic file writes: the one mechanism every writer of a local file uses (the local artifact
store included).

A file is written to a temporary file in its own folder (``.htvs-tmp-*``), flushed to disk, then
renamed over the target (``os.replace``: atomic on POSIX and Windows), and the folder is synced so
that the rename survives a power cut. A reader never sees a partial file; a writer that fails
removes its temporary file and leaves the old file (or none) behind. A process killed outright
can leave a ``.htvs-tmp-*`` file, never a partial target.
"""

from __future__ import annotations

import errno
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
#: OS errors that mean "this path cannot be written" (a wrong path, not a broken machine).
_PATH_ERRORS = {errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                errno.ENAMETOOLONG, errno.EINVAL}


def _unwritable(path: Path, exc: OSError) -> Exception:
    """``exc`` as InvalidInput naming ``path`` when it says the path is wrong; else unchanged."""
    from htvs.errors import InvalidInput

    if exc.errno not in _PATH_ERRORS:
        return exc
    if path.is_dir():
        return InvalidInput(f"cannot write {str(path)!r}: it is a folder; give a file path")
    return InvalidInput(f"cannot write {str(path)!r}: {exc.strerror or exc}")


def output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a file that can be written: its folder exists (created) and can be written
    to, and it is not itself a folder. Call it before the work whose result goes there.

    Raises:
        InvalidInput: naming the path and what is wrong with it.
    """
    from htvs.errors import InvalidInput

    target = Path(path)
    if target.is_dir():
        raise InvalidInput(f"cannot write {str(target)!r}: it is a folder; give a file path")
    output_folder(target.parent if str(target.parent) else ".")
    return target


def output_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder that exists (created with its parents) and can be written to.

    Raises:
        InvalidInput: it is a file, a parent is a file, or it cannot be created or written
            (the message names it).
    """
    from htvs.errors import InvalidInput

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"output folder {str(folder)!r} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInput(f"cannot write to the output folder {str(folder)!r}: {exc.strerror or exc}") from None
    return folder


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
    ``path`` is untouched. A path that cannot be written (a folder, a missing or read-only
    parent) raises InvalidInput naming it.
    """
    target = Path(path)
    if target.is_dir():
        from htvs.errors import InvalidInput

        raise InvalidInput(f"cannot write {str(target)!r}: it is a folder; give a file path")
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=target.suffix, dir=target.parent)
    except OSError as exc:
        raise _unwritable(target, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _unwritable(target, exc) from None
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
