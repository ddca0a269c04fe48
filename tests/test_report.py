"""``htvs campaign report``: the self-contained HTML report of a real (small) campaign, its CIF
files, the data dictionary, and clear errors on bad folders."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app
from htvs.errors import InvalidInput
from htvs.report import DATA_DICTIONARY, markdown_dictionary, report_after_run, write_campaign_report
from htvs.report.columns import REPORT_CANDIDATES, header

#: Shortlist cut of the test campaign: P(sigma >= 1e-4 S/cm) >= this (the tiny pool's best reach ~0.35).
MIN_P = 0.2
#: A demo-length MD protocol (tens of MD steps): stage 7 runs end to end in seconds.
TINY_MD = {"top_k": 1, "temperatures_k": [800, 1200], "heat_ps": 0.01, "equilibrate_ps": 0.01,
           "production_ps": 0.04, "smoothing": "none", "relax_max_steps": 3, "min_supercell_length_angstrom": 0}


def small_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --out folder of a small real campaign (tiny composition models, 4 test prototypes,
    6-element pool, shipped conductivity model, CHGNet validation of the best structure), run
    once per test session and shared by the report tests; returns the folder."""
    root = tmp_path_factory.getbasetemp() / "report-campaign"
    out = root / "out"
    if (out / "report.html").is_file():
        return out
    from test_campaign import write_config
    from tiny_models import tiny_model_pair

    from htvs.campaign import load_campaign, run_campaign
    from htvs.store import open_store

    root.mkdir(parents=True, exist_ok=True)
    models = tiny_model_pair(root / "models")
    config_path = write_config(root / "c.yaml", models, validation={**TINY_MD, "workdir": str(root / "md")},
                               conductivity={"min_p_superionic": MIN_P},
                               substitution={"element_pool": ["Li", "S", "O", "Cl", "P", "N"]})
    run_campaign(load_campaign(config_path), open_store(root / "store"), out)
    return out


@pytest.fixture(scope="module")
def campaign_out(tmp_path_factory) -> Path:
    return small_campaign(tmp_path_factory)


@pytest.fixture(scope="module")
def report_html(campaign_out) -> str:
    return (campaign_out / "report.html").read_text(encoding="utf-8")


def _copy(out: Path, target: Path) -> Path:
    """The campaign's files without its CIF folder and report (a scratch copy to alter)."""
    target.mkdir(parents=True)
    for path in out.iterdir():
        if path.is_file() and path.name != "report.html":
            shutil.copy(path, target / path.name)
    return target


# --------------------------------------------------------------------------- the real campaign


@pytest.mark.slow
def test_the_campaign_run_writes_the_report_and_run_metadata(campaign_out, report_html) -> None:
    assert (campaign_out / "report.html").is_file() and (campaign_out / "run.json").is_file()
    run = json.loads((campaign_out / "run.json").read_text())
    assert run["config"]["conductivity"]["min_p_superionic"] == MIN_P and len(run["config_hash"]) == 64
    assert {"predict", "screen", "conductivity", "validate"} <= set(run["stages"])
    assert any(m["role"].startswith("stage 6") and len(m["version"]) == 12 for m in run["models"])
    for text in (run["config_hash"], "htvs version", "stage timings", run["models"][0]["version"]):
        assert text in report_html


@pytest.mark.slow
def test_the_funnel_has_counts_thresholds_with_units_and_the_paper_column(campaign_out, report_html) -> None:
    funnel = json.loads((campaign_out / "funnel.json").read_text())
    table = re.search(r'<table id="funnel">(.*?)</table>', report_html, re.S).group(1)
    rows = re.findall(r"<tr><td>.*?</tr>", table, re.S)
    assert len(rows) == len(funnel)
    for row, (key, count) in zip(rows, funnel.items(), strict=True):
        assert f"({key})" in row and f">{count:,}<" in row
    for threshold in ("max_e_form = 0.1 eV/atom", "max_e_above_hull = 5 eV/atom", "min_band_gap = 0.5 eV",
                      "min_phi_ox = 0 V vs Li/Li+", f"min_p_superionic = {MIN_P:g}"):
        assert threshold in table
    assert ">26,549,208<" in table and ">714<" in table  # the paper's substitutions and shortlist
    predicted = next(r for r in rows if "(predicted)" in r)
    assert predicted.endswith("<td class=num>—</td></tr>")  # the paper gives no count
    assert "<td>formulas</td>" in rows[2] and "<td>structures</td>" in rows[-1]


