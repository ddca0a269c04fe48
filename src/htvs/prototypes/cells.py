"""The checks every structure read passes: a usable cell and a bounded number of sites.

Used by every reader (:mod:`htvs.prototypes.readers`, :mod:`htvs.prototypes.structure_json`) and by
the stages that check structures they are handed (validation inputs, conductivity).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput, shown

#: Sites a reader builds at most when its caller gives no ``max_sites`` (sites per cell).
DEFAULT_MAX_SITES = 5_000
#: Largest structure text a reader accepts (characters; bytes of a file after gunzip).
MAX_TEXT_CHARS = 32_000_000
#: Range of lattice vector lengths of a readable cell (Å).
MIN_LATTICE_LENGTH_ANGSTROM = 0.5
MAX_LATTICE_LENGTH_ANGSTROM = 1000.0
#: Smallest cell volume per site of a readable cell (Å^3 per site).
MIN_VOLUME_PER_SITE_ANGSTROM3 = 1.0


def site_limit(max_sites: int | None) -> int:
    """The site limit a reader applies: ``max_sites``, or :data:`DEFAULT_MAX_SITES` for None.

    Raises:
        InvalidInput: ``max_sites`` is not a positive integer.
    """
    if max_sites is None:
        return DEFAULT_MAX_SITES
    if isinstance(max_sites, bool) or not isinstance(max_sites, (int, np.integer)) or max_sites < 1:
        raise InvalidInput(f"max_sites must be a positive integer, got {shown(max_sites)}")
    return int(max_sites)


def check_site_count(n_sites: int, max_sites: int | None, detail: str = "") -> None:
    """Refuse a structure of ``n_sites`` sites above the limit (see :func:`site_limit`).

    Raises:
        InvalidInput: naming the count and the limit (and ``detail``, how the count was
            found); the exception's ``n_sites`` attribute holds the count, so callers can tell
            a size refusal from a malformed input.
    """
    limit = site_limit(max_sites)
    if n_sites > limit:
        exc = InvalidInput(
            f"{n_sites} sites exceeds the limit of {limit} atoms per cell" + (f" ({detail})" if detail else "")
        )
        exc.n_sites = n_sites  # type: ignore[attr-defined]
        raise exc


def check_cell(structure: Structure) -> Structure:
    """``structure`` itself after checking that its cell and coordinates are usable.

    The one cell check of every structure read or validated: finite lattice and coordinates,
    lattice vector lengths within :data:`MIN_LATTICE_LENGTH_ANGSTROM` to
    :data:`MAX_LATTICE_LENGTH_ANGSTROM` Å, and a volume of at least
    :data:`MIN_VOLUME_PER_SITE_ANGSTROM3` Å^3 per site (catches subnormal or collapsed cells
    that pass a ``volume > 0`` test and divide by zero later).

    Raises:
        InvalidInput: naming the offending length or volume and the accepted range.
    """
    check_lattice(structure.lattice.matrix, len(structure))
    if len(structure) and not np.all(np.isfinite(structure.frac_coords)):
        raise InvalidInput("non-finite (NaN or infinite) coordinates: a site has non-finite coordinates")
    return structure


def check_lattice(lattice_matrix: Any, n_sites: int) -> None:
    """The lattice part of :func:`check_cell`, for a 3x3 matrix (Å) and ``n_sites`` sites."""
    matrix = np.asarray(lattice_matrix, dtype=float)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise InvalidInput("non-finite (NaN or infinite) lattice: the lattice matrix is not finite")
    scale = np.max(np.abs(matrix), axis=1)  # scaled so that subnormal lengths do not square to 0
    with np.errstate(all="ignore"):  # an overflow gives inf, refused below
        unit = np.where(scale[:, None] > 0, matrix / np.where(scale > 0, scale, 1.0)[:, None], 0.0)
        lengths = scale * np.sqrt(np.sum(unit * unit, axis=1))
    for name, length in zip("abc", lengths, strict=True):
        if not MIN_LATTICE_LENGTH_ANGSTROM <= length <= MAX_LATTICE_LENGTH_ANGSTROM:
            raise InvalidInput(
                f"lattice length {name} = {length:.4g} Å is outside the accepted "
                f"{MIN_LATTICE_LENGTH_ANGSTROM:g}-{MAX_LATTICE_LENGTH_ANGSTROM:g} Å"
            )
    with np.errstate(all="ignore"):
        volume = abs(float(np.linalg.det(matrix)))
    if not math.isfinite(volume) or volume < MIN_VOLUME_PER_SITE_ANGSTROM3 * max(n_sites, 1):
        raise InvalidInput(
            f"cell volume {volume:.4g} Å^3 for {n_sites} sites is below the minimum of "
            f"{MIN_VOLUME_PER_SITE_ANGSTROM3:g} Å^3 per site (collapsed or degenerate cell)"
        )


def clip(text: str, limit: int = 300) -> str:
    """Free text (a pymatgen error or warning) cut to about ``limit`` characters; values are
    echoed with :func:`htvs.errors.shown`."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- pymatgen JSON
