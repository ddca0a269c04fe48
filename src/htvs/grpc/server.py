"""Shared bootstrap of every htvs gRPC server.

:func:`create_server` builds a ``grpc.Server`` with

* the given servicers (anything with ``service_name`` and ``add_to_server``),
* standard health checking (``grpc.health.v1.Health``), one status per service plus ``""``;
  optionally also on a plaintext, health-only port (for the kubelet's gRPC probe, which cannot
  speak TLS),
* server reflection (so ``grpcurl`` and reflection clients can list and call the services),
  unless switched off,
* plaintext or TLS (optionally mutual TLS) on the service port (:class:`~htvs.grpc.tls.ServerTls`),
* ONE interceptor on the ``htvs.v1`` services that maps project errors to status codes and
  records Prometheus metrics (see :data:`STATUS_OF`),
* explicit send/receive message-size limits,
* a Prometheus endpoint (own registry, ``htvs_`` metrics) when a metrics port is given,

and returns ``(server, port)``. :meth:`HtvsServer.stop` is the graceful stop (health goes
NOT_SERVING, new calls are refused, calls in flight get the grace period).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from htvs.errors import DataNotFound, HTVSError, InvalidInput, ModelNotReady, StageFailed
from htvs.grpc.tls import ServerTls

logger = logging.getLogger(__name__)

#: Default limit on one request or response, bytes (a 10,000-row Predict answer is ~1 MB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Default worker threads of the server.
DEFAULT_MAX_WORKERS = 8
#: Methods whose full name starts with this are intercepted (health and reflection are not).
HTVS_METHOD_PREFIX = "/htvs.v1."
#: Status code of each project error class; the first match in order wins.
STATUS_OF: tuple[tuple[type[HTVSError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (DataNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelNotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (StageFailed, grpc.StatusCode.INTERNAL),
    (HTVSError, grpc.StatusCode.INTERNAL),
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Servicer(Protocol):
    """What :func:`create_server` needs of a servicer."""

    #: Full service name, e.g. ``"htvs.v1.CompositionService"``.
    service_name: str

    def add_to_server(self, server: grpc.Server) -> None:
        """Register with ``server`` (the generated ``add_..._to_server``)."""
        ...


# --------------------------------------------------------------------------- metrics


@dataclass
class _CallRows:
    rows: int = 0
    row_errors: int = 0


_current_call: contextvars.ContextVar[_CallRows | None] = contextvars.ContextVar("htvs_call_rows", default=None)


def report_rows(rows: int, row_errors: int = 0) -> None:
    """Called by a servicer: this call processed ``rows`` rows, ``row_errors`` of them failed.

    The interceptor adds them to ``htvs_rows_processed_total`` / ``htvs_row_errors_total`` with the
    call's service and method; outside an intercepted call this does nothing.
    """
    call = _current_call.get()
    if call is not None:
        call.rows += int(rows)
        call.row_errors += int(row_errors)


class ServerMetrics:
    """The Prometheus metrics of one server, in their own registry.

    * ``htvs_grpc_requests_total{service, method, code}``
    * ``htvs_grpc_request_duration_seconds{service, method}`` (histogram)
    * ``htvs_grpc_requests_in_flight{service}``
    * ``htvs_rows_processed_total{service, method}``, ``htvs_row_errors_total{service, method}``
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("service", "method")
        self.requests = Counter(
            "htvs_grpc_requests", "RPCs handled, by status code.", (*labels, "code"), registry=self.registry
        )
        self.latency = Histogram(
            "htvs_grpc_request_duration_seconds",
            "Wall time of an RPC in the handler, seconds.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "htvs_grpc_requests_in_flight", "RPCs being handled now.", ("service",), registry=self.registry
        )
        self.rows = Counter("htvs_rows_processed", "Batch rows processed.", labels, registry=self.registry)
        self.row_errors = Counter(
            "htvs_row_errors", "Batch rows answered with a row error.", labels, registry=self.registry
        )


