"""Vectorized pymatgen-style reduced formula strings for millions of integer compositions.

pymatgen's ``Composition(...).reduced_formula`` costs ~20 µs per call, which dominates a
paper-scale run (1.4 M unique formulas). This module reproduces its convention on arrays:
elements ordered by Pauling electronegativity (NaN last, ties by symbol), amounts divided by
their gcd with 1 omitted, the "polyanion" grouping of the two most electronegative elements
when their electronegativities differ by less than 1.65 and their amounts share a factor
(``Li(SO2)3``-style), and pymatgen's special binary formulas. ``tests/test_substitution.py``
checks it against pymatgen itself on every formula of the bundled substitution run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from pymatgen.core import Composition, Element

#: pymatgen's threshold for writing the last two elements as a polyanion group.
_POLYANION_MAX_DELTA_X = 1.65


def _electronegativity(symbol: str) -> float:
    with warnings.catch_warnings():  # pymatgen warns, then returns NaN, for noble gases etc.
        warnings.simplefilter("ignore", UserWarning)
        x = Element(symbol).X
    return float("inf") if math.isnan(x) else float(x)


def _amount_text(amount: int) -> str:
    return "" if amount == 1 else str(amount)


def reduced_formula_strings(
    element_index: np.ndarray, amount: np.ndarray, symbols: tuple[str, ...]
) -> list[str]:
    """Reduced formulas of integer compositions, equal to pymatgen's ``reduced_formula``.

    Args:
        element_index: (n, m) integer indices into ``symbols``; slots with amount 0 are unused.
        amount: (n, m) non-negative integer amounts (need not be reduced).
        symbols: element symbols indexed by ``element_index``.

    Returns:
        n formula strings.
    """
    element_index = np.asarray(element_index, dtype=np.int64)
    amount = np.asarray(amount, dtype=np.int64)
    n_rows, _ = amount.shape
    if n_rows == 0:
        return []
    x_of = np.array([_electronegativity(s) for s in symbols])
    # rank by (electronegativity, symbol), the key pymatgen sorts on
    order_of_symbol = sorted(range(len(symbols)), key=lambda i: (x_of[i], symbols[i]))
    rank = np.empty(len(symbols), dtype=np.int64)
    rank[order_of_symbol] = np.arange(len(symbols))
    used = amount > 0
    sort_key = np.where(used, rank[element_index], -1)  # unused slots sort first
    order = np.argsort(sort_key, axis=1, kind="stable")
    element_index = np.take_along_axis(element_index, order, axis=1)
    amount = np.take_along_axis(amount, order, axis=1)
    used = np.take_along_axis(used, order, axis=1)

    factor = np.gcd.reduce(amount, axis=1)
    factor[factor == 0] = 1
    amount = amount // factor[:, None]

    n_used = used.sum(axis=1)
    last_x = x_of[element_index[:, -1]]
    second_x = x_of[element_index[:, -2]] if amount.shape[1] >= 2 else last_x
    with np.errstate(invalid="ignore"):
        close = (last_x - second_x) < _POLYANION_MAX_DELTA_X  # inf - inf is NaN -> False
    poly_factor = np.gcd(amount[:, -1], amount[:, -2]) if amount.shape[1] >= 2 else factor
    polyanion = (n_used >= 3) & close & (poly_factor != 1)

    # string assembly with object-array concatenation (a C loop over Python str objects)
    symbol_text = np.array(symbols, dtype=object)
    max_amount = int(amount.max())
    amount_text = np.array([_amount_text(a) for a in range(max_amount + 1)], dtype=object)
    parts = np.where(used, symbol_text[element_index] + amount_text[amount], "")
    out_array = _concat_columns(parts)
    if polyanion.any() and amount.shape[1] >= 2:
        rows = np.flatnonzero(polyanion)
        pf = poly_factor[rows]
        head = _concat_columns(parts[rows, :-2])
        tail = (
            symbol_text[element_index[rows, -2]]
            + amount_text[amount[rows, -2] // pf]
            + symbol_text[element_index[rows, -1]]
            + amount_text[amount[rows, -1] // pf]
        )
        pf_text = np.array([str(v) for v in pf.tolist()], dtype=object)
        out_array[rows] = head + "(" + tail + ")" + pf_text
    out: list[str] = out_array.tolist()
    special = Composition.special_formulas
    binary = np.flatnonzero(n_used <= 2).tolist()
    for i in binary:
        if out[i] in special:
            out[i] = special[out[i]]
    return out


def _concat_columns(parts: np.ndarray) -> np.ndarray:
    """Row-wise concatenation of a 2-D object array of strings."""
    out = np.full(parts.shape[0], "", dtype=object)
    for column in range(parts.shape[1]):
        out = out + parts[:, column]
    return out
