"""Reference hull and energies above it (htvs.thermo.hull), checked against pymatgen."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys

import pandas as pd
import pytest
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition

from htvs.errors import InvalidInput
from htvs.errors import RowError
from htvs.thermo import HullResult, ReferenceHull, e_above_hull, e_above_hull_many

_SYMBOL = re.compile(r"[A-Z][a-z]?")


@pytest.fixture(scope="module")
def mp_hull() -> ReferenceHull:
    """The bundled MP hull, shared by the module (its diagrams are cached inside)."""
    return ReferenceHull.bundled()


@pytest.fixture(scope="module")
def mp_energies() -> dict[str, float]:
    """Bundled MP formation energies, eV/atom, by reduced formula."""
    from htvs.datasets import load_mp_formation_energies

    table = load_mp_formation_energies()
    return dict(zip(table["formula"], table["e_form_ev_per_atom"], strict=True))


@pytest.fixture
def li_p_s_table() -> pd.DataFrame:
    """A tiny hand-made table (no element rows, a duplicate formula)."""
    return pd.DataFrame(
        {
            "formula": ["Li2S", "Li3PS4", "P2S5", "Li6P2S8", "Li3P"],
            "e_form_ev_per_atom": [-1.50, -1.20, -0.30, -1.10, -0.70],
        }
    )


def _systems(energies: dict[str, float], sizes: tuple[int, ...]) -> dict[frozenset[str], list[str]]:
    out: dict[frozenset[str], list[str]] = {}
    for formula in energies:
        system = frozenset(_SYMBOL.findall(formula))
        if len(system) in sizes:
            out.setdefault(system, []).append(formula)
    return out


# -- ground states and simple values -------------------------------------------------------------


def test_li2o_ground_state_is_on_hull(mp_hull, mp_energies):
    result = e_above_hull(mp_hull, "Li2O", mp_energies["Li2O"])
    assert result.formula == "Li2O"
    assert result.e_above_hull_ev_per_atom == pytest.approx(0.0, abs=1e-9)
    assert result.decomposition == (("Li2O", pytest.approx(1.0)),)


def test_li3ps4_at_its_reference_energy_is_on_hull(mp_hull, mp_energies):
    result = e_above_hull(mp_hull, "Li6P2S8", mp_energies["Li3PS4"])
    assert result.formula == "Li3PS4"
    assert result.e_above_hull_ev_per_atom == pytest.approx(0.0, abs=1e-9)


def test_below_hull_is_negative_and_above_is_positive(mp_hull, mp_energies):
    e_ref = mp_energies["Li3PS4"]
    assert e_above_hull(mp_hull, "Li3PS4", e_ref - 0.1).e_above_hull_ev_per_atom == pytest.approx(-0.1)
    assert e_above_hull(mp_hull, "Li3PS4", e_ref + 0.05).e_above_hull_ev_per_atom == pytest.approx(0.05)


def test_decomposition_sorted_and_sums_to_one(mp_hull):
    result = e_above_hull(mp_hull, "Li2PS3", -1.0)
    fractions = [f for _, f in result.decomposition]
    assert fractions == sorted(fractions, reverse=True)
    assert sum(fractions) == pytest.approx(1.0)
    assert len(result.decomposition) >= 2


def test_elements_only_chemical_system(mp_hull):
    # Ne has an MP reference entry but no compounds: the Li-Ne "hull" is the tie line at 0 eV.
    result = e_above_hull(mp_hull, "LiNe", 0.25)
    assert result.e_above_hull_ev_per_atom == pytest.approx(0.25)
    assert dict(result.decomposition) == {"Li": pytest.approx(0.5), "Ne": pytest.approx(0.5)}
    assert e_above_hull(mp_hull, "Li", 0.0).e_above_hull_ev_per_atom == pytest.approx(0.0)


# -- agreement with pymatgen ---------------------------------------------------------------------


def test_agrees_with_pymatgen_on_random_formulas(mp_hull, mp_energies):
    """Batch results equal PhaseDiagram.get_decomp_and_e_above_hull(allow_negative=True)."""
    rng = random.Random(7)
    systems = _systems(mp_energies, (2, 3, 4, 5))
    chosen = rng.sample(sorted(systems, key=lambda s: "-".join(sorted(s))), 70)
    formulas: list[str] = []
    energies: list[float] = []
    for system in chosen:
        for formula in rng.sample(systems[system], min(2, len(systems[system]))):
            formulas.append(formula)  # known compounds, on and off the hull, and perturbed
            energies.append(mp_energies[formula] + rng.choice([0.0, rng.gauss(0.0, 0.1)]))
        for _ in range(3):  # hypothetical stoichiometries
            formulas.append("".join(f"{el}{rng.randint(1, 6)}" for el in sorted(system)))
            energies.append(rng.uniform(-3.0, 0.5))
    results = e_above_hull_many(mp_hull, formulas, energies)
    assert len(results) == len(formulas) >= 300
    for formula, energy, result in zip(formulas, energies, results, strict=True):
        assert isinstance(result, HullResult), result
        comp = Composition(formula)
        diagram = mp_hull.phase_diagram(comp)
        decomp, e_hull = diagram.get_decomp_and_e_above_hull(
            PDEntry(comp, energy * comp.num_atoms), allow_negative=True, check_stable=False
        )
        assert result.e_above_hull_ev_per_atom == pytest.approx(e_hull, abs=1e-6), formula
        expected = {entry.name: amount for entry, amount in decomp.items()}
        assert dict(result.decomposition) == pytest.approx(expected, abs=1e-6), formula


def test_batch_equals_single(mp_hull):
    formulas = ["Li3PS4", "LiCoO2", "Li2S", "Li7La3Zr2O12"]
    energies = [-1.2, -1.5, -1.4, -2.9]
    batch = e_above_hull_many(mp_hull, formulas, energies)
    assert batch == [e_above_hull(mp_hull, f, e) for f, e in zip(formulas, energies, strict=True)]


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "energy", "message"),
    [
        ("", -1.0, "empty formula"),
        ("Li3PS4)(", -1.0, "Li3PS4)("),
        ("Xx2O", -1.0, "Xx2O"),
        ("LiFr", -1.0, "element Fr"),
        ("Li3PS4", float("nan"), "nan"),
        ("Li3PS4", float("inf"), "inf"),
        ("Li3PS4", None, "None"),
        ("Li3PS4", "low", "low"),
    ],
)
def test_bad_input_raises_invalid_input_naming_the_value(mp_hull, formula, energy, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        e_above_hull(mp_hull, formula, energy)


def test_missing_element_message(mp_hull):
    with pytest.raises(InvalidInput, match=r"element Fr .* not in the reference data \(89 MP elements\)"):
        e_above_hull(mp_hull, "LiFr", -1.0)


def test_batch_returns_row_errors_and_continues(mp_hull):
    formulas = ["Li2O", "", "LiFr", "Li3PS4", "Li3PS4"]
    results = e_above_hull_many(mp_hull, formulas, [-2.0, -1.0, -1.0, math.nan, -1.2])
    assert isinstance(results[0], HullResult)
    assert isinstance(results[3], RowError) and results[3].index == 3 and "nan" in results[3].message
    assert [type(r).__name__ for r in results] == [
        "HullResult",
        "RowError",
        "RowError",
        "RowError",
        "HullResult",
    ]
    assert results[1].kind == "InvalidInput" and results[2].value == "LiFr"


def test_batch_length_mismatch(mp_hull):
    with pytest.raises(InvalidInput, match="2 formulas but 1"):
        e_above_hull_many(mp_hull, ["Li2O", "LiF"], [-1.0])


def test_empty_batch(mp_hull):
    assert e_above_hull_many(mp_hull, [], []) == []


# -- the hull object -----------------------------------------------------------------------------


def test_chemsys_normalization_and_cache(mp_hull):
    assert mp_hull.chemsys("Li-P-S") == mp_hull.chemsys(["S", "P", "Li"]) == frozenset({"Li", "P", "S"})
    assert mp_hull.phase_diagram("Li-P-S") is mp_hull.phase_diagram(["P", "S", "Li"])
    with pytest.raises(InvalidInput, match="Fr"):
        mp_hull.phase_diagram("Li-Fr")
    with pytest.raises(InvalidInput, match="empty chemical system"):
        mp_hull.chemsys("")


def test_entries_are_union_over_subsets(mp_hull, mp_energies):
    names = {entry.name for entry in mp_hull.entries("Li-O")}
    expected = {f for f in mp_energies if set(_SYMBOL.findall(f)) <= {"Li", "O"}}
    assert names == expected
    energies = {entry.name: entry.energy_per_atom for entry in mp_hull.entries("Li-O")}
    assert energies["Li"] == energies["O2"] == 0.0


def test_lru_is_bounded():
    hull = ReferenceHull.from_table(
        pd.DataFrame({"formula": ["LiF", "NaCl", "KBr"], "e_form_ev_per_atom": [-3.0, -2.0, -1.9]}),
        cache_size=2,
    )
    for system in ("Li-F", "Na-Cl", "K-Br"):
        hull.phase_diagram(system)
    assert hull.cache_info()["diagrams"] == 2
    hull.clear_cache()
    assert hull.cache_info()["diagrams"] == 0


def test_from_table_adds_elements_and_keeps_lowest_duplicate(li_p_s_table):
    hull = ReferenceHull.from_table(li_p_s_table)
    assert hull.elements == frozenset({"Li", "P", "S"})
    energies = {e.name: e.energy_per_atom for e in hull.entries("Li-P-S")}
    assert energies["Li3PS4"] == pytest.approx(-1.20)  # Li6P2S8 (-1.10) is the same composition
    assert energies["Li"] == energies["P"] == energies["S"] == 0.0
    assert e_above_hull(hull, "Li3PS4", -1.20).e_above_hull_ev_per_atom <= 1e-12


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"formula": ["LiF"]}), "e_form_ev_per_atom"),
        (pd.DataFrame({"formula": ["Li)F"], "e_form_ev_per_atom": [-1.0]}), "Li)F"),
        (pd.DataFrame({"formula": ["LiF"], "e_form_ev_per_atom": [float("nan")]}), "LiF"),
        (pd.DataFrame({"formula": ["O2"], "e_form_ev_per_atom": [-0.5]}), "O2"),
    ],
)
def test_from_table_rejects_bad_tables(table, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        ReferenceHull.from_table(table)


def test_import_loads_no_data():
    code = (
        "import sys, htvs.thermo\n"
        "from htvs.datasets import load_mp_formation_energies\n"
        "assert load_mp_formation_energies.cache_info().currsize == 0\n"
        "assert 'pymatgen.analysis.phase_diagram' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_bundled_fast_index_equals_validated_index():
    """The bundled hull scans formulas for symbols; pymatgen parsing gives the same index."""
    from htvs.datasets import load_mp_formation_energies

    fast = ReferenceHull.bundled()
    slow = ReferenceHull.from_table(load_mp_formation_energies(), validate=True)
    assert fast._rows == slow._rows  # noqa: SLF001


# -- the facet model built without a PhaseDiagram -------------------------------------------------


def test_facet_model_from_phases_matches_pymatgen_phase_diagram(mp_hull: ReferenceHull) -> None:
    """Hull energies and decompositions of the direct construction equal those of the model built
    from pymatgen's PhaseDiagram, at random compositions of real chemical systems."""
    import numpy as np

    from htvs.thermo.facets import FacetModel

    rng = np.random.default_rng(0)
    for spec in ["Li-P-S", "Li-La-Zr-O", "Li-Ge-P-S", "Li-In-Cl", "Na-Li-S-F", "Li-O", "Li"]:
        direct = mp_hull.facet_model(spec)
        via_pymatgen = FacetModel.from_phase_diagram(mp_hull.phase_diagram(spec))
        assert sorted(direct.elements) == sorted(via_pymatgen.elements)
        assert direct.n_facets == via_pymatgen.n_facets
        draws = rng.dirichlet(np.ones(len(direct.elements)), size=200)
        amounts = [dict(zip(direct.elements, row, strict=True)) for row in draws]
        e_direct = direct.hull_energy(direct.fractions(amounts))[0]
        e_pymatgen = via_pymatgen.hull_energy(via_pymatgen.fractions(amounts))[0]
        np.testing.assert_allclose(e_direct, e_pymatgen, atol=1e-9)


def test_window_command_does_not_import_pymatgen_phase_diagram() -> None:
    """Importing pymatgen.analysis.phase_diagram costs ~1 s of start-up (pyplot, plotly, scipy
    interpolate); a single-formula window must not need it."""
    code = (
        "import sys\n"
        "from htvs.thermo import ReferenceHull\n"
        "from htvs.thermo.window import electrochemical_windows\n"
        "electrochemical_windows(ReferenceHull.bundled(), ['Li3PS4'])\n"
        "print('pymatgen.analysis.phase_diagram' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
