"""Conductivity GNN: graphs, model, training + resume, bad input, the shipped ensemble."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from htvs.conductivity.graph import GraphConfig, build_graph, global_feature_names, site_features
from htvs.conductivity.model import ModelConfig, build_model, collate
from htvs.conductivity.predict import (
    ConductivityConfig,
    ConductivityEnsemble,
    ConductivityPrediction,
    load_ensemble,
    predict_conductivity,
    ship_ensemble,
)
from htvs.conductivity.train import ConductivityTrainConfig, train_ensemble, train_member, make_entries
from htvs.errors import NO_LITHIUM, ModelNotReady

TINY = ModelConfig(hidden=8, n_blocks=2, n_gaussians=8, global_hidden=8, head_hidden=8)


@pytest.fixture()
def li2o() -> Structure:
    """Antifluorite Li2O (a = 4.61 Å), ordered."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]])


@pytest.fixture()
def li_half_na_cl() -> Structure:
    """CsCl-type (Li0.5Na0.3)Cl, a = 5.4 Å: one cation site 80 % occupied, mixed Li/Na."""
    return Structure(Lattice.cubic(5.4), [{"Li": 0.5, "Na": 0.3}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def small_cifs():
    """The eight shortest bundled OBELiX CIFs that have an entry in the train table."""
    from htvs.datasets import load_obelix, load_obelix_cifs

    train_ids = set(load_obelix("train")["ID"])
    cifs = [c for c in load_obelix_cifs() if c.id in train_ids]
    return sorted(cifs, key=lambda c: len(c.text))[:8]


def test_graph_of_partially_occupied_site(li_half_na_cl):
    from htvs.conductivity.graph import element_embedding

    feats = site_features(li_half_na_cl)
    table = element_embedding()
    np.testing.assert_allclose(feats[0, :-1], 0.5 * table[3] + 0.3 * table[11], rtol=1e-6)
    assert feats[0, -1] == pytest.approx(0.2)  # vacancy fraction
    assert feats[1, -1] == pytest.approx(0.0)
    graph = build_graph(li_half_na_cl, GraphConfig(cutoff=5.0, max_neighbors=12))
    assert graph.global_features.shape == (len(global_feature_names()),)
    # 8 neighbours at a*sqrt(3)/2 = 4.677 Å; the next shell (5.4 Å) is beyond the cutoff
    assert np.all(np.bincount(graph.edge_dst, minlength=2) == 8)
    assert graph.edge_distance.min() == pytest.approx(5.4 * math.sqrt(3) / 2, abs=1e-4)
    assert graph.edge_distance.max() <= 5.0


def test_graph_ordered_neighbours(li2o):
    graph = build_graph(li2o, GraphConfig(cutoff=3.0, max_neighbors=12))
    # Li-O 1.996 Å (4 O per Li), Li-Li 2.305 Å (6): 10 neighbours within 3 Å per Li
    li = [i for i, s in enumerate(li2o) if s.specie.symbol == "Li"]
    counts = np.bincount(graph.edge_dst, minlength=len(li2o))
    assert all(counts[i] == 10 for i in li)
    assert graph.edge_distance.min() == pytest.approx(4.61 * math.sqrt(3) / 4, abs=1e-3)


def test_forward_shapes_and_global_branch(li2o, li_half_na_cl):
    model = build_model(TINY, seed=1).eval()
    g1, g2 = build_graph(li2o), build_graph(li_half_na_cl)
    no_cif_globals = g1.global_features + 0.1
    batch = collate([g1, None, g2], [g1.global_features, no_cif_globals, g2.global_features])
    assert batch.has_structure.tolist() == [True, False, True]
    out = model(*batch.inputs())
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    # an entry without a structure uses only its global features and the no-structure embedding
    alone = model(*collate([None], [no_cif_globals]).inputs())
    torch.testing.assert_close(alone[0], out[1])
    out.sum().backward()  # gradients flow through both branches


def test_tiny_ensemble_trains_resumes_and_ships(tmp_path, small_cifs):
    from htvs.datasets import load_obelix

    ids = [c.id for c in small_cifs]
    train_all = load_obelix("train")
    with_cif = train_all[train_all["ID"].isin(ids)]
    without_cif = train_all[~train_all["ID"].isin(ids)].head(4)
    frame = with_cif.head(6)._append(without_cif)
    test_frame = with_cif.tail(2)._append(train_all[~train_all["ID"].isin(ids)].tail(2))
    config = ConductivityTrainConfig(model=TINY, n_models=2, max_epochs=2, batch_size=4, threads=1, cv_folds=2,
                                     forest_trees=10)
    metrics = train_ensemble(tmp_path / "run", config, frame, test_frame, small_cifs, log=lambda s: None)
    assert set(metrics["test"]) == {"model", "gnn_ensemble", "forest", "train_mean", "random_forest"}
    blend = metrics["blend"]
    assert 0.0 <= blend["gnn_weight"] <= 1.0 and blend["cv"]["n"] == len(frame)
    best = min(v["mae_log10_sigma"] for v in blend["cv"]["by_gnn_weight"].values())
    assert blend["cv"]["by_gnn_weight"][str(blend["gnn_weight"])]["mae_log10_sigma"] == best
    assert [m["epochs"] for m in metrics["members"]] == [2, 2]
    assert (tmp_path / "run" / "metrics.json").exists()
    # the calibration map is chosen on the CV's out-of-fold P and scored on the test split before and after
    calibration = metrics["calibration"]
    assert calibration["map"]["method"] in calibration["cv"]["methods"]
    assert calibration["cv"]["before"]["n"] == len(frame) and calibration["test_after"]["n"] == len(test_frame)
    assert metrics["test"]["model"]["all"]["accuracy"] == calibration["test_after"]["accuracy"]

    # resume: stop member 0 after epoch 1, continue to epoch 2 -> same weights as uninterrupted
    from htvs.conductivity.train import build_graph_cache

    graphs = build_graph_cache(small_cifs, config.graph, tmp_path / "run" / "graphs.npz")
    data = make_entries(frame, graphs)
    one = ConductivityTrainConfig(model=TINY, n_models=1, max_epochs=1, batch_size=4, threads=1)
    train_member(tmp_path / "r2", 0, one, data, log=lambda s: None)
    (tmp_path / "r2" / "model_0" / "done.json").unlink()
    logs: list[str] = []
    result = train_member(tmp_path / "r2", 0, config, data, log=logs.append)
    assert any("resumed after epoch 1" in line for line in logs) and result["epochs"] == 2
    resumed = torch.load(tmp_path / "r2" / "model_0" / "checkpoint.pt", weights_only=True)["model"]
    straight = torch.load(tmp_path / "run" / "model_0" / "checkpoint.pt", weights_only=True)["model"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key])

    card = ship_ensemble(tmp_path / "run", tmp_path / "shipped")
    ensemble = load_ensemble(card.parent)
    assert len(ensemble.models) == 2
    shipped = json.loads(card.read_text())
    assert shipped["onnx_max_abs_diff"] < 1e-4  # the ONNX members compute what the torch ones do
    # the shipped predictor carries the forest and the CV-chosen weight
    assert ensemble.forest is not None and ensemble.gnn_weight == blend["gnn_weight"]
    assert ensemble.forest.classifier is not None  # the classifier half ships with its card entry
    assert ensemble.calibration.to_dict() == calibration["map"]
    (card.parent / "member_1.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelNotReady, match="sha256"):
        load_ensemble(card.parent)


@pytest.fixture(scope="module")
def tiny_ensemble() -> ConductivityEnsemble:
    return ConductivityEnsemble([build_model(TINY, seed=s).eval() for s in (0, 1)], GraphConfig())


def test_bad_inputs_are_per_item(li2o, li_half_na_cl, tiny_ensemble):
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan = li2o.copy()
    nan.replace(0, "Li", coords=[float("nan"), 0.0, 0.0])
    big = li2o * (2, 2, 2)  # 96 sites
    items = [
        ("ok", li2o),
        ("not-a-cif", "data_x\n_this is not a cif at all\n"),
        ("no-li", nacl),
        ("too-big", big),
        ("nan", nan),
        ("partial", li_half_na_cl),
    ]
    out = predict_conductivity(items, tiny_ensemble, ConductivityConfig(max_atoms=50))
    assert [r.id if isinstance(r, ConductivityPrediction) else r.value for r in out] == [i for i, _ in items]
    kinds = [type(r).__name__ for r in out]
    assert kinds == ["ConductivityPrediction", "RowError", "RowError", "RowError", "RowError",
                     "ConductivityPrediction"]
    assert [(r.index, r.value) for r in out[1:5]] == [(i, items[i][0]) for i in range(1, 5)]
    assert "malformed CIF" in out[1].message and out[1].kind == "InvalidInput"
    assert out[2].kind == NO_LITHIUM and "no Li" in out[2].message
    assert "96 sites" in out[3].message and "limit of 50" in out[3].message
    assert "NaN" in out[4].message
    assert 0.0 <= out[0].p_superionic <= 1.0 and out[0].log10_sigma_std >= 0.0


def test_onnx_member_matches_torch_with_repeated_indices(tmp_path, li2o, li_half_na_cl):
    """Many edges into one node and many nodes into one entry must be summed, not overwritten."""
    import onnx  # noqa: F401 - the exporter needs it

    from htvs.conductivity.graph import collate_arrays
    from htvs.conductivity.onnx_export import OnnxMember, TorchMember, export_member

    model = build_model(TINY, seed=3).eval()
    path = export_member(model, tmp_path / "m.onnx")
    graphs = [build_graph(li2o), None, build_graph(li_half_na_cl)]
    arrays = collate_arrays(graphs, [graphs[0].global_features] * 3)
    assert np.bincount(arrays["edge_dst"]).max() > 1
    np.testing.assert_allclose(OnnxMember(path)(arrays), TorchMember(model)(arrays), atol=1e-4)
    empty = collate_arrays([None], [graphs[0].global_features])  # zero nodes, zero edges
    np.testing.assert_allclose(OnnxMember(path)(empty), TorchMember(model)(empty), atol=1e-5)


@pytest.mark.parametrize("kind", ["extra_trees", "random_forest"])
def test_forest_onnx_matches_scikit_learn_tree_by_tree(tmp_path, kind):
    from htvs.conductivity.forest import ForestConfig, OnnxForest, export_forest, fit_forest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 12)).astype(np.float32)
    y = x[:, 0] * 2 - 4 + rng.normal(scale=0.3, size=120)  # both classes around log10 sigma = -4
    forest = fit_forest(x, y, ForestConfig(n_estimators=20, kind=kind))
    export_forest(forest, tmp_path)
    onnx_forest = OnnxForest(tmp_path)
    # the training inputs sit exactly next to the split thresholds: every tree must route them alike
    np.testing.assert_array_equal(onnx_forest.tree_predictions(x), forest.tree_predictions(x))
    ours, theirs = onnx_forest.predict(x[:30]), forest.predict(x[:30])
    np.testing.assert_array_equal(ours.log10_sigma, theirs.log10_sigma)
    np.testing.assert_array_equal(ours.p_superionic, theirs.p_superionic)
    assert 0 < theirs.p_superionic.mean() < 1 and np.all(theirs.spread >= 0)