# --------------------------------------------------------------------------- interceptor


def check_batch(request, n_rows: int, field: str, max_rows: int) -> None:
    """Refuse (InvalidInput -> INVALID_ARGUMENT) a batch request that is empty or has more than
    ``max_rows`` rows; messages name the field. (Rows read from the store arrive here in chunks
    of at most ``max_rows``: see :mod:`htvs.grpc.store_io`.)"""
    kind = type(request).__name__
    if n_rows == 0:
        raise InvalidInput(f"{kind}.{field} is empty; send 1 to {max_rows} rows")
    if n_rows > max_rows:
        raise InvalidInput(
            f"{kind}.{field} has {n_rows} rows, more than this server's limit of {max_rows}; split the batch"
        )


def stop_if_caller_gone(context) -> None:
    """End the call when nobody waits for its answer, between chunks of a long batch.

    Aborts with DEADLINE_EXCEEDED when the call's deadline has passed and with CANCELLED when the
    caller has gone (cancelled, disconnected); otherwise returns at once (a few microseconds).
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed; the rest of the batch was not computed"
        )
    if not context.is_active():
        context.abort(grpc.StatusCode.CANCELLED, "the caller has gone; the rest of the batch was not computed")


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a project error, or None for any other exception."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return None


#: Longest status message sent, characters: a message echoing a huge value must not exceed the
#: metadata limit (the client would see RESOURCE_EXHAUSTED instead of the real status).
MAX_STATUS_MESSAGE = 2000


def bounded_message(text: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 40] + f"... ({len(text) - limit + 40:,} characters cut)"


def _status_for(exc: BaseException, context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised ``exc`` ends with (for the metrics)."""
    if isinstance(exc, HTVSError):
        return status_of(exc) or grpc.StatusCode.INTERNAL
    set_code = context.code()
    if set_code is not None and set_code is not grpc.StatusCode.OK:
        return set_code
    return grpc.StatusCode.INTERNAL


