"""Bundled data loaders and formula parsing."""

from __future__ import annotations

import numpy as np
import pytest

from htvs import datasets
from htvs.errors import DataNotFound, InvalidInput
from htvs.formula import parse_composition, reduced_formula


def test_mp_formation_energies_are_lowest_per_reduced_formula() -> None:
    table = datasets.load_mp_formation_energies()
    assert list(table.columns) == ["formula", "e_form_ev_per_atom"]
    assert table["formula"].is_unique
    # 132,752 matbench entries reduce to ~95k unique formulas (the paper: 126,335 -> 96,357)
    assert 90_000 < len(table) < 100_000
    raw = datasets.load_formula_table("mp_e_form")
    li_o = raw[raw["formula"].str.fullmatch(r"(Li\d*O\d*|O\d*Li\d*)")]
    li2o_rows = li_o[li_o["formula"].map(lambda f: parse_composition(f).reduced_formula) == "Li2O"]
    assert len(li2o_rows) >= 1
    value = table.set_index("formula").loc["Li2O", "e_form_ev_per_atom"]
    assert value == pytest.approx(li2o_rows["target"].min())
    assert -2.2 < value < -1.8  # MP Li2O: about -2.07 eV/atom


def test_bundled_lowest_table_is_the_derivation_of_mp_e_form() -> None:
    """The precomputed table read at start-up equals reducing matbench mp_e_form again."""
    import pandas as pd

    pd.testing.assert_frame_equal(datasets.load_mp_formation_energies(), datasets.derive_mp_formation_energies())
    assert "NaN" in set(datasets.load_mp_formation_energies()["formula"])  # sodium nitride, not a gap


def test_formula_tables_have_documented_columns() -> None:
    for name in [*datasets.MP_TABLES, "expt_gap"]:
        frame = datasets.load_formula_table(name)
        assert list(frame.columns) == ["formula", "target"]
        assert frame["target"].dtype == np.float64
        assert len(frame) > 4000
    with pytest.raises(DataNotFound, match="'nope'"):
        datasets.load_formula_table("nope")


def test_reference_elements() -> None:
    elements = datasets.reference_elements()
    assert len(elements) == 89
    assert {"Li", "S", "O", "La", "Zr"} <= elements


def test_obelix_tables_and_censored_conductivities() -> None:
    every = datasets.load_obelix("all")
    train, test = datasets.load_obelix("train"), datasets.load_obelix("test")
    assert (len(every), len(train), len(test)) == (599, 478, 121)
    censored = every[every["sigma_censored"]]
    assert len(censored) > 0
    assert censored["Ionic conductivity (S cm-1)"].str.startswith("<").all()
    assert np.isfinite(every["log10_sigma"]).all()
    # SOURCES.md: 44 % of the test entries have sigma >= 1e-4 S/cm
    assert (test["sigma_s_cm"] >= 1e-4).mean() == pytest.approx(0.44, abs=0.01)
    with pytest.raises(DataNotFound, match="'valid'"):
        datasets.load_obelix("valid")


def test_obelix_cifs() -> None:
    cifs = datasets.load_obelix_cifs()
    assert len(cifs) == 321
    assert len({c.id for c in cifs}) == 321
    assert all("_cell_length_a" in c.text for c in cifs)


def test_missing_bundled_file_is_named() -> None:
    with pytest.raises(DataNotFound, match="nothing.csv.gz"):
        datasets.data_path("mp/nothing.csv.gz")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty formula"),
        ("   ", "empty formula"),
        ("Li(", "cannot read formula 'Li\\(': a bracket is opened and not closed"),
        ("Li-1O", "cannot read formula 'Li-1O': unexpected character '-' at position 3"),
        ("XxO", "cannot read formula 'XxO': 'Xx' is not an element symbol"),
        ("Li1e9O", "limit 10000"),
    ],
)
def test_bad_formulas_name_the_value(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_composition(text)


def test_vectorized_reduction_agrees_with_pymatgen() -> None:
    raw = datasets.load_formula_table("mp_e_form").sample(3000, random_state=1)
    fast = datasets._reduce_formulas(raw["formula"])
    slow = raw["formula"].map(lambda f: parse_composition(f).reduced_formula)
    assert (fast == slow).all()


def test_reduced_formula() -> None:
    assert reduced_formula("Li12P4S16") == "Li3PS4"
    assert reduced_formula(" Li7La3Zr2O12 ") == "Li7La3Zr2O12"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Lli3PS4", "'Lli' is not an element symbol (did you mean 'Li'?)"),
        ("Li3PS5x", "unexpected lowercase 'x' at position 7"),
        ("li3ps4", "element symbols start with a capital letter; did you mean 'Li3PS4'?"),
        ("li10gep2s12", "did you mean 'Li10GeP2S12'?"),
        ("Li2O)", "unmatched ')' at position 5"),
        ("Li3PS4!", "unexpected character '!' at position 7"),
    ],
)
def test_unreadable_formulas_are_explained_in_the_writers_terms(text, message):
    with pytest.raises(InvalidInput) as caught:
        parse_composition(text)
    assert message in str(caught.value)
    assert "invalid formula!" not in str(caught.value) and "0+" not in str(caught.value)
