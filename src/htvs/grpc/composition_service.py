"""``htvs.v1.CompositionService``: stage 2 (composition models) and stage 3 (thermo screen).

Which errors are per row and which refuse the whole request:

* Whole request (INVALID_ARGUMENT, nothing computed): an empty batch, a batch above
  ``max_batch_rows``, inline rows together with a store ``input``, bad thresholds (NaN, negative band gap...,
  a rule other than "deterministic"/"probabilistic", a min_probability outside (0, 1]),
  and in Screen a predicted row whose numbers are not usable (unset, non-finite, negative std or
  band gap): those come from a broken producer, not from the chemistry.
* Per row (a ``RowError`` on the row, status OK, the other rows computed): a formula the models
  cannot featurize (Predict), a formula the reference hull cannot handle or a missing/non-finite
  energy (Hull, Window), a window asked of a formula without Li (Window), a hull or window that
  fails in Screen. These are what the stage functions already report per row.

Limits of the work one request may cause (besides the row limit): a formula of more than
:data:`~htvs.formula.MAX_FORMULA_CHARS` characters, or whose chemical system has more than the
hull's ``max_elements`` (:data:`~htvs.thermo.hull.MAX_CHEMSYS_ELEMENTS`) elements, or a formation
energy beyond +-:data:`~htvs.thermo.hull.MAX_ABS_E_FORM_EV_PER_ATOM` eV/atom is a row error
before any diagram is built. A call whose caller has gone (cancelled, or past its deadline) stops
between chunks of its batch with CANCELLED or DEADLINE_EXCEEDED instead of computing on.

Answers hold no NaN or infinity (an uncomputed value is unset), and every value echoed into a
message or a row error is cut to a bounded length.

The reference hull and the ONNX ensembles are loaded once by the caller and passed in.
"""

from __future__ import annotations

import math

import grpc
import pandas as pd

from htvs.composition import predict_compositions
from htvs.errors import InvalidInput, ModelNotReady, RowError, shown
from htvs.formula import MAX_FORMULA_CHARS
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import composition_pb2 as pb
from htvs.grpc.gen import composition_pb2_grpc as pb_grpc
from htvs.grpc.server import check_batch, report_rows, stop_if_caller_gone
from htvs.grpc.store_io import stored_batch
from htvs.screening import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, CompositionScreenConfig, screen_compositions
from htvs.thermo import HullResult, ReferenceHull, WindowResult, e_above_hull_many, electrochemical_windows

#: Default largest batch (rows) of one request.
DEFAULT_MAX_BATCH_ROWS = 10_000
#: Longest row-error message or echoed value in an answer, characters (longer ones are cut).
MAX_ROW_TEXT_CHARS = 4 * MAX_FORMULA_CHARS
_PREDICTION_VALUES = ("e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std")
_THRESHOLDS = (
    "max_e_form_ev_per_atom",
    "max_e_above_hull_ev_per_atom",
    "min_band_gap_ev",
    "min_phi_ox_v",
)
#: The fields of ScreenThresholds: the thresholds, the rule and its probability.
_SETTINGS = (*_THRESHOLDS, "rule", "min_probability")


def _cut(text: object) -> str:
    """``text`` for a row error's ``value`` or ``message``: at most :data:`MAX_ROW_TEXT_CHARS`
    characters, a longer one cut with its length noted."""
    text = str(text)
    if len(text) <= MAX_ROW_TEXT_CHARS:
        return text
    return f"{text[:MAX_ROW_TEXT_CHARS]}... ({len(text):,} characters)"


def _row_error(index: int, value: object, message: object, kind: str = "") -> common_pb2.RowError:
    """A RowError message with its value and message cut (see :func:`_cut`)."""
    return common_pb2.RowError(index=index, value=_cut(value), message=_cut(message), kind=kind)


def _from_row_error(error: RowError) -> common_pb2.RowError:
    return _row_error(error.index, error.value, error.message, error.kind)


def _finite(**values: float) -> dict[str, float]:
    """The finite ones of ``values`` (an uncomputed or non-finite value is left unset)."""
    return {name: float(v) for name, v in values.items() if v is not None and math.isfinite(v)}


def _prediction(row) -> pb.Prediction:
    """A Prediction message from a row of :func:`predict_compositions`' table."""
    return pb.Prediction(formula=row.formula, **_finite(**{n: getattr(row, n) for n in _PREDICTION_VALUES}))


def _echoed(given: pb.Prediction) -> pb.Prediction:
    """The request's prediction as Screen echoes it: a row with ``error`` carries none of the
    four values (they were not used), and no value is NaN or infinite (it is unset)."""
    out = pb.Prediction()
    out.CopyFrom(given)
    for name in _PREDICTION_VALUES:
        if out.HasField("error") or not math.isfinite(getattr(out, name)):
            out.ClearField(name)
    if out.HasField("error"):
        out.error.CopyFrom(_row_error(out.error.index, out.error.value, out.error.message, out.error.kind))
    return out


