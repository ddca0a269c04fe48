"""The embedded campaign runner: the whole DAG in one process on a local or S3 store.

``run_step`` is also what each Argo step runs (one step per pod); every step first ensures its
inputs, which are cache hits when the upstream steps already ran.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from htvs.campaign.config import CampaignConfig
from htvs.campaign.stages import (
    InProcessBackend,
    StageBackend,
    _output,
    run_conductivity,
    run_predict_shard,
    run_prototypes,
    run_screen,
    run_structures,
    run_substitute,
    shard_rows,
)
from htvs.atomic import write_bytes_atomic
from htvs.errors import InvalidInput
from htvs.store import ArtifactStore, StageManifest

STEPS = ("prototypes", "substitute", "predict", "screen", "structures", "conductivity", "validate", "report")
#: Files the runner leaves in the output directory.
OUTPUT_FILES = (
    "substitutions.parquet",
    "formulas.parquet",
    "prototypes.parquet",
    "predictions.parquet",
    "screen.parquet",
    "structures.parquet",
    "conductivity.parquet",
    "validation.parquet",
    "validation.json",
    "funnel.json",
    "candidates.csv",
    "structure_candidates.csv",
)

#: ``(step, done, total)``: a step's progress in its own units (formulas, structures, ...);
#: ``total`` None means "started, size not known yet".
Progress = Callable[[str, int, "int | None"], None]
#: The funnel's steps, in order (funnel.json is written in this order).
FUNNEL_ORDER = (
    "prototypes",
    "substitutions",
    "unique_formulas",
    "predicted",
    "e_form_and_hull",
    "band_gap",
    "oxidation_window",
    "structures",
    "unique_structures",
    "scored_structures",
    "superionic_shortlist",
    "validated",
    "validated_stable",
)


def ordered_funnel(funnel: dict) -> dict:
    """``funnel`` with the known steps first, in funnel order."""
    known = {k: funnel[k] for k in FUNNEL_ORDER if k in funnel}
    return {**known, **{k: v for k, v in funnel.items() if k not in known}}


def _quiet(step: str, done: int, total: int | None) -> None:
    return None


def _finished(progress: Progress, step: str, count: int) -> None:
    """Report ``step`` complete with its count (also when its manifest made it a cache hit)."""
    progress(step, count, count)


def report_prefix(config: CampaignConfig) -> str:
    return f"campaigns/{config.name}/report"


@dataclass(frozen=True)
class CampaignManifests:
    """The manifests of a finished DAG, in order."""

    prototypes: StageManifest
    substituted: StageManifest
    predicted: tuple[StageManifest, ...]
    screened: StageManifest
    structures: StageManifest | None = None
    conductivity: StageManifest | None = None
    validation: StageManifest | None = None


def run_step(
    store: ArtifactStore,
    config: CampaignConfig,
    step: str,
    shard: int | None = None,
    backend: StageBackend | None = None,
    progress: Progress = _quiet,
) -> StageManifest | CampaignManifests | dict:
    """Run one step of the DAG; the steps it depends on run first (cache hits when done).

    ``predict`` with a ``shard`` runs that shard only (the Argo fan-out); without, all shards.
    """
    if step not in STEPS:
        raise InvalidInput(f"unknown campaign step {step!r}; choose from {list(STEPS)}")
    backend = backend or InProcessBackend()
    progress("prototypes", 0, None)
    prototypes = run_prototypes(store, config)
    _finished(progress, "prototypes", prototypes.row_counts["prototypes"])
    if step == "prototypes":
        return prototypes
    progress("substitute", 0, None)
    substituted = run_substitute(store, config, prototypes, backend)
    _finished(progress, "substitute", substituted.row_counts["substitutions"])
    if step == "substitute":
        return substituted
    if step == "predict" and shard is not None:
        return run_predict_shard(store, config, substituted, shard, backend)
    shards = config.composition.shards
    n_formulas = substituted.row_counts["unique_formulas"]
    sizes = [len(shard_rows(n_formulas, i, shards)) for i in range(shards)]
    predicted = []
    for i in range(shards):
        progress("predict", sum(sizes[:i]), n_formulas)
        predicted.append(run_predict_shard(store, config, substituted, i, backend))
    _finished(progress, "predict", n_formulas)
    if step == "predict":
        return CampaignManifests(prototypes, substituted, tuple(predicted), substituted)
    screened = run_screen(store, config, predicted, backend, progress)
    _finished(progress, "screen", n_formulas)
    manifests = CampaignManifests(prototypes, substituted, tuple(predicted), screened)
    if step == "screen":
        return manifests
    structures = run_structures(store, config, prototypes, substituted, screened, progress)
    _finished(progress, "structures", structures.row_counts["structures"])
    manifests = CampaignManifests(prototypes, substituted, tuple(predicted), screened, structures)
    if step == "structures":
        return manifests
    conductivity = run_conductivity(store, config, structures, backend, progress)
    _finished(progress, "conductivity", structures.row_counts["unique_structures"])
    manifests = CampaignManifests(prototypes, substituted, tuple(predicted), screened, structures, conductivity)
    if step == "conductivity":
        return manifests
    from htvs.campaign.validate_stage import run_validation

    progress("validate", 0, None)
    validation = run_validation(store, config, structures, conductivity, progress)
    _finished(progress, "validate", validation.row_counts["validated"] + validation.row_counts["errors"])
    manifests = CampaignManifests(prototypes, substituted, tuple(predicted), screened, structures, conductivity,
                                  validation)
    if step == "validate":
        return manifests
    write_report(store, config, manifests)
    return manifests


def write_report(store: ArtifactStore, config: CampaignConfig, manifests: CampaignManifests) -> dict:
    """The whole funnel and the candidate table, under ``campaigns/<name>/report``."""
    prototypes, substituted, screened = manifests.prototypes, manifests.substituted, manifests.screened
    screen_funnel = store.get_json(_output(screened, "funnel.json"))
    funnel = {
        "prototypes": prototypes.row_counts["prototypes"],
        "substitutions": substituted.row_counts["substitutions"],
        "unique_formulas": substituted.row_counts["unique_formulas"],
        **{k: v for k, v in screen_funnel.items() if k != "formulas"},
    }
    if manifests.structures is not None:
        funnel["structures"] = manifests.structures.row_counts["structures"]
        funnel["unique_structures"] = manifests.structures.row_counts["unique_structures"]
    table = store.get_table(_output(screened, "screen.parquet")).to_pandas()
    candidates = table[table["passed"]].drop(
        columns=[c for c in table.columns if c.startswith("passed") or c in ("error", "screen_error")]
    )
    candidates = candidates.sort_values(["phi_ox", "e_above_hull"], ascending=[False, True])
    prefix = report_prefix(config)
    if manifests.conductivity is not None:
        funnel["scored_structures"] = manifests.conductivity.row_counts["scored_structures"]
        funnel["superionic_shortlist"] = manifests.conductivity.row_counts["superionic_shortlist"]
        scored = store.get_table(_output(manifests.conductivity, "conductivity.parquet")).to_pandas()
        shortlist = scored[scored["shortlisted"]].drop(columns=["shortlisted", "error"])
        shortlist = shortlist.merge(candidates, on="formula", how="left")
        text = io.StringIO()
        shortlist.to_csv(text, index=False, float_format="%.6g")
        store.put_bytes(f"{prefix}/structure_candidates.csv", text.getvalue().encode())
    if manifests.validation is not None and config.validation.top_k > 0:
        funnel["validated"] = manifests.validation.row_counts["validated"]
        funnel["validated_stable"] = manifests.validation.row_counts["validated_stable"]
    store.put_json(f"{prefix}/funnel.json", funnel)
    buffer = io.StringIO()
    candidates.to_csv(buffer, index=False, float_format="%.6g")
    store.put_bytes(f"{prefix}/candidates.csv", buffer.getvalue().encode())
    return funnel


def shard_list(config: CampaignConfig) -> list[int]:
    """The shard indices of the predict fan-out (Argo ``withParam``)."""
    return list(range(config.composition.shards))


def run_campaign(
    config: CampaignConfig,
    store: ArtifactStore,
    out_dir: Path,
    backend: StageBackend | None = None,
    progress: Progress = _quiet,
) -> dict:
    """Run every step, then copy the final tables, ``funnel.json`` and ``candidates.csv`` to
    ``out_dir``. Returns the funnel."""
    manifests = run_step(store, config, "report", backend=backend, progress=progress)
    assert isinstance(manifests, CampaignManifests)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = {
        name: _output(manifests.substituted, name)
        for name in ("substitutions.parquet", "formulas.parquet", "prototypes.parquet")
    }
    copies["screen.parquet"] = _output(manifests.screened, "screen.parquet")
    if manifests.structures is not None:
        copies["structures.parquet"] = _output(manifests.structures, "structures.parquet")
    if manifests.conductivity is not None:
        copies["conductivity.parquet"] = _output(manifests.conductivity, "conductivity.parquet")
        copies["structure_candidates.csv"] = f"{report_prefix(config)}/structure_candidates.csv"
    if manifests.validation is not None:
        for name in ("validation.parquet", "validation.json"):
            copies[name] = _output(manifests.validation, name)
    copies["candidates.csv"] = f"{report_prefix(config)}/candidates.csv"
    for name, key in copies.items():
        write_bytes_atomic(out_dir / name, store.get_bytes(key))
    predictions = pa.concat_tables(
        [store.get_table(_output(m, "predictions.parquet")) for m in manifests.predicted]
    )
    buffer = io.BytesIO()
    pq.write_table(predictions, buffer, compression="zstd")
    write_bytes_atomic(out_dir / "predictions.parquet", buffer.getvalue())
    funnel = ordered_funnel(store.get_json(f"{report_prefix(config)}/funnel.json"))
    write_bytes_atomic(out_dir / "funnel.json", (json.dumps(funnel, indent=1) + "\n").encode())
    return funnel
