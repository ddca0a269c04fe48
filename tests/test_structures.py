"""Stage 4: materializing substituted structures and removing duplicates.

Prototypes are the small structures of ``tests/data/prototypes/folder`` (LiFePO4 olivine,
28 sites; LiZnPS4, 14 sites; a disordered Li7BiO6), so no bundled set is loaded.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Structure

from htvs.errors import InvalidInput, RowError
from htvs.structures import (
    DedupeConfig,
    MaterializeConfig,
    MaterializedStructure,
    VolumeRescaling,
    deduplicate,
    deduplicate_all_pairs,
    materialize,
    select_for_survivors,
    split_results,
)
from htvs.structures.radii import site_charges, site_radius

from conftest import PROTOTYPE_FOLDER as FOLDER




def rows(*substitutions: tuple[str, list[tuple[str, str]]], formula: bool = False) -> pd.DataFrame:
    """A substitution table like stage 1's from (prototype_id, [(from, to), ...]) tuples."""
    width = max(len(pairs) for _, pairs in substitutions)
    records = []
    for prototype_id, pairs in substitutions:
        record: dict[str, object] = {"prototype_id": prototype_id}
        for j in range(width):
            record[f"from_{j}"], record[f"to_{j}"] = pairs[j] if j < len(pairs) else (None, None)
        records.append(record)
    return pd.DataFrame.from_records(records)


def one(prototypes, pairs, prototype_id="LiFePO4", **config) -> MaterializedStructure:
    (result,) = materialize(prototypes, rows((prototype_id, pairs)), MaterializeConfig(**config))
    assert isinstance(result, MaterializedStructure), result
    return result


# LiFePO4 -> LiMgSO4 (the paper's rule: exactly one non-Li species becomes S)
LFP_MG_S = [("Fe", "Mg"), ("P", "S"), ("O", "O")]
LFP_S_MG = [("Fe", "S"), ("P", "Mg"), ("O", "O")]
LZPS_MG_S = [("Zn", "Mg"), ("P", "S"), ("S", "O")]
LZPS_S_MG = [("Zn", "S"), ("P", "Mg"), ("S", "O")]


# --- materialize -------------------------------------------------------------------------------


def test_lifepo4_substitution_keeps_positions_and_has_expected_composition(prototypes):
    proto = prototypes["LiFePO4"].structure
    result = one(prototypes, LFP_MG_S, rescale_volume="none")
    assert result.id == "LiFePO4|Fe:Mg,P:S,O:O"
    assert result.prototype_id == "LiFePO4"
    assert result.formula == "LiMgSO4"
    assert result.structure.composition == Composition("Li4Mg4S4O16")
    np.testing.assert_array_equal(result.structure.frac_coords, proto.frac_coords)
    replaced = {"Fe": "Mg", "P": "S"}
    expected = [replaced.get(s.specie.symbol, s.specie.symbol) for s in proto]
    assert [s.specie.symbol for s in result.structure] == expected


def test_no_rescaling_keeps_the_lattice(prototypes):
    result = one(prototypes, LFP_MG_S, rescale_volume=VolumeRescaling.NONE)
    assert result.volume_scale == 1.0
    np.testing.assert_array_equal(
        result.structure.lattice.matrix, prototypes["LiFePO4"].structure.lattice.matrix
    )


def test_ionic_radii_rescaling_follows_ion_size(prototypes):
    proto = prototypes["LiFePO4"].structure
    oxide = one(prototypes, [("Fe", "Mg"), ("P", "S"), ("O", "O")])
    fluoride = one(prototypes, [("Fe", "Mg"), ("P", "S"), ("O", "F")])
    selenide = one(prototypes, [("Fe", "Mg"), ("P", "S"), ("O", "Se")])
    # Shannon radii: F- 1.19 < O2- 1.26 < Se2- 1.84 A on the anion sites
    assert fluoride.structure.volume < oxide.structure.volume < selenide.structure.volume
    assert selenide.volume_scale > 1.5
    for result in (oxide, fluoride, selenide):
        assert result.structure.volume == pytest.approx(proto.volume * result.volume_scale)
        # isotropic: same angles and length ratios, same fractional coordinates
        np.testing.assert_allclose(result.structure.lattice.angles, proto.lattice.angles)
        np.testing.assert_array_equal(result.structure.frac_coords, proto.frac_coords)


