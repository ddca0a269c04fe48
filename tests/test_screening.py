"""Stage 3: composition screening thresholds, funnel counts and bad rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from htvs.errors import InvalidInput
from htvs.screening import CompositionScreenConfig, screen_compositions
from htvs.thermo import ReferenceHull, electrochemical_window


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


def predictions(rows: list[tuple[str, float, float]], errors: dict[int, str] | None = None) -> pd.DataFrame:
    errors = errors or {}
    return pd.DataFrame(
        {
            "formula": [r[0] for r in rows],
            "e_form_mean": [r[1] for r in rows],
            "e_form_std": 0.02,
            "band_gap_mean": [r[2] for r in rows],
            "band_gap_std": 0.1,
            "error": [errors.get(i) for i in range(len(rows))],
        }
    )


def test_each_filter_removes_what_it_should(hull: ReferenceHull) -> None:
    from htvs.datasets import load_mp_formation_energies

    energies = load_mp_formation_energies().set_index("formula")["e_form_ev_per_atom"]
    mp = {f: float(energies[f]) for f in ("LiF", "Li3PS4")}  # eV/atom
    table = predictions(
        [
            ("LiF", mp["LiF"] - 0.05, 8.0),  # below hull, wide window: survives
            ("Li3PS4", 0.3, 2.0),  # E_f above 0.1 eV/atom: out at the first filter
            ("Li3PS4", mp["Li3PS4"] + 0.5, 2.0),  # E_hull ~0.5 > 0.2: out at the first filter
            ("LiF", mp["LiF"] - 0.05, 0.2),  # gap below 0.5 eV: out at the gap filter
            ("Li3PS4", mp["Li3PS4"], 2.0),  # phi_ox ~2.4 V < 4 V: out at the window filter
        ]
    )
    result = screen_compositions(table, hull, CompositionScreenConfig())
    assert result.funnel == {
        "formulas": 5,
        "predicted": 5,
        "e_form_and_hull": 3,
        "band_gap": 2,
        "oxidation_window": 1,
    }
    survivors = result.survivors
    assert list(survivors["formula"]) == ["LiF"]
    assert survivors["phi_ox"].iloc[0] >= 4.0
    # windows are only computed past the gap filter
    assert np.isnan(result.table["phi_ox"].iloc[1])
    li3ps4 = electrochemical_window(hull, "Li3PS4")
    assert result.table["phi_ox"].iloc[4] == pytest.approx(li3ps4.phi_ox_v, abs=1e-6)


def test_thresholds_are_configuration(hull: ReferenceHull) -> None:
    table = predictions([("Li3PS4", -1.27, 2.0)])
    loose = CompositionScreenConfig(min_phi_ox_v=2.0)
    assert screen_compositions(table, hull, loose).funnel["oxidation_window"] == 1
    strict = CompositionScreenConfig(min_band_gap_ev=3.0, min_phi_ox_v=2.0)
    assert screen_compositions(table, hull, strict).funnel["band_gap"] == 0


def test_bad_rows_are_kept_and_never_pass(hull: ReferenceHull) -> None:
    table = predictions(
        [("LiF", -3.3, 8.0), ("LiXx", np.nan, np.nan), ("LiFr", -1.0, 3.0)],
        errors={1: "formula 'LiXx': no matscholar200 embedding for Xx"},
    )
    result = screen_compositions(table, hull, CompositionScreenConfig())
    assert result.funnel["predicted"] == 2
    assert list(result.table["passed"]) == [True, False, False]
    assert "Fr" in result.table["screen_error"].iloc[2]


@pytest.mark.parametrize(
    "kwargs", [{"min_band_gap_ev": -1.0}, {"max_e_form_ev_per_atom": float("nan")}, {"min_phi_ox_v": "4"}]
)
def test_bad_thresholds_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidInput, match=next(iter(kwargs))):
        CompositionScreenConfig(**kwargs)


def test_missing_columns_are_named(hull: ReferenceHull) -> None:
    with pytest.raises(InvalidInput, match="band_gap_mean"):
        screen_compositions(pd.DataFrame({"formula": ["LiF"]}), hull, CompositionScreenConfig())