def _split_method(full_method: str) -> tuple[str, str]:
    """``"/htvs.v1.CompositionService/Predict"`` -> ``("CompositionService", "Predict")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service.rpartition(".")[2], method


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Maps project errors to status codes and records metrics, for the htvs.v1 methods (unary and
    server-streaming; an error raised while a stream is produced ends it with its status).

    * :class:`~htvs.errors.InvalidInput` -> ``INVALID_ARGUMENT`` with the error's message (which
      names the offending value); ``DataNotFound`` -> ``NOT_FOUND``; ``ModelNotReady`` ->
      ``FAILED_PRECONDITION``; ``StageFailed`` -> ``INTERNAL`` with its message.
    * Any other exception -> ``INTERNAL`` with a reference id only; the traceback goes to the
      server log under that id, never to the client.
    * A status the servicer set itself (``context.abort``) is kept.

    Errors never change health: the service stays SERVING.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(HTVS_METHOD_PREFIX):
            return handler
        if handler.request_streaming:
            return handler  # no client-streaming htvs.v1 methods
        service, name = _split_method(method)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, service, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, service, name),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_stream(self, behavior: Callable[[Any, grpc.ServicerContext], Any], service: str, method: str):
        """The same for a server-streaming method: an error raised while iterating is mapped too."""

        def intercepted(request: Any, context: grpc.ServicerContext) -> Any:
            with self._observed(context, service, method, count_rows=False):
                yield from behavior(request, context)

        return intercepted

    def _wrap(self, behavior: Callable[[Any, grpc.ServicerContext], Any], service: str, method: str):
        def intercepted(request: Any, context: grpc.ServicerContext) -> Any:
            with self._observed(context, service, method, count_rows=True):
                return behavior(request, context)

        return intercepted

    @contextlib.contextmanager
    def _observed(self, context: grpc.ServicerContext, service: str, method: str, count_rows: bool):
        """One call's metrics, and its errors turned into statuses (see the class docstring)."""
        metrics = self._metrics
        code = grpc.StatusCode.OK
        call = _CallRows()
        token = _current_call.set(call) if count_rows else None
        in_flight = metrics.in_flight.labels(service)
        in_flight.inc()
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code = _status_for(exc, context)
            self._abort(exc, context, service, method)
        finally:
            metrics.latency.labels(service, method).observe(time.perf_counter() - start)
            metrics.requests.labels(service, method, code.name).inc()
            in_flight.dec()
            if call.rows:
                metrics.rows.labels(service, method).inc(call.rows)
            if call.row_errors:
                metrics.row_errors.labels(service, method).inc(call.row_errors)
            if token is not None:
                _current_call.reset(token)

    @staticmethod
    def _abort(exc: Exception, context: grpc.ServicerContext, service: str, method: str) -> None:
        """Abort the call with the status of ``exc`` (see the class docstring); it always raises.

        A status the servicer set itself (``context.abort``) is kept: its exception is re-raised.
        """
        if isinstance(exc, HTVSError):
            code = status_of(exc) or grpc.StatusCode.INTERNAL
            if code is grpc.StatusCode.INTERNAL:
                logger.error("%s/%s failed: %s", service, method, exc, exc_info=exc)
            context.abort(code, bounded_message(str(exc)))
        set_code = context.code()
        if set_code is not None and set_code is not grpc.StatusCode.OK:
            raise exc
        ref = uuid.uuid4().hex[:12]
        logger.error("%s/%s: unexpected error (ref %s)", service, method, ref, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {service}/{method} (ref {ref}); see the server log")


# --------------------------------------------------------------------------- server


class HtvsServer:
    """A created (not yet started) server: the ``grpc.Server`` plus health and metrics.

    Attributes:
        grpc_server: the underlying ``grpc.Server``.
        health: the health servicer (statuses per service name, ``""`` for the whole server).
        service_names: full names of the htvs services registered.
        metrics: the Prometheus metrics (``metrics.registry`` is this server's own registry).
        metrics_port: port of the Prometheus endpoint once started (None: no endpoint).
        health_server: the plaintext health-only ``grpc.Server`` (None: health on the service
            port only); ``health_port`` its port.
    """

    def __init__(
        self,
        grpc_server: grpc.Server,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        metrics: ServerMetrics,
        metrics_address: tuple[str, int] | None,
        health_server: grpc.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.health = health_servicer
        self.service_names = tuple(service_names)
        self.metrics = metrics
        self._metrics_address = metrics_address
        self._metrics_httpd = None
        self.metrics_port: int | None = None
        self._stopping = threading.Lock()
        self.health_server = health_server
        self.health_port = health_port

    def start(self) -> None:
        """Start serving: the Prometheus endpoint, the gRPC server, then health SERVING."""
        if self._metrics_address is not None:
            from prometheus_client import start_http_server

            host, port = self._metrics_address
            try:
                self._metrics_httpd, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
            except OSError as exc:
                raise StageFailed(f"cannot serve metrics on {host}:{port}: {exc}") from exc
            self.metrics_port = int(self._metrics_httpd.server_port)
        self.grpc_server.start()
        if self.health_server is not None:
            self.health_server.start()
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> threading.Event:
        """Graceful stop: health NOT_SERVING, refuse new calls, let calls in flight finish.

        Args:
            grace: seconds calls in flight may still run (None: abort them now).

        Returns:
            An event set once the server has fully stopped.
        """
        with self._stopping:
            self.health.enter_graceful_shutdown()
            done = self.grpc_server.stop(grace)
            if self.health_server is not None:  # probes now fail: the pod is going away
                health_server, self.health_server = self.health_server, None
                health_server.stop(grace)
            if self._metrics_httpd is not None:
                httpd, self._metrics_httpd = self._metrics_httpd, None

                def close_metrics() -> None:
                    done.wait()
                    httpd.shutdown()
                    httpd.server_close()

                threading.Thread(target=close_metrics, name="htvs-metrics-stop", daemon=True).start()
            return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` seconds); True if it stopped."""
        timed_out = self.grpc_server.wait_for_termination(timeout)
        return not timed_out


def _check_port(what: str, port: object) -> int:
    """``port`` if it is a TCP port number (0: a free one); InvalidInput naming it otherwise."""
    try:
        number = int(str(port))
    except ValueError:
        raise InvalidInput(f"{what} {str(port)[:40]!r} is not a number; give 0..65535") from None
    if not 0 <= number <= 65535:
        raise InvalidInput(f"{what} {number} is outside 0..65535 (0 picks a free port)")
    return number


def create_server(
    address: str,
    *servicers: Servicer,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_concurrent_rpcs: int | None = None,
    tls: ServerTls | None = None,
    reflection_enabled: bool = True,
    health_address: str | None = None,
) -> tuple[HtvsServer, int]:
    """Build a server for ``servicers`` bound to ``address``; start it with ``.start()``.

    Args:
        address: ``"host:port"``; port 0 picks a free port (returned).
        servicers: the htvs servicers to serve.
        metrics_port: port of the Prometheus ``/metrics`` endpoint (0: a free port, see
            ``server.metrics_port`` after start; None: no endpoint).
        metrics_host: interface of the metrics endpoint.
        max_message_bytes: largest request and response, bytes (bigger ones fail with
            RESOURCE_EXHAUSTED before reaching a servicer).
        max_workers: worker threads handling calls.
        max_concurrent_rpcs: calls accepted at once beyond which new ones get
            RESOURCE_EXHAUSTED (None: no limit, they queue).
        tls: certificate, key and optional client CA of the service port (None: plaintext).
            With a client CA, clients must present a certificate it signed (mutual TLS).
        reflection_enabled: serve ``grpc.reflection`` (lists the services and their messages).
        health_address: ``"host:port"`` of a plaintext port serving ``grpc.health.v1.Health``
            only (port 0: a free one, see ``server.health_port``; None: no such port). It shares
            the statuses of the service port; nothing else is reachable through it.

    Returns:
        ``(server, port)``: the :class:`HtvsServer` and the port bound.

    Raises:
        InvalidInput: a bad limit, an address that cannot be bound, a TLS file that is missing,
            unreadable or not PEM (the message names it).
    """
    if not servicers:
        raise InvalidInput("create_server needs at least one servicer")
    _check_port("gRPC port", address.rpartition(":")[2])
    if metrics_port is not None:
        _check_port("metrics port", metrics_port)
    if health_address is not None:
        _check_port("health port", health_address.rpartition(":")[2])
    credentials = tls.credentials() if tls is not None else None  # files read (and checked) before binding
    if max_message_bytes < 1024:
        raise InvalidInput(f"max_message_bytes must be >= 1024, got {max_message_bytes}")
    if max_workers < 1:
        raise InvalidInput(f"max_workers must be >= 1, got {max_workers}")
    metrics = ServerMetrics()
    options = [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="htvs-grpc"),
        interceptors=[DomainErrorInterceptor(metrics)],
        options=options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = []
    for servicer in servicers:
        servicer.add_to_server(server)
        names.append(servicer.service_name)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="htvs-health"),
    )
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
    port = _bind(server, address, "gRPC", credentials)
    health_server, health_port = None, None
    if health_address is not None:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="htvs-health-port"),
            options=[("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, health_address, "health")
    metrics_address = None if metrics_port is None else (metrics_host, int(metrics_port))
    return HtvsServer(server, health_servicer, names, metrics, metrics_address, health_server, health_port), port


def _bind(server: grpc.Server, address: str, what: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``server`` to ``address`` (TLS with ``credentials``); the port bound, or InvalidInput."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise InvalidInput(f"cannot bind {what} address {address!r}: {exc}") from exc
    if port == 0:
        raise InvalidInput(f"cannot bind {what} address {address!r}")
    return port