@pytest.mark.parametrize("kind", ["extra_trees", "random_forest"])
def test_forest_classifier_half_onnx_matches_scikit_learn(tmp_path, kind):
    from htvs.conductivity.forest import CLASSIFIER_FILE, ForestConfig, OnnxForest, export_forest, fit_forest

    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 8)).astype(np.float32)
    y = x[:, 1] * 2 - 4 + rng.normal(scale=0.5, size=150)
    forest = fit_forest(x, y, ForestConfig(n_estimators=15, kind=kind, classifier=True))
    paths = export_forest(forest, tmp_path)
    assert [p.name for p in paths][-1] == CLASSIFIER_FILE
    p_sklearn = forest.classifier.predict_proba(x)[:, list(forest.classifier.classes_).index(True)]
    np.testing.assert_allclose(forest.classifier_probability(x), p_sklearn, atol=1e-6)
    onnx_forest = OnnxForest(tmp_path)
    np.testing.assert_allclose(onnx_forest.classifier_probability(x), p_sklearn, atol=1e-5)
    ours, theirs = onnx_forest.predict(x), forest.predict(x)
    np.testing.assert_allclose(ours.p_superionic, theirs.p_superionic, atol=1e-5)
    fraction = fit_forest(x, y, ForestConfig(n_estimators=15, kind=kind)).predict(x).p_superionic
    np.testing.assert_allclose(theirs.p_superionic, (fraction + p_sklearn) / 2, atol=1e-6)  # P is the mean
    assert OnnxForest(tmp_path, classifier=False).classifier_probability(x) is None
    export_forest(fit_forest(x, y, ForestConfig(n_estimators=5, kind=kind)), tmp_path)  # no classifier now
    assert not (tmp_path / CLASSIFIER_FILE).exists()  # the stale file is gone, not silently reused


