"""``htvs campaign plot``: the figures of a campaign output folder, and clear errors on bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from htvs.campaign.plots import plot_campaign
from htvs.cli import app
from htvs.errors import InvalidInput

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _campaign_folder(root: Path, conductivity: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    funnel = {"prototypes": 3, "substitutions": 120, "unique_formulas": 80, "oxidation_window": 6, "validated": 0}
    (root / "funnel.json").write_text(json.dumps(funnel))
    pd.DataFrame({
        "formula": [f"Li{i}X" for i in range(80)],
        "e_above_hull": rng.uniform(-0.3, 0.2, 80),
        "phi_ox": rng.uniform(0, 8, 80),
        "passed": rng.random(80) < 0.1,
    }).to_parquet(root / "screen.parquet")
    if conductivity:
        pd.DataFrame({
            "id": [f"s{i}" for i in range(30)],
            "log10_sigma_mean": rng.uniform(-9, -3, 30),
            "p_superionic": rng.uniform(0, 0.8, 30),
            "shortlisted": [True] * 5 + [False] * 25,
            "origin": ["generated"] * 3 + ["substitution"] * 27,
        }).to_parquet(root / "conductivity.parquet")
        pd.DataFrame({"id": ["s0", "s1"], "error": [None, "relaxation failed"]}).to_parquet(root / "validation.parquet")
    return root


def test_plots_of_a_full_campaign_folder(tmp_path: Path) -> None:
    result = plot_campaign(_campaign_folder(tmp_path / "out"))
    assert [p.name for p in result.written] == ["funnel.png", "screening.png", "conductivity.png"]
    for path in result.written:
        assert path.parent == tmp_path / "out" / "plots" and path.read_bytes()[:8] == PNG_MAGIC
    assert result.skipped == {}


def test_a_campaign_without_the_conductivity_step_skips_that_figure(tmp_path: Path) -> None:
    result = plot_campaign(_campaign_folder(tmp_path / "out", conductivity=False), tmp_path / "figs")
    assert [p.name for p in result.written] == ["funnel.png", "screening.png"]
    assert "conductivity.png" in result.skipped and not (tmp_path / "figs" / "conductivity.png").exists()


def test_bad_folders_get_errors_that_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no funnel.json"):
        plot_campaign(tmp_path)
    out = _campaign_folder(tmp_path / "out")
    (out / "screen.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInput, match="screen.parquet: not a readable Parquet table"):
        plot_campaign(out)
    pd.DataFrame({"phi_ox": [1.0]}).to_parquet(out / "screen.parquet")
    with pytest.raises(InvalidInput, match="missing column.*e_above_hull"):
        plot_campaign(out)
    (out / "funnel.json").write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="step -> count"):
        plot_campaign(out)


def test_cli_plot(tmp_path: Path) -> None:
    runner = CliRunner()
    out = _campaign_folder(tmp_path / "out", conductivity=False)
    result = runner.invoke(app, ["campaign", "plot", str(out)])
    assert result.exit_code == 0, result.output
    assert "funnel.png" in result.stdout and "skipped conductivity.png" in result.stderr
    missing = runner.invoke(app, ["campaign", "plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no funnel.json" in missing.stderr and "Traceback" not in missing.output
