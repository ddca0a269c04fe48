"""Li electrochemical windows (htvs.thermo.window), checked against pymatgen's element profile."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

from htvs.errors import InvalidInput, RowError
from htvs.thermo import (
    ReferenceHull,
    WindowResult,
    e_above_hull,
    electrochemical_window,
    electrochemical_windows,
)

_SYMBOL = re.compile(r"[A-Z][a-z]?")
_EVOLUTION_TOL = 1e-6


@pytest.fixture(scope="module")
def mp_hull() -> ReferenceHull:
    """The bundled MP hull, shared by the module (its diagrams are cached inside)."""
    return ReferenceHull.bundled()


@pytest.fixture(scope="module")
def li_systems() -> dict[frozenset[str], list[str]]:
    """Known compounds of every Li-containing ternary and quaternary chemical system in MP."""
    from htvs.datasets import load_mp_formation_energies

    out: dict[frozenset[str], list[str]] = {}
    for formula in load_mp_formation_energies()["formula"]:
        system = frozenset(_SYMBOL.findall(formula))
        if "Li" in system and len(system) in (3, 4):
            out.setdefault(system, []).append(formula)
    return out


@dataclass(frozen=True)
class ProfileWindow:
    phi_red_v: float
    phi_ox_v: float
    reduction_products: frozenset[str]
    oxidation_products: frozenset[str]


def profile_window(diagram: PhaseDiagram, comp: Composition) -> ProfileWindow:
    """The window as read from pymatgen's ``get_element_profile(Li, comp)``.

    The profile lists the critical compositions cc_1, cc_2, ... on the line from Li metal
    (cc_0, not listed) to the Li-free end; step i has ``chempot`` = mu_Li of the segment
    [cc_{i-1}, cc_i] and ``evolution`` = Li released (< 0) or taken up (> 0) by ``comp`` to reach
    cc_i. If comp = cc_k (evolution 0) the window is [-chempot_k, -chempot_{k+1}] with the phases
    of cc_{k-1} (reduction) and cc_{k+1} (oxidation); if comp lies inside segment k it is
    [-chempot_k, -chempot_k] with the phases of cc_{k-1} and cc_k. cc_0 (Li metal) has no
    listed phases.
    """
    profile = diagram.get_element_profile(Element("Li"), comp)
    evolution = [step["evolution"] for step in profile]
    k = next(i for i, amount in enumerate(evolution) if amount <= _EVOLUTION_TOL)
    upper = k + 1 if abs(evolution[k]) <= _EVOLUTION_TOL else k

    def phases(i: int) -> frozenset[str]:
        return frozenset(e.name for e in profile[i]["entries"]) if i >= 0 else frozenset()

    return ProfileWindow(-profile[k]["chempot"], -profile[upper]["chempot"], phases(k - 1), phases(upper))


def assert_matches(result: WindowResult, expected: ProfileWindow, label: str) -> None:
    assert result.phi_red_v == pytest.approx(expected.phi_red_v, abs=1e-6), label
    assert result.phi_ox_v == pytest.approx(expected.phi_ox_v, abs=1e-6), label
    assert set(result.reduction_products) == expected.reduction_products, label
    assert set(result.oxidation_products) == expected.oxidation_products, label


# -- literature values ---------------------------------------------------------------------------


def test_llzo_window_matches_literature(mp_hull):
    # 0.05-2.91 V: Richards et al., Chem. Mater. 28, 266 (2016), Table 1
    # (pymatgen's profile on the bundled MP data). Products are the paper's.
    result = electrochemical_window(mp_hull, "Li7La3Zr2O12")
    assert result.phi_red_v == pytest.approx(0.05, abs=0.05)
    assert result.phi_ox_v == pytest.approx(2.91, abs=0.05)
    assert set(result.reduction_products) == {"Zr3O", "La2O3", "Li2O"}
    assert set(result.oxidation_products) == {"Li2O2", "La2O3", "Li6Zr2O7"}


def test_li3ps4_window_matches_literature(mp_hull):
    # 1.72-2.36 V: Zhu, He & Mo, ACS Appl. Mater. Interfaces 7, 23685 (2015) (1.71-2.31 V);
    # Richards et al. 2016. Reduction to Li2S + P as in both papers.
    result = electrochemical_window(mp_hull, "Li3PS4")
    assert result.phi_red_v == pytest.approx(1.72, abs=0.05)
    assert result.phi_ox_v == pytest.approx(2.36, abs=0.05)
    assert set(result.reduction_products) == {"Li2S", "P"}
    # Oxidation releases Li: every product is poorer in Li than Li3PS4 (3/8 of the atoms).
    assert result.oxidation_products
    assert all(Composition(p).get_atomic_fraction("Li") < 3 / 8 for p in result.oxidation_products)


def test_stable_against_li_metal_has_no_reduction_products(mp_hull):
    result = electrochemical_window(mp_hull, "Li2O")
    assert result.phi_red_v == 0.0
    assert result.reduction_products == ()
    assert result.oxidation_products == ("Li2O2",)


def test_unstable_composition_has_zero_width_window(mp_hull):
    # Li3O lies between Li metal and Li2O: in equilibrium with Li metal only at 0 V.
    result = electrochemical_window(mp_hull, "Li3O")
    assert result.phi_red_v == result.phi_ox_v == 0.0
    assert result.oxidation_products == ("Li2O",)
    # Li2PS3 decomposes inside one Li-P-S facet: a single potential.
    assert electrochemical_window(mp_hull, "Li2PS3").width_v == pytest.approx(0.0, abs=1e-12)


def test_elements_only_chemical_system(mp_hull):
    result = electrochemical_window(mp_hull, "LiNe")
    assert (result.phi_red_v, result.phi_ox_v) == (0.0, 0.0)
    assert result.reduction_products == ()
    assert result.oxidation_products == ("Ne",)


# -- agreement with pymatgen ---------------------------------------------------------------------


def test_agrees_with_pymatgen_profile_on_random_compositions(mp_hull, li_systems):
    """Windows to 1e-6 V and product sets equal pymatgen's on ~300 compositions."""
    rng = random.Random(11)
    chosen = rng.sample(sorted(li_systems, key=lambda s: "-".join(sorted(s))), 60)
    assert {len(s) for s in chosen} == {3, 4}
    formulas: list[str] = []
    for system in chosen:
        formulas += rng.sample(li_systems[system], min(4, len(li_systems[system])))  # on/off hull
        for _ in range(4):  # hypothetical stoichiometries
            formulas.append("".join(f"{el}{rng.randint(1, 8)}" for el in sorted(system)))
    results = electrochemical_windows(mp_hull, formulas)
    assert len(results) >= 300
    widths = 0
    for formula, result in zip(formulas, results, strict=True):
        assert isinstance(result, WindowResult), result
        comp = Composition(formula)
        assert_matches(result, profile_window(mp_hull.phase_diagram(comp), comp), formula)
        assert 0.0 <= result.phi_red_v <= result.phi_ox_v
        widths += result.width_v > 1e-6
    assert widths >= 40  # the sample holds many finite windows, not only decompositions