@pytest.mark.slow
def test_the_candidate_table_has_a_row_per_shortlisted_structure_and_units_in_headers(campaign_out,
                                                                                       report_html) -> None:
    shortlist = pd.read_csv(campaign_out / "structure_candidates.csv")
    assert len(shortlist) > 1
    table = re.search(r'<table id="candidates" class="sortable">(.*?)</table>', report_html, re.S).group(1)
    headers = re.findall(r"<th[^>]*>(.*?)</th>", table)
    assert all(re.search(r"\(.+\)$", h) for h in headers), headers
    for wanted in ("E_hull predicted (eV/atom)", "E_hull relaxed (eV/atom)", "band gap (eV)",
                   "window (V vs Li/Li+)", "σ(300 K) (mS/cm)", "clscore (—)", "flags (—)", "prototype (—)"):
        assert wanted in headers
    ids = re.findall(r'<tr data-id="([^"]+)">', table)
    assert [i.replace("&amp;", "&") for i in ids] == list(shortlist["id"])
    validated = pd.read_parquet(campaign_out / "validation.parquet")
    assert validated["id"].iloc[0] == shortlist["id"].iloc[0]
    assert table.split("<tbody>")[1].count(">not validated<") == len(shortlist) - 1
    assert "at φ_red:" in table  # products at the predicted window's limits
    assert re.search(r"[A-Z][a-z0-9-]* \(\d+\)", table)  # a space group with its number


@pytest.mark.slow
def test_figures_are_inline_and_the_page_is_self_contained(report_html) -> None:
    images = re.findall(r'<img src="([^"]+)"', report_html)
    assert len(images) >= 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', report_html)
    assert "<link rel=\"stylesheet\"" not in report_html and "<style>" in report_html
    for caption in ("histograms of the screened predictions", "predicted σ(300 K) in mS/cm", "Arrhenius fit"):
        assert caption in report_html
    # the validation stage records each temperature's Li MSD curve: the report plots them
    assert "Li MSD against time per temperature" in report_html
    assert "MSD curves not recorded by this run" not in report_html


@pytest.mark.slow
def test_candidate_cifs_are_written_linked_and_readable(campaign_out, report_html) -> None:
    from pymatgen.core import Composition, Structure

    shortlist = pd.read_csv(campaign_out / "structure_candidates.csv")
    links = re.findall(r'<a href="(cifs/[^"]+\.cif)">', report_html)
    assert len(links) == len(shortlist) == len(list((campaign_out / "cifs").glob("*.cif")))
    for rank, (link, formula) in enumerate(zip(links, shortlist["formula"], strict=True), start=1):
        name = Path(link).name
        assert re.fullmatch(rf"{rank:03d}_[A-Za-z0-9]+_(substitution|generated)_[A-Za-z0-9.-]+\.cif", name)
        structure = Structure.from_file(campaign_out / link)
        assert structure.composition.reduced_composition == Composition(formula).reduced_composition


@pytest.mark.slow
def test_msd_curves_and_flags_are_shown_when_the_run_records_them(campaign_out, tmp_path) -> None:
    out = _copy(campaign_out, tmp_path / "out")
    documents = json.loads((out / "validation.json").read_text())
    curves = {"800": {"t_ps": [0.0, 0.02, 0.04], "msd_li_A2": [0.0, 0.4, 0.9], "mean_temperature_K": 812.0},
              "1200": {"t_ps": [0.0, 0.02, 0.04], "msd_li_A2": [0.0, 0.8, 1.7], "mean_temperature_K": 1190.0}}
    documents[0].update(msd_curves=curves, trusted=False,
                        flags=[{"code": "short_md", "reason": "production shorter than 1 ps"}])
    (out / "validation.json").write_text(json.dumps(documents))
    table = pd.read_parquet(out / "validation.parquet")
    table["msd_curves_json"], table["trusted"] = json.dumps(curves), False
    table["flags"] = "production shorter than 1 ps"
    table.to_parquet(out / "validation.parquet")
    html = write_campaign_report(out, window_products=False).read_text(encoding="utf-8")
    assert "Li MSD against time per temperature" in html and "MSD curves not recorded" not in html
    assert html.count("production shorter than 1 ps") >= 2  # the candidate table and the validation section
    assert "<th>trusted (—)</th><td>False</td>" in html


