"""``htvs.v1.DFTRunnerService``: stage 7 (validate) as jobs in a background worker pool.

* Submit checks the CIF and the settings at once (INVALID_ARGUMENT naming the value), then
  queues the job; at most ``max_queue`` jobs may be queued or running (RESOURCE_EXHAUSTED).
* Jobs run :func:`htvs.validation.validate_structure` on ``max_workers`` daemon worker threads
  (default 1: an MD run keeps the cores busy). Each job reports progress through the stage's
  callback; the cancellation hook is the job's event, checked between MD chunks. Daemon
  threads never hold up the process after the server stops (a killed job's checkpoints are
  atomic, so with a workdir it resumes when submitted again); :meth:`shutdown` cancels the
  jobs cleanly.
* Watch streams the job's progress (the latest report each time it changes; reports that
  arrive while the client reads may be coalesced) and ends after the terminal state. GetJob
  polls. GetResult answers FAILED_PRECONDITION until the job has SUCCEEDED.
* Results stay in memory (the oldest finished jobs beyond ``max_finished_jobs`` are
  forgotten) and, with a ``workdir``, in ``workdir/<job id>/`` with the checkpoints.

The interceptor of :mod:`htvs.grpc.server` maps errors of the unary methods; Watch is
server-streaming, which it passes through, so Watch sets its own status codes.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from htvs.errors import DataNotFound, HTVSError, InvalidInput
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import dft_runner_pb2 as pb
from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc
from htvs.thermo import ReferenceHull
from htvs.validation.config import AnalysisConfig, MDConfig, RelaxConfig, SupercellConfig, ValidationConfig
from htvs.validation.inputs import make_supercell, structure_from_cif_text
from htvs.validation.records import ValidationCancelled, ValidationProgress, ValidationResult

logger = logging.getLogger(__name__)

#: Default most jobs queued or running at once.
DEFAULT_MAX_QUEUE = 8
#: Default finished jobs kept in memory.
DEFAULT_MAX_FINISHED = 256
#: Largest CIF accepted, characters.
MAX_CIF_CHARS = 2_000_000
_TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
_WATCH_POLL_S = 0.5


def config_from_proto(settings: pb.ValidationSettings) -> ValidationConfig:
    """The stage's settings; unset fields take the defaults (the paper's protocol).

    Raises:
        InvalidInput: a value out of range, named with its value.
    """

    def given(name: str) -> dict:
        return {name: getattr(settings, name)} if settings.HasField(name) else {}

    relax_args: dict = {}
    if settings.HasField("fmax_ev_per_angstrom"):
        relax_args["fmax_ev_per_angstrom"] = settings.fmax_ev_per_angstrom
    if settings.HasField("max_relax_steps"):
        relax_args["max_steps"] = settings.max_relax_steps
    relax = RelaxConfig(**relax_args)
    supercell_args = given("min_atoms") | given("max_atoms")
    if settings.HasField("min_supercell_length_angstrom"):
        supercell_args["min_length_angstrom"] = settings.min_supercell_length_angstrom
    supercell = SupercellConfig(**supercell_args)
    md_args: dict = {}
    if settings.temperatures_k:
        md_args["temperatures_k"] = tuple(settings.temperatures_k)
    for name in ("timestep_fs", "heat_ps", "equilibrate_ps", "production_ps", "record_every_steps",
                 "checkpoint_every_steps", "seed"):
        md_args |= given(name)
    analysis = AnalysisConfig(**given("smoothing"))
    return ValidationConfig(
        backend=settings.backend if settings.HasField("backend") else "mlip",
        relax=relax,
        supercell=supercell,
        md=MDConfig(**md_args),
        analysis=analysis,
    )


def result_to_proto(result: ValidationResult) -> pb.ValidationResult:
    """The ValidationResult message of a stage result (unset fields: not computed)."""
    doc = result.to_dict()
    fields: dict = {}
    for proto_name, value in (
        ("e_form_ev_per_atom", doc["e_form"]),
        ("e_above_hull_ev_per_atom", doc["e_above_hull"]),
        ("phi_red_v", doc["phi_red"]),
        ("phi_ox_v", doc["phi_ox"]),
        ("activation_energy_ev", doc["activation_energy_eV"]),
        ("activation_energy_std_ev", doc["activation_energy_std_eV"]),
        ("sigma_300k_mean_ms_cm", doc["sigma_300K_mS_cm"]["mean"]),
        ("sigma_300k_low_ms_cm", doc["sigma_300K_mS_cm"]["low"]),
        ("sigma_300k_high_ms_cm", doc["sigma_300K_mS_cm"]["high"]),
        ("sigma_300k_std_log10", doc["sigma_300K_mS_cm"]["std_log10"]),
    ):
        if value is not None:
            fields[proto_name] = value
    diffusivity = []
    for temperature, values in doc["diffusivity"].items():
        entry = pb.Diffusivity(temperature_k=float(temperature), diffusivity_cm2_s=values["mean"] or 0.0)
        if values["std"] is not None:
            entry.diffusivity_std_cm2_s = values["std"]
        diffusivity.append(entry)
    return pb.ValidationResult(
        id=doc["id"],
        formula=doc["formula"],
        backend=doc["backend"],
        decomposition=[
            common_pb2.PhaseFraction(formula=d["formula"], fraction=d["fraction"]) for d in doc["decomposition"]
        ],
        diffusivity=diffusivity,
        supercell_atoms=int(doc["supercell_atoms"]),
        relax_converged=bool(doc["relax_converged"]),
        notes=list(doc["notes"]),
        result_json=json.dumps(doc, allow_nan=False),
        **fields,
    )


@dataclass
class _Job:
    """A job and its synchronisation (the condition guards every mutable field)."""

    job_id: str
    id: str
    structure: object
    config: ValidationConfig
    state: int = pb.JOB_STATE_QUEUED
    progress: pb.JobProgress | None = None
    version: int = 0
    error: str = ""
    error_kind: str = ""
    result: ValidationResult | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def report(self, state: int, stage: str, message: str, **extra) -> None:
        with self.changed:
            if self.state in _TERMINAL and state not in _TERMINAL:
                return  # a late report of a job already cancelled or finished
            self.state = state
            self.progress = pb.JobProgress(job_id=self.job_id, state=state, stage=stage, message=message, **extra)
            self.version += 1
            self.changed.notify_all()

    def message(self) -> pb.Job:
        with self.changed:
            job = pb.Job(job_id=self.job_id, id=self.id, state=self.state, error=self.error,
                         error_kind=self.error_kind, submitted_unix_s=self.submitted)
            if self.progress is not None:
                job.progress.CopyFrom(self.progress)
            if self.started is not None:
                job.started_unix_s = self.started
            if self.finished is not None:
                job.finished_unix_s = self.finished
            return job


class DFTRunnerServicer(pb_grpc.DFTRunnerServiceServicer):
    """Runs :func:`~htvs.validation.validate_structure` jobs in a background pool.

    Args:
        hull: the reference hull (``ReferenceHull.bundled()``), loaded once.
        backends: already loaded backends by name (e.g. ``{"mlip": MlipBackend()}``); a name
            not given is loaded on first use with ``backend_loader``.
        backend_loader: ``loader(name) -> Backend`` (default
            :func:`htvs.validation.load_backend`).
        workdir: directory of each job's checkpoints and result (None: memory only).
        max_workers: jobs running at once.
        max_queue: jobs queued or running at once; more are refused.
        max_finished_jobs: finished jobs kept in memory.
    """

    service_name = pb.DESCRIPTOR.services_by_name["DFTRunnerService"].full_name
    #: The server's store, for batch calls whose rows come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        hull: ReferenceHull,
        backends: Mapping[str, object] | None = None,
        *,
        backend_loader: Callable[[str], object] | None = None,
        workdir: str | Path | None = None,
        max_workers: int = 1,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_finished_jobs: int = DEFAULT_MAX_FINISHED,
    ) -> None:
        if max_workers < 1 or max_queue < 1 or max_finished_jobs < 1:
            raise InvalidInput(
                f"max_workers, max_queue and max_finished_jobs must be >= 1, got "
                f"{max_workers}, {max_queue}, {max_finished_jobs}"
            )
        self.hull = hull
        self._backends = dict(backends or {})
        self._loader = backend_loader
        self.workdir = Path(workdir) if workdir is not None else None
        self.max_queue = int(max_queue)
        self.max_finished_jobs = int(max_finished_jobs)
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work, name=f"htvs-dft-job-{i}", daemon=True) for i in range(max_workers)
        ]
        for worker in self._workers:
            worker.start()

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_DFTRunnerServiceServicer_to_server(self, server)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Cancel every job (running ones stop at their next MD chunk) and stop the workers."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job)

    # -- jobs -------------------------------------------------------------------------------

    def _backend(self, name: str):
        with self._lock:
            backend = self._backends.get(name)
        if backend is not None:
            return backend
        if self._loader is None:
            from htvs.validation.backends import load_backend

            backend = load_backend(name)
        else:
            backend = self._loader(name)
        with self._lock:
            return self._backends.setdefault(name, backend)

    def _job(self, job_id: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise DataNotFound(f"no job {job_id!r} on this server")
        return job

    def _active(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING))

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in _TERMINAL]
        for key in finished[: max(0, len(finished) - self.max_finished_jobs)]:
            del self._jobs[key]

    def _run(self, job: _Job) -> None:
        from htvs.validation.pipeline import validate_structure

        if job.cancel.is_set():
            self._finish(job, pb.JOB_STATE_CANCELLED, "cancelled before it started", "ValidationCancelled")
            return
        with job.changed:
            job.started = time.time()
        job.report(pb.JOB_STATE_RUNNING, "relax", "starting")

        def progress(report: ValidationProgress) -> None:
            extra = {"phase": report.phase, "step": report.step, "total_steps": report.total_steps,
                     "fraction": report.fraction}
            if report.temperature_k is not None:
                extra["temperature_k"] = report.temperature_k
            job.report(pb.JOB_STATE_RUNNING, report.stage, report.message, **extra)

        try:
            backend = self._backend(job.config.backend)
            workdir = self.workdir / job.job_id if self.workdir is not None else None
            result = validate_structure(
                job.structure,  # type: ignore[arg-type]
                job.config,
                backend,  # type: ignore[arg-type]
                self.hull,
                structure_id=job.id,
                workdir=workdir,
                progress=progress,
                should_stop=job.cancel.is_set,
            )
        except ValidationCancelled as exc:
            self._finish(job, pb.JOB_STATE_CANCELLED, str(exc), type(exc).__name__)
        except HTVSError as exc:
            self._finish(job, pb.JOB_STATE_FAILED, str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a job must always reach a terminal state
            ref = uuid.uuid4().hex[:12]
            logger.error("job %s failed unexpectedly (ref %s)", job.job_id, ref, exc_info=exc)
            self._finish(job, pb.JOB_STATE_FAILED, f"internal error (ref {ref}); see the server log", "InternalError")
        else:
            with job.changed:
                job.result = result
            sigma = result.conductivity.sigma_mean_mS_cm if result.conductivity else float("nan")
            self._finish(job, pb.JOB_STATE_SUCCEEDED, f"sigma(300 K) = {sigma:.3g} mS/cm", "")

    def _finish(self, job: _Job, state: int, message: str, kind: str) -> None:
        with job.changed:
            job.finished = time.time()
            if state != pb.JOB_STATE_SUCCEEDED:
                job.error, job.error_kind = message, kind
        stage = pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()
        job.report(state, stage, message, fraction=1.0 if state == pb.JOB_STATE_SUCCEEDED else
                   (job.progress.fraction if job.progress is not None else 0.0))

    # -- RPCs -------------------------------------------------------------------------------

    def _cif_from_store(self, request: pb.SubmitRequest, context) -> str:
        """The CIF text at ``request.input`` in the server's store."""
        from htvs.store import store_within, validate_key

        if request.cif:
            raise InvalidInput("SubmitRequest: send the CIF inline (cif) or input, not both")
        if self.store is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "Submit: this server has no store; start it with --store URL or HTVS_STORE")
        key = validate_key(request.input.key)
        data = store_within(self.store, request.input.store_url).get_bytes(key)
        if len(data) > MAX_CIF_CHARS:
            raise InvalidInput(f"input {key!r} has {len(data)} bytes, more than {MAX_CIF_CHARS}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {key!r} is not UTF-8 CIF text") from None

    def Submit(self, request: pb.SubmitRequest, context) -> pb.SubmitResponse:
        cif = request.cif
        if request.HasField("input"):
            cif = self._cif_from_store(request, context)
        if len(cif) > MAX_CIF_CHARS:
            raise InvalidInput(f"SubmitRequest.cif has {len(cif)} characters, more than {MAX_CIF_CHARS}")
        name = request.id or "structure"
        config = config_from_proto(request.settings)
        structure = structure_from_cif_text(cif, name)
        make_supercell(structure, config.supercell)  # refuse an oversized MD cell now, not later
        job = _Job(job_id=uuid.uuid4().hex, id=name, structure=structure, config=config)
        with self._lock:
            if self._active() >= self.max_queue:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.max_queue} jobs are queued or running; retry later",
                )
            self._jobs[job.job_id] = job
            self._forget_old()
        job.report(pb.JOB_STATE_QUEUED, "queued", f"queued {name} ({structure.composition.reduced_formula})")
        self._queue.put(job)
        return pb.SubmitResponse(job_id=job.job_id, state=pb.JOB_STATE_QUEUED)

    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return self._job(request.job_id).message()

    def GetResult(self, request: pb.GetResultRequest, context) -> pb.GetResultResponse:
        job = self._job(request.job_id)
        message = job.message()
        with job.changed:
            result = job.result
        if result is None:
            state = pb.JobState.Name(message.state)
            detail = f": {message.error}" if message.error else ""
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {request.job_id} is {state}{detail}")
        return pb.GetResultResponse(job=message, result=result_to_proto(result))

    def Cancel(self, request: pb.CancelRequest, context) -> pb.Job:
        job = self._job(request.job_id)
        job.cancel.set()
        with job.changed:
            queued = job.state == pb.JOB_STATE_QUEUED
        if queued:
            self._finish(job, pb.JOB_STATE_CANCELLED, "cancelled before it started", "ValidationCancelled")
        return job.message()

    def Watch(self, request: pb.WatchRequest, context):
        with self._lock:
            job = self._jobs.get(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r} on this server")
        seen = -1
        while context.is_active():
            with job.changed:
                job.changed.wait_for(lambda last=seen: job.version != last, timeout=_WATCH_POLL_S)
                if job.version == seen:
                    continue
                seen = job.version
                snapshot = pb.JobProgress()
                snapshot.CopyFrom(job.progress)
                done = job.state in _TERMINAL
            yield snapshot
            if done:
                return
