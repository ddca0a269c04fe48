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
import json
import math
import re
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, PeriodicSite, Species, Structure

from htvs.errors import InvalidInput, shown


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

#: Sites a reader builds at most when its caller gives no ``max_sites`` (sites per cell).
DEFAULT_MAX_SITES = 5_000
#: Largest structure text a reader accepts (characters; bytes of a file after gunzip).
MAX_TEXT_CHARS = 32_000_000
#: Deepest nesting of JSON values accepted in a structure's properties (levels).
MAX_JSON_DEPTH = 64
#: Range of lattice vector lengths of a readable cell (Å).
MIN_LATTICE_LENGTH_ANGSTROM = 0.5
MAX_LATTICE_LENGTH_ANGSTROM = 1000.0
#: Smallest cell volume per site of a readable cell (Å^3 per site).
MIN_VOLUME_PER_SITE_ANGSTROM3 = 1.0
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

#: The only ``@class`` tags a part of a structure dict may carry (with a ``pymatgen.*`` ``@module``;
#: the module path moves between pymatgen versions, and none is ever imported).
_STRUCTURE_CLASSES = frozenset({"Structure", "IStructure"})
_LATTICE_CLASSES = frozenset({"Lattice"})
_SITE_CLASSES = frozenset({"PeriodicSite", "Site"})
_SPECIES_CLASSES = frozenset({"Element", "Species"})

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


def decode_json(text: str) -> Any:
    """The value of JSON ``text``: the one JSON decoder of every structure reader.

    Raises:
        InvalidInput: more than :data:`MAX_TEXT_CHARS` characters, invalid JSON, nesting
            deeper than Python's decoder follows (e.g. ``"[" * 100000``), or a number too long
            to convert.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"expected JSON text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"JSON text of {len(text)} characters exceeds the limit of {MAX_TEXT_CHARS}")
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput("invalid JSON: nested too deeply for the decoder") from None
    except ValueError as e:  # JSONDecodeError, and integers longer than Python converts
        raise InvalidInput(f"invalid JSON: {_clip(str(e))}") from e


def site_limit(max_sites: int | None) -> int:
    """The site limit a reader applies: ``max_sites``, or :data:`DEFAULT_MAX_SITES` for None.

    Raises:
        InvalidInput: ``max_sites`` is not a positive integer.
    """
    if max_sites is None:
        return DEFAULT_MAX_SITES
    if isinstance(max_sites, bool) or not isinstance(max_sites, (int, np.integer)) or max_sites < 1:
        raise InvalidInput(f"max_sites must be a positive integer, got {shown(max_sites)}")
    return int(max_sites)


def check_site_count(n_sites: int, max_sites: int | None, detail: str = "") -> None:
    """Refuse a structure of ``n_sites`` sites above the limit (see :func:`site_limit`).

    Raises:
        InvalidInput: naming the count and the limit (and ``detail``, how the count was
            found); the exception's ``n_sites`` attribute holds the count, so callers can tell
            a size refusal from a malformed input.
    """
    limit = site_limit(max_sites)
    if n_sites > limit:
        exc = InvalidInput(
            f"{n_sites} sites exceeds the limit of {limit} atoms per cell" + (f" ({detail})" if detail else "")
        )
        exc.n_sites = n_sites  # type: ignore[attr-defined]
        raise exc


def check_cell(structure: Structure) -> Structure:
    """``structure`` itself after checking that its cell and coordinates are usable.

    The one cell check of every structure read or validated: finite lattice and coordinates,
    lattice vector lengths within :data:`MIN_LATTICE_LENGTH_ANGSTROM` to
    :data:`MAX_LATTICE_LENGTH_ANGSTROM` Å, and a volume of at least
    :data:`MIN_VOLUME_PER_SITE_ANGSTROM3` Å^3 per site (catches subnormal or collapsed cells
    that pass a ``volume > 0`` test and divide by zero later).

    Raises:
        InvalidInput: naming the offending length or volume and the accepted range.
    """
    _check_lattice(structure.lattice.matrix, len(structure))
    if len(structure) and not np.all(np.isfinite(structure.frac_coords)):
        raise InvalidInput("non-finite (NaN or infinite) coordinates: a site has non-finite coordinates")
    return structure


def _check_lattice(lattice_matrix: Any, n_sites: int) -> None:
    """The lattice part of :func:`check_cell`, for a 3x3 matrix (Å) and ``n_sites`` sites."""
    matrix = np.asarray(lattice_matrix, dtype=float)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise InvalidInput("non-finite (NaN or infinite) lattice: the lattice matrix is not finite")
    scale = np.max(np.abs(matrix), axis=1)  # scaled so that subnormal lengths do not square to 0
    with np.errstate(all="ignore"):  # an overflow gives inf, refused below
        unit = np.where(scale[:, None] > 0, matrix / np.where(scale > 0, scale, 1.0)[:, None], 0.0)
        lengths = scale * np.sqrt(np.sum(unit * unit, axis=1))
    for name, length in zip("abc", lengths, strict=True):
        if not MIN_LATTICE_LENGTH_ANGSTROM <= length <= MAX_LATTICE_LENGTH_ANGSTROM:
            raise InvalidInput(
                f"lattice length {name} = {length:.4g} Å is outside the accepted "
                f"{MIN_LATTICE_LENGTH_ANGSTROM:g}-{MAX_LATTICE_LENGTH_ANGSTROM:g} Å"
            )
    with np.errstate(all="ignore"):
        volume = abs(float(np.linalg.det(matrix)))
    if not math.isfinite(volume) or volume < MIN_VOLUME_PER_SITE_ANGSTROM3 * max(n_sites, 1):
        raise InvalidInput(
            f"cell volume {volume:.4g} Å^3 for {n_sites} sites is below the minimum of "
            f"{MIN_VOLUME_PER_SITE_ANGSTROM3:g} Å^3 per site (collapsed or degenerate cell)"
        )


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
            detail = f"{type(e).__name__}: {_clip(str(e))}" + (f" (pymatgen: {notes})" if notes else "")
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
    return _clip("; ".join(distinct), limit)


def _clip(text: str, limit: int = 300) -> str:
    """Free text (a pymatgen error or warning) cut to about ``limit`` characters; values are
    echoed with :func:`htvs.errors.shown`."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- pymatgen JSON


