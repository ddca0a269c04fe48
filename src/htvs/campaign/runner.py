"""The embedded campaign runner: the whole DAG in one process on a local or S3 store.

``run_step`` is also what each Argo step runs (one step per pod); every step first ensures its
inputs, which are cache hits when the upstream steps already ran.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from htvs.atomic import output_folder, write_bytes_atomic
from htvs.campaign.config import CampaignConfig
from htvs.campaign.graph import FUNNEL_ORDER, STAGES, STEP_NAMES, RunContext, output_key, stage, upstream
from htvs.campaign.remote import StageClient
from htvs.campaign.stages import InProcessBackend, StageBackend, ranked_survivors
from htvs.store import ArtifactStore, StageManifest

#: The step names, in run order (see :mod:`htvs.campaign.graph`).
STEPS = STEP_NAMES
#: ``(step, done, total)``: a step's progress in its own units (formulas, structures, ...);
#: ``total`` None means "started, size not known yet".
Progress = Callable[[str, int, "int | None"], None]
#: Manifests of the steps run so far: step name -> manifest (a tuple for a sharded step).
Results = dict[str, Any]


def ordered_funnel(funnel: dict) -> dict:
    """``funnel`` with the known steps first, in funnel order."""
    known = {k: funnel[k] for k in FUNNEL_ORDER if k in funnel}
    return {**known, **{k: v for k, v in funnel.items() if k not in known}}


def _quiet(step: str, done: int, total: int | None) -> None:
    return None


def report_prefix(config: CampaignConfig) -> str:
    return f"campaigns/{config.name}/report"


def run_step(
    store: ArtifactStore,
    config: CampaignConfig,
    step: str,
    shard: int | None = None,
    backend: StageBackend | None = None,
    progress: Progress = _quiet,
    services: StageClient | None = None,
) -> StageManifest | Results:
    """Run one step of the DAG; the steps it needs run first (cache hits when done).

    A sharded step (``predict``) with a ``shard`` runs that shard only (the Argo fan-out) and
    returns its manifest; without, all shards. The first two steps return their manifest, the
    later ones the manifests of every step run (name -> manifest). With ``services``, every
    stage whose service has an address runs there (:mod:`htvs.campaign.remote`); the others run
    in process.
    """
    target = stage(step)
    ctx = RunContext(store, config, backend or InProcessBackend(), progress)
    for current in upstream(step):
        one_shard = shard if current is target and current.sharded else None
        if not current.sharded and current.progress_count is not None:
            progress(current.name, 0, None)  # a sharded stage reports its own start
        if services is not None and services.hosts(current):
            result = services.run(current, ctx, one_shard)
        else:
            result = current.run(ctx) if one_shard is None else current.run(ctx, one_shard)  # type: ignore[call-arg]
        if one_shard is not None:
            return result[0]
        ctx.results[current.name] = result
        _report_finished(ctx, current.name)
    if step in ("prototypes", "substitute"):
        return ctx.results[step]
    return ctx.results


def _report_finished(ctx: RunContext, name: str) -> None:
    """Report ``name`` complete with its size (also when its manifests made it a cache hit)."""
    current = stage(name)
    if current.progress_count is None:
        return
    manifests = ctx.results[name] if current.sharded else (ctx.results[name],)
    count = sum(m.row_counts[current.progress_count] for m in manifests)
    ctx.progress(name, count, count)


def _clscores(formulas) -> list[float | None]:
    """The synthesizability score (CLscore-like, 0..1) of each formula; None where the model cannot
    score it. Each distinct formula is scored once."""
    from htvs.synth import clscore_column

    formulas = [str(f) for f in formulas]
    distinct = sorted(set(formulas))
    score_of = dict(zip(distinct, clscore_column(distinct), strict=True))
    return [score_of[f] for f in formulas]


def write_report(store: ArtifactStore, config: CampaignConfig, results: Results) -> dict:
    """The whole funnel and the candidate tables, under ``campaigns/<name>/report``.

    Both tables get a ``clscore`` column: the synthesizability score of the row's composition
    (:func:`htvs.synth.clscore`; empty where the model cannot score it)."""
    funnel = {
        key: results[s.name].row_counts[key]
        for s in STAGES
        if s.funnel and s.name in results and s.reports_funnel(config)
        for key in s.funnel
    }
    table = store.get_table(output_key(results["screen"], "screen", "screen")).to_pandas()
    candidates = ranked_survivors(table)
    candidates = candidates.drop(
        columns=[c for c in table.columns if c.startswith("passed") or c in ("error", "screen_error")]
    )
    prefix = report_prefix(config)
    if "conductivity" in results:
        scored = store.get_table(output_key(results["conductivity"], "conductivity", "conductivity")).to_pandas()
        shortlist = scored[scored["shortlisted"]].drop(columns=["shortlisted", "error"])
        shortlist = shortlist.merge(candidates, on="formula", how="left")
        shortlist["clscore"] = _clscores(shortlist["formula"])
        text = io.StringIO()
        shortlist.to_csv(text, index=False, float_format="%.6g")
        store.put_bytes(f"{prefix}/structure_candidates.csv", text.getvalue().encode())
    store.put_json(f"{prefix}/funnel.json", funnel)
    candidates["clscore"] = _clscores(candidates["formula"])
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
    services: StageClient | None = None,
) -> dict:
    """Run every step, then copy the final tables, ``funnel.json`` and ``candidates.csv`` to
    ``out_dir``, and write ``run.json`` and ``report.html`` there (:func:`htvs.report.report_after_run`;
    a report that fails is logged and does not fail the campaign). Returns the funnel."""
    results = run_step(store, config, "report", backend=backend, progress=progress, services=services)
    assert isinstance(results, dict)
    out_dir = output_folder(out_dir)
    for current in STAGES:
        for output in current.exported:
            file_name = current.outputs[output]
            if current.sharded:  # the shards' tables, concatenated in shard order
                tables = [store.get_table(output_key(m, current.name, output)) for m in results[current.name]]
                buffer = io.BytesIO()
                pq.write_table(pa.concat_tables(tables), buffer, compression="zstd")
                write_bytes_atomic(out_dir / file_name, buffer.getvalue())
            else:
                write_bytes_atomic(out_dir / file_name,
                                   store.get_bytes(output_key(results[current.name], current.name, output)))
    for name in ("candidates.csv", "structure_candidates.csv"):
        write_bytes_atomic(out_dir / name, store.get_bytes(f"{report_prefix(config)}/{name}"))
    funnel = ordered_funnel(store.get_json(f"{report_prefix(config)}/funnel.json"))
    write_bytes_atomic(out_dir / "funnel.json", (json.dumps(funnel, indent=1) + "\n").encode())
    # last: run.json and report.html (htvs.report); a failure there is logged, never raised
    from htvs.report import report_after_run

    progress("html report", 0, 1)
    report_after_run(out_dir, config, results)
    progress("html report", 1, 1)
    return funnel
