"""Calibration of P(superionic): the maps, their choice by nested CV, the card and the served P."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from htvs.conductivity.calibration import (
    ProbabilityCalibration,
    brier,
    choose,
    fit,
    plot_reliability,
    reliability,
)
from htvs.errors import InvalidInput, ModelNotReady


def overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with probability q, and a model that reports P = sigmoid(3 logit q): too sure."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    label = rng.random(n) < q
    p = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return p, label


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_fitted_map_repairs_an_overconfident_model(method):
    p, label = overconfident()
    calibration = fit(method, p, label)
    assert calibration.method == method
    fresh_p, fresh_label = overconfident(seed=1)  # scored on data it was not fitted on
    assert brier(calibration.apply(fresh_p), fresh_label) < brier(fresh_p, fresh_label) - 0.01
    assert reliability(calibration.apply(fresh_p), fresh_label)["ece"] < 0.5 * reliability(fresh_p, fresh_label)["ece"]
    order = np.argsort(fresh_p)
    assert np.all(np.diff(calibration.apply(fresh_p)[order]) >= -1e-12)  # monotone: the ranking is kept


def test_platt_recovers_the_known_slope():
    p, label = overconfident(20000)
    calibration = fit("platt", p, label)
    assert calibration.a == pytest.approx(1 / 3, abs=0.05) and abs(calibration.b) < 0.1


def test_choose_by_nested_cv_prefers_a_map_when_one_is_needed():
    p, label = overconfident()
    folds = np.arange(p.size) % 5
    calibration, scores, nested = choose(p, label, folds)
    assert calibration.method != "identity"
    assert scores[calibration.method]["nested_cv_brier"] < scores["identity"]["nested_cv_brier"]
    assert brier(nested, label) == pytest.approx(scores[calibration.method]["nested_cv_brier"])
    only, scores, _ = choose(p, label, folds, methods=("identity",))
    assert only.method == "identity" and list(scores) == ["identity"]


def test_one_class_or_identity_leaves_p_alone():
    p = np.array([0.1, 0.7, 0.95])
    assert fit("platt", p, np.zeros(3, bool)).method == "identity"
    np.testing.assert_array_equal(fit("identity", p, np.array([1, 0, 1], bool)).apply(p), p)


def test_reliability_bins_count_every_entry_and_score_a_perfect_bin_zero():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    label = np.array([False, False, True, True, True, False])
    out = reliability(p, label)
    assert sum(b["n"] for b in out["bins"]) == 6 and len(out["bins"]) == 10
    assert out["ece"] == pytest.approx((2 * 0.05 + 2 * 0.05 + 2 * 0.05) / 6)
    assert out["bins"][9]["fraction"] == 1.0 and out["bins"][3]["n"] == 0 and out["bins"][3]["mean_p"] is None
    assert reliability(np.array([1.0]), np.array([True]))["bins"][9]["n"] == 1  # P = 1 is in the last bin


def test_maps_round_trip_through_a_card():
    p, label = overconfident(500)
    for method in ("identity", "platt", "isotonic"):
        calibration = fit(method, p, label)
        again = ProbabilityCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
        np.testing.assert_allclose(again.apply(p), calibration.apply(p))


@pytest.mark.parametrize("bad, named", [
    ({"method": "temperature"}, "temperature"),
    ({"method": "isotonic", "x": [0.5, 0.1], "y": [0.2, 0.3]}, "increasing"),
    ({"method": "isotonic", "x": [0.1], "y": [1.5]}, "1.5"),
    ({"method": "platt", "a": "steep"}, "steep"),
    ({"method": "platt", "a": float("nan")}, "nan"),
    ({"method": "platt", "slope": 2}, "slope"),
    (["platt"], "platt"),
])
def test_a_malformed_calibration_names_the_bad_value(bad, named):
    with pytest.raises(InvalidInput, match=named):
        ProbabilityCalibration.from_dict(bad)


def test_served_p_is_the_calibrated_one(tmp_path):
    from htvs.conductivity.predict import default_model_dir, load_ensemble, predict_conductivity
    from htvs.datasets import load_obelix_cifs

    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text())
    cifs = [(c.id, c.text) for c in load_obelix_cifs()[:6]]
    shipped = predict_conductivity(cifs, load_ensemble(folder))
    card["calibration"]["map"] = {"method": "platt", "a": 0.0, "b": 0.0}  # every P becomes 1/2
    card_path.write_text(json.dumps(card))
    flat = predict_conductivity(cifs, load_ensemble(folder))
    assert [r.p_superionic for r in flat if hasattr(r, "p_superionic")] == pytest.approx([0.5] * len(flat))
    assert [r.log10_sigma_mean for r in flat] == [r.log10_sigma_mean for r in shipped]  # only P changes
    card["calibration"]["map"] = {"method": "isotonic", "x": [0.9, 0.1], "y": [0.0, 1.0]}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelNotReady, match="calibration"):
        load_ensemble(folder)


def test_reliability_diagram_is_written(tmp_path):
    p, label = overconfident(300)
    path = tmp_path / "reliability.png"
    plot_reliability({"before": reliability(p, label), "after": reliability(fit("platt", p, label).apply(p), label)},
                     path, "test")
    assert path.stat().st_size > 5000
