"""CIF files of the candidate structures, with readable names, for the report to link to.

``cifs/001_LiP2S12Cl3_substitution_mp-18640-3f2a9c1b.cif``: the candidate's rank (conductivity
shortlist order, zero-padded), its formula written out without brackets, its origin
(``substitution`` or ``generated``), its prototype id (substitutions only) and the first 8 hex of
the sha256 of its structure id (ids hold characters unfit for file names). The CIF text is the
structure as stage 4 materialized it (before any relaxation), from ``structures.parquet``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from htvs.atomic import output_folder, write_text_atomic

#: The report's CIF folder, relative to the campaign output folder.
CIF_FOLDER = "cifs"
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def flat_formula(formula: str) -> str:
    """``LiP2(S4Cl)3`` -> ``LiP2S12Cl3``: element symbols and amounts, no brackets or spaces
    (the formula as given when pymatgen cannot parse it, with unsafe characters replaced)."""
    try:
        from pymatgen.core import Composition

        composition = Composition(formula)
        parts = []
        for element, amount in composition.items():
            count = f"{amount:g}" if abs(amount - 1) > 1e-8 else ""
            parts.append(f"{element.symbol}{count}")
        return "".join(parts)
    except (ValueError, KeyError, TypeError):
        return _UNSAFE.sub("-", str(formula)).strip("-") or "unknown"


def cif_file_name(rank: int, width: int, formula: str, origin: str | None, prototype_id: str | None,
                  structure_id: str) -> str:
    """The readable file name of a candidate's CIF (see the module docstring)."""
    digest = hashlib.sha256(str(structure_id).encode()).hexdigest()[:8]
    parts = [f"{rank:0{width}d}", flat_formula(formula), _UNSAFE.sub("-", origin or "unknown")]
    tail = f"{_UNSAFE.sub('-', prototype_id)}-{digest}" if prototype_id else digest
    return "_".join([*parts, tail]) + ".cif"


def write_candidate_cifs(out_dir: Path, rows: list[dict]) -> dict[str, str]:
    """Write the CIF of each row (``id``, ``formula``, ``origin``, ``prototype_id``, ``cif``; in
    rank order) under ``out_dir/cifs``; returns structure id -> path relative to ``out_dir``.

    Rows without CIF text get no file. CIF files of an earlier report that no longer match a
    candidate are removed, so the folder holds exactly the linked files.
    """
    folder = output_folder(out_dir / CIF_FOLDER)
    width = max(3, len(str(len(rows))))
    written: dict[str, str] = {}
    for rank, row in enumerate(rows, start=1):
        text = row.get("cif")
        if not isinstance(text, str) or not text.strip():
            continue
        prototype = row.get("prototype_id") if isinstance(row.get("prototype_id"), str) else None
        name = cif_file_name(rank, width, row["formula"], row.get("origin"), prototype, row["id"])
        write_text_atomic(folder / name, text)
        written[str(row["id"])] = f"{CIF_FOLDER}/{name}"
    keep = {Path(p).name for p in written.values()}
    for stale in folder.glob("*.cif"):
        if stale.name not in keep:
            stale.unlink()
    return written
