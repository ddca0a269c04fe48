"""Two crystal-structure-prediction baselines that need no model, scored like the generator.

Both take a test composition as the atomic numbers of its cell (the number of atoms per cell is
given, as in DiffCSP's CSP task) and return pymatgen Structures:

* :func:`random_structures`: random fractional coordinates in a random but sane cell (lengths
  lognormal around the cube edge, angles uniform in 60-120°) whose volume is the composition's
  estimated volume (:class:`VolumeModel`).
* :func:`template_structures`: a training structure with the same stoichiometry pattern (sorted
  element counts of the cell, e.g. ``(1, 1, 3)``), its species swapped for the test elements and
  its cell isotropically rescaled to the estimated volume. Templates are ranked by chemical
  closeness: the mean over atoms of the Pauling-electronegativity difference between each test
  element and the template element it replaces (ties broken by a seeded random order), so sample
  ``j`` is built on the ``j``-th closest template. A pattern no training structure has gives no
  sample (a counted miss).

Element pairing for the swap: the elements of the test cell and of the template are each sorted
by (count in the cell, electronegativity, Z) and paired in that order, so counts always agree and
equal counts are matched by electronegativity rank. Pauling electronegativity is undefined for
He, Ne and Ar; they are given 4.0 (after F) for the ranking.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from htvs.errors import InvalidInput
from htvs.generation.data import CrystalArrays

#: Standard deviation of ln(length / cube edge) of a random cell.
LENGTH_LOG_SIGMA = 0.2
#: Range of the random cell angles, degrees.
ANGLE_RANGE_DEG = (60.0, 120.0)
#: Least accepted V / (a b c) of a random cell (1 for a right-angled cell); flatter cells are redrawn.
MIN_SHAPE_FACTOR = 0.3
#: Electronegativity used for the ranking where Pauling's is undefined (He, Ne, Ar).
UNDEFINED_ELECTRONEGATIVITY = 4.0


@dataclass(frozen=True)
class VolumeModel:
    """Cell volume estimate ``V ≈ Σ n_el · v_el`` (Å^3) from per-element atomic volumes.

    Attributes:
        volumes_a3: fitted atomic volume of each element seen in training, Å^3/atom.
        fallback_a3: training mean volume per atom, Å^3/atom, used for an element never seen.
        rms_relative_error: root-mean-square relative error of the fit on the training cells.
    """

    volumes_a3: dict[int, float]
    fallback_a3: float
    rms_relative_error: float

    def estimate(self, atomic_numbers: Sequence[int]) -> float:
        """Estimated cell volume, Å^3, of a cell holding ``atomic_numbers``."""
        volume = float(sum(self.volumes_a3.get(int(z), self.fallback_a3) for z in atomic_numbers))
        return volume if volume > 0 else self.fallback_a3 * len(atomic_numbers)


def fit_volume_model(train: CrystalArrays) -> VolumeModel:
    """Per-element atomic volumes (Å^3/atom) by non-negative least squares on the training cells.

    Each cell's row is divided by its number of atoms (fit of the volume per atom from the
    element fractions), so that every training crystal weighs the same. An element whose fitted
    volume is 0 (the bound is active) keeps 0; a cell made only of such elements gets the
    training mean volume per atom.
    """
    from scipy.optimize import nnls

    if len(train) == 0:
        raise InvalidInput("cannot fit atomic volumes on an empty training set")
    elements = np.unique(train.atomic_numbers)
    column = {int(z): j for j, z in enumerate(elements)}
    counts = np.zeros((len(train), len(elements)))
    crystal = np.repeat(np.arange(len(train)), train.num_atoms)
    np.add.at(counts, (crystal, [column[int(z)] for z in train.atomic_numbers]), 1.0)
    per_atom = train.volume_per_atom()
    fractions = counts / train.num_atoms[:, None]
    volumes, _ = nnls(fractions, per_atom, maxiter=50 * len(elements))
    relative = (fractions @ volumes - per_atom) / per_atom
    return VolumeModel({int(z): float(v) for z, v in zip(elements, volumes)}, float(per_atom.mean()),
                       float(np.sqrt(np.mean(relative**2))))


def random_lattice(volume_a3: float, rng: np.random.Generator):
    """A pymatgen Lattice of volume ``volume_a3`` (Å^3) with random lengths and angles (60-120°)."""
    from pymatgen.core import Lattice

    if not (math.isfinite(volume_a3) and volume_a3 > 0):
        raise InvalidInput(f"cell volume must be positive, got {volume_a3} Å^3")
    while True:
        angles = rng.uniform(*ANGLE_RANGE_DEG, size=3)
        cos = np.cos(np.radians(angles))
        factor = 1 - float((cos**2).sum()) + 2 * float(cos.prod())
        if factor > MIN_SHAPE_FACTOR**2:  # factor is (V / abc)^2
            break
    lengths = rng.lognormal(0.0, LENGTH_LOG_SIGMA, size=3)
    lengths *= (volume_a3 / (float(lengths.prod()) * math.sqrt(factor))) ** (1 / 3)
    return Lattice.from_parameters(*lengths, *angles)


def random_structures(
    compositions: Sequence[Sequence[int]], volumes: VolumeModel, k: int, seed: int
) -> list[list]:
    """``k`` independent random structures per composition (atomic numbers of the cell)."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    out = []
    for numbers in compositions:
        species = [int(z) for z in numbers]
        volume = volumes.estimate(species)
        out.append([Structure(random_lattice(volume, rng), species, rng.random((len(species), 3)))
                    for _ in range(k)])
    return out


