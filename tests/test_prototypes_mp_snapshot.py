"""The bundled Materials Project prototypes (2018 snapshot, Li subset) and the full snapshot.

Counts come from the records' ``formula_sum`` (no CIF parsing); structures are parsed only for
small slices, so this file runs in seconds.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from htvs.campaign.config import load_campaign, parse_campaign, validate_campaign
from htvs.datasets import (
    DATA_DIR_ENV,
    load_mp_li_structures,
    load_mp_structures,
    mp_structures_path,
    read_mp_structures,
)
from htvs.errors import DataNotFound, InvalidInput
from htvs.prototypes import (
    MP_2018_SOURCE,
    SOURCE_NAMES,
    MPSnapshotSource,
    PrototypeFilter,
    load_prototypes,
    source_from_spec,
)

REPO = Path(__file__).resolve().parents[1]

#: a slice with every kind of record: ternary, quaternary, binary, 5-element, elemental Li
SLICE = {
    "mp-985585": "ternary",  # Li3ClO
    "mp-19017": "quaternary",  # LiFePO4
    "mp-696138": "quaternary",  # Li10Ge(PS6)2, 50 atoms
}


def _n_elements() -> Counter:
    return Counter(len(r.element_counts()) for r in load_mp_li_structures())


def test_li_subset_counts_match_the_data_readme() -> None:
    records = load_mp_li_structures()
    assert len(records) == 5255
    assert all("Li" in r.element_counts() for r in records)
    counts = _n_elements()
    # SOURCES: 1,804 ternary + 2,516 quaternary, 169 binary, 708 five-element, 58 others
    assert (counts[3], counts[4], counts[2], counts[5]) == (1804, 2516, 169, 708)
    assert sum(v for k, v in counts.items() if k not in (2, 3, 4, 5)) == 58
    assert len({r.material_id for r in records}) == len(records)


def test_slice_loads_with_provenance_and_the_composition_of_formula_sum() -> None:
    binary = next(r.material_id for r in load_mp_li_structures() if len(r.element_counts()) == 2)
    five = next(r.material_id for r in load_mp_li_structures() if len(r.element_counts()) == 5)
    loaded = MPSnapshotSource(ids=(*SLICE, binary, five)).load()
    assert [p.id for p in loaded.prototypes] == sorted(SLICE)
    reasons = {s.name: s.reason for s in loaded.skipped}
    assert set(reasons) == {binary, five}
    assert "has 2 elements" in reasons[binary] and "has 5 elements" in reasons[five]
    by_id = {r.material_id: r for r in load_mp_li_structures()}
    for prototype in loaded.prototypes:
        record = by_id[prototype.id]
        assert prototype.source == MP_2018_SOURCE
        assert prototype.structure.is_ordered
        assert prototype.species_amounts == record.element_counts()
        assert prototype.n_elements == {"ternary": 3, "quaternary": 4}[SLICE[prototype.id]]
        assert prototype.provenance["database"] == "Materials Project"
        assert prototype.provenance["licence"] == "CC BY 4.0"
        assert "CGCNN" in prototype.provenance["snapshot"]
        assert prototype.provenance["material_id"] == prototype.id
        assert prototype.provenance["formation_energy_per_atom"] == record.formation_energy_per_atom
        assert prototype.provenance["band_gap"] == record.band_gap


def test_filter_selects_ternaries_only_and_by_size() -> None:
    ternary_only = MPSnapshotSource(PrototypeFilter(allowed_n_elements=(3,)), ids=tuple(SLICE)).load()
    assert [p.id for p in ternary_only.prototypes] == ["mp-985585"]
    small = MPSnapshotSource(PrototypeFilter(max_atoms=30), ids=tuple(SLICE)).load()
    assert [p.id for p in small.prototypes] == ["mp-19017", "mp-985585"]
    assert {s.name: s.reason for s in small.skipped} == {
        "mp-696138": "50 atoms in the cell exceed max_atoms=30"
    }


def test_default_filter_would_keep_every_ternary_and_quaternary() -> None:
    """The 4,320 prototypes: no ternary/quaternary cell exceeds the default max_atoms."""
    sizes = [
        sum(r.element_counts().values())
        for r in load_mp_li_structures()
        if len(r.element_counts()) in (3, 4)
    ]
    assert len(sizes) == 4320
    assert max(sizes) <= PrototypeFilter().max_atoms


def test_unknown_ids_are_named() -> None:
    with pytest.raises(InvalidInput, match=r"not in the mp-2018 set: 'mp-0'"):
        MPSnapshotSource(ids=("mp-19017", "mp-0")).load()
    with pytest.raises(InvalidInput, match="'nope'"):
        load_prototypes("obelix", ids=("nope",))


def test_source_names_and_unknown_name() -> None:
    assert isinstance(source_from_spec("mp-2018"), MPSnapshotSource)
    assert {"mp-2018", "obelix", "mp"} <= set(SOURCE_NAMES)
    with pytest.raises(InvalidInput, match=r"prototype source 'mp2018' is neither a source name \('mp-2018'"):
        source_from_spec("mp2018")


def test_load_returns_fresh_structures() -> None:
    first = MPSnapshotSource(ids=("mp-985585",)).load().prototypes[0]
    first.structure.replace_species({"Cl": "Br"})
    first.provenance["band_gap"] = -1.0
    again = MPSnapshotSource(ids=("mp-985585",)).load().prototypes[0]
    assert set(again.species_amounts) == {"Li", "Cl", "O"}
    assert "Cl" in again.structure.composition and "Br" not in again.structure.composition
    assert again.provenance["band_gap"] > 0


def test_full_snapshot_is_in_the_checkout_not_in_the_package() -> None:
    path = mp_structures_path()
    assert path == REPO / "data" / "mp_structures" / "mp_structures.jsonl.gz"
    records = load_mp_structures()
    assert len(records) == 36737
    outlier = next(r for r in records if r.material_id == "mp-778012")
    assert outlier.formation_energy_per_atom == pytest.approx(-13.57, abs=0.01)
    li_ids = {r.material_id for r in load_mp_li_structures()}
    assert li_ids == {r.material_id for r in records if "Li" in r.element_counts()}


def test_full_snapshot_location_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataNotFound, match=f"{DATA_DIR_ENV}"):
        mp_structures_path()
    target = tmp_path / "mp_structures" / "mp_structures.jsonl.gz"
    target.parent.mkdir()
    good = {"material_id": "mp-1", "formula_sum": "Li2 O1", "formation_energy_per_atom": -2.0,
            "band_gap": 5.0, "cif": "data_x"}
    target.write_bytes(gzip.compress((json.dumps(good) + "\n{not json\n").encode()))
    assert mp_structures_path() == target
    with pytest.raises(DataNotFound, match="line 2"):
        read_mp_structures(target)


# --------------------------------------------------------------------------- configs


def test_demo_and_paper_configs_name_the_mp_source() -> None:
    demo = load_campaign(REPO / "configs" / "demo.yaml")
    paper = load_campaign(REPO / "configs" / "paper.yaml")
    assert demo.prototypes.source == paper.prototypes.source == "mp-2018"
    assert paper.prototypes.ids is None and tuple(paper.prototypes.n_elements) == (3, 4)
    ids = demo.prototypes.ids
    assert ids is not None and len(ids) == len(set(ids)) == 56
    loaded = MPSnapshotSource(ids=ids).load()  # every listed id is a loadable prototype
    assert len(loaded.prototypes) == 56 and not loaded.skipped
    assert Counter(p.n_elements for p in loaded.prototypes) == {3: 36, 4: 20}
    # the paper's rule and thresholds
    s = paper.screening
    assert (s.max_e_form_ev_per_atom, s.max_e_above_hull_ev_per_atom, s.min_band_gap_ev, s.min_phi_ox_v) == (
        0.1, 0.2, 0.5, 4.0)
    assert paper.substitution.required_element == "S" and paper.substitution.element_pool is None


@pytest.mark.parametrize(
    ("prototypes", "message"),
    [
        ({"source": "nowhere"}, r"prototypes.source: 'nowhere' is neither a source name"),
        ({"source": "missing/folder"}, r"missing/folder.*does not exist"),
        ({"ids": []}, "at least one prototype id"),
        ({"idz": ["mp-1"]}, "unknown key 'prototypes.idz'"),
    ],
)
def test_bad_prototype_config_is_refused(prototypes: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_campaign(parse_campaign({"prototypes": prototypes}), base_dir=tmp_path)
