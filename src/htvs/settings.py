"""Deployment settings: one object, built from ``HTVS_*`` environment variables or arguments.

Nothing here reads the environment at import. The environment is read when a ``Settings`` is
constructed (``Settings()`` or ``Settings.from_env()``), which the code does only when it opens a
resource that needs it (an S3 store, for example). Explicit keyword arguments win over the
environment, so tests and callers can pin every value.

Variables (all optional):

- ``HTVS_S3_ENDPOINT``: ``host:port`` or ``http(s)://host:port`` of an S3-compatible server
  (MinIO, AWS S3, moto). A URL scheme, when given, decides TLS and overrides ``HTVS_S3_SECURE``.
- ``HTVS_S3_ACCESS_KEY`` / ``HTVS_S3_SECRET_KEY``: credentials (kept as secrets: never printed).
- ``HTVS_S3_SECURE``: use TLS (default true).
- ``HTVS_S3_REGION``: bucket region (e.g. ``us-east-1``); unset lets the client ask the server.
- ``HTVS_WORKERS``: processes a campaign stage may use on this machine (default: every core).
- ``HTVS_DATA_DIR``: a folder holding ``mp_structures/mp_structures.jsonl.gz`` (training data
  kept outside the wheel; default: the source checkout's ``data/``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


def _describe(error: dict) -> str:
    """``HTVS_NAME: message (got value)``; values of credentials are never echoed."""
    name = "HTVS_" + "_".join(str(p) for p in error["loc"]).upper()
    shown = "" if "KEY" in name else f" (got {error.get('input')!r})"
    return f"{name}: {error['msg']}{shown}"


class Settings(BaseSettings):
    """Deployment settings of htvs (environment prefix ``HTVS_``).

    Attributes:
        s3_endpoint: S3-compatible endpoint, ``host:port`` or ``http(s)://host:port``.
        s3_access_key: S3 access key id.
        s3_secret_key: S3 secret access key.
        s3_secure: Use HTTPS when ``s3_endpoint`` has no scheme.
        s3_region: Region of the bucket; ``None`` lets the client discover it.
        workers: processes a stage may use (materialize + dedupe); ``None``: one per core.
        data_dir: folder of the training data kept outside the wheel; ``None``: the checkout's.
        store: the store a service's campaign stages read and write (``htvs serve --store``):
            a directory, ``file:///dir`` or ``s3://bucket/prefix``; ``None``: none.
    """

    model_config = SettingsConfigDict(env_prefix="HTVS_", frozen=True, extra="ignore")

    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = True
    s3_region: str | None = None
    workers: int | None = Field(None, ge=1, le=1024)
    data_dir: Path | None = None
    store: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the settings from the environment now; keyword arguments override it.

        Raises:
            InvalidInput: a variable has a bad value (the message names ``HTVS_<NAME>``).
        """
        from pydantic import ValidationError

        from htvs.errors import InvalidInput

        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in exc.errors())
            raise InvalidInput(f"bad deployment setting: {problems}") from None
