"""Stage manifests and the run-once cache of stage outputs.

A stage run writes its outputs under ``stages/<stage>/<input hash[:16]>/`` and then, LAST, a
``manifest.json`` there. Because every object write is atomic and the manifest comes after all
outputs, the presence of a manifest means the stage finished. ``run_cached`` looks for that
manifest first: a rerun with the same stage, configuration, input keys and model versions is a
cache hit and does no work, so a killed campaign resumes where it stopped. A run that crashed left
outputs but no manifest; the next run recomputes and overwrites them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from htvs.errors import InvalidInput, StageFailed
from htvs.store.base import ArtifactStore, validate_key
from htvs.store.keys import config_hash, stage_key

__all__ = [
    "MANIFEST_NAME",
    "StageFn",
    "StageManifest",
    "code_version",
    "manifest_key",
    "read_manifest",
    "run_cached",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"

#: ``fn(store, out_prefix) -> (output_keys, row_counts)``; it may return a third item, a dict of
#: extra timings in seconds, merged into the manifest's ``timings_s``.
StageFn = Callable[[ArtifactStore, str], tuple[Any, ...]]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class StageManifest(BaseModel):
    """What one finished stage run produced and from what.

    Attributes:
        stage: Stage name, e.g. ``"substitute"``.
        config_hash: ``config_hash`` of the stage configuration (SHA-256 hex).
        input_keys: Store keys the stage read, in the order given.
        output_keys: Store keys the stage wrote.
        code_version: ``htvs.__version__``, plus ``+g<commit>`` in a git checkout.
        model_versions: Model name -> version or hash (e.g. SHA-256 of the model card).
        row_counts: Output name -> number of rows.
        timings_s: Step name -> wall time in seconds (``"total"`` is the whole run).
        created: When the run finished, UTC ISO 8601.
        manifest_version: Schema version of this record.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    stage: str
    config_hash: str
    input_keys: tuple[str, ...] = ()
    output_keys: tuple[str, ...] = ()
    code_version: str = Field(default_factory=lambda: code_version())
    model_versions: dict[str, str] = Field(default_factory=dict)
    row_counts: dict[str, int] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    created: str = Field(default_factory=_utc_now)
    manifest_version: int = 1


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``htvs.__version__``, with ``+g<12-hex commit>`` appended when running from a git checkout.

    Never fails: without git, or outside a checkout, it is the bare version.
    """
    import htvs

    version = htvs.__version__
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(htvs.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    commit = result.stdout.strip()
    if result.returncode != 0 or len(commit) < 12:
        return version
    return f"{version}+g{commit[:12]}"


def manifest_key(stage_prefix: str) -> str:
    """The key of the manifest of the stage run stored under ``stage_prefix``."""
    return validate_key(f"{stage_prefix.rstrip('/')}/{MANIFEST_NAME}")


def manifest_key_of(manifest: StageManifest) -> str:
    """The store key of ``manifest``, from what it records (the prefix :func:`run_cached` chose)."""
    run = _run_key(manifest.stage, manifest.config_hash, tuple(manifest.input_keys), dict(manifest.model_versions))
    return manifest_key(stage_key(manifest.stage, run))


def write_manifest(store: ArtifactStore, stage_prefix: str, manifest: StageManifest) -> str:
    """Write ``manifest`` under ``stage_prefix``; call it only after every output is written.

    Returns:
        The manifest's key.
    """
    key = manifest_key(stage_prefix)
    store.put_json(key, manifest.model_dump(mode="json"))
    return key


def read_manifest(store: ArtifactStore, stage_prefix: str) -> StageManifest | None:
    """The manifest under ``stage_prefix``, or ``None`` if that stage run has not finished.

    Raises:
        StageFailed: a manifest exists but is not a valid ``StageManifest``.
    """
    key = manifest_key(stage_prefix)
    if not store.exists(key):
        return None
    data = store.get_json(key)
    try:
        return StageManifest.model_validate(data)
    except ValidationError as e:
        raise StageFailed(f"manifest {key!r} in {store.url} is not a valid StageManifest") from e


def _run_key(
    stage: str, config_h: str, input_keys: tuple[str, ...], model_versions: dict[str, str]
) -> str:
    return config_hash(
        {
            "stage": stage,
            "config_hash": config_h,
            "input_keys": list(input_keys),
            "model_versions": model_versions,
        }
    )


def run_cached(
    store: ArtifactStore,
    stage: str,
    config: Any,
    input_keys: Sequence[str],
    fn: StageFn,
    *,
    model_versions: Mapping[str, str] | None = None,
) -> StageManifest:
    """Run ``fn`` once per (stage, config, input keys, model versions); reuse its manifest after.

    The outputs go under ``out_prefix = stage_key(stage, run hash)``, where the run hash covers the
    stage name, ``config_hash(config)``, the input keys (in order) and ``model_versions``. Inputs
    are identified by key, not content: keys are expected to name immutable results (as stage
    prefixes do).

    Args:
        store: Where inputs, outputs and the manifest live.
        stage: Stage name (letters, digits, ``_ . -``).
        config: The stage configuration (anything ``config_hash`` accepts).
        input_keys: Store keys the stage reads.
        fn: ``fn(store, out_prefix) -> (output_keys, row_counts)``; it must write its outputs
            itself (atomic writes through the store). An optional third returned item is a dict
            of extra timings in seconds.
        model_versions: Model name -> version/hash, recorded and part of the cache key.

    Returns:
        The manifest of the finished run: the stored one on a cache hit (``fn`` not called).

    Raises:
        StageFailed: ``fn`` returned something malformed or an output key it names is missing.
        Exception: whatever ``fn`` raises, unchanged; no manifest is written then.
    """
    inputs = tuple(validate_key(k) for k in input_keys)
    models = {str(k): str(v) for k, v in (model_versions or {}).items()}
    config_h = config_hash(config)
    out_prefix = stage_key(stage, _run_key(stage, config_h, inputs, models))

    try:
        existing = read_manifest(store, out_prefix)
    except StageFailed:
        log.warning("unreadable manifest under %s; recomputing", out_prefix, exc_info=True)
        existing = None
    if (
        existing is not None
        and existing.stage == stage
        and existing.config_hash == config_h
        and existing.input_keys == inputs
        and existing.model_versions == models
    ):
        log.info("stage %s: cache hit at %s/%s", stage, store.url, out_prefix)
        return existing

    log.info("stage %s: running into %s/%s", stage, store.url, out_prefix)
    start = time.perf_counter()
    result = fn(store, out_prefix)
    elapsed = time.perf_counter() - start
    output_keys, row_counts, extra_timings = _unpack_result(stage, result)
    for key in output_keys:
        if not store.exists(key):
            raise StageFailed(f"stage {stage} reported output {key!r} but it is not in {store.url}")
    manifest = StageManifest(
        stage=stage,
        config_hash=config_h,
        input_keys=inputs,
        output_keys=output_keys,
        model_versions=models,
        row_counts=row_counts,
        timings_s={**extra_timings, "total": elapsed},
    )
    write_manifest(store, out_prefix, manifest)
    return manifest


def _unpack_result(
    stage: str, result: Any
) -> tuple[tuple[str, ...], dict[str, int], dict[str, float]]:
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise StageFailed(
            f"stage {stage} function must return (output_keys, row_counts[, timings_s]), "
            f"got {type(result).__qualname__}"
        )
    try:
        output_keys = tuple(validate_key(k) for k in result[0])
        row_counts = {str(k): int(v) for k, v in dict(result[1]).items()}
        timings = {str(k): float(v) for k, v in dict(result[2]).items()} if len(result) == 3 else {}
    except (InvalidInput, TypeError, ValueError) as e:
        raise StageFailed(f"stage {stage} function returned malformed results: {e}") from e
    return output_keys, row_counts, timings
