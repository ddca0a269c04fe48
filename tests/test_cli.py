"""The ``htvs`` command line: JSON outputs scripts rely on, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app

FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def run_json(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in ("prototypes", "substitute", "window", "hull"):
        assert command in result.stdout


def test_prototypes_from_a_folder_reports_skipped_files(runner: CliRunner) -> None:
    payload = run_json(runner, "prototypes", "--source", str(FOLDER), "--ids")
    assert payload["prototypes"] == 4
    skipped = {s["name"]: s["reason"] for s in payload["skipped"]}
    assert "broken.cif" in skipped and "Li7BiO6_disordered.cif" in skipped
    assert "disordered" in skipped["Li7BiO6_disordered.cif"]
    assert len(payload["ids"]) == 4


def test_substitute_writes_tables_and_counts(runner: CliRunner, tmp_path: Path) -> None:
    payload = run_json(runner, "substitute", "--prototypes", str(FOLDER), "--out", str(tmp_path))
    # 1 ternary + 3 quaternary prototypes under the paper's rule
    assert payload["prototypes"] == 4
    assert payload["substitutions"] == 52 + 3 * 1950
    formulas = pq.read_table(tmp_path / "formulas.parquet")
    assert formulas.num_rows == payload["unique_formulas"]
    assert pq.read_table(tmp_path / "substitutions.parquet").num_rows == payload["substitutions"]


def test_substitute_with_a_custom_pool(runner: CliRunner, tmp_path: Path) -> None:
    payload = run_json(
        runner, "substitute", "-p", str(FOLDER), "-o", str(tmp_path), "--pool", "Li,S,O,Se,Cl"
    )
    # free elements O, Se, Cl: ternary 2 x 3, quaternary 3 x 3 x 2
    assert payload["substitutions"] == 6 + 3 * 18


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["substitute", "-p", "/no/such/folder", "-o", "x"], "/no/such/folder"),
        (["substitute", "-p", str(FOLDER), "-o", "x", "--pool", "Li,S,Qq"], "'Qq'"),
        (["substitute", "-p", str(FOLDER), "-o", "x", "--required", "Li"], "must differ"),
        (["prototypes", "--source", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_input_is_one_clear_line(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.output
    assert "Traceback" not in result.output


def test_unknown_rule_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["substitute", "-p", str(FOLDER), "-o", str(tmp_path), "--rule", "x"])
    assert result.exit_code == 2
    assert "unknown rule 'x'" in result.output


def test_window_json_matches_the_literature(runner: CliRunner) -> None:
    """Li3PS4 about 1.7-2.3 V with MP data (Zhu, He, Mo, ACS AMI 2015)."""
    payload = run_json(runner, "window", "Li3PS4")
    assert set(payload) >= {"formula", "phi_red", "phi_ox", "reduction_products", "oxidation_products"}
    assert payload["formula"] == "Li3PS4"
    assert payload["phi_red"] == pytest.approx(1.72, abs=0.05)
    assert payload["phi_ox"] == pytest.approx(2.36, abs=0.05)
    assert "Li2S" in payload["reduction_products"]


def test_window_batch_survives_a_bad_row(runner: CliRunner) -> None:
    result = runner.invoke(app, ["window", "Li3PS4", "NaCl", "Li2O", "--json"])
    assert result.exit_code == EXIT_BAD_INPUT
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["formula"] for r in rows] == ["Li3PS4", "NaCl", "Li2O"]
    assert "no Li" in rows[1]["error"]
    assert rows[2]["phi_ox"] > rows[2]["phi_red"]


def test_hull_json_of_a_ground_state_is_zero(runner: CliRunner) -> None:
    from htvs.datasets import load_mp_formation_energies

    table = load_mp_formation_energies().set_index("formula")
    ef = float(table.loc["Li3PS4", "e_form_ev_per_atom"])
    payload = run_json(runner, "hull", "Li3PS4", "--ef", repr(ef))
    assert payload["e_above_hull"] == pytest.approx(0.0, abs=1e-6)
    assert payload["decomposition"] == [{"formula": "Li3PS4", "fraction": 1.0}]
    above = run_json(runner, "hull", "Li3PS4", "--ef", repr(ef + 0.1))
    assert above["e_above_hull"] == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["window", "Li("], "cannot read formula 'Li(': a bracket is opened and not closed"),
        (["window", "LiFr"], "Fr"),
        (["hull", "Li3PS4", "--ef", "nan"], "must be finite"),
        (["hull", "", "--ef", "0"], "empty formula"),
    ],
)
def test_thermo_commands_refuse_bad_input(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.output
    assert "Traceback" not in result.output


def test_outputs_keep_the_formula_as_typed_beside_the_reduced_one(runner: CliRunner) -> None:
    window = run_json(runner, "window", "Li10GeP2S12")
    assert (window["input"], window["formula"]) == ("Li10GeP2S12", "Li10Ge(PS6)2")
    hull = run_json(runner, "hull", "Li10GeP2S12", "--ef", "-1.2")
    assert (hull["input"], hull["formula"]) == ("Li10GeP2S12", "Li10Ge(PS6)2")
    table = runner.invoke(app, ["window", "Li10GeP2S12"], env={"COLUMNS": "200"})
    assert "Li10GeP2S12 (Li10Ge(PS6)2)" in table.stdout


def test_predict_prints_no_empty_table_after_an_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["predict", "li3ps4"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "did you mean 'Li3PS4'" in result.stderr
    assert "E_f (eV/atom)" not in result.stdout