def test_forest_classifier_with_one_class_predicts_that_class():
    from htvs.conductivity.forest import ForestConfig, fit_forest

    x = np.arange(20, dtype=np.float32)[:, None]
    low = fit_forest(x, np.full(20, -8.0), ForestConfig(n_estimators=3, classifier=True))
    np.testing.assert_array_equal(low.classifier_probability(x), 0.0)
    high = fit_forest(x, np.full(20, -2.0), ForestConfig(n_estimators=3, classifier=True))
    np.testing.assert_array_equal(high.classifier_probability(x), 1.0)


def test_float32_threshold_keeps_the_float64_split():
    from htvs.conductivity.forest import _float32_at_or_below

    for t in (0.1, -4.000000001, 1e-30, 3.0, -0.7):
        t32 = np.float32(_float32_at_or_below(t))
        assert float(t32) <= t and float(np.nextafter(t32, np.float32(np.inf))) > t


def test_forest_summary_is_median_fraction_and_spread():
    from htvs.conductivity.forest import summarize_trees

    per_tree = np.array([[-9.0, -3.0], [-5.0, -2.0], [-3.5, -6.0], [-3.0, -2.5]])  # 4 trees, 2 entries
    out = summarize_trees(per_tree)
    np.testing.assert_allclose(out.log10_sigma, [-4.25, -2.75])  # median, not the mean (-5.125, -3.375)
    np.testing.assert_allclose(out.p_superionic, [0.5, 0.75])  # trees at or above -4
    assert out.spread[0] > out.spread[1] > 0


