"""htvs.v1.DFTRunnerService on loopback: submit, watch, poll, result, cancel, errors, queue limit,
Watch streams that cannot starve the server, jobs that survive a restart, bounded messages.

One server runs real CHGNet jobs with a tiny MD setting (an 8-atom LiCl cell, a few dozen
steps); the others run a slow Lennard-Jones stand-in so that cancellation, the limits and
restarts are deterministic.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from htvs.grpc.dft_runner_service import DFTRunnerServicer
from htvs.grpc.gen import dft_runner_pb2 as pb
from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc
from htvs.grpc.server import create_server
from htvs.thermo import ReferenceHull
from htvs.validation import RelaxResult, run_md
from htvs.validation.md import checkpoint_step
from htvs.validation.stability import elemental_reference_energies

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(180)]

DATA = Path(__file__).parent / "data" / "validation"
LICL = (DATA / "LiCl.cif").read_text()


def tiny_settings(**overrides) -> pb.ValidationSettings:
    """Two temperatures x (4 + 4 + 24) steps on the 8-atom cell, smoothing 'none'."""
    values = dict(
        temperatures_k=[800.0, 1200.0], heat_ps=0.008, equilibrate_ps=0.008, production_ps=0.048,
        min_supercell_length_angstrom=0.0, smoothing="none", record_every_steps=2, checkpoint_every_steps=8,
    )
    values.update(overrides)
    return pb.ValidationSettings(**values)


class SlowLJBackend:
    """Lennard-Jones MD slowed to ~5 ms per step; E_f = -2 eV/atom."""

    name = "mlip"

    def relax(self, structure, config, *, workdir=None, should_stop=lambda: False):
        refs = elemental_reference_energies()
        return RelaxResult(structure, sum(refs[s.specie.symbol] - 2.0 for s in structure), True, 0, 0.0)

    def run_md(self, structure, temperature_k, config, *, seed=None, checkpoint=None, on_chunk=None,
               should_stop=lambda: False):
        from ase.calculators.lj import LennardJones

        class Slow(LennardJones):
            def calculate(self, *args, **kwargs):
                time.sleep(0.005)
                super().calculate(*args, **kwargs)

        return run_md(structure, Slow(sigma=2.29, epsilon=0.05, rc=4.5, smooth=True), temperature_k, config,
                      seed=seed, checkpoint=checkpoint, on_chunk=on_chunk, should_stop=should_stop)


class RecordingLJBackend(SlowLJBackend):
    """SlowLJBackend that records, for each MD run, the step its checkpoint starts from."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, int]] = []

    def run_md(self, structure, temperature_k, config, *, checkpoint=None, **kwargs):
        self.starts.append((temperature_k, checkpoint_step(checkpoint) if checkpoint is not None else 0))
        return super().run_md(structure, temperature_k, config, checkpoint=checkpoint, **kwargs)


def _serve(servicer, **options):
    server, port = create_server("127.0.0.1:0", servicer, **options)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return server, channel


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """MlipBackend sets torch's thread count for the process; give other modules theirs back."""
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


@pytest.fixture(scope="module")
def chgnet_stub(hull, tmp_path_factory):
    from htvs.validation.mlip import MlipBackend

    servicer = DFTRunnerServicer(hull, {"mlip": MlipBackend(device="cpu")}, workdir=tmp_path_factory.mktemp("jobs"))
    server, channel = _serve(servicer)
    yield pb_grpc.DFTRunnerServiceStub(channel)
    channel.close()
    server.stop(None).wait()
    servicer.shutdown()


@pytest.fixture(scope="module")
def slow_stub(hull):
    servicer = DFTRunnerServicer(hull, {"mlip": SlowLJBackend()}, max_queue=1)
    server, channel = _serve(servicer)
    yield pb_grpc.DFTRunnerServiceStub(channel)
    channel.close()
    server.stop(None).wait()
    servicer.shutdown()


def wait_for(stub, job_id: str, states: set[int], timeout: float = 60.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states}")


