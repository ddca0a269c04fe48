"""Charge balance from known oxidation states: the check, the screening filter, the configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from htvs.charge_balance import OxidationStates, charge_balanced, integer_amounts
from htvs.errors import InvalidInput
from htvs.screening import screen_compositions
from htvs.screening_config import PAPER_THRESHOLDS, CompositionScreenConfig
from htvs.thermo import ReferenceHull

ROOT = Path(__file__).resolve().parents[1]
ELECTROLYTES = ("Li3PS4", "Li10GeP2S12", "Li7La3Zr2O12", "Li6PS5Cl", "Li3InCl6")


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


def test_known_electrolytes_pass_and_the_demo_top_candidate_fails() -> None:
    balanced, errors = charge_balanced([*ELECTROLYTES, "Na4LiSF12", "LiCd2(SO4)3", "Li2S12ICl4"])
    assert errors == {}
    assert balanced.tolist() == [True] * len(ELECTROLYTES) + [False, False, False]


def test_pymatgen_agrees_on_the_known_electrolytes() -> None:
    """The library not chosen (pymatgen's oxi_state_guesses, slow) gives the same verdicts here."""
    from pymatgen.core import Composition

    for formula in ("Li3PS4", "Li3InCl6", "Li6PS5Cl", "Na4LiSF12"):
        assert bool(Composition(formula).oxi_state_guesses()) == bool(charge_balanced([formula])[0][0]), formula


def test_integer_amounts_of_fractional_and_bracketed_formulas() -> None:
    elements, amounts = integer_amounts("Li7La3(ZrO4)2")
    assert elements == ("La", "Li", "O", "Zr") and amounts.tolist() == [3, 7, 8, 2]
    elements, amounts = integer_amounts("Li0.5Co0.5O")
    assert amounts.tolist() == [1, 1, 2]  # Co, Li, O
    with pytest.raises(InvalidInput, match="no ratio of integers"):
        integer_amounts("LiCo0.12345678O2")


def test_bad_formulas_are_row_errors_and_the_rest_is_checked() -> None:
    balanced, errors = charge_balanced(["Li3PS4", "Xx2", "", "LiCl"])
    assert balanced.tolist() == [True, False, False, True]
    assert set(errors) == {1, 2} and "'Xx'" in errors[1] and "empty formula" in errors[2]


def test_an_element_without_known_states_never_balances() -> None:
    states = OxidationStates({"Li": [1], "S": [-2]})
    assert states.balances(("Li", "S"), np.array([[2, 1], [1, 1]])).tolist() == [True, False]
    assert states.balances(("Li", "Xe"), np.array([[1, 1]])).tolist() == [False]


def test_tables_are_cached_per_element_set_and_huge_sets_fall_back(monkeypatch) -> None:
    import htvs.charge_balance as cb

    states = OxidationStates({"Li": [1], "S": [-2, 2, 4, 6], "P": [3, 5], "Cl": [-1, 1]})
    key = ("Cl", "Li", "P", "S")
    first = states.charge_table(key)
    assert first.shape == (16, 4) and states.charge_table(key) is first
    amounts = np.array([[1, 6, 1, 5], [1, 7, 1, 5]])  # Li6PS5Cl balances, Li7PS5Cl does not
    expected = states.balances(key, amounts)
    assert expected.tolist() == [True, False]
    monkeypatch.setattr(cb, "MAX_CHARGE_COMBINATIONS", 4)
    fresh = OxidationStates(states.states)
    assert fresh.charge_table(key) is None
    assert fresh.balances(key, amounts).tolist() == expected.tolist()


def test_demo_scale_is_fast() -> None:
    """25,000 formulas of a few hundred element sets: well under a few seconds."""
    import time

    rng = np.random.default_rng(0)
    pool = ["Na", "K", "Mg", "Ca", "Zn", "Al", "Ga", "In", "Si", "Ge", "Sn", "P", "As", "Cl", "Br", "I", "O", "F"]
    formulas = [f"Li{rng.integers(1, 9)}{rng.choice(pool)}{rng.integers(1, 4)}S{rng.integers(1, 13)}" for _ in range(25_000)]
    charge_balanced(["Li3PS4"])  # the SMACT data, read once
    start = time.perf_counter()
    balanced, errors = charge_balanced(formulas)
    assert time.perf_counter() - start < 10.0 and not errors and 0 < balanced.sum() < len(formulas)


def predictions(formulas: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"formula": formulas, "e_form_mean": -1.5, "e_form_std": 0.02, "band_gap_mean": 4.0,
                         "band_gap_std": 0.1, "error": None})


def test_the_screen_filter_is_its_own_funnel_step(hull: ReferenceHull) -> None:
    table = predictions(["LiF", "Li2F3", "Li3PS4", "Xx2"])
    loose = {"min_phi_ox_v": -20.0, "max_e_above_hull_ev_per_atom": 20.0}
    off = screen_compositions(table, hull, CompositionScreenConfig(**loose))
    on = screen_compositions(table, hull, CompositionScreenConfig(**loose, charge_balance=True))
    assert off.table["charge_balanced"].tolist() == on.table["charge_balanced"].tolist() == [True, False, True, False]
    assert "charge_balanced" not in off.funnel and "passed_charge_balance" not in off.table
    assert list(on.funnel) == ["formulas", "predicted", "charge_balanced", "e_form_and_hull", "band_gap",
                               "oxidation_window"]
    assert on.funnel["charge_balanced"] == 2
    assert on.table["passed_charge_balance"].tolist() == [True, False, True, False]
    assert not on.table["passed"].iloc[1] and on.funnel["oxidation_window"] <= 2
    assert "'Xx'" in on.table["screen_error"].iloc[3]


def test_configs_paper_off_demo_and_default_on() -> None:
    from htvs.campaign.config import CampaignConfig, load_campaign

    assert PAPER_THRESHOLDS.charge_balance is False
    assert CampaignConfig().screening.charge_balance is True
    assert load_campaign(ROOT / "configs" / "demo.yaml").screening.charge_balance is True
    assert load_campaign(ROOT / "configs" / "paper.yaml").screening.charge_balance is False
    with pytest.raises(InvalidInput, match="charge_balance must be true or false"):
        CompositionScreenConfig(charge_balance="yes")  # type: ignore[arg-type]


def test_bundled_states_are_smacts_icsd24_list_at_the_default_filter() -> None:
    """The bundled list equals SMACT's filter output (SMACT comes with the test extra only)."""
    pytest.importorskip("smact")
    from htvs.charge_balance import ICSD24_COMMONALITY, ICSD24_CONSENSUS, _bundled_states, _smact_states

    assert _bundled_states() == _smact_states(ICSD24_CONSENSUS, ICSD24_COMMONALITY)
    assert _bundled_states()["S"] == (-2, 6)
