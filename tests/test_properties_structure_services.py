"""Property-based tests (Hypothesis) of StructureService and ConductivityService request
validation: whatever the rows and options hold, the answer is OK (with per-row errors) or a
clear refusal with a bounded message, never INTERNAL or UNKNOWN, and the servers keep serving."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from htvs.grpc.gen import conductivity_pb2 as cpb  # noqa: E402
from htvs.grpc.gen import conductivity_pb2_grpc as cpb_grpc  # noqa: E402
from htvs.grpc.gen import structure_pb2 as pb  # noqa: E402
from htvs.grpc.gen import structure_pb2_grpc as pb_grpc  # noqa: E402
from htvs.grpc.gen import substitution_pb2 as spb  # noqa: E402
from htvs.grpc.server import MAX_STATUS_MESSAGE  # noqa: E402

pytestmark = pytest.mark.grpc

FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e300, 5e-324]))


def _cif() -> str:
    return (FOLDER / "LiZnPS4.cif").read_text()


def _structure_json() -> dict:
    from htvs.prototypes.readers import parse_cif

    return parse_cif(_cif())[0].as_dict()


json_trees = st.recursive(
    st.none() | st.booleans() | floats | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["@module", "@class", "lattice", "sites",
                                                                        "species", "abc", "xyz", "matrix", "x"]),
                                                        c, max_size=4),
    max_leaves=12,
)


@st.composite
def structures(draw) -> pb.StructureData:
    """A structure row: a good one, a mangled good one, or garbage in either format."""
    row_id = draw(st.one_of(st.text(max_size=12), st.just("a")))
    kind = draw(st.sampled_from(["cif", "bad-cif", "json", "mangled-json", "tree"]))
    if kind == "cif":
        return pb.StructureData(id=row_id, cif=_cif())
    if kind == "bad-cif":
        text = _cif()
        cut = draw(st.integers(0, len(text)))
        return pb.StructureData(id=row_id, cif=text[:cut] + draw(st.text(max_size=20)))
    if kind == "json":
        return pb.StructureData(id=row_id, pymatgen_json=json.dumps(_structure_json()))
    if kind == "mangled-json":
        data = _structure_json()
        path = draw(st.sampled_from(["lattice", "sites", "charge", "properties"]))
        data[path] = draw(json_trees)
        return pb.StructureData(id=row_id, pymatgen_json=json.dumps(data, allow_nan=True))
    return pb.StructureData(id=row_id, pymatgen_json=json.dumps(draw(json_trees), allow_nan=True))


@pytest.fixture(scope="module")
def channels():
    from htvs.conductivity.predict import load_ensemble
    from htvs.grpc.conductivity_service import ConductivityServicer
    from htvs.grpc.serve import build_servicer
    from htvs.grpc.server import create_server

    servers, out = [], {}
    for name, servicer in (("structure", build_servicer("structure")),
                           ("conductivity", ConductivityServicer(load_ensemble()))):
        server, port = create_server("127.0.0.1:0", servicer)
        server.start()
        servers.append(server)
        out[name] = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield out
    for channel in out.values():
        channel.close()
    for server in servers:
        server.stop(0)


def _contract(call):
    try:
        answer = call()
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert len(exc.details() or "") <= MAX_STATUS_MESSAGE
        return None
    for field, value in answer.ListFields():  # no NaN in a top-level number of an answer
        if isinstance(value, float):
            assert math.isfinite(value), field.name
    return answer


@given(rows=st.lists(structures(), max_size=4), ltol=st.one_of(st.none(), floats),
       angle=st.one_of(st.none(), floats), include=st.booleans())
def test_deduplicate_keeps_its_contract(channels, rows, ltol, angle, include) -> None:
    options = pb.DedupeOptions()
    if ltol is not None:
        options.ltol = ltol
    if angle is not None:
        options.angle_tol_deg = angle
    stub = pb_grpc.StructureServiceStub(channels["structure"])
    answer = _contract(lambda: stub.Deduplicate(
        pb.DeduplicateRequest(structures=rows, options=options, include_structures=include), timeout=60))
    if answer is not None:  # every row is accounted for: kept, a duplicate, or refused with a reason
        assert answer.counts.n_in == len(rows)
        assert len(answer.unique_ids) + len(answer.duplicates) + len(answer.refused) == len(rows)
        assert all(len(r.message) <= MAX_STATUS_MESSAGE for r in answer.refused)


@given(prototype=structures(), pairs=st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=3),
       formula=st.text(max_size=12), rescale=st.integers(0, 5))
def test_materialize_keeps_its_contract(channels, prototype, pairs, formula, rescale) -> None:
    prototype.id = prototype.id or "p"
    substitution = spb.Substitution(prototype_id=prototype.id, formula=formula,
                                    replacements=[spb.Replacement(from_element=a, to_element=b) for a, b in pairs])
    stub = pb_grpc.StructureServiceStub(channels["structure"])
    _contract(lambda: stub.Materialize(pb.MaterializeRequest(
        substitutions=[substitution], prototypes=[prototype], options=pb.MaterializeOptions(rescale_volume=rescale)),
        timeout=60))


@given(rows=st.lists(structures(), min_size=0, max_size=3), max_atoms=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_conductivity_predict_keeps_its_contract(channels, rows, max_atoms) -> None:
    request = cpb.ConductivityPredictRequest(structures=rows)
    if max_atoms is not None:
        request.max_atoms = max_atoms
    stub = cpb_grpc.ConductivityServiceStub(channels["conductivity"])
    answer = _contract(lambda: stub.Predict(request, timeout=60))
    if answer is not None:
        assert len(answer.rows) == len(rows)
        for row in answer.rows:
            if not row.HasField("error"):
                assert math.isfinite(row.log10_sigma_mean) and 0.0 <= row.p_superionic <= 1.0


def test_the_servers_still_serve(channels) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for channel in channels.values():
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
