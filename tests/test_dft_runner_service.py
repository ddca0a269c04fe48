"""htvs.v1.DFTRunnerService on loopback: submit, watch, poll, result, cancel, errors, queue limit.

One server runs real CHGNet jobs with a tiny MD setting (an 8-atom LiCl cell, a few dozen
steps); another runs a slow Lennard-Jones stand-in so that cancellation and the queue limit
are deterministic.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import grpc
import pytest

from htvs.grpc.dft_runner_service import DFTRunnerServicer
from htvs.grpc.gen import dft_runner_pb2 as pb
from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc
from htvs.grpc.server import create_server
from htvs.thermo import ReferenceHull
from htvs.validation import RelaxResult, run_md
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


def _serve(servicer):
    server, port = create_server("127.0.0.1:0", servicer)
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


def test_unknown_job_is_not_found(slow_stub) -> None:
    for call, message in (
        (slow_stub.GetJob, pb.GetJobRequest(job_id="nope")),
        (slow_stub.GetResult, pb.GetResultRequest(job_id="nope")),
        (slow_stub.Cancel, pb.CancelRequest(job_id="nope")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(message, timeout=5)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND and "'nope'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(slow_stub.Watch(pb.WatchRequest(job_id="nope"), timeout=5))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


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