def test_blend_is_the_mixture_of_gnn_and_forest():
    from htvs.conductivity.forest import ForestPrediction, blend

    gnn = np.array([[-2.0], [-4.0]])  # two members: mean -3, std 1
    trees = ForestPrediction(np.array([-5.0]), np.array([0.2]), np.array([0.5]))
    out = blend(gnn, np.array([[0.8], [0.6]]), trees, 0.25)
    assert out.log10_sigma_mean[0] == pytest.approx(0.25 * -3 + 0.75 * -5)
    assert out.p_superionic[0] == pytest.approx(0.25 * 0.7 + 0.75 * 0.2)
    assert out.log10_sigma_std[0] == pytest.approx(np.sqrt(0.25 * 1 + 0.75 * 0.25 + 0.25 * 0.75 * 4))
    alone = blend(gnn, np.array([[0.8], [0.6]]), None, 0.25)  # no forest: the members alone
    assert alone.log10_sigma_mean[0] == -3 and alone.log10_sigma_std[0] == 1


def test_shipped_ensemble_predicts_bundled_cif(tmp_path):
    from htvs.datasets import load_obelix, load_obelix_cifs

    ensemble = load_ensemble()
    assert len(ensemble.models) >= 5
    card = ensemble.card
    assert card["split"]["test"] == 121 and card["members"]
    # train-mean baseline on the test split, SOURCES.md: MAE 1.95 (2.22 on the 67 CIF entries), 44 % superionic
    assert card["test"]["train_mean"]["all"]["mae_log10_sigma"] == pytest.approx(1.95, abs=0.005)
    assert card["test"]["train_mean"]["with_cif"]["mae_log10_sigma"] == pytest.approx(2.22, abs=0.005)
    assert card["test"]["train_mean"]["all"]["fraction_superionic"] == pytest.approx(0.44, abs=0.005)
    test_ids = set(load_obelix("test")["ID"])
    cif = min((c for c in load_obelix_cifs() if c.id in test_ids), key=lambda c: len(c.text))
    path = tmp_path / f"{cif.id}.cif"
    path.write_text(cif.text)
    from htvs.conductivity.predict import predict_cif_files

    (pred,) = predict_cif_files([path], ensemble)
    assert isinstance(pred, ConductivityPrediction), pred
    assert pred.id == cif.id
    assert -14 < pred.log10_sigma_mean < 0 and pred.log10_sigma_std > 0
    json.dumps(pred.to_dict())