def test_chgnet_job_streams_progress_and_returns_the_result(chgnet_stub) -> None:
    submitted = chgnet_stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=tiny_settings()), timeout=30)
    assert submitted.job_id and submitted.state == pb.JOB_STATE_QUEUED
    with pytest.raises(grpc.RpcError) as err:  # not finished yet
        chgnet_stub.GetResult(pb.GetResultRequest(job_id=submitted.job_id), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "QUEUED" in err.value.details() or "RUNNING" in err.value.details()
    reports = list(chgnet_stub.Watch(pb.WatchRequest(job_id=submitted.job_id), timeout=120))
    assert reports[-1].state == pb.JOB_STATE_SUCCEEDED and reports[-1].fraction == 1.0
    stages = [r.stage for r in reports]
    assert "md" in stages and stages[-1] == "succeeded"
    md = [r for r in reports if r.stage == "md"]
    assert all(r.HasField("temperature_k") and r.total_steps == 32 for r in md)
    assert [r.fraction for r in md] == sorted(r.fraction for r in md)

    answer = chgnet_stub.GetResult(pb.GetResultRequest(job_id=submitted.job_id), timeout=5)
    result = answer.result
    assert answer.job.state == pb.JOB_STATE_SUCCEEDED and answer.job.HasField("finished_unix_s")
    assert result.id == "LiCl" and result.formula == "LiCl" and result.backend == "mlip"
    assert result.e_form_ev_per_atom == pytest.approx(-2.1, abs=0.15)
    assert result.phi_ox_v == pytest.approx(4.26, abs=0.05)
    assert [d.temperature_k for d in result.diffusivity] == [800.0, 1200.0]
    assert all(d.diffusivity_cm2_s > 0 for d in result.diffusivity)
    for name in ("sigma_300k_mean_ms_cm", "sigma_300k_low_ms_cm", "sigma_300k_high_ms_cm", "activation_energy_ev"):
        assert result.HasField(name) and math.isfinite(getattr(result, name))
    assert json.loads(result.result_json)["sigma_300K_mS_cm"]["mean"] == pytest.approx(result.sigma_300k_mean_ms_cm)


@pytest.mark.parametrize(
    ("request_message", "named"),
    [
        (pb.SubmitRequest(id="bad", cif="data_x\n_cell_length_a 3\n"), "bad: unreadable CIF"),
        (pb.SubmitRequest(id="NaCl", cif=(DATA / "NaCl.cif").read_text()), "contains no Li"),
        (pb.SubmitRequest(id="dis", cif=(DATA / "LiNaCl2_disordered.cif").read_text()), "disordered"),
        (pb.SubmitRequest(id="t", cif=LICL, settings=tiny_settings(temperatures_k=[-5.0, 800.0])), "got -5.0"),
        (pb.SubmitRequest(id="t", cif=LICL, settings=tiny_settings(temperatures_k=[800.0, 8000.0])), "8000"),
        (pb.SubmitRequest(id="len", cif=LICL, settings=tiny_settings(production_ps=-1.0)), "got -1.0"),
        (pb.SubmitRequest(id="b", cif=LICL, settings=tiny_settings(backend="gaussian")), "'gaussian'"),
        (pb.SubmitRequest(id="big", cif=LICL, settings=tiny_settings(min_supercell_length_angstrom=30.0)),
         "more than max atoms 200"),
    ],
)
def test_bad_submissions_are_invalid_argument_naming_the_value(slow_stub, request_message, named: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        slow_stub.Submit(request_message, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()


def _calls(stub, job_id: str):
    """The four job-id calls on ``job_id``, each a thunk (Watch is read to its end)."""
    return {
        "GetJob": lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5),
        "GetResult": lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=5),
        "Cancel": lambda: stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=5),
        "Watch": lambda: list(stub.Watch(pb.WatchRequest(job_id=job_id), timeout=5)),
    }


def test_unknown_job_is_not_found_and_a_malformed_id_invalid(slow_stub) -> None:
    unknown = uuid.uuid4().hex
    for name, call in _calls(slow_stub, unknown).items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.NOT_FOUND, name
        assert unknown in err.value.details()
    for bad in ("nope", "x" * 5000, unknown.upper(), unknown + "0", "../" + unknown[3:]):
        for name, call in _calls(slow_stub, bad).items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, bad[:10])
            details = err.value.details()
            assert len(details) < 200 and "32 lowercase hex digits" in details
            assert repr(bad) in details or "(5000 characters)" in details


