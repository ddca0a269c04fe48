"""``htvs conductivity predict|info`` and ``htvs structures dedupe`` through typer's CliRunner.

The ensemble is the shipped one (set ``HTVS_TEST_CONDUCTIVITY_MODELS=DIR`` to use another
folder; it is passed as ``--models``). No predicted number is asserted (the model is retrained
from time to time): rows must be finite and in range, errors must name the file and reason.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app

pytestmark = pytest.mark.timeout(180)

MODELS = os.environ.get("HTVS_TEST_CONDUCTIVITY_MODELS") or None
MODEL_ARGS = ["--models", MODELS] if MODELS else []


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def li2o() -> Structure:
    """Antifluorite Li2O (a = 4.61 Å), 12 sites."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two small bundled OBELiX Li CIFs (``good_a``, ``good_b``) and one file per kind of bad input."""
    from htvs.datasets import load_obelix_cifs

    folder = tmp_path_factory.mktemp("structures")
    out: dict[str, Path] = {}
    for cif in sorted(load_obelix_cifs(), key=lambda c: len(c.text)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif.text, fmt="cif")
        if structure.is_ordered and "Li" in structure.composition and len(structure) <= 40:
            key = "good_a" if "good_a" not in out else "good_b"
            out[key] = folder / f"{cif.id}.cif"
            out[key].write_text(cif.text)
            if key == "good_b":
                break
    out["malformed"] = folder / "malformed.cif"
    out["malformed"].write_text("data_x\n_this is not a cif at all\n")
    out["no_li"] = folder / "NaCl.cif"
    Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(out["no_li"]))
    out["big"] = folder / "Li2O_222.cif"
    (li2o() * (2, 2, 2)).to(filename=str(out["big"]))  # 96 sites
    nan = li2o().as_dict()
    nan["sites"][0]["abc"][0] = float("nan")
    out["nan"] = folder / "nan_coords.json"
    out["nan"].write_text(json.dumps(nan))
    out["json"] = folder / "Li2O.json"
    out["json"].write_text(li2o().to_json())
    out["missing"] = folder / "missing.cif"
    return out


def predict(runner: CliRunner, *args: str):
    return runner.invoke(app, ["conductivity", "predict", *args, *MODEL_ARGS])


def assert_prediction_row(row: dict) -> None:
    assert set(row) == {"id", "log10_sigma_mean", "log10_sigma_std", "p_superionic"}, row
    assert all(math.isfinite(row[k]) for k in ("log10_sigma_mean", "log10_sigma_std", "p_superionic"))
    assert row["log10_sigma_std"] >= 0.0 and 0.0 <= row["p_superionic"] <= 1.0
    assert -20.0 < row["log10_sigma_mean"] < 5.0


def test_predict_json_rows_in_order_with_per_file_errors(runner: CliRunner, files: dict[str, Path]) -> None:
    order = ["good_a", "malformed", "no_li", "big", "nan", "missing", "json", "good_b"]
    result = predict(runner, *(str(files[k]) for k in order), "--json", "--max-atoms", "50")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["id"] for row in rows] == [files[k].stem for k in order]
    by_key = dict(zip(order, rows))
    for key in ("good_a", "good_b", "json"):
        assert_prediction_row(by_key[key])
    for key in ("malformed", "no_li", "big", "nan", "missing"):
        assert set(by_key[key]) == {"id", "error", "no_lithium"}, by_key[key]
        assert by_key[key]["error"].startswith(files[key].stem + ":")
        assert by_key[key]["no_lithium"] is (key == "no_li")
    assert "malformed CIF" in by_key["malformed"]["error"]
    assert "no Li" in by_key["no_li"]["error"] and "not predicted" in by_key["no_li"]["error"]
    assert "96 sites" in by_key["big"]["error"] and "limit of 50" in by_key["big"]["error"]
    assert "NaN" in by_key["nan"]["error"]
    assert "cannot read" in by_key["missing"]["error"]
    # every error is also one line on stderr; stdout is the JSON document only
    assert result.stderr.count("error:") == 5
    assert "Li2O_222: 96 sites exceeds the limit of 50" in result.stderr