def test_inserted_compound_agrees_with_pymatgen(mp_hull, li_systems):
    """Below the hull: the window of the compound inserted into the full diagram."""
    rng = random.Random(5)
    chosen = rng.sample(sorted(li_systems, key=lambda s: "-".join(sorted(s))), 12)
    for system in chosen:
        formula = "".join(f"{el}{rng.randint(1, 6)}" for el in sorted(system))
        comp = Composition(formula)
        below = e_above_hull(mp_hull, formula, 0.0)
        energy = below.e_form_ev_per_atom - below.e_above_hull_ev_per_atom - rng.uniform(0.01, 0.2)
        result = electrochemical_window(mp_hull, formula, energy)
        assert result.inserted
        reduced = comp.reduced_composition
        new = PDEntry(reduced, energy * reduced.num_atoms, name=comp.reduced_formula)
        diagram = PhaseDiagram([*mp_hull.entries(system), new])
        assert_matches(result, profile_window(diagram, comp), formula)


def test_energy_on_or_above_hull_uses_reference_window(mp_hull):
    reference = electrochemical_window(mp_hull, "Li3PS4")
    on_hull = e_above_hull(mp_hull, "Li3PS4", 0.0)
    at_hull = on_hull.e_form_ev_per_atom - on_hull.e_above_hull_ev_per_atom
    assert electrochemical_window(mp_hull, "Li3PS4", at_hull) == reference
    assert electrochemical_window(mp_hull, "Li3PS4", at_hull + 0.1) == reference
    wider = electrochemical_window(mp_hull, "Li3PS4", at_hull - 0.1)
    assert wider.inserted and wider.phi_red_v < reference.phi_red_v and wider.phi_ox_v > reference.phi_ox_v


