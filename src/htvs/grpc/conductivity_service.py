"""``htvs.v1.ConductivityService``: stage 6 (Li-ion conductivity of structures) over gRPC.

Which errors are per row and which refuse the whole request:

* Whole request (INVALID_ARGUMENT, nothing computed): an empty batch, a batch above
  ``max_batch_rows``, a structure without an id, a ``max_atoms`` of 0 or above the server's
  limit, inline rows together with a store ``input``.
* Per row (a ``RowError``, status OK, the other rows predicted): what
  :func:`~htvs.conductivity.predict.predict_conductivity` reports per item (malformed CIF, no
  sites, too many sites naming the limit, NaN coordinates, degenerate cell, graph failure), a
  pymatgen JSON that cannot be read (read by :mod:`htvs.prototypes.readers`: nothing it names is
  imported, nesting is bounded, more than ``max_atoms`` sites are refused before building the
  structure), and a structure without Li, which is *not predicted*: its
  row has ``no_lithium`` set and a RowError of kind ``"NoLithium"`` (:data:`htvs.errors.NO_LITHIUM`).

The ensemble is loaded once by the caller (:func:`htvs.conductivity.predict.load_ensemble`) and
passed in; the torch-based stage module is imported only when the servicer is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from htvs.errors import NO_LITHIUM, HTVSError, InvalidInput, RowError
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import conductivity_pb2 as pb
from htvs.grpc.gen import conductivity_pb2_grpc as pb_grpc
from htvs.grpc.server import check_batch, report_rows
from htvs.grpc.store_io import stored_batch
from htvs.grpc.structure_service import structure_from_proto

if TYPE_CHECKING:
    from htvs.conductivity.predict import ConductivityConfig, ConductivityEnsemble

#: Default largest number of structures per request.
DEFAULT_MAX_BATCH_ROWS = 1_000
_METRIC_FIELDS = ("mae_log10_sigma", "accuracy", "roc_auc", "fraction_superionic")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def card_test_metrics(card: Mapping[str, Any]) -> list[pb.ConductivityTestMetrics]:
    """The model card's ``test`` section (model -> subset -> metrics) as messages; missing values unset."""
    out = []
    test = card.get("test")
    if not isinstance(test, Mapping):
        return out
    for model, subsets in test.items():
        if not isinstance(subsets, Mapping):
            continue
        for subset, metrics in subsets.items():
            if not isinstance(metrics, Mapping):
                continue
            fields: dict[str, Any] = {"model": str(model), "subset": str(subset), "n": int(metrics.get("n", 0) or 0)}
            for name in _METRIC_FIELDS:
                value = _finite(metrics.get(name))
                if value is not None:
                    fields[name] = value
            out.append(pb.ConductivityTestMetrics(**fields))
    return out


def n_models(ensemble: ConductivityEnsemble) -> int:
    """Members of the ensemble (its model card's list, else its loaded models)."""
    listed = ensemble.card.get("models") if isinstance(ensemble.card, Mapping) else None
    if isinstance(listed, list) and listed:
        return len(listed)
    return len(getattr(ensemble, "models", ()) or ())


