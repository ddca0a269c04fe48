"""The bundled MP-20-like set: sizes, the composition-grouped split, the Li ternary/quaternary subset."""

from __future__ import annotations

import numpy as np
import pytest

from htvs.errors import InvalidInput
from htvs.generation.mp_data import li_ternary_quaternary, load_mp20, material_ids, split_formulas


def _reduced_formulas(crystals) -> set[str]:
    from pymatgen.core import Composition, Element

    formulas = set()
    for start, count in zip(crystals.offsets, crystals.num_atoms):
        numbers = crystals.atomic_numbers[start : start + count].tolist()
        formulas.add(Composition({Element.from_Z(z): numbers.count(z) for z in set(numbers)}).reduced_formula)
    return formulas


@pytest.fixture(scope="module")
def parts():
    return {name: load_mp20(name) for name in ("train", "val", "test")}


def test_bundle_sizes_and_ids(parts):
    sizes = {name: len(c) for name, c in parts.items()}
    assert sum(sizes.values()) == 19_619  # the <= 20-site structures of the 36,737
    assert sizes["train"] > 2.5 * sizes["test"]
    for name, crystals in parts.items():
        ids = material_ids(name)
        assert len(ids) == len(crystals) and all(i.startswith("mp-") for i in ids)
        assert int(crystals.num_atoms.max()) <= 20


def test_no_composition_is_split_across_parts(parts):
    formulas = {name: _reduced_formulas(c) for name, c in parts.items()}
    assert not formulas["train"] & formulas["test"]
    assert not formulas["train"] & formulas["val"]
    assert not formulas["val"] & formulas["test"]


def test_split_is_seeded_and_grouped():
    names = [f"X{i}" for i in range(100)] * 2
    first, again, other = split_formulas(names, 0), split_formulas(names, 0), split_formulas(names, 1)
    assert first == again and first != other
    assert sorted(np.unique(list(first.values()), return_counts=True)[1].tolist()) == [20, 20, 60]


def test_li_subset_has_li_and_three_or_four_elements(parts):
    test = parts["test"]
    chosen = li_ternary_quaternary(test)
    assert 50 < len(chosen) < len(test)
    for index in chosen[:50]:
        start, count = test.offsets[index], test.num_atoms[index]
        elements = set(test.atomic_numbers[start : start + count].tolist())
        assert 3 in elements and len(elements) in (3, 4)


def test_unknown_split_is_refused():
    with pytest.raises(InvalidInput, match="'training'"):
        load_mp20("training")
