"""Removing duplicate structures with pymatgen's ``StructureMatcher`` (second half of stage 4).

Two substitutions can give the same crystal: different prototypes of one structure type, or
one prototype whose two equivalent species were swapped. Duplicates are found with
``StructureMatcher.fit`` and removed greedily: structures are taken in input order, each is
compared with the representatives found so far (of its group) and joins the first it matches,
or becomes a representative. This is the grouping of ``StructureMatcher.group_structures``;
``fit`` is neither symmetric nor transitive, so the result depends on the input order (the
representative is always the earlier structure, passed as ``fit``'s first argument).

What keeps the number of comparisons small is *pre-grouping* by keys that two matching
structures must share, so that only structures with equal keys are compared:

* **reduced formula** — always; ``fit`` returns False for different compositions (its
  comparator's hash). A formula with one structure needs no reduction and no comparison.
* **number of sites of the reduced cell** (primitive cell with ``primitive_cell=True``) —
  on by default. ``fit`` reduces both structures (Niggli, then primitive) and, without
  ``attempt_supercell``, rejects cells of different site counts before any lattice search,
  so the key is *safe*: it never separates two structures ``fit`` would match. With
  ``attempt_supercell=True`` it is not safe and is not applied.
* **space group** (spglib through ``SpacegroupAnalyzer`` on the reduced cell, ``symprec``
  0.1 Å, angle tolerance 5°) — *off* by default, because it is not safe: ``fit`` matches
  within ``ltol``/``stol``/``angle_tol`` (20 % lengths, 0.3 of the mean free length per atom,
  5°), so a slightly distorted copy of a structure (a lower-symmetry subgroup at ``symprec``)
  still matches it, while spglib puts the two in different space groups. Turn it on only to
  trade a few missed duplicates for speed.

Structures are reduced once each (the same reduction ``fit`` does,
``StructureMatcher._get_reduced_structure``) and compared with
``fit(..., skip_structure_reduction=True)``, so the outcome is that of calling ``fit`` on the
original structures.

With the prototypes at hand, the reduction is done **once per prototype**: a substitution that
maps the prototype's species one-to-one onto distinct elements (the paper's rule always does)
and scales the cell uniformly has, as its reduced cell, the prototype's reduced cell with the
species renamed and the lattice scaled — the primitive-cell search (the costly part, O(n^2) in
the sites) sees the same translations whatever the species are called. Only the site order can
differ, which ``fit`` ignores (tested against the direct reduction). And two such substitutions
of *different* prototypes are compared only if the prototypes' frameworks match (a
species-blind ``fit``, memoized per pair of prototypes): a species-aware match implies a
framework match, so this skips only comparisons that must fail.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import IStructure, Structure

from htvs.errors import InvalidInput, RowError
from htvs.prototypes.filters import disorder_reason
from htvs.prototypes.records import Prototype
from htvs.errors import shown
from htvs.ranges import Range
from htvs.structures.records import MaterializedStructure

#: What :func:`deduplicate` accepts: a materialized structure or an ``(id, structure)`` pair.
DedupeItem = Union[MaterializedStructure, tuple[str, Structure]]


#: Allowed ranges of :class:`DedupeConfig`'s tolerances (pymatgen accepts more, but an ``ltol``
#: far above 1 fails inside the matcher and wider ones match unrelated structures).
DEDUPE_RANGES: dict[str, Range] = {
    "ltol": Range(0.0, 1.0, low_open=True),  # fraction of each lattice length
    "stol": Range(0.0, 1.0, low_open=True),  # fraction of (V / n_sites)^(1/3)
    "angle_tol": Range(0.0, 30.0, "degrees", low_open=True),
    "symprec": Range(0.0, 1.0, "Å", low_open=True),
    "spglib_angle_tolerance": Range(0.0, 30.0, "degrees", low_open=True),
}


@dataclass(frozen=True)
class DedupeConfig:
    """Settings of deduplication.

    The matcher tolerances are pymatgen's defaults (also those of the Materials Project's
    own duplicate checks): ``ltol`` 0.2 (fractional lattice-length tolerance), ``stol`` 0.3
    (site tolerance, in units of the mean free length per atom ``(V / n_sites)^(1/3)``),
    ``angle_tol`` 5°. Cells are reduced to primitive cells and scaled to equal volume before
    comparison (so a volume-rescaled copy still matches); ``attempt_supercell`` is off, so a
    structure never matches a supercell of another with a different primitive cell.

    Attributes:
        ltol, stol, angle_tol, primitive_cell, scale, attempt_supercell: ``StructureMatcher``'s.
        group_by_site_count: compare only structures whose reduced cells have equal site
            counts (safe; ignored when ``attempt_supercell``).
        group_by_space_group: compare only structures of equal spglib space group (unsafe,
            see the module docstring; off).
        symprec: spglib's distance tolerance, Å (only for ``group_by_space_group``).
        spglib_angle_tolerance: spglib's angle tolerance, degrees (idem).

    A tolerance outside :data:`DEDUPE_RANGES` raises InvalidInput naming it and its range.
    """

    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    primitive_cell: bool = True
    scale: bool = True
    attempt_supercell: bool = False
    group_by_site_count: bool = True
    group_by_space_group: bool = False
    symprec: float = 0.1
    spglib_angle_tolerance: float = 5.0

    def __post_init__(self) -> None:
        for name, allowed in DEDUPE_RANGES.items():
            allowed.check(name, getattr(self, name))
        for name in ("primitive_cell", "scale", "attempt_supercell", "group_by_site_count", "group_by_space_group"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInput(f"{name} must be true or false, got {shown(getattr(self, name))}")

    def matcher(self, framework: bool = False) -> StructureMatcher:
        """The ``StructureMatcher`` these settings describe (pymatgen's default species
        comparator); ``framework``: species ignored (``FrameworkComparator``)."""
        from pymatgen.analysis.structure_matcher import FrameworkComparator

        extra = {"comparator": FrameworkComparator()} if framework else {}
        return StructureMatcher(
            ltol=self.ltol,
            stol=self.stol,
            angle_tol=self.angle_tol,
            primitive_cell=self.primitive_cell,
            scale=self.scale,
            attempt_supercell=self.attempt_supercell,
            **extra,
        )

    @property
    def uses_site_count_key(self) -> bool:
        return self.group_by_site_count and not self.attempt_supercell


@dataclass(frozen=True)
class DedupeResult:
    """Unique structures and what was merged into them.

    Attributes:
        unique: one representative per distinct structure, in input order (the items given).
        duplicate_of: id of each removed structure -> id of its representative.
        refused: structures not compared (disordered, empty, non-finite, duplicate id), as
            :class:`~htvs.errors.RowError` (``index``: position in the input, ``value``: the id).
        n_in: structures given (refused ones included).
        n_comparisons: ``StructureMatcher.fit`` calls made.
        n_groups: comparison groups (formula and, if used, keys) with at least one structure.
        timings: seconds spent reducing cells (``reduce_s``) and matching (``match_s``).
    """

    unique: tuple[DedupeItem, ...]
    duplicate_of: dict[str, str]
    refused: tuple[RowError, ...]
    n_in: int
    n_comparisons: int
    n_groups: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        return len(self.unique)

    @property
    def n_removed(self) -> int:
        return len(self.duplicate_of)

    @property
    def unique_ids(self) -> list[str]:
        return [_item_id(item) for item in self.unique]

    def members(self) -> dict[str, list[str]]:
        """Representative id -> ids of its group (itself first, then duplicates in order)."""
        groups = {rep: [rep] for rep in self.unique_ids}
        for dup, rep in self.duplicate_of.items():
            groups[rep].append(dup)
        return groups

    def counts(self) -> dict[str, int]:
        """``in``, ``out``, ``removed``, ``refused`` and ``comparisons``."""
        return {
            "in": self.n_in,
            "out": self.n_out,
            "removed": self.n_removed,
            "refused": len(self.refused),
            "comparisons": self.n_comparisons,
        }


@dataclass
class PrototypeCache:
    """Per-prototype work kept across :func:`deduplicate` calls on one prototype set and one
    :class:`DedupeConfig` (e.g. the parts of a campaign's stage 4): reduced cells by prototype
    id, framework matches by ordered pair of ids."""

    reduced: dict[str, Structure] = field(default_factory=dict)
    frameworks: dict[tuple[str, str], bool] = field(default_factory=dict)


class _Reducer:
    """The reduced cell ``fit`` would use, once per prototype where the item allows it."""

    def __init__(self, config: DedupeConfig, prototypes: Mapping[str, Prototype] | None,
                 cache: PrototypeCache | None = None) -> None:
        self.config, self.prototypes = config, prototypes
        self.matcher = config.matcher()
        self._framework_matcher: StructureMatcher | None = None
        cache = cache if cache is not None else PrototypeCache()
        self.cache = cache.reduced
        self.frameworks = cache.frameworks
        self.relabelled: set[str] = set()  # ids of the items reduced through their prototype

    def _reduce(self, structure: Structure) -> Structure:
        return self.matcher._get_reduced_structure(  # noqa: SLF001 - the reduction fit uses
            structure, self.config.primitive_cell, niggli=True
        )

    def __call__(self, item: DedupeItem) -> Structure:
        mapping = self._relabelling(item)
        if mapping is None:
            return self._reduce(_item_structure(item))  # type: ignore[arg-type]
        assert isinstance(item, MaterializedStructure)
        self.relabelled.add(item.id)
        base = self._base(item.prototype_id)
        cell = base.copy()
        cell.replace_species(mapping)
        if item.volume_scale != 1.0:
            cell.scale_lattice(base.volume * item.volume_scale)
        return cell

    def frameworks_may_match(self, first: DedupeItem, second: DedupeItem) -> bool:
        """False only when ``fit(first, second)`` must be False: both were reduced through their
        prototypes (one-to-one substitutions) and the prototypes' frameworks (species ignored)
        do not match.

        A species-aware match is also a framework match, and a one-to-one substitution has its
        prototype's framework (same reduced cell up to a uniform scale, which ``scale=True``
        removes), so the prototypes' framework match (memoized per ordered pair) decides.
        """
        if _item_id(first) not in self.relabelled or _item_id(second) not in self.relabelled:
            return True
        assert isinstance(first, MaterializedStructure) and isinstance(second, MaterializedStructure)
        pair = (first.prototype_id, second.prototype_id)
        if pair[0] == pair[1]:
            return True
        known = self.frameworks.get(pair)
        if known is None:
            if self._framework_matcher is None:
                self._framework_matcher = self.config.matcher(framework=True)
            known = self.frameworks[pair] = bool(self._framework_matcher.fit(
                self._base(pair[0]), self._base(pair[1]), skip_structure_reduction=True
            ))
        return known

    def _base(self, prototype_id: str) -> Structure:
        assert self.prototypes is not None
        base = self.cache.get(prototype_id)
        if base is None:
            base = self.cache[prototype_id] = self._reduce(self.prototypes[prototype_id].structure)
        return base

    def _relabelling(self, item: DedupeItem) -> dict[str, str] | None:
        """Prototype species -> element of a one-to-one substitution, or None (reduce directly)."""
        if self.prototypes is None or not isinstance(item, MaterializedStructure):
            return None
        prototype = self.prototypes.get(item.prototype_id)
        if prototype is None:
            return None
        pairs = dict(item.substitution)
        mapping = {species: pairs.get(species, species) for species in prototype.species_amounts}
        if len(set(mapping.values())) != len(mapping) or set(pairs) - set(mapping):
            return None
        if len(item.structure) != len(prototype.structure):
            return None
        return mapping


def _item_id(item: DedupeItem) -> str:
    return item.id if isinstance(item, MaterializedStructure) else item[0]


def _item_structure(item: DedupeItem) -> object:
    return item.structure if isinstance(item, MaterializedStructure) else item[1]


def _refusal(structure: object) -> str | None:
    if not isinstance(structure, (Structure, IStructure)):
        return f"not a pymatgen Structure ({type(structure).__name__})"
    if len(structure) == 0:
        return "the structure has no sites"
    if not structure.is_ordered:
        return disorder_reason(structure) + " (only ordered structures are deduplicated)"
    if not np.all(np.isfinite(structure.frac_coords)) or not np.all(
        np.isfinite(structure.lattice.matrix)
    ):
        return "non-finite lattice or coordinates"
    if not structure.volume > 0:
        return f"non-positive cell volume {structure.volume!r}"
    return None


def _formula_groups(
    items: Sequence[DedupeItem],
) -> tuple[dict[str, list[int]], list[RowError]]:
    """Indices of the valid items by reduced formula (input order), and the refused items."""
    groups: dict[str, list[int]] = {}
    refused: list[RowError] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            item_id = _item_id(item)
            structure = _item_structure(item)
        except (TypeError, IndexError, AttributeError):
            reason = f"not an (id, structure) pair: {item!r:.80}"
            refused.append(RowError(index, "", reason, "InvalidInput"))
            continue
        reason = _refusal(structure)
        if reason is None and item_id in seen:
            reason = f"duplicate id {item_id!r}"
        if reason is not None:
            refused.append(RowError(index, str(item_id), reason, "InvalidInput"))
            continue
        seen.add(item_id)
        formula = structure.composition.reduced_formula  # type: ignore[union-attr]
        groups.setdefault(formula, []).append(index)
    return groups, refused


def _space_group(structure: Structure, config: DedupeConfig) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():  # spglib's deprecation notice about its error handling
            warnings.simplefilter("ignore", DeprecationWarning)
            analyzer = SpacegroupAnalyzer(
                structure, symprec=config.symprec, angle_tolerance=config.spglib_angle_tolerance
            )
            return int(analyzer.get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib failures: compare with the other failures only
        return 0


def _greedy(
    indices: list[int], matches: Callable[[int, int], bool]
) -> tuple[list[int], dict[int, int], int]:
    """Greedy grouping in order: (representatives, duplicate -> representative, comparisons)."""
    reps: list[int] = []
    dup: dict[int, int] = {}
    n = 0
    for i in indices:
        for r in reps:
            n += 1
            if matches(r, i):
                dup[i] = r
                break
        else:
            reps.append(i)
    return reps, dup, n


def _result(
    items: Sequence[DedupeItem],
    reps: set[int],
    dup: dict[int, int],
    refused: list[RowError],
    n_comparisons: int,
    n_groups: int,
    timings: dict[str, float],
) -> DedupeResult:
    return DedupeResult(
        unique=tuple(items[i] for i in sorted(reps)),
        duplicate_of={_item_id(items[d]): _item_id(items[r]) for d, r in sorted(dup.items())},
        refused=tuple(refused),
        n_in=len(items),
        n_comparisons=n_comparisons,
        n_groups=n_groups,
        timings=timings,
    )


def deduplicate(
    structures: Iterable[DedupeItem],
    config: DedupeConfig | None = None,
    progress: Callable[[int], None] | None = None,
    prototypes: Mapping[str, Prototype] | None = None,
    cache: PrototypeCache | None = None,
) -> DedupeResult:
    """Remove duplicate structures, comparing only within pre-groups (see the module docstring).

    Args:
        structures: :class:`MaterializedStructure` records or ``(id, Structure)`` pairs; ids
            must be unique. Order matters: the first of a set of duplicates is kept.
        config: see :class:`DedupeConfig`.
        progress: called with the number of structures done, after each formula group.
        prototypes: the prototypes the :class:`MaterializedStructure` items were made from, by
            id: their reduced cells are then computed once per prototype (module docstring).
        cache: per-prototype work to reuse and extend (same prototypes and config only).

    Returns:
        The representatives, the duplicate -> representative map, the refused items (each with
        its reason) and the number of ``fit`` calls.
    """
    config = config or DedupeConfig()
    items = list(structures)
    formula_groups, refused = _formula_groups(items)
    reps: set[int] = set()
    dup: dict[int, int] = {}
    n_comparisons = 0
    n_groups = 0
    reduce_s = match_s = 0.0
    reducer = _Reducer(config, prototypes, cache)
    matcher = reducer.matcher
    done = len(refused)
    for indices in formula_groups.values():
        if progress is not None:
            progress(done)
        done += len(indices)
        if len(indices) == 1:
            reps.add(indices[0])
            n_groups += 1
            continue
        t0 = time.perf_counter()
        reduced: dict[int, Structure] = {}
        subgroups: dict[tuple[int, ...], list[int]] = {}
        for i in indices:
            try:
                cell = reducer(items[i])
            except Exception as e:  # noqa: BLE001 - pymatgen raises ValueError, LinAlgError, ...
                reason = f"cell reduction failed: {type(e).__name__}: {e}"
                refused.append(RowError(i, _item_id(items[i]), reason, "InvalidInput"))
                continue
            reduced[i] = cell
            key: tuple[int, ...] = ()
            if config.uses_site_count_key:
                key += (len(cell),)
            if config.group_by_space_group:
                key += (_space_group(cell, config),)
            subgroups.setdefault(key, []).append(i)
        t1 = time.perf_counter()

        def matches(r: int, i: int) -> bool:
            if not reducer.frameworks_may_match(items[r], items[i]):
                return False
            return bool(matcher.fit(reduced[r], reduced[i], skip_structure_reduction=True))

        for members in subgroups.values():
            group_reps, group_dup, n = _greedy(members, matches)
            reps.update(group_reps)
            dup.update(group_dup)
            n_comparisons += n
            n_groups += 1
        reduce_s += t1 - t0
        match_s += time.perf_counter() - t1
    if progress is not None:
        progress(len(items))
    refused.sort(key=lambda r: r.index)
    timings = {"reduce_s": reduce_s, "match_s": match_s}
    return _result(items, reps, dup, refused, n_comparisons, n_groups, timings)


def deduplicate_all_pairs(
    structures: Iterable[DedupeItem], config: DedupeConfig | None = None
) -> DedupeResult:
    """The naive reference: ``StructureMatcher.fit`` on every pair within each formula.

    No pre-keys, no reuse of reduced cells (each ``fit`` reduces its two structures, helped
    only by pymatgen's own cache), and no early exit: all ``n (n - 1) / 2`` pairs of each
    formula are compared, then the same greedy grouping as :func:`deduplicate` is read off
    the match matrix, so the two give identical groups. For benchmarks and tests.
    """
    config = config or DedupeConfig()
    items = list(structures)
    matcher = config.matcher()
    formula_groups, refused = _formula_groups(items)
    reps: set[int] = set()
    dup: dict[int, int] = {}
    n_comparisons = 0
    t0 = time.perf_counter()
    for indices in formula_groups.values():
        fits: dict[tuple[int, int], bool] = {}
        for a, r in enumerate(indices):
            for i in indices[a + 1 :]:
                fits[(r, i)] = bool(
                    matcher.fit(_item_structure(items[r]), _item_structure(items[i]))
                )
                n_comparisons += 1
        group_reps, group_dup, _ = _greedy(indices, lambda r, i: fits[(r, i)])
        reps.update(group_reps)
        dup.update(group_dup)
    timings = {"reduce_s": 0.0, "match_s": time.perf_counter() - t0}
    return _result(items, reps, dup, refused, n_comparisons, len(formula_groups), timings)