def test_predict_table_and_summary(runner: CliRunner, files: dict[str, Path]) -> None:
    result = predict(runner, str(files["good_a"]), str(files["no_li"]))
    assert result.exit_code == 0, result.output
    assert files["good_a"].stem in result.stdout and "P(σ ≥ 1e-4 S/cm)" in result.stdout
    assert "1 predicted, 1 not predicted" in result.stdout
    assert "error: NaCl: structure NaCl contains no Li; not predicted" in result.stderr


def test_predict_exits_2_when_every_file_failed(runner: CliRunner, files: dict[str, Path]) -> None:
    result = predict(runner, str(files["malformed"]), str(files["no_li"]), "--json")
    assert result.exit_code == EXIT_BAD_INPUT
    assert [row["id"] for row in json.loads(result.stdout)] == ["malformed", "NaCl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-atoms", "0"], "--max-atoms"),
        (["--models", "/nonexistent/models"], "no conductivity model in /nonexistent/models"),
    ],
)
def test_predict_bad_options_exit_2_naming_the_value(runner, files, args, message) -> None:
    result = runner.invoke(app, ["conductivity", "predict", str(files["good_a"]), *args])
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.output


def test_info_prints_the_model_card_metrics(runner: CliRunner) -> None:
    result = runner.invoke(app, ["conductivity", "info", *MODEL_ARGS])
    assert result.exit_code == 0, result.output
    assert "| model | subset | n | MAE log10 σ | accuracy | ROC-AUC |" in result.stdout
    assert "| model | all |" in result.stdout
    payload = json.loads(runner.invoke(app, ["conductivity", "info", "--json", *MODEL_ARGS]).stdout)
    assert payload["n_models"] >= 1 and payload["test"]["model"]["all"]["n"] > 0
    if "model_vs_random_forest" in payload:  # the shipped card has the bootstrap and the calibration
        assert "paired bootstrap 95 % interval" in result.stdout and "within 1 std" in result.stdout
        assert payload["model_vs_random_forest"]["ci95_low"] <= payload["model_vs_random_forest"]["mae_difference"]


def test_info_writes_the_reliability_diagram_and_refuses_a_bad_path(runner: CliRunner, tmp_path) -> None:
    image = tmp_path / "reliability.png"
    result = runner.invoke(app, ["conductivity", "info", "--reliability-plot", str(image)])
    assert result.exit_code == 0, result.output
    assert image.stat().st_size > 5000 and "P(superionic) calibration:" in result.stdout
    assert "test Brier" in result.stdout and "pretraining: none" in result.stdout
    for bad, named in ((tmp_path / "plot.txt", "plot.txt"), (tmp_path / "absent" / "p.png", "absent")):
        result = runner.invoke(app, ["conductivity", "info", "--reliability-plot", str(bad)])
        assert result.exit_code == EXIT_BAD_INPUT and named in result.output
        assert not bad.exists()


def test_structures_dedupe_finds_copies_and_refuses_bad_files(runner, files, tmp_path) -> None:
    copy = tmp_path / "copy.cif"
    copy.write_text(files["good_a"].read_text())
    args = [str(files[k]) for k in ("good_a", "good_b", "malformed")] + [str(copy), str(files["json"])]
    result = runner.invoke(app, ["structures", "dedupe", *args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["unique"] == [files["good_a"].stem, files["good_b"].stem, "Li2O"]
    assert payload["duplicate_of"] == {"copy": files["good_a"].stem}
    assert [r["id"] for r in payload["refused"]] == ["malformed"]
    counts = payload["counts"]
    assert {k: counts[k] for k in ("in", "out", "removed", "refused")} == {"in": 5, "out": 3, "removed": 1, "refused": 1}
    assert counts["comparisons"] >= 1


def test_serve_lists_the_services_and_refuses_an_unknown_one(runner: CliRunner) -> None:
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).stdout
    assert "structure, generator, conductivity or dft" in help_text and "--conductivity-models" in help_text
    assert "--dft-workdir" in help_text and "--generator-model" in help_text
    result = runner.invoke(app, ["serve", "diffcsp", "--port", "0"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "unknown service 'diffcsp'" in result.output
