"""Structures from pymatgen JSON that may be untrusted, built without monty's decoder.

pymatgen's ``Structure.from_dict`` runs monty's decoder on site properties, which imports any
module a ``{"@module": ..., "@class": ...}`` dict names. :func:`structure_from_json` builds the
structure from plain values itself: ``@module``/``@class`` tags are accepted only where pymatgen
writes them (with a ``pymatgen.*`` module, never imported), properties must be plain JSON, and
:func:`decode_json` bounds the text's size and nesting before decoding it.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, PeriodicSite, Species, Structure

from htvs.errors import InvalidInput, shown
from htvs.prototypes.cells import MAX_TEXT_CHARS, check_cell, check_lattice, check_site_count, clip, site_limit

#: Names of pymatgen entry classes whose dict carries a ``structure``.
_ENTRY_CLASSES = frozenset({"ComputedStructureEntry", "GibbsComputedStructureEntry"})
#: Deepest nesting of JSON values accepted in a structure's properties (levels).
MAX_JSON_DEPTH = 64
#: The only ``@class`` tags a part of a structure dict may carry (with a ``pymatgen.*`` ``@module``;
#: the module path moves between pymatgen versions, and none is ever imported).
_STRUCTURE_CLASSES = frozenset({"Structure", "IStructure"})
_LATTICE_CLASSES = frozenset({"Lattice"})
_SITE_CLASSES = frozenset({"PeriodicSite", "Site"})
_SPECIES_CLASSES = frozenset({"Element", "Species"})


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
        raise InvalidInput(f"invalid JSON: {clip(str(e))}") from e


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
    check_lattice(lattice.matrix, len(raw_sites))  # before building sites on it
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
        raise InvalidInput(f"invalid Structure dict: {type(e).__name__}: {clip(str(e))}") from e
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
        raise InvalidInput(f"invalid lattice parameters: {type(e).__name__}: {clip(str(e))}") from e


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
        raise InvalidInput(f"{what}: {type(e).__name__}: {clip(str(e))}") from e


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
