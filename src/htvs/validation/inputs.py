"""Structures accepted by stage 7, and the MD supercell made from them.

A structure to validate must be a readable, ordered, Li-containing crystal with finite
coordinates; oxidation states are dropped (CHGNet and Nernst–Einstein count Li as an element).
"""

from __future__ import annotations

import math
from pathlib import Path

from pymatgen.core import Structure

from htvs.errors import InvalidInput
from htvs.validation.config import SupercellConfig

LI = "Li"


def structure_from_cif_text(text: str, name: str = "CIF", max_sites: int | None = None) -> Structure:
    """The (single) structure of a CIF, checked with :func:`check_structure`.

    Args:
        text: the CIF.
        name: how messages name it.
        max_sites: most sites the structure may have (default
            :data:`~htvs.prototypes.readers.DEFAULT_MAX_SITES`); a CIF whose symmetry
            expansion would exceed it is refused before pymatgen expands it, so an oversized
            input costs milliseconds, not the seconds of building it.

    Raises:
        InvalidInput: unreadable CIF, several structures, more than ``max_sites`` sites,
            disorder (with the reason), no Li, a refused cell; the message names ``name``.
    """
    from htvs.prototypes.readers import parse_cif

    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{name}: empty CIF")
    try:
        structures = parse_cif(text, max_sites)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc}") from exc
    if len(structures) != 1:
        raise InvalidInput(f"{name}: the CIF holds {len(structures)} structures; give one per file")
    return check_structure(structures[0], name)


def read_structure_file(path: str | Path, max_sites: int | None = None) -> Structure:
    """A structure from a CIF file (see :func:`structure_from_cif_text`, also for ``max_sites``).

    Raises:
        InvalidInput: the file is missing, unreadable, or its structure is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"structure file {str(path)!r} does not exist")
    if path.suffix.lower() != ".cif":
        raise InvalidInput(f"structure file {path.name!r}: expected a .cif file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc
    return structure_from_cif_text(text, path.name, max_sites)


def check_structure(structure: Structure, name: str = "structure") -> Structure:
    """An element-only copy of ``structure`` after checking it can be validated.

    Raises:
        InvalidInput: disordered (the reason lists the mixed/partial sites), no Li, Li only,
            empty, dummy species, or a cell :func:`~htvs.prototypes.readers.check_cell` refuses
            (non-finite, lattice length outside 0.5-1000 Å, under 1 Å^3 per site).
    """
    from htvs.prototypes.filters import disorder_reason, element_structure
    from htvs.prototypes.readers import check_cell

    if len(structure) == 0:
        raise InvalidInput(f"{name}: the structure has no sites")
    try:
        check_cell(structure)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc}") from exc
    if not structure.is_ordered:
        raise InvalidInput(
            f"{name}: {disorder_reason(structure)}; stage 7 needs an ordered structure "
            "(order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation)"
        )
    try:
        plain = element_structure(structure)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc}") from exc
    symbols = {site.specie.symbol for site in plain}
    if LI not in symbols:
        raise InvalidInput(f"{name}: {plain.composition.reduced_formula} contains no Li; nothing to validate")
    if symbols == {LI}:
        raise InvalidInput(f"{name}: the structure is Li metal; give a Li compound")
    return plain


def supercell_matrix(structure: Structure, config: SupercellConfig) -> tuple[int, int, int]:
    """Repetitions along a, b, c so that each vector is >= ``min_length`` and >= ``min_atoms``.

    Raises:
        InvalidInput: the resulting cell (or the input cell) exceeds ``max_atoms``.
    """
    lengths = structure.lattice.abc
    reps = [max(1, math.ceil(config.min_length_angstrom / length - 1e-9)) for length in lengths]
    n_atoms = len(structure)
    while n_atoms * math.prod(reps) < config.min_atoms:
        shortest = min(range(3), key=lambda i: (reps[i] * lengths[i], i))
        reps[shortest] *= 2
    total = n_atoms * math.prod(reps)
    if total > config.max_atoms:
        raise InvalidInput(
            f"the MD supercell {reps[0]}x{reps[1]}x{reps[2]} of this {n_atoms}-atom cell "
            f"(lattice {lengths[0]:.2f}, {lengths[1]:.2f}, {lengths[2]:.2f} Å; min length "
            f"{config.min_length_angstrom:g} Å, min atoms {config.min_atoms}) has {total} atoms, "
            f"more than max atoms {config.max_atoms}; lower the min supercell length or raise max atoms"
        )
    return reps[0], reps[1], reps[2]


def make_supercell(structure: Structure, config: SupercellConfig) -> Structure:
    """The MD supercell of ``structure`` (see :func:`supercell_matrix`)."""
    reps = supercell_matrix(structure, config)
    return structure * reps if reps != (1, 1, 1) else structure.copy()
