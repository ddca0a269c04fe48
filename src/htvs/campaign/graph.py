"""The campaign's stage graph: every stage of the funnel defined once.

A :class:`Stage` names its upstream stages, its outputs (by name; each output is one file under
the stage's store prefix), the config section that parameterizes it, the funnel counts it
contributes, the service that runs it when deployed, its Kubernetes resources, and how it runs
in process. The embedded runner (:mod:`htvs.campaign.runner`), the Argo renderer
(``argo/campaign.py``), ``htvs campaign stages`` and the report all iterate :data:`STAGES`.
Adding a stage means adding it here, with its function (in :mod:`htvs.campaign.stages`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from htvs.campaign.config import CampaignConfig
from htvs.errors import InvalidInput, StageFailed
from htvs.store import ArtifactStore, StageManifest


@dataclass(frozen=True)
class Resources:
    """What one pod of a stage requests on Kubernetes (limits: ``memory_limit``; GPUs: ``gpus``)."""

    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    memory_limit: str = "4Gi"
    gpus: int = 0


@dataclass
class RunContext:
    """What a stage's in-process runner gets: the store, the config, the backend, the progress
    callback, and the results of the stages already run (name -> manifest, or a tuple of
    manifests for a sharded stage)."""

    store: ArtifactStore
    config: CampaignConfig
    backend: Any
    progress: Callable[[str, int, int | None], None]
    results: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One stage of the funnel.

    Attributes:
        name: the step name (``htvs campaign stage NAME``, the Argo task).
        summary: one line for ``htvs campaign stages``.
        needs: upstream stages whose outputs it reads.
        outputs: output name -> file name under the stage's store prefix.
        config_section: the campaign-config section that parameterizes it (None: none).
        funnel: the funnel counts it contributes (keys of its manifest's ``row_counts``), in order.
        progress_count: the ``row_counts`` key reported as the stage's size when it finishes
            (summed over the shards of a sharded stage).
        service: the gRPC service that runs it when deployed (None: runs in the step's pod).
        resources: Kubernetes requests and limits of its pod.
        sharded: runs as a fan-out over ``composition.shards`` shards.
        run: the in-process runner: ``run(context) -> manifest`` (a tuple for a sharded stage).
        reports_funnel: whether its funnel counts are reported for a config.
        exported: outputs copied to a campaign's ``--out`` folder under their file names (a
            sharded stage's tables concatenated).
    """

    name: str
    summary: str
    needs: tuple[str, ...]
    outputs: dict[str, str]
    config_section: str | None
    funnel: tuple[str, ...]
    progress_count: str | None
    service: str | None
    resources: Resources
    run: Callable[[RunContext], Any]
    sharded: bool = False
    reports_funnel: Callable[[CampaignConfig], bool] = lambda config: True
    exported: tuple[str, ...] = ()


def output_key(manifest: StageManifest, stage: str, output: str) -> str:
    """The store key of ``stage``'s output named ``output`` in ``manifest``.

    Raises:
        StageFailed: the stage declares no such output, or the manifest lacks it.
    """
    files = STAGES_BY_NAME[stage].outputs
    if output not in files:
        raise StageFailed(f"stage {stage!r} has no output named {output!r}; it has {sorted(files)}")
    file_name = files[output]
    for key in manifest.output_keys:
        if key.rsplit("/", 1)[-1] == file_name:
            return key
    raise StageFailed(f"the manifest of stage {stage!r} lacks its output {output!r} ({file_name})")


# --------------------------------------------------------------------------- in-process runners


