"""The embedded campaign runner: config validation, outputs, caching, SIGKILL and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from htvs.campaign import load_campaign, run_campaign, run_step
from htvs.campaign.runner import FUNNEL_ORDER
from htvs.campaign.stages import InProcessBackend
from htvs.cli import EXIT_BAD_INPUT, app
from htvs.errors import InvalidInput
from htvs.store import open_store
from tiny_models import tiny_model_pair

FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"
OUTPUTS = (
    "substitutions.parquet", "formulas.parquet", "prototypes.parquet", "predictions.parquet",
    "screen.parquet", "structures.parquet", "conductivity.parquet", "funnel.json", "candidates.csv",
    "structure_candidates.csv",
)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model_pair(tmp_path_factory.mktemp("models"))


def write_config(path: Path, models: tuple[Path, Path], **overrides) -> Path:
    data = {
        "name": "test",
        "prototypes": {"source": str(FOLDER)},
        # a small pool keeps the chemical systems (and so the test) small: 6 free elements
        "substitution": {"element_pool": ["Li", "S", "O", "F", "Cl", "P", "N", "Se"]},
        "composition": {"e_form_models": str(models[0]), "band_gap_models": str(models[1]), "shards": 3},
        # loose thresholds so that the tiny random models leave survivors to report
        "screening": {"max_e_above_hull_ev_per_atom": 5.0, "min_phi_ox_v": 0.0},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data))
    return path


def test_campaign_outputs_and_funnel(tmp_path: Path, models) -> None:
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    funnel = run_campaign(config, open_store(tmp_path / "store"), tmp_path / "out")
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).is_file(), name
    assert funnel["prototypes"] == 4
    assert funnel["substitutions"] == 2 * 6 + 3 * (3 * 6 * 5)
    counts = [funnel[k] for k in ("unique_formulas", "predicted", "e_form_and_hull", "band_gap", "oxidation_window")]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0
    candidates = pd.read_csv(tmp_path / "out" / "candidates.csv")
    assert len(candidates) == funnel["oxidation_window"]
    assert (candidates["phi_ox"] >= 0).all()
    predictions = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(predictions) == funnel["unique_formulas"]
    # stage 4: every substitution of a surviving formula is materialized, then deduplicated
    formulas = pd.read_parquet(tmp_path / "out" / "formulas.parquet").set_index("formula")
    assert funnel["structures"] == formulas.loc[candidates["formula"], "multiplicity"].sum()
    assert 0 < funnel["unique_structures"] <= funnel["structures"]
    structures = pd.read_parquet(tmp_path / "out" / "structures.parquet")
    representatives = structures[structures["duplicate_of"].isna()]
    assert len(representatives) == funnel["unique_structures"]
    assert representatives["cif"].str.contains("_cell_length_a").all()
    assert set(structures["duplicate_of"].dropna()) <= set(representatives["id"])
    # stage 6: the shipped conductivity ensemble scores every representative
    scored = pd.read_parquet(tmp_path / "out" / "conductivity.parquet")
    assert set(scored["id"]) == set(representatives["id"])
    assert funnel["scored_structures"] == scored["error"].isna().sum() > 0
    assert scored["p_superionic"].dropna().between(0, 1).all() and (scored["log10_sigma_std"].dropna() >= 0).all()
    assert list(scored["p_superionic"].dropna()) == sorted(scored["p_superionic"].dropna(), reverse=True)
    shortlist = pd.read_csv(tmp_path / "out" / "structure_candidates.csv")
    assert len(shortlist) == funnel["superionic_shortlist"] == (scored["p_superionic"] >= 0.5).sum()
    assert list(funnel) == [k for k in FUNNEL_ORDER if k in funnel]


def test_rerun_is_all_cache_hits(tmp_path: Path, models) -> None:
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    store = open_store(tmp_path / "store")
    run_campaign(config, store, tmp_path / "out")

    class Refusing(InProcessBackend):
        def substitute(self, *args):
            raise AssertionError("substitute ran again")

        def predict(self, *args):
            raise AssertionError("predict ran again")

        def screen(self, *args):
            raise AssertionError("screen ran again")

        def conductivity(self, *args):
            raise AssertionError("conductivity ran again")

    run_campaign(config, store, tmp_path / "out2", backend=Refusing())
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_changed_threshold_reruns_only_the_screen(tmp_path: Path, models) -> None:
    store = open_store(tmp_path / "store")
    run_campaign(load_campaign(write_config(tmp_path / "a.yaml", models)), store, tmp_path / "a")
    calls: list[str] = []

    class Counting(InProcessBackend):
        def predict(self, formulas, config):
            calls.append("predict")
            return super().predict(formulas, config)

        def screen(self, predictions, config, progress=None):
            calls.append("screen")
            return super().screen(predictions, config, progress)

    stricter = write_config(tmp_path / "b.yaml", models, screening={"min_band_gap_ev": 100.0})
    funnel = run_campaign(load_campaign(stricter), store, tmp_path / "b", backend=Counting())
    assert calls == ["screen"]
    assert funnel["band_gap"] == 0


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from htvs.campaign import load_campaign, run_campaign
    from htvs.campaign.stages import InProcessBackend
    from htvs.store import open_store

    class DiesInSecondShard(InProcessBackend):
        calls = 0
        def predict(self, formulas, config):
            type(self).calls += 1
            if type(self).calls == 2:
                os.kill(os.getpid(), signal.SIGKILL)   # mid-stage, nothing flushed
            return super().predict(formulas, config)

    config = load_campaign(sys.argv[1])
    run_campaign(config, open_store(sys.argv[2]), sys.argv[3], backend=DiesInSecondShard())
    """
)


