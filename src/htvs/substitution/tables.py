"""Arrow/Parquet tables of the substitution stage.

``substitutions.parquet`` has one row per substitution; string columns are dictionary-encoded
(26.5 M rows share ~1.4 M formulas and 28 elements), so the file stays small and readers still
see plain strings. ``formulas.parquet`` has one row per unique reduced formula with its
multiplicity, and ``prototypes.parquet`` one row per prototype with its substituted species.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from htvs.substitution.enumerate import UNUSED_SLOT, SubstitutionResult

SUBSTITUTIONS_FILE = "substitutions.parquet"
FORMULAS_FILE = "formulas.parquet"
PROTOTYPES_FILE = "prototypes.parquet"


def _dictionary(indices: np.ndarray, values: list[str], mask: np.ndarray | None = None) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, type=pa.int32(), mask=mask), pa.array(values, type=pa.string())
    )


def substitution_table(result: SubstitutionResult) -> pa.Table:
    """One row per substitution: ``prototype_id``, ``from_j``/``to_j`` species pairs, ``formula``.

    ``from_j`` is the prototype's j-th substituted species and ``to_j`` the element it becomes
    (null where the prototype has fewer species).
    """
    columns: dict[str, pa.Array] = {
        "prototype_id": _dictionary(result.prototype_index, list(result.prototype_ids)),
    }
    species_values = sorted({s for row in result.prototype_species for s in row})
    species_code = {s: i for i, s in enumerate(species_values)}
    max_slots = result.slot_elements.shape[1]
    per_proto = np.full((len(result.prototype_ids), max_slots), -1, dtype=np.int32)
    for p, row in enumerate(result.prototype_species):
        per_proto[p, : len(row)] = [species_code[s] for s in row]
    for j in range(max_slots):
        unused = result.slot_elements[:, j] == UNUSED_SLOT
        mask = unused if unused.any() else None
        from_codes = per_proto[result.prototype_index, j]
        columns[f"from_{j}"] = _dictionary(np.maximum(from_codes, 0), species_values, mask)
        columns[f"to_{j}"] = _dictionary(
            np.where(unused, 0, result.slot_elements[:, j]).astype(np.int32),
            list(result.config.element_pool),
            mask,
        )
    columns["formula"] = _dictionary(result.formula_index, result.formulas)
    return pa.table(columns)


def formula_table(result: SubstitutionResult) -> pa.Table:
    """One row per unique reduced formula: ``formula``, ``chemsys``, ``num_atoms``, ``multiplicity``."""
    return pa.table(
        {
            "formula": pa.array(result.formulas, type=pa.string()),
            "chemsys": pa.array(result.chemsys, type=pa.string()),
            "num_atoms": pa.array(result.num_atoms, type=pa.int32()),
            "multiplicity": pa.array(result.multiplicity, type=pa.int64()),
        }
    )


def prototype_table(result: SubstitutionResult) -> pa.Table:
    """One row per prototype: ``prototype_id``, ``species`` (substituted, in slot order), count."""
    counts = np.bincount(result.prototype_index, minlength=len(result.prototype_ids))
    return pa.table(
        {
            "prototype_id": pa.array(result.prototype_ids, type=pa.string()),
            "substituted_species": pa.array(
                [list(s) for s in result.prototype_species], type=pa.list_(pa.string())
            ),
            "substitutions": pa.array(counts, type=pa.int64()),
        }
    )


def _write_atomic(table: pa.Table, path: Path) -> None:
    from htvs.atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_substitution_tables(result: SubstitutionResult, out_dir: Path) -> dict[str, Path]:
    """Write the three Parquet tables into ``out_dir`` (created), each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "substitutions": out_dir / SUBSTITUTIONS_FILE,
        "formulas": out_dir / FORMULAS_FILE,
        "prototypes": out_dir / PROTOTYPES_FILE,
    }
    _write_atomic(substitution_table(result), paths["substitutions"])
    _write_atomic(formula_table(result), paths["formulas"])
    _write_atomic(prototype_table(result), paths["prototypes"])
    return paths
