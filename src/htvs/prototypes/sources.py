"""Prototype sources behind one interface: the bundled sets, a local folder, Materials Project.

Every source returns a :class:`~htvs.prototypes.records.PrototypeSet`: the prototypes that
pass its :class:`~htvs.prototypes.filters.PrototypeFilter`, sorted by id (ids unique), and
every input it did not load with the reason. :func:`load_prototypes` picks a source from a
short spec string: a name in :data:`SOURCE_NAMES` (``"mp-2018"``, ``"obelix"``, ``"mp"``) or a
folder path.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

from pymatgen.core import Structure

from htvs.errors import InvalidInput
from htvs.prototypes.collect import Collector
from htvs.prototypes.filters import PrototypeFilter
from htvs.prototypes.ordering import OrderingBudget
from htvs.prototypes.readers import (
    FileKind,
    classify_file,
    decode_json,
    parse_cif,
    parse_structures,
    read_text,
    structure_from_json,
    summarize_cif,
)
from htvs.prototypes.records import PrototypeSet, check_ids_known

logger = logging.getLogger(__name__)

BUNDLED_SPEC = "bundled"
OBELIX_SPEC = "obelix"
MP_2018_SPEC = "mp-2018"
MATERIALS_PROJECT_SPEC = "mp"


@runtime_checkable
class PrototypeSource(Protocol):
    """Anything that loads a prototype set (bundled, folder, Materials Project, ...)."""

    def load(self) -> PrototypeSet:
        """Load and filter the prototypes; unreadable or rejected inputs go to ``skipped``."""
        ...


# --------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class FolderSource:
    """Structures in one local folder (not searched recursively).

    Reads ``*.cif``, ``*.json`` (a pymatgen ``Structure`` dict or a ``ComputedStructureEntry``
    dict), ``*.vasp``/``*.poscar``/``POSCAR*``/``CONTCAR*`` (VASP 5), each optionally gzipped
    (``*.json.gz``, ...). A prototype's id is the file name without its format suffix (a CIF
    with several data blocks gives ``<stem>:1``, ``<stem>:2``, ...). Every other file, and every
    malformed, disordered or filtered-out structure, is reported in ``skipped`` under its file
    name; hidden files are ignored. Files are untrusted input (see :mod:`htvs.prototypes.readers`):
    a JSON never imports what it names, deeply nested JSON is a skipped file, and a CIF whose
    symmetry expansion exceeds :data:`~htvs.prototypes.readers.DEFAULT_MAX_SITES` sites is
    skipped before it is expanded (the filter's ``max_atoms`` applies to what is read).

    Attributes:
        folder: the folder to read.
        prototype_filter: which structures become prototypes.
        ordered_approximants: also try an ordered approximant (id ``<stem>:ordered``) of each
            disordered structure, see :mod:`htvs.prototypes.ordering`.
        ordering_budget: limits of that search.
    """

    folder: Path | str
    prototype_filter: PrototypeFilter = field(default_factory=PrototypeFilter)
    ordered_approximants: bool = False
    ordering_budget: OrderingBudget = field(default_factory=OrderingBudget)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    def load(self) -> PrototypeSet:
        folder = self.folder
        if not folder.exists():
            raise InvalidInput(f"prototype folder {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise InvalidInput(f"prototype folder {str(folder)!r} is not a folder")
        collector = Collector(
            source="folder",
            prototype_filter=self.prototype_filter,
            ordering_budget=self.ordering_budget if self.ordered_approximants else None,
        )
        owner: dict[str, str] = {}  # prototype id -> file that claimed it
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name.startswith("."):
                continue
            for prototype_id, name, structure in self._read(path, collector):
                if prototype_id in owner:
                    taken = f"id {prototype_id!r} already taken by {owner[prototype_id]}"
                    collector.skip(name, taken)
                    continue
                owner[prototype_id] = path.name
                collector.admit(prototype_id, name, structure)
        return collector.result()

    @staticmethod
    def _read(path: Path, collector: Collector) -> Iterator[tuple[str, str, Structure]]:
        """(id, report name, structure) of each structure in ``path``; failures are skipped."""
        if path.is_dir():
            collector.skip(path.name, "is a folder (folders are not searched recursively)")
            return
        spec = classify_file(path.name)
        if spec is None:
            collector.skip(
                path.name, "not a structure file (expected .cif, .json, .vasp, POSCAR*, or .gz)"
            )
            return
        try:
            text = read_text(path, spec.gzipped)
            if spec.kind is FileKind.CIF:
                # reject by composition before the (slow) symmetry expansion
                summary = summarize_cif(text)
                if summary is not None:
                    reason = collector.prototype_filter.composition_reason(summary.elements)
                    if reason is not None:
                        collector.skip(path.name, reason)
                        return
            structures = parse_structures(text, spec.kind)
        except InvalidInput as e:
            collector.skip(path.name, str(e))
            return
        if len(structures) == 1:
            yield spec.stem, path.name, structures[0]
            return
        for index, structure in enumerate(structures, start=1):
            yield f"{spec.stem}:{index}", f"{path.name} (block {index})", structure


# --------------------------------------------------------------------------- bundled


#: Whether :class:`BundledSource` adds ordered approximants unless told otherwise.
BUNDLED_APPROXIMANTS_DEFAULT = True


@dataclass(frozen=True)
class BundledSource:
    """The prototypes shipped with htvs and pymatgen; needs no network.

    * ``obelix:<ID>``: every OBELiX CIF (Therrien et al. 2026, CC BY 4.0; 321 bundled) that
      passes the filter as given; 64 with the default filter.
    * ``obelix:<ID>:ordered`` (when ``ordered_approximants``): ordered approximants of
      disordered OBELiX structures that pymatgen orders cheaply in their own cell (see
      :mod:`htvs.prototypes.ordering`).
    * ``pymatgen:<stem>``: the structures pymatgen ships in ``pymatgen/util/structures``
      (LiFePO4 and Li3V2(PO4)3 pass the default filter; Li2O and Li2O2 are binary;
      Li10GeP2S12 is disordered).

    The result is cached per process (per filter and options); each call returns fresh
    structure copies, so callers may modify them.

    Attributes:
        prototype_filter: which structures become prototypes.
        ordered_approximants: add ordered approximants of disordered structures (about 8 s
            more on first load).
        ordering_budget: limits of the approximant search.
    """

    prototype_filter: PrototypeFilter = field(default_factory=PrototypeFilter)
    ordered_approximants: bool = BUNDLED_APPROXIMANTS_DEFAULT
    ordering_budget: OrderingBudget = field(default_factory=OrderingBudget)

    def load(self) -> PrototypeSet:
        budget = self.ordering_budget if self.ordered_approximants else None
        return _load_bundled(self.prototype_filter, budget).copy()


@functools.lru_cache(maxsize=4)
def _load_bundled(prototype_filter: PrototypeFilter, budget: OrderingBudget | None) -> PrototypeSet:
    from htvs.datasets import load_obelix_cifs

    collector = Collector("bundled", prototype_filter, budget)
    for cif in load_obelix_cifs():
        prototype_id = f"obelix:{cif.id}"
        summary = summarize_cif(cif.text)
        if summary is not None:
            reason = prototype_filter.composition_reason(summary.elements)
            if reason is None and summary.has_partial_occupancy and budget is None:
                reason = "disordered: partially occupied sites"
            if reason is not None:
                collector.skip(prototype_id, reason)
                continue
        try:
            structures = parse_cif(cif.text)
        except InvalidInput as e:
            collector.skip(prototype_id, str(e))
            continue
        collector.admit(prototype_id, prototype_id, structures[0])
    for stem, read in _pymatgen_structure_files():
        prototype_id = f"pymatgen:{stem}"
        try:
            structure = structure_from_json(decode_json(read()))
        except InvalidInput as e:
            collector.skip(prototype_id, str(e))
            continue
        collector.admit(prototype_id, prototype_id, structure)
    return collector.result()


def _pymatgen_structure_files() -> list[tuple[str, Callable[[], str]]]:
    """(stem, text reader) of each ``pymatgen/util/structures/*.json``, sorted by stem."""
    try:
        folder = resources.files("pymatgen.util.structures")
    except ModuleNotFoundError:
        logger.warning("pymatgen ships no util/structures folder; no pymatgen prototypes")
        return []
    files = [f for f in folder.iterdir() if f.is_file() and f.name.endswith(".json")]
    return [(f.name[: -len(".json")], f.read_text) for f in sorted(files, key=lambda f: f.name)]


# --------------------------------------------------------------------------- dispatch


#: The named prototype sources (anything else is a folder path).
SOURCE_NAMES: dict[str, str] = {
    MP_2018_SPEC: "4,320 Li ternary/quaternary structures of the 2018 Materials Project snapshot (bundled)",
    OBELIX_SPEC: "82 prototypes from the OBELiX CIFs and pymatgen's structures (bundled)",
    BUNDLED_SPEC: f"the older name of {OBELIX_SPEC!r}",
    MATERIALS_PROJECT_SPEC: "the live Materials Project API (needs MP_API_KEY and the network)",
}


def source_from_spec(
    spec: str | os.PathLike[str],
    prototype_filter: PrototypeFilter | None = None,
    ids: tuple[str, ...] | None = None,
) -> PrototypeSource:
    """The source a spec names: one of :data:`SOURCE_NAMES` or a folder path.

    A folder literally named like a source is given as ``./obelix``.

    Args:
        spec: the name or folder.
        prototype_filter: which structures become prototypes (default: Li ternary/quaternary).
        ids: keep only these prototype ids (None: all); an id the source lacks is refused.

    Raises:
        InvalidInput: the spec is neither a source name nor an existing folder (the message
            names it and lists the names).
    """
    flt = prototype_filter or PrototypeFilter()
    source: PrototypeSource
    if isinstance(spec, str) and spec == MP_2018_SPEC:
        from htvs.prototypes.mp_snapshot import MPSnapshotSource

        return MPSnapshotSource(prototype_filter=flt, ids=ids)
    if isinstance(spec, str) and spec in (BUNDLED_SPEC, OBELIX_SPEC):
        source = BundledSource(prototype_filter=flt)
    elif isinstance(spec, str) and spec == MATERIALS_PROJECT_SPEC:
        from htvs.prototypes.materials_project import MaterialsProjectSource

        source = MaterialsProjectSource(prototype_filter=flt)
    else:
        path = Path(spec)
        if not path.is_dir():
            names = ", ".join(repr(name) for name in SOURCE_NAMES)
            what = "folder" if ("/" in str(spec) or os.sep in str(spec)) else "prototype source"
            raise InvalidInput(
                f"{what} {str(spec)!r} is neither a source name ({names}) nor an existing folder"
            )
        source = FolderSource(folder=path, prototype_filter=flt)
    return source if ids is None else SelectedIds(source, tuple(ids))


@dataclass(frozen=True)
class SelectedIds:
    """Only the prototypes of ``inner`` whose id is in ``ids``.

    Raises (on load):
        InvalidInput: an id is neither loaded nor skipped by ``inner`` (a typo).
    """

    inner: PrototypeSource
    ids: tuple[str, ...]

    def load(self) -> PrototypeSet:
        loaded = self.inner.load()
        wanted = set(self.ids)
        known = {p.id for p in loaded.prototypes} | {s.name for s in loaded.skipped}
        check_ids_known(wanted, known, "the source")
        return PrototypeSet(
            prototypes=tuple(p for p in loaded.prototypes if p.id in wanted),
            skipped=tuple(s for s in loaded.skipped if s.name in wanted),
        )


def load_prototypes(
    spec: str | os.PathLike[str],
    prototype_filter: PrototypeFilter | None = None,
    ids: tuple[str, ...] | None = None,
) -> PrototypeSet:
    """Load the prototypes a spec names (see :func:`source_from_spec`) with default options.

    Construct :class:`BundledSource`, :class:`FolderSource`,
    :class:`~htvs.prototypes.mp_snapshot.MPSnapshotSource` or
    :class:`~htvs.prototypes.materials_project.MaterialsProjectSource` directly for
    source-specific options.
    """
    return source_from_spec(spec, prototype_filter, ids).load()
