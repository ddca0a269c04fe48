"""The synthesizability model: features, bagging PU learning, the shipped model, the CLI and the
``clscore`` columns of the campaign tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app
from htvs.errors import InvalidInput, ModelNotReady, RowError
from htvs.synth.features import N_FEATURES, composition_features, feature_names, fraction_key
from htvs.synth.model import THRESHOLD, clscore, load_synth_model, save_model, shipped_model_dir


# --------------------------------------------------------------------------- features


def test_features_are_finite_with_one_column_per_name() -> None:
    rows = [{"Li": 3, "P": 1, "S": 4}, {"Li": 6, "P": 2, "S": 8}, {"Fe": 1}, {"Li": 6.4, "La": 3, "Zr": 1.4,
                                                                              "Ta": 0.6, "O": 12}]
    x = composition_features(rows)
    assert x.shape == (4, N_FEATURES) == (4, len(feature_names()))
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[0], x[1])  # only the fractions count
    names = feature_names()
    assert x[0, names.index("n_elements")] == 3 and x[2, names.index("n_elements")] == 1
    assert x[0, names.index("li_fraction")] == pytest.approx(3 / 8)
    assert x[2, names.index("li_fraction")] == 0 and x[2, names.index("mixing_entropy")] == pytest.approx(0)
    assert fraction_key({"Li": 2, "O": 1}) == fraction_key({"O": 2, "Li": 4})


def test_an_element_without_embedding_is_named() -> None:
    from htvs.errors import DataNotFound

    with pytest.raises(DataNotFound, match="element Og"):
        composition_features([{"Li": 1, "Og": 1}])


# --------------------------------------------------------------------------- PU learning


def _synthetic(seed: int = 0):
    """Positives around +1, negatives around -1 (8 features); the unlabeled hold 30 % positives."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(1.0, 1.0, size=(600, 8))
    hidden_pos = rng.normal(1.0, 1.0, size=(900, 8))
    neg = rng.normal(-1.0, 1.0, size=(2100, 8))
    unlabeled = np.vstack([hidden_pos, neg])
    held_out = rng.normal(1.0, 1.0, size=(600, 8))
    return pos, unlabeled, held_out, len(hidden_pos)


def test_bagging_pu_recovers_the_positives(tmp_path: Path) -> None:
    from htvs.synth.train import bagging_pu

    pos, unlabeled, held_out, n_hidden = _synthetic()
    result = bagging_pu(pos, unlabeled, rounds=4, seed=0, hidden=8)
    assert result.arrays["w1"].shape == (4, 8, 8) and len(result.epochs) == 4
    scored = result.oob_rounds > 0  # a row drawn in every round has no out-of-bag score
    assert scored.mean() > 0.99 and np.isfinite(result.oob_score[scored]).all()
    assert np.isnan(result.oob_score[~scored]).all()
    # out-of-bag: the positives hidden among the unlabeled score higher than the negatives
    hidden, negatives = result.oob_score[:n_hidden], result.oob_score[n_hidden:]
    assert np.nanmean(hidden) > np.nanmean(negatives) + 0.3
    model = load_synth_model(save_model(tmp_path / "m", result.arrays, {"note": "synthetic"}))
    assert model.rounds == 4 and model.card["note"] == "synthetic"
    tpr = (model.predict(held_out) > THRESHOLD).mean()
    false_rate = (model.predict(unlabeled[n_hidden:]) > THRESHOLD).mean()
    assert tpr > 0.8 and tpr > false_rate + 0.5  # far better than chance


def test_bagging_pu_refuses_too_few_rounds_or_unlabeled() -> None:
    from htvs.synth.train import bagging_pu

    pos, unlabeled, _, _ = _synthetic()
    with pytest.raises(InvalidInput, match="rounds must be at least 2, got 1"):
        bagging_pu(pos, unlabeled, rounds=1)
    with pytest.raises(InvalidInput, match="600 positives, 10 unlabeled"):
        bagging_pu(pos, unlabeled[:10], rounds=2)


def test_a_tampered_or_missing_model_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="train one with `htvs train synthesizability"):
        load_synth_model(tmp_path / "nothing")
    pos, unlabeled, _, _ = _synthetic()
    arrays = {"mean": np.zeros(8), "scale": np.ones(8), "w1": np.zeros((2, 8, 3)), "b1": np.zeros((2, 3)),
              "w2": np.zeros((2, 3)), "b2": np.zeros(2)}
    folder = save_model(tmp_path / "m", arrays, {})
    (folder / "weights.npz").write_bytes(b"tampered")
    with pytest.raises(ModelNotReady, match="weights.npz has sha256"):
        load_synth_model(folder)


# --------------------------------------------------------------------------- the shipped model


def test_the_shipped_model_is_small_and_carries_its_metrics() -> None:
    folder = shipped_model_dir()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    card = json.loads((folder / "model_card.json").read_text())
    metrics = card["metrics"]
    for key in ("heldout_tpr", "unlabeled_oob_fraction_above", "unlabeled_li_oob_fraction_above"):
        assert 0 < metrics[key] < 1, key
    assert card["split"]["heldout_fraction"] == 0.2 and card["method"]["rounds"] >= 2
    assert any("composition only" in line for line in card["differences_from_jang_et_al"])


