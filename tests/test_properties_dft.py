"""Property-based tests (Hypothesis) of what a request can make DFTRunnerService do.

* Whatever a SubmitRequest holds (random text for the id, backend and smoothing; NaN,
  infinities, huge, tiny, zero and negative numbers for every ValidationSettings field; too
  many temperatures), Submit answers OK or refuses with INVALID_ARGUMENT / NOT_FOUND /
  FAILED_PRECONDITION and a message under 1,000 characters; never INTERNAL or UNKNOWN, and the
  server keeps serving. The contract is on status codes, not on the settings' ranges.
* Whatever a job_id holds (random text, long text, hex of the wrong shape, unknown or real
  ids), GetJob, GetResult, Cancel and Watch answer OK or INVALID_ARGUMENT / NOT_FOUND /
  FAILED_PRECONDITION with a bounded message.

The servicer's backend refuses to run (its relaxation raises at once), so an accepted job fails
within milliseconds instead of starting MD, and must fail for that reason only (StageFailed),
not for an unexpected error of the pipeline on the accepted settings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from htvs.errors import StageFailed  # noqa: E402
from htvs.grpc.dft_runner_service import DFTRunnerServicer  # noqa: E402
from htvs.grpc.gen import dft_runner_pb2 as pb  # noqa: E402
from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc  # noqa: E402
from htvs.grpc.server import create_server  # noqa: E402
from htvs.thermo import ReferenceHull  # noqa: E402

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]

LICL = (Path(__file__).parent / "data" / "validation" / "LiCl.cif").read_text()
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
MAX_MESSAGE = 1000
#: A protocol the settings accept (the tiny one of test_dft_runner_service); fields are drawn over it.
TINY = dict(
    temperatures_k=[800.0, 1200.0], heat_ps=0.008, equilibrate_ps=0.008, production_ps=0.048,
    min_supercell_length_angstrom=0.0, smoothing="none", record_every_steps=2, checkpoint_every_steps=8,
)
DOUBLE_FIELDS = ("timestep_fs", "heat_ps", "equilibrate_ps", "production_ps", "min_supercell_length_angstrom",
                 "fmax_ev_per_angstrom")
UINT32_FIELDS = ("min_atoms", "max_atoms", "max_relax_steps", "record_every_steps", "checkpoint_every_steps", "seed")


class RefusingBackend:
    """A backend whose relaxation fails at once: an accepted job ends FAILED without MD."""

    name = "mlip"

    def relax(self, structure, config, *, workdir=None, should_stop=lambda: False):
        raise StageFailed("this test backend does not run")

    def run_md(self, *args, **kwargs):
        raise AssertionError("a property test must not start MD")


# --------------------------------------------------------------------------- strategies

doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e300, 0.0, -0.0, 5e-324, 1e-300, -1.0,
                     0.001, 2.0, 8.0, 800.0, 5000.0, 5000.1]),
)
uint32s = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 8, 200, 100_000, 100_001, 2**32 - 1]))
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["mlip", "vasp", "max", "constant", "none", "", "MLIP", "gaussian"]),
    st.integers(100, 6000).map("w".__mul__),
)
temperature_lists = st.one_of(
    st.lists(doubles, max_size=8),
    st.sampled_from([[800.0, 1200.0], [600.0, 800.0, 1000.0, 1200.0], [800.0], [800.0, 800.0]]),
    st.integers(17, 5000).map(lambda n: [300.0 + i for i in range(n)]),
)
WILD = {
    **{name: doubles for name in DOUBLE_FIELDS},
    **{name: uint32s for name in UINT32_FIELDS},
    "temperatures_k": temperature_lists,
    "backend": texts,
    "smoothing": texts,
}
settings_overrides = st.one_of(
    # one or two wild fields over the accepted protocol: each field's own check is reached
    st.lists(st.sampled_from(sorted(WILD)), min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: WILD[name] for name in names})
    ),
    # any subset of wild fields
    st.fixed_dictionaries({}, optional=WILD),
)
EDGE_DOUBLES = (math.nan, math.inf, -math.inf, 1.7976931348623157e308, 1e306, -1e308, 1e-300, 5e-324, 0.0, -0.0, -1.0)
EDGE_UINT32S = (0, 1, 2**32 - 1)


def edge_cases(test):
    """Every field alone at each extreme value, over the accepted protocol, as explicit examples."""
    cases = [{name: value} for name in DOUBLE_FIELDS for value in EDGE_DOUBLES]
    cases += [{name: value} for name in UINT32_FIELDS for value in EDGE_UINT32S]
    cases += [{"temperatures_k": [value, 1200.0]} for value in EDGE_DOUBLES]
    cases += [{"backend": "b" * 5000}, {"smoothing": "\x00" * 5000}, {"temperatures_k": [300.0 + i for i in range(5000)]}]
    for overrides in cases:
        test = example(overrides=overrides, structure_id="edge")(test)
    return test


structure_ids = st.one_of(st.text(max_size=60), st.integers(200, 6000).map("i".__mul__))
hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
job_ids = st.one_of(
    st.text(max_size=60),
    st.integers(33, 6000).map("f".__mul__),
    hex32,
    hex32.map(str.upper),
    hex32.map(lambda h: h[:31]),
    hex32.map(lambda h: h + "\n"),
    st.just("../" + "0" * 29),
    st.just("REAL"),  # replaced by the id of a submitted job
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served():
    """A loopback server of a DFTRunnerServicer whose jobs fail at once; ``(stub, health, real job id)``."""
    backend = RefusingBackend()
    servicer = DFTRunnerServicer(ReferenceHull.bundled(), {"mlip": backend}, backend_loader=lambda name: backend,
                                 max_queue=100_000)
    server, port = create_server("127.0.0.1:0", servicer, max_workers=4)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.DFTRunnerServiceStub(channel)
    real = stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL, settings=pb.ValidationSettings(**TINY)), timeout=30)
    yield stub, health_pb2_grpc.HealthStub(channel), real.job_id
    channel.close()
    server.stop(None).wait()
    servicer.shutdown()


def finished(stub, job_id: str, timeout: float = 10.0) -> pb.Job:
    """The job once it has reached a terminal state."""
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {pb.JobState.Name(job.state)}"
        time.sleep(0.005)


def assert_allowed(err: grpc.RpcError, what: str) -> None:
    assert err.code() in ALLOWED, f"{what}: {err.code()} {err.details()[:300]!r}"
    assert len(err.details() or "") < MAX_MESSAGE, f"{what}: a message of {len(err.details())} characters"


def assert_serving(health) -> None:
    answer = health.Check(health_pb2.HealthCheckRequest(service=DFTRunnerServicer.service_name), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- properties


@settings(max_examples=150)
@given(overrides=settings_overrides, structure_id=structure_ids)
@edge_cases
def test_any_submission_is_accepted_or_refused_with_a_bounded_client_error(served, overrides, structure_id) -> None:
    stub, health, _ = served
    request = pb.SubmitRequest(id=structure_id, cif=LICL, settings=pb.ValidationSettings(**(TINY | overrides)))
    try:
        answer = stub.Submit(request, timeout=30)
    except grpc.RpcError as err:
        assert_allowed(err, "Submit")
        event(f"Submit: {err.code().name}")
    else:
        event("Submit: OK")
        assert len(answer.job_id) == 32 and answer.state == pb.JOB_STATE_QUEUED
        job = finished(stub, answer.job_id)  # the backend refuses at once: no MD
        assert job.id == (structure_id or "structure")
        assert job.state == pb.JOB_STATE_FAILED and job.error_kind == "StageFailed", (job.error_kind, job.error)
        assert stub.Cancel(pb.CancelRequest(job_id=answer.job_id), timeout=5).state == pb.JOB_STATE_FAILED
    assert_serving(health)


@settings(max_examples=150)
@given(job_id=job_ids)
@example(job_id="REAL")
def test_any_job_id_is_answered_or_refused_with_a_bounded_client_error(served, job_id) -> None:
    stub, health, real = served
    job_id = real if job_id == "REAL" else job_id
    calls = {
        "GetJob": lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5),
        "GetResult": lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=5),
        "Cancel": lambda: stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=5),
        "Watch": lambda: list(stub.Watch(pb.WatchRequest(job_id=job_id), timeout=10)),
    }
    for name, call in calls.items():
        try:
            call()
        except grpc.RpcError as err:
            assert_allowed(err, name)
            event(f"{name}: {err.code().name}")
        else:
            assert job_id == real, f"{name} answered for {job_id!r}"
    assert_serving(health)
