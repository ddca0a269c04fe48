"""Stage 4 on many cores: materialize + deduplicate in parts split by reduced formula.

Deduplication only ever compares structures of one reduced formula, so the substitution rows of
surviving formulas can be split into parts that share no formula and processed independently —
in worker processes — with exactly the result of one process: within a part the rows keep their
order (the first of a set of duplicates stays the representative), and the parts' rows are put
back in the input order. Representatives carry their CIF text and the structure as plain arrays
(lattice matrix, species, fractional coordinates), which later stages turn back into a pymatgen
``Structure`` some fifty times faster than they parse the CIF.

Generated structures (stage 5: ``id``, ``formula``, ``cif``) join the substitution rows of their
formula before deduplication, *after* them: the first of a set of duplicates stays the
representative, so a generated structure that matches a substituted one is kept as a duplicate
of it (``duplicate_of`` names the substituted structure), and one that matches an earlier sample
of its formula as a duplicate of that sample. Every row carries its ``origin``
(``substitution`` or ``generated``); a generated row has a null ``prototype_id``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from pymatgen.core import Lattice, Structure

from htvs.errors import InvalidInput, RowError
from htvs.prototypes.records import Prototype
from htvs.structures.dedupe import DedupeConfig, PrototypeCache, deduplicate
from htvs.structures.materialize import MaterializeConfig, materialize, split_results

#: Rows per part (parts are whole formulas, so they can be larger).
PART_ROWS = 4096


@dataclass
class PartResult:
    """One part's rows: table columns (in the part's row order), errors and timings."""

    positions: list[int] = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    materialize_s: float = 0.0
    dedupe_s: float = 0.0
    n_rows: int = 0


COLUMNS = ("id", "formula", "prototype_id", "origin", "duplicate_of", "cif", "lattice_matrix", "species",
           "frac_coords")
#: ``origin`` of a materialized substitution and of a generated structure.
SUBSTITUTION, GENERATED = "substitution", "generated"
#: Columns of the generated rows :func:`build_structures` takes (stage 5's ``generated.parquet``).
GENERATED_COLUMNS = ("id", "formula", "cif")


class PartCheckpoint(Protocol):
    """Where finished parts are kept as tables, so that a killed stage resumes without redoing
    them (``load`` returns None for a part not kept, or one that cannot be read)."""

    def load(self, index: int) -> pa.Table | None: ...

    def save(self, index: int, table: pa.Table) -> None: ...


#: Arrow types of the list columns (the others are strings).
_ARROW_TYPES = {
    "lattice_matrix": pa.list_(pa.float64()),
    "species": pa.list_(pa.string()),
    "frac_coords": pa.list_(pa.float64()),
}


def part_to_table(part: PartResult) -> pa.Table:
    """One part as an Arrow table (``position`` + :data:`COLUMNS`; errors and timings in the
    schema metadata)."""
    arrays = {"position": pa.array(part.positions, type=pa.int64())}
    for name in COLUMNS:
        arrays[name] = pa.array(part.columns[name], type=_ARROW_TYPES.get(name, pa.string()))
    meta = {"errors": part.errors, "materialize_s": part.materialize_s, "dedupe_s": part.dedupe_s,
            "n_rows": part.n_rows}
    return pa.table(arrays).replace_schema_metadata({"htvs.part": json.dumps(meta)})


def part_from_table(table: pa.Table) -> PartResult:
    """The inverse of :func:`part_to_table`."""
    meta = json.loads((table.schema.metadata or {})[b"htvs.part"])
    return PartResult(
        positions=table.column("position").to_pylist(),
        columns={name: table.column(name).to_pylist() for name in COLUMNS},
        errors=meta["errors"], materialize_s=meta["materialize_s"], dedupe_s=meta["dedupe_s"],
        n_rows=meta["n_rows"],
    )


def structure_arrays(structure: Structure) -> tuple[list[float], list[str], list[float]]:
    """(lattice matrix row-major (9,), element symbols (n,), fractional coordinates (3n,))."""
    return (
        structure.lattice.matrix.reshape(-1).tolist(),
        [site.specie.symbol for site in structure],
        structure.frac_coords.reshape(-1).tolist(),
    )


def structure_from_arrays(lattice_matrix, species, frac_coords) -> Structure:
    """The inverse of :func:`structure_arrays` (raises InvalidInput on inconsistent arrays)."""
    matrix = np.asarray(lattice_matrix, dtype=np.float64)
    coords = np.asarray(frac_coords, dtype=np.float64)
    species = list(species)
    if matrix.size != 9 or coords.size != 3 * len(species) or not species:
        raise InvalidInput(
            f"structure arrays do not fit: {matrix.size} lattice values, {len(species)} species, "
            f"{coords.size} coordinates"
        )
    return Structure(Lattice(matrix.reshape(3, 3)), species, coords.reshape(-1, 3))


def split_by_formula(rows: pd.DataFrame, part_rows: int = PART_ROWS) -> list[np.ndarray]:
    """Positions (0..len-1) of ``rows`` in parts of whole formulas, about ``part_rows`` each,
    every part in row order."""
    codes = pd.factorize(rows["formula"].astype(str).to_numpy())[0]
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, boundaries)
    parts: list[list[np.ndarray]] = [[]]
    size = 0
    for group in groups:
        if size >= part_rows:
            parts.append([])
            size = 0
        parts[-1].append(group)
        size += len(group)
    return [np.sort(np.concatenate(p)) for p in parts if p]


_WORKER_PROTOTYPES: Mapping[str, Prototype] = {}
_WORKER_CACHE = PrototypeCache()


def _init_worker(prototypes: Mapping[str, Prototype]) -> None:
    global _WORKER_PROTOTYPES, _WORKER_CACHE  # noqa: PLW0603 - per-process state of a pool worker
    _WORKER_PROTOTYPES = prototypes
    _WORKER_CACHE = PrototypeCache()


def _run_part(args: tuple) -> PartResult:
    positions, rows, materialize_config, dedupe_config, generated = args
    return build_part(_WORKER_PROTOTYPES, positions, rows, materialize_config, dedupe_config, _WORKER_CACHE,
                      generated)


def _generated_items(generated: pd.DataFrame) -> tuple[list[tuple[str, str, Structure, str]], list[RowError]]:
    """``(id, formula, structure, cif)`` of each generated row whose CIF reads, and the others'
    errors (``index``: the row's place in ``generated``)."""
    from htvs.prototypes.readers import parse_cif

    items, failed = [], []
    for index, (row_id, formula, cif) in enumerate(zip(generated["id"], generated["formula"], generated["cif"])):
        try:
            items.append((str(row_id), str(formula), parse_cif(cif)[0], str(cif)))
        except InvalidInput as exc:
            failed.append(RowError(index, str(row_id), f"generated structure {row_id!r}: {exc}", "InvalidInput"))
    return items, failed


def build_part(
    prototypes: Mapping[str, Prototype],
    positions: np.ndarray,
    rows: pd.DataFrame,
    materialize_config: MaterializeConfig,
    dedupe_config: DedupeConfig,
    cache: PrototypeCache | None = None,
    generated: pd.DataFrame | None = None,
) -> PartResult:
    """Materialize and deduplicate one part (whole formulas): its substitution ``rows``, then its
    ``generated`` rows (:data:`GENERATED_COLUMNS`), deduplicated together with the substituted
    structures first; ``positions`` label the substitution rows then the generated ones."""
    n_generated = 0 if generated is None else len(generated)
    out = PartResult(columns={name: [] for name in COLUMNS}, n_rows=len(rows) + n_generated)
    start = time.perf_counter()
    results = materialize(prototypes, rows, materialize_config) if len(rows) else []
    built, failed = split_results(results)
    built_positions = [int(positions[i]) for i, r in enumerate(results) if not isinstance(r, RowError)]
    extra, unreadable = _generated_items(generated) if n_generated else ([], [])
    bad = {e.index for e in unreadable}
    extra_positions = [int(positions[len(rows) + i]) for i in range(n_generated) if i not in bad]
    out.materialize_s = time.perf_counter() - start
    items = [*built, *((row_id, structure) for row_id, _, structure, _ in extra)]
    result = deduplicate(items, dedupe_config, prototypes=prototypes, cache=cache)
    out.dedupe_s = time.perf_counter() - start - out.materialize_s
    representatives = set(result.unique_ids)
    records = [(item.id, item.formula, item.prototype_id, SUBSTITUTION, item.structure, item.to_cif)
               for item in built]
    records += [(row_id, formula, None, GENERATED, structure, lambda text=cif: text)
                for row_id, formula, structure, cif in extra]
    for position, (row_id, formula, prototype_id, origin, structure, cif) in zip(
        built_positions + extra_positions, records, strict=True
    ):
        out.positions.append(position)
        c = out.columns
        c["id"].append(row_id)
        c["formula"].append(formula)
        c["prototype_id"].append(prototype_id)
        c["origin"].append(origin)
        c["duplicate_of"].append(result.duplicate_of.get(row_id))
        if row_id in representatives:
            lattice, species, coords = structure_arrays(structure)
            c["cif"].append(cif())
        else:
            lattice = species = coords = None
            c["cif"].append(None)
        c["lattice_matrix"].append(lattice)
        c["species"].append(species)
        c["frac_coords"].append(coords)
    out.errors = [{"id": e.value, "error": e.message} for e in (*failed, *unreadable, *result.refused)]
    return out


def _worker_context():
    """Workers forked from a forkserver, not from this process: forking a process that runs other
    threads (a gRPC server's handlers, a progress bar) can leave a lock held in the child. The
    forkserver imports this module once, so each worker starts without re-importing pymatgen."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def build_structures(
    prototypes: Mapping[str, Prototype],
    rows: pd.DataFrame,
    materialize_config: MaterializeConfig,
    dedupe_config: DedupeConfig,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    part_rows: int = PART_ROWS,
    checkpoint: PartCheckpoint | None = None,
    generated: pd.DataFrame | None = None,
) -> tuple[pa.Table, list[dict], dict[str, float]]:
    """Stage 4 on ``rows`` (substitutions of surviving formulas) and the ``generated`` structures
    (stage 5's accepted samples: :data:`GENERATED_COLUMNS`; see the module docstring) with
    ``workers`` processes.

    Returns:
        The ``structures.parquet`` table (one row per structure, the substitutions in row order,
        then the generated ones in theirs: :data:`COLUMNS`; ``cif`` and the arrays only for
        representatives), the per-row errors, and the summed per-part timings (``materialize``,
        ``dedupe``; CPU seconds over workers). With a ``checkpoint``, parts found there are not
        recomputed and finished parts are saved as they complete (the split into parts is a
        function of ``rows``, ``generated`` and ``part_rows``).
    """
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    rows = rows.reset_index(drop=True)
    if generated is None:
        generated = pd.DataFrame({name: pd.Series([], dtype=object) for name in GENERATED_COLUMNS})
    generated = generated.loc[:, list(GENERATED_COLUMNS)].reset_index(drop=True)
    n_rows = len(rows)
    formulas = pd.DataFrame({"formula": [*rows["formula"].astype(str), *generated["formula"].astype(str)]})
    parts = split_by_formula(formulas, part_rows)  # positions >= n_rows are generated rows
    used = {str(p) for p in rows["prototype_id"].astype(str).unique()} if len(rows) else set()
    needed = {k: v for k, v in prototypes.items() if k in used}
    found = {k: checkpoint.load(k) for k in range(len(parts))} if checkpoint is not None else {}
    finished: dict[int, PartResult] = {k: part_from_table(t) for k, t in found.items() if t is not None}
    tasks = {k: (positions, rows.iloc[positions[positions < n_rows]], materialize_config, dedupe_config,
                 generated.iloc[positions[positions >= n_rows] - n_rows] if (positions >= n_rows).any() else None)
             for k, positions in enumerate(parts) if k not in finished}
    done = sum(part.n_rows for part in finished.values())
    if progress is not None:
        progress(done)

    def keep(k: int, part: PartResult) -> None:
        nonlocal done
        finished[k] = part
        if checkpoint is not None:
            checkpoint.save(k, part_to_table(part))
        done += part.n_rows
        if progress is not None:
            progress(done)

    if workers == 1 or len(tasks) <= 1:
        cache = PrototypeCache()
        for k, (positions, part, mc, dc, extra) in tasks.items():
            keep(k, build_part(needed, positions, part, mc, dc, cache, extra))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=_init_worker,
                                 initargs=(needed,), mp_context=_worker_context()) as pool:
            futures = {pool.submit(_run_part, task): k for k, task in tasks.items()}
            for future in as_completed(futures):  # parts kept as they finish, in any order
                keep(futures[future], future.result())
    results = [finished[k] for k in range(len(parts))]
    positions = [p for r in results for p in r.positions]
    order = np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")
    columns = {name: [value for r in results for value in r.columns[name]] for name in COLUMNS}
    table = pa.table({
        name: pa.array([columns[name][i] for i in order], type=_ARROW_TYPES.get(name, pa.string()))
        for name in COLUMNS
    })
    errors = [e for r in results for e in r.errors]
    timings = {"materialize": sum(r.materialize_s for r in results), "dedupe": sum(r.dedupe_s for r in results)}
    return table, errors, timings
