"""Stage 7 with the real CHGNet 0.3.0 (weights from the chgnet wheel) on an 8-atom LiCl cell.

A few hundred MD steps in all, so the numbers are not physics: the tests check that the
pipeline completes with finite D and sigma, that the CLI prints the documented JSON, and that
an interrupted CHGNet run resumes to exactly the uninterrupted trajectory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from htvs.cli_validate import validate
from htvs.validation import MDConfig, ValidationCancelled, read_structure_file
from htvs.validation.md import read_checkpoint

DATA = Path(__file__).parent / "data" / "validation"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """MlipBackend sets torch's thread count for the process; give other modules theirs back."""
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def backend():
    from htvs.validation.mlip import MlipBackend

    return MlipBackend(device="cpu")


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("validate")(validate)
    app.command("noop", hidden=True)(lambda: None)  # keep "validate" a named subcommand
    return app


def test_weights_ship_in_the_wheel_and_load_without_unpickling() -> None:
    from htvs.validation.mlip import weights_path

    path = weights_path()
    assert path.is_file() and path.parent.name == "0.3.0"


def test_cli_short_chgnet_run_prints_the_result_json(cli: typer.Typer, backend, tmp_path: Path) -> None:
    """Two temperatures x (10 + 10 + 60) steps at 2 fs on LiCl (8 atoms), smoothing 'none'."""
    args = [
        "validate", str(DATA / "LiCl.cif"), "--backend", "mlip", "--temperatures", "1200,800",
        "--heat-ps", "0.02", "--equilibrate-ps", "0.02", "--production-ps", "0.12", "--timestep-fs", "2",
        "--min-supercell-length", "0", "--max-atoms", "8", "--fmax", "0.1", "--smoothing", "none",
        "--checkpoint-every", "40", "--device", "cpu", "--workdir", str(tmp_path), "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["id"] == "LiCl" and doc["formula"] == "LiCl" and doc["backend"] == "mlip"
    assert doc["e_form"] == pytest.approx(-2.1, abs=0.15)  # MP: about -2.1 eV/atom for LiCl
    assert abs(doc["e_above_hull"]) < 0.15 and doc["phi_red"] == pytest.approx(0.0, abs=1e-6)
    assert doc["phi_ox"] == pytest.approx(4.26, abs=0.05)  # LiCl -> Li + Cl2 on the MP hull
    assert set(doc["diffusivity"]) == {"800", "1200"}
    assert all(math.isfinite(d["mean"]) and d["mean"] > 0 for d in doc["diffusivity"].values())
    assert math.isfinite(doc["activation_energy_eV"])
    sigma = doc["sigma_300K_mS_cm"]
    assert all(math.isfinite(sigma[key]) and sigma[key] > 0 for key in ("mean", "low", "high"))
    assert sigma["low"] <= sigma["mean"] <= sigma["high"]
    assert doc["supercell_atoms"] == 8 and doc["notes"]
    assert (tmp_path / "md_800K.npz").is_file() and (tmp_path / "result.json").is_file()
    # a rerun resumes from the finished checkpoints: same numbers, no MD steps
    again = CliRunner().invoke(cli, args)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == doc


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--temperatures", "600,abc"], "'abc'"),
        (["--temperatures", "0,800"], "must be > 0 K, got '0'"),
        (["--temperatures", "800,9000"], "must be <= 5000 K, got '9000'"),
        (["--production-ps", "-40"], "production time must be > 0 ps, got -40"),
        (["--min-supercell-length", "-8"], "min supercell length must be >= 0 Å, got -8"),
        (["--backend", "gaussian"], "unknown backend 'gaussian'"),
    ],
)
def test_cli_bad_settings_are_one_line_and_status_2(cli: typer.Typer, extra: list[str], named: str) -> None:
    result = CliRunner().invoke(cli, ["validate", str(DATA / "LiCl.cif"), "--json", *extra])
    assert result.exit_code == 2
    assert named in result.output and result.stdout.strip() == ""  # the error line is on stderr


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("malformed.cif", "unreadable CIF"),
        ("LiNaCl2_disordered.cif", "disordered: 4 sites with mixed species"),
        ("NaCl.cif", "contains no Li"),
    ],
)
def test_cli_bad_structures_are_refused(cli: typer.Typer, name: str, named: str) -> None:
    result = CliRunner().invoke(cli, ["validate", str(DATA / name), "--json"])
    assert result.exit_code == 2 and named in result.output


def test_chgnet_md_resumes_bit_for_bit(backend, tmp_path: Path) -> None:
    """CHGNet on CPU is a pure function of the positions (a new graph per call, fixed thread
    count), so an interrupted run continues exactly as the uninterrupted one."""
    structure = read_structure_file(DATA / "LiCl.cif")
    config = MDConfig(temperatures_k=(1000, 1200), heat_ps=0.01, equilibrate_ps=0.01, production_ps=0.02,
                      record_every_steps=2, checkpoint_every_steps=8)
    whole = backend.run_md(structure, 1000.0, config, checkpoint=tmp_path / "whole.npz")
    path = tmp_path / "killed.npz"
    with pytest.raises(ValidationCancelled, match="after 8 of 20"):
        backend.run_md(structure, 1000.0, config, checkpoint=path, should_stop=lambda: True)
    resumed = backend.run_md(structure, 1000.0, config, checkpoint=path)
    np.testing.assert_array_equal(resumed.li_positions, whole.li_positions)
    for key in ("positions", "momenta", "eta", "p_eta"):
        np.testing.assert_array_equal(read_checkpoint(path)[key], read_checkpoint(tmp_path / "whole.npz")[key])
