"""Reading structures from CIF, pymatgen JSON and POSCAR text.

Every reader raises :class:`~htvs.errors.InvalidInput` with a message a person can act on;
the sources turn that message into a :class:`~htvs.prototypes.records.SkippedInput` reason.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pymatgen.core import Element, Structure

from htvs.errors import InvalidInput


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

#: Names of pymatgen entry classes whose dict carries a ``structure``.
_ENTRY_CLASSES = frozenset({"ComputedStructureEntry", "GibbsComputedStructureEntry"})

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
        raw = path.read_bytes()
        if gzipped:
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InvalidInput(f"cannot read {path.name}: {e}") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path.name} is not UTF-8 text: {e}") from e


def parse_structures(text: str, kind: FileKind) -> list[Structure]:
    """The structures in ``text`` of format ``kind`` (a CIF may hold several data blocks)."""
    if kind is FileKind.CIF:
        return parse_cif(text)
    if kind is FileKind.JSON:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"invalid JSON: {e}") from e
        return [structure_from_json(obj)]
    return [parse_poscar(text)]


def parse_cif(text: str) -> list[Structure]:
    """The structures of every data block of a CIF, in the cell the CIF gives.

    The conventional cell is kept (``primitive=False``): the OBELiX CIFs carry ~0.01 Å of
    symmetry-preserving noise, which a primitive-cell search would have to tolerate.
    pymatgen's parse warnings become the error message when no structure could be read.
    """
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except Exception as e:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
            notes = _summarize_warnings(str(w.message) for w in caught)
            detail = f"{type(e).__name__}: {e}" + (f" (pymatgen: {notes})" if notes else "")
            raise InvalidInput(f"unreadable CIF: {detail}") from e
    if not structures:
        raise InvalidInput("unreadable CIF: no structure in any data block")
    return structures


def _summarize_warnings(messages: Iterable[str], limit: int = 300) -> str:
    """Distinct warning lines joined by ``; ``, cut to about ``limit`` characters."""
    distinct: list[str] = []
    for message in messages:
        for line in message.splitlines():
            line = line.strip()
            if line and line not in distinct:
                distinct.append(line)
    text = "; ".join(distinct)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def structure_from_json(obj: Any) -> Structure:
    """A structure from a decoded pymatgen ``Structure`` or ``ComputedStructureEntry`` dict.

    Only these two shapes are accepted; the ``@module`` of the file is never imported.
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("@class") in _ENTRY_CLASSES or ("structure" in obj and "energy" in obj):
        inner = obj.get("structure")
        if not isinstance(inner, dict):
            raise InvalidInput("the entry dict has no 'structure' object")
        obj = inner
    if "lattice" not in obj or "sites" not in obj:
        raise InvalidInput(
            "JSON is neither a pymatgen Structure dict (with 'lattice' and 'sites') "
            "nor a ComputedStructureEntry dict (with 'structure')"
        )
    try:
        return Structure.from_dict(obj)
    except Exception as e:  # noqa: BLE001 - malformed dicts raise KeyError, TypeError, ...
        raise InvalidInput(f"invalid Structure dict: {type(e).__name__}: {e}") from e


def parse_poscar(text: str) -> Structure:
    """The structure of a VASP 5 POSCAR (the element-symbol line is required)."""
    from pymatgen.io.vasp import Poscar

    lines = text.splitlines()
    symbols = lines[5].split() if len(lines) > 5 else []
    if not symbols or not all(_SYMBOL.fullmatch(s.split("_")[0]) for s in symbols):
        raise InvalidInput(
            "unreadable POSCAR: line 6 must list the element symbols (VASP 5 format)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Poscar.from_str(text, read_velocities=False).structure
        except Exception as e:  # noqa: BLE001 - malformed POSCARs raise many types
            raise InvalidInput(f"unreadable POSCAR: {type(e).__name__}: {e}") from e


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