def test_shipped_predictor_reproduces_its_card_on_the_test_cifs():
    """The ONNX blend, fed the OBELiX test CIFs, scores what the training run wrote in the card."""
    from htvs.conductivity.baselines import score
    from htvs.conductivity.train import same_elements
    from htvs.conductivity.graph import table_global_features
    from htvs.datasets import load_obelix, load_obelix_cifs

    ensemble = load_ensemble()
    test = load_obelix("test").set_index("ID")
    cifs = [c for c in load_obelix_cifs() if c.id in test.index]
    out = predict_conductivity([(c.id, c.text) for c in cifs], ensemble)
    rows = [(r, test.loc[r.id]) for r in out if isinstance(r, ConductivityPrediction)]
    graphs = {c.id: build_graph(Structure.from_str(c.text, fmt="cif")) for c in cifs}
    rows = [(r, row) for r, row in rows if same_elements(graphs[r.id].global_features, table_global_features(row))]
    assert len(rows) == ensemble.card["split"]["test_with_cif"]
    got = score(np.array([r.log10_sigma_mean for r, _ in rows]), np.array([r.p_superionic for r, _ in rows]),
                np.array([row["log10_sigma"] for _, row in rows]))
    expected = ensemble.card["test"]["model"]["with_cif"]
    assert got["mae_log10_sigma"] == pytest.approx(expected["mae_log10_sigma"], abs=1e-4)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)


def test_paired_bootstrap_sees_a_clear_and_a_null_difference():
    from htvs.conductivity.baselines import paired_bootstrap_mae

    rng = np.random.default_rng(1)
    truth = rng.normal(size=200)
    good, bad = truth + rng.normal(scale=0.2, size=200), truth + rng.normal(scale=1.0, size=200)
    clear = paired_bootstrap_mae(good, bad, truth, n_resamples=2000)
    assert clear["ci95_high"] < 0 and clear["fraction_a_better"] > 0.99
    assert clear["mae_difference"] == pytest.approx(np.mean(np.abs(good - truth)) - np.mean(np.abs(bad - truth)))
    null = paired_bootstrap_mae(good, good, truth, n_resamples=200)
    assert null["mae_difference"] == 0 and null["fraction_a_better"] == 0


def test_paired_bootstrap_of_the_classification_sees_the_better_classifier():
    from htvs.conductivity.baselines import paired_bootstrap_classification

    rng = np.random.default_rng(2)
    truth = rng.normal(-4, 2, size=300)
    sharp = 1 / (1 + np.exp(-3 * (truth + 4 + rng.normal(scale=0.3, size=300))))
    vague = 1 / (1 + np.exp(-0.5 * (truth + 4 + rng.normal(scale=3.0, size=300))))
    out = paired_bootstrap_classification(sharp, vague, truth, n_resamples=300)
    for name in ("accuracy", "roc_auc"):
        assert out[name]["difference"] > 0 and out[name]["ci95_low"] > 0 and out[name]["fraction_a_better"] > 0.99
    same = paired_bootstrap_classification(sharp, sharp, truth, n_resamples=50)
    assert same["accuracy"]["difference"] == 0 and same["roc_auc"]["fraction_a_better"] == 0
    one_class = paired_bootstrap_classification(sharp[:3], vague[:3], np.full(3, -8.0), n_resamples=20)
    assert one_class["roc_auc"]["n_resamples"] == 0 and np.isnan(one_class["roc_auc"]["difference"])
    assert one_class["accuracy"]["n_resamples"] == 20
