"""Reading structures from CIF, pymatgen JSON and POSCAR text.

Every reader raises :class:`~htvs.errors.InvalidInput` with a message a person can act on;
the sources turn that message into a :class:`~htvs.prototypes.records.SkippedInput` reason.

The inputs may be untrusted (gRPC requests, files handed to the CLI), so the readers bound their
work before doing it:

* pymatgen JSON is decoded by :func:`decode_json` (size and nesting bounded) and turned into a
  structure by :func:`structure_from_json`, which builds it from plain values itself: pymatgen's
  ``Structure.from_dict`` runs monty's decoder on site properties, which imports any module a
  ``{"@module": ..., "@class": ...}`` dict names.
* a CIF's symmetry expansion is estimated (operations x atom-site rows, then the distinct
  positions) before pymatgen expands it, and refused above the site limit;
* every structure read has a sane cell (:func:`check_cell`: finite, lattice lengths
  :data:`MIN_LATTICE_LENGTH_ANGSTROM`-:data:`MAX_LATTICE_LENGTH_ANGSTROM`, at least
  :data:`MIN_VOLUME_PER_SITE_ANGSTROM3` per site) and at most ``max_sites`` sites
  (:data:`DEFAULT_MAX_SITES` when the caller gives no limit).
"""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from htvs.errors import InvalidInput, shown
from htvs.prototypes.cells import (
    DEFAULT_MAX_SITES,
    MAX_LATTICE_LENGTH_ANGSTROM,
    MAX_TEXT_CHARS,
    MIN_LATTICE_LENGTH_ANGSTROM,
    MIN_VOLUME_PER_SITE_ANGSTROM3,
    check_cell,
    check_site_count,
    clip,
    site_limit,
)
from htvs.prototypes.structure_json import MAX_JSON_DEPTH, decode_json, structure_from_json

#: Readers and checks of this module's callers (the checks and JSON builder live in
#: :mod:`htvs.prototypes.cells` and :mod:`htvs.prototypes.structure_json`).
__all__ = [
    "DEFAULT_MAX_SITES", "MAX_JSON_DEPTH", "MAX_LATTICE_LENGTH_ANGSTROM", "MAX_TEXT_CHARS",
    "MIN_LATTICE_LENGTH_ANGSTROM", "MIN_VOLUME_PER_SITE_ANGSTROM3", "CifSummary", "FileKind", "StructureFile",
    "check_cell", "check_site_count", "classify_file", "decode_json", "estimate_cif_sites", "parse_cif",
    "parse_poscar", "parse_structures", "read_text", "site_limit", "structure_from_json", "summarize_cif",
]


class FileKind(str, Enum):
    """The structure file formats a folder source reads."""

    CIF = "cif"
    JSON = "json"
    POSCAR = "poscar"


#: Suffixes (lower case, longest first) that name a format; the rest of the name is the id.
_SUFFIX_KINDS: tuple[tuple[str, FileKind], ...] = (
    (".cif.gz", FileKind.CIF),
    (".json.gz", FileKind.JSON),
    (".vasp.gz", FileKind.POSCAR),
    (".cif", FileKind.CIF),
    (".json", FileKind.JSON),
    (".vasp", FileKind.POSCAR),
    (".poscar", FileKind.POSCAR),
)
_POSCAR_PREFIXES = ("POSCAR", "CONTCAR")


#: Keys of the symmetry-operation loop pymatgen reads, and the most operations of a space group.
_SYMOP_KEYS = (
    "_symmetry_equiv_pos_as_xyz",
    "_symmetry_equiv_pos_as_xyz_",
    "_space_group_symop_operation_xyz",
    "_space_group_symop_operation_xyz_",
)
_MAX_SPACE_GROUP_OPS = 192
#: Most symmetry images (operations x atom-site rows) a CIF's size estimate computes.
_MAX_CIF_IMAGES = 2_000_000

_SYMBOL = re.compile(r"[A-Z][a-z]?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class StructureFile:
    """A file a folder source can read: its format and the id its structure will get."""

    kind: FileKind
    stem: str
    gzipped: bool


def classify_file(name: str) -> StructureFile | None:
    """The format and id stem of a file named ``name``, or None if no reader handles it.

    ``x.cif``, ``x.json``, ``x.vasp``, ``x.poscar`` (each optionally ``.gz``) give stem ``x``;
    ``POSCAR`` and ``CONTCAR`` files (``POSCAR``, ``POSCAR_LiFePO4``, ...) keep their name.
    """
    lower = name.lower()
    for suffix, kind in _SUFFIX_KINDS:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return StructureFile(kind, name[: -len(suffix)], suffix.endswith(".gz"))
    if name.startswith(_POSCAR_PREFIXES):
        return StructureFile(FileKind.POSCAR, name, False)
    return None


def read_text(path: Path, gzipped: bool) -> str:
    """The text of ``path`` (gunzipped if ``gzipped``), decoded as UTF-8."""
    try:
        if gzipped:
            with gzip.open(path, "rb") as stream:
                raw = stream.read(MAX_TEXT_CHARS + 1)
        else:
            with path.open("rb") as stream:
                raw = stream.read(MAX_TEXT_CHARS + 1)
        if len(raw) > MAX_TEXT_CHARS:
            what = "unzips to" if gzipped else "has"
            raise InvalidInput(f"{path.name} {what} more than {MAX_TEXT_CHARS} bytes; not read")
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error) as e:
        raise InvalidInput(f"cannot read {path.name}: {e}") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path.name} is not UTF-8 text: {e}") from e


