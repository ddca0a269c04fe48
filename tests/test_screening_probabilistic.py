"""Stage 3's probabilistic rule: the structure it relies on (phi_ox non-increasing in E_f), the
exact probabilities against Monte Carlo, the rule switch in every front end (stage function,
campaign config, CLI, gRPC), and the deterministic rule left as it was."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from htvs.errors import InvalidInput
from htvs.screening import (
    E_FORM_STAR_TOL_EV_PER_ATOM,
    PROBABILITY_COLUMNS,
    e_form_at_phi_ox,
    screen_compositions,
    screen_probabilities,
)
from htvs.screening_config import PAPER_THRESHOLDS, CompositionScreenConfig
from htvs.thermo import ReferenceHull, e_above_hull_many, electrochemical_windows

FUNNEL_KEYS = ["formulas", "predicted", "e_form_and_hull", "band_gap", "oxidation_window"]


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


def reference_energy(hull: ReferenceHull, formulas: list[str]) -> np.ndarray:
    """The reference hull's energy at each composition, eV/atom."""
    rows = e_above_hull_many(hull, formulas, [0.0] * len(formulas))
    return np.array([-r.e_above_hull_ev_per_atom for r in rows])


def phi_ox(hull: ReferenceHull, formulas: list[str], e_forms) -> np.ndarray:
    rows = electrochemical_windows(hull, formulas, [float(e) for e in e_forms])
    return np.array([r.phi_ox_v for r in rows])


@pytest.fixture(scope="module")
def sample_formulas() -> list[str]:
    """Known electrolyte chemistries plus 30 Li ternaries/quaternaries of the MP table (seeded)."""
    from pymatgen.core import Composition

    from htvs.datasets import load_mp_formation_energies

    table = load_mp_formation_energies()
    pool = sorted(
        f for f in set(table["formula"])
        if "Li" in {e.symbol for e in Composition(f).elements} and len(Composition(f).elements) in (3, 4)
    )  # fmt: skip
    picked = np.random.default_rng(0).choice(pool, size=30, replace=False).tolist()
    known = ["Li3PS4", "Li6PS5Cl", "Li3InCl6", "LiAlCl4", "Li3BO3", "LiGaS2", "Li3OCl", "Li7P3S11", "Li4GeS4"]
    return known + picked


# --------------------------------------------------------------------------- the structure


def test_phi_ox_is_non_increasing_in_e_form(hull, sample_formulas) -> None:
    """A more stable compound never has a lower oxidation limit: phi_ox(E_f) is non-increasing,
    from 1.2 eV/atom below the reference hull to 0.2 above it (where it is the reference
    equilibrium's window and constant)."""
    ref = reference_energy(hull, sample_formulas)
    offsets = np.linspace(-1.2, 0.2, 57)
    grid = np.stack([phi_ox(hull, sample_formulas, ref + d) for d in offsets])  # (offsets, formulas)
    assert np.isfinite(grid).all()
    steps = np.diff(grid, axis=0)  # phi_ox(E_f + dE) - phi_ox(E_f)
    assert steps.max() <= 1e-9, f"phi_ox rises with E_f for {sample_formulas[int(np.argmax(steps.max(axis=0)))]}"
    reference = np.array([w.phi_ox_v for w in electrochemical_windows(hull, sample_formulas)])
    above = offsets >= 0
    np.testing.assert_allclose(grid[above], np.broadcast_to(reference, grid[above].shape), atol=1e-9)
    assert (grid[0] - grid[-1] > 0.5).mean() > 0.9  # and it does move below the hull


def test_the_root_search_brackets_the_crossing(hull, sample_formulas) -> None:
    """False position and plain bisection find the same E_f*, and it brackets the threshold."""
    ref = reference_energy(hull, sample_formulas)
    low, high = ref - 1.2, ref
    target = 4.0
    phi_low, phi_high = phi_ox(hull, sample_formulas, low), phi_ox(hull, sample_formulas, high)
    rows = np.flatnonzero((phi_low >= target) & (phi_high < target))
    assert rows.size >= 8
    names = [sample_formulas[i] for i in rows]
    fast, errors = e_form_at_phi_ox(
        hull, names, low[rows], high[rows], target, phi_ox_low_v=phi_low[rows], phi_ox_high_v=phi_high[rows]
    )
    plain, _ = e_form_at_phi_ox(hull, names, low[rows], high[rows], target)
    assert errors == {}
    tol = E_FORM_STAR_TOL_EV_PER_ATOM
    np.testing.assert_allclose(fast, plain, atol=tol)
    assert (phi_ox(hull, names, fast - tol) >= target).all()
    assert (phi_ox(hull, names, fast + tol) < target).all()


