"""``htvs.v1.ConductivityService`` on loopback: Predict (per-row errors) and ModelInfo.

The ensemble is the shipped one (``src/htvs/models/conductivity``); set
``HTVS_TEST_CONDUCTIVITY_MODELS=DIR`` to run against another ensemble folder. The model is
retrained from time to time, so no test asserts a predicted number: only that predictions are
finite, in range, and those of the stage function itself.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import grpc
import pytest
from pymatgen.core import Lattice, Structure

from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import conductivity_pb2 as pb
from htvs.grpc.gen import conductivity_pb2_grpc as pb_grpc
from htvs.grpc.gen import structure_pb2 as spb
from htvs.grpc.serve import AVAILABLE_SERVICES, build_servicer
from htvs.grpc.server import create_server

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(180)]

MAX_ROWS = 10
MODELS = os.environ.get("HTVS_TEST_CONDUCTIVITY_MODELS") or None


def li_cifs(n: int) -> list[tuple[str, str]]:
    """``(id, CIF text)`` of the ``n`` shortest bundled OBELiX CIFs holding an ordered Li structure."""
    from htvs.datasets import load_obelix_cifs

    out = []
    for cif in sorted(load_obelix_cifs(), key=lambda c: len(c.text)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif.text, fmt="cif")
        if structure.is_ordered and "Li" in structure.composition and len(structure) <= 40:
            out.append((cif.id, cif.text))
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} small Li CIFs in the bundled OBELiX set")


def li2o() -> Structure:
    """Antifluorite Li2O (a = 4.61 Å), 12 sites."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]])


def as_json(item_id: str, structure: Structure) -> spb.StructureData:
    return spb.StructureData(id=item_id, pymatgen_json=json.dumps(structure.as_dict()))


@pytest.fixture(scope="module")
def servicer():
    return build_servicer("conductivity", conductivity_models=MODELS, max_batch_rows=MAX_ROWS)


@pytest.fixture(scope="module")
def stub(servicer):
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ConductivityServiceStub(channel)
    channel.close()
    server.stop(None).wait()


def assert_predicted(row: pb.ConductivityRow) -> None:
    assert not row.HasField("error") and not row.no_lithium, row.error.message
    for name in ("log10_sigma_mean", "log10_sigma_std", "p_superionic"):
        assert row.HasField(name) and math.isfinite(getattr(row, name)), name
    assert row.log10_sigma_std >= 0.0
    assert 0.0 <= row.p_superionic <= 1.0
    assert -20.0 < row.log10_sigma_mean < 5.0  # log10(S/cm): any physical conductivity


def assert_not_predicted(row: pb.ConductivityRow) -> None:
    assert row.HasField("error")
    for name in ("log10_sigma_mean", "log10_sigma_std", "p_superionic"):
        assert not row.HasField(name), name


def test_predict_batch_goes_on_past_bad_rows(stub, servicer) -> None:
    from htvs.conductivity.predict import ConductivityConfig, ConductivityPrediction, predict_conductivity

    (id_a, cif_a), (id_b, cif_b) = li_cifs(2)
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan = li2o().as_dict()
    nan["sites"][0]["abc"][0] = float("nan")
    structures = [
        spb.StructureData(id=id_a, cif=cif_a),
        spb.StructureData(id="malformed", cif="data_x\n_this is not a cif at all\n"),
        as_json("NaCl", nacl),
        as_json("big", li2o() * (2, 2, 2)),  # 96 sites
        spb.StructureData(id="nan", pymatgen_json=json.dumps(nan)),
        spb.StructureData(id="bad-json", pymatgen_json="{not json"),
        spb.StructureData(id="empty"),
        as_json("Li2O", li2o()),
        spb.StructureData(id=id_b, cif=cif_b),
    ]
    response = stub.Predict(pb.ConductivityPredictRequest(structures=structures, max_atoms=50), timeout=120)
    rows = response.rows
    assert [r.id for r in rows] == [s.id for s in structures]
    assert (response.n_predicted, response.n_errors, response.max_atoms) == (3, 6, 50)
    assert response.n_models >= 1
    for i in (0, 7, 8):
        assert_predicted(rows[i])
    for i in (1, 2, 3, 4, 5, 6):
        assert_not_predicted(rows[i])
        assert rows[i].error.index == i and rows[i].error.value == structures[i].id
    assert "malformed CIF" in rows[1].error.message
    assert rows[2].no_lithium and rows[2].error.kind == "NoLithium" and "no Li" in rows[2].error.message
    assert not any(rows[i].no_lithium for i in (1, 3, 4, 5, 6))
    assert "96 sites" in rows[3].error.message and "limit of 50" in rows[3].error.message
    assert "NaN" in rows[4].error.message
    assert "structures[5] ('bad-json')" in rows[5].error.message and "invalid JSON" in rows[5].error.message
    assert "neither cif nor pymatgen_json" in rows[6].error.message
    # the service answers what the stage function answers
    expected = predict_conductivity([(id_a, cif_a), ("Li2O", li2o())], servicer.ensemble, ConductivityConfig())
    for row, stage in zip((rows[0], rows[7]), expected, strict=True):
        assert isinstance(stage, ConductivityPrediction)
        assert row.log10_sigma_mean == pytest.approx(stage.log10_sigma_mean, abs=1e-6)
        assert row.log10_sigma_std == pytest.approx(stage.log10_sigma_std, abs=1e-6)
        assert row.p_superionic == pytest.approx(stage.p_superionic, abs=1e-6)