def screen_config_from_proto(message: pb.ScreenThresholds) -> CompositionScreenConfig:
    """The stage's thresholds and rule; unset fields take the paper's values (the deterministic
    rule, and a min_probability of 0.5 for the probabilistic one).

    Raises:
        InvalidInput: a threshold or min_probability that is NaN/inf or out of range, or a rule
            other than "deterministic"/"probabilistic", named with its value.
    """
    values = {name: getattr(message, name) for name in _SETTINGS if message.HasField(name)}
    return CompositionScreenConfig(**values)


def predictions_frame(rows, *, what: str = "predictions") -> pd.DataFrame:
    """The stage-2 table (:data:`~htvs.screening.PREDICTION_COLUMNS`) of Prediction messages.

    A row with ``error`` set is carried as not predicted. A row without it must have all four
    values, finite, with std >= 0 and band gap >= 0.

    Raises:
        InvalidInput: the first unusable row, naming its position, formula, field and value.
    """
    records = []
    for i, row in enumerate(rows):
        if row.HasField("error"):
            records.append((row.formula, math.nan, math.nan, math.nan, math.nan, row.error.message or "error"))
            continue
        name_shown = shown(row.formula)
        values = []
        for name, units in (
            ("e_form_mean", "eV/atom"),
            ("e_form_std", "eV/atom"),
            ("band_gap_mean", "eV"),
            ("band_gap_std", "eV"),
        ):
            if not row.HasField(name):
                raise InvalidInput(f"{what}[{i}] ({name_shown}) has no {name} and no error")
            value = getattr(row, name)
            if not math.isfinite(value):
                raise InvalidInput(f"{what}[{i}] ({name_shown}): {name} must be finite, got {value!r}")
            if name != "e_form_mean" and value < 0:
                raise InvalidInput(f"{what}[{i}] ({name_shown}): {name} must be >= 0 {units}, got {value!r}")
            values.append(value)
        records.append((row.formula, *values, None))
    return pd.DataFrame.from_records(records, columns=list(PREDICTION_COLUMNS))


