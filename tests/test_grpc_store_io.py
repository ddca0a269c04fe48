"""Batch RPCs with their rows in the store (``input``): read, chunked, written content-addressed.

Real servers on loopback over real channels, a directory store; the answers are compared with
the same rows sent inline.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import composition_pb2 as cpb
from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc
from htvs.grpc.gen import dft_runner_pb2 as dpb
from htvs.grpc.gen import dft_runner_pb2_grpc as dpb_grpc
from htvs.grpc.gen import structure_pb2 as spb
from htvs.grpc.gen import structure_pb2_grpc as spb_grpc
from htvs.grpc.gen import substitution_pb2 as subpb
from htvs.grpc.gen import substitution_pb2_grpc as subpb_grpc
from htvs.grpc.server import create_server
from htvs.store import open_store
from tiny_models import tiny_model_pair

pytestmark = pytest.mark.grpc

FORMULAS = ["Li3PS4", "LiF", "Li2O", "Li6PS5Cl", "LiCl", "Li3N", "Li2S", "LiBr", "Li3P", "LiI", "Xx2O", "Li7La3Zr2O12"]
CIF_DIR = Path(__file__).parent / "data" / "prototypes" / "folder"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(tmp_path_factory.mktemp("server-store"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory, store):
    """Composition (4 rows per call, so a 12-row table takes 3 calls), structure, substitution and
    dft servers sharing one store; name -> channel."""
    from htvs.composition.ship import load_ensemble
    from htvs.grpc.composition_service import CompositionServicer
    from htvs.grpc.serve import build_servicer
    from htvs.thermo import ReferenceHull

    models = tiny_model_pair(tmp_path_factory.mktemp("models"))
    servicers = {
        "composition": CompositionServicer(ReferenceHull.bundled(), load_ensemble("e_form", models[0]),
                                           load_ensemble("band_gap", models[1]), max_batch_rows=4),
        "structure": build_servicer("structure"),
        "substitution": build_servicer("substitution"),
        "dft": build_servicer("dft"),
    }
    started, channels = [], {}
    for name, servicer in servicers.items():
        servicer.store = store
        server, port = create_server("127.0.0.1:0", servicer)
        server.start()
        started.append(server)
        channels[name] = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channels
    for channel in channels.values():
        channel.close()
    for server in started:
        server.stop(0)


def _ref(key: str, store_url: str = "") -> common_pb2.StoreInput:
    return common_pb2.StoreInput(store_url=store_url, key=key)


def test_predict_and_screen_from_the_store_equal_the_inline_answers(servers, store) -> None:
    stub = cpb_grpc.CompositionServiceStub(servers["composition"])
    store.put_table("inputs/formulas.parquet", pa.table({"formula": FORMULAS, "note": ["x"] * len(FORMULAS)}))
    answer = stub.Predict(cpb.PredictRequest(input=_ref("inputs/formulas.parquet")), timeout=60)
    assert not answer.rows and answer.output.rows["rows"] == len(FORMULAS)
    assert answer.output.store_url == store.url and store.exists(answer.output.manifest_key)
    stored = store.get_table(answer.output.keys["rows"]).to_pylist()
    inline = [row for start in range(0, len(FORMULAS), 4)
              for row in stub.Predict(cpb.PredictRequest(formulas=FORMULAS[start:start + 4]), timeout=60).rows]
    assert [r["formula"] for r in stored] == [r.formula for r in inline]
    for got, want in zip(stored, inline):
        if want.HasField("error"):
            assert got["error"]["message"] == want.error.message and got["e_form_mean"] is None  # unset: null
            assert got["error"]["index"] == FORMULAS.index(got["formula"])  # the row in the table, not the chunk
        else:
            assert got["e_form_mean"] == pytest.approx(want.e_form_mean)
    assert len(answer.models) == 2  # the summary keeps the models of the first chunk, once
    # the same call again finds the finished result
    again = stub.Predict(cpb.PredictRequest(input=_ref("inputs/formulas.parquet")), timeout=60)
    assert again.output.manifest_key == answer.output.manifest_key and len(again.models) == 2

    # stage 3 on the stored predictions (rows with an error are per-row errors, as inline)
    screened = stub.Screen(cpb.ScreenRequest(input=_ref(answer.output.keys["rows"]),
                                             thresholds=cpb.ScreenThresholds(max_e_above_hull_ev_per_atom=5.0)),
                           timeout=60)
    inline_screen = stub.Screen(cpb.ScreenRequest(predictions=[r for r in inline if not r.HasField("error")][:4],
                                                  thresholds=cpb.ScreenThresholds(max_e_above_hull_ev_per_atom=5.0)),
                                timeout=60)
    assert screened.output.rows["rows"] == len(FORMULAS)
    assert screened.funnel.formulas == len(FORMULAS)  # summed over the 3 chunks
    assert screened.funnel.predicted == len(FORMULAS) - 1  # Xx2O has no prediction
    assert inline_screen.funnel.formulas == 4


def test_dedupe_and_substitute_from_the_store(servers, store) -> None:
    cif = (CIF_DIR / "LiZnPS4.cif").read_text()
    store.put_table("inputs/structures.parquet", pa.table({"id": ["a", "b", "c"], "cif": [cif, cif, "junk"]}))
    dedupe = spb_grpc.StructureServiceStub(servers["structure"]).Deduplicate(
        spb.DeduplicateRequest(input=_ref("inputs/structures.parquet")), timeout=120)
    assert store.get_table(dedupe.output.keys["unique_ids"]).column("unique_ids").to_pylist() == ["a"]
    assert store.get_table(dedupe.output.keys["duplicates"]).to_pylist()[0]["id"] == "b"
    assert dedupe.output.rows["refused"] == 1 and dedupe.counts.n_refused == 1 and dedupe.counts.n_in == 3

    species = [{"element": "Li", "amount": 1}, {"element": "Zn", "amount": 1}, {"element": "P", "amount": 1},
               {"element": "S", "amount": 4}]
    store.put_table("inputs/patterns.parquet", pa.table({"prototype_id": ["LiZnPS4"], "species": [species]}))
    stub = subpb_grpc.SubstitutionServiceStub(servers["substitution"])
    stored = stub.Substitute(subpb.SubstituteRequest(input=_ref("inputs/patterns.parquet"), include_substitutions=True),
                             timeout=120)
    inline = stub.Substitute(subpb.SubstituteRequest(
        prototypes=[subpb.SitePattern(prototype_id="LiZnPS4", species=[subpb.SpeciesAmount(**s) for s in species])],
        include_substitutions=True), timeout=120)
    assert stored.n_substitutions == inline.n_substitutions > 0
    formulas = store.get_table(stored.output.keys["formulas"]).column("formula").to_pylist()
    assert formulas == [row.formula for row in inline.formulas]
    assert stored.output.rows["substitutions"] == inline.n_substitutions


def test_submit_reads_its_cif_from_the_store(servers, store) -> None:
    store.put_bytes("inputs/no-li.cif", (CIF_DIR / "LiZnPS4.cif").read_text().replace("Li", "Na").encode())
    stub = dpb_grpc.DFTRunnerServiceStub(servers["dft"])
    with pytest.raises(grpc.RpcError) as err:  # read from the store, then refused for what it holds
        stub.Submit(dpb.SubmitRequest(id="x", input=_ref("inputs/no-li.cif")), timeout=60)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "Li" in err.value.details()


@pytest.mark.parametrize(("key", "store_url", "code", "named"), [
    ("../etc/passwd", "", "INVALID_ARGUMENT", "'..' segment"),
    ("/abs.parquet", "", "INVALID_ARGUMENT", "starts with '/'"),
    ("inputs/formulas.parquet", "/etc", "INVALID_ARGUMENT", "outside this server's store"),
    ("inputs/formulas.parquet", "s3://bucket/x", "INVALID_ARGUMENT", "outside this server's store"),
    ("inputs/missing.parquet", "", "NOT_FOUND", "inputs/missing.parquet"),
    ("inputs/not-parquet.bin", "", "INVALID_ARGUMENT", "not a Parquet table"),
    ("inputs/empty.parquet", "", "INVALID_ARGUMENT", "no rows"),
    ("inputs/two-columns.parquet", "", "INVALID_ARGUMENT", "no column 'formulas' or 'formula'"),
])
def test_store_inputs_stay_inside_the_store_and_are_checked(servers, store, key, store_url, code, named) -> None:
    store.put_bytes("inputs/not-parquet.bin", b"hello")
    store.put_table("inputs/empty.parquet", pa.table({"formula": pa.array([], type=pa.string())}))
    store.put_table("inputs/two-columns.parquet", pa.table({"a": ["LiF"], "b": ["x"]}))
    stub = cpb_grpc.CompositionServiceStub(servers["composition"])
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(cpb.PredictRequest(input=_ref(key, store_url)), timeout=30)
    assert err.value.code() is getattr(grpc.StatusCode, code)
    assert named in err.value.details()


def test_a_server_without_a_store_says_so() -> None:
    from htvs.grpc.serve import build_servicer

    server, port = create_server("127.0.0.1:0", build_servicer("substitution"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                subpb_grpc.SubstitutionServiceStub(channel).Substitute(
                    subpb.SubstituteRequest(input=_ref("x.parquet")), timeout=30)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "--store" in err.value.details()
    finally:
        server.stop(0)


def test_chunked_counts_add_up_and_descriptions_do_not(store) -> None:
    """Three structures one per call: the counts are summed, the model count and the atom limit
    stay what one call reports."""
    from htvs.conductivity.predict import load_ensemble
    from htvs.grpc.conductivity_service import ConductivityServicer
    from htvs.grpc.gen import conductivity_pb2 as pb
    from htvs.grpc.gen import conductivity_pb2_grpc as pb_grpc

    servicer = ConductivityServicer(load_ensemble(), max_batch_rows=1)
    servicer.store = store
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    cif = (CIF_DIR / "LiZnPS4.cif").read_text()
    store.put_table("inputs/three.parquet", pa.table({"id": ["a", "b", "c"], "cif": [cif, "junk", cif]}))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ConductivityServiceStub(channel)
            one = stub.Predict(pb.ConductivityPredictRequest(structures=[spb.StructureData(id="a", cif=cif)]), timeout=60)
            answer = stub.Predict(pb.ConductivityPredictRequest(input=_ref("inputs/three.parquet")), timeout=60)
    finally:
        server.stop(0)
    assert (answer.n_predicted, answer.n_errors) == (2, 1)
    assert (answer.n_models, answer.max_atoms) == (one.n_models, one.max_atoms)
    rows = store.get_table(answer.output.keys["rows"]).to_pylist()
    assert rows[1]["error"]["index"] == 1 and rows[0]["error"] is None
