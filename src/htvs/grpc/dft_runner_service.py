"""``htvs.v1.DFTRunnerService``: stage 7 (validate) as jobs in a background worker pool.

The server also hosts, through its ``htvs.v1.StageService``, the campaign stages whose service is
``"dft"`` (:func:`htvs.grpc.stage_service.hosted_stages`): ``relax`` (CHGNet relaxation and
E_hull on the CHGNet hull, :mod:`htvs.relax`) and ``validate``; both load CHGNet once per process
(:func:`htvs.validation.mlip.shared_chgnet`).

* Submit checks the CIF and the settings at once (INVALID_ARGUMENT naming the value), then
  queues the job; at most ``max_queue`` jobs may be queued or running (RESOURCE_EXHAUSTED).
* Jobs run :func:`htvs.validation.validate_structure` on ``max_workers`` daemon worker threads
  (default 1: an MD run keeps the cores busy). Each job reports progress through the stage's
  callback; the cancellation hook is the job's event (and the servicer's shutdown), checked
  between MD chunks.
* Watch streams the job's progress (the latest report each time it changes; reports that
  arrive while the client reads may be coalesced) and ends after the terminal state, or after
  ``max_watch_s`` with the current state (the client watches again). Each open stream holds one
  of the server's call threads, so at most ``max_watch_streams`` are open at once (keep it
  below the server's ``max_workers``); more are refused with RESOURCE_EXHAUSTED, so that
  GetJob and the health check always find a free thread. GetJob polls. GetResult answers
  FAILED_PRECONDITION until the job has SUCCEEDED.
* A job id is 32 lowercase hex digits (what Submit answers); anything else is
  INVALID_ARGUMENT, an unknown one NOT_FOUND. Every value echoed in a message is bounded
  (:func:`htvs.errors.shown`).
* Finished jobs stay in memory (the oldest beyond ``max_finished_jobs`` are forgotten).
* With a ``workdir`` every job survives a restart: ``workdir/<job id>/job.json`` holds the
  structure (pymatgen JSON), the settings, the state and the times, written atomically at
  each change of state, next to the pipeline's checkpoints and ``result.json``. A servicer
  started on the same workdir re-queues the jobs that were queued or running (their MD resumes
  from its checkpoints) and reloads the most recent ``max_finished_jobs`` finished ones, whose
  results GetResult answers again. :meth:`shutdown` stops the workers: running jobs stop at
  their next MD chunk and stay queued on disk; without a workdir they are cancelled.

The interceptor of :mod:`htvs.grpc.server` maps errors of every method, Watch included.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import json_format

from htvs.atomic import write_json_atomic
from htvs.errors import DataNotFound, HTVSError, InvalidInput, shown
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import dft_runner_pb2 as pb
from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc
from htvs.prototypes.readers import structure_from_json
from htvs.thermo import ReferenceHull
from htvs.validation.config import AnalysisConfig, MDConfig, RelaxConfig, SupercellConfig, ValidationConfig
from htvs.validation.inputs import structure_from_cif_text, supercell_matrix
from htvs.validation.records import ValidationCancelled, ValidationProgress

logger = logging.getLogger(__name__)

#: Default most jobs queued or running at once.
DEFAULT_MAX_QUEUE = 8
#: Default finished jobs kept in memory.
DEFAULT_MAX_FINISHED = 256
#: Default most Watch streams open at once (half the server's default 8 call threads).
DEFAULT_MAX_WATCH_STREAMS = 4
#: Default longest Watch stream, s; it then ends with the current state and the client watches again.
DEFAULT_MAX_WATCH_S = 60.0
#: Largest CIF accepted, characters.
MAX_CIF_CHARS = 2_000_000
#: Longest ``SubmitRequest.id``, characters.
MAX_ID_CHARS = 256
#: The job's record in ``workdir/<job id>/``.
JOB_FILE = "job.json"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
_ACTIVE = frozenset({pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING})
_WATCH_POLL_S = 0.5


def check_job_id(job_id: str) -> str:
    """``job_id`` if it has the shape of a job id (32 lowercase hex digits), else InvalidInput."""
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidInput(f"job_id {shown(job_id)} is not a job id: Submit answers 32 lowercase hex digits")
    return job_id


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


def result_to_proto(doc: Mapping) -> pb.ValidationResult:
    """The ValidationResult message of a stage result's JSON document (``ValidationResult.to_dict()``,
    the pipeline's ``result.json``); unset fields: not computed."""
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
    settings: pb.ValidationSettings
    config: ValidationConfig | None
    state: int = pb.JOB_STATE_QUEUED
    progress: pb.JobProgress | None = None
    version: int = 0
    error: str = ""
    error_kind: str = ""
    result: dict | None = None  # the result's JSON document (ValidationResult.to_dict())
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

    def record(self) -> dict:
        """The job's ``job.json`` document (what a restarted servicer needs to resume it)."""
        with self.changed:
            return {
                "job_id": self.job_id,
                "id": self.id,
                "state": pb.JobState.Name(self.state),
                "error": self.error,
                "error_kind": self.error_kind,
                "submitted": self.submitted,
                "started": self.started,
                "finished": self.finished,
                "progress": json_format.MessageToDict(self.progress, preserving_proto_field_name=True)
                if self.progress is not None else None,
                "settings": json_format.MessageToDict(self.settings, preserving_proto_field_name=True),
                "structure": self.structure.as_dict(),  # type: ignore[attr-defined]
            }


