"""Campaign stages through the services: ``htvs campaign run --services`` and the Argo steps of
``execution: services``.

Each stage of :data:`htvs.campaign.graph.STAGES` whose service has an address runs on that
service (``htvs.v1.StageService/RunStage``): the client sends the configuration, the store URL
and the manifest keys of the stage's inputs; the service reads the inputs from the store, writes
the outputs and their manifest, and streams progress and the result. The client then reads the
manifest from the same store. Only keys travel over gRPC, never rows, so no message limit bounds
a campaign. A call is retried with exponential backoff while the service is unavailable (a
stage is content-addressed, so a repeated call finds the finished manifest and returns at once).
Stages whose service has no address, and the report, run in process.

Channels are plaintext unless client TLS is configured: a :class:`~htvs.grpc.tls.ClientTls`
given to :class:`StageClient` / :func:`parse_services`, or else the environment
(``HTVS_GRPC_CA``, and ``HTVS_GRPC_CERT`` + ``HTVS_GRPC_KEY`` for services that require client
certificates; see :mod:`htvs.grpc.tls`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from htvs.campaign.graph import STAGES, RunContext, Stage
from htvs.errors import DataNotFound, InvalidInput, ModelNotReady, StageFailed
from htvs.grpc.tls import ClientTls, open_channel
from htvs.store import StageManifest, manifest_key_of

#: The services of the stage graph.
SERVICE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(s.service for s in STAGES if s.service))
#: Status codes worth retrying: the service is restarting, overloaded or was cut off.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
_ERROR_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: DataNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotReady,
}


def _list_stages(address: str, timeout_s: float, tls: ClientTls | None):
    from htvs.grpc.gen import stage_pb2, stage_pb2_grpc

    with open_channel(address, tls) as channel:
        return stage_pb2_grpc.StageServiceStub(channel).ListStages(stage_pb2.ListStagesRequest(), timeout=timeout_s)


def parse_services(spec: str, timeout_s: float = 5.0, tls: ClientTls | None = None) -> dict[str, str]:
    """``"name=host:port,..."`` or ``"host:port,..."`` -> {service name: address}.

    A plain address is asked which service it is (``StageService/ListStages``), over TLS with
    ``tls`` (None: :meth:`ClientTls.from_env`, plaintext when that is unset). An empty spec
    gives ``{}`` (every stage in process).

    Raises:
        InvalidInput: an unknown service name, or an address where no htvs service answers.
    """
    found: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        name, _, address = item.rpartition("=")
        if name:
            if name not in SERVICE_NAMES:
                raise InvalidInput(f"--services: unknown service {name!r}; known: {list(SERVICE_NAMES)}")
            found[name] = address
            continue
        if tls is None:
            tls = ClientTls.from_env()
        try:
            reply = _list_stages(address, timeout_s, tls)
        except grpc.RpcError as exc:
            raise InvalidInput(f"--services: no htvs service answers at {address!r} ({exc.code().name})") from None
        found.setdefault(reply.service, address)
    return found


def _error(stage: str, exc: grpc.RpcError) -> Exception:
    code, detail = exc.code(), exc.details()
    return _ERROR_OF.get(code, StageFailed)(f"stage {stage!r} on its service: {code.name}: {detail}")


@dataclass
class StageClient:
    """Runs stages on their services (see the module docstring).

    Attributes:
        addresses: service name -> ``host:port``.
        retries: attempts after the first when the service is unavailable.
        backoff_s: first wait between attempts, doubled each time.
        shard_calls: shards of a sharded stage run at once (on one service or its replicas).
        tls: client TLS of the channels (None: :meth:`ClientTls.from_env`, plaintext when unset).
    """

    addresses: dict[str, str]
    retries: int = 5
    backoff_s: float = 1.0
    shard_calls: int = 4
    tls: ClientTls | None = None
    _channels: dict[str, grpc.Channel] = field(default_factory=dict, repr=False)

    def hosts(self, stage: Stage) -> bool:
        """Whether ``stage`` runs on a service (one with an address)."""
        return stage.service is not None and stage.service in self.addresses

    def run(self, stage: Stage, ctx: RunContext, shard: int | None = None) -> Any:
        """Run ``stage`` (one shard, or all of a sharded stage) on its service; returns what its
        in-process ``run`` would: a manifest, or a tuple of manifests for a sharded stage."""
        from htvs.grpc.gen import stage_pb2 as pb

        inputs = {}
        for name in stage.needs:
            done = ctx.results[name]
            manifests = done if isinstance(done, tuple) else (done,)
            inputs[name] = pb.ManifestKeys(keys=[manifest_key_of(m) for m in manifests])
        base = dict(stage=stage.name, config_json=ctx.config.model_dump_json(), store_url=ctx.store.url, inputs=inputs)
        if not stage.sharded:
            return self._manifests(ctx, self._call(stage, pb.RunStageRequest(**base), ctx))[0]
        shards = [shard] if shard is not None else list(range(ctx.config.composition.shards))
        with ThreadPoolExecutor(max_workers=max(1, min(self.shard_calls, len(shards)))) as pool:
            results = list(pool.map(lambda i: self._call(stage, pb.RunStageRequest(**base, shard=i), ctx), shards))
        return tuple(m for result in results for m in self._manifests(ctx, result))

    def _call(self, stage: Stage, request, ctx: RunContext):
        from htvs.grpc.gen import stage_pb2_grpc

        stub = stage_pb2_grpc.StageServiceStub(self._channel(stage.service))
        for attempt in range(self.retries + 1):
            result = None
            try:
                for event in stub.RunStage(request, wait_for_ready=attempt > 0):
                    if event.HasField("progress"):
                        p = event.progress
                        ctx.progress(p.step, p.done, p.total if p.HasField("total") else None)
                    else:
                        result = event.result
            except grpc.RpcError as exc:
                if exc.code() in RETRIED and attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise _error(stage.name, exc) from None
            if result is None:
                raise StageFailed(f"stage {stage.name!r}: the {stage.service} service ended the call without a result")
            return result
        raise StageFailed(f"stage {stage.name!r}: no attempt reached the {stage.service} service")  # not reached

    @staticmethod
    def _manifests(ctx: RunContext, result) -> list[StageManifest]:
        return [StageManifest.model_validate(ctx.store.get_json(key)) for key in result.manifest_keys]

    def _channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            if self.tls is None:
                self.tls = ClientTls.from_env()
            self._channels[service] = open_channel(self.addresses[service], self.tls)
        return self._channels[service]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
