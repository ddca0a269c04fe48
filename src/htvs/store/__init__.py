"""Artifact store: one interface, two backends (local directory, S3-compatible object storage).

>>> store = open_store("/tmp/htvs-store")                 # or "file:///tmp/htvs-store"
>>> store = open_store("s3://htvs/campaign-1", settings)  # doctest: +SKIP

Importing this package reads no environment and imports neither ``minio`` nor ``pyarrow``; the
environment is read when an S3 store is opened without explicit settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from htvs.errors import InvalidInput
from htvs.store.base import ArtifactStore, validate_key, validate_prefix
from htvs.store.keys import canonical_json, config_hash, content_hash, stage_key
from htvs.store.local import LocalStore
from htvs.store.manifest import (
    StageManifest,
    code_version,
    manifest_key,
    manifest_key_of,
    read_manifest,
    run_cached,
    write_manifest,
)
from htvs.store.s3 import S3Store, is_valid_bucket_name

if TYPE_CHECKING:
    from htvs.settings import Settings

__all__ = [
    "ArtifactStore",
    "LocalStore",
    "S3Store",
    "StageManifest",
    "canonical_json",
    "code_version",
    "config_hash",
    "content_hash",
    "manifest_key",
    "manifest_key_of",
    "open_store",
    "store_within",
    "read_manifest",
    "run_cached",
    "stage_key",
    "validate_key",
    "validate_prefix",
    "write_manifest",
]


def open_store(
    url_or_path: str | os.PathLike[str] | ArtifactStore,
    settings: Settings | None = None,
    *,
    create_bucket: bool = False,
) -> ArtifactStore:
    """Open the store at a local path, a ``file://`` URL or an ``s3://bucket/prefix`` URL.

    Args:
        url_or_path: Local directory (created if missing), ``file:///abs/dir``, or
            ``s3://bucket[/prefix]``. An ``ArtifactStore`` is returned unchanged.
        settings: S3 endpoint and credentials; read from ``HTVS_S3_*`` when ``None`` and the URL
            is ``s3://``. Unused for local stores.
        create_bucket: For ``s3://``, create the bucket if it does not exist.

    Raises:
        InvalidInput: the URL has an unsupported scheme or is malformed (the message names it).
    """
    if isinstance(url_or_path, ArtifactStore):
        return url_or_path
    if isinstance(url_or_path, os.PathLike):
        return LocalStore(url_or_path)
    if not isinstance(url_or_path, str) or not url_or_path.strip():
        raise InvalidInput(f"store location must be a path or URL, got {url_or_path!r}")
    text = url_or_path.strip()
    if "://" not in text:
        return LocalStore(Path(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise InvalidInput(f"store URL {text!r} must not have a query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput(f"file store URL {text!r} must be file:///absolute/path")
        return LocalStore(Path(unquote(parts.path)))
    if scheme == "s3":
        if not is_valid_bucket_name(parts.netloc):
            raise InvalidInput(
                f"S3 store URL {text!r} needs a valid bucket name (s3://bucket/prefix; "
                "3-63 characters of a-z 0-9 . -)"
            )
        prefix = unquote(parts.path).strip("/")
        try:
            if prefix:
                validate_key(prefix)
        except InvalidInput as e:
            raise InvalidInput(f"S3 store URL {text!r} has an invalid prefix: {e}") from e
        return S3Store(parts.netloc, prefix, settings=settings, create_bucket=create_bucket)
    raise InvalidInput(f"unsupported store URL {text!r}: use a path, file:///path or s3://bucket")


def store_within(root: ArtifactStore, url: str) -> ArtifactStore:
    """The store at ``url`` when it is ``root`` or a prefix below it; ``""`` means ``root``.

    What a server uses to open a store a request names: nothing outside its own store can be read
    or written, whatever the URL says (``..`` segments, other buckets, other directories), and the
    credentials are always the server's.

    Raises:
        InvalidInput: ``url`` is outside ``root`` (the message names both).
    """
    if not isinstance(url, str):
        raise InvalidInput(f"store URL must be a string, got {type(url).__qualname__}")
    text = url.strip()
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise InvalidInput(f"store {url[:200]!r} contains a control character")
    if not text or text.rstrip("/") == root.url:
        return root
    if "://" not in text:  # a local path: compare where it really is (no ~ expansion for requests)
        text = Path(text).resolve().as_uri()
        if text == root.url:
            return root
    base = root.url.rstrip("/") + "/"
    if not text.startswith(base):
        raise InvalidInput(f"store {url[:200]!r} is outside this server's store {root.url!r}")
    sub = unquote(text[len(base):]).strip("/")
    try:
        validate_key(sub)
    except InvalidInput as exc:
        raise InvalidInput(f"store {url[:200]!r}: the part below {root.url!r} is not a valid prefix: {exc}") from None
    return root.below(sub)
