"""Composition features of the synthesizability model (no structure needed).

A composition is described by fraction-weighted statistics of the bundled matscholar200 element
embedding (mean, standard deviation, minimum and maximum over its elements, 200 numbers each)
and a few stoichiometry numbers (number of elements, largest and smallest atomic fraction, Li
fraction, the 2-, 3-, 5- and 10-norms of the fractions, and the mixing entropy -sum x ln x).
All depend on the atomic fractions only, so ``Li2O`` and ``Li4O2`` are one composition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from htvs.errors import DataNotFound

#: The element embedding the features are built from (``htvs.datasets.element_embedding_table``).
EMBEDDING = "matscholar200"
#: Width of one element vector of :data:`EMBEDDING`.
EMBEDDING_WIDTH = 200
#: Names of the stoichiometry features, in column order (after the embedding statistics).
STOICHIOMETRY_FEATURES = (
    "n_elements", "max_fraction", "min_fraction", "li_fraction",
    "norm_2", "norm_3", "norm_5", "norm_10", "mixing_entropy",
)  # fmt: skip
#: The embedding statistics, in column order, each :data:`EMBEDDING_WIDTH` columns wide.
EMBEDDING_STATISTICS = ("mean", "std", "min", "max")
#: Number of feature columns.
N_FEATURES = len(EMBEDDING_STATISTICS) * EMBEDDING_WIDTH + len(STOICHIOMETRY_FEATURES)


def feature_names() -> list[str]:
    """Column names of :func:`composition_features` (``emb_mean_0`` ... then the stoichiometry)."""
    names = [f"emb_{stat}_{i}" for stat in EMBEDDING_STATISTICS for i in range(EMBEDDING_WIDTH)]
    return [*names, *STOICHIOMETRY_FEATURES]


def embedding_matrix() -> tuple[dict[str, int], np.ndarray]:
    """Element symbol -> row, and the (elements, 200) float64 matrix of the embedding."""
    from htvs.datasets import element_embedding_table

    table = element_embedding_table(EMBEDDING)
    symbols = sorted(table)
    return {s: i for i, s in enumerate(symbols)}, np.asarray([table[s] for s in symbols], dtype=np.float64)


def fraction_key(amounts: Mapping[str, float], digits: int = 6) -> str:
    """A text key of a composition's atomic fractions (equal for Li2O and Li4O2), for deduplication."""
    total = float(sum(amounts.values()))
    return " ".join(f"{el}{amounts[el] / total:.{digits}f}" for el in sorted(amounts))


def missing_elements(amounts: Mapping[str, float], rows: Mapping[str, int]) -> list[str]:
    """The elements of ``amounts`` that have no embedding row, sorted."""
    return sorted(el for el in amounts if el not in rows)


def composition_features(
    compositions: Sequence[Mapping[str, float]],
    rows: Mapping[str, int] | None = None,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """The (n, :data:`N_FEATURES`) float64 feature matrix of ``compositions`` (element -> amount).

    Args:
        compositions: element symbol -> positive amount (any scale), one mapping per row.
        rows, matrix: the embedding (:func:`embedding_matrix`); read when not given.

    Raises:
        DataNotFound: a composition holds an element without an embedding (the message names
            the element and the composition), or has no atoms.
    """
    if rows is None or matrix is None:
        rows, matrix = embedding_matrix()
    out = np.empty((len(compositions), N_FEATURES), dtype=np.float64)
    width = EMBEDDING_WIDTH
    for i, amounts in enumerate(compositions):
        missing = missing_elements(amounts, rows)
        if missing:
            raise DataNotFound(
                f"no {EMBEDDING} embedding for element {', '.join(missing)} (composition {dict(amounts)})"
            )
        symbols = list(amounts)
        weights = np.asarray([float(amounts[s]) for s in symbols], dtype=np.float64)
        total = weights.sum()
        if not np.isfinite(total) or total <= 0 or (weights <= 0).any():
            raise DataNotFound(f"composition {dict(amounts)} has no positive amounts")
        x = weights / total
        vectors = matrix[[rows[s] for s in symbols]]
        mean = x @ vectors
        std = np.sqrt(np.maximum(x @ (vectors - mean) ** 2, 0.0))
        out[i, 0:width] = mean
        out[i, width : 2 * width] = std
        out[i, 2 * width : 3 * width] = vectors.min(axis=0)
        out[i, 3 * width : 4 * width] = vectors.max(axis=0)
        stoich = 4 * width
        out[i, stoich + 0] = len(symbols)
        out[i, stoich + 1] = x.max()
        out[i, stoich + 2] = x.min()
        out[i, stoich + 3] = float(x[symbols.index("Li")]) if "Li" in symbols else 0.0
        for j, p in enumerate((2, 3, 5, 10)):
            out[i, stoich + 4 + j] = float((x**p).sum() ** (1.0 / p))
        out[i, stoich + 8] = float(-(x * np.log(x)).sum())
    return out
