"""Materializing substituted structures (first half of funnel stage 4).

Stage 1 only enumerates substitutions as table rows (``substitutions.parquet``: ``prototype_id``,
``from_j``/``to_j`` species pairs, ``formula``); structures are built here, and only for the
formulas that survived composition screening (:func:`select_for_survivors`).

A substituted structure is its prototype with every substituted species replaced on the same
fractional positions. By default the lattice is also scaled isotropically by a volume estimate
from ionic radii (:mod:`htvs.structures.radii`): without it, a cell whose O sites became Te or
whose P became Pb starts far from its equilibrium volume, which misleads anything that reads
distances before relaxation (neighbour graphs, the conductivity model) and slows the later
relaxation. This is a crude estimate: the seed paper kept the prototype's positions and lattice
and left everything to relaxation, which still has to fix cell shape and positions;
``VolumeRescaling.NONE`` reproduces the paper's choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
from pymatgen.core import Element, Lattice, Structure

from htvs.errors import HTVSError, InvalidInput, RowError
from htvs.prototypes.records import Prototype
from htvs.structures.radii import site_charges, volume_ratio
from htvs.structures.records import MaterializedStructure, substitution_id

_PAIR_COLUMN = re.compile(r"^from_(\d+)$")


class VolumeRescaling(str, Enum):
    """How the substituted cell's lattice is set.

    ``NONE``: the prototype's lattice unchanged (the seed paper's choice).
    ``IONIC_RADII``: scaled isotropically so the volume changes by
    ``sum r_new^3 / sum r_old^3`` (role-aware Shannon radii, see :mod:`htvs.structures.radii`).
    """

    NONE = "none"
    IONIC_RADII = "ionic_radii"


@dataclass(frozen=True)
class MaterializeConfig:
    """Settings of materialization.

    Attributes:
        rescale_volume: see :class:`VolumeRescaling` (default: ionic radii).
        check_formula: when the table has a ``formula`` column, a row whose materialized
            structure has another reduced formula is an error (catches tables written against
            a different prototype set).
    """

    rescale_volume: VolumeRescaling = VolumeRescaling.IONIC_RADII
    check_formula: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rescale_volume", VolumeRescaling(self.rescale_volume))
        except ValueError as e:
            allowed = ", ".join(repr(v.value) for v in VolumeRescaling)
            raise InvalidInput(
                f"rescale_volume must be one of {allowed}, got {self.rescale_volume!r}"
            ) from e


def select_for_survivors(
    substitutions: pd.DataFrame, surviving_formulas: Iterable[str]
) -> pd.DataFrame:
    """The substitution rows whose formula survived composition screening (stage 3).

    Args:
        substitutions: stage 1's table (``formula`` column; categorical or plain strings).
        surviving_formulas: e.g. ``screen_result.survivors["formula"]``.

    Returns:
        The matching rows, in their original order, with their original index.
    """
    if "formula" not in substitutions.columns:
        raise InvalidInput("the substitution table has no 'formula' column")
    keep = {str(f) for f in surviving_formulas}
    return substitutions[substitutions["formula"].astype(str).isin(keep)]


@dataclass(frozen=True)
class _Template:
    """What materialization needs of one prototype, computed once."""

    matrix: np.ndarray
    frac_coords: np.ndarray
    symbols: tuple[str, ...]
    amounts: dict[str, int]
    charges: dict[str, float] | None


def _pair_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = []
    for column in table.columns:
        match = _PAIR_COLUMN.match(str(column))
        if match:
            to_column = f"to_{match.group(1)}"
            if to_column not in table.columns:
                raise InvalidInput(f"the substitution table has {column!r} but no {to_column!r}")
            pairs.append((int(match.group(1)), column, to_column))
    if "prototype_id" not in table.columns or not pairs:
        raise InvalidInput(
            "the substitution table needs a 'prototype_id' column and from_j/to_j columns, "
            f"got {list(table.columns)}"
        )
    return [(f, t) for _, f, t in sorted(pairs)]


def _column_values(table: pd.DataFrame, column: str) -> list[str | None]:
    """Column values as str, None where null (categorical columns included)."""
    values = table[column].astype(object).tolist()
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


class _Materializer:
    def __init__(self, prototypes: Mapping[str, Prototype], config: MaterializeConfig) -> None:
        self.prototypes = prototypes
        self.config = config
        self.templates: dict[str, _Template] = {}

    def template(self, prototype_id: str) -> _Template:
        template = self.templates.get(prototype_id)
        if template is None:
            prototype = self.prototypes.get(prototype_id)
            if prototype is None:
                raise InvalidInput(f"prototype {prototype_id!r} is not in the prototype set")
            structure = prototype.structure
            amounts = dict(prototype.species_amounts)
            charges = None
            if self.config.rescale_volume is VolumeRescaling.IONIC_RADII:
                charges = site_charges(amounts)
            template = _Template(
                matrix=np.array(structure.lattice.matrix),
                frac_coords=np.array(structure.frac_coords),
                symbols=tuple(site.specie.symbol for site in structure),
                amounts=amounts,
                charges=charges,
            )
            self.templates[prototype_id] = template
        return template

    def build(
        self, prototype_id: str, pairs: tuple[tuple[str, str], ...], formula: str | None
    ) -> MaterializedStructure:
        template = self.template(prototype_id)
        replacement: dict[str, str] = {}
        for old, new in pairs:
            if old not in template.amounts:
                present = "-".join(template.amounts)
                raise InvalidInput(
                    f"species {old!r} is not in prototype {prototype_id!r} (elements: {present})"
                )
            if old in replacement:
                raise InvalidInput(f"species {old!r} is substituted twice")
            if not Element.is_valid_symbol(new):
                raise InvalidInput(f"{new!r} is not an element symbol (substituting {old!r})")
            replacement[old] = new
        scale = 1.0
        if template.charges is not None:
            scale = volume_ratio(template.amounts, template.charges, replacement)
        lattice = Lattice(template.matrix * scale ** (1.0 / 3.0))
        species = [replacement.get(s, s) for s in template.symbols]
        structure = Structure(lattice, species, template.frac_coords)
        actual = structure.composition.reduced_formula
        if self.config.check_formula and formula is not None and formula != actual:
            raise InvalidInput(
                f"the row's formula {formula!r} differs from the structure's {actual!r}"
            )
        return MaterializedStructure(
            id=substitution_id(prototype_id, pairs),
            formula=actual,
            prototype_id=prototype_id,
            substitution=pairs,
            volume_scale=float(scale),
            structure=structure,
        )


def materialize(
    prototypes: Mapping[str, Prototype] | Iterable[Prototype],
    substitutions: pd.DataFrame,
    config: MaterializeConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[MaterializedStructure | RowError]:
    """Build the substituted structure of every row of a substitution table.

    Args:
        prototypes: id -> prototype (or the prototypes themselves), the set the table was
            enumerated from.
        substitutions: rows with ``prototype_id``, ``from_j``/``to_j`` (null past the
            prototype's species) and optionally ``formula`` — stage 1's
            ``substitutions.parquet``, usually narrowed by :func:`select_for_survivors`.
        config: see :class:`MaterializeConfig`.
        progress: called with the number of rows done, every 256 rows and at the end.

    Returns:
        One entry per row, in row order: a :class:`MaterializedStructure`, or a
        :class:`~htvs.errors.RowError` (``value``: the id the structure would have had, as far as
        it could be built) naming the offending value (unknown prototype id, species
        not in the prototype, unknown element symbol, formula mismatch, missing radius).

    Raises:
        InvalidInput: the table lacks the required columns (nothing can be materialized).
    """
    config = config or MaterializeConfig()
    if not isinstance(prototypes, Mapping):
        prototypes = {p.id: p for p in prototypes}
    pair_columns = _pair_columns(substitutions)
    proto_ids = _column_values(substitutions, "prototype_id")
    pair_values = [
        (_column_values(substitutions, f), _column_values(substitutions, t))
        for f, t in pair_columns
    ]
    formulas = (
        _column_values(substitutions, "formula")
        if "formula" in substitutions.columns
        else [None] * len(substitutions)
    )
    builder = _Materializer(prototypes, config)
    out: list[MaterializedStructure | RowError] = []
    for index, prototype_id in enumerate(proto_ids):
        if progress is not None and index % 256 == 0:
            progress(index)
        pairs = tuple(
            (froms[index] or "", tos[index] or "")
            for froms, tos in pair_values
            if froms[index] is not None or tos[index] is not None
        )
        proto = prototype_id if prototype_id is not None else ""
        try:
            if prototype_id is None:
                raise InvalidInput("the row has no prototype_id")
            incomplete = [f"{a or '?'}:{b or '?'}" for a, b in pairs if not a or not b]
            if incomplete:
                raise InvalidInput(f"incomplete species pair(s) {', '.join(incomplete)}")
            out.append(builder.build(prototype_id, pairs, formulas[index]))
        except HTVSError as e:
            out.append(RowError.of(index, substitution_id(proto, pairs), e))
    if progress is not None:
        progress(len(out))
    return out


def split_results(
    results: Iterable[MaterializedStructure | RowError],
) -> tuple[list[MaterializedStructure], list[RowError]]:
    """Separate :func:`materialize`'s output into structures and errors."""
    structures: list[MaterializedStructure] = []
    errors: list[RowError] = []
    for item in results:
        if isinstance(item, RowError):
            errors.append(item)
        else:
            structures.append(item)
    return structures, errors