def _prototypes(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_prototypes

    return run_prototypes(ctx.store, ctx.config, ctx.progress)


def _substitute(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_substitute

    return run_substitute(ctx.store, ctx.config, ctx.results["prototypes"], ctx.backend)


def _predict(ctx: RunContext, shard: int | None = None) -> tuple[StageManifest, ...]:
    from htvs.campaign.stages import run_predict_shard, shard_rows

    substituted = ctx.results["substitute"]
    if shard is not None:
        return (run_predict_shard(ctx.store, ctx.config, substituted, shard, ctx.backend),)
    shards = ctx.config.composition.shards
    n_formulas = substituted.row_counts["unique_formulas"]
    done, manifests = 0, []
    for i in range(shards):
        ctx.progress("predict", done, n_formulas)
        manifests.append(run_predict_shard(ctx.store, ctx.config, substituted, i, ctx.backend))
        done += len(shard_rows(n_formulas, i, shards))
    return tuple(manifests)


def _screen(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_screen

    return run_screen(ctx.store, ctx.config, list(ctx.results["predict"]), ctx.backend, ctx.progress)


def _generate(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_generate

    return run_generate(ctx.store, ctx.config, ctx.results["screen"], ctx.backend, ctx.progress)


def _structures(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_structures

    r = ctx.results
    return run_structures(ctx.store, ctx.config, r["prototypes"], r["substitute"], r["screen"], r["generate"],
                          ctx.progress)


def _relax(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_relax

    return run_relax(ctx.store, ctx.config, ctx.results["structures"], ctx.progress)


def _conductivity(ctx: RunContext) -> StageManifest:
    from htvs.campaign.stages import run_conductivity

    # the relax stage's structures.parquet: relaxed and stable when relax is on, stage 4's otherwise
    return run_conductivity(ctx.store, ctx.config, ctx.results["relax"], ctx.backend, ctx.progress)


def _validate(ctx: RunContext) -> StageManifest:
    from htvs.campaign.validate_stage import run_validation

    r = ctx.results
    # the relax stage's structures.parquet has stage 4's file name and columns
    return run_validation(ctx.store, ctx.config, r["relax"], r["conductivity"], ctx.progress)


def _report(ctx: RunContext) -> dict:
    from htvs.campaign.runner import write_report

    return write_report(ctx.store, ctx.config, ctx.results)


_CPU2 = Resources(cpu_request="2", memory_request="4Gi", memory_limit="16Gi")
#: A pod with one GPU (stages 5, relax and 7: the generator's denoiser, CHGNet relaxation, MD).
_GPU = Resources(cpu_request="4", memory_request="8Gi", memory_limit="32Gi", gpus=1)

#: The stages in run order (every stage after the stages it needs).
STAGES: tuple[Stage, ...] = (
    Stage("prototypes", "load the prototype set (bundled MP snapshot, OBELiX, MP API or a folder)",
          (), {"prototypes": "prototypes.jsonl.gz", "skipped": "skipped.json"}, "prototypes",
          ("prototypes",), "prototypes", "substitution", Resources(), _prototypes),
    Stage("substitute", "stage 1: elemental substitution -> substitutions and unique formulas",
          ("prototypes",), {"substitutions": "substitutions.parquet", "formulas": "formulas.parquet",
                            "prototype_table": "prototypes.parquet"}, "substitution",
          ("substitutions", "unique_formulas"), "substitutions", "substitution", _CPU2, _substitute,
          exported=("substitutions", "formulas", "prototype_table")),
    Stage("predict", "stage 2: Roost ensembles -> E_f and band gap per formula (sharded)",
          ("substitute",), {"predictions": "predictions.parquet"}, "composition",
          (), "formulas", "composition", replace(_CPU2, gpus=1), _predict, sharded=True, exported=("predictions",)),
    Stage("screen", "stage 3: charge balance, E_f, E_hull, band gap and Li-window filters",
          ("predict",), {"screen": "screen.parquet", "funnel": "funnel.json"}, "screening",
          ("predicted", "charge_balanced", "e_form_and_hull", "band_gap", "oxidation_window"), "formulas",
          "composition",
          _CPU2, _screen, exported=("screen",)),
    Stage("generate", "stage 5: generated structures for the best screened formulas, sanity-filtered",
          ("screen",), {"generated": "generated.parquet", "rejected": "rejected.parquet"}, "generation",
          ("generated_formulas", "generated_samples", "generated_accepted"), "requested_samples", "generator",
          _GPU, _generate, reports_funnel=lambda config: config.generation.enabled,
          exported=("generated", "rejected")),
    Stage("structures", "stage 4: materialize the survivors' structures, add the generated ones, deduplicate",
          ("prototypes", "substitute", "screen", "generate"), {"structures": "structures.parquet",
                                                                "errors": "errors.json"},
          "structures", ("structures", "unique_structures"), "structures", "structure", _CPU2, _structures,
          exported=("structures",)),
    Stage("relax", "CHGNet relaxation + E_hull on the CHGNet hull of MP phases; keeps the stable, relaxed "
          "structures (off: pass-through)", ("structures",), {"structures": "structures.parquet", "relax": "relax.parquet"},
          "relax", ("relaxed", "relaxed_stable"), "relaxed", "dft", _GPU, _relax,
          reports_funnel=lambda config: config.relax.enabled, exported=("relax",)),
    Stage("conductivity", "stage 6: conductivity model on every unique structure -> shortlist",
          ("relax",), {"conductivity": "conductivity.parquet"}, "conductivity",
          ("scored_structures", "superionic_shortlist"), "scored_structures", "conductivity", _CPU2,
          _conductivity, exported=("conductivity",)),
    Stage("validate", "stage 7: relaxation, stability and MD of the shortlist's top_k",
          ("relax", "conductivity"), {"validation": "validation.parquet", "documents": "validation.json"},
          "validation", ("validated", "validated_stable"), "validated", "dft", _GPU, _validate,
          reports_funnel=lambda config: config.validation.top_k > 0, exported=("validation", "documents")),
    Stage("report", "funnel.json, candidates.csv and structure_candidates.csv",
          ("prototypes", "substitute", "predict", "screen", "generate", "structures", "relax", "conductivity",
           "validate"), {},
          None, (), None, None, Resources(), _report),
)
STAGES_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
#: The step names, in run order.
STEP_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
#: The funnel's counts, in order (funnel.json is written in this order).
FUNNEL_ORDER: tuple[str, ...] = tuple(key for stage in STAGES for key in stage.funnel)


def stage(name: str) -> Stage:
    """The stage called ``name`` (InvalidInput lists the names)."""
    if name not in STAGES_BY_NAME:
        raise InvalidInput(f"unknown campaign step {name!r}; choose from {list(STEP_NAMES)}")
    return STAGES_BY_NAME[name]


def upstream(name: str) -> list[Stage]:
    """``name`` and every stage it needs, directly or not, in run order."""
    wanted = {name}
    for candidate in reversed(STAGES):
        if candidate.name in wanted:
            wanted.update(candidate.needs)
    return [s for s in STAGES if s.name in wanted]


def _check_graph() -> None:
    seen: set[str] = set()
    for s in STAGES:
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise StageFailed(f"stage {s.name!r} needs {missing}, which do not run before it")
        unknown = sorted(set(s.exported) - set(s.outputs))
        if unknown:
            raise StageFailed(f"stage {s.name!r} exports {unknown}, which are not among its outputs")
        seen.add(s.name)