def test_radii_are_role_aware():
    # an anion site takes the anion radius (S2- 1.70 A), not pymatgen's average over S2-/S4+/S6+
    assert site_radius("S", -2.0) == pytest.approx(1.70)
    assert site_radius("S", 5.0) < site_radius("O", -2.0) < site_radius("S", -2.0)
    assert site_charges({"Li": 4, "Fe": 4, "P": 4, "O": 16}) == {
        "Li": 1.0, "Fe": 2.0, "P": 5.0, "O": -2.0,
    }  # fmt: skip


def test_json_and_cif_round_trip(prototypes):
    result = one(prototypes, LFP_MG_S)
    back = MaterializedStructure.from_json(result.to_json())
    assert back == result
    assert back.structure == result.structure
    assert json.loads(result.to_json())["substitution"] == [["Fe", "Mg"], ["P", "S"], ["O", "O"]]
    from_cif = Structure.from_str(result.to_cif(), fmt="cif")
    assert from_cif.composition == result.structure.composition
    assert from_cif.volume == pytest.approx(result.structure.volume, rel=1e-4)


def test_select_for_survivors_keeps_rows_of_surviving_formulas():
    table = pd.DataFrame(
        {
            "prototype_id": ["a", "a", "b", "c"],
            "formula": ["LiPSO4", "LiMgSO4", "LiPSO4", "Li3ClSO4"],
        }
    ).astype("category")
    kept = select_for_survivors(table, pd.Series(["LiPSO4", "Li3ClSO4"]))
    assert kept.index.tolist() == [0, 2, 3]
    assert select_for_survivors(table, []).empty


def test_formula_column_is_checked(prototypes):
    table = rows(("LiFePO4", LFP_MG_S), ("LiFePO4", LFP_MG_S))
    table["formula"] = ["LiMgSO4", "LiMgPO4"]
    good, bad = materialize(prototypes, table)
    assert isinstance(good, MaterializedStructure)
    assert isinstance(bad, RowError) and "'LiMgPO4'" in bad.message


def test_bad_rows_are_reported_per_row_and_the_rest_is_materialized(prototypes):
    table = rows(
        ("LiFePO4", LFP_MG_S),
        ("mp-404", LFP_MG_S),  # unknown prototype
        ("LiFePO4", [("Zn", "Mg"), ("P", "S"), ("O", "O")]),  # Zn is not in LiFePO4
        ("LiFePO4", [("Fe", "Xx"), ("P", "S"), ("O", "O")]),  # not an element
        ("LiZnPS4", LZPS_MG_S),
    )
    results = materialize(prototypes, table)
    assert [type(r).__name__ for r in results] == [
        "MaterializedStructure", "RowError", "RowError", "RowError",
        "MaterializedStructure",
    ]  # fmt: skip
    errors = {r.index: r for r in results if isinstance(r, RowError)}
    assert "'mp-404'" in errors[1].message and errors[1].kind == "InvalidInput"
    assert "'Zn'" in errors[2].message and "LiFePO4" in errors[2].message
    assert "'Xx'" in errors[3].message
    assert errors[3].value == "LiFePO4|Fe:Xx,P:S,O:O"
    structures, errs = split_results(results)
    assert [s.formula for s in structures] == ["LiMgSO4", "LiMgSO4"]
    assert len(errs) == 3


def test_bad_table_and_config_are_refused(prototypes):
    with pytest.raises(InvalidInput, match="from_j"):
        materialize(prototypes, pd.DataFrame({"prototype_id": ["LiFePO4"]}))
    with pytest.raises(InvalidInput, match="'isotropic'"):
        MaterializeConfig(rescale_volume="isotropic")
    with pytest.raises(InvalidInput, match="ltol"):
        DedupeConfig(ltol=-0.1)


# --- deduplicate -------------------------------------------------------------------------------


