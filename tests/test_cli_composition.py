"""`htvs predict`, `htvs screen` and `htvs train export` end to end on tiny exported ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app
from tiny_models import TINY, tiny_model_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model_pair(tmp_path_factory.mktemp("models"))


def model_args(models: tuple[Path, Path]) -> list[str]:
    return ["--e-form-models", str(models[0]), "--band-gap-models", str(models[1])]


def test_predict_json_rows(models) -> None:
    result = CliRunner().invoke(app, ["predict", "Li3PS4", "LiF", "--json", *model_args(models)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["formula"] for r in rows] == ["Li3PS4", "LiF"]
    for row in rows:
        assert set(row) == {"formula", "e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std"}
        assert row["e_form_std"] >= 0 and row["band_gap_mean"] >= 0


def test_predict_bad_rows_are_reported_and_the_rest_predicted(models) -> None:
    result = CliRunner().invoke(app, ["predict", "Li3PS4", "LiXx", "", "--json", *model_args(models)])
    assert result.exit_code == EXIT_BAD_INPUT
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["e_form_mean"] is not None
    assert "Xx" in rows[1]["error"] and rows[1]["e_form_mean"] is None
    assert "empty formula" in rows[2]["error"]


def test_predict_bulk_table(models, tmp_path: Path) -> None:
    pd.DataFrame({"formula": ["Li3PS4", "Li2O", "Og2O"]}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    args = ["predict", "--in", str(tmp_path / "in.csv"), "--out", str(out), *model_args(models)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame["formula"]) == ["Li3PS4", "Li2O", "Og2O"]
    assert frame["error"].notna().tolist() == [False, False, True]


def test_missing_models_are_a_clear_error(tmp_path: Path) -> None:
    args = ["predict", "Li3PS4", "--e-form-models", str(tmp_path), "--band-gap-models", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no e_form model" in result.output


def test_screen_writes_table_and_funnel(models, tmp_path: Path) -> None:
    pd.DataFrame({"formula": ["LiF", "Li3PS4", "LiXx"]}).to_parquet(tmp_path / "formulas.parquet")
    args = ["screen", "--formulas", str(tmp_path / "formulas.parquet"), "--out", str(tmp_path / "s"), "--json"]
    result = CliRunner().invoke(app, [*args, *model_args(models)])
    assert result.exit_code == 0, result.output
    funnel = json.loads(result.stdout)
    assert funnel == json.loads((tmp_path / "s" / "funnel.json").read_text())
    assert funnel["formulas"] == 3 and funnel["predicted"] == 2
    table = pd.read_parquet(tmp_path / "s" / "screen.parquet")
    assert len(table) == 3 and "phi_ox" in table.columns


def test_screen_refuses_bad_thresholds_and_tables(models, tmp_path: Path) -> None:
    pd.DataFrame({"name": ["LiF"]}).to_csv(tmp_path / "bad.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["screen", "--formulas", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"), *model_args(models)])
    assert result.exit_code == EXIT_BAD_INPUT and "no 'formula' column" in result.output
    result = runner.invoke(app, ["screen", "--formulas", str(tmp_path / "bad.csv"), "--out", "o", "--min-gap", "-1", *model_args(models)])
    assert result.exit_code == EXIT_BAD_INPUT and "min_band_gap_ev" in result.output


def test_export_of_a_training_run(tmp_path: Path) -> None:
    from htvs.composition.datasets import DataSplit, load_split
    from htvs.composition.predictor import OnnxRoostEnsemble
    from htvs.composition.train import TrainConfig, load_member, predict_rows, Featurized, train_ensemble

    full = load_split("gap-expt")
    split = DataSplit("gap-expt", full.train.iloc[:64], full.val.iloc[:16], full.test.iloc[:16])
    config = TrainConfig(target="gap-expt", roost=TINY, n_models=2, max_epochs=1, batch_size=32, threads=1)
    train_ensemble(tmp_path / "run", config, split, log=lambda s: None)
    result = CliRunner().invoke(
        app,
        ["train", "export", str(tmp_path / "run"), "--target", "band_gap", "--out", str(tmp_path / "m"),
         "--attach", f"fold0={tmp_path / 'run'}", "--note", "first line", "--note", "second line"],
    )
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["members_trained"] == 2 and card["metrics"]["test"]["n"] == 16
    assert card["notes"] == ["first line", "second line"] and card["trained_on"].endswith("CPU, torch threads 1")
    assert card["train_config"]["seed"] == 0 and len(card["models"]) == 2
    assert card["related_runs"]["fold0"]["test"]["n"] == 16
    bad = CliRunner().invoke(app, ["train", "export", str(tmp_path / "run"), "--target", "band_gap",
                                   "--out", str(tmp_path / "m2"), "--attach", "nonsense"])
    assert bad.exit_code == EXIT_BAD_INPUT and "NAME=RUN_DIR" in bad.output
    # attach a run to the existing card: members untouched, the run's metrics added
    members = {p.name: p.read_bytes() for p in (tmp_path / "m").glob("*.onnx")}
    attached = CliRunner().invoke(app, ["train", "attach", "--target", "band_gap", "--out", str(tmp_path / "m"),
                                        f"bartel={tmp_path / 'run'}"])
    assert attached.exit_code == 0, attached.output
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert set(card["related_runs"]) == {"fold0", "bartel"} and card["related_runs"]["bartel"]["test"]["n"] == 16
    assert members == {p.name: p.read_bytes() for p in (tmp_path / "m").glob("*.onnx")}
    missing = CliRunner().invoke(app, ["train", "attach", "--target", "band_gap", "--out", str(tmp_path / "m"),
                                       f"x={tmp_path / 'nowhere'}"])
    assert missing.exit_code == EXIT_BAD_INPUT and "nowhere" in missing.output
    ensemble = OnnxRoostEnsemble.from_dir(tmp_path / "m")
    test = Featurized.from_frame(split.test)
    onnx = ensemble.predict(test.formulas).members
    torch_preds = [predict_rows(load_member(tmp_path / "run", k, TINY), test) for k in range(2)]
    assert abs(onnx - torch_preds).max() < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "device must be one of cpu, cuda"),
        (["--time-budget", "-1"], "time_budget must be > 0"),
        (["--time-budget", "nan"], "time_budget must be finite"),
    ],
)
def test_train_composition_refuses_bad_device_and_budget(tmp_path: Path, args: list[str], message: str) -> None:
    cli = ["train", "composition", "--target", "gap-expt", "--out", str(tmp_path / "r"), *args]
    result = CliRunner().invoke(app, cli)
    assert result.exit_code == EXIT_BAD_INPUT and message in result.output
    assert not (tmp_path / "r" / "model_0").exists()


def test_train_composition_refuses_cuda_without_a_gpu(tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["train", "composition", "--target", "gap-expt", "--out", str(tmp_path / "r"), "--device", "cuda"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT and "device 'cuda' requested" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(app, ["train", "evaluate", str(tmp_path / "r"), "--device", "tpu"])
    assert result.exit_code == EXIT_BAD_INPUT and "got 'tpu'" in result.output
    result = CliRunner().invoke(app, ["train", "evaluate", str(tmp_path / "r")])
    assert result.exit_code == EXIT_BAD_INPUT and "no train_config.json" in result.output