@lru_cache(maxsize=None)
def electronegativity(z: int) -> float:
    """Pauling electronegativity of element ``z`` (4.0 where undefined: He, Ne, Ar)."""
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = float(Element.from_Z(int(z)).X)
    return x if math.isfinite(x) else UNDEFINED_ELECTRONEGATIVITY


def ranked_elements(atomic_numbers: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The distinct elements sorted by (count in the cell, electronegativity, Z), and their counts.

    The counts are the cell's stoichiometry pattern, e.g. ``(1, 1, 3)`` for SrTiO3.
    """
    values, counts = np.unique(np.asarray(atomic_numbers, dtype=np.int64), return_counts=True)
    order = sorted(range(len(values)), key=lambda j: (int(counts[j]), electronegativity(int(values[j])),
                                                       int(values[j])))
    return tuple(int(values[j]) for j in order), tuple(int(counts[j]) for j in order)


@dataclass(frozen=True)
class TemplateLibrary:
    """Training crystals grouped by stoichiometry pattern.

    ``by_pattern[pattern]`` is ``(indices, elements)``: the training crystals with that pattern
    and, per crystal, its elements ranked as :func:`ranked_elements` (``[T, n_elements]``).
    """

    crystals: CrystalArrays
    by_pattern: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]


def template_library(train: CrystalArrays) -> TemplateLibrary:
    """Index the training crystals by stoichiometry pattern."""
    grouped: dict[tuple[int, ...], tuple[list[int], list[tuple[int, ...]]]] = {}
    for index, (start, n) in enumerate(zip(train.offsets, train.num_atoms)):
        elements, pattern = ranked_elements(train.atomic_numbers[start : start + n])
        indices, ranked = grouped.setdefault(pattern, ([], []))
        indices.append(index)
        ranked.append(elements)
    return TemplateLibrary(train, {p: (np.asarray(i, dtype=np.int64), np.asarray(e, dtype=np.int64))
                                   for p, (i, e) in grouped.items()})


def template_structures(
    compositions: Sequence[Sequence[int]], library: TemplateLibrary, volumes: VolumeModel, k: int, seed: int
) -> list[list]:
    """Up to ``k`` structures per composition, on its ``k`` chemically closest distinct templates.

    A composition gets fewer than ``k`` structures when fewer templates share its pattern, and an
    empty list when none does.
    """
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    out = []
    for numbers in compositions:
        elements, pattern = ranked_elements(numbers)
        if pattern not in library.by_pattern:
            out.append([])
            continue
        indices, candidates = library.by_pattern[pattern]
        x = np.array([electronegativity(z) for z in elements])
        lookup = np.zeros(int(candidates.max()) + 1)
        for z in np.unique(candidates):
            lookup[z] = electronegativity(int(z))
        table = lookup[candidates]
        distance = np.abs(table - x) @ np.asarray(pattern, dtype=float) / sum(pattern)
        order = np.lexsort((rng.random(len(indices)), distance))[:k]
        volume = volumes.estimate(numbers)
        samples = []
        for row in order:
            template = library.crystals.structure(int(indices[row]))
            swap = dict(zip(candidates[row].tolist(), elements))
            scale = (volume / template.volume) ** (1 / 3)
            samples.append(Structure(Lattice(template.lattice.matrix * scale),
                                     [swap[site.specie.Z] for site in template], template.frac_coords))
        out.append(samples)
    return out
