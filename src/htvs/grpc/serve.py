"""``serve(name, port, ...)``: load a service's resources once, serve until SIGTERM/SIGINT.

Used by ``htvs serve NAME``. SIGTERM and SIGINT are handled from the start (also while the
resources load, so a container's process 1 stops at once): the server stops taking calls, lets
the calls in flight finish within the grace period (at most :data:`DEFAULT_GRACE_S` by default),
and ``serve`` returns. Heavy resources (prototype sets, the reference hull, the ONNX
ensembles, the conductivity GNN ensemble, the structure generator) are loaded before the server
starts; a missing model fails the start with a clear message instead of a server that cannot
answer.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from htvs.errors import InvalidInput
from htvs.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_WORKERS, HtvsServer, Servicer, create_server
from htvs.grpc.tls import ServerTls

logger = logging.getLogger(__name__)

#: Services ``serve`` can start now.
AVAILABLE_SERVICES = ("substitution", "composition", "structure", "generator", "conductivity", "dft")
#: Services of the funnel that are not served yet.
PLANNED_SERVICES: tuple[str, ...] = ()
#: Seconds from SIGTERM to the end of ``serve``: calls in flight finish within it (then they are
#: cancelled), and background jobs (dft) get what is left. Well inside Kubernetes' 30 s default.
DEFAULT_GRACE_S = 5.0


def check_service_name(name: str) -> str:
    """``name`` if it can be served; otherwise InvalidInput naming what is and is not available."""
    if name in AVAILABLE_SERVICES:
        return name
    if name in PLANNED_SERVICES:
        raise InvalidInput(
            f"service {name!r} is not available yet ({', '.join(PLANNED_SERVICES)} come later); "
            f"available: {', '.join(AVAILABLE_SERVICES)}"
        )
    raise InvalidInput(f"unknown service {name!r}; available: {', '.join(AVAILABLE_SERVICES)}")


def build_servicer(
    name: str,
    *,
    prototype_sources: Sequence[str] = ("bundled",),
    e_form_models: Path | None = None,
    band_gap_models: Path | None = None,
    threads: int | None = 1,
    max_batch_rows: int | None = None,
    conductivity_models: Path | None = None,
    dft_workdir: Path | None = None,
    generator_model: Path | None = None,
    generator_threads: int | None = None,
    generator_device: str | None = None,
) -> Servicer:
    """Load the resources of service ``name`` and return its servicer.

    Args:
        name: ``"substitution"``, ``"composition"``, ``"structure"``, ``"generator"`` (stage 5,
            the torch structure generator), ``"conductivity"`` or ``"dft"`` (stage 7 validation;
            the CHGNet backend).
        prototype_sources: prototype sets the substitution and structure services serve by
            name (each a :func:`~htvs.prototypes.load_prototypes` spec: ``"bundled"``, ``"mp"``,
            a folder).
        e_form_models, band_gap_models: ensemble folders (default: the shipped models).
        threads: onnxruntime intra-op threads per model (default 1: a server's parallelism comes
            from concurrent calls; onnxruntime's own thread pool per call made small batches
            ~10x slower on a busy 2-core machine. None: onnxruntime's default).
        max_batch_rows: most rows per request (None: the servicer's default).
        conductivity_models: conductivity ensemble folder with its ``model_card.json``
            (default: the shipped model).
        dft_workdir: where the validation service keeps its jobs' MD checkpoints (None: a
            temporary folder per job; with a folder, a job submitted again resumes).
        generator_model, generator_threads, generator_device: the generator folder (with
            ``model_card.json`` and ``weights.pt``), torch threads and device (``auto``, ``cpu``,
            ``cuda``, ``cuda:N``); None: ``HTVS_GENERATOR_MODEL`` / ``_THREADS`` / ``_DEVICE``
            (:class:`~htvs.grpc.generator_service.GeneratorSettings`), else the shipped model,
            1 thread, ``auto`` (``cuda`` when torch sees a GPU, else ``cpu``).

    Raises:
        InvalidInput: unknown or not yet available service, a bad generator setting.
        ModelNotReady: a composition, conductivity or generator model is missing; a CUDA
            generator device asked for where torch sees none.
    """
    check_service_name(name)
    if name == "substitution":
        from htvs.grpc.substitution_service import SubstitutionServicer
        from htvs.prototypes import load_prototypes

        sets = {spec: load_prototypes(spec) for spec in prototype_sources}
        limits = {} if max_batch_rows is None else {"max_prototypes": max_batch_rows}
        return SubstitutionServicer(sets, **limits)
    if name == "structure":
        from htvs.grpc.structure_service import StructureServicer
        from htvs.prototypes import load_prototypes

        sets = {spec: load_prototypes(spec) for spec in prototype_sources}
        limits = {} if max_batch_rows is None else {"max_batch_rows": max_batch_rows}
        return StructureServicer(sets, **limits)
    if name == "conductivity":
        from htvs.conductivity.predict import load_ensemble as load_conductivity_ensemble
        from htvs.grpc.conductivity_service import ConductivityServicer

        ensemble = load_conductivity_ensemble(conductivity_models, threads=threads)
        limits = {} if max_batch_rows is None else {"max_batch_rows": max_batch_rows}
        return ConductivityServicer(ensemble, **limits)
    if name == "generator":
        from htvs.grpc.generator_service import (
            GeneratorSettings,
            StructureGeneratorServicer,
            load_for_serving,
        )
        from htvs.generation.device import resolve_device

        settings = GeneratorSettings.from_env()
        device = resolve_device(generator_device if generator_device is not None else settings.device)
        model = generator_model if generator_model is not None else settings.model
        limits = {} if max_batch_rows is None else {"max_formulas": max_batch_rows}
        return StructureGeneratorServicer(
            load_for_serving(model, device), device=device, model_dir=model,
            threads=generator_threads if generator_threads is not None else settings.threads, **limits,
        )
    if name == "dft":
        from htvs.grpc.dft_runner_service import DFTRunnerServicer
        from htvs.thermo import ReferenceHull
        from htvs.validation.backends import load_backend

        return DFTRunnerServicer(ReferenceHull.bundled(), {"mlip": load_backend("mlip", threads=threads)},
                                 workdir=dft_workdir)
    from htvs.composition.ship import load_ensemble
    from htvs.grpc.composition_service import CompositionServicer
    from htvs.thermo import ReferenceHull

    e_form = load_ensemble("e_form", e_form_models, threads)
    band_gap = load_ensemble("band_gap", band_gap_models, threads)
    limits = {} if max_batch_rows is None else {"max_batch_rows": max_batch_rows}
    return CompositionServicer(ReferenceHull.bundled(), e_form, band_gap, **limits)


def build_stage_servicer(
    name: str,
    servicer: Servicer,
    store: str | None,
    *,
    e_form_models: Path | None = None,
    band_gap_models: Path | None = None,
    conductivity_models: Path | None = None,
    **_: object,
):
    """The :class:`~htvs.grpc.stage_service.StageServicer` of service ``name``, sharing the models
    ``servicer`` loaded; ``store`` is the server's store URL (None: RunStage is refused).

    Raises:
        InvalidInput: a malformed store URL. DataNotFound: a bucket or folder that is not there.
    """
    from htvs.campaign.stages import InProcessBackend
    from htvs.grpc.stage_service import StageServicer
    from htvs.store import open_store

    backend, served = InProcessBackend(), {}
    if name == "composition":
        backend = InProcessBackend(_models=(servicer.e_form_model, servicer.band_gap_model), _hull=servicer.hull)
        served = {"composition.e_form_models": e_form_models, "composition.band_gap_models": band_gap_models}
    elif name == "conductivity":
        backend = InProcessBackend(_conductivity=servicer.ensemble)
        served = {"conductivity.models": conductivity_models}
    elif name == "generator":
        from htvs.grpc.generator_service import stage_backend

        backend = stage_backend(servicer)
        served = {"generation.models": servicer.model_dir}
    root = open_store(store) if store else None
    return StageServicer(name, root, backend, served)


def serve(
    name: str,
    port: int,
    metrics_port: int | None = None,
    *,
    host: str = "127.0.0.1",
    metrics_host: str = "127.0.0.1",
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    grace_s: float = DEFAULT_GRACE_S,
    servicer: Servicer | None = None,
    store: str | None = None,
    ready: Callable[[HtvsServer, int], None] | None = None,
    tls: ServerTls | None = None,
    reflection: bool = True,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
    **resources,
) -> None:
    """Serve ``name`` on ``host:port`` until SIGTERM or SIGINT, then stop gracefully.

    Args:
        name: one of :data:`AVAILABLE_SERVICES`.
        port: gRPC port (0: a free one, reported to ``ready`` and in the log).
        metrics_port: Prometheus ``/metrics`` port (None: no endpoint; 0: a free one).
        host: interface of the gRPC port (default loopback; ``0.0.0.0`` or ``[::]`` in a pod).
        metrics_host: interface of the metrics endpoint (default loopback).
        max_workers: worker threads.
        max_message_bytes: largest request/response, bytes.
        grace_s: seconds from the signal to the return: calls in flight finish within it, and
            a servicer's background work (dft) gets what is left.
        servicer: an already built servicer (default: :func:`build_servicer` with ``resources``).
        store: URL of the store the campaign stages of this service read and write
            (``htvs.v1.StageService``; None: ``HTVS_STORE``, and without it RunStage is refused).
        ready: called with ``(server, port)`` once serving (signal handlers are installed).
        tls: certificate, key and optional client CA of the gRPC port (None: plaintext).
        reflection: serve gRPC server reflection.
        health_port: a plaintext port serving only ``grpc.health.v1.Health`` on
            ``health_host`` (for the kubelet's gRPC probe when the gRPC port is TLS; None: none).
        resources: keyword arguments of :func:`build_servicer`.

    Signal handlers are installed only when called from the main thread; elsewhere stop the
    server through ``ready``'s ``server.stop()``. A signal while the resources load ends
    ``serve`` at once, without serving.
    """
    check_service_name(name)
    stop_requested, serving = threading.Event(), threading.Event()
    with _stop_on_signals(stop_requested, serving) as handled:
        try:
            if tls is not None:  # a bad certificate fails the start before minutes of model loading
                tls.credentials()
            if servicer is None:
                logger.info("loading %s (SIGTERM/SIGINT stop it)", name)
                servicer = build_servicer(name, **resources)
            if hasattr(servicer, "max_watch_streams"):  # dft: a Watch stream holds a call thread; half stay free
                servicer.max_watch_streams = min(servicer.max_watch_streams, max(max_workers // 2, 1))
            if store is None:
                from htvs.settings import Settings

                store = Settings.from_env().store
            from htvs.store import open_store

            root = open_store(store) if store else None
            servicer.store = root  # batch calls with a store input read and write it
            stages = build_stage_servicer(name, servicer, root, **resources)
            server, bound = create_server(
                f"{host}:{port}",
                servicer,
                stages,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                max_message_bytes=max_message_bytes,
                max_workers=max_workers,
                tls=tls,
                reflection_enabled=reflection,
                health_address=None if health_port is None else f"{health_host}:{health_port}",
            )
        except _StoppedWhileLoading:
            logger.info("stopped by a signal while loading %s", name)
            return
        serving.set()  # from here a signal only asks for the graceful stop
        try:
            server.start()
            logger.info(
                "serving %s on %s:%d (%s; reflection %s; metrics: %s; health-only port: %s)",
                servicer.service_name,
                host,
                bound,
                "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS"),
                "on" if reflection else "off",
                server.metrics_port if server.metrics_port is not None else "off",
                server.health_port if server.health_port is not None else "off",
            )
            if ready is not None:
                ready(server, bound)
            if handled:
                while not stop_requested.wait(0.2):
                    if server.wait_for_termination(0):
                        break
            else:
                server.wait_for_termination()
        finally:
            deadline = time.monotonic() + grace_s
            logger.info("stopping %s (grace %.1f s)", servicer.service_name, grace_s)
            server.stop(grace_s).wait()
            if hasattr(servicer, "shutdown"):  # background jobs (dft): stop taking work, join workers
                servicer.shutdown(timeout=max(deadline - time.monotonic(), 0.1))


class _StoppedWhileLoading(BaseException):
    """Raised by the signal handler before the server serves: nothing to drain, stop now."""


@contextlib.contextmanager
def _stop_on_signals(stop_requested: threading.Event, serving: threading.Event):
    """While inside, SIGTERM and SIGINT set ``stop_requested`` (and, until ``serving`` is set,
    raise :class:`_StoppedWhileLoading`); main thread only. Yields whether the handlers are
    installed; the previous handlers come back after."""

    def handler(signum, frame) -> None:
        stop_requested.set()
        if not serving.is_set():
            raise _StoppedWhileLoading

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield bool(previous)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
