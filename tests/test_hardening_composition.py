"""Hardening of the composition and thermo work: bounded work per formula, one diagram build per
chemical system under concurrency, calls that stop when their caller has gone, no NaN in answers,
and bounded echoes in CompositionService and SubstitutionService messages."""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from htvs.composition.predictor import OnnxRoostEnsemble
from htvs.errors import InvalidInput, RowError
from htvs.grpc.composition_service import CompositionServicer, stop_if_caller_gone
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import composition_pb2 as cpb
from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc
from htvs.grpc.gen import substitution_pb2 as spb
from htvs.grpc.gen import substitution_pb2_grpc as spb_grpc
from htvs.grpc.server import create_server
from htvs.grpc.substitution_service import SubstitutionServicer
from htvs.thermo import ReferenceHull, e_above_hull_many, electrochemical_windows
from htvs.thermo.hull import MAX_ABS_E_FORM_EV_PER_ATOM, MAX_CHEMSYS_ELEMENTS, _LRU
from htvs.thermo.window import PROGRESS_EVERY_INSERTED
from tiny_models import tiny_model_pair

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]

#: An 11-element formula (its diagram would take minutes) and an 8-element one.
ELEVEN = "LiOPSHNFeCuCSiMg"
EIGHT = "Li2OPSHNFeCu"
#: A 6-element system that builds in well under a second.
SIX = "Li-O-S-P-Cl-N"
MAX_MESSAGE = 2000


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ef, gap = tiny_model_pair(tmp_path_factory.mktemp("models"))
    return OnnxRoostEnsemble.from_dir(ef, intra_op_threads=1), OnnxRoostEnsemble.from_dir(gap, intra_op_threads=1)


def started(*servicers, **options):
    server, port = create_server("127.0.0.1:0", *servicers, **options)
    server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{port}")


def non_finite_doubles(message, path: str = "") -> list[str]:
    """Paths of every double/float field of ``message`` (nested, repeated) that is NaN or infinite."""
    found = []
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        values = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            for k, item in enumerate(values):
                found += non_finite_doubles(item, f"{where}[{k}]")
        elif field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            found += [f"{where}[{k}]={v}" for k, v in enumerate(values) if not math.isfinite(v)]
    return found


# --------------------------------------------------------------------------- work has limits


def test_a_large_chemical_system_is_a_row_error_before_any_diagram(hull):
    before = hull.cache_info()["diagram_builds"]
    start = time.perf_counter()
    rows = e_above_hull_many(hull, [ELEVEN, "Li3PS4", EIGHT], [-1.0, -1.2, -1.0])
    windows = electrochemical_windows(hull, [ELEVEN, "Li3PS4"])
    assert time.perf_counter() - start < 5
    for row, formula, n in ((rows[0], ELEVEN, 11), (rows[2], EIGHT, 8), (windows[0], ELEVEN, 11)):
        assert isinstance(row, RowError)
        assert formula in row.message and f"{n}-element" in row.message
        assert f"at most {MAX_CHEMSYS_ELEMENTS} elements" in row.message
    assert not isinstance(rows[1], RowError) and not isinstance(windows[1], RowError)
    assert hull.cache_info()["diagram_builds"] - before <= 1  # Li-P-S only
    with pytest.raises(InvalidInput, match="8-element chemical system"):
        hull.facet_model("Li-O-P-S-H-N-Fe-Cu")


def test_the_element_limit_is_configurable_and_seven_elements_are_served(hull):
    rows = e_above_hull_many(hull, ["Li2OPSClNF"], [-1.0])  # 7 elements: built (~0.1 s)
    assert not isinstance(rows[0], RowError)
    small = ReferenceHull.bundled(max_elements=2)
    assert isinstance(e_above_hull_many(small, ["Li3PS4"], [-1.0])[0], RowError)
    with pytest.raises(InvalidInput, match="max_elements"):
        ReferenceHull.bundled(max_elements=0)


@pytest.mark.parametrize("energy", [-1e300, 1e300, -MAX_ABS_E_FORM_EV_PER_ATOM * 1.01])
def test_an_absurd_formation_energy_is_a_row_error_never_an_infinite_window(hull, energy):
    hull_row = e_above_hull_many(hull, ["Li3PS4"], [energy])[0]
    window = electrochemical_windows(hull, ["Li3PS4"], [energy])[0]
    for row in (hull_row, window):
        assert isinstance(row, RowError)
        assert "Li3PS4" in row.message and repr(energy) in row.message


def test_concurrent_requests_for_one_system_build_it_once():
    hull = ReferenceHull.bundled()
    barrier = threading.Barrier(8)
    models = []

    def ask():
        barrier.wait()
        models.append(hull.facet_model(SIX))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(models) == 8 and all(m is models[0] for m in models)
    info = hull.cache_info()
    # the facet model is built with qhull directly: no pymatgen PhaseDiagram is needed
    assert info["model_builds"] == 1 and info["diagram_builds"] == 0


