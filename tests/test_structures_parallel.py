"""Stage 4 in parts split by formula, in worker processes: the same table as one process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from htvs.errors import InvalidInput
from htvs.prototypes import MPSnapshotSource
from htvs.structures import DedupeConfig, MaterializeConfig
from htvs.structures.parallel import build_structures, split_by_formula, structure_arrays, structure_from_arrays
from htvs.substitution import SitePattern, SubstitutionConfig, enumerate_substitutions
from htvs.substitution.tables import substitution_table

#: Li3ClO (antiperovskite, 5 atoms), Li2MgCl4 and Li2CdCl4 (spinels, 14 atoms): the two spinels
#: give the same formulas, and duplicates of each other
IDS = ("mp-985585", "mp-38684", "mp-38008")


@pytest.fixture(scope="module")
def prototypes():
    return {p.id: p for p in MPSnapshotSource(ids=IDS).load().prototypes}


@pytest.fixture(scope="module")
def rows(prototypes) -> pd.DataFrame:
    patterns = [SitePattern(p.id, p.species_amounts) for p in prototypes.values()]
    config = SubstitutionConfig(element_pool=("Li", "S", "O", "F", "Cl", "Mg", "Zn", "Cd"))
    table = substitution_table(enumerate_substitutions(patterns, config)).to_pandas()
    for column in table.columns:
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    return table


def test_parts_hold_whole_formulas_in_row_order(rows) -> None:
    parts = split_by_formula(rows, part_rows=7)
    assert len(parts) > 3
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(rows)))
    seen: dict[str, int] = {}
    for k, part in enumerate(parts):
        assert list(part) == sorted(part)
        for formula in rows["formula"].iloc[part]:
            assert seen.setdefault(formula, k) == k


def test_two_workers_equal_one_process(prototypes, rows) -> None:
    mc, dc = MaterializeConfig(rescale_volume="none"), DedupeConfig()
    one, errors_one, _ = build_structures(prototypes, rows, mc, dc, workers=1, part_rows=10_000)
    done: list[int] = []
    two, errors_two, _ = build_structures(prototypes, rows, mc, dc, workers=2, part_rows=7, progress=done.append)
    assert one.equals(two)
    assert errors_one == errors_two
    assert done[-1] == len(rows) and done == sorted(done)
    table = one.to_pandas()
    duplicates = table["duplicate_of"].notna()
    assert duplicates.any() and (~duplicates).any()  # the spinels give duplicates
    assert table.loc[duplicates, "cif"].isna().all() and table.loc[~duplicates, "cif"].notna().all()


def test_arrays_round_trip(prototypes) -> None:
    structure = prototypes["mp-38684"].structure
    again = structure_from_arrays(*structure_arrays(structure))
    assert again == structure
    with pytest.raises(InvalidInput, match="do not fit"):
        structure_from_arrays([1.0] * 9, ["Li", "O"], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("rescale", ["none", "ionic_radii"])
def test_reduction_once_per_prototype_gives_the_same_duplicates(prototypes, rows, rescale) -> None:
    from htvs.structures import deduplicate, materialize, split_results

    built, _ = split_results(materialize(prototypes, rows, MaterializeConfig(rescale_volume=rescale)))
    direct = deduplicate(built, DedupeConfig())
    cached = deduplicate(built, DedupeConfig(), prototypes=prototypes)
    assert cached.duplicate_of == direct.duplicate_of
    assert [s.id for s in cached.unique] == [s.id for s in direct.unique]
    assert direct.n_removed > 0


def test_relabelled_reduced_cell_matches_the_direct_one(prototypes, rows) -> None:
    from htvs.structures import materialize, split_results
    from htvs.structures.dedupe import _Reducer

    built, _ = split_results(materialize(prototypes, rows.iloc[::5], MaterializeConfig(rescale_volume="ionic_radii")))
    matcher = DedupeConfig().matcher()
    cached, direct = _Reducer(DedupeConfig(), prototypes), _Reducer(DedupeConfig(), None)
    for item in built:
        a, b = cached(item), direct(item)
        assert a.composition == b.composition and len(a) == len(b)
        assert a.volume == pytest.approx(b.volume, rel=1e-9)
        assert matcher.fit(a, b, skip_structure_reduction=True), item.id


class DictParts:
    """A part checkpoint in memory that can 'die' after a number of saves."""

    def __init__(self, die_after: int | None = None) -> None:
        self.parts: dict = {}
        self.die_after = die_after
        self.loaded: list[int] = []

    def load(self, index: int):
        if index in self.parts:
            self.loaded.append(index)
            return self.parts[index]
        return None

    def save(self, index: int, table) -> None:
        if self.die_after is not None and len(self.parts) >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.parts[index] = table


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_stage_resumes_from_its_finished_parts(prototypes, rows, workers) -> None:
    mc, dc = MaterializeConfig(rescale_volume="none"), DedupeConfig()
    reference, errors, _ = build_structures(prototypes, rows, mc, dc, workers=1, part_rows=7)
    checkpoint = DictParts(die_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_structures(prototypes, rows, mc, dc, workers=workers, part_rows=7, checkpoint=checkpoint)
    assert len(checkpoint.parts) == 3
    checkpoint.die_after = None
    resumed, resumed_errors, _ = build_structures(prototypes, rows, mc, dc, workers=workers, part_rows=7,
                                                  checkpoint=checkpoint)
    assert len(checkpoint.loaded) == 3  # the finished parts were read back, not recomputed
    assert resumed.equals(reference) and resumed_errors == errors
