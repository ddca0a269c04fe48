"""Thermodynamic screening: the reference convex hull, energies above it and Li windows.

Typical use::

    from htvs.thermo import ReferenceHull, e_above_hull_many, electrochemical_windows

    hull = ReferenceHull.bundled()            # MP formation energies, indexed once
    hull_rows = e_above_hull_many(hull, ["Li3PS4"], [-1.2657])
    windows = electrochemical_windows(hull, ["Li3PS4", "Li7La3Zr2O12"])

Energies are formation energies in eV/atom relative to the elements (0 eV/atom); potentials
are in V vs Li/Li+. A bad row comes back as an :class:`htvs.errors.RowError` in its place.
Nothing is loaded at import.
"""

from __future__ import annotations

from htvs.thermo.facets import FacetModel
from htvs.thermo.hull import HullResult, ReferenceHull, e_above_hull, e_above_hull_many
from htvs.thermo.window import WindowResult, electrochemical_window, electrochemical_windows

__all__ = [
    "FacetModel",
    "HullResult",
    "ReferenceHull",
    "WindowResult",
    "e_above_hull",
    "e_above_hull_many",
    "electrochemical_window",
    "electrochemical_windows",
]