def test_a_failed_build_reaches_every_waiter_and_is_not_cached():
    cache: _LRU[str, int] = _LRU(4)
    release = threading.Event()
    calls = []

    def failing():
        calls.append(1)
        release.wait(5)
        raise ValueError("boom")

    outcomes = []

    def ask():
        try:
            cache.get_or_build("k", failing)
        except ValueError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join()
    assert outcomes == ["boom"] * 4 and len(calls) == 1
    assert cache.get_or_build("k", lambda: 7) == 7 and cache.builds == 2


def test_concurrent_identical_hull_calls_cost_one_build(models):
    hull = ReferenceHull.bundled()
    server, channel = started(CompositionServicer(hull, *models), max_workers=8)
    try:
        stub = cpb_grpc.CompositionServiceStub(channel)
        request = cpb.HullRequest(rows=[cpb.HullQuery(formula="Li3PS4ClNO", e_form_ev_per_atom=-1.0)])
        futures = [stub.Hull.future(request, timeout=60) for _ in range(6)]
        answers = [f.result() for f in futures]
        assert all(not a.rows[0].HasField("error") for a in answers)
        assert hull.cache_info()["model_builds"] == 1
        eleven = stub.Hull(cpb.HullRequest(rows=[cpb.HullQuery(formula=ELEVEN, e_form_ev_per_atom=-1.0)]), timeout=5)
        assert eleven.rows[0].error.kind == "InvalidInput" and "11-element" in eleven.rows[0].error.message
    finally:
        channel.close()
        server.stop(None).wait()


# --------------------------------------------------------------------------- the caller has gone


class FakeContext:
    def __init__(self, remaining=None, active=True):
        self.remaining, self.active, self.aborted = remaining, active, None

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return self.active

    def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError(details)


@pytest.mark.parametrize(
    ("remaining", "active", "code"),
    [(None, True, None), (5.0, True, None), (0.0, True, grpc.StatusCode.DEADLINE_EXCEEDED),
     (-1.0, False, grpc.StatusCode.DEADLINE_EXCEEDED), (None, False, grpc.StatusCode.CANCELLED)],
)  # fmt: skip
def test_stop_if_caller_gone(remaining, active, code):
    context = FakeContext(remaining, active)
    if code is None:
        stop_if_caller_gone(context)
        assert context.aborted is None
    else:
        with pytest.raises(RuntimeError):
            stop_if_caller_gone(context)
        assert context.aborted[0] is code


def test_hull_and_window_stop_between_chemical_systems(hull):
    servicer = CompositionServicer(hull)
    rows = [cpb.HullQuery(formula=f, e_form_ev_per_atom=-1.0) for f in ("Li3PS4", "Li2O", "LiCl")]
    context = FakeContext(active=False)
    with pytest.raises(RuntimeError):
        servicer.Hull(cpb.HullRequest(rows=rows), context)
    assert context.aborted[0] is grpc.StatusCode.CANCELLED
    context = FakeContext(remaining=0.0)
    with pytest.raises(RuntimeError):
        servicer.Window(cpb.WindowRequest(rows=[cpb.WindowQuery(formula="Li3PS4")]), context)
    assert context.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED


def test_window_insertions_report_progress_so_a_caller_can_stop_them(hull):
    n = 3 * PROGRESS_EVERY_INSERTED
    formulas = [f"Li{k + 2}PS4" for k in range(n)]  # one chemical system, all far below the hull
    calls = []
    electrochemical_windows(hull, formulas, [-3.0] * n, progress=calls.append)
    assert len(calls) >= 3 + 2

    class Gone(Exception):
        pass

    def stop(done):
        if done:
            raise Gone

    with pytest.raises(Gone):
        electrochemical_windows(hull, ["LiCl", *formulas], [None, *([-3.0] * n)], progress=stop)


class SlowModel:
    """Counts and slows down every predict call."""

    def __init__(self, inner, delay, calls):
        self._inner, self._delay, self._calls = inner, delay, calls

    def predict(self, formulas, batch_size=4096):
        self._calls.append(len(formulas))
        time.sleep(self._delay)
        return self._inner.predict(formulas, batch_size=batch_size)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_predict_stops_computing_once_the_deadline_passed(hull, models):
    calls: list[int] = []
    slow = [SlowModel(m, 0.1, calls) for m in models]
    server, channel = started(CompositionServicer(hull, *slow, batch_size=1, max_batch_rows=40))
    try:
        stub = cpb_grpc.CompositionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(cpb.PredictRequest(formulas=["Li3PS4"] * 40), timeout=0.5)  # 80 calls = 8 s
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.6)
        settled = len(calls)
        time.sleep(0.5)
        assert len(calls) == settled < 20  # stopped, long before the 80 calls
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        server.stop(None).wait()


# --------------------------------------------------------------------------- no NaN, bounded echoes


@pytest.fixture(scope="module")
def composition(hull, models):
    server, channel = started(CompositionServicer(hull, *models, max_batch_rows=16))
    yield cpb_grpc.CompositionServiceStub(channel)
    channel.close()
    server.stop(None).wait()