def structure_from_json(obj: Any, max_sites: int | None = None) -> Structure:
    """A structure from a decoded pymatgen ``Structure`` or ``ComputedStructureEntry`` dict.

    Safe for untrusted dicts: the structure is built from the plain values (lattice matrix or
    parameters, per site the species with occupancy and optional oxidation state, ``abc`` or
    ``xyz`` coordinates, label, properties) without pymatgen's ``from_dict``, so no
    ``@module`` is ever imported. ``@module``/``@class`` tags are accepted only where pymatgen
    writes them for these shapes (structure, lattice, site, species, entry); site and
    structure properties must be plain JSON (a monty-encoded numpy array becomes a list).
    Everything else of an entry than its ``structure`` is ignored.

    Args:
        obj: the decoded dict (see :func:`decode_json` for text).
        max_sites: most sites (default :data:`DEFAULT_MAX_SITES`).

    Raises:
        InvalidInput: another shape, a tag naming another class, a malformed value, more
            sites than ``max_sites``, or a refused cell (:func:`check_cell`); the message names
            the offending part.
    """
    limit = site_limit(max_sites)
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
    tag = obj.get("@class")
    if (isinstance(tag, str) and tag in _ENTRY_CLASSES) or ("structure" in obj and "energy" in obj):
        _check_tags(obj, "the entry", _ENTRY_CLASSES)
        inner = obj.get("structure")
        if not isinstance(inner, dict):
            raise InvalidInput("the entry dict has no 'structure' object")
        obj = inner
    if "lattice" not in obj or "sites" not in obj:
        raise InvalidInput(
            "JSON is neither a pymatgen Structure dict (with 'lattice' and 'sites') "
            "nor a ComputedStructureEntry dict (with 'structure')"
        )
    _check_tags(obj, "the structure", _STRUCTURE_CLASSES)
    lattice = _lattice_from_json(obj["lattice"])
    raw_sites = obj["sites"]
    if not isinstance(raw_sites, list):
        raise InvalidInput(f"'sites' must be a list, got {type(raw_sites).__name__}")
    check_site_count(len(raw_sites), limit)
    _check_lattice(lattice.matrix, len(raw_sites))  # before building sites on it
    sites = [_site_from_json(raw, index, lattice) for index, raw in enumerate(raw_sites)]
    charge = obj.get("charge")
    if charge is not None:
        charge = _number(charge, "the structure's 'charge'")
    properties = _plain_json(obj.get("properties") or {}, "the structure's properties", 0)
    if not isinstance(properties, dict):
        raise InvalidInput(f"the structure's 'properties' must be an object, got {type(properties).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Not all sites have property x": set to None
            structure = Structure.from_sites(sites, charge=charge, properties=properties)
    except Exception as e:  # noqa: BLE001 - pymatgen raises ValueError, TypeError, ...
        raise InvalidInput(f"invalid Structure dict: {type(e).__name__}: {_clip(str(e))}") from e
    return check_cell(structure)


def _check_tags(obj: dict, what: str, classes: frozenset[str]) -> None:
    """Refuse ``@module``/``@class`` tags of ``obj`` other than pymatgen's for ``classes``."""
    module, cls = obj.get("@module"), obj.get("@class")
    if module is None and cls is None:
        return
    pymatgen = module is None or (isinstance(module, str) and (module == "pymatgen" or module.startswith("pymatgen.")))
    if pymatgen and (cls is None or (isinstance(cls, str) and cls in classes)):
        return
    raise InvalidInput(
        f"{what} is tagged @module={shown(module, 80)}, @class={shown(cls, 80)}; "
        f"only pymatgen's {'/'.join(sorted(classes))} tags are accepted here"
    )


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float (bools refused), else InvalidInput naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInput(f"{what} must be a number, got {shown(value, 80)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidInput(f"{what} must be finite (not NaN or infinite), got {shown(value, 80)}")
    return number


def _vector(value: Any, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InvalidInput(f"{what} must be a list of 3 numbers, got {shown(value, 80)}")
    return [_number(v, what) for v in value]


def _lattice_from_json(raw: Any) -> Lattice:
    if not isinstance(raw, dict):
        raise InvalidInput(f"'lattice' must be an object, got {type(raw).__name__}")
    _check_tags(raw, "the lattice", _LATTICE_CLASSES)
    pbc = raw.get("pbc", (True, True, True))
    if not isinstance(pbc, (list, tuple)) or len(pbc) != 3 or not all(isinstance(p, bool) for p in pbc):
        raise InvalidInput(f"the lattice's 'pbc' must be 3 booleans, got {shown(pbc, 80)}")
    if "matrix" in raw:
        matrix = raw["matrix"]
        if not isinstance(matrix, (list, tuple)) or len(matrix) != 3:
            raise InvalidInput(f"the lattice 'matrix' must be 3 vectors, got {shown(matrix, 80)}")
        rows = [_vector(row, "a lattice 'matrix' row") for row in matrix]
        return Lattice(rows, pbc=tuple(pbc))
    try:
        a, b, c, alpha, beta, gamma = (
            _number(raw[key], f"the lattice's {key!r}") for key in ("a", "b", "c", "alpha", "beta", "gamma")
        )
    except KeyError as e:
        raise InvalidInput(f"the lattice has neither 'matrix' nor {e.args[0]!r}") from None
    try:
        return Lattice.from_parameters(a, b, c, alpha, beta, gamma, pbc=tuple(pbc))
    except Exception as e:  # noqa: BLE001 - impossible angles raise ValueError, ZeroDivisionError
        raise InvalidInput(f"invalid lattice parameters: {type(e).__name__}: {_clip(str(e))}") from e


def _site_from_json(raw: Any, index: int, lattice: Lattice) -> PeriodicSite:
    what = f"site {index}"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be an object, got {type(raw).__name__}")
    _check_tags(raw, what, _SITE_CLASSES)
    entries = raw.get("species")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput(f"{what} needs a non-empty 'species' list, got {shown(entries, 80)}")
    species: dict[Element | Species, float] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidInput(f"{what}: a species must be an object, got {type(entry).__name__}")
        _check_tags(entry, f"{what}'s species", _SPECIES_CLASSES)
        symbol = entry.get("element")
        if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol):
            raise InvalidInput(f"{what}: {shown(symbol, 40)} is not an element symbol")
        occupancy = _number(entry.get("occu", 1.0), f"{what}'s occupancy of {symbol}")
        if not 0 < occupancy <= 1 + 1e-6:
            raise InvalidInput(f"{what}: occupancy {occupancy:g} of {symbol} is outside (0, 1]")
        oxidation = entry.get("oxidation_state")
        specie: Element | Species = (
            Element(symbol) if oxidation is None
            else Species(symbol, _number(oxidation, f"{what}'s oxidation state of {symbol}"))
        )
        if specie in species:
            raise InvalidInput(f"{what} lists {specie} twice")
        species[specie] = occupancy
    if "abc" in raw:
        coords, cartesian = _vector(raw["abc"], f"{what}'s 'abc'"), False
    elif "xyz" in raw:
        coords, cartesian = _vector(raw["xyz"], f"{what}'s 'xyz'"), True
    else:
        raise InvalidInput(f"{what} has neither 'abc' nor 'xyz' coordinates")
    label = raw.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidInput(f"{what}'s 'label' must be text, got {type(label).__name__}")
    properties = _plain_json(raw.get("properties") or {}, f"{what}'s properties", 0)
    if not isinstance(properties, dict):
        raise InvalidInput(f"{what}'s 'properties' must be an object, got {type(properties).__name__}")
    try:
        return PeriodicSite(
            species, coords, lattice, coords_are_cartesian=cartesian, properties=properties, label=label
        )
    except Exception as e:  # noqa: BLE001 - occupancies above 1 raise ValueError, ...
        raise InvalidInput(f"{what}: {type(e).__name__}: {_clip(str(e))}") from e


def _plain_json(value: Any, what: str, depth: int) -> Any:
    """A copy of ``value`` made of JSON types only; no tagged object survives.

    A monty-encoded numpy array (``{"@module": "numpy", "@class": "array", "data": ...}``)
    becomes its ``data``; any other dict with ``@module`` or ``@class`` is refused.
    """
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(f"{what} are nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, what, depth + 1) for v in value]
    if isinstance(value, dict):
        if "@module" in value or "@class" in value:
            module, cls = value.get("@module"), value.get("@class")
            dtype = str(value.get("dtype", ""))
            if module == "numpy" and cls == "array" and "data" in value and not dtype.startswith("complex"):
                return _plain_json(value["data"], what, depth + 1)
            raise InvalidInput(
                f"{what} hold a serialized object (@module={shown(module, 80)}, "
                f"@class={shown(cls, 80)}); only plain JSON values are accepted"
            )
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{what} have a non-text key {shown(key, 40)}")
            out[key] = _plain_json(item, what, depth + 1)
        return out
    raise InvalidInput(f"{what} hold a {type(value).__name__}, not a JSON value")


# --------------------------------------------------------------------------- POSCAR


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
            raise InvalidInput(f"unreadable POSCAR: {type(e).__name__}: {_clip(str(e))}") from e
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