def test_batch_equals_single(mp_hull):
    formulas = ["Li3PS4", "Li7La3Zr2O12", "LiCoO2", "Li2O", "Li10GeP2S12"]
    assert electrochemical_windows(mp_hull, formulas) == [
        electrochemical_window(mp_hull, f) for f in formulas
    ]
    energies = [-1.5, None, -0.5, None, None]
    batch = electrochemical_windows(mp_hull, formulas, energies)
    assert batch == [electrochemical_window(mp_hull, f, e) for f, e in zip(formulas, energies, strict=True)]
    assert batch[0].inserted and not batch[2].inserted


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "energy", "message"),
    [
        ("", None, "empty formula"),
        ("Li3PS4)(", None, "Li3PS4)("),
        ("LiFr", None, "element Fr"),
        ("NaCl", None, "'NaCl' contains no Li"),
        ("Li2", None, "Li metal"),
        ("Li3PS4", float("nan"), "nan"),
        ("Li3PS4", float("-inf"), "-inf"),
        ("Li3PS4", "x", "'x'"),
    ],
)
def test_bad_input_raises_invalid_input_naming_the_value(mp_hull, formula, energy, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        electrochemical_window(mp_hull, formula, energy)


def test_batch_returns_row_errors_and_continues(mp_hull):
    formulas = ["NaCl", "Li3PS4", "LiFr", "", "Li2O", "Li2S"]
    results = electrochemical_windows(mp_hull, formulas, [None, None, None, None, math.inf, None])
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["RowError", "WindowResult", "RowError", "RowError", "RowError", "WindowResult"]
    errors = [r for r in results if isinstance(r, RowError)]
    assert [e.index for e in errors] == [0, 2, 3, 4]
    assert all(e.kind == "InvalidInput" and e.message for e in errors)
    with pytest.raises(InvalidInput, match="2 formulas but 1"):
        electrochemical_windows(mp_hull, ["Li2O", "Li2S"], [None])


def test_fast_insertion_equals_a_new_phase_diagram(mp_hull, li_systems):
    """The beneath-beyond insertion gives the windows of a rebuilt PhaseDiagram (200 compounds,
    random systems, stoichiometries and depths below the hull), and takes the fast path for
    nearly all of them."""
    from htvs.thermo.hull import amounts
    from htvs.thermo.window import _inserted_window, _window_results

    rng = random.Random(11)
    systems = sorted(li_systems, key=lambda s: "-".join(sorted(s)))
    fast = 0
    for _ in range(200):
        system = rng.choice(systems)
        formula = "".join(f"{el}{rng.randint(1, 8)}" for el in sorted(system))
        comp = mp_hull.composition(formula)
        model = mp_hull.facet_model(comp)
        hull_e = e_above_hull(mp_hull, formula, 0.0)
        energy = -hull_e.e_above_hull_ev_per_atom - rng.uniform(0.001, 0.5)
        star = model.star_of_inserted(model.fractions([amounts(comp)])[0], energy, comp.reduced_formula)
        expected = _inserted_window(mp_hull, comp, energy)
        if star is None:
            continue
        fast += 1
        result = _window_results(star, [comp], inserted=True)[0]
        assert result.phi_red_v == pytest.approx(expected.phi_red_v, abs=1e-9), formula
        assert result.phi_ox_v == pytest.approx(expected.phi_ox_v, abs=1e-9), formula
        assert result.reduction_products == expected.reduction_products, formula
        assert result.oxidation_products == expected.oxidation_products, formula
    assert fast >= 190


def test_fast_insertion_on_a_tie_line(mp_hull):
    """Li4P2S7 lies on the Li2S-P2S5 line: cones flat in composition space are dropped."""
    from htvs.thermo.window import _inserted_window

    comp = mp_hull.composition("Li4P2S7")
    reference = e_above_hull(mp_hull, "Li4P2S7", 0.0)
    energy = -reference.e_above_hull_ev_per_atom - 0.05
    result = electrochemical_window(mp_hull, "Li4P2S7", energy)
    expected = _inserted_window(mp_hull, comp, energy)
    assert result.inserted
    assert (result.phi_red_v, result.phi_ox_v) == pytest.approx((expected.phi_red_v, expected.phi_ox_v), abs=1e-9)
    assert set(result.reduction_products) == set(expected.reduction_products)
    assert set(result.oxidation_products) == set(expected.oxidation_products)
