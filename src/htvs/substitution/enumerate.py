"""Vectorized enumeration of elemental substitutions and their reduction to unique formulas.

A substitution never builds a structure or a pymatgen ``Composition``: a prototype is reduced to
its *site pattern* (amount of the kept element and of each other species in the cell), the rule
gives one table of element assignments per number of substituted species, and every
substitution's reduced composition is packed into one ``uint64`` key (16 bits per element: a
6-bit pool index and a 10-bit reduced amount, slots sorted). Unique formulas are then a
``numpy.unique`` over the keys. This is what makes 26.5 M substitutions take seconds instead of
the ~10 minutes of a per-substitution ``Composition`` loop (see ``benchmarks/``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from htvs.errors import InvalidInput
from htvs.substitution.config import SubstitutionConfig, SubstitutionRule
from htvs.substitution.formula_strings import reduced_formula_strings

_AMOUNT_BITS = 10
_AMOUNT_MASK = (1 << _AMOUNT_BITS) - 1
_MAX_REDUCED_AMOUNT = _AMOUNT_MASK
_SLOT_BITS = 16
_MAX_SLOTS = 64 // _SLOT_BITS  # kept element + up to 3 substituted species per uint64 key
#: Refuse rules that would give more assignments than this per prototype (memory guard).
MAX_ASSIGNMENTS_PER_PROTOTYPE = 2_000_000
UNUSED_SLOT = 255


@dataclass(frozen=True)
class SitePattern:
    """What substitution needs of a prototype: its id and per-element atom counts in the cell.

    Attributes:
        prototype_id: identifier of the prototype.
        species_amounts: element symbol -> atoms per cell, the kept element included.
    """

    prototype_id: str
    species_amounts: dict[str, int]


@dataclass(frozen=True)
class SubstitutionResult:
    """All substitutions of a prototype set, in compact array form.

    Row ``i`` of the substitution arrays replaces species ``prototype_species[p][j]`` of
    prototype ``p = prototype_index[i]`` by ``config.element_pool[slot_elements[i, j]]``
    (``UNUSED_SLOT`` where the prototype has fewer species); its reduced formula is
    ``formulas[formula_index[i]]``.
    """

    config: SubstitutionConfig
    prototype_ids: tuple[str, ...]
    prototype_species: tuple[tuple[str, ...], ...]
    prototype_index: np.ndarray  # (n_substitutions,) int32
    slot_elements: np.ndarray  # (n_substitutions, max_species) uint8 pool indices
    formula_index: np.ndarray  # (n_substitutions,) int32
    formulas: list[str]  # (n_unique,) pymatgen reduced formulas
    multiplicity: np.ndarray  # (n_unique,) int64 substitutions giving each formula
    chemsys: list[str]  # (n_unique,) "B-Li-O-S" (sorted symbols)
    num_atoms: np.ndarray  # (n_unique,) int32 atoms per reduced formula unit

    @property
    def n_substitutions(self) -> int:
        return int(self.prototype_index.shape[0])

    @property
    def n_unique(self) -> int:
        return len(self.formulas)


def count_assignments(config: SubstitutionConfig, n_species: int) -> int:
    """Number of substitutions the rule gives a prototype with ``n_species`` non-kept species."""
    free = len(config.free_elements)
    if n_species <= 0:
        return 0
    if config.rule is SubstitutionRule.ONE_REQUIRED:
        return n_species * math.perm(free, n_species - 1)
    return math.perm(free, n_species)


def assignment_table(config: SubstitutionConfig, n_species: int) -> np.ndarray:
    """All element assignments for ``n_species`` substituted species, as pool indices.

    Returns:
        (count_assignments(config, n_species), n_species) uint8 array; for ``ONE_REQUIRED``
        the rows are grouped by which species becomes the required element.
    """
    count = count_assignments(config, n_species)
    if count > MAX_ASSIGNMENTS_PER_PROTOTYPE:
        raise InvalidInput(
            f"a prototype with {n_species} substituted species gives {count:,} substitutions "
            f"under rule {config.rule.value!r} (limit {MAX_ASSIGNMENTS_PER_PROTOTYPE:,})"
        )
    index_of = {s: i for i, s in enumerate(config.element_pool)}
    free = [index_of[s] for s in config.free_elements]
    if count == 0:
        return np.zeros((0, max(n_species, 0)), dtype=np.uint8)
    if config.rule is SubstitutionRule.ALL_DISTINCT:
        return np.array(list(itertools.permutations(free, n_species)), dtype=np.uint8)
    required = index_of[config.required_element or ""]
    others = np.array(list(itertools.permutations(free, n_species - 1)), dtype=np.uint8)
    others = others.reshape(len(others), n_species - 1)
    blocks = []
    for slot in range(n_species):
        block = np.empty((len(others), n_species), dtype=np.uint8)
        block[:, :slot] = others[:, :slot]
        block[:, slot] = required
        block[:, slot + 1 :] = others[:, slot:]
        blocks.append(block)
    return np.concatenate(blocks)


def _sort_slots(codes: np.ndarray) -> np.ndarray:
    """Sort each row of a (n, 4) uint16 array with a 5-comparator network (fast for 4 columns)."""
    if codes.shape[1] != 4:
        return np.sort(codes, axis=1)
    a, b, c, d = (codes[:, i].copy() for i in range(4))
    for lo, hi in ((a, b), (c, d), (a, c), (b, d), (b, c)):
        small = np.minimum(lo, hi)
        np.maximum(lo, hi, out=hi)
        lo[...] = small
    return np.stack([a, b, c, d], axis=1)


def _pack(codes: np.ndarray) -> np.ndarray:
    keys = np.zeros(codes.shape[0], dtype=np.uint64)
    for column in range(codes.shape[1]):
        keys <<= np.uint64(_SLOT_BITS)
        keys |= codes[:, column].astype(np.uint64)
    return keys


def _unpack(keys: np.ndarray, n_slots: int) -> np.ndarray:
    codes = np.empty((keys.shape[0], n_slots), dtype=np.uint16)
    work = keys.copy()
    for column in range(n_slots - 1, -1, -1):
        codes[:, column] = (work & np.uint64((1 << _SLOT_BITS) - 1)).astype(np.uint16)
        work >>= np.uint64(_SLOT_BITS)
    return codes


def _validate_patterns(patterns: Sequence[SitePattern], config: SubstitutionConfig) -> None:
    seen: set[str] = set()
    for pattern in patterns:
        if pattern.prototype_id in seen:
            raise InvalidInput(f"prototype id {pattern.prototype_id!r} appears more than once")
        seen.add(pattern.prototype_id)
        amounts = pattern.species_amounts
        if config.kept_element not in amounts:
            raise InvalidInput(
                f"prototype {pattern.prototype_id!r} has no {config.kept_element} "
                f"(species {sorted(amounts)})"
            )
        for symbol, amount in amounts.items():
            if not isinstance(amount, (int, np.integer)) or amount <= 0:
                raise InvalidInput(
                    f"prototype {pattern.prototype_id!r}: amount of {symbol} must be a positive "
                    f"integer, got {amount!r}"
                )
        if len(amounts) - 1 > _MAX_SLOTS - 1:
            raise InvalidInput(
                f"prototype {pattern.prototype_id!r} has {len(amounts) - 1} species besides "
                f"{config.kept_element}; at most {_MAX_SLOTS - 1} are supported"
            )


def enumerate_substitutions(
    patterns: Sequence[SitePattern],
    config: SubstitutionConfig,
    *,
    chunk_rows: int = 4_000_000,
    progress: Callable[[int], None] | None = None,
) -> SubstitutionResult:
    """Enumerate every substitution of ``patterns`` under ``config`` and reduce to unique formulas.

    Args:
        patterns: prototypes' site patterns (ids unique, each containing the kept element).
        config: pool, kept/required element and rule.
        chunk_rows: substitutions processed per vectorized block (bounds temporary memory).
        progress: called with the number of prototypes done after each block.

    Raises:
        InvalidInput: duplicate ids, a prototype without the kept element, non-positive
            amounts, too many species, or a reduced amount above 1023.
    """
    _validate_patterns(patterns, config)
    kept = config.element_pool.index(config.kept_element)
    species = tuple(
        tuple(s for s in p.species_amounts if s != config.kept_element) for p in patterns
    )
    n_species = np.array([len(s) for s in species], dtype=np.int64)
    max_species = int(n_species.max()) if len(patterns) else 0
    tables = {k: assignment_table(config, k) for k in sorted(set(n_species.tolist()))}
    per_proto = np.array([tables[k].shape[0] for k in n_species.tolist()], dtype=np.int64)
    total = int(per_proto.sum())
    offsets = np.concatenate([[0], np.cumsum(per_proto)])

    prototype_index = np.empty(total, dtype=np.int32)
    slot_elements = np.full((total, max(max_species, 1)), UNUSED_SLOT, dtype=np.uint8)
    keys = np.empty(total, dtype=np.uint64)

    amounts = np.zeros((len(patterns), max(max_species, 1) + 1), dtype=np.int64)
    for row, pattern in enumerate(patterns):
        amounts[row, 0] = pattern.species_amounts[config.kept_element]
        for col, symbol in enumerate(species[row], start=1):
            amounts[row, col] = pattern.species_amounts[symbol]
    reduced = amounts // np.maximum(np.gcd.reduce(amounts, axis=1), 1)[:, None]
    too_big = np.flatnonzero(reduced.max(axis=1, initial=0) > _MAX_REDUCED_AMOUNT)
    if too_big.size:
        bad = patterns[int(too_big[0])]
        raise InvalidInput(
            f"prototype {bad.prototype_id!r}: reduced amounts {reduced[too_big[0]].tolist()} "
            f"exceed {_MAX_REDUCED_AMOUNT}"
        )

    done = 0
    for k, table in tables.items():
        members = np.flatnonzero(n_species == k)
        if table.shape[0] == 0 or members.size == 0:
            done += members.size
            continue
        per_chunk = max(1, chunk_rows // table.shape[0])
        element_codes = table.astype(np.uint16) << _AMOUNT_BITS  # (N, k)
        kept_code = np.uint16(kept << _AMOUNT_BITS)
        for start in range(0, members.size, per_chunk):
            chunk = members[start : start + per_chunk]
            n_rows = chunk.size * table.shape[0]
            codes = np.zeros((chunk.size, table.shape[0], _MAX_SLOTS), dtype=np.uint16)
            codes[:, :, 0] = kept_code | reduced[chunk, 0].astype(np.uint16)[:, None]
            codes[:, :, 1 : k + 1] = element_codes[None, :, :] | reduced[chunk, 1 : k + 1].astype(
                np.uint16
            )[:, None, :]
            packed = _pack(_sort_slots(codes.reshape(n_rows, _MAX_SLOTS)))
            # prototypes of one k are not contiguous in general: scatter by offsets
            for local, proto in enumerate(chunk.tolist()):
                lo, hi = offsets[proto], offsets[proto + 1]
                keys[lo:hi] = packed[local * table.shape[0] : (local + 1) * table.shape[0]]
                prototype_index[lo:hi] = proto
                slot_elements[lo:hi, :k] = table
            done += chunk.size
            if progress is not None:
                progress(done)

    unique_keys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    codes = _unpack(unique_keys, _MAX_SLOTS)
    element_index = (codes >> _AMOUNT_BITS).astype(np.int64)
    unique_amounts = (codes & _AMOUNT_MASK).astype(np.int64)
    formulas = reduced_formula_strings(element_index, unique_amounts, config.element_pool)
    chemsys = _chemsys_strings(element_index, unique_amounts, config.element_pool)
    return SubstitutionResult(
        config=config,
        prototype_ids=tuple(p.prototype_id for p in patterns),
        prototype_species=species,
        prototype_index=prototype_index,
        slot_elements=slot_elements,
        formula_index=inverse.astype(np.int32).reshape(-1),
        formulas=formulas,
        multiplicity=counts.astype(np.int64),
        chemsys=chemsys,
        num_atoms=unique_amounts.sum(axis=1).astype(np.int32),
    )


def _chemsys_strings(
    element_index: np.ndarray, amount: np.ndarray, symbols: tuple[str, ...]
) -> list[str]:
    """'-'-joined alphabetically sorted symbols of each row's used slots."""
    alpha_rank = np.argsort(np.argsort(np.array(symbols)))
    key = np.where(amount > 0, alpha_rank[element_index], -1)
    order = np.argsort(key, axis=1)
    sorted_index = np.take_along_axis(element_index, order, axis=1)
    used = np.take_along_axis(amount > 0, order, axis=1)
    text = np.array(symbols, dtype=object)[sorted_index]
    out = np.full(text.shape[0], "", dtype=object)
    for column in range(text.shape[1]):
        piece = np.where(used[:, column], text[:, column], "")
        separator = np.where((out != "") & used[:, column], "-", "")
        out = out + separator + piece
    return out.tolist()