@pytest.mark.slow
def test_cli_report_and_campaign_run_print_the_path(campaign_out, tmp_path) -> None:
    runner = CliRunner()
    out = _copy(campaign_out, tmp_path / "out")
    result = runner.invoke(app, ["campaign", "report", str(out), "--no-window-products"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and (out / "report.html").is_file()
    # a rerun of the campaign on its store is all cache hits; it ends with the report's path
    root = campaign_out.parent
    rerun = runner.invoke(app, ["campaign", "run", str(root / "c.yaml"), "--out", str(tmp_path / "again"),
                                "--store", str(root / "store")])
    assert rerun.exit_code == 0, rerun.output
    assert rerun.stdout.rstrip().endswith(f"report: {tmp_path / 'again' / 'report.html'}")


@pytest.mark.slow
def test_a_report_failure_is_logged_and_the_results_stay(campaign_out, tmp_path, caplog) -> None:
    from htvs.campaign import load_campaign

    out = _copy(campaign_out, tmp_path / "out")
    (out / "report.html").write_text("an earlier report")
    (out / "screen.parquet").write_bytes(b"not parquet")
    config = load_campaign(campaign_out.parent / "c.yaml")
    with caplog.at_level(logging.ERROR, logger="htvs.report"):
        assert report_after_run(out, config, {}) is None
    assert "campaign report not written" in caplog.text and "screen.parquet" in caplog.text
    assert "htvs campaign report" in caplog.text
    assert not (out / "report.html").exists()  # the stale report would describe other results
    assert (out / "candidates.csv").read_bytes() == (campaign_out / "candidates.csv").read_bytes()


# --------------------------------------------------------------------------- fast: errors, dictionary


def test_missing_or_bad_folders_get_one_line_naming_the_file(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["campaign", "report", str(tmp_path / "nowhere")])
    assert missing.exit_code == EXIT_BAD_INPUT
    assert "nowhere: no such folder" in missing.stderr and "Traceback" not in missing.output
    with pytest.raises(InvalidInput, match="no funnel.json"):
        write_campaign_report(tmp_path)
    (tmp_path / "funnel.json").write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="funnel.json: expected an object"):
        write_campaign_report(tmp_path)
    (tmp_path / "funnel.json").write_text(json.dumps({"prototypes": 2, "substitutions": 10}))
    (tmp_path / "conductivity.parquet").write_bytes(b"garbage")
    result = runner.invoke(app, ["campaign", "report", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT and "conductivity.parquet: not a readable Parquet table" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    (tmp_path / "conductivity.parquet").unlink()
    (tmp_path / "validation.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="validation.json: not readable JSON"):
        write_campaign_report(tmp_path)


def test_a_funnel_alone_still_gives_a_report(tmp_path: Path) -> None:
    (tmp_path / "funnel.json").write_text(json.dumps({"prototypes": 2, "substitutions": 10, "unique_formulas": 7}))
    html = write_campaign_report(tmp_path).read_text(encoding="utf-8")
    assert "config not recorded (no run.json)" in html and "No shortlisted structure" in html
    assert ">16,205<" in html and "No run.json in this folder" in html


def test_the_data_dictionary_renders_as_markdown_with_a_unit_per_column() -> None:
    text = markdown_dictionary()
    for table, columns in DATA_DICTIONARY.items():
        assert f"### {table}" in text
        for column in columns:
            assert column.unit and column.meaning
            assert f"| `{column.name}` | {column.unit} |" in text
    assert "| `e_above_hull` | eV/atom |" in text and "| `phi_ox` | V vs Li/Li+ |" in text
    assert "| `sigma_300K_mS_cm` | mS/cm |" in text
    assert [header(c) for c in REPORT_CANDIDATES][:2] == ["rank (—)", "formula (—)"]
