"""A physical sanity filter for generated crystals (stage 5), before they join stage 4.

A diffusion sampler can return cells that no relaxation should be asked to rescue: atoms on top
of each other, or a cell blown up or crushed far from any solid's density. A sample is rejected,
with the reason as text, when

* its **volume per atom** (Å^3/atom) lies outside ``[min_volume_per_atom_a3,
  max_volume_per_atom_a3]`` (the defaults, 5 to 100 Å^3/atom, hold every ordered Li compound of
  the Materials Project: Li2O and LiF are near 8, Li sulfides and halides 15 to 40); or
* two atoms, **periodic images included** (an atom and its own image one lattice vector away as
  well), are closer than ``max(min_distance_fraction * (r_a + r_b), min_distance_angstrom)``:
  both rules apply. ``r`` is the element's bond radius, Slater's empirical atomic radius
  (pymatgen's ``Element.atomic_radius``, through :func:`htvs.structures.radii.site_radius` with
  no ionic role), which tracks covalent radii within about 0.2 Å for the elements of the
  screen (Li 1.45, S 1.00, P 1.00, O 0.60, Cl 1.00 Å); the sum of two is close to their bond
  length (Li-S 2.45 Å). An element without such a radius (a few noble gases) is held to the
  absolute floor ``min_distance_angstrom`` only. The default fraction, 0.5, rejects only atoms at
  half a bond length or less; the default floor, 0.5 Å, is the "structural validity" criterion of
  the CDVAE and DiffCSP benchmarks.

Everything here is a pure function of a structure and a :class:`SanityConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from htvs.errors import InvalidInput
from htvs.ranges import Range

#: Allowed ranges of :class:`SanityConfig`'s thresholds.
SANITY_RANGES: dict[str, Range] = {
    "min_distance_fraction": Range(0.0, 1.5),  # of the sum of the two atoms' bond radii
    "min_distance_angstrom": Range(0.0, 5.0, "Å"),
    "min_volume_per_atom_a3": Range(0.0, 1000.0, "Å^3/atom"),
    "max_volume_per_atom_a3": Range(0.0, 1000.0, "Å^3/atom", low_open=True),
}


@dataclass(frozen=True)
class SanityConfig:
    """Thresholds of the sanity filter (see the module docstring).

    Attributes:
        min_distance_fraction: smallest allowed distance as a fraction of the two atoms' summed
            bond radii (0 turns this rule off).
        min_distance_angstrom: smallest allowed distance between any two atoms, Å (0: off).
        min_volume_per_atom_a3: smallest allowed cell volume per atom, Å^3/atom.
        max_volume_per_atom_a3: largest allowed cell volume per atom, Å^3/atom.

    Raises:
        InvalidInput: a threshold outside :data:`SANITY_RANGES`, or a minimum volume per atom not
            below the maximum (both values named).
    """

    min_distance_fraction: float = 0.5
    min_distance_angstrom: float = 0.5
    min_volume_per_atom_a3: float = 5.0
    max_volume_per_atom_a3: float = 100.0

    def __post_init__(self) -> None:
        for name, allowed in SANITY_RANGES.items():
            object.__setattr__(self, name, allowed.check(name, getattr(self, name)))
        check_volume_bounds(self.min_volume_per_atom_a3, self.max_volume_per_atom_a3)


def check_volume_bounds(low_a3: float, high_a3: float, prefix: str = "") -> None:
    """InvalidInput unless ``low_a3 < high_a3`` (volumes per atom, Å^3/atom); the message names
    both settings (``prefix`` before their names, e.g. ``"generation."``) and values."""
    if not low_a3 < high_a3:
        raise InvalidInput(
            f"{prefix}min_volume_per_atom_a3 ({low_a3:g} Å^3/atom) must be below "
            f"{prefix}max_volume_per_atom_a3 ({high_a3:g} Å^3/atom)"
        )


@lru_cache(maxsize=256)
def bond_radius(symbol: str) -> float | None:
    """Slater's atomic radius of element ``symbol``, Å (None when pymatgen has none)."""
    from htvs.errors import DataNotFound
    from htvs.structures.radii import site_radius

    try:
        return site_radius(symbol, 0.0)
    except DataNotFound:
        return None


