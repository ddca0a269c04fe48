"""``htvs.v1.StructureService``: stage 4 (materialize substituted structures, deduplicate) over gRPC.

Which errors are per row and which refuse the whole request:

* Whole request (INVALID_ARGUMENT, nothing computed): an empty batch, a batch above
  ``max_batch_rows``, inline rows together with a store ``input``, in Materialize both or neither of inline
  prototypes and ``prototype_set``, an inline prototype that cannot be read, is disordered or has
  more than ``max_sites`` sites (default 1,000), or two inline prototypes with one id; in
  Deduplicate a bad tolerance. An unknown
  ``prototype_set`` is NOT_FOUND.
* Per row (a ``RowError``, status OK, the other rows computed): what
  :func:`~htvs.structures.materialize` reports per row (unknown prototype id, species not in
  the prototype, unknown element, formula mismatch), and what
  :func:`~htvs.structures.deduplicate` refuses (unreadable, disordered, empty, non-finite
  structure, repeated id), and a structure of more than ``max_sites`` sites.

Structure text is untrusted: it is read by :mod:`htvs.prototypes.readers`, which never imports a
module a pymatgen JSON names, bounds JSON nesting, and refuses an oversized CIF before expanding it.

Structures travel as CIF text or pymatgen JSON (:class:`StructureData`); the helpers
:func:`structure_from_proto` and :func:`structure_to_proto` are shared with the conductivity
service. Prototype sets served by name (``"bundled"``) are loaded once, before the server starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import grpc
import pandas as pd
from pymatgen.core import Structure

from htvs.errors import DataNotFound, HTVSError, InvalidInput, RowError, shown
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import structure_pb2 as pb
from htvs.grpc.gen import structure_pb2_grpc as pb_grpc
from htvs.grpc.gen import substitution_pb2
from htvs.grpc.server import check_batch, report_rows
from htvs.grpc.store_io import stored_batch
from htvs.prototypes.records import Prototype, PrototypeSet
from htvs.structures import (
    DedupeConfig,
    MaterializeConfig,
    MaterializedStructure,
    VolumeRescaling,
    deduplicate,
    materialize,
)

#: Default largest number of rows (substitutions, structures, inline prototypes) per request.
DEFAULT_MAX_BATCH_ROWS = 10_000
#: Default most sites of one structure a request sends (inline prototypes, Deduplicate structures);
#: prototype sets keep cells to 200 atoms by default (``PrototypeFilter.max_atoms``).
DEFAULT_MAX_SITES = 1_000

_RESCALING = {
    pb.VOLUME_RESCALING_UNSPECIFIED: VolumeRescaling.IONIC_RADII,
    pb.VOLUME_RESCALING_NONE: VolumeRescaling.NONE,
    pb.VOLUME_RESCALING_IONIC_RADII: VolumeRescaling.IONIC_RADII,
}


# --------------------------------------------------------------------------- structures as text


def structure_from_proto(message: pb.StructureData, what: str = "structure", max_sites: int | None = None) -> Structure:
    """The pymatgen structure of a :class:`StructureData` (first data block of a CIF).

    Read by :mod:`htvs.prototypes.readers` (untrusted text: JSON decoded without importing
    anything it names, nesting bounded; a CIF refused before its symmetry expansion when it
    would exceed ``max_sites``; the cell checked).

    Args:
        message: the structure with its id.
        what: how to name the item in error messages, e.g. ``"structures[3]"``.
        max_sites: most sites (default :data:`~htvs.prototypes.readers.DEFAULT_MAX_SITES`).

    Raises:
        InvalidInput: no content, text that is not a readable CIF / pymatgen JSON, or a refused
            structure; the message names the item and its id.
    """
    from htvs.prototypes.readers import FileKind, parse_structures

    label = f"{what} ({shown(message.id)})" if message.id else what
    content = message.WhichOneof("content")
    try:
        if content == "cif":
            return parse_structures(message.cif, FileKind.CIF, max_sites)[0]
        if content == "pymatgen_json":
            return parse_structures(message.pymatgen_json, FileKind.JSON, max_sites)[0]
    except InvalidInput as exc:
        raise InvalidInput(f"{label}: {exc}") from exc
    raise InvalidInput(f"{label} has neither cif nor pymatgen_json")


def structure_to_proto(item_id: str, structure: Structure, output_format: int) -> pb.StructureData:
    """A :class:`StructureData` of ``structure`` as CIF (default, P1) or pymatgen JSON."""
    if output_format == pb.STRUCTURE_FORMAT_PYMATGEN_JSON:
        return pb.StructureData(id=item_id, pymatgen_json=json.dumps(structure.as_dict()))
    if output_format not in (pb.STRUCTURE_FORMAT_UNSPECIFIED, pb.STRUCTURE_FORMAT_CIF):
        raise InvalidInput(f"output_format {output_format} is not a known StructureFormat")
    from pymatgen.io.cif import CifWriter

    return pb.StructureData(id=item_id, cif=str(CifWriter(structure)))


def _row_error(index: int, value: str, message: str, kind: str = "InvalidInput") -> common_pb2.RowError:
    return common_pb2.RowError(index=index, value=value, message=message, kind=kind)


# --------------------------------------------------------------------------- request -> stage inputs


def materialize_config_from_proto(message: pb.MaterializeOptions) -> MaterializeConfig:
    """The stage's :class:`MaterializeConfig`; unset fields take its defaults.

    Raises:
        InvalidInput: an unknown VolumeRescaling value.
    """
    if message.rescale_volume not in _RESCALING:
        raise InvalidInput(f"options.rescale_volume {message.rescale_volume} is not a known VolumeRescaling")
    defaults = MaterializeConfig()
    check = message.check_formula if message.HasField("check_formula") else defaults.check_formula
    return MaterializeConfig(rescale_volume=_RESCALING[message.rescale_volume], check_formula=check)


def dedupe_config_from_proto(message: pb.DedupeOptions) -> DedupeConfig:
    """The stage's :class:`DedupeConfig`; unset fields take its defaults.

    Raises:
        InvalidInput: a tolerance outside its range (:class:`DedupeConfig` checks them), named
            ``options.<field>`` with its value and the range.
    """
    values: dict[str, object] = {}
    for field, name in (("ltol", "ltol"), ("stol", "stol"), ("angle_tol_deg", "angle_tol")):
        if message.HasField(field):
            values[name] = getattr(message, field)
    for name in ("attempt_supercell", "group_by_space_group"):
        if message.HasField(name):
            values[name] = getattr(message, name)
    try:
        return DedupeConfig(**values)
    except InvalidInput as exc:  # named as the request names it: options.ltol, options.angle_tol_deg
        text = str(exc)
        text = "angle_tol_deg" + text[len("angle_tol"):] if text.startswith("angle_tol ") else text
        raise InvalidInput(f"options.{text}") from None


def substitution_frame(substitutions: Sequence[substitution_pb2.Substitution]) -> pd.DataFrame:
    """Stage 1's table shape (``prototype_id``, ``formula``, ``from_j``/``to_j``) of Substitution messages.

    Empty strings become nulls, so the stage reports a missing prototype id or an incomplete
    pair by name; an empty ``formula`` is not checked.
    """
    width = max(1, max(len(s.replacements) for s in substitutions))
    records = []
    for substitution in substitutions:
        record: dict[str, object] = {
            "prototype_id": substitution.prototype_id or None,
            "formula": substitution.formula or None,
        }
        for j in range(width):
            if j < len(substitution.replacements):
                pair = substitution.replacements[j]
                record[f"from_{j}"], record[f"to_{j}"] = pair.from_element or None, pair.to_element or None
            else:
                record[f"from_{j}"] = record[f"to_{j}"] = None
        records.append(record)
    return pd.DataFrame.from_records(records)


def inline_prototypes(
    messages: Sequence[pb.StructureData], max_sites: int = DEFAULT_MAX_SITES
) -> dict[str, Prototype]:
    """Prototypes of the request's inline structures (oxidation states removed).

    Raises:
        InvalidInput: an empty or repeated id, a structure that cannot be read, one of more
            than ``max_sites`` sites (a CIF is refused before its symmetry expansion), or a
            disordered one; the message names the prototype.
    """
    from htvs.prototypes.filters import disorder_reason, element_structure

    out: dict[str, Prototype] = {}
    for i, message in enumerate(messages):
        what = f"prototypes[{i}]"
        if not message.id:
            raise InvalidInput(f"{what} has no id")
        if message.id in out:
            raise InvalidInput(f"{what}: prototype id {shown(message.id)} is given twice")
        structure = structure_from_proto(message, what, max_sites)
        try:
            structure = element_structure(structure)
        except InvalidInput as exc:
            raise InvalidInput(f"{what} ({shown(message.id)}): {exc}") from exc
        if not structure.is_ordered:
            raise InvalidInput(
                f"{what} ({shown(message.id)}) is {disorder_reason(structure)}; a prototype must be ordered"
            )
        out[message.id] = Prototype.from_structure(message.id, "inline", structure)
    return out


# --------------------------------------------------------------------------- servicer


class StructureServicer(pb_grpc.StructureServiceServicer):
    """Serves :func:`~htvs.structures.materialize` and :func:`~htvs.structures.deduplicate`.

    Args:
        prototype_sets: named prototype sets loaded before the server starts (e.g.
            ``{"bundled": load_prototypes("bundled")}``); Materialize may use them by name.
        max_batch_rows: most substitutions, structures or inline prototypes per request.
        max_sites: most sites of one structure in a request (an inline prototype above it
            refuses the request; a Deduplicate structure above it is refused as its row); a CIF
            is refused before pymatgen expands its symmetry.
    """

    service_name = pb.DESCRIPTOR.services_by_name["StructureService"].full_name
    #: The server's store, for batch calls whose rows come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        prototype_sets: Mapping[str, PrototypeSet] | None = None,
        *,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        max_sites: int = DEFAULT_MAX_SITES,
    ) -> None:
        if max_batch_rows < 1:
            raise InvalidInput(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if isinstance(max_sites, bool) or not isinstance(max_sites, int) or max_sites < 1:
            raise InvalidInput(f"max_sites must be a positive integer, got {shown(max_sites)}")
        self.max_sites = max_sites
        self._sets = {
            name: {p.id: p for p in loaded.prototypes} for name, loaded in (prototype_sets or {}).items()
        }
        self.max_batch_rows = int(max_batch_rows)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_StructureServiceServicer_to_server(self, server)

    def _check_batch(self, request, n_rows: int, field: str) -> None:
        check_batch(request, n_rows, field, self.max_batch_rows)

    def _prototypes(self, request: pb.MaterializeRequest) -> Mapping[str, Prototype]:
        n_inline = len(request.prototypes)
        if request.prototype_set and n_inline:
            raise InvalidInput(f"give prototypes or prototype_set {shown(request.prototype_set)}, not both")
        if request.prototype_set:
            if request.prototype_set not in self._sets:
                raise DataNotFound(
                    f"no prototype set {shown(request.prototype_set)} on this server "
                    f"(available: {sorted(self._sets) or 'none'})"
                )
            return self._sets[request.prototype_set]
        if n_inline == 0:
            raise InvalidInput("MaterializeRequest has no prototypes and no prototype_set")
        if n_inline > self.max_batch_rows:
            raise InvalidInput(
                f"MaterializeRequest has {n_inline} inline prototypes, more than this server's limit of "
                f"{self.max_batch_rows}"
            )
        return inline_prototypes(request.prototypes, self.max_sites)

    # -- RPCs -------------------------------------------------------------------------------

    @stored_batch("substitutions", ("rows",), pb.MaterializeResponse, summed=("n_materialized", "n_errors"))
    def Materialize(self, request: pb.MaterializeRequest, context) -> pb.MaterializeResponse:
        self._check_batch(request, len(request.substitutions), "substitutions")
        config = materialize_config_from_proto(request.options)
        if request.output_format not in pb.StructureFormat.values():
            raise InvalidInput(f"output_format {request.output_format} is not a known StructureFormat")
        prototypes = self._prototypes(request)
        results = materialize(prototypes, substitution_frame(request.substitutions), config)
        response = pb.MaterializeResponse()
        n_errors = 0
        for index, (given, result) in enumerate(zip(request.substitutions, results, strict=True)):
            if isinstance(result, RowError):
                n_errors += 1
                response.rows.add(
                    id=result.value,
                    prototype_id=given.prototype_id,
                    replacements=given.replacements,
                    error=common_pb2.RowError(**asdict(result)),
                )
                continue
            assert isinstance(result, MaterializedStructure)
            response.rows.add(
                id=result.id,
                formula=result.formula,
                prototype_id=result.prototype_id,
                replacements=[
                    substitution_pb2.Replacement(from_element=a, to_element=b) for a, b in result.substitution
                ],
                volume_scale=result.volume_scale,
                structure=structure_to_proto(result.id, result.structure, request.output_format),
            )
        response.n_materialized = len(results) - n_errors
        response.n_errors = n_errors
        report_rows(len(results), n_errors)
        return response

    @stored_batch("structures", ("unique_ids", "unique", "duplicates", "refused"), pb.DeduplicateResponse,
                  rowwise=False)
    def Deduplicate(self, request: pb.DeduplicateRequest, context) -> pb.DeduplicateResponse:
        self._check_batch(request, len(request.structures), "structures")
        config = dedupe_config_from_proto(request.options)
        refused: list[common_pb2.RowError] = []
        items: list[tuple[str, Structure]] = []
        origin: list[int] = []  # request index of each item
        for index, message in enumerate(request.structures):
            what = f"structures[{index}]"
            if not message.id:
                refused.append(_row_error(index, "", f"{what} has no id"))
                continue
            try:
                structure = structure_from_proto(message, what, self.max_sites)
            except HTVSError as exc:
                refused.append(_row_error(index, message.id, str(exc), type(exc).__name__))
                continue
            items.append((message.id, structure))
            origin.append(index)
        result = deduplicate(items, config)
        for item in result.refused:
            index = origin[item.index]
            refused.append(_row_error(index, item.value, f"structures[{index}] ({shown(item.value)}): {item.message}",
                                      item.kind))
        refused.sort(key=lambda e: e.index)
        first_index: dict[str, int] = {}
        for (item_id, _), index in zip(items, origin, strict=True):
            first_index.setdefault(item_id, index)
        unique_ids = result.unique_ids
        response = pb.DeduplicateResponse(
            unique_ids=unique_ids,
            duplicates=[pb.Duplicate(id=d, duplicate_of=r) for d, r in result.duplicate_of.items()],
            refused=refused,
            counts=pb.DedupeCounts(
                n_in=len(request.structures),
                n_out=result.n_out,
                n_removed=result.n_removed,
                n_refused=len(refused),
                n_comparisons=result.n_comparisons,
            ),
        )
        if request.include_structures:
            response.unique.extend(request.structures[first_index[i]] for i in unique_ids)
        report_rows(len(request.structures), len(refused))
        return response