def _shuffled_translated(structure: Structure, seed: int) -> Structure:
    """The same crystal with its sites permuted and its origin moved."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(structure))
    shift = np.array([0.137, 0.291, 0.443])
    return Structure(
        structure.lattice,
        [structure[i].specie for i in order],
        (structure.frac_coords[order] + shift) % 1.0,
    )


@pytest.fixture(scope="module")
def limgso4_set(prototypes) -> list[tuple[str, Structure]]:
    """Four distinct LiMgSO4 structures plus two copies of the first."""
    table = rows(
        ("LiFePO4", LFP_MG_S), ("LiFePO4", LFP_S_MG), ("LiZnPS4", LZPS_MG_S), ("LiZnPS4", LZPS_S_MG)
    )
    structures, errors = split_results(materialize(prototypes, table))
    assert not errors
    items = [(s.id, s.structure) for s in structures]
    first = structures[0].structure
    items.insert(2, ("copy:shuffled", _shuffled_translated(first, 7)))
    items.append(("copy:supercell", first.make_supercell([2, 1, 1], in_place=False)))
    return items


def test_dedupe_merges_copies_and_keeps_different_structures(limgso4_set):
    result = deduplicate(limgso4_set)
    first = "LiFePO4|Fe:Mg,P:S,O:O"
    assert result.duplicate_of == {"copy:shuffled": first, "copy:supercell": first}
    assert result.unique_ids == [
        first, "LiFePO4|Fe:S,P:Mg,O:O", "LiZnPS4|Zn:Mg,P:S,S:O", "LiZnPS4|Zn:S,P:Mg,S:O",
    ]  # fmt: skip
    assert result.counts() == {"in": 6, "out": 4, "removed": 2, "refused": 0, "comparisons": 4}
    assert result.members()[first] == [first, "copy:shuffled", "copy:supercell"]
    # olivine (28-site cell) and LiZnPS4 (14) are never compared: 4 items -> 1+1+... comparisons
    assert result.n_groups == 2


def test_dedupe_accepts_materialized_records(prototypes):
    table = rows(("LiFePO4", LFP_MG_S), ("LiFePO4", LFP_MG_S))
    structures, _ = split_results(materialize(prototypes, table))
    renamed = MaterializedStructure("again", *[getattr(structures[1], f) for f in (
        "formula", "prototype_id", "substitution", "volume_scale", "structure")])  # fmt: skip
    result = deduplicate([structures[0], renamed])
    assert result.unique == (structures[0],)
    assert result.duplicate_of == {"again": structures[0].id}


@pytest.mark.parametrize(
    "config",
    [
        DedupeConfig(group_by_site_count=False),
        DedupeConfig(group_by_space_group=True),
        None,  # the all-pairs reference
    ],
    ids=["formula-only", "space-group", "all-pairs"],
)
def test_grouping_does_not_change_the_result(limgso4_set, config):
    grouped = deduplicate(limgso4_set)
    other = deduplicate(limgso4_set, config) if config else deduplicate_all_pairs(limgso4_set)
    assert other.unique_ids == grouped.unique_ids
    assert other.duplicate_of == grouped.duplicate_of
    assert other.n_comparisons >= grouped.n_comparisons
    if config is None:
        assert other.n_comparisons == 6 * 5 // 2


def test_disordered_and_broken_items_are_refused_per_item(limgso4_set):
    disordered = Structure.from_file(FOLDER / "Li7BiO6_disordered.cif")
    assert not disordered.is_ordered
    nan = limgso4_set[0][1].copy()
    nan.replace(0, nan[0].specie, [np.nan, 0.0, 0.0])
    items = [
        *limgso4_set[:3],
        ("Li7BiO6", disordered),
        ("nan", nan),
        (limgso4_set[1][0], limgso4_set[3][1]),  # the same id twice
        ("not-a-structure", "LiFePO4"),
    ]
    result = deduplicate(items)
    refused = {r.value: r for r in result.refused}
    assert set(refused) == {"Li7BiO6", "nan", limgso4_set[1][0], "not-a-structure"}
    assert "disordered" in refused["Li7BiO6"].message
    assert refused["Li7BiO6"].index == 3
    assert "non-finite" in refused["nan"].message
    again = refused[limgso4_set[1][0]]
    assert "duplicate id" in again.message and again.index == 5
    assert "not a pymatgen Structure" in refused["not-a-structure"].message
    assert result.duplicate_of == {"copy:shuffled": "LiFePO4|Fe:Mg,P:S,O:O"}
    assert result.counts()["in"] == 7 and result.n_out == 2


def test_attempt_supercell_disables_the_site_count_key():
    assert DedupeConfig().uses_site_count_key
    assert not DedupeConfig(attempt_supercell=True).uses_site_count_key
