"""Stage 1: substitution counts, formulas (checked against pymatgen), tables and bad input."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from pymatgen.core import Composition

from htvs.errors import InvalidInput
from htvs.substitution import (
    PAPER_ELEMENT_POOL,
    SitePattern,
    SubstitutionConfig,
    SubstitutionRule,
    assignment_table,
    count_assignments,
    enumerate_substitutions,
    write_substitution_tables,
)
from htvs.substitution.formula_strings import reduced_formula_strings

PAPER = SubstitutionConfig()

LI3PS4 = SitePattern("Li3PS4", {"Li": 12, "P": 4, "S": 16})
LIFEPO4 = SitePattern("LiFePO4", {"Li": 4, "Fe": 4, "P": 4, "O": 16})
# two substituted species with equal amounts: swapping them gives the same formula
LI2ZNSE_O = SitePattern("Li2ZnSeO", {"Li": 2, "Zn": 1, "Se": 1, "O": 1})


def naive_formulas(patterns: list[SitePattern], config: SubstitutionConfig) -> Counter[str]:
    """The straightforward reference: one pymatgen Composition per substitution."""
    counts: Counter[str] = Counter()
    for pattern in patterns:
        others = [s for s in pattern.species_amounts if s != config.kept_element]
        for row in assignment_table(config, len(others)).tolist():
            amounts = {config.kept_element: pattern.species_amounts[config.kept_element]}
            amounts.update(
                {config.element_pool[e]: pattern.species_amounts[s] for s, e in zip(others, row)}
            )
            counts[Composition(amounts).reduced_formula] += 1
    return counts


def test_paper_pool_has_28_elements_with_li_and_s() -> None:
    assert len(PAPER_ELEMENT_POOL) == 28
    assert {"Li", "S"} <= set(PAPER_ELEMENT_POOL)
    assert len(PAPER.free_elements) == 26


@pytest.mark.parametrize(("n_species", "expected"), [(2, 52), (3, 1950)])
def test_paper_rule_counts(n_species: int, expected: int) -> None:
    """The paper's rule: ternary Li_xA_yB_z -> 26 x 2 = 52; quaternary -> 3 x 26 x 25 = 1,950."""
    assert count_assignments(PAPER, n_species) == expected
    table = assignment_table(PAPER, n_species)
    assert table.shape == (expected, n_species)
    s_index = PAPER_ELEMENT_POOL.index("S")
    li_index = PAPER_ELEMENT_POOL.index("Li")
    assert np.all((table == s_index).sum(axis=1) == 1)  # exactly one species becomes S
    assert not np.any(table == li_index)
    assert all(len(set(row)) == n_species for row in table.tolist())  # distinct elements
    assert len({tuple(row) for row in table.tolist()}) == expected


def test_all_distinct_rule_counts() -> None:
    config = SubstitutionConfig(rule=SubstitutionRule.ALL_DISTINCT, required_element=None)
    assert count_assignments(config, 2) == 27 * 26
    assert assignment_table(config, 3).shape == (27 * 26 * 25, 3)


def test_custom_pool_and_required_element() -> None:
    config = SubstitutionConfig(element_pool=("Li", "O", "S", "Se", "Cl"), required_element="O")
    # free elements: S, Se, Cl -> ternary 2 x 3
    assert count_assignments(config, 2) == 6
    result = enumerate_substitutions([LI3PS4], config)
    assert result.n_substitutions == 6
    assert all("O" in f for f in result.formulas)


def test_enumeration_matches_naive_pymatgen_loop() -> None:
    patterns = [LI3PS4, LIFEPO4, LI2ZNSE_O]
    result = enumerate_substitutions(patterns, PAPER)
    assert result.n_substitutions == 52 + 1950 + 1950
    expected = naive_formulas(patterns, PAPER)
    got = dict(zip(result.formulas, result.multiplicity.tolist()))
    assert got == dict(expected)
    assert int(result.multiplicity.sum()) == result.n_substitutions
    # the equal-amount prototype collapses pairs of substitutions onto one formula
    assert result.n_unique < result.n_substitutions


def test_rows_map_back_to_their_formula() -> None:
    result = enumerate_substitutions([LI3PS4, LIFEPO4], PAPER)
    for i in [0, 51, 52, 1000, result.n_substitutions - 1]:
        proto = result.prototype_index[i]
        pattern = [LI3PS4, LIFEPO4][proto]
        amounts = {"Li": pattern.species_amounts["Li"]}
        for j, species in enumerate(result.prototype_species[proto]):
            amounts[PAPER_ELEMENT_POOL[result.slot_elements[i, j]]] = pattern.species_amounts[species]
        assert Composition(amounts).reduced_formula == result.formulas[result.formula_index[i]]


