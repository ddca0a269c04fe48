"""``htvs.v1.StructureService`` on loopback: Materialize and Deduplicate against the stage functions.

Prototypes are the small structures of ``tests/data/prototypes/folder`` (LiFePO4 olivine, 28
sites; LiZnPS4, 14 sites; a disordered Li7BiO6), served as a named set or sent inline.
"""

from __future__ import annotations

import json
import warnings

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymatgen.core import Composition, Structure

from htvs.errors import InvalidInput
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import structure_pb2 as pb
from htvs.grpc.gen import structure_pb2_grpc as pb_grpc
from htvs.grpc.gen import substitution_pb2 as spb
from htvs.grpc.serve import AVAILABLE_SERVICES, PLANNED_SERVICES, build_servicer, check_service_name
from htvs.grpc.server import create_server
from htvs.grpc.structure_service import StructureServicer
from htvs.prototypes import PrototypeSet
from htvs.structures import MaterializedStructure, deduplicate, materialize
from htvs.structures.materialize import MaterializeConfig

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]

from conftest import PROTOTYPE_FOLDER as FOLDER, folder_prototype as _prototype
SERVICE = "htvs.v1.StructureService"
MAX_ROWS = 8
# LiFePO4 -> LiMgSO4 and LiZnPS4 -> LiMgSO4 (the paper's rule: one non-Li species becomes S)
LFP_MG_S = [("Fe", "Mg"), ("P", "S"), ("O", "O")]
LFP_S_MG = [("Fe", "S"), ("P", "Mg"), ("O", "O")]
LZPS_MG_S = [("Zn", "Mg"), ("P", "S"), ("S", "O")]
LZPS_S_MG = [("Zn", "S"), ("P", "Mg"), ("S", "O")]




@pytest.fixture(scope="module")
def stub(prototypes):
    """A StructureService stub with the set "toy" (the two prototypes) and a row limit of MAX_ROWS."""
    servicer = StructureServicer({"toy": PrototypeSet(tuple(prototypes.values()))}, max_batch_rows=MAX_ROWS)
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.StructureServiceStub(channel)
    channel.close()
    server.stop(None).wait()


def substitution(prototype_id: str, pairs: list[tuple[str, str]], formula: str = "") -> spb.Substitution:
    replacements = [spb.Replacement(from_element=a, to_element=b) for a, b in pairs]
    return spb.Substitution(prototype_id=prototype_id, replacements=replacements, formula=formula)


def table(*rows: tuple[str, list[tuple[str, str]]]):
    """The stage's substitution table of (prototype_id, pairs) rows."""
    import pandas as pd

    width = max(len(pairs) for _, pairs in rows)
    records = []
    for prototype_id, pairs in rows:
        record: dict[str, object] = {"prototype_id": prototype_id}
        for j in range(width):
            record[f"from_{j}"], record[f"to_{j}"] = pairs[j] if j < len(pairs) else (None, None)
        records.append(record)
    return pd.DataFrame.from_records(records)


def cif_of(item_id: str, structure: Structure) -> pb.StructureData:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():  # the prototype CIF's repeated site labels
        warnings.simplefilter("ignore", UserWarning)
        return pb.StructureData(id=item_id, cif=str(CifWriter(structure)))


def json_of(item_id: str, structure: Structure) -> pb.StructureData:
    return pb.StructureData(id=item_id, pymatgen_json=json.dumps(structure.as_dict()))


def shuffled_translated(structure: Structure, seed: int) -> Structure:
    """The same crystal with its sites permuted and its origin moved."""
    order = np.random.default_rng(seed).permutation(len(structure))
    return Structure(
        structure.lattice, [structure[i].specie for i in order], (structure.frac_coords[order] + 0.237) % 1.0
    )


# --------------------------------------------------------------------------- Materialize


