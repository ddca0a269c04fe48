"""Prototypes from the Materials Project summary endpoint, through ``mp_api``'s ``MPRester``.

The API key is read from ``MP_API_KEY`` when :meth:`MaterialsProjectSource.load` runs (never
at import). The client is built by a factory argument, so tests substitute one that replays
recorded responses, and deployments may add their own session settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymatgen.core import Structure

from htvs.errors import InvalidInput, StageFailed
from htvs.prototypes.collect import Collector
from htvs.prototypes.filters import PrototypeFilter
from htvs.prototypes.readers import structure_from_json
from htvs.prototypes.records import PrototypeSet

API_KEY_VARIABLE = "MP_API_KEY"
#: Summary fields requested; ``structure`` is the large one.
SUMMARY_FIELDS: tuple[str, ...] = (
    "material_id",
    "formula_pretty",
    "structure",
    "energy_above_hull",
    "is_stable",
)


class MaterialsProjectClient(Protocol):
    """The part of ``mp_api.client.MPRester`` this source uses (``materials.summary``)."""

    materials: Any

    def __enter__(self) -> MaterialsProjectClient: ...

    def __exit__(self, *exc_info: object) -> object: ...


#: Builds a client from an API key.
ClientFactory = Callable[[str], MaterialsProjectClient]


def default_client_factory(api_key: str) -> MaterialsProjectClient:
    """An ``MPRester`` returning plain dicts (no document-model validation), bars muted."""
    from htvs.extras import require_extra

    MPRester = require_extra("mp_api.client", "mp", "the live Materials Project source 'mp'").MPRester
    return MPRester(api_key=api_key, use_document_model=False, mute_progress_bars=True)


@dataclass(frozen=True)
class MaterialsProjectSource:
    """Li-containing ternary and quaternary materials of the Materials Project.

    Queries ``materials.summary.search`` with the filter's required elements, the range of its
    element counts and ``num_sites <= max_atoms``; keeps the ordered structures the filter
    passes (MP structures are ordered). Ids are MP material ids (``"mp-19017"``).

    Attributes:
        prototype_filter: which structures become prototypes (also narrows the query).
        energy_above_hull_max: keep materials at most this far above the hull, eV/atom
            (None: no limit).
        include_deprecated: also return materials MP marks deprecated.
        include_gnome: also return the GNoMe r2SCAN materials MP serves (off: the seed paper
            predates them).
        api_key: the key; None reads ``MP_API_KEY`` when :meth:`load` runs.
        client_factory: builds the client from the key (default: ``MPRester``).
        chunk_size: documents per request (the API serves at most 1,000).
    """

    prototype_filter: PrototypeFilter = field(default_factory=PrototypeFilter)
    energy_above_hull_max: float | None = None
    include_deprecated: bool = False
    include_gnome: bool = False
    api_key: str | None = field(default=None, repr=False)
    client_factory: ClientFactory = field(default=default_client_factory, repr=False)
    chunk_size: int = 1000

    def __post_init__(self) -> None:
        if self.energy_above_hull_max is not None and self.energy_above_hull_max < 0:
            raise InvalidInput(
                f"energy_above_hull_max must be >= 0 eV/atom, got {self.energy_above_hull_max!r}"
            )
        if not 1 <= self.chunk_size <= 1000:
            raise InvalidInput(f"chunk_size must be in 1..1000, got {self.chunk_size!r}")

    def resolve_api_key(self) -> str:
        """The API key: the explicit one, else ``MP_API_KEY``.

        Raises:
            InvalidInput: neither is set (the message says how to set it).
        """
        key = self.api_key or os.environ.get(API_KEY_VARIABLE, "").strip()
        if not key:
            raise InvalidInput(
                f"the Materials Project prototype source needs an API key: set the "
                f"{API_KEY_VARIABLE} environment variable (get a key at "
                "https://next-gen.materialsproject.org/api), or use the 'bundled' source "
                "or a local folder of structures instead"
            )
        return key

    def search_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``materials.summary.search`` for this source."""
        flt = self.prototype_filter
        kwargs: dict[str, Any] = {
            "elements": list(flt.required_elements),
            "num_elements": (min(flt.allowed_n_elements), max(flt.allowed_n_elements)),
            "num_sites": (1, flt.max_atoms),
            "fields": list(SUMMARY_FIELDS),
            "chunk_size": self.chunk_size,
            "include_gnome": self.include_gnome,
        }
        if not self.include_deprecated:
            kwargs["deprecated"] = False
        if self.energy_above_hull_max is not None:
            kwargs["energy_above_hull"] = (0.0, float(self.energy_above_hull_max))
        return kwargs

    def load(self) -> PrototypeSet:
        """Query Materials Project and filter the answer.

        Raises:
            InvalidInput: no API key.
            StageFailed: the client could not be built or the query failed (network, server,
                rejected key); the client's message is kept.
        """
        api_key = self.resolve_api_key()
        try:
            with self.client_factory(api_key) as client:
                docs = client.materials.summary.search(**self.search_kwargs())
        except Exception as e:  # noqa: BLE001 - mp_api raises MPRestError, requests errors, ...
            message = f"Materials Project summary query failed: {type(e).__name__}: {e}"
            raise StageFailed(message) from e
        return prototypes_from_summary_docs(docs, self.prototype_filter)


def _field(doc: Any, name: str) -> Any:
    """A field of a summary document, whether a dict or a document model."""
    if isinstance(doc, dict):
        return doc.get(name)
    return getattr(doc, name, None)


def prototypes_from_summary_docs(
    docs: Iterable[Any], prototype_filter: PrototypeFilter
) -> PrototypeSet:
    """Prototypes (id = material id) from summary documents (dicts or ``SummaryDoc`` models)."""
    collector = Collector("materials_project", prototype_filter, None)
    for index, doc in enumerate(docs):
        material_id = _field(doc, "material_id")
        name = str(material_id) if material_id is not None else f"document {index}"
        if material_id is None:
            collector.skip(name, "summary document without material_id")
            continue
        raw = _field(doc, "structure")
        if raw is None:
            collector.skip(name, "summary document without structure")
            continue
        try:
            structure = raw if isinstance(raw, Structure) else structure_from_json(raw)
        except Exception as e:  # noqa: BLE001 - malformed dicts raise KeyError, TypeError, ...
            collector.skip(name, f"invalid structure: {type(e).__name__}: {e}")
            continue
        collector.admit(str(material_id), name, structure)
    return collector.result()