# --------------------------------------------------------------------------- exact vs sampling

# (formula, E_f offset from the reference hull and std in eV/atom, gap mean and std in eV,
#  thresholds) chosen so that different conditions bind
CASES = [
    ("Li3BO3", -0.10, 0.10, 3.0, 1.0, dict(max_e_form_ev_per_atom=-2.7, max_e_above_hull_ev_per_atom=0.05,
                                             min_band_gap_ev=2.5, min_phi_ox_v=4.0)),
    ("LiGaS2", -0.20, 0.10, 2.0, 0.5, dict(max_e_above_hull_ev_per_atom=0.0, min_band_gap_ev=1.5, min_phi_ox_v=3.8)),
    ("Li3InCl6", 0.02, 0.08, 4.0, 1.0, dict(max_e_above_hull_ev_per_atom=0.05, min_band_gap_ev=3.0, min_phi_ox_v=4.6)),
    ("Li3PS4", -0.50, 0.15, 2.5, 0.3, dict(min_phi_ox_v=4.0)),
    ("LiF", 0.10, 0.10, 8.0, 0.5, dict(max_e_above_hull_ev_per_atom=0.15)),  # reference window > 4 V
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exact_probabilities_agree_with_monte_carlo(hull, case) -> None:
    formula, offset, sigma, gap_mean, gap_std, thresholds = case
    config = CompositionScreenConfig(**thresholds)
    ref = reference_energy(hull, [formula])[0]
    mu = ref + offset
    exact = screen_probabilities(
        hull, [formula], np.array([mu]), np.array([sigma]), np.array([gap_mean]), np.array([gap_std]),
        np.array([ref]), config,
    )  # fmt: skip
    # sampling: every condition evaluated by the stage's own hull and window code
    n = 3000
    rng = np.random.default_rng(7)
    e_form = rng.normal(mu, sigma, n)
    gap = rng.normal(gap_mean, gap_std, n)
    e_hull = np.array([r.e_above_hull_ev_per_atom for r in e_above_hull_many(hull, [formula] * n, e_form.tolist())])
    ox = phi_ox(hull, [formula] * n, e_form)
    conditions = {
        "p_e_form": e_form <= config.max_e_form_ev_per_atom,
        "p_e_hull": e_hull <= config.max_e_above_hull_ev_per_atom,
        "p_band_gap": gap >= config.min_band_gap_ev,
        "p_phi_ox": ox >= config.min_phi_ox_v,
    }
    conditions["p_joint"] = np.logical_and.reduce(list(conditions.values()))
    for name, event in conditions.items():
        p = float(getattr(exact, name)[0])
        assert 0.0 <= p <= 1.0, (name, p)
        allowed = 4 * math.sqrt(max(p * (1 - p), 1e-4) / n) + 2e-3
        assert abs(event.mean() - p) <= allowed, f"{formula} {name}: exact {p:.4f}, sampled {event.mean():.4f}"
    if formula != "LiF":
        assert 0.02 < exact.p_joint[0] < 0.98  # the case tests something
    else:
        assert exact.p_phi_ox[0] == 1.0


def test_a_std_of_zero_gives_the_deterministic_rule(hull, sample_formulas) -> None:
    rng = np.random.default_rng(3)
    ref = reference_energy(hull, sample_formulas)
    table = pd.DataFrame({
        "formula": sample_formulas,
        "e_form_mean": ref + rng.uniform(-0.6, 0.3, len(ref)),
        "e_form_std": 0.0,
        "band_gap_mean": rng.uniform(0.0, 4.0, len(ref)),
        "band_gap_std": 0.0,
        "error": None,
    })  # fmt: skip
    mean = screen_compositions(table, hull, CompositionScreenConfig(min_phi_ox_v=3.5))
    point = screen_compositions(table, hull, CompositionScreenConfig(min_phi_ox_v=3.5, rule="probabilistic"))
    assert mean.funnel == point.funnel and mean.funnel["oxidation_window"] > 0
    for column in ("passed_e_form_and_hull", "passed_band_gap", "passed"):
        assert mean.table[column].tolist() == point.table[column].tolist()
    assert set(point.survivors["p_joint"]) == {1.0}


# --------------------------------------------------------------------------- the rule in the stage


def demo_like_table(hull: ReferenceHull, formulas: list[str], rng_seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    ref = reference_energy(hull, formulas)
    n = len(formulas)
    return pd.DataFrame({
        "formula": formulas + ["LiXx"],
        "e_form_mean": [*(ref + rng.uniform(-0.8, 0.2, n)), math.nan],
        "e_form_std": [*rng.uniform(0.02, 0.15, n), math.nan],
        "band_gap_mean": [*rng.uniform(0.0, 5.0, n), math.nan],
        "band_gap_std": [*rng.uniform(0.05, 0.8, n), math.nan],
        "error": [None] * n + ["formula 'LiXx': no embedding for Xx"],
    })  # fmt: skip


def test_probabilistic_rule_passes_on_the_joint_probability(hull, sample_formulas) -> None:
    table = demo_like_table(hull, sample_formulas)
    config = CompositionScreenConfig(rule="probabilistic", min_probability=0.5)
    result = screen_compositions(table, hull, config)
    assert list(result.funnel) == FUNNEL_KEYS
    t = result.table
    stability = np.minimum(t["p_e_form"], t["p_e_hull"])
    assert t["passed_e_form_and_hull"].tolist() == (stability >= 0.5).tolist()
    assert t["passed_band_gap"].tolist() == ((stability >= 0.5) & (stability * t["p_band_gap"] >= 0.5)).tolist()
    assert t["passed"].tolist() == (t["passed_band_gap"] & (t["p_joint"] >= 0.5)).tolist()
    assert 0 < result.funnel["oxidation_window"] < result.funnel["band_gap"]
    survivors = result.survivors
    assert survivors[list(PROBABILITY_COLUMNS)].notna().all().all()
    assert survivors["phi_ox"].notna().all()  # the windows at the mean ride along
    # p_joint = P(E_f <= min of the three bounds) * P(gap): at most each factor
    computed = t["p_joint"].notna()
    assert computed.sum() > 10 and (t["p_phi_ox"].notna() == computed).all()
    bound = np.minimum(stability, t["p_phi_ox"]) * t["p_band_gap"]
    assert (t["p_joint"] <= bound + 1e-12)[computed].all()
    # the row without a prediction has no probabilities and never passes
    assert t.iloc[-1][list(PROBABILITY_COLUMNS)].isna().all() and not t["passed"].iloc[-1]
    # a higher level keeps a subset
    strict = screen_compositions(table, hull, replace(config, min_probability=0.9))
    assert set(strict.survivors["formula"]) <= set(survivors["formula"])
    assert (strict.survivors["p_joint"] >= 0.9).all()
    assert strict.table["p_joint"].equals(t["p_joint"])  # the level only moves the cut


def test_deterministic_rule_is_unchanged_and_reports_probabilities(hull, sample_formulas) -> None:
    table = demo_like_table(hull, sample_formulas)
    result = screen_compositions(table, hull, PAPER_THRESHOLDS)
    t = result.table
    mean = t["e_form_mean"]
    ef = t["error"].isna() & (mean <= 0.1)
    stability = ef & (t["e_above_hull"] <= 0.2)
    gap = stability & (t["band_gap_mean"] >= 0.5)
    assert t["passed_e_form_and_hull"].tolist() == stability.tolist()
    assert t["passed_band_gap"].tolist() == gap.tolist()
    assert t["passed"].tolist() == (gap & (t["phi_ox"] >= 4.0)).tolist()
    assert t["phi_ox"].notna().tolist() == gap.tolist()  # windows only past the gap filter
    assert list(result.funnel) == FUNNEL_KEYS
    probabilistic = screen_compositions(table, hull, replace(PAPER_THRESHOLDS, rule="probabilistic"))
    # the deterministic rule computes the probabilities of its survivors only (they carry them
    # on; the others would cost root searches for nothing), the same values as the other rule
    survivors = t["passed"]
    assert survivors.sum() > 0
    for name in PROBABILITY_COLUMNS:
        assert t.loc[~survivors, name].isna().all(), name
        assert np.allclose(t.loc[survivors, name], probabilistic.table.loc[survivors, name], rtol=0, atol=1e-12), name
    # P >= 1/2 for one Gaussian condition is the mean passing it
    full = probabilistic.table
    predicted = full["error"].isna()
    assert ((full["p_e_form"] >= 0.5) == (mean <= 0.1))[predicted].all()
    assert ((full["p_band_gap"] >= 0.5) == (full["band_gap_mean"] >= 0.5))[predicted].all()
    assert full["e_above_hull"].notna().tolist() == predicted.tolist()


def test_a_negative_std_is_refused_with_its_row(hull) -> None:
    table = pd.DataFrame({
        "formula": ["LiF", "Li3PS4"], "e_form_mean": [-3.0, -1.2], "e_form_std": [0.1, -0.2],
        "band_gap_mean": [8.0, 2.0], "band_gap_std": [0.1, 0.1], "error": [None, None],
    })  # fmt: skip
    with pytest.raises(InvalidInput, match=r"row 1 \('Li3PS4'\): e_form_std must be finite and >= 0 eV/atom, got -0.2"):
        screen_compositions(table, hull, PAPER_THRESHOLDS)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "bayes"}, "rule must be 'deterministic' or 'probabilistic', got 'bayes'"),
        ({"rule": None}, "rule must be 'deterministic' or 'probabilistic', got None"),
        ({"min_probability": 0.0}, r"min_probability must be > 0, got 0.0 \(allowed: \(0, 1\]\)"),
        ({"min_probability": 1.5}, r"min_probability must be <= 1, got 1.5 \(allowed: \(0, 1\]\)"),
        ({"min_probability": math.nan}, "min_probability must be a finite number, got nan"),
    ],
)
def test_rule_and_probability_are_checked(kwargs, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        CompositionScreenConfig(**kwargs)


def test_defaults_are_the_paper_rule() -> None:
    config = CompositionScreenConfig()
    assert (config.rule, config.min_probability) == ("deterministic", 0.5)
    assert CompositionScreenConfig(rule="probabilistic", min_probability=1).min_probability == 1


def test_campaign_config_screening_section(tmp_path: Path) -> None:
    import yaml

    from htvs.campaign.config import load_campaign, parse_campaign

    config = parse_campaign({"screening": {"rule": "probabilistic", "min_probability": 0.8}})
    assert CompositionScreenConfig(**config.screening.model_dump()).rule == "probabilistic"
    assert parse_campaign({}).screening.rule == "deterministic"
    for screening, named in [
        ({"rule": "fuzzy"}, "screening.rule: rule must be 'deterministic' or 'probabilistic', got 'fuzzy'"),
        ({"min_probability": 0}, "screening.min_probability: min_probability must be > 0"),
        ({"min_probability": 1.01}, "(allowed: (0, 1])"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"name": "x", "screening": screening}))
        with pytest.raises(InvalidInput) as err:
            load_campaign(path)
        assert named in str(err.value)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def predictions_file(hull, sample_formulas, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pred") / "predictions.parquet"
    demo_like_table(hull, sample_formulas).to_parquet(path)
    return path


def test_cli_screen_prints_both_funnels(predictions_file: Path, tmp_path: Path) -> None:
    from htvs.cli import app

    args = ["screen", "--predictions", str(predictions_file), "--out", str(tmp_path / "p"),
            "--rule", "probabilistic", "--min-probability", "0.7"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "deterministic (mean)" in result.output and "probabilistic (P >= 0.7)" in result.output
    funnel = json.loads((tmp_path / "p" / "funnel.json").read_text())
    assert list(funnel) == FUNNEL_KEYS
    table = pd.read_parquet(tmp_path / "p" / "screen.parquet")
    assert set(PROBABILITY_COLUMNS) <= set(table.columns)
    assert (table.loc[table["passed"], "p_joint"] >= 0.7).all()
    line = next(line for line in result.output.splitlines() if "oxidation_window" in line)
    assert f"{funnel['oxidation_window']:,}" in line.split("│")[-2]  # the second column is the rule's
    json_run = CliRunner().invoke(app, [*args[:4], str(tmp_path / "q"), *args[5:], "--json"])
    assert json_run.exit_code == 0 and json.loads(json_run.stdout) == funnel


def test_cli_screen_deterministic_by_default_and_refusals(predictions_file: Path, tmp_path: Path) -> None:
    from htvs.cli import EXIT_BAD_INPUT, app

    runner = CliRunner()
    result = runner.invoke(app, ["screen", "--predictions", str(predictions_file), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "probabilistic" not in result.output
    for extra, named in [
        (["--rule", "maybe"], "rule must be 'deterministic' or 'probabilistic', got 'maybe'"),
        (["--rule", "probabilistic", "--min-probability", "0"], "min_probability must be > 0"),
    ]:
        result = runner.invoke(app, ["screen", "--predictions", str(predictions_file), "--out", str(tmp_path / "e"), *extra])
        assert result.exit_code == EXIT_BAD_INPUT and named in result.output
    result = runner.invoke(app, ["screen", "--out", str(tmp_path / "e")])
    assert result.exit_code == EXIT_BAD_INPUT and "give one of --formulas" in result.output
    (tmp_path / "f.csv").write_text("formula\nLiF\n")
    result = runner.invoke(app, ["screen", "--predictions", str(tmp_path / "f.csv"), "--out", str(tmp_path / "e")])
    assert result.exit_code == EXIT_BAD_INPUT and "is not a predictions table" in result.output


# --------------------------------------------------------------------------- gRPC


@pytest.fixture(scope="module")
def channel(hull):
    from htvs.grpc.composition_service import CompositionServicer
    from htvs.grpc.server import create_server

    server, port = create_server("127.0.0.1:0", CompositionServicer(hull))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    server.stop(None).wait()


def _request(hull, **thresholds):
    from htvs.grpc.gen import composition_pb2 as cpb

    ref = reference_energy(hull, ["LiF", "Li3InCl6"])
    rows = [
        cpb.Prediction(formula="LiF", e_form_mean=ref[0] - 0.05, e_form_std=0.1, band_gap_mean=8.0, band_gap_std=0.5),
        cpb.Prediction(formula="Li3InCl6", e_form_mean=ref[1] - 0.12, e_form_std=0.08, band_gap_mean=4.0,
                       band_gap_std=1.0),
        cpb.Prediction(formula="LiXx", error={"message": "no embedding"}),
    ]  # fmt: skip
    return cpb.ScreenRequest(predictions=rows, thresholds=cpb.ScreenThresholds(**thresholds))


@pytest.mark.grpc
def test_grpc_screen_rule_and_probabilities(hull, channel) -> None:
    from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc

    stub = cpb_grpc.CompositionServiceStub(channel)
    default = stub.Screen(_request(hull, min_phi_ox_v=4.6), timeout=30)
    assert [r.passed for r in default.rows] == [True, True, False]  # both means pass
    for row in default.rows[:2]:
        for name in PROBABILITY_COLUMNS:
            assert row.HasField(name) and 0.0 <= getattr(row, name) <= 1.0, name
    assert not any(default.rows[2].HasField(name) for name in PROBABILITY_COLUMNS)
    li3incl6 = default.rows[1]
    assert 0.5 < li3incl6.p_joint < 0.95  # its phi_ox window is uncertain at 4.6 V
    strict = stub.Screen(_request(hull, min_phi_ox_v=4.6, rule="probabilistic", min_probability=0.95), timeout=30)
    assert [r.passed for r in strict.rows] == [True, False, False]
    assert strict.funnel.oxidation_window == 1 and default.funnel.oxidation_window == 2
    assert strict.rows[1].p_joint == pytest.approx(li3incl6.p_joint, abs=1e-12)


@pytest.mark.grpc
@pytest.mark.parametrize(
    ("thresholds", "named"),
    [
        ({"rule": "sometimes"}, "rule must be 'deterministic' or 'probabilistic', got 'sometimes'"),
        ({"rule": ""}, "got ''"),
        ({"min_probability": 0.0}, "min_probability must be > 0"),
        ({"min_probability": math.nan}, "min_probability must be a finite number, got nan"),
    ],
)
def test_grpc_bad_rule_is_invalid_argument(hull, channel, thresholds, named) -> None:
    from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc

    with pytest.raises(grpc.RpcError) as err:
        cpb_grpc.CompositionServiceStub(channel).Screen(_request(hull, **thresholds), timeout=30)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()