def test_materialize_a_named_set_matches_the_stage(stub, prototypes) -> None:
    rows = [("LiFePO4", LFP_MG_S), ("LiFePO4", [("Fe", "Mg"), ("Xx", "S")]), ("nope", LFP_MG_S),
            ("LiZnPS4", LZPS_MG_S), ("LiFePO4", [("Fe", "Qq")])]  # fmt: skip
    request = pb.MaterializeRequest(substitutions=[substitution(p, pairs) for p, pairs in rows], prototype_set="toy")
    response = stub.Materialize(request, timeout=30)
    expected = materialize(prototypes, table(*rows))
    assert (response.n_materialized, response.n_errors) == (2, 3)
    assert [row.id for row in response.rows] == [e.id if isinstance(e, MaterializedStructure) else e.value
                                                 for e in expected]
    good = [(row, e) for row, e in zip(response.rows, expected) if isinstance(e, MaterializedStructure)]
    assert [row.id for row, _ in good] == ["LiFePO4|Fe:Mg,P:S,O:O", "LiZnPS4|Zn:Mg,P:S,S:O"]
    for row, stage in good:
        assert not row.HasField("error")
        assert (row.formula, row.prototype_id) == (stage.formula, "LiFePO4" if "LiFePO4" in row.id else "LiZnPS4")
        assert row.formula == "LiMgSO4"
        assert row.volume_scale == pytest.approx(stage.volume_scale)
        assert [(r.from_element, r.to_element) for r in row.replacements] == list(stage.substitution)
        assert row.structure.id == row.id and row.structure.WhichOneof("content") == "cif"
        built = Structure.from_str(row.structure.cif, fmt="cif")
        assert len(built) == len(stage.structure)
        assert built.composition == stage.structure.composition
        assert built.volume == pytest.approx(stage.structure.volume, rel=1e-5)
    errors = {row.error.index: row.error for row in response.rows if row.HasField("error")}
    assert set(errors) == {1, 2, 4}
    assert "'Xx'" in errors[1].message and "LiFePO4" in errors[1].message
    assert "'nope'" in errors[2].message and response.rows[2].prototype_id == "nope"
    assert "'Qq'" in errors[4].message and errors[4].kind == "InvalidInput"
    assert not response.rows[1].HasField("structure") and not response.rows[1].HasField("volume_scale")


def test_materialize_inline_prototypes_as_json_without_rescaling(stub, prototypes) -> None:
    lzps = prototypes["LiZnPS4"].structure
    request = pb.MaterializeRequest(
        substitutions=[substitution("mine", LZPS_S_MG, formula="LiMgSO4"), substitution("mine", [])],
        prototypes=[cif_of("mine", lzps)],
        options=pb.MaterializeOptions(rescale_volume=pb.VOLUME_RESCALING_NONE),
        output_format=pb.STRUCTURE_FORMAT_PYMATGEN_JSON,
    )
    response = stub.Materialize(request, timeout=30)
    first, identity = response.rows
    assert first.id == "mine|Zn:S,P:Mg,S:O" and first.volume_scale == 1.0
    built = Structure.from_dict(json.loads(first.structure.pymatgen_json))
    np.testing.assert_allclose(built.lattice.matrix, lzps.lattice.matrix, atol=1e-6)
    assert built.composition.reduced_formula == "LiMgSO4"
    # no replacements: the prototype itself, as the stage builds it
    assert identity.id == "mine|" and identity.formula == Composition("LiZnPS4").reduced_formula


def test_materialize_checks_the_row_formula(stub) -> None:
    rows = [substitution("LiFePO4", LFP_MG_S, formula="Li2MgSO4")]
    response = stub.Materialize(pb.MaterializeRequest(substitutions=rows, prototype_set="toy"), timeout=30)
    (row,) = response.rows
    assert "'Li2MgSO4'" in row.error.message and "'LiMgSO4'" in row.error.message
    unchecked = pb.MaterializeRequest(
        substitutions=rows, prototype_set="toy", options=pb.MaterializeOptions(check_formula=False)
    )
    (row,) = stub.Materialize(unchecked, timeout=30).rows
    assert not row.HasField("error") and row.formula == "LiMgSO4"


def _materialize(**fields) -> pb.MaterializeRequest:
    fields.setdefault("substitutions", [substitution("LiFePO4", LFP_MG_S)])
    return pb.MaterializeRequest(**fields)