def parse_structures(text: str, kind: FileKind, max_sites: int | None = None) -> list[Structure]:
    """The structures in ``text`` of format ``kind`` (a CIF may hold several data blocks).

    Args:
        text: the file's text.
        kind: its format.
        max_sites: most sites per structure (default :data:`DEFAULT_MAX_SITES`); a CIF is
            refused before its symmetry expansion when that would exceed it.

    Raises:
        InvalidInput: unreadable text, a refused structure (see :func:`check_cell`), or more
            sites than ``max_sites``.
    """
    if kind is FileKind.CIF:
        return parse_cif(text, max_sites)
    if kind is FileKind.JSON:
        return [structure_from_json(decode_json(text), max_sites)]
    return [parse_poscar(text, max_sites)]


def parse_cif(text: str, max_sites: int | None = None) -> list[Structure]:
    """The structures of every data block of a CIF, in the cell the CIF gives.

    The conventional cell is kept (``primitive=False``): the OBELiX CIFs carry ~0.01 Å of
    symmetry-preserving noise, which a primitive-cell search would have to tolerate.
    pymatgen's parse warnings become the error message when no structure could be read.

    Args:
        text: the CIF.
        max_sites: most sites per structure (default :data:`DEFAULT_MAX_SITES`); a block whose
            symmetry expansion would give more (estimated before pymatgen expands it, see
            :func:`estimate_cif_sites`) is refused without being expanded.

    Raises:
        InvalidInput: unreadable CIF, too many sites, or a refused cell (:func:`check_cell`).
    """
    from pymatgen.io.cif import CifParser

    limit = site_limit(max_sites)
    if not isinstance(text, str):
        raise InvalidInput(f"expected CIF text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"CIF text of {len(text)} characters exceeds the limit of {MAX_TEXT_CHARS}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            # pymatgen keeps the parsed blocks in ``_cif``; reading them here avoids a second parse
            for name, block in parser._cif.data.items():  # noqa: SLF001
                estimate, n_ops, n_rows = estimate_cif_sites(parser, block, limit)
                check_site_count(estimate, limit, (
                    f"estimated before expanding data block {shown(name, 80)}: {n_ops} symmetry "
                    f"operations x {n_rows} atom-site rows; not expanded"
                ))
            structures = parser.parse_structures(primitive=False)
        except InvalidInput:
            raise
        except Exception as e:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
            notes = _summarize_warnings(str(w.message) for w in caught)
            detail = f"{type(e).__name__}: {clip(str(e))}" + (f" (pymatgen: {notes})" if notes else "")
            raise InvalidInput(f"unreadable CIF: {detail}") from e
    if not structures:
        raise InvalidInput("unreadable CIF: no structure in any data block")
    for structure in structures:
        check_site_count(len(structure), limit)
        check_cell(structure)
    return structures


def estimate_cif_sites(parser: Any, block: Any, within: int | None = None) -> tuple[int, int, int]:
    """``(sites, operations, rows)``: about how many sites a CIF block expands to, cheaply.

    With ``within``, an upper bound (most operations listed or of any space group x rows) is
    returned without computing the symmetry operations when it is at most ``within``.

    ``rows`` is the length of the atom-site loop and ``operations`` the number of symmetry
    operations pymatgen will apply (``parser.get_symops``); the estimate is the number of
    distinct fractional positions (to 1e-3) among the ``operations x rows`` images, which is
    what pymatgen's expansion keeps, up to sites closer than that. When the images are too
    many to compute (:data:`_MAX_CIF_IMAGES`) or the coordinates are not plain numbers, the
    estimate is ``operations x rows``.
    """
    data = block.data
    columns = [data.get(f"_atom_site_fract_{axis}") for axis in "xyz"]
    rows = next(
        (data[key] for key in ("_atom_site_fract_x", "_atom_site_label", "_atom_site_type_symbol")
         if key in data),
        [],
    )
    n_rows = len(rows) if isinstance(rows, list) else 1
    if within is not None:  # no space group has more than 192 operations
        listed = [data.get(key) for key in _SYMOP_KEYS]
        most_ops = max([len(v) for v in listed if isinstance(v, list)] + [_MAX_SPACE_GROUP_OPS])
        if most_ops * n_rows <= within:
            return most_ops * n_rows, most_ops, n_rows
    ops = parser.get_symops(block)
    n_ops = max(len(ops), 1)
    bound = n_ops * n_rows
    if bound <= 1 or bound > _MAX_CIF_IMAGES:
        return bound, n_ops, n_rows
    if any(column is None for column in columns):
        return bound, n_ops, n_rows
    coords = []
    for values in zip(*[c if isinstance(c, list) else [c] for c in columns], strict=False):
        numbers = [_NUMBER.match(str(v).strip()) for v in values]
        if not all(numbers):
            return bound, n_ops, n_rows
        coords.append([float(m.group(0)) for m in numbers])  # type: ignore[union-attr]
    if len(coords) != n_rows:
        return bound, n_ops, n_rows
    points = np.asarray(coords, dtype=float)
    if not np.all(np.isfinite(points)):
        return bound, n_ops, n_rows
    affine = np.asarray([op.affine_matrix for op in ops], dtype=float)
    images = np.einsum("kij,rj->kri", affine[:, :3, :3], points) + affine[:, None, :3, 3]
    with np.errstate(invalid="ignore", over="ignore"):
        keys = np.mod(np.rint(np.mod(images.reshape(-1, 3), 1.0) * 1000.0), 1000.0)
    keys = keys[np.all(np.isfinite(keys), axis=1)].astype(np.int64)
    return int(len(np.unique(keys, axis=0))), n_ops, n_rows


def _summarize_warnings(messages: Iterable[str], limit: int = 300) -> str:
    """Distinct warning lines joined by ``; ``, cut to about ``limit`` characters."""
    distinct: list[str] = []
    for message in messages:
        for line in message.splitlines():
            line = line.strip()
            if line and line not in distinct:
                distinct.append(line)
    return clip("; ".join(distinct), limit)


def parse_poscar(text: str, max_sites: int | None = None) -> Structure:
    """The structure of a VASP 5 POSCAR (the element-symbol line is required).

    Raises:
        InvalidInput: unreadable POSCAR, more sites than ``max_sites`` (counted from the
            counts line before reading), or a refused cell (:func:`check_cell`).
    """
    from pymatgen.io.vasp import Poscar

    limit = site_limit(max_sites)
    if not isinstance(text, str):
        raise InvalidInput(f"expected POSCAR text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"POSCAR text of {len(text)} characters exceeds the limit of {MAX_TEXT_CHARS}")
    lines = text.splitlines()
    symbols = lines[5].split() if len(lines) > 5 else []
    if not symbols or not all(_SYMBOL.fullmatch(s.split("_")[0]) for s in symbols):
        raise InvalidInput(
            "unreadable POSCAR: line 6 must list the element symbols (VASP 5 format)"
        )
    counts = lines[6].split() if len(lines) > 6 else []
    if not counts or not all(c.isdigit() and len(c) <= 9 for c in counts):
        raise InvalidInput(
            f"unreadable POSCAR: line 7 must give the atom count of each element, got {shown(counts, 80)}"
        )
    check_site_count(sum(int(c) for c in counts), limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Poscar.from_str(text, read_velocities=False).structure
        except Exception as e:  # noqa: BLE001 - malformed POSCARs raise many types
            raise InvalidInput(f"unreadable POSCAR: {type(e).__name__}: {clip(str(e))}") from e
    check_site_count(len(structure), limit)
    return check_cell(structure)


@dataclass(frozen=True)
class CifSummary:
    """What the atom-site loop of a CIF says, read without building the structure."""

    elements: frozenset[str]
    has_partial_occupancy: bool


def summarize_cif(text: str) -> CifSummary | None:
    """Elements and partial occupancy of a one-block CIF, or None when not cheaply known.

    Reading the atom-site loop takes ~1 ms, building the structure ~50 ms (symmetry
    expansion), so sources reject by composition first. None (read the full CIF instead)
    when the CIF has several data blocks or lacks ``_atom_site_type_symbol``.

    ``has_partial_occupancy`` is True when some atom site has occupancy < 1; such a CIF gives
    a disordered structure unless partial sites coincide and merge (checked to agree with the
    full parse on all 321 bundled OBELiX CIFs).
    """
    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
    except Exception:  # noqa: BLE001 - the full parse reports the error properly
        return None
    if len(blocks) != 1:
        return None
    data = blocks[0].data
    symbols = data.get("_atom_site_type_symbol")
    if not isinstance(symbols, list) or not symbols:
        return None
    elements = set()
    for raw in symbols:
        match = _SYMBOL.match(str(raw).strip())
        if match is None or not Element.is_valid_symbol(match.group(0)):
            return None
        elements.add(match.group(0))
    partial = False
    occupancies = data.get("_atom_site_occupancy")
    if isinstance(occupancies, list):
        for raw in occupancies:
            number = _NUMBER.match(str(raw).strip())
            if number is not None and float(number.group(0)) < 1 - 1e-6:
                partial = True
                break
    return CifSummary(frozenset(elements), partial)