def test_screen_echoes_no_nan_from_a_row_with_an_error(composition):
    nan = math.nan
    error = common_pb2.RowError(index=0, value="Li3Xx", message="x" * 5000, kind="InvalidInput")
    rows = [
        cpb.Prediction(formula="Li3Xx", e_form_mean=nan, e_form_std=nan, band_gap_mean=nan, band_gap_std=nan,
                       error=error),
        cpb.Prediction(formula="Li2S", e_form_mean=-1.5, e_form_std=0.1, band_gap_mean=math.inf, band_gap_std=0.1,
                       error=error),
        cpb.Prediction(formula="Li3PS4", e_form_mean=-1.3, e_form_std=0.1, band_gap_mean=3.0, band_gap_std=0.1),
    ]  # fmt: skip
    answer = composition.Screen(cpb.ScreenRequest(predictions=rows), timeout=30)
    assert non_finite_doubles(answer) == []
    for row in answer.rows[:2]:
        echoed = row.prediction
        assert echoed.HasField("error") and not row.passed
        assert not any(echoed.HasField(n) for n in ("e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std"))
        assert len(echoed.error.message) < MAX_MESSAGE
    assert answer.rows[2].prediction.e_form_mean == -1.3
    assert answer.funnel.predicted == 1


def test_no_nan_or_infinity_in_hull_and_window_answers(composition):
    energies = [-1e300, 1e300, -3.0, -1.0, 0.5]
    hull = composition.Hull(cpb.HullRequest(rows=[cpb.HullQuery(formula="Li3PS4", e_form_ev_per_atom=e)
                                                  for e in energies]), timeout=30)  # fmt: skip
    window = composition.Window(cpb.WindowRequest(rows=[cpb.WindowQuery(formula="Li3PS4", e_form_ev_per_atom=e)
                                                        for e in energies]), timeout=30)  # fmt: skip
    for answer in (hull, window):
        assert non_finite_doubles(answer) == []
        assert [r.HasField("error") for r in answer.rows] == [True, True, False, False, False]


def test_long_formulas_are_cut_in_messages_and_row_errors(composition):
    long = "Li" + "P" * 5000
    with pytest.raises(grpc.RpcError) as err:
        composition.Screen(cpb.ScreenRequest(predictions=[cpb.Prediction(formula=long, e_form_mean=math.nan)]),
                           timeout=10)  # fmt: skip
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "(5002 characters)" in err.value.details()
    assert len(err.value.details()) < 300
    hull = composition.Hull(cpb.HullRequest(rows=[cpb.HullQuery(formula=long, e_form_ev_per_atom=-1.0)]), timeout=10)
    error = hull.rows[0].error
    assert "256" in error.message and len(error.message) < 400 and len(error.value) < 1100
    predicted = composition.Predict(cpb.PredictRequest(formulas=["Xx" * 3000, "Li3PS4"]), timeout=30)
    assert predicted.rows[0].HasField("error") and len(predicted.rows[0].error.message) < 1100
    assert non_finite_doubles(predicted) == []


@pytest.fixture(scope="module")
def substitution():
    server, channel = started(SubstitutionServicer({}, max_prototypes=8))
    yield spb_grpc.SubstitutionServiceStub(channel)
    channel.close()
    server.stop(None).wait()


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    assert len(err.value.details()) < 400, err.value.details()[:500]
    return err.value


def test_list_prototypes_of_a_5000_character_name_is_not_found(substitution):
    err = refused(substitution.ListPrototypes, spb.ListPrototypesRequest(prototype_set="p" * 5000))
    assert err.code() is grpc.StatusCode.NOT_FOUND and "5000 characters" in err.details()


def li_s(name: str) -> spb.SitePattern:
    return spb.SitePattern(prototype_id=name, species=[spb.SpeciesAmount(element="Li", amount=1),
                                                       spb.SpeciesAmount(element="S", amount=1)])  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (spb.SubstituteRequest(prototype_set="q" * 5000), grpc.StatusCode.NOT_FOUND),
        (spb.SubstituteRequest(prototype_set="q" * 5000, prototypes=[li_s("a")]), grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a" * 5000)]), grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a"), li_s("a")]), grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[spb.SitePattern(prototype_id="a", species=[
            spb.SpeciesAmount(element="X" * 5000, amount=1)])]), grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a")], config=spb.SubstitutionConfig(element_pool=["Li", "S" * 5000])),
         grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a")], config=spb.SubstitutionConfig(kept_element="K" * 5000)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a")], config=spb.SubstitutionConfig(required_element="S" * 5000)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (spb.SubstituteRequest(prototypes=[li_s("a")], config=spb.SubstitutionConfig(element_pool=["Li"] * 200_000)),
         grpc.StatusCode.INVALID_ARGUMENT),
    ],
)  # fmt: skip
def test_substitute_messages_are_bounded(substitution, request_, code):
    start = time.perf_counter()
    assert refused(substitution.Substitute, request_).code() is code
    assert time.perf_counter() - start < 5