class CompositionServicer(pb_grpc.CompositionServiceServicer):
    """Serves :func:`~htvs.composition.predict_compositions`, :func:`~htvs.screening.screen_compositions`,
    :func:`~htvs.thermo.e_above_hull_many` and :func:`~htvs.thermo.electrochemical_windows`.

    Args:
        hull: the reference hull (e.g. ``ReferenceHull.bundled()``), loaded once.
        e_form_model, band_gap_model: loaded ensembles (``htvs.composition.ship.load_ensemble``);
            without them Predict answers FAILED_PRECONDITION (Hull and Window still work).
        max_batch_rows: most rows per request.
        batch_size: formulas featurized per model call in Predict.
    """

    service_name = pb.DESCRIPTOR.services_by_name["CompositionService"].full_name
    #: The server's store, for batch calls whose rows come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        hull: ReferenceHull,
        e_form_model=None,
        band_gap_model=None,
        *,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        batch_size: int = 4096,
    ) -> None:
        if max_batch_rows < 1:
            raise InvalidInput(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.hull = hull
        self.e_form_model = e_form_model
        self.band_gap_model = band_gap_model
        self.max_batch_rows = int(max_batch_rows)
        self.batch_size = int(batch_size)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_CompositionServiceServicer_to_server(self, server)

    def _check_batch(self, request, n_rows: int, field: str) -> None:
        check_batch(request, n_rows, field, self.max_batch_rows)

    def _models(self):
        if self.e_form_model is None or self.band_gap_model is None:
            raise ModelNotReady("this server has no composition models loaded; Predict is unavailable")
        return self.e_form_model, self.band_gap_model

    # -- RPCs -------------------------------------------------------------------------------

    @stored_batch("formulas", ("rows",), pb.PredictResponse)
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        self._check_batch(request, len(request.formulas), "formulas")
        ef_model, gap_model = self._models()
        formulas = list(request.formulas)
        chunks = []
        for start in range(0, len(formulas), self.batch_size):
            stop_if_caller_gone(context)
            chunk = formulas[start : start + self.batch_size]
            chunks.append(predict_compositions(chunk, ef_model, gap_model, batch_size=self.batch_size))
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        response = pb.PredictResponse(
            models=[
                pb.ModelInfo(target=str(m.target), units=str(m.units), n_models=int(m.n_models))
                for m in (ef_model, gap_model)
            ]
        )
        n_errors = 0
        for i, row in enumerate(frame.itertuples(index=False)):
            message = _prediction(row)
            if row.error is not None:
                n_errors += 1
                message = pb.Prediction(
                    formula=row.formula, error=_row_error(i, row.formula, row.error, "InvalidInput")
                )
            response.rows.append(message)
        report_rows(len(frame), n_errors)
        return response

    @stored_batch("predictions", ("rows",), pb.ScreenResponse, summed=("funnel",))
    def Screen(self, request: pb.ScreenRequest, context) -> pb.ScreenResponse:
        self._check_batch(request, len(request.predictions), "predictions")
        config = screen_config_from_proto(request.thresholds)
        frame = predictions_frame(request.predictions)
        stop_if_caller_gone(context)
        result = screen_compositions(
            frame, self.hull, config, progress=lambda step, done, total: stop_if_caller_gone(context)
        )
        table = result.table
        response = pb.ScreenResponse(funnel=pb.Funnel(**result.funnel))
        n_errors = 0
        for i, (given, row) in enumerate(zip(request.predictions, table.itertuples(index=False), strict=True)):
            fields = _finite(
                e_above_hull_ev_per_atom=row.e_above_hull, phi_red_v=row.phi_red, phi_ox_v=row.phi_ox,
                **{name: getattr(row, name) for name in PROBABILITY_COLUMNS},
            )
            out = response.rows.add(
                prediction=_echoed(given),
                passed_e_form_and_hull=bool(row.passed_e_form_and_hull),
                passed_band_gap=bool(row.passed_band_gap),
                passed_oxidation_window=bool(row.passed_oxidation_window),
                passed=bool(row.passed),
                **fields,
            )
            if row.screen_error is not None:
                n_errors += 1
                out.error.CopyFrom(_row_error(i, row.formula, row.screen_error))
            elif given.HasField("error"):
                n_errors += 1
        report_rows(len(table), n_errors)
        return response

    @stored_batch("rows", ("rows",), pb.HullResponse)
    def Hull(self, request: pb.HullRequest, context) -> pb.HullResponse:
        self._check_batch(request, len(request.rows), "rows")
        formulas = [q.formula for q in request.rows]
        energies = [q.e_form_ev_per_atom if q.HasField("e_form_ev_per_atom") else None for q in request.rows]
        stop_if_caller_gone(context)
        results = e_above_hull_many(self.hull, formulas, energies, progress=lambda done: stop_if_caller_gone(context))
        response = pb.HullResponse()
        n_errors = 0
        for i, (query, result) in enumerate(zip(request.rows, results, strict=True)):
            if isinstance(result, HullResult):
                result = _checked_finite(i, query.formula, result, result.e_above_hull_ev_per_atom)
            if isinstance(result, HullResult):
                response.rows.add(
                    formula=result.formula,
                    e_form_ev_per_atom=result.e_form_ev_per_atom,
                    e_above_hull_ev_per_atom=result.e_above_hull_ev_per_atom,
                    decomposition=[common_pb2.PhaseFraction(formula=f, fraction=x) for f, x in result.decomposition],
                )
            else:
                n_errors += 1
                response.rows.add(formula=query.formula, error=_from_row_error(result))
        report_rows(len(results), n_errors)
        return response

    @stored_batch("rows", ("rows",), pb.WindowResponse)
    def Window(self, request: pb.WindowRequest, context) -> pb.WindowResponse:
        self._check_batch(request, len(request.rows), "rows")
        formulas = [q.formula for q in request.rows]
        energies = [q.e_form_ev_per_atom if q.HasField("e_form_ev_per_atom") else None for q in request.rows]
        given = any(e is not None for e in energies)
        stop_if_caller_gone(context)
        results = electrochemical_windows(
            self.hull, formulas, energies if given else None, progress=lambda done: stop_if_caller_gone(context)
        )
        response = pb.WindowResponse()
        n_errors = 0
        for i, (query, result) in enumerate(zip(request.rows, results, strict=True)):
            if isinstance(result, WindowResult):
                result = _checked_finite(i, query.formula, result, result.phi_red_v, result.phi_ox_v)
            if isinstance(result, WindowResult):
                response.rows.add(
                    formula=result.formula,
                    phi_red_v=result.phi_red_v,
                    phi_ox_v=result.phi_ox_v,
                    reduction_products=list(result.reduction_products),
                    oxidation_products=list(result.oxidation_products),
                    inserted=bool(result.inserted),
                )
            else:
                n_errors += 1
                response.rows.add(formula=query.formula, error=_from_row_error(result))
        report_rows(len(results), n_errors)
        return response


def _checked_finite(index: int, formula: str, result, *values: float):
    """``result``, or a row error if one of its ``values`` is not finite (an answer holds no NaN)."""
    if all(math.isfinite(v) for v in values):
        return result
    return RowError(index, formula, f"formula {shown(formula)}: the result is not finite ({values})", "StageFailed")