def test_sigkill_mid_stage_then_resume_gives_identical_tables(tmp_path: Path, models) -> None:
    config_path = write_config(tmp_path / "c.yaml", models)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(script), str(config_path), str(tmp_path / "store"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(tmp_path / "store")
    assert store.list("stages/predict")  # the first shard finished before the kill
    assert not (tmp_path / "out" / "funnel.json").exists()

    config = load_campaign(config_path)
    run_campaign(config, store, tmp_path / "out")
    run_campaign(config, open_store(tmp_path / "fresh-store"), tmp_path / "fresh")
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_single_steps_for_argo(tmp_path: Path, models) -> None:
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    store = open_store(tmp_path / "store")
    manifest = run_step(store, config, "predict", shard=1)
    assert manifest.stage == "predict" and manifest.row_counts["formulas"] > 0
    with pytest.raises(InvalidInput, match="'dance'"):
        run_step(store, config, "dance")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"screening__min_band_gap_ev": -1}, "min_band_gap_ev"),
        ({"screening__min_phi_ox_v": "high"}, "min_phi_ox_v"),
        ({"screening__min_phi_ox_v": ".nan"}, "min_phi_ox_v"),
        ({"composition__shards": 0}, "composition.shards"),
        ({"composition__e_form_models": "/no/such/models"}, "/no/such/models"),
        ({"prototypes__source": "/no/such/folder"}, "/no/such/folder"),
        ({"substitution__rule": "random"}, "'random'"),
        ({"substitution__element_pool": ["Li", "S", "Qq"]}, "'Qq'"),
        ({"name": "My Campaign"}, "lowercase slug"),
        ({"structures__rescale_volume": "guess"}, "'guess'"),
        ({"structures__stol": 0}, "structures.stol"),
        ({"conductivity__min_p_superionic": 1.5}, "conductivity.min_p_superionic"),
        ({"conductivity__models": "/no/such/cond"}, "/no/such/cond"),
        ({"validation": {"top_k": 1, "temperatures_k": [900]}}, "validation: .*two or more temperatures"),
        ({"validation": {"top_k": 1, "temperatures_k": [600, -5]}}, r"validation\.temperatures_k: .*-5"),
        ({"validation": {"top_k": 1, "backend": "gaussian"}}, "validation: .*'gaussian'"),
        ({"validation__top_k": -1}, "validation.top_k"),
    ],
)
def test_bad_configs_are_refused_before_work(tmp_path: Path, models, overrides: dict, message: str) -> None:
    path = write_config(tmp_path / "c.yaml", models, **overrides)
    if overrides == {"screening__min_phi_ox_v": ".nan"}:
        path.write_text(path.read_text().replace("min_phi_ox_v: .nan", "min_phi_ox_v: .nan"))
    with pytest.raises(InvalidInput, match=message):
        load_campaign(path)
    result = CliRunner().invoke(app, ["campaign", "run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "o").exists()


def test_cli_campaign_run_and_shards(tmp_path: Path, models) -> None:
    path = write_config(tmp_path / "c.yaml", models)
    runner = CliRunner()
    result = runner.invoke(app, ["campaign", "run", str(path), "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prototypes"] == 4
    result = runner.invoke(app, ["campaign", "shards", "--config", str(path)])
    assert json.loads(result.stdout) == [0, 1, 2]
    result = runner.invoke(app, ["campaign", "stage", "screen", "--config", str(path), "--store", str(tmp_path / "o" / "store")])
    assert result.exit_code == 0, result.output
    assert "missing.yaml" in runner.invoke(app, ["campaign", "run", "missing.yaml", "-o", "x"]).output


@pytest.mark.slow
def test_stage_7_validates_the_shortlist_with_chgnet(tmp_path: Path, models) -> None:
    """A demo-length protocol (tens of MD steps): the stage runs end to end and fills the funnel."""
    tiny_md = {"top_k": 1, "temperatures_k": [800, 1200], "heat_ps": 0.01, "equilibrate_ps": 0.01,
               "production_ps": 0.04, "smoothing": "none", "relax_max_steps": 3, "min_supercell_length_angstrom": 0,
               "workdir": str(tmp_path / "md")}
    config = load_campaign(write_config(tmp_path / "c.yaml", models, validation=tiny_md,
                                        conductivity={"min_p_superionic": 0.0}))
    funnel = run_campaign(config, open_store(tmp_path / "store"), tmp_path / "out")
    table = pd.read_parquet(tmp_path / "out" / "validation.parquet")
    assert len(table) == 1 and funnel["validated"] == int(table["trusted"].sum())  # flagged: not validated
    scored = pd.read_parquet(tmp_path / "out" / "conductivity.parquet")
    assert table["id"].iloc[0] == scored["id"].iloc[0]  # the most probable superionic structure
    assert table["origin"].iloc[0] == scored["origin"].iloc[0] == "substitution"  # generation is off
    documents = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert documents[0]["id"] == table["id"].iloc[0]
    if table["error"].isna().all():
        row = table.iloc[0]
        assert np.isfinite([row["e_form"], row["e_above_hull"], row["sigma_300K_mS_cm"]]).all()
        assert funnel["validated_stable"] == int(row["stable"] and row["trusted"])
        assert row["trusted"] == (row["flags"] == "")  # a 2-temperature fit is flagged
    assert list(funnel)[-2:] == ["validated", "validated_stable"]
    assert any((tmp_path / "md").iterdir())  # MD checkpoints went to the configured workdir


def test_the_stage_graph_is_the_one_definition(tmp_path: Path, models) -> None:
    """Every stage runs after what it needs, declares exactly the outputs it writes, and the
    CLI lists the graph in run order."""
    from htvs.campaign.graph import STAGES, _check_graph, output_key
    from htvs.errors import StageFailed

    _check_graph()
    assert FUNNEL_ORDER == (
        "prototypes", "substitutions", "unique_formulas", "predicted", "charge_balanced", "e_form_and_hull", "band_gap",
        "oxidation_window", "generated_formulas", "generated_samples", "generated_accepted", "structures",
        "unique_structures", "relaxed", "relaxed_stable", "scored_structures", "superionic_shortlist",
        "validated", "validated_stable",
    )  # fmt: skip
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    store = open_store(tmp_path / "store")
    results = run_step(store, config, "report")
    for stage in STAGES:
        if not stage.outputs:
            continue
        manifests = results[stage.name] if stage.sharded else (results[stage.name],)
        for manifest in manifests:
            declared = {output_key(manifest, stage.name, output) for output in stage.outputs}
            assert declared == set(manifest.output_keys), stage.name
            assert all(store.exists(key) for key in declared)
    with pytest.raises(StageFailed, match="no output named 'nope'"):
        output_key(results["screen"], "screen", "nope")
    listed = CliRunner().invoke(app, ["campaign", "stages", "--json"])
    assert [row["name"] for row in json.loads(listed.stdout)] == [s.name for s in STAGES]


def test_bad_deployment_setting_is_refused_before_work(tmp_path: Path, models) -> None:
    path = write_config(tmp_path / "c.yaml", models)
    result = CliRunner().invoke(app, ["campaign", "run", str(path), "--out", str(tmp_path / "o")],
                                env={"HTVS_WORKERS": "0"})
    assert result.exit_code == EXIT_BAD_INPUT
    assert "HTVS_WORKERS" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
