"""The physical sanity filter of generated crystals (htvs.generation.sanity)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from htvs.errors import InvalidInput
from htvs.generation.sanity import (
    SanityConfig,
    bond_radius,
    closest_contact,
    min_distance_a,
    sanity_reason,
)

FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"
DEFAULT = SanityConfig()


def rock_salt_lif() -> Structure:
    """LiF, rock salt, a = 4.03 Å (Li-F 2.01 Å, 8.2 Å^3/atom)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.03), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def brute_force_worst(structure: Structure, config: SanityConfig, reach: int = 3) -> float:
    """Smallest distance / threshold over every pair and every image within ``reach`` cells."""
    matrix = structure.lattice.matrix
    frac = structure.frac_coords
    symbols = [site.specie.symbol for site in structure]
    worst = np.inf
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=float)
    for i, j in itertools.product(range(len(structure)), repeat=2):
        vectors = (frac[j] - frac[i] + shifts) @ matrix
        distances = np.linalg.norm(vectors, axis=1)
        if i == j:
            distances = distances[np.any(shifts != 0, axis=1)]
        limit = min_distance_a(symbols[i], symbols[j], config)
        worst = min(worst, float(distances.min()) / limit)
    return worst


def test_real_crystals_pass() -> None:
    assert sanity_reason(rock_salt_lif(), DEFAULT) is None
    li2o = Structure.from_file(FOLDER / "Li2O.json")
    assert sanity_reason(li2o, DEFAULT) is None


def test_atoms_too_close_are_rejected_with_the_pair_and_distance() -> None:
    structure = Structure(Lattice.cubic(4.0), ["Li", "S"], [[0, 0, 0], [0, 0, 0.1]])  # 0.4 Å apart
    reason = sanity_reason(structure, DEFAULT)
    assert reason is not None
    assert "Li-S 0.4 Å apart" in reason
    assert "0.5 x (Li 1.45 + S 1) Å bond radii = 1.23 Å" in reason


def test_periodic_images_count() -> None:
    # 0.02 of a 4 Å cell apart across the cell boundary: 0.08 Å, not 3.92 Å
    across = Structure(Lattice.cubic(4.0), ["Li", "S"], [[0.01, 0, 0], [0.99, 0, 0]])
    assert "0.08 Å apart" in sanity_reason(across, DEFAULT)
    # one atom 0.8 Å from its own image along a short axis (20 Å^3/atom: a plausible volume)
    needle = Structure(Lattice.orthorhombic(0.8, 5.0, 5.0), ["S"], [[0, 0, 0]])
    assert sanity_reason(needle, DEFAULT) == (
        "a S atom is 0.8 Å from its own periodic image, below 0.5 x (S 1 + S 1) Å bond radii = 1 Å")


def test_coincident_atoms_are_rejected() -> None:
    structure = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]])
    assert "Li-O 0 Å apart" in sanity_reason(structure, DEFAULT)


def test_a_skewed_cell_of_the_same_crystal_gives_the_same_answer() -> None:
    lif = rock_salt_lif().get_primitive_structure()
    skew = np.array([[1, 0, 0], [4, 1, 0], [-3, 5, 1]])  # unimodular: the same lattice
    skewed = Structure(Lattice(skew @ lif.lattice.matrix), lif.species, lif.cart_coords, coords_are_cartesian=True)
    assert sanity_reason(skewed, DEFAULT) is None
    tight = SanityConfig(min_distance_fraction=1.1)  # Li-F 2.01 Å < 1.1 x (1.45 + 0.5) Å
    reason = sanity_reason(skewed, tight)
    assert reason is not None and reason == sanity_reason(lif, tight)


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_a_brute_force_search_over_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    matrix = rng.normal(size=(3, 3)) * 1.5 + np.eye(3) * rng.uniform(2.5, 5.0)
    structure = Structure(Lattice(matrix), list(rng.choice(["Li", "S", "O", "Cl"], n)), rng.random((n, 3)))
    config = SanityConfig(min_volume_per_atom_a3=0.0, max_volume_per_atom_a3=1000.0)
    expected_ok = brute_force_worst(structure, config) >= 1.0
    assert (sanity_reason(structure, config) is None) == expected_ok
    contact = closest_contact(structure, config)
    assert (contact is None) == expected_ok
    if contact is not None:
        assert contact.distance_a / contact.limit_a == pytest.approx(brute_force_worst(structure, config), rel=1e-9)


def test_volume_per_atom_outside_the_range() -> None:
    crushed = Structure(Lattice.cubic(1.5), ["Li"], [[0, 0, 0]])  # 3.4 Å^3/atom
    assert sanity_reason(crushed, DEFAULT) == "volume per atom 3.38 Å^3/atom is outside [5, 100] Å^3/atom"
    blown = Structure(Lattice.cubic(8.0), ["Li", "S"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 256 Å^3/atom
    assert "volume per atom 256 Å^3/atom is outside [5, 100]" in sanity_reason(blown, DEFAULT)
    assert sanity_reason(blown, SanityConfig(max_volume_per_atom_a3=300.0)) is None


def test_the_floor_and_the_fraction_both_apply() -> None:
    structure = Structure(Lattice.cubic(4.0), ["Li", "S"], [[0, 0, 0], [0, 0, 0.25]])  # 1.0 Å
    assert sanity_reason(structure, SanityConfig(min_distance_fraction=0.0, min_distance_angstrom=0.5)) is None
    reason = sanity_reason(structure, SanityConfig(min_distance_fraction=0.0, min_distance_angstrom=1.5))
    assert reason is not None and "below the floor of 1.5 Å" in reason
    assert "bond radii" in sanity_reason(structure, SanityConfig(min_distance_fraction=0.5, min_distance_angstrom=0.5))
    off = SanityConfig(min_distance_fraction=0.0, min_distance_angstrom=0.0)
    assert sanity_reason(Structure(Lattice.cubic(4.0), ["Li", "S"], [[0, 0, 0], [0, 0, 0]]), off) is None


def test_an_element_without_a_bond_radius_is_held_to_the_floor() -> None:
    assert bond_radius("He") is None and bond_radius("Li") == 1.45
    assert min_distance_a("He", "Li", DEFAULT) == DEFAULT.min_distance_angstrom
    structure = Structure(Lattice.cubic(4.0), ["He", "He"], [[0, 0, 0], [0, 0, 0.1]])  # 0.4 Å
    assert "He-He 0.4 Å apart, below the floor of 0.5 Å" in sanity_reason(structure, DEFAULT)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_distance_fraction": -0.1}, "min_distance_fraction must be >= 0, got -0.1"),
        ({"min_distance_fraction": 2.0}, "min_distance_fraction must be <= 1.5, got 2.0"),
        ({"min_distance_angstrom": float("nan")}, "min_distance_angstrom must be a finite number, got nan"),
        ({"max_volume_per_atom_a3": 0.0}, "max_volume_per_atom_a3 must be > 0 Å^3/atom, got 0.0"),
        ({"min_volume_per_atom_a3": 50.0, "max_volume_per_atom_a3": 40.0},
         "min_volume_per_atom_a3 (50 Å^3/atom) must be below max_volume_per_atom_a3 (40 Å^3/atom)"),
    ],
)
def test_bad_thresholds_are_refused_with_their_value(settings: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        SanityConfig(**settings)
