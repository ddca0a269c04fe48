"""A crude volume estimate for substituted cells from Shannon ionic radii.

A substituted cell keeps its prototype's fractional positions; only the lattice is scaled,
isotropically, by the ratio of the summed cubed radii of the new and the old species
(``sum r_new^3 / sum r_old^3`` over all sites, Li included on both sides).

Which radius an element gets depends on the *role* of the site it occupies: the prototype's
oxidation states (``Composition.oxi_state_guesses``, once per prototype) say whether a site is
a cation or an anion site and its charge, and the new element takes the Shannon radius
(pymatgen's ``Element.ionic_radii``) of its oxidation state of the same sign closest to that
charge (ties: the larger magnitude). Where the element has no radius of that sign, its
``atomic_radius`` is used. The sign matters: pymatgen's ``Element.average_ionic_radius``
averages over all oxidation states, which makes S (0.88 Å: S2-, S4+, S6+) smaller than
O (1.26 Å) and F (0.71 Å) smaller than Li (0.90 Å), so an oxide -> sulfide substitution would
*shrink* the cell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import lru_cache

from pymatgen.core import Composition, Element

from htvs.errors import DataNotFound, InvalidInput


@lru_cache(maxsize=4096)
def site_radius(symbol: str, charge: float) -> float:
    """Radius (Å) of element ``symbol`` on a site of formal charge ``charge``.

    Args:
        symbol: element symbol.
        charge: the site's (possibly fractional) oxidation state in the prototype; 0 means
            "no ionic role" and gives the atomic radius.

    Raises:
        InvalidInput: ``symbol`` is not an element symbol.
        DataNotFound: pymatgen has neither an ionic radius of that sign nor an atomic radius.
    """
    if not Element.is_valid_symbol(symbol):
        raise InvalidInput(f"{symbol!r} is not an element symbol")
    element = Element(symbol)
    if charge != 0:
        candidates = [
            (abs(oxi - charge), -abs(oxi), float(radius))
            for oxi, radius in element.ionic_radii.items()
            if oxi * charge > 0 and radius > 0
        ]
        if candidates:
            return min(candidates)[2]
    atomic = element.atomic_radius
    if atomic is None or not float(atomic) > 0:
        raise DataNotFound(
            f"pymatgen has no ionic (charge {charge:+g}) or atomic radius for {symbol}"
        )
    return float(atomic)


def site_charges(amounts: Mapping[str, float]) -> dict[str, float]:
    """Formal charge of each element of a composition (the role its sites play).

    The first guess of ``Composition.oxi_state_guesses`` (charge-balanced, most probable by
    the ICSD statistics pymatgen ships). Without a charge-balanced guess, the most
    electronegative element is taken as the anion (-1) and every other element as a cation
    (+1), which only fixes the sign.

    Args:
        amounts: element symbol -> atoms in the cell.
    """
    composition = Composition(dict(amounts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = composition.oxi_state_guesses(max_sites=-1)
    if guesses:
        return {symbol: float(guesses[0].get(symbol, 0.0)) for symbol in amounts}

    def electronegativity(symbol: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = Element(symbol).X
        return -math.inf if math.isnan(x) else float(x)

    anion = max(amounts, key=electronegativity)
    return {symbol: (-1.0 if symbol == anion else 1.0) for symbol in amounts}


def volume_ratio(
    amounts: Mapping[str, int], charges: Mapping[str, float], replacement: Mapping[str, str]
) -> float:
    """Estimated volume of the substituted cell over the prototype's (dimensionless).

    Args:
        amounts: prototype element symbol -> atoms in the cell.
        charges: prototype element symbol -> formal charge (see :func:`site_charges`).
        replacement: prototype symbol -> new symbol (species not listed keep their element).

    Raises:
        InvalidInput, DataNotFound: see :func:`site_radius`.
    """
    old = 0.0
    new = 0.0
    for symbol, count in amounts.items():
        charge = charges[symbol]
        old += count * site_radius(symbol, charge) ** 3
        new += count * site_radius(replacement.get(symbol, symbol), charge) ** 3
    return new / old
