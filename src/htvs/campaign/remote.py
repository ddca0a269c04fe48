"""``htvs campaign run --services``: the same DAG with the science done by the gRPC services.

The store, the caching and the outputs are the runner's; only :class:`StageBackend` changes.
Batches are split to respect the servers' row limits; screening is row-wise, so chunked
Screen calls give the same table and funnel as one call.

Limit: SubstitutionService returns every substitution inline, so a remote substitute step is
bounded by the gRPC message size (64 MiB by default, about a million substitutions); passing
tables by store key is the planned way past it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
import numpy as np
import pandas as pd

from htvs.errors import InvalidInput, StageFailed

SERVICE_NAMES = {
    "substitution": "htvs.v1.SubstitutionService",
    "composition": "htvs.v1.CompositionService",
    "conductivity": "htvs.v1.ConductivityService",
}
#: Services --services must name; stage 6 runs in process when no conductivity service is given.
REQUIRED_SERVICES = ("substitution", "composition")
#: Rows per Predict/Screen call (the servers' default limit is 10,000).
DEFAULT_CHUNK_ROWS = 4096
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _serving(channel: grpc.Channel, service: str, timeout_s: float) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def parse_services(spec: str, timeout_s: float = 5.0) -> dict[str, str]:
    """``"name=host:port,..."`` or ``"host:port,..."`` -> {service name: address}.

    Plain addresses are matched to services through the standard health service. Raises
    InvalidInput naming an address that is unreachable or a service that nothing serves.
    """
    found: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        name, _, address = item.rpartition("=")
        if name:
            if name not in SERVICE_NAMES:
                raise InvalidInput(f"--services: unknown service {name!r}; known: {sorted(SERVICE_NAMES)}")
            found[name] = address
            continue
        with grpc.insecure_channel(address) as channel:
            serving = [n for n, full in SERVICE_NAMES.items() if _serving(channel, full, timeout_s)]
        if not serving:
            raise InvalidInput(f"--services: nothing serves htvs at {address!r} (health check failed)")
        for name in serving:
            found.setdefault(name, address)
    missing = [n for n in REQUIRED_SERVICES if n not in found]
    if missing:
        raise InvalidInput(f"--services: no address serves {', '.join(missing)} (got {spec!r})")
    return found


def _channel(address: str) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    return grpc.insecure_channel(address, options=options)


def _call(method, request, what: str, timeout_s: float):
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidInput(f"{what}: {detail}") from None
        raise StageFailed(f"{what} failed: {code.name if code else 'error'}: {detail}") from None


@dataclass
class GrpcBackend:
    """A :class:`~htvs.campaign.stages.StageBackend` calling SubstitutionService, CompositionService
    and, when its address is given, ConductivityService (otherwise stage 6 runs in process)."""

    addresses: dict[str, str]
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    timeout_s: float = 600.0
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    _local: object | None = None

    def _stub(self, name: str):
        from htvs.grpc.gen import composition_pb2_grpc, conductivity_pb2_grpc, substitution_pb2_grpc

        if name not in self._channels:
            self._channels[name] = _channel(self.addresses[name])
        stub_class = {
            "substitution": substitution_pb2_grpc.SubstitutionServiceStub,
            "composition": composition_pb2_grpc.CompositionServiceStub,
            "conductivity": conductivity_pb2_grpc.ConductivityServiceStub,
        }[name]
        return stub_class(self._channels[name])

    def conductivity(self, items: list[tuple[str, object]], config) -> list:
        """Stage 6 through ConductivityService.Predict (in process when no address was given);
        items are ``(id, CIF text or Structure)``, structures travel as CIF."""
        from htvs.conductivity.predict import ConductivityError, ConductivityPrediction

        if "conductivity" not in self.addresses:
            from htvs.campaign.stages import InProcessBackend

            self._local = self._local or InProcessBackend()
            return self._local.conductivity(items, config)
        from htvs.grpc.gen import conductivity_pb2 as pb
        from htvs.grpc.gen import structure_pb2

        out: list = []
        stub = self._stub("conductivity")
        for start in range(0, len(items), self.chunk_rows):
            chunk = items[start : start + self.chunk_rows]
            request = pb.ConductivityPredictRequest(
                structures=[structure_pb2.StructureData(id=i, cif=_cif_text(item)) for i, item in chunk],
                max_atoms=config.conductivity.max_atoms,
            )
            reply = _call(stub.Predict, request, "ConductivityService.Predict", self.timeout_s)
            for row in reply.rows:
                if row.HasField("error"):
                    out.append(ConductivityError(row.id, row.error.message or "error", row.no_lithium))
                else:
                    out.append(ConductivityPrediction(row.id, row.log10_sigma_mean, row.log10_sigma_std,
                                                      row.p_superionic))
        return out

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def substitute(self, patterns, config):
        from htvs.grpc.gen import substitution_pb2 as pb
        from htvs.substitution import SubstitutionResult

        request = pb.SubstituteRequest(
            prototypes=[
                pb.SitePattern(
                    prototype_id=p.prototype_id,
                    species=[pb.SpeciesAmount(element=e, amount=int(a)) for e, a in p.species_amounts.items()],
                )
                for p in patterns
            ],
            config=pb.SubstitutionConfig(
                element_pool=list(config.element_pool),
                kept_element=config.kept_element,
                rule={"one_required": 1, "all_distinct": 2}[config.rule.value],
                **({"required_element": config.required_element} if config.required_element else {}),
            ),
            include_substitutions=True,
        )
        reply = _call(self._stub("substitution").Substitute, request, "SubstitutionService.Substitute", self.timeout_s)
        ids = [p.prototype_id for p in patterns]
        index_of_proto = {pid: i for i, pid in enumerate(ids)}
        species = tuple(tuple(s for s in p.species_amounts if s != config.kept_element) for p in patterns)
        pool_index = {s: i for i, s in enumerate(config.element_pool)}
        formulas = [row.formula for row in reply.formulas]
        formula_index = {f: i for i, f in enumerate(formulas)}
        width = max((len(s) for s in species), default=1)
        n = len(reply.substitutions)
        prototype_index = np.empty(n, dtype=np.int32)
        slot_elements = np.full((n, max(width, 1)), 255, dtype=np.uint8)
        formula_rows = np.empty(n, dtype=np.int32)
        for i, sub in enumerate(reply.substitutions):
            p = index_of_proto[sub.prototype_id]
            prototype_index[i] = p
            slot_of = {s: j for j, s in enumerate(species[p])}
            for replacement in sub.replacements:
                slot_elements[i, slot_of[replacement.from_element]] = pool_index[replacement.to_element]
            formula_rows[i] = formula_index[sub.formula]
        return SubstitutionResult(
            config=config,
            prototype_ids=tuple(ids),
            prototype_species=species,
            prototype_index=prototype_index,
            slot_elements=slot_elements,
            formula_index=formula_rows,
            formulas=formulas,
            multiplicity=np.array([row.multiplicity for row in reply.formulas], dtype=np.int64),
            chemsys=[row.chemsys for row in reply.formulas],
            num_atoms=np.array([row.num_atoms for row in reply.formulas], dtype=np.int32),
        )

    def predict(self, formulas: list[str], config) -> pd.DataFrame:
        from htvs.grpc.gen import composition_pb2 as pb

        records = []
        stub = self._stub("composition")
        for start in range(0, len(formulas), self.chunk_rows):
            chunk = formulas[start : start + self.chunk_rows]
            reply = _call(stub.Predict, pb.PredictRequest(formulas=chunk), "CompositionService.Predict", self.timeout_s)
            records.extend(_prediction_record(row) for row in reply.rows)
        from htvs.screening import PREDICTION_COLUMNS

        return pd.DataFrame.from_records(records, columns=list(PREDICTION_COLUMNS))

    def screen(self, predictions: pd.DataFrame, config, progress=None):
        from htvs.grpc.gen import composition_pb2 as pb
        from htvs.screening import ScreenResult

        thresholds = pb.ScreenThresholds(**config.screening.model_dump())
        stub = self._stub("composition")
        rows: list[dict] = []
        funnel = {"formulas": 0, "predicted": 0, "e_form_and_hull": 0, "band_gap": 0, "oxidation_window": 0}
        for start in range(0, len(predictions), self.chunk_rows):
            chunk = predictions.iloc[start : start + self.chunk_rows]
            request = pb.ScreenRequest(predictions=[_prediction_message(r) for r in chunk.itertuples(index=False)], thresholds=thresholds)
            reply = _call(stub.Screen, request, "CompositionService.Screen", self.timeout_s)
            rows.extend(_screen_record(row) for row in reply.rows)
            for key in funnel:
                funnel[key] += int(getattr(reply.funnel, key))
        return ScreenResult(table=pd.DataFrame.from_records(rows), funnel=funnel)


def _cif_text(item) -> str:
    """CIF text of a ``Structure`` (P1), or ``item`` itself when it is already text."""
    if isinstance(item, str):
        return item
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(item))


def _opt(message, name: str) -> float:
    return float(getattr(message, name)) if message.HasField(name) else math.nan


def _prediction_record(row) -> tuple:
    error = (row.error.message or "error") if row.HasField("error") else None
    return (
        row.formula,
        _opt(row, "e_form_mean"),
        _opt(row, "e_form_std"),
        _opt(row, "band_gap_mean"),
        _opt(row, "band_gap_std"),
        error,
    )


def _prediction_message(row):
    from htvs.grpc.gen import common_pb2
    from htvs.grpc.gen import composition_pb2 as pb

    if row.error is not None:
        return pb.Prediction(formula=row.formula, error=common_pb2.RowError(value=row.formula, message=row.error))
    return pb.Prediction(
        formula=row.formula,
        e_form_mean=row.e_form_mean,
        e_form_std=row.e_form_std,
        band_gap_mean=row.band_gap_mean,
        band_gap_std=row.band_gap_std,
    )


def _screen_record(row) -> dict:
    formula, ef, ef_std, gap, gap_std, error = _prediction_record(row.prediction)
    return {
        "formula": formula,
        "e_form_mean": ef,
        "e_form_std": ef_std,
        "band_gap_mean": gap,
        "band_gap_std": gap_std,
        "error": error,
        "e_above_hull": _opt(row, "e_above_hull_ev_per_atom"),
        "phi_red": _opt(row, "phi_red_v"),
        "phi_ox": _opt(row, "phi_ox_v"),
        "screen_error": (row.error.message or "error") if row.HasField("error") else None,
        "passed_e_form_and_hull": row.passed_e_form_and_hull,
        "passed_band_gap": row.passed_band_gap,
        "passed_oxidation_window": row.passed_oxidation_window,
        "passed": row.passed,
    }
