"""gRPC services on loopback: every RPC, health, reflection, error mapping, metrics, graceful stop.

Servers bind port 0 on 127.0.0.1 and every test talks through a real channel. The composition
models are tiny ONNX ensembles exported in a fixture (tests/tiny_models.py), so the shipped
models are not needed.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from htvs.composition import predict_compositions
from htvs.composition.predictor import OnnxRoostEnsemble
from htvs.grpc.composition_service import CompositionServicer
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import composition_pb2 as cpb
from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc
from htvs.grpc.gen import substitution_pb2 as spb
from htvs.grpc.gen import substitution_pb2_grpc as spb_grpc
from htvs.grpc.serve import serve
from htvs.grpc.server import create_server
from htvs.grpc.substitution_service import SubstitutionServicer
from htvs.prototypes.records import Prototype, PrototypeSet, SkippedInput
from htvs.substitution import SitePattern, SubstitutionConfig, enumerate_substitutions
from htvs.thermo import HullResult, ReferenceHull, WindowResult, e_above_hull_many, electrochemical_windows
from tiny_models import tiny_model_pair

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]

COMPOSITION = "htvs.v1.CompositionService"
SUBSTITUTION = "htvs.v1.SubstitutionService"
MAX_ROWS = 8


class SlowModel:
    """An ensemble that takes ``delay`` seconds per predict call (for graceful-stop tests)."""

    def __init__(self, inner: OnnxRoostEnsemble, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def predict(self, formulas, batch_size: int = 4096):
        time.sleep(self._delay)
        return self._inner.predict(formulas, batch_size=batch_size)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class BrokenModel(SlowModel):
    def predict(self, formulas, batch_size: int = 4096):
        raise RuntimeError("secret internal detail")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[OnnxRoostEnsemble, OnnxRoostEnsemble]:
    ef, gap = tiny_model_pair(tmp_path_factory.mktemp("models"))  # near -2 eV/atom and 3 eV
    return OnnxRoostEnsemble.from_dir(ef, intra_op_threads=1), OnnxRoostEnsemble.from_dir(gap, intra_op_threads=1)


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


def _started(*servicers, **options):
    server, port = create_server("127.0.0.1:0", *servicers, **options)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def composition(models, hull):
    """(server, channel) of a CompositionService with a row limit of MAX_ROWS and metrics."""
    server, port = _started(CompositionServicer(hull, *models, max_batch_rows=MAX_ROWS), metrics_port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    channel.close()
    server.stop(None).wait()


def li3ps4_prototype() -> Prototype:
    from pymatgen.core import Lattice, Structure

    coords = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.25, 0.25, 0.25],
              [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]]  # fmt: skip
    structure = Structure(Lattice.cubic(6.0), ["Li", "Li", "Li", "P", "S", "S", "S", "S"], coords)
    return Prototype.from_structure("toy:Li3PS4", "bundled", structure)


@pytest.fixture(scope="module")
def substitution():
    """(server, channel) of a SubstitutionService with a toy set and a 64 KiB message limit."""
    toy = PrototypeSet((li3ps4_prototype(),), (SkippedInput("broken.cif", "cannot parse"),))
    server, port = _started(SubstitutionServicer({"toy": toy}, max_prototypes=MAX_ROWS), max_message_bytes=64 * 1024)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    channel.close()
    server.stop(None).wait()


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def pattern(name: str, **amounts: int) -> spb.SitePattern:
    return spb.SitePattern(prototype_id=name, species=[spb.SpeciesAmount(element=e, amount=n) for e, n in amounts.items()])


# --------------------------------------------------------------------------- substitution


def test_substitute_inline_matches_the_stage(substitution) -> None:
    _, channel = substitution
    stub = spb_grpc.SubstitutionServiceStub(channel)
    request = spb.SubstituteRequest(
        prototypes=[pattern("a", Li=3, P=1, S=4), pattern("b", Li=2, O=1)], include_substitutions=True
    )
    response = stub.Substitute(request, timeout=10)
    expected = enumerate_substitutions(
        [SitePattern("a", {"Li": 3, "P": 1, "S": 4}), SitePattern("b", {"Li": 2, "O": 1})], SubstitutionConfig()
    )
    assert (response.n_prototypes, response.n_substitutions) == (2, 53)  # 52 for a ternary, 1 for Li2O
    assert [f.formula for f in response.formulas] == expected.formulas
    assert [f.multiplicity for f in response.formulas] == expected.multiplicity.tolist()
    assert len(response.substitutions) == 53
    last = response.substitutions[-1]
    assert (last.prototype_id, last.formula) == ("b", "Li2S")
    assert [(r.from_element, r.to_element) for r in last.replacements] == [("O", "S")]


def test_substitute_a_named_set_and_list_it(substitution) -> None:
    _, channel = substitution
    stub = spb_grpc.SubstitutionServiceStub(channel)
    listed = stub.ListPrototypes(spb.ListPrototypesRequest(prototype_set="toy"), timeout=10)
    assert [p.prototype_id for p in listed.prototypes] == ["toy:Li3PS4"]
    assert {s.element: s.amount for s in listed.prototypes[0].species} == {"Li": 3, "P": 1, "S": 4}
    assert listed.skipped[0].name == "broken.cif"
    config = spb.SubstitutionConfig(element_pool=["Li", "S", "O", "Se", "Cl"])
    response = stub.Substitute(spb.SubstituteRequest(prototype_set="toy", config=config), timeout=10)
    assert response.n_substitutions == 2 * 3 and not response.substitutions  # k * P(3, 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.Substitute(spb.SubstituteRequest(prototype_set="mp"), timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND and "'mp'" in err.value.details()


# --------------------------------------------------------------------------- composition


def test_predict_rows_and_row_errors(composition, models) -> None:
    _, channel = composition
    formulas = ["Li3PS4", "LiXx", "", "Li2O"]
    response = cpb_grpc.CompositionServiceStub(channel).Predict(cpb.PredictRequest(formulas=formulas), timeout=10)
    expected = predict_compositions(formulas, *models)
    assert [r.formula for r in response.rows] == formulas
    for row, want in zip(response.rows, expected.itertuples(index=False)):
        if want.error is None:
            assert not row.HasField("error")
            assert row.e_form_mean == pytest.approx(want.e_form_mean)
            assert row.band_gap_std == pytest.approx(want.band_gap_std)
        else:
            assert not row.HasField("e_form_mean")
            assert row.error.message == want.error
    assert "Xx" in response.rows[1].error.message and response.rows[1].error.index == 1
    assert "empty formula" in response.rows[2].error.message
    assert [(m.target, m.n_models) for m in response.models] == [("e_form", 2), ("band_gap", 2)]


def test_screen_after_predict(composition) -> None:
    _, channel = composition
    stub = cpb_grpc.CompositionServiceStub(channel)
    predicted = stub.Predict(cpb.PredictRequest(formulas=["LiF", "Li3PS4", "LiXx"]), timeout=10)
    thresholds = cpb.ScreenThresholds(max_e_form_ev_per_atom=5.0, max_e_above_hull_ev_per_atom=5.0)
    response = stub.Screen(cpb.ScreenRequest(predictions=predicted.rows, thresholds=thresholds), timeout=10)
    funnel = response.funnel
    assert (funnel.formulas, funnel.predicted, funnel.e_form_and_hull) == (3, 2, 2)
    assert response.rows[0].HasField("e_above_hull_ev_per_atom") and response.rows[0].HasField("phi_ox_v")
    assert response.rows[0].passed_band_gap  # the tiny gap model says ~3 eV
    assert response.rows[2].prediction.HasField("error") and not response.rows[2].passed
    assert not response.rows[2].HasField("e_above_hull_ev_per_atom")


def test_hull_and_window_match_the_stage(composition, hull) -> None:
    _, channel = composition
    stub = cpb_grpc.CompositionServiceStub(channel)
    queries = [("Li3PS4", -1.2), ("Xx2O", -1.0), ("LiF", None), ("Li2O", math.nan)]
    response = stub.Hull(
        cpb.HullRequest(rows=[cpb.HullQuery(formula=f, e_form_ev_per_atom=e) for f, e in queries]), timeout=10
    )
    expected = e_above_hull_many(hull, [q[0] for q in queries], [q[1] for q in queries])
    assert isinstance(expected[0], HullResult)
    first = response.rows[0]
    assert first.e_above_hull_ev_per_atom == pytest.approx(expected[0].e_above_hull_ev_per_atom)
    assert [(p.formula, pytest.approx(p.fraction)) for p in first.decomposition] == list(expected[0].decomposition)
    assert [r.HasField("error") for r in response.rows] == [False, True, True, True]
    assert "Xx" in response.rows[1].error.message
    assert "nan" in response.rows[3].error.message and response.rows[3].error.index == 3
    for row, stage in zip(response.rows[1:], expected[1:]):  # the stage's record, field for field
        assert (row.error.index, row.error.value, row.error.message, row.error.kind) == (
            stage.index, stage.value, stage.message, stage.kind)

    rows = [cpb.WindowQuery(formula="Li3PS4"), cpb.WindowQuery(formula="P2S5"), cpb.WindowQuery(formula="LiF", e_form_ev_per_atom=-3.2)]
    windows = stub.Window(cpb.WindowRequest(rows=rows), timeout=10).rows
    want = electrochemical_windows(hull, ["Li3PS4", "P2S5", "LiF"], [None, None, -3.2])
    assert isinstance(want[0], WindowResult) and isinstance(want[2], WindowResult)
    assert windows[0].phi_ox_v == pytest.approx(want[0].phi_ox_v)
    assert list(windows[0].oxidation_products) == list(want[0].oxidation_products)
    assert windows[1].HasField("error") and "P2S5" in windows[1].error.value
    assert windows[2].phi_red_v == pytest.approx(want[2].phi_red_v)


def test_the_row_error_record_has_the_fields_of_the_message() -> None:
    from dataclasses import fields

    from htvs.errors import RowError

    assert [f.name for f in fields(RowError)] == list(common_pb2.RowError.DESCRIPTOR.fields_by_name)


# --------------------------------------------------------------------------- bad input


def _bad_requests():
    good = cpb.Prediction(formula="LiF", e_form_mean=-2.0, e_form_std=0.1, band_gap_mean=3.0, band_gap_std=0.1)
    negative_std = cpb.Prediction(formula="Li3PS4", e_form_mean=-1.0, e_form_std=-0.25, band_gap_mean=3.0, band_gap_std=0.1)
    return [
        ("composition", "Predict", cpb.PredictRequest(), "empty"),
        ("composition", "Predict", cpb.PredictRequest(formulas=["LiF"] * (MAX_ROWS + 1)), f"{MAX_ROWS + 1} rows"),
        ("composition", "Predict", cpb.PredictRequest(formulas=["LiF"], input=common_pb2.StoreInput(key="runs/x.parquet")), "or input, not both"),
        ("composition", "Screen", cpb.ScreenRequest(predictions=[good], thresholds=cpb.ScreenThresholds(min_phi_ox_v=math.nan)), "min_phi_ox_v must be a finite number, got nan"),
        ("composition", "Screen", cpb.ScreenRequest(predictions=[good, negative_std]), "e_form_std must be >= 0 eV/atom, got -0.25"),
        ("composition", "Screen", cpb.ScreenRequest(predictions=[cpb.Prediction(formula="LiF")]), "'LiF') has no e_form_mean"),
        ("composition", "Window", cpb.WindowRequest(), "empty"),
        ("composition", "Hull", cpb.HullRequest(rows=[cpb.HullQuery(formula="LiF")] * (MAX_ROWS + 1)), f"{MAX_ROWS + 1} rows"),
        ("substitution", "Substitute", spb.SubstituteRequest(prototypes=[pattern("p", Li=1, Xx=1)]), "'Xx' is not an element symbol"),
        ("substitution", "Substitute", spb.SubstituteRequest(prototypes=[pattern("p", Na=1, Cl=1)]), "'p' has no Li"),
        ("substitution", "Substitute", spb.SubstituteRequest(), "no prototypes"),
        ("substitution", "Substitute", spb.SubstituteRequest(prototypes=[pattern(f"p{i}", Li=1, O=1) for i in range(MAX_ROWS + 1)]), f"{MAX_ROWS + 1} prototypes"),
        ("substitution", "Substitute", spb.SubstituteRequest(prototype_set="toy", config=spb.SubstitutionConfig(element_pool=["Li", "S", "Qq"])), "'Qq'"),
    ]


@pytest.mark.parametrize(("server", "method", "request_message", "named"), _bad_requests())
def test_bad_input_is_invalid_argument_naming_the_value(request, server, method, request_message, named) -> None:
    _, channel = request.getfixturevalue(server)
    stub = (cpb_grpc.CompositionServiceStub if server == "composition" else spb_grpc.SubstitutionServiceStub)(channel)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_message, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()
    name = COMPOSITION if server == "composition" else SUBSTITUTION
    assert health_status(channel, name) == health_pb2.HealthCheckResponse.SERVING


def test_oversize_message_is_refused_by_the_limit(substitution) -> None:
    _, channel = substitution
    stub = spb_grpc.SubstitutionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Substitute(spb.SubstituteRequest(prototypes=[pattern("x" * 100_000, Li=1, O=1)]), timeout=10)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_missing_models_and_internal_errors(models, hull) -> None:
    no_models, port_a = _started(CompositionServicer(hull))
    broken, port_b = _started(CompositionServicer(hull, BrokenModel(models[0], 0), models[1]))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port_a}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                cpb_grpc.CompositionServiceStub(channel).Predict(cpb.PredictRequest(formulas=["LiF"]), timeout=10)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "no composition models" in err.value.details()
        with grpc.insecure_channel(f"127.0.0.1:{port_b}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                cpb_grpc.CompositionServiceStub(channel).Predict(cpb.PredictRequest(formulas=["LiF"]), timeout=10)
            assert err.value.code() is grpc.StatusCode.INTERNAL
            assert "ref " in err.value.details()
            assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
            assert health_status(channel, COMPOSITION) == health_pb2.HealthCheckResponse.SERVING
    finally:
        no_models.stop(None)
        broken.stop(None)


# --------------------------------------------------------------------------- health, reflection, metrics


def test_health_and_reflection(composition, substitution) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    for (_, channel), name in ((composition, COMPOSITION), (substitution, SUBSTITUTION)):
        assert health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert health_status(channel, name) == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(composition[1]))
    methods = {m.name for m in pool.FindServiceByName(COMPOSITION).methods}
    assert methods == {"Predict", "Screen", "Hull", "Window"}


def test_metrics_endpoint_counts_calls(composition) -> None:
    server, channel = composition
    stub = cpb_grpc.CompositionServiceStub(channel)
    stub.Predict(cpb.PredictRequest(formulas=["LiF", "LiXx"]), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Predict(cpb.PredictRequest(), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    labels = 'method="Predict",service="CompositionService"'
    assert f'htvs_grpc_requests_total{{code="OK",{labels}}}' in text
    assert f'htvs_grpc_requests_total{{code="INVALID_ARGUMENT",{labels}}}' in text
    assert f"htvs_grpc_request_duration_seconds_bucket{{le=\"0.001\",{labels}}}" in text
    rows = [line for line in text.splitlines() if line.startswith(f"htvs_rows_processed_total{{{labels}}}")]
    assert rows and float(rows[0].split()[-1]) >= 2
    assert f"htvs_row_errors_total{{{labels}}}" in text


# --------------------------------------------------------------------------- shutdown


def test_stop_is_graceful(models, hull) -> None:
    server, port = _started(CompositionServicer(hull, SlowModel(models[0], 1.0), models[1]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = cpb_grpc.CompositionServiceStub(channel)
        in_flight = stub.Predict.future(cpb.PredictRequest(formulas=["Li3PS4"]), timeout=20)
        time.sleep(0.3)
        done = server.stop(grace=10)
        assert health_status_or_none(channel) in (health_pb2.HealthCheckResponse.NOT_SERVING, None)
        assert in_flight.result().rows[0].HasField("e_form_mean")  # finished within the grace
        assert done.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(cpb.PredictRequest(formulas=["LiF"]), timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def health_status_or_none(channel: grpc.Channel) -> int | None:
    try:
        return health_status(channel, COMPOSITION)
    except grpc.RpcError:
        return None  # already refusing new calls


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_serve_stops_gracefully_on_sigterm(models, hull) -> None:
    outcome: dict[str, object] = {}

    def client(port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cpb_grpc.CompositionServiceStub(channel)
            future = stub.Predict.future(cpb.PredictRequest(formulas=["Li3PS4"]), timeout=20)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)
            outcome["rows"] = len(future.result().rows)

    servicer = CompositionServicer(hull, SlowModel(models[0], 1.0), models[1])
    thread: list[threading.Thread] = []
    handler_before = signal.getsignal(signal.SIGTERM)

    def ready(server, port: int) -> None:
        outcome["port"] = port
        thread.append(threading.Thread(target=client, args=(port,)))
        thread[0].start()

    serve("composition", 0, host="127.0.0.1", servicer=servicer, grace_s=10, ready=ready)  # returns on SIGTERM
    thread[0].join(10)
    assert outcome["rows"] == 1
    assert signal.getsignal(signal.SIGTERM) == handler_before  # serve restored the handler
    with grpc.insecure_channel(f"127.0.0.1:{outcome['port']}") as channel:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