@pytest.mark.parametrize(
    ("request_message", "named"),
    [
        (pb.SubmitRequest(id="x" * 5000, cif=LICL), "SubmitRequest.id has 5000 characters, more than 256"),
        (pb.SubmitRequest(id="b", cif=LICL, settings=tiny_settings(backend="y" * 5000)), "backend"),
        (pb.SubmitRequest(id="s", cif=LICL, settings=tiny_settings(smoothing="z" * 5000)), "smoothing"),
        (pb.SubmitRequest(id="t", cif=LICL, settings=tiny_settings(temperatures_k=[300.0 + i for i in range(5000)])),
         "temperatures"),
    ],
)
def test_long_values_are_refused_with_a_bounded_message(slow_stub, request_message, named: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        slow_stub.Submit(request_message, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details() and len(err.value.details()) < 300


def test_cancel_a_running_job_and_the_queue_limit(slow_stub) -> None:
    long_md = tiny_settings(production_ps=20.0, checkpoint_every_steps=20)  # ~50 s if not cancelled
    job = slow_stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=long_md), timeout=10)
    with pytest.raises(grpc.RpcError) as err:  # max_queue = 1
        slow_stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=long_md), timeout=10)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    watch = slow_stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=60)
    for report in watch:
        if report.stage == "md":
            break
    cancelled = slow_stub.Cancel(pb.CancelRequest(job_id=job.job_id), timeout=5)
    assert cancelled.state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLED)
    rest = list(watch)
    assert rest[-1].state == pb.JOB_STATE_CANCELLED
    final = wait_for(slow_stub, job.job_id, {pb.JOB_STATE_CANCELLED})
    assert final.error_kind == "ValidationCancelled" and "stopped after" in final.error
    with pytest.raises(grpc.RpcError) as err:
        slow_stub.GetResult(pb.GetResultRequest(job_id=job.job_id), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "CANCELLED" in err.value.details()
    # the slot is free again
    again = slow_stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=tiny_settings()), timeout=10)
    assert wait_for(slow_stub, again.job_id, {pb.JOB_STATE_SUCCEEDED}).progress.fraction == 1.0


@pytest.fixture()
def watch_server(hull):
    """A server with 4 call threads and a servicer that allows 2 Watch streams."""
    servicer = DFTRunnerServicer(hull, {"mlip": SlowLJBackend()}, max_watch_streams=2)
    server, channel = _serve(servicer, max_workers=4)
    yield servicer, channel
    channel.close()
    server.stop(None).wait()
    servicer.shutdown()


def test_watch_streams_cannot_starve_getjob_and_the_health_check(watch_server) -> None:
    servicer, channel = watch_server
    stub = pb_grpc.DFTRunnerServiceStub(channel)
    long_md = tiny_settings(production_ps=20.0, checkpoint_every_steps=20)  # ~50 s if not cancelled
    job = stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=long_md), timeout=10)
    opened = [stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=60) for _ in range(6)]  # > 4 threads
    time.sleep(0.5)  # the server has taken them all
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        assert health.Check(health_pb2.HealthCheckRequest(service=servicer.service_name), timeout=2).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=2).state in (
            pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING
        )
    streams, refused = [], []
    for stream in opened:
        try:
            next(stream)
            streams.append(stream)
        except grpc.RpcError as err:
            refused.append(err)
    assert len(streams) == 2 and len(refused) == 4
    for err in refused:
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "poll GetJob" in err.details()
    stub.Cancel(pb.CancelRequest(job_id=job.job_id), timeout=5)
    for stream in streams:
        assert list(stream)[-1].state == pb.JOB_STATE_CANCELLED
    # the slots are free again
    again = stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=10)
    assert list(again)[-1].state == pb.JOB_STATE_CANCELLED


def test_a_watch_stream_ends_after_max_watch_s_with_the_current_state(hull) -> None:
    servicer = DFTRunnerServicer(hull, {"mlip": SlowLJBackend()}, max_watch_s=1.0)
    server, channel = _serve(servicer)
    try:
        stub = pb_grpc.DFTRunnerServiceStub(channel)
        long_md = tiny_settings(production_ps=20.0, checkpoint_every_steps=20)
        job = stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=long_md), timeout=10)
        start = time.monotonic()
        reports = list(stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=30))
        assert time.monotonic() - start < 5
        assert reports and reports[-1].state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)  # watch again
        stub.Cancel(pb.CancelRequest(job_id=job.job_id), timeout=5)
        assert list(stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=30))[-1].state == pb.JOB_STATE_CANCELLED
    finally:
        channel.close()
        server.stop(None).wait()
        servicer.shutdown()