def _disordered() -> pb.StructureData:
    return pb.StructureData(id="Li7BiO6", cif=(FOLDER / "Li7BiO6_disordered.cif").read_text())


@pytest.mark.parametrize(
    ("request_message", "code", "named"),
    [
        (_materialize(substitutions=[], prototype_set="toy"), "INVALID_ARGUMENT", "substitutions is empty"),
        (_materialize(substitutions=[substitution("LiFePO4", LFP_MG_S)] * (MAX_ROWS + 1), prototype_set="toy"),
         "INVALID_ARGUMENT", f"limit of {MAX_ROWS}"),
        (_materialize(), "INVALID_ARGUMENT", "no prototypes and no prototype_set"),
        (_materialize(prototype_set="toy", prototypes=[_disordered()]), "INVALID_ARGUMENT", "not both"),
        (_materialize(prototype_set="mp"), "NOT_FOUND", "'mp'"),
        (_materialize(prototypes=[pb.StructureData(id="junk", cif="data_x\n_nothing here\n")]),
         "INVALID_ARGUMENT", "prototypes[0] ('junk')"),
        (_materialize(prototypes=[_disordered()]), "INVALID_ARGUMENT", "disordered"),
        (_materialize(prototypes=[pb.StructureData(id="a", pymatgen_json="{")] ), "INVALID_ARGUMENT", "invalid JSON"),
        (_materialize(prototypes=[pb.StructureData(id="a")]), "INVALID_ARGUMENT", "neither cif nor pymatgen_json"),
        (_materialize(prototype_set="toy", input=common_pb2.StoreInput(key="s3/k")), "INVALID_ARGUMENT",
         "inline (substitutions) or input, not both"),
        (_materialize(prototype_set="toy", output_format=7), "INVALID_ARGUMENT", "output_format 7"),
    ],
    ids=["empty", "too-many", "no-prototypes", "both", "unknown-set", "bad-cif", "disordered", "bad-json",
         "no-content", "inline-and-store", "bad-format"],  # fmt: skip
)
def test_materialize_refuses_bad_requests_naming_the_value(stub, request_message, code, named) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Materialize(request_message, timeout=30)
    assert info.value.code() == getattr(grpc.StatusCode, code)
    assert named in info.value.details()