def test_the_shipped_model_scores_experimental_li_compounds() -> None:
    scores = clscore(["Li3PS4", "Li7La3Zr2O12", "LiCoO2", "Li6.4La3Zr1.4Ta0.6O12"])
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    # reported solid electrolytes among the positives score as likely synthesizable
    assert scores[0] > THRESHOLD and scores[1] > THRESHOLD and scores[3] > THRESHOLD
    assert clscore(["Li6PS5Cl"]) == clscore(["Li12P2S10Cl2"])  # a composition's score


def test_bad_formulas_are_row_errors_and_the_others_are_scored() -> None:
    out = clscore(["Li3PS4", "Xx2O", "", "LiOg", "li3ps4"])
    assert isinstance(out[0], float)
    errors = out[1:]
    assert all(isinstance(e, RowError) for e in errors)
    assert [e.index for e in errors] == [1, 2, 3, 4]
    assert "'Xx2O'" in errors[0].message and errors[0].kind == "InvalidInput"
    assert "Og" in errors[2].message and "LiOg" in errors[2].message and errors[2].kind == "DataNotFound"
    assert "Li3PS4" in errors[3].message  # the capitalized reading is suggested


# --------------------------------------------------------------------------- CLI


def test_cli_scores_formulas_as_json() -> None:
    result = CliRunner().invoke(app, ["synth", "score", "Li3PS4", "LiCoO2", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["formula"] for r in rows] == ["Li3PS4", "LiCoO2"]
    assert all(0 <= r["clscore"] <= 1 for r in rows)
    table = CliRunner().invoke(app, ["synth", "score", "Li3PS4"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "Li3PS4" in table.stdout and "CLscore" in table.stdout


@pytest.mark.parametrize(("formula", "message"), [("Xx2O", "Xx2O"), ("LiOg", "Og"), ("Li3PS4)", "Li3PS4)")])
def test_cli_bad_formula_exits_2_naming_it(formula: str, message: str) -> None:
    result = CliRunner().invoke(app, ["synth", "score", "Li3PS4", formula, "--json"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.stderr and "Traceback" not in result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert "clscore" in rows[0] and message in rows[1]["error"]


def test_cli_missing_model_folder_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "score", "Li3PS4", "--model", str(tmp_path / "none")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert str(tmp_path / "none") in result.stderr.replace("\n", "") and "Traceback" not in result.output


# --------------------------------------------------------------------------- campaign tables


def test_the_validation_row_carries_the_clscore() -> None:
    from htvs.campaign.validate_stage import VALIDATION_COLUMNS, _row

    candidate = pd.Series({"id": "s0", "formula": "Li3PS4", "origin": "substitution", "p_superionic": 0.9})
    result = {"formula": "Li3PS4", "e_form": -1.0, "e_above_hull": 0.01,
              "sigma_300K_mS_cm": {"mean": 0.1, "low": 0.05, "high": 0.2}}
    row = _row(candidate, result, None, 0.05)
    assert "clscore" in VALIDATION_COLUMNS and list(row) == list(VALIDATION_COLUMNS)
    assert row["clscore"] == pytest.approx(clscore(["Li3PS4"])[0])
    failed = _row(candidate.copy().replace({"Li3PS4": "LiOg"}), None, "relaxation failed", 0.05)
    assert failed["clscore"] is None and failed["error"] == "relaxation failed"


def test_the_report_scores_each_formula_once() -> None:
    from htvs.campaign.runner import _clscores

    out = _clscores(pd.Series(["Li3PS4", "LiOg", "Li3PS4"]))
    assert out[0] == out[2] and isinstance(out[0], float) and out[1] is None
    assert _clscores([]) == []
    assert not any(isinstance(v, float) and math.isnan(v) for v in out)


@pytest.mark.slow
def test_a_campaign_reports_the_clscore_of_its_candidates(tmp_path: Path) -> None:
    """A whole small campaign (about 20 s): candidates.csv and structure_candidates.csv carry clscore."""
    import yaml

    from htvs.campaign import load_campaign, run_campaign
    from htvs.store import open_store
    from tiny_models import tiny_model_pair

    models = tiny_model_pair(tmp_path / "models")
    config = {
        "name": "synth",
        "prototypes": {"source": str(Path(__file__).parent / "data" / "prototypes" / "folder")},
        "substitution": {"element_pool": ["Li", "S", "O", "F", "Cl", "P", "N", "Se"]},
        "composition": {"e_form_models": str(models[0]), "band_gap_models": str(models[1]), "shards": 3},
        "screening": {"max_e_above_hull_ev_per_atom": 5.0, "min_phi_ox_v": 0.0},
        "conductivity": {"min_p_superionic": 0.0},  # shortlist every scored structure
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_campaign(load_campaign(tmp_path / "c.yaml"), open_store(tmp_path / "store"), tmp_path / "out")
    for name in ("candidates.csv", "structure_candidates.csv"):
        table = pd.read_csv(tmp_path / "out" / name)
        assert len(table) and table["clscore"].between(0, 1).all(), name
        expected = clscore(table["formula"].head(3).tolist())
        np.testing.assert_allclose(table["clscore"].head(3), expected, rtol=1e-5)