class ConductivityServicer(pb_grpc.ConductivityServiceServicer):
    """Serves :func:`~htvs.conductivity.predict.predict_conductivity`.

    Args:
        ensemble: the loaded ensemble (``load_ensemble()``: the shipped one).
        config: the stage's limits; ``config.max_atoms`` is the most a request may ask for
            (default :class:`~htvs.conductivity.predict.ConductivityConfig`).
        max_batch_rows: most structures per request.
    """

    service_name = pb.DESCRIPTOR.services_by_name["ConductivityService"].full_name
    #: The server's store, for batch calls whose rows come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        ensemble: ConductivityEnsemble,
        config: ConductivityConfig | None = None,
        *,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ) -> None:
        from htvs.conductivity.predict import ConductivityConfig

        if max_batch_rows < 1:
            raise InvalidInput(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.ensemble = ensemble
        self.config = config or ConductivityConfig()
        self.max_batch_rows = int(max_batch_rows)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_ConductivityServiceServicer_to_server(self, server)

    def _request_config(self, request: pb.ConductivityPredictRequest) -> ConductivityConfig:
        if not request.HasField("max_atoms"):
            return self.config
        limit = self.config.max_atoms
        if request.max_atoms < 1 or request.max_atoms > limit:
            raise InvalidInput(
                f"ConductivityPredictRequest.max_atoms must be 1 to this server's limit of {limit}, "
                f"got {request.max_atoms}"
            )
        return dataclasses.replace(self.config, max_atoms=int(request.max_atoms))

    def _check_batch(self, request: pb.ConductivityPredictRequest) -> None:
        check_batch(request, len(request.structures), "structures", self.max_batch_rows)
        for i, message in enumerate(request.structures):
            if not message.id:
                raise InvalidInput(f"ConductivityPredictRequest.structures[{i}] has no id")

    # -- RPCs -------------------------------------------------------------------------------

    @stored_batch("structures", ("rows",), pb.ConductivityPredictResponse, summed=("n_predicted", "n_errors"))
    def Predict(self, request: pb.ConductivityPredictRequest, context) -> pb.ConductivityPredictResponse:
        self._check_batch(request)
        config = self._request_config(request)
        rows: list[pb.ConductivityRow | None] = [None] * len(request.structures)
        items: list[tuple[str, object]] = []
        origin: list[int] = []
        for index, message in enumerate(request.structures):
            content = message.WhichOneof("content")
            if content == "cif":
                items.append((message.id, message.cif))  # the stage reads CIF text itself
                origin.append(index)
                continue
            try:
                structure = structure_from_proto(message, f"structures[{index}]", config.max_atoms)
            except HTVSError as exc:
                error = common_pb2.RowError(index=index, value=message.id, message=str(exc), kind=type(exc).__name__)
                rows[index] = pb.ConductivityRow(id=message.id, error=error)
                continue
            items.append((message.id, structure))
            origin.append(index)
        if items:
            from htvs.conductivity.predict import predict_conductivity

            results = predict_conductivity(items, self.ensemble, config)
            for index, result in zip(origin, results, strict=True):
                if isinstance(result, RowError):
                    error = common_pb2.RowError(**dataclasses.asdict(dataclasses.replace(result, index=index)))
                    rows[index] = pb.ConductivityRow(id=result.value, error=error, no_lithium=result.kind == NO_LITHIUM)
                    continue
                values = (result.log10_sigma_mean, result.log10_sigma_std, result.p_superionic)
                if not all(math.isfinite(v) for v in values):  # never send NaN (common.proto)
                    text = f"{result.id}: the ensemble gave a non-finite prediction {values!r}"
                    error = common_pb2.RowError(index=index, value=result.id, message=text, kind="StageFailed")
                    rows[index] = pb.ConductivityRow(id=result.id, error=error)
                    continue
                rows[index] = pb.ConductivityRow(
                    id=result.id, log10_sigma_mean=values[0], log10_sigma_std=values[1], p_superionic=values[2]
                )
        n_errors = sum(1 for row in rows if row is not None and row.HasField("error"))
        report_rows(len(rows), n_errors)
        return pb.ConductivityPredictResponse(
            rows=rows,
            n_predicted=len(rows) - n_errors,
            n_errors=n_errors,
            n_models=n_models(self.ensemble),
            max_atoms=config.max_atoms,
        )

    def ModelInfo(self, request: pb.ConductivityModelInfoRequest, context) -> pb.ConductivityModelInfoResponse:
        from htvs.conductivity.predict import metrics_table

        card = self.ensemble.card if isinstance(self.ensemble.card, Mapping) else {}
        try:
            table = metrics_table(card)
        except (KeyError, TypeError, ValueError, AttributeError):  # a card without (complete) test metrics
            table = ""
        return pb.ConductivityModelInfoResponse(
            format=str(card.get("format", "")),
            target=str(card.get("target", "")),
            units=str(card.get("units", "")),
            data=str(card.get("data", "")),
            n_models=n_models(self.ensemble),
            test_metrics=card_test_metrics(card),
            metrics_table=table,
            max_atoms=self.config.max_atoms,
        )