def test_jobs_survive_a_restart_on_the_same_workdir(hull, tmp_path) -> None:
    """Running and queued jobs resume (MD from its checkpoints), finished ones keep their state and result."""
    workdir = tmp_path / "jobs"
    mid_md = tiny_settings(production_ps=0.4, checkpoint_every_steps=20)  # 2 x 208 steps, ~1 s each
    first = RecordingLJBackend()
    servicer = DFTRunnerServicer(hull, {"mlip": first}, workdir=workdir)
    server, channel = _serve(servicer)
    stub = pb_grpc.DFTRunnerServiceStub(channel)
    running = stub.Submit(pb.SubmitRequest(id="running", cif=LICL, settings=mid_md), timeout=10).job_id
    queued = stub.Submit(pb.SubmitRequest(id="queued", cif=LICL, settings=tiny_settings()), timeout=10).job_id
    cancelled = stub.Submit(pb.SubmitRequest(id="cancelled", cif=LICL, settings=tiny_settings()), timeout=10).job_id
    stub.Cancel(pb.CancelRequest(job_id=cancelled), timeout=5)
    for report in stub.Watch(pb.WatchRequest(job_id=running), timeout=60):
        if report.stage == "md" and report.step >= 60:  # past a checkpoint of the first temperature
            break
    channel.close()
    server.stop(None).wait()
    servicer.shutdown()
    records = {j: json.loads((workdir / j / "job.json").read_text()) for j in (running, queued, cancelled)}
    assert [records[j]["state"] for j in (running, queued, cancelled)] == [
        "JOB_STATE_RUNNING", "JOB_STATE_QUEUED", "JOB_STATE_CANCELLED"
    ]
    assert checkpoint_step(workdir / running / "md_800K.npz") >= 40
    (workdir / uuid.uuid4().hex).mkdir()  # a folder without a record, and one not named by a job id: ignored
    (workdir / "notes").mkdir()
    broken = workdir / uuid.uuid4().hex
    broken.mkdir()
    (broken / "job.json").write_text("{not json")  # skipped with a warning, the others load

    second = RecordingLJBackend()
    servicer = DFTRunnerServicer(hull, {"mlip": second}, workdir=workdir)
    server, channel = _serve(servicer)
    stub = pb_grpc.DFTRunnerServiceStub(channel)
    try:
        resumed = stub.GetJob(pb.GetJobRequest(job_id=running), timeout=5)
        assert resumed.id == "running" and resumed.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
        assert wait_for(stub, running, {pb.JOB_STATE_SUCCEEDED}).progress.fraction == 1.0
        assert wait_for(stub, queued, {pb.JOB_STATE_SUCCEEDED}).id == "queued"
        assert stub.GetJob(pb.GetJobRequest(job_id=cancelled), timeout=5).state == pb.JOB_STATE_CANCELLED
        assert second.starts[0][0] == 800.0 and second.starts[0][1] >= 40  # MD resumed, not restarted
        results = {j: stub.GetResult(pb.GetResultRequest(job_id=j), timeout=5).result for j in (running, queued)}
        assert results[running].id == "running" and results[running].HasField("sigma_300k_mean_ms_cm")
    finally:
        channel.close()
        server.stop(None).wait()
        servicer.shutdown()

    servicer = DFTRunnerServicer(hull, {"mlip": RecordingLJBackend()}, workdir=workdir)
    server, channel = _serve(servicer)
    stub = pb_grpc.DFTRunnerServiceStub(channel)
    try:
        for job_id, result in results.items():
            answer = stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=5)
            assert answer.job.state == pb.JOB_STATE_SUCCEEDED and answer.result == result
        with pytest.raises(grpc.RpcError) as err:
            stub.GetResult(pb.GetResultRequest(job_id=cancelled), timeout=5)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "CANCELLED" in err.value.details()
    finally:
        channel.close()
        server.stop(None).wait()
        servicer.shutdown()


def test_shutdown_without_a_workdir_cancels_the_jobs(hull) -> None:
    servicer = DFTRunnerServicer(hull, {"mlip": SlowLJBackend()})
    long_md = tiny_settings(production_ps=20.0, checkpoint_every_steps=20)
    job_ids = [servicer.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=long_md), None).job_id for _ in range(2)]
    wait_until = time.monotonic() + 30
    while servicer.GetJob(pb.GetJobRequest(job_id=job_ids[0]), None).state != pb.JOB_STATE_RUNNING and time.monotonic() < wait_until:
        time.sleep(0.05)
    done = threading.Event()
    threading.Thread(target=lambda: (servicer.shutdown(), done.set()), daemon=True).start()
    assert done.wait(30)
    assert [servicer.GetJob(pb.GetJobRequest(job_id=j), None).state for j in job_ids] == [pb.JOB_STATE_CANCELLED] * 2