def test_server_atom_limit_applies_without_max_atoms(stub, servicer) -> None:
    limit = servicer.config.max_atoms
    n = math.ceil(((limit + 1) / len(li2o())) ** (1 / 3))
    big = li2o() * (n, n, n)
    assert len(big) > limit
    response = stub.Predict(pb.ConductivityPredictRequest(structures=[as_json("big", big)]), timeout=60)
    (row,) = response.rows
    assert response.max_atoms == limit
    assert f"limit of {limit} atoms" in row.error.message and f"{len(big)} sites" in row.error.message


def test_untrusted_structures_are_row_errors_and_import_nothing(stub) -> None:
    """Fuzzing reproducers: a JSON naming a module, ``"[" * 100000``, a subnormal cell, a CIF whose
    symmetry expands to ~19k sites (refused before expansion, in well under a second)."""
    import sys
    import time

    from test_hardening_structures import DEEP, expanding_cif, subnormal_cif

    assert "tabnanny" not in sys.modules
    evil = li2o().as_dict()
    evil["sites"][0]["properties"] = {"x": {"@module": "tabnanny", "@class": "X"}}
    structures = [
        spb.StructureData(id="evil", pymatgen_json=json.dumps(evil)),
        spb.StructureData(id="deep", pymatgen_json=DEEP),
        spb.StructureData(id="tiny", cif=subnormal_cif()),
        spb.StructureData(id="big", cif=expanding_cif()),
        as_json("Li2O", li2o()),
    ]
    start = time.perf_counter()
    response = stub.Predict(pb.ConductivityPredictRequest(structures=structures, max_atoms=50), timeout=60)
    assert time.perf_counter() - start < 20
    rows = response.rows
    assert (response.n_predicted, response.n_errors) == (1, 4)
    assert_predicted(rows[4])
    assert "tabnanny" in rows[0].error.message and "tabnanny" not in sys.modules
    assert "structures[1] ('deep')" in rows[1].error.message and "nested too deeply" in rows[1].error.message
    assert "1e-320 Å is outside the accepted 0.5-1000 Å" in rows[2].error.message
    assert "big: " in rows[3].error.message and "limit of 50 atoms" in rows[3].error.message
    assert "not expanded" in rows[3].error.message and "malformed" not in rows[3].error.message
    assert all(rows[i].error.kind == "InvalidInput" for i in range(4))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"structures": []}, "structures is empty"),
        ({"structures": [as_json("x", li2o())] * (MAX_ROWS + 1)}, f"limit of {MAX_ROWS}"),
        ({"structures": [as_json("x", li2o()), as_json("", li2o())]}, "structures[1] has no id"),
        ({"structures": [as_json("x", li2o())], "max_atoms": 0}, "got 0"),
        ({"structures": [as_json("x", li2o())], "max_atoms": 100_000}, "got 100000"),
        ({"structures": [as_json("x", li2o())], "input": common_pb2.StoreInput(key="k/1")}, "or input, not both"),
    ],
    ids=["empty", "too-many", "no-id", "max-atoms-0", "max-atoms-above-server", "inline-and-store"],
)
def test_bad_requests_are_invalid_argument(stub, fields, named) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(pb.ConductivityPredictRequest(**fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.details()


def test_model_info_summarizes_the_card(stub, servicer) -> None:
    info = stub.ModelInfo(pb.ConductivityModelInfoRequest(), timeout=30)
    card = servicer.ensemble.card
    assert info.format == card["format"] and info.units == card.get("units", "")
    assert info.n_models == len(card["models"]) >= 1
    assert info.max_atoms == servicer.config.max_atoms
    metrics = {(m.model, m.subset): m for m in info.test_metrics}
    assert ("model", "all") in metrics
    ours = metrics[("model", "all")]
    assert ours.n == card["test"]["model"]["all"]["n"] > 0
    assert ours.HasField("mae_log10_sigma") and ours.mae_log10_sigma >= 0
    assert 0.0 <= ours.accuracy <= 1.0 and 0.0 <= ours.roc_auc <= 1.0
    assert info.metrics_table.startswith("| model | subset |")
    assert len(info.metrics_table.splitlines()) == 2 + len(info.test_metrics)


def test_conductivity_is_available_and_a_missing_model_fails_the_start(tmp_path) -> None:
    from htvs.errors import ModelNotReady

    assert "conductivity" in AVAILABLE_SERVICES
    with pytest.raises(ModelNotReady, match="no conductivity model in .*: it has no model_card.json"):
        build_servicer("conductivity", conductivity_models=tmp_path)
