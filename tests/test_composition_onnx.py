"""DenseRoost == aviary Roost, ONNX export == torch, and the ONNX ensemble predictor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from htvs.composition.dense import DenseRoost
from htvs.composition.featurize import featurize
from htvs.composition.model import RoostConfig, build_roost, roost_inputs, roost_predict_torch
from htvs.composition.onnx_export import (
    CARD_NAME,
    ONNX_FORMAT,
    export_onnx,
    read_metadata,
    sha256_of,
    write_model_card,
)
from htvs.composition.predictor import EnsemblePrediction, OnnxRoostEnsemble
from htvs.errors import ModelNotReady

#: Tiny widths keep the file fast; aviary's model is exercised the same way at any width.
TINY = RoostConfig(
    elem_fea_len=8,
    n_graph=2,
    elem_gate=(8,),
    elem_msg=(8,),
    cry_gate=(8,),
    cry_msg=(8,),
    trunk_hidden=(16,),
    out_hidden=(8,),
)
#: No hidden layers in the message networks, deeper gates, three heads: other code paths.
ODD = RoostConfig(
    elem_fea_len=6,
    n_graph=1,
    elem_heads=3,
    elem_gate=(),
    elem_msg=(),
    cry_heads=1,
    cry_gate=(5, 4),
    cry_msg=(),
    trunk_hidden=(8,),
    out_hidden=(4,),
)
#: One formula of each element count 1..8.
BY_ELEMENT_COUNT = [
    "Li",
    "Li2O",
    "Li3PS4",
    "Li7La3Zr2O12",
    "LiMn0.5Ni0.5PO4",
    "LiNaMgAlSiO6",
    "LiNaKMgAlSO8",
    "LiBeBCNOFNa",
]
BAD_ROWS = ["LiXx", "", "Li(", "Li1e9O", "Og2O"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mp_formulas() -> list[str]:
    """400 MP formulas (fixed sample) plus one of each element count 1..8."""
    from htvs.datasets import load_mp_formation_energies

    return load_mp_formation_energies()["formula"].sample(400, random_state=3).tolist() + BY_ELEMENT_COUNT


@pytest.fixture(scope="module")
def trained_tiny(mp_formulas):
    """TINY trained for 60 Adam steps on MP formation energies (weights and pow moved off init)."""
    from htvs.datasets import load_mp_formation_energies

    table = load_mp_formation_energies().sample(500, random_state=5)
    batch, errors = featurize(table["formula"].tolist())
    assert not errors
    target = torch.tensor(table["e_form_ev_per_atom"].to_numpy()[batch.rows], dtype=torch.float32)
    model = build_roost(TINY, seed=11)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    inputs = roost_inputs(batch)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        (out,) = model(*inputs)
        torch.nn.functional.l1_loss(out[:, 0], target).backward()
        optimizer.step()
    return model.eval()


def _dense_predict(model, batch) -> np.ndarray:
    dense = DenseRoost.from_aviary(model).eval()
    with torch.no_grad():
        out = dense(torch.from_numpy(batch.dense_z), torch.from_numpy(batch.dense_weights))
    return out[:, 0].numpy().astype(np.float64)


@pytest.mark.parametrize("config", [TINY, ODD], ids=["tiny", "odd"])
@pytest.mark.parametrize("power", [None, -1.7, 2.3])
def test_dense_roost_equals_aviary_random_weights(mp_formulas, config, power):
    model = build_roost(config, seed=7).eval()
    if power is not None:  # every attention power (a learnable scalar; negative hits 0 ** pow)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(".pow"):
                    param.fill_(power)
    batch, errors = featurize(mp_formulas)
    assert not errors and batch.dense_z.shape[1] == 8
    reference = roost_predict_torch(model, batch)
    np.testing.assert_allclose(_dense_predict(model, batch), reference, atol=1e-5, rtol=0)


def test_dense_roost_equals_aviary_trained(mp_formulas, trained_tiny):
    pows = [p.item() for n, p in trained_tiny.named_parameters() if n.endswith(".pow")]
    assert pows and max(abs(p) for p in pows) > 0.01
    batch, _ = featurize(mp_formulas)
    reference = roost_predict_torch(trained_tiny, batch)
    assert np.std(reference) > 0.1  # it learnt something (not a constant)
    np.testing.assert_allclose(_dense_predict(trained_tiny, batch), reference, atol=1e-5, rtol=0)


def test_dense_roost_shares_parameters(trained_tiny):
    dense = DenseRoost.from_aviary(trained_tiny)
    assert {id(p) for p in dense.parameters()} <= {id(p) for p in trained_tiny.parameters()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_tiny):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(trained_tiny, path, target="e_form", units="eV/atom")


def test_export_metadata(exported):
    meta = read_metadata(exported)
    assert meta["htvs.format"] == ONNX_FORMAT
    assert (meta["htvs.target"], meta["htvs.units"]) == ("e_form", "eV/atom")
    assert RoostConfig.from_dict(json.loads(meta["htvs.roost_config"])) == TINY
    assert exported.stat().st_size < 200_000  # float32, embedding folded into a 104 x 7 table


@pytest.mark.parametrize("n_rows", [1, 7, 300])
def test_onnx_equals_torch_padded(exported, trained_tiny, mp_formulas, n_rows):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(n_rows)
    formulas = [mp_formulas[i] for i in rng.choice(len(mp_formulas), n_rows, replace=False)]
    for extra in ([], BY_ELEMENT_COUNT[-1:]):  # widths of the sample, then padded to 8
        batch, _ = featurize(formulas + extra)
        (out,) = session.run(None, {"z": batch.dense_z, "weights": batch.dense_weights})
        assert out.shape == (len(formulas) + len(extra), 1)
        np.testing.assert_allclose(out[:, 0], roost_predict_torch(trained_tiny, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_elements", range(1, 9))
def test_onnx_equals_torch_by_element_count(exported, trained_tiny, n_elements):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    batch, _ = featurize([BY_ELEMENT_COUNT[n_elements - 1]] * 3)
    assert batch.dense_z.shape == (3, n_elements)
    (out,) = session.run(None, {"z": batch.dense_z, "weights": batch.dense_weights})
    np.testing.assert_allclose(out[:, 0], roost_predict_torch(trained_tiny, batch), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    """Three randomly initialised TINY models exported with a model card; also their torch models."""
    root = tmp_path_factory.mktemp("ensemble")
    models = [build_roost(TINY, seed=100 + k).eval() for k in range(3)]
    files = [export_onnx(m, root / f"model_{k}.onnx").name for k, m in enumerate(models)]
    write_model_card(root, files, target="e_form", units="eV/atom", extra={"data": "none (random init)"})
    return root, models


def test_ensemble_mean_std(ensemble_dir, mp_formulas):
    root, models = ensemble_dir
    ensemble = OnnxRoostEnsemble.from_dir(root, intra_op_threads=1)
    assert ensemble.n_models == 3 and (ensemble.target, ensemble.units) == ("e_form", "eV/atom")
    result = ensemble.predict(mp_formulas, batch_size=128)
    assert isinstance(result, EnsemblePrediction) and result.valid.all() and not result.errors
    batch, _ = featurize(mp_formulas)
    members = np.stack([roost_predict_torch(m, batch) for m in models])
    np.testing.assert_allclose(result.members, members, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.mean, members.mean(axis=0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.std, members.std(axis=0), atol=1e-5, rtol=0)  # population std
    assert np.all(result.std > 0)


def test_bad_rows_are_per_row_errors(ensemble_dir):
    root, models = ensemble_dir
    ensemble = OnnxRoostEnsemble.from_dir(root, intra_op_threads=1)
    formulas = ["Li3PS4", *BAD_ROWS, "Li7La3Zr2O12", "LiCl"]
    result = ensemble.predict(formulas, batch_size=3)  # errors straddle featurize batches
    assert [e.index for e in result.errors] == [1, 2, 3, 4, 5]
    assert [e.value for e in result.errors] == BAD_ROWS
    assert all(e.message and e.kind == "InvalidInput" for e in result.errors)
    assert result.valid.tolist() == [True, False, False, False, False, False, True, True]
    assert np.isnan(result.mean[~result.valid]).all() and np.isnan(result.std[~result.valid]).all()
    good, _ = featurize(["Li3PS4", "Li7La3Zr2O12", "LiCl"])
    expected = np.mean([roost_predict_torch(m, good) for m in models], axis=0)
    np.testing.assert_allclose(result.mean[result.valid], expected, atol=1e-5, rtol=0)


def test_all_bad_and_empty_inputs(ensemble_dir):
    ensemble = OnnxRoostEnsemble.from_dir(ensemble_dir[0], intra_op_threads=1)
    result = ensemble.predict(["Xx"])
    assert not result.valid.any() and math.isnan(result.mean[0]) and len(result.errors) == 1
    empty = ensemble.predict([])
    assert empty.mean.shape == (0,) and empty.members.shape == (3, 0)
    z = np.array([[3, 8], [0, 0]], dtype=np.int64)  # an all-padding row stays NaN, alone
    weights = np.array([[0.4, 0.6], [0.0, 0.0]], dtype=np.float32)
    members = ensemble.predict_dense(z, weights)
    assert np.isfinite(members[:, 0]).all() and np.isnan(members[:, 1]).all()


def test_sha256_mismatch_raises_model_not_ready(ensemble_dir, tmp_path):
    root, _ = ensemble_dir
    for name in ("model_0.onnx", "model_1.onnx", "model_2.onnx", CARD_NAME):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    card = json.loads((tmp_path / CARD_NAME).read_text())
    assert card["models"][1]["sha256"] == sha256_of(tmp_path / "model_1.onnx")
    card["models"][1]["sha256"] = "0" * 64
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelNotReady, match="model_1.onnx"):
        OnnxRoostEnsemble.from_dir(tmp_path)
    (tmp_path / "model_2.onnx").unlink()
    card["models"][1]["sha256"] = sha256_of(tmp_path / "model_1.onnx")
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelNotReady, match="model_2.onnx.*missing"):
        OnnxRoostEnsemble.from_dir(tmp_path)
    with pytest.raises(ModelNotReady, match="nowhere.*does not exist"):
        OnnxRoostEnsemble.from_dir(tmp_path / "nowhere")
