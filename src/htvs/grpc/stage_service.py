"""``htvs.v1.StageService``: the campaign stages a server hosts, run on data in its store.

Every htvs server serves this next to its own service, for the stages of
:data:`htvs.campaign.graph.STAGES` whose ``service`` is that server's. A call names the stage,
the campaign configuration and the manifests of its upstream stages; the stage runs through the
same :class:`~htvs.campaign.graph.Stage` definition as in the embedded runner, with the server's
loaded models, reading and writing the server's store. Progress is streamed; the last event is
the result (manifest keys and counts).

What is refused, naming the value: a stage the server does not host, a configuration that does
not validate, a store outside the server's (:func:`htvs.store.store_within`), an input that is
not the manifest of an upstream stage of this one (wrong stage, malformed key, a manifest that
is not where its content says it is), a shard out of range, models other than the server's.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from htvs.campaign.graph import STAGES, RunContext, Stage
from htvs.errors import DataNotFound, InvalidInput, ModelNotReady
from htvs.grpc.gen import stage_pb2 as pb
from htvs.grpc.gen import stage_pb2_grpc as pb_grpc
from htvs.store import ArtifactStore, StageManifest, manifest_key_of, store_within

#: Seconds between two progress events of the same step (the last one is always sent).
PROGRESS_INTERVAL_S = 1.0
_MANIFEST_KEY = re.compile(r"^stages/(?P<stage>[A-Za-z0-9][A-Za-z0-9_.-]*)/[0-9a-f]{16}/manifest\.json$")


def hosted_stages(service: str) -> dict[str, Stage]:
    """The stages of the graph that ``service`` runs, by name."""
    return {stage.name: stage for stage in STAGES if stage.service == service}


def _same_folder(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()


class StageServicer(pb_grpc.StageServiceServicer):
    """StageService for the stages of ``service``.

    Args:
        service: the graph's service name (``"composition"``, ...).
        store: the server's store (None: RunStage answers FAILED_PRECONDITION).
        backend: the in-process backend holding the server's loaded models (shared with the
            server's own servicer, so models are loaded once).
        served_models: config field -> model folder this server serves (None: the shipped
            model); a configuration naming another folder is refused.
    """

    service_name = "htvs.v1.StageService"

    def __init__(
        self,
        service: str,
        store: ArtifactStore | None,
        backend: Any,
        served_models: dict[str, Path | None] | None = None,
    ) -> None:
        self.service = service
        self.stages = hosted_stages(service)
        self.store = store
        self.backend = backend
        self.served_models = dict(served_models or {})

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_StageServiceServicer_to_server(self, server)

    # ------------------------------------------------------------------------- RPCs

    def ListStages(self, request: pb.ListStagesRequest, context: grpc.ServicerContext) -> pb.ListStagesResponse:
        return pb.ListStagesResponse(
            service=self.service,
            stages=[
                pb.StageInfo(name=s.name, summary=s.summary, needs=list(s.needs), outputs=dict(s.outputs),
                             sharded=s.sharded)
                for s in self.stages.values()
            ],
        )

    def RunStage(self, request: pb.RunStageRequest, context: grpc.ServicerContext) -> Iterator[pb.StageEvent]:
        start = time.perf_counter()
        stage = self._stage(request.stage)
        if self.store is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the {self.service} service has no store; start it with --store URL or HTVS_STORE")
        config = self._config(request.config_json)
        store = store_within(self.store, request.store_url)
        shard = self._shard(stage, config, request)
        results = self._inputs(store, stage, config, request.inputs)
        events: queue.Queue = queue.Queue()
        last_sent: dict[str, float] = {}

        def progress(step: str, done: int, total: int | None) -> None:
            now = time.monotonic()
            if total is not None and done < total and now - last_sent.get(step, 0.0) < PROGRESS_INTERVAL_S:
                return
            last_sent[step] = now
            events.put(("progress", step, done, total))

        def work() -> None:
            try:
                ctx = RunContext(store, config, self.backend, progress, results)
                out = stage.run(ctx) if shard is None else stage.run(ctx, shard)  # type: ignore[call-arg]
                events.put(("done", out))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread, raised there
                events.put(("error", exc))

        worker = threading.Thread(target=work, name=f"stage-{stage.name}", daemon=True)
        worker.start()
        while True:
            event = events.get()
            if event[0] == "progress":
                _, step, done, total = event
                message = pb.StageProgress(step=step, done=max(int(done), 0))
                if total is not None:
                    message.total = max(int(total), 0)
                yield pb.StageEvent(progress=message)
            elif event[0] == "error":
                raise event[1]
            else:
                manifests = event[1] if isinstance(event[1], tuple) else (event[1],)
                counts: dict[str, int] = {}
                for manifest in manifests:
                    for key, value in manifest.row_counts.items():
                        counts[key] = counts.get(key, 0) + int(value)
                yield pb.StageEvent(result=pb.StageResult(
                    stage=stage.name, manifest_keys=[manifest_key_of(m) for m in manifests], row_counts=counts,
                    seconds=time.perf_counter() - start,
                ))
                return

    # ------------------------------------------------------------------------- checks

    def _stage(self, name: str) -> Stage:
        if name not in self.stages:
            raise InvalidInput(
                f"stage {name!r} is not run by the {self.service} service; it runs {sorted(self.stages)}"
            )
        return self.stages[name]

    def _config(self, text: str):
        from htvs.campaign.config import parse_campaign_json, validate_campaign

        config = validate_campaign(parse_campaign_json(text, "config_json"))
        for field, served in self.served_models.items():
            section, name = field.split(".")
            wanted = getattr(getattr(config, section), name)
            if not _same_folder(wanted, served):
                raise ModelNotReady(
                    f"{field} is {str(wanted) if wanted else 'the shipped model'} in the configuration, but this "
                    f"{self.service} service serves {str(served) if served else 'the shipped model'}"
                )
        return config

    def _shard(self, stage: Stage, config, request: pb.RunStageRequest) -> int | None:
        if not request.HasField("shard"):
            return None
        if not stage.sharded:
            raise InvalidInput(f"stage {stage.name!r} is not sharded; do not set shard ({request.shard})")
        shards = config.composition.shards
        if request.shard >= shards:
            raise InvalidInput(f"shard {request.shard} is outside 0..{shards - 1} (composition.shards = {shards})")
        return int(request.shard)

    def _inputs(self, store: ArtifactStore, stage: Stage, config, inputs) -> dict[str, Any]:
        names = set(inputs.keys())
        missing = [n for n in stage.needs if n not in names]
        extra = sorted(names - set(stage.needs))
        if missing or extra:
            raise InvalidInput(
                f"stage {stage.name!r} needs the manifests of {list(stage.needs)}"
                + (f"; missing {missing}" if missing else "") + (f"; not an input of it: {extra}" if extra else "")
            )
        results: dict[str, Any] = {}
        for name in stage.needs:
            keys = list(inputs[name].keys)
            upstream = next(s for s in STAGES if s.name == name)
            wanted = config.composition.shards if upstream.sharded else 1
            if len(keys) != wanted:
                raise InvalidInput(f"input {name!r} must be {wanted} manifest key(s), got {len(keys)}")
            manifests = tuple(self._manifest(store, name, key) for key in keys)
            results[name] = manifests if upstream.sharded else manifests[0]
        return results

    @staticmethod
    def _manifest(store: ArtifactStore, name: str, key: str) -> StageManifest:
        from pydantic import ValidationError

        match = _MANIFEST_KEY.match(key) if isinstance(key, str) else None
        if match is None or match["stage"] != name:
            raise InvalidInput(f"input {name!r}: {key!r} is not a manifest key of stage {name!r} "
                               f"(stages/{name}/<16 hex>/manifest.json)")
        if not store.exists(key):
            raise DataNotFound(f"input {name!r}: no manifest {key!r} in {store.url}")
        try:
            manifest = StageManifest.model_validate(store.get_json(key))
        except (ValidationError, ValueError) as exc:
            raise InvalidInput(f"input {name!r}: {key!r} is not a stage manifest: {str(exc)[:200]}") from None
        if manifest.stage != name or manifest_key_of(manifest) != key:
            raise InvalidInput(f"input {name!r}: the manifest at {key!r} does not belong there")
        return manifest
