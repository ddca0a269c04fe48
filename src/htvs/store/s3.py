"""The S3-compatible artifact store (MinIO, AWS S3, moto), through the ``minio`` SDK.

Objects live at ``s3://<bucket>/<prefix>/<key>``. Endpoint and credentials come from a
``htvs.settings.Settings`` (``HTVS_S3_*`` environment variables or explicit arguments), never from
code. ``minio`` is imported only when a store is created, so importing this module is cheap.

Atomicity: S3 makes an object visible only when its upload completes. A single PUT is atomic, and
so is a multipart upload, which the server assembles atomically on CompleteMultipartUpload; an
interrupted upload never shows a partial object (incomplete multipart parts are invisible to GET
and LIST and can be expired by a bucket lifecycle rule). S3 and MinIO give strong
read-after-write consistency, so an object written before a manifest is readable by whoever sees
the manifest. ``open_write`` spools the bytes to a local temporary file (in memory up to 16 MiB)
and uploads them only when the block exits without an exception.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from htvs.errors import DataNotFound, InvalidInput, StageFailed
from htvs.store.base import ArtifactStore, validate_key, validate_prefix
from htvs.store.local import atomic_file

if TYPE_CHECKING:
    from minio import Minio
    from minio.error import S3Error

    from htvs.settings import Settings

__all__ = ["S3Store", "is_valid_bucket_name", "make_client"]

_SPOOL_BYTES = 16 << 20
_CHUNK = 1 << 20
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING_CODES = {"NoSuchKey", "NotFound", "NoSuchObject"}
_CONTENT_TYPES = {".parquet": "application/vnd.apache.parquet", ".json": "application/json"}


def is_valid_bucket_name(name: str) -> bool:
    """Whether ``name`` follows the S3 bucket naming rules (3-63 of ``a-z 0-9 . -``)."""
    return isinstance(name, str) and bool(_BUCKET_RE.match(name)) and ".." not in name


def make_client(settings: Settings) -> Minio:
    """A ``minio.Minio`` client for the endpoint and credentials in ``settings``.

    Raises:
        InvalidInput: no endpoint is configured, or it is not ``host[:port]`` or
            ``http(s)://host[:port]``.
        ImportError: the ``minio`` package is not installed.
    """
    endpoint = settings.s3_endpoint
    if not endpoint:
        raise InvalidInput("no S3 endpoint configured: set HTVS_S3_ENDPOINT or pass Settings")
    secure = settings.s3_secure
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise InvalidInput(
                f"S3 endpoint {endpoint!r} must be host[:port] or http(s)://host[:port]"
            )
        host, secure = parts.netloc, parts.scheme == "https"
    else:
        host = endpoint.rstrip("/")
        if "/" in host:
            raise InvalidInput(f"S3 endpoint {endpoint!r} must be host[:port] without a path")
    try:
        from minio import Minio
    except ImportError as e:
        raise ImportError("the S3 store needs the 'minio' package (pip install minio)") from e

    def secret(value: Any) -> str | None:
        return None if value is None else value.get_secret_value()

    return Minio(
        host,
        access_key=secret(settings.s3_access_key),
        secret_key=secret(settings.s3_secret_key),
        secure=secure,
        region=settings.s3_region,
    )


def _content_type(key: str) -> str:
    suffix = os.path.splitext(key)[1].lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


class S3Store(ArtifactStore):
    """Artifact store in an S3 bucket, optionally under a key prefix.

    Args:
        bucket: Bucket name (S3 rules: 3-63 characters of ``a-z 0-9 . -``).
        prefix: Key prefix inside the bucket ('' for the whole bucket).
        settings: Endpoint and credentials; read from the environment when ``None``.
        client: A ready ``minio.Minio`` client (then ``settings`` is not used).
        create_bucket: Create the bucket if it does not exist (else a missing bucket is an error).

    Raises:
        InvalidInput: bad bucket name, prefix or endpoint.
        DataNotFound: the bucket does not exist and ``create_bucket`` is false.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        settings: Settings | None = None,
        client: Minio | None = None,
        create_bucket: bool = False,
    ) -> None:
        if not is_valid_bucket_name(bucket):
            raise InvalidInput(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if client is None:
            if settings is None:
                from htvs.settings import Settings

                settings = Settings.from_env()
            client = make_client(settings)
        self.bucket = bucket
        self.prefix = prefix
        self._client = client
        self._region = settings.s3_region if settings is not None else None
        self._ensure_bucket(create_bucket)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def below(self, prefix: str) -> S3Store:
        sub = validate_key(prefix.strip("/"))
        return S3Store(self.bucket, f"{self.prefix}/{sub}" if self.prefix else sub, client=self._client)

    @property
    def client(self) -> Minio:
        """The underlying ``minio.Minio`` client."""
        return self._client

    # ------------------------------------------------------------------------- helpers

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: S3Error, key: str | None) -> Exception:
        code = err.code or ""
        status = getattr(err.response, "status", None)
        if code == "NoSuchBucket":
            return DataNotFound(f"S3 bucket {self.bucket!r} of store {self.url} does not exist")
        if key is not None and (code in _MISSING_CODES or status == 404):
            return self._missing(key)
        what = f"object {key!r}" if key is not None else "bucket"
        return StageFailed(f"S3 error {code or status} on {what} in {self.url}: {err.message}")

    def _ensure_bucket(self, create: bool) -> None:
        from minio.error import S3Error

        try:
            if self._client.bucket_exists(bucket_name=self.bucket):
                return
            if not create:
                raise DataNotFound(
                    f"S3 bucket {self.bucket!r} does not exist (store {self.url}); "
                    "create it or open the store with create_bucket=True"
                )
            self._client.make_bucket(bucket_name=self.bucket, location=self._region)
        except S3Error as e:
            if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created concurrently
            raise self._error(e, None) from e

    def _put_stream(self, key: str, data: BinaryIO, length: int) -> None:
        from minio.error import S3Error

        try:
            self._client.put_object(
                bucket_name=self.bucket,
                object_name=self._name(key),
                data=data,
                length=length,
                content_type=_content_type(key),
            )
        except S3Error as e:
            raise self._error(e, key) from e

    # ------------------------------------------------------------------------- writes

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        self._name(key)  # validate before the caller does any work
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buf:
            yield buf  # type: ignore[misc]
            length = buf.seek(0, os.SEEK_END)
            buf.seek(0)
            self._put_stream(key, buf, length)  # type: ignore[arg-type]

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        import io

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"put_bytes({key!r}) takes bytes, got {type(data).__qualname__}")
        view = memoryview(data).cast("B")
        self._put_stream(key, io.BytesIO(view), view.nbytes)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        from minio.error import S3Error

        name = self._name(key)
        if not Path(path).is_file():
            raise InvalidInput(f"put_file({key!r}): no readable file at {str(path)!r}")
        try:
            self._client.fput_object(
                bucket_name=self.bucket,
                object_name=name,
                file_path=os.fspath(path),
                content_type=_content_type(key),
            )
        except S3Error as e:
            raise self._error(e, key) from e

    def delete(self, key: str) -> None:
        from minio.error import S3Error

        try:
            self._client.remove_object(bucket_name=self.bucket, object_name=self._name(key))
        except S3Error as e:
            if e.code in _MISSING_CODES:
                return
            raise self._error(e, key) from e

    # ------------------------------------------------------------------------- reads

    @contextlib.contextmanager
    def _response(self, key: str) -> Iterator[Any]:
        from minio.error import S3Error

        try:
            response = self._client.get_object(bucket_name=self.bucket, object_name=self._name(key))
        except S3Error as e:
            raise self._error(e, key) from e
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        with self._response(key) as response:
            return bytes(response.read())

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        dest = Path(path)
        with self._response(key) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(dest) as f:
                for chunk in response.stream(_CHUNK):
                    f.write(chunk)
        return dest

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self._client.stat_object(bucket_name=self.bucket, object_name=self._name(key))
        except S3Error as e:
            if e.code in _MISSING_CODES or getattr(e.response, "status", None) == 404:
                if e.code == "NoSuchBucket":
                    raise self._error(e, key) from e
                return False
            raise self._error(e, key) from e
        return True

    def list(self, prefix: str = "") -> list[str]:
        from minio.error import S3Error

        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        try:
            names = [
                obj.object_name
                for obj in self._client.list_objects(
                    bucket_name=self.bucket, prefix=root + prefix, recursive=True
                )
                if not obj.is_dir
            ]
        except S3Error as e:
            raise self._error(e, None) from e
        return sorted(name[len(root) :] for name in names)