def min_distance_a(symbol_a: str, symbol_b: str, config: SanityConfig) -> float:
    """The smallest allowed distance between an atom of ``symbol_a`` and one of ``symbol_b``, Å."""
    ra, rb = bond_radius(symbol_a), bond_radius(symbol_b)
    relative = config.min_distance_fraction * (ra + rb) if ra is not None and rb is not None else 0.0
    return max(relative, config.min_distance_angstrom)


def _threshold_text(symbol_a: str, symbol_b: str, config: SanityConfig) -> str:
    """How the threshold of a pair was set, for a reason."""
    ra, rb = bond_radius(symbol_a), bond_radius(symbol_b)
    limit = min_distance_a(symbol_a, symbol_b, config)
    if ra is not None and rb is not None and config.min_distance_fraction * (ra + rb) >= config.min_distance_angstrom:
        return (f"{config.min_distance_fraction:g} x ({symbol_a} {ra:g} + {symbol_b} {rb:g}) Å bond radii "
                f"= {limit:.3g} Å")
    return f"the floor of {limit:.3g} Å"


@dataclass(frozen=True)
class Contact:
    """Two atoms closer than their threshold: elements, distance (Å) and the threshold (Å);
    ``self_image``: one atom and its own periodic image."""

    symbol_a: str
    symbol_b: str
    distance_a: float
    limit_a: float
    self_image: bool


def closest_contact(structure, config: SanityConfig) -> Contact | None:
    """The pair of atoms, periodic images included, farthest under its threshold (smallest
    distance over threshold), or None when every pair keeps its distance
    (:func:`min_distance_a`)."""
    symbols = sorted({site.specie.symbol for site in structure})
    cutoff = max((min_distance_a(a, b, config) for a in symbols for b in symbols), default=0.0)
    if cutoff <= 0:
        return None
    reduced = structure.get_reduced_structure("LLL")  # a skewed sampled cell would need many images
    order = [site.specie.symbol for site in reduced]
    # every pair within the cutoff, coincident atoms included (numerical_tol 0); an atom is
    # dropped only against itself in the same cell (index and image equal)
    centers, neighbours, images, distances = reduced.get_neighbor_list(cutoff, numerical_tol=0.0, exclude_self=False)
    same_cell = ~images.any(axis=1) if len(images) else images
    worst: tuple[float, Contact] | None = None
    for i, j, own, d in zip(centers.tolist(), neighbours.tolist(), same_cell.tolist(), distances.tolist()):
        if i == j and own:
            continue
        limit = min_distance_a(order[i], order[j], config)
        if d < limit and (worst is None or d / limit < worst[0]):
            worst = (d / limit, Contact(order[i], order[j], d, limit, i == j))
    return None if worst is None else worst[1]


def sanity_reason(structure, config: SanityConfig) -> str | None:
    """Why ``structure`` (an ordered pymatgen Structure) is not physical, or None when it passes.

    The volume per atom is checked first, then the shortest distances (module docstring).
    """
    import math

    n = len(structure)
    if n == 0:
        return "the structure has no atoms"
    per_atom = float(structure.volume) / n
    if not math.isfinite(per_atom) or not (
        config.min_volume_per_atom_a3 <= per_atom <= config.max_volume_per_atom_a3
    ):
        return (f"volume per atom {per_atom:.3g} Å^3/atom is outside [{config.min_volume_per_atom_a3:g}, "
                f"{config.max_volume_per_atom_a3:g}] Å^3/atom")
    contact = closest_contact(structure, config)
    if contact is None:
        return None
    a, b = contact.symbol_a, contact.symbol_b
    what = (f"a {a} atom is {contact.distance_a:.3g} Å from its own periodic image" if contact.self_image
            else f"atoms too close: {a}-{b} {contact.distance_a:.3g} Å apart")
    return f"{what}, below {_threshold_text(a, b, config)}"