def test_chemsys_and_atom_counts() -> None:
    result = enumerate_substitutions([LI3PS4], PAPER)
    for formula, chemsys, atoms in zip(result.formulas, result.chemsys, result.num_atoms.tolist()):
        comp = Composition(formula)
        assert chemsys == comp.chemical_system
        assert atoms == comp.num_atoms


def test_formula_strings_equal_pymatgen_including_polyanions() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    index = np.stack([rng.permutation(len(PAPER_ELEMENT_POOL))[:4] for _ in range(n)])
    amount = rng.integers(1, 13, size=(n, 4))
    amount[: n // 3, 0] = 0  # some ternaries
    # force polyanion cases: S and O with a common factor
    index[:50] = [PAPER_ELEMENT_POOL.index(s) for s in ("Li", "Na", "S", "O")]
    amount[:50, 2:] = [3, 6]
    got = reduced_formula_strings(index, amount, PAPER_ELEMENT_POOL)
    for row in range(n):
        expected = Composition(
            {PAPER_ELEMENT_POOL[e]: int(a) for e, a in zip(index[row], amount[row]) if a}
        ).reduced_formula
        assert got[row] == expected
    assert any("(" in f for f in got)


def test_bundled_prototypes_counts_and_formulas(bundled_prototypes) -> None:
    from htvs.substitution import substitute

    protos = bundled_prototypes.prototypes
    n_ternary = sum(p.n_elements == 3 for p in protos)
    n_quaternary = sum(p.n_elements == 4 for p in protos)
    result = substitute(protos, PAPER)
    assert result.n_substitutions == 52 * n_ternary + 1950 * n_quaternary
    sample = np.random.default_rng(0).choice(result.n_unique, size=min(2000, result.n_unique), replace=False)
    for i in sample.tolist():
        assert Composition(result.formulas[i]).reduced_formula == result.formulas[i]


def test_parquet_tables_round_trip(tmp_path) -> None:
    result = enumerate_substitutions([LI3PS4, LIFEPO4], PAPER)
    paths = write_substitution_tables(result, tmp_path / "out")
    subs = pq.read_table(paths["substitutions"]).to_pandas()
    formulas = pq.read_table(paths["formulas"]).to_pandas()
    protos = pq.read_table(paths["prototypes"]).to_pandas()
    assert len(subs) == 2002
    assert list(protos["substitutions"]) == [52, 1950]
    assert formulas["multiplicity"].sum() == len(subs)
    assert set(subs["formula"].astype(str)) == set(formulas["formula"])
    first = subs.iloc[0]
    assert (first["prototype_id"], first["from_0"], first["from_1"]) == ("Li3PS4", "P", "S")
    assert first["to_0"] == "S"  # rows start with the first species set to S
    assert subs["to_2"].isna().sum() == 52  # the ternary has no third species
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"element_pool": ("Li", "S", "Xq")}, "'Xq' is not an element"),
        ({"element_pool": ("Li", "S", "O", "O")}, "more than once"),
        ({"element_pool": ("Na", "S", "O")}, "kept_element 'Li'"),
        ({"required_element": "Li"}, "must differ"),
        ({"required_element": "Pt"}, "required_element 'Pt'"),
        ({"rule": "sideways"}, "sideways"),
    ],
)
def test_bad_config_is_refused_with_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises((InvalidInput, ValueError), match=message):
        SubstitutionConfig(**kwargs)


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ([SitePattern("NaCl", {"Na": 1, "Cl": 1})], "'NaCl' has no Li"),
        ([LI3PS4, LI3PS4], "appears more than once"),
        ([SitePattern("zero", {"Li": 1, "O": 0, "S": 1})], "amount of O"),
        ([SitePattern("huge", {"Li": 1, "O": 5000, "S": 1})], "exceed 1023"),
        (
            [SitePattern("six", {"Li": 1, "B": 1, "C": 1, "N": 1, "O": 1, "F": 1})],
            "at most 3 are supported",
        ),
    ],
)
def test_bad_patterns_are_refused_by_name(patterns: list[SitePattern], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        enumerate_substitutions(patterns, PAPER)


def test_permutation_counts_formula() -> None:
    """The counting formula agrees with the table for a pool that is not the paper's."""
    config = SubstitutionConfig(element_pool=("Li", "S", "O", "Se", "Te", "Cl", "Br"))
    for k in (1, 2, 3):
        assert assignment_table(config, k).shape[0] == k * math.perm(5, k - 1)