def _sigma_message(result: Mapping) -> str:
    """The final report of a SUCCEEDED job."""
    sigma = result["sigma_300K_mS_cm"]["mean"]
    return f"sigma(300 K) = {sigma if sigma is not None else float('nan'):.3g} mS/cm"


class DFTRunnerServicer(pb_grpc.DFTRunnerServiceServicer):
    """Runs :func:`~htvs.validation.validate_structure` jobs in a background pool.

    Args:
        hull: the reference hull (``ReferenceHull.bundled()``), loaded once.
        backends: already loaded backends by name (e.g. ``{"mlip": MlipBackend()}``); a name
            not given is loaded on first use with ``backend_loader``.
        backend_loader: ``loader(name) -> Backend`` (default
            :func:`htvs.validation.load_backend`).
        workdir: directory of each job's record, checkpoints and result (None: memory only);
            the jobs it holds are resumed (see the module docstring).
        max_workers: jobs running at once.
        max_queue: jobs queued or running at once; more are refused.
        max_finished_jobs: finished jobs kept in memory.
        max_watch_streams: Watch streams open at once (0: Watch always refused; poll GetJob);
            keep it below the server's call threads. Settable after construction.
        max_watch_s: longest Watch stream, s.
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
        max_watch_streams: int = DEFAULT_MAX_WATCH_STREAMS,
        max_watch_s: float = DEFAULT_MAX_WATCH_S,
    ) -> None:
        if max_workers < 1 or max_queue < 1 or max_finished_jobs < 1:
            raise InvalidInput(
                f"max_workers, max_queue and max_finished_jobs must be >= 1, got "
                f"{max_workers}, {max_queue}, {max_finished_jobs}"
            )
        if max_watch_streams < 0:
            raise InvalidInput(f"max_watch_streams must be >= 0, got {max_watch_streams}")
        if not (isinstance(max_watch_s, int | float) and math.isfinite(max_watch_s) and max_watch_s > 0):
            raise InvalidInput(f"max_watch_s must be a finite number of seconds > 0, got {max_watch_s!r}")
        self.hull = hull
        self._backends = dict(backends or {})
        self._loader = backend_loader
        self.workdir = Path(workdir) if workdir is not None else None
        self.max_queue = int(max_queue)
        self.max_finished_jobs = int(max_finished_jobs)
        self.max_watch_streams = int(max_watch_streams)
        self.max_watch_s = float(max_watch_s)
        self._watching = 0
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._restore()
        self._workers = [
            threading.Thread(target=self._work, name=f"htvs-dft-job-{i}", daemon=True) for i in range(max_workers)
        ]
        for worker in self._workers:
            worker.start()

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_DFTRunnerServiceServicer_to_server(self, server)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop the workers; running jobs stop at their next MD chunk.

        With a workdir the queued and running jobs stay queued on disk and resume when a
        servicer starts on it again; without one they are cancelled.
        """
        self._stopping.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)
        if self.workdir is None:
            with self._lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                self._finish(job, pb.JOB_STATE_CANCELLED, "the server stopped before the job finished",
                             "ValidationCancelled")

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                return
            self._run(job)

    # -- persistence ------------------------------------------------------------------------

    def _save(self, job: _Job) -> None:
        """Write the job's record to ``workdir/<job id>/job.json`` (nothing without a workdir).

        Raises:
            OSError: the record cannot be written.
        """
        if self.workdir is None:
            return
        folder = self.workdir / job.job_id
        folder.mkdir(parents=True, exist_ok=True)
        with job.changed:  # one writer at a time: a later state never loses to an earlier one
            write_json_atomic(job.record(), folder / JOB_FILE)

    def _save_or_log(self, job: _Job) -> None:
        """:meth:`_save` from a worker: a failed write is logged, the job goes on."""
        try:
            self._save(job)
        except OSError as exc:
            logger.warning("cannot record job %s in %s: %s", job.job_id, self.workdir, exc)

    def _restore(self) -> None:
        """Load the jobs of the workdir: re-queue the unfinished ones, keep the recent finished ones."""
        if self.workdir is None or not self.workdir.is_dir():
            return
        jobs = []
        for path in sorted(self.workdir.glob(f"*/{JOB_FILE}")):
            if not _JOB_ID.fullmatch(path.parent.name):
                continue
            try:
                jobs.append(self._load(path))
            except (OSError, ValueError, KeyError, TypeError, json_format.Error) as exc:
                logger.warning("not resuming job %s: unreadable %s (%s)", path.parent.name, JOB_FILE, exc)
        jobs.sort(key=lambda j: j.submitted)
        with self._lock:
            for job in jobs:
                self._jobs[job.job_id] = job
            self._forget_old()
            kept = list(self._jobs.values())
        for job in kept:
            if job.state == pb.JOB_STATE_SUCCEEDED:
                self._reload_result(job)
            elif job.state == pb.JOB_STATE_QUEUED:
                self._queue.put(job)
        if kept:
            queued = sum(1 for j in kept if j.state == pb.JOB_STATE_QUEUED)
            logger.info("work directory %s: %d job(s) queued again, %d finished ones reloaded", self.workdir,
                        queued, len(kept) - queued)

    def _load(self, path: Path) -> _Job:
        """The job recorded at ``path`` (a ``job.json``), queued again if it had not finished."""
        doc = json.loads(path.read_text(encoding="utf-8"))
        job_id = path.parent.name
        if doc["job_id"] != job_id:
            raise ValueError(f"it names job {shown(doc['job_id'])}")
        settings = json_format.ParseDict(doc["settings"], pb.ValidationSettings())
        job = _Job(
            job_id=job_id,
            id=str(doc["id"]),
            structure=structure_from_json(doc["structure"]),
            settings=settings,
            config=None,
            state=pb.JobState.Value(doc["state"]),
            error=str(doc["error"]),
            error_kind=str(doc["error_kind"]),
            submitted=float(doc["submitted"]),
            started=None if doc["started"] is None else float(doc["started"]),
            finished=None if doc["finished"] is None else float(doc["finished"]),
        )
        if doc["progress"] is not None:
            job.progress = json_format.ParseDict(doc["progress"], pb.JobProgress())
        job.version = 1
        if job.state in _ACTIVE:
            was_running = job.state == pb.JOB_STATE_RUNNING
            try:
                job.config = config_from_proto(settings)
            except InvalidInput as exc:
                self._finish(job, pb.JOB_STATE_FAILED, f"not resumed after a restart: {exc}", type(exc).__name__)
                return job
            job.started = None
            resumes = "; it resumes from its checkpoints" if was_running else ""
            job.report(pb.JOB_STATE_QUEUED, "queued", f"queued again after a server restart{resumes}",
                       fraction=job.progress.fraction if job.progress is not None else 0.0)
        return job

    def _reload_result(self, job: _Job) -> None:
        """Read the result of a SUCCEEDED job back from its ``result.json``; if it is gone, the
        job is recorded FAILED saying so."""
        from htvs.validation.pipeline import RESULT_FILE

        path = self.workdir / job.job_id / RESULT_FILE  # type: ignore[operator]
        try:
            job.result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            job.error, job.error_kind = f"its {RESULT_FILE} is missing or unreadable ({exc})", "DataNotFound"
            job.report(pb.JOB_STATE_FAILED, "failed", job.error)
            self._save_or_log(job)

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
        check_job_id(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise DataNotFound(f"no job {job_id} on this server")
        return job

    def _active(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state in _ACTIVE)

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in _TERMINAL]
        for key in finished[: max(0, len(finished) - self.max_finished_jobs)]:
            del self._jobs[key]

    def _run(self, job: _Job) -> None:
        from htvs.validation.pipeline import validate_structure

        with job.changed:
            if job.state != pb.JOB_STATE_QUEUED:
                return  # cancelled while it was queued
            job.started = time.time()
        if job.cancel.is_set():
            self._finish(job, pb.JOB_STATE_CANCELLED, "cancelled before it started", "ValidationCancelled")
            return
        job.report(pb.JOB_STATE_RUNNING, "relax", "starting")
        self._save_or_log(job)

        def progress(report: ValidationProgress) -> None:
            extra = {"phase": report.phase, "step": report.step, "total_steps": report.total_steps,
                     "fraction": report.fraction}
            if report.temperature_k is not None:
                extra["temperature_k"] = report.temperature_k
            job.report(pb.JOB_STATE_RUNNING, report.stage, report.message, **extra)

        def should_stop() -> bool:
            return job.cancel.is_set() or self._stopping.is_set()

        try:
            backend = self._backend(job.config.backend)  # type: ignore[union-attr]
            workdir = self.workdir / job.job_id if self.workdir is not None else None
            result = validate_structure(
                job.structure,  # type: ignore[arg-type]
                job.config,  # type: ignore[arg-type]
                backend,  # type: ignore[arg-type]
                self.hull,
                structure_id=job.id,
                workdir=workdir,
                progress=progress,
                should_stop=should_stop,
            )
        except ValidationCancelled as exc:
            if job.cancel.is_set() or self.workdir is None:
                self._finish(job, pb.JOB_STATE_CANCELLED, str(exc), type(exc).__name__)
            else:  # the servicer is shutting down: the job stays RUNNING on disk, resumed at the next start
                job.report(pb.JOB_STATE_QUEUED, "queued", "interrupted by the server's shutdown; it resumes "
                           "from its checkpoints when the server starts again",
                           fraction=job.progress.fraction if job.progress is not None else 0.0)
        except HTVSError as exc:
            self._finish(job, pb.JOB_STATE_FAILED, str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a job must always reach a terminal state
            ref = uuid.uuid4().hex[:12]
            logger.error("job %s failed unexpectedly (ref %s)", job.job_id, ref, exc_info=exc)
            self._finish(job, pb.JOB_STATE_FAILED, f"internal error (ref {ref}); see the server log", "InternalError")
        else:
            doc = result.to_dict()
            with job.changed:
                job.result = doc
            self._finish(job, pb.JOB_STATE_SUCCEEDED, _sigma_message(doc), "")

    def _finish(self, job: _Job, state: int, message: str, kind: str) -> None:
        """Move ``job`` to the terminal ``state`` and record it (nothing if it already finished)."""
        with job.changed:
            if job.state in _TERMINAL:
                return
            job.finished = time.time()
            if state != pb.JOB_STATE_SUCCEEDED:
                job.error, job.error_kind = message, kind
            stage = pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()
            job.report(state, stage, message, fraction=1.0 if state == pb.JOB_STATE_SUCCEEDED else
                       (job.progress.fraction if job.progress is not None else 0.0))
        self._save_or_log(job)

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
            raise InvalidInput(f"input {shown(key)} has {len(data)} bytes, more than {MAX_CIF_CHARS}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {shown(key)} is not UTF-8 CIF text") from None

    def Submit(self, request: pb.SubmitRequest, context) -> pb.SubmitResponse:
        if self._stopping.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; submit to another one")
        if len(request.id) > MAX_ID_CHARS:
            raise InvalidInput(f"SubmitRequest.id has {len(request.id)} characters, more than {MAX_ID_CHARS}")
        cif = request.cif
        if request.HasField("input"):
            cif = self._cif_from_store(request, context)
        if len(cif) > MAX_CIF_CHARS:
            raise InvalidInput(f"SubmitRequest.cif has {len(cif)} characters, more than {MAX_CIF_CHARS}")
        name = request.id or "structure"
        config = config_from_proto(request.settings)
        structure = structure_from_cif_text(cif, name, max_sites=config.supercell.max_atoms)
        supercell_matrix(structure, config.supercell)  # refuse an oversized MD cell now, not later
        settings = pb.ValidationSettings()
        settings.CopyFrom(request.settings)
        job = _Job(job_id=uuid.uuid4().hex, id=name, structure=structure, settings=settings, config=config)
        job.report(pb.JOB_STATE_QUEUED, "queued", f"queued {name} ({structure.composition.reduced_formula})")
        with self._lock:
            if self._active() >= self.max_queue:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.max_queue} jobs are queued or running; retry later",
                )
            self._jobs[job.job_id] = job
            self._forget_old()
        try:
            self._save(job)
        except OSError as exc:
            with self._lock:
                self._jobs.pop(job.job_id, None)
            logger.error("cannot record job %s in %s: %s", job.job_id, self.workdir, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"cannot record the job in the server's work directory ({exc.strerror}); retry later")
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
            detail = f": {shown(message.error, 300)}" if message.error else ""
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

    def _open_watch(self) -> bool:
        """Take one of the ``max_watch_streams`` slots (False: all taken)."""
        with self._lock:
            if self._watching >= self.max_watch_streams:
                return False
            self._watching += 1
            return True

    def _close_watch(self) -> None:
        with self._lock:
            self._watching -= 1

    def Watch(self, request: pb.WatchRequest, context):
        job = self._job(request.job_id)
        if not self._open_watch():
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_watch_streams} Watch streams are open, this server's limit; poll GetJob "
                "instead, or watch again later",
            )
        try:
            deadline = time.monotonic() + self.max_watch_s
            seen = -1
            while context.is_active():
                left = deadline - time.monotonic()
                with job.changed:
                    job.changed.wait_for(lambda last=seen: job.version != last,
                                         timeout=max(0.0, min(_WATCH_POLL_S, left)))
                    fresh = job.version != seen
                    if fresh:
                        seen = job.version
                        snapshot = pb.JobProgress()
                        snapshot.CopyFrom(job.progress)
                        done = job.state in _TERMINAL
                if fresh:
                    yield snapshot
                    if done:
                        return
                if left <= 0:
                    return  # the last message sent is the current state; the client watches again
        finally:
            self._close_watch()