def test_duplicate_inline_prototype_ids_are_refused(stub, prototypes) -> None:
    lzps = prototypes["LiZnPS4"].structure
    request = _materialize(prototypes=[cif_of("p", lzps), json_of("p", lzps)])
    with pytest.raises(grpc.RpcError) as info:
        stub.Materialize(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prototypes[1]" in info.value.details() and "'p' is given twice" in info.value.details()


# --------------------------------------------------------------------------- Deduplicate


def test_materialize_then_deduplicate_matches_the_stage(stub, prototypes) -> None:
    rows = [("LiFePO4", LFP_MG_S), ("LiFePO4", LFP_S_MG), ("LiZnPS4", LZPS_MG_S), ("LiZnPS4", LZPS_S_MG)]
    built = stub.Materialize(
        pb.MaterializeRequest(substitutions=[substitution(p, pairs) for p, pairs in rows], prototype_set="toy"),
        timeout=30,
    )
    structures = [row.structure for row in built.rows]
    first = Structure.from_str(structures[0].cif, fmt="cif")
    structures.insert(2, json_of("copy:shuffled", shuffled_translated(first, 7)))
    structures.append(cif_of("copy:supercell", first.make_supercell([2, 1, 1], in_place=False)))
    response = stub.Deduplicate(pb.DeduplicateRequest(structures=structures, include_structures=True), timeout=60)
    stage = deduplicate(
        [(s.id, Structure.from_str(s.cif, fmt="cif") if s.cif else Structure.from_dict(json.loads(s.pymatgen_json)))
         for s in structures]  # fmt: skip
    )
    assert list(response.unique_ids) == stage.unique_ids == [row.id for row in built.rows]
    assert {d.id: d.duplicate_of for d in response.duplicates} == stage.duplicate_of == {
        "copy:shuffled": built.rows[0].id, "copy:supercell": built.rows[0].id,
    }  # fmt: skip
    counts = response.counts
    assert (counts.n_in, counts.n_out, counts.n_removed, counts.n_refused) == (6, 4, 2, 0)
    assert counts.n_comparisons == stage.n_comparisons
    assert [s.id for s in response.unique] == list(response.unique_ids)
    assert response.unique[0] == structures[0]  # the representatives as given


def test_deduplicate_refuses_bad_items_per_row(stub, prototypes) -> None:
    lfp = prototypes["LiFePO4"].structure
    structures = [
        cif_of("lfp", lfp),
        pb.StructureData(id="junk", cif="data_x\n_nothing here\n"),
        pb.StructureData(id="", pymatgen_json=json.dumps(lfp.as_dict())),
        _disordered(),
        json_of("lfp", lfp),  # the same id again
        json_of("lfp-copy", shuffled_translated(lfp, 3)),
        pb.StructureData(id="empty"),
    ]
    response = stub.Deduplicate(pb.DeduplicateRequest(structures=structures), timeout=60)
    refused = {e.index: e for e in response.refused}
    assert sorted(refused) == [1, 2, 3, 4, 6]
    assert refused[1].value == "junk" and "unreadable CIF" in refused[1].message
    assert "structures[2] has no id" in refused[2].message
    assert "disordered" in refused[3].message and refused[3].value == "Li7BiO6"
    assert "duplicate id 'lfp'" in refused[4].message and "structures[4]" in refused[4].message
    assert "neither cif nor pymatgen_json" in refused[6].message
    assert list(response.unique_ids) == ["lfp"]
    assert [(d.id, d.duplicate_of) for d in response.duplicates] == [("lfp-copy", "lfp")]
    assert (response.counts.n_in, response.counts.n_out, response.counts.n_refused) == (7, 1, 5)
    assert not response.unique  # include_structures not set


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (pb.DedupeOptions(ltol=-0.1), "options.ltol must be > 0, got -0.1 (allowed: (0, 1])"),
        (pb.DedupeOptions(stol=float("nan")), "options.stol"),
        (pb.DedupeOptions(angle_tol_deg=0.0), "options.angle_tol_deg"),
    ],
)
def test_deduplicate_refuses_bad_options(stub, prototypes, options, named) -> None:
    request = pb.DeduplicateRequest(structures=[cif_of("a", prototypes["LiFePO4"].structure)], options=options)
    with pytest.raises(grpc.RpcError) as info:
        stub.Deduplicate(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.details()


def test_deduplicate_refuses_empty_and_oversize_batches(stub, prototypes) -> None:
    one = cif_of("a", prototypes["LiFePO4"].structure)
    for structures, named in (([], "structures is empty"), ([one] * (MAX_ROWS + 1), f"limit of {MAX_ROWS}")):
        with pytest.raises(grpc.RpcError) as info:
            stub.Deduplicate(pb.DeduplicateRequest(structures=structures), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in info.value.details()


# --------------------------------------------------------------------------- serving


def test_structure_service_is_served_with_health_and_a_folder_set() -> None:
    assert "structure" in AVAILABLE_SERVICES and "structure" not in PLANNED_SERVICES
    assert check_service_name("structure") == "structure"
    with pytest.raises(InvalidInput, match="unknown service 'relaxer'.*available: .*generator.*dft"):
        check_service_name("relaxer")
    servicer = build_servicer("structure", prototype_sources=(str(FOLDER),), max_batch_rows=3)
    assert servicer.max_batch_rows == 3
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            # the folder's LiFePO4.json is served under its file stem
            rows = [substitution("LiFePO4", LFP_MG_S)]
            request = pb.MaterializeRequest(substitutions=rows, prototype_set=str(FOLDER))
            (row,) = pb_grpc.StructureServiceStub(channel).Materialize(request, timeout=30).rows
            assert row.formula == "LiMgSO4", row.error.message
            assert row.volume_scale == pytest.approx(
                materialize([_prototype("LiFePO4", "LiFePO4.json")], table(("LiFePO4", LFP_MG_S)),
                            MaterializeConfig())[0].volume_scale  # fmt: skip
            )
    finally:
        server.stop(None).wait()
