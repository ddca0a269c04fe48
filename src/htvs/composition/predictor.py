"""Ensemble prediction from exported Roost ONNX files (onnxruntime; CUDA when available).

A model folder holds N ``.onnx`` files written by :func:`htvs.composition.onnx_export.export_onnx`
and a ``model_card.json`` (written by :func:`~htvs.composition.onnx_export.write_model_card`)::

    {"format": "htvs.roost-onnx-ensemble/1", "target": "e_form", "units": "eV/atom",
     "models": [{"file": "model_0.onnx", "sha256": "..."}, ...], ...}

The card and every file's sha256 are checked on load (:func:`htvs.model_cards.read_model_card`).
A card's optional ``calibration`` (``a``, ``b``; fitted by :mod:`htvs.composition.calibrate`) turns
the members' spread σ into the reported std ``sqrt((a·σ)² + b²)``; without it the std is σ.
Nothing is loaded at import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from htvs.composition.calibrate import Calibration
from htvs.composition.featurize import featurize
from htvs.composition.onnx_export import CARD_FORMAT, INPUT_NAMES, ONNX_FORMAT
from htvs.errors import ModelNotReady, RowError
from htvs.model_cards import read_model_card

#: Rows x elements^2 per onnxruntime call on CPU (bounds the (rows, M, M, hidden) intermediates).
DEFAULT_PAIR_BUDGET = 32_768


@dataclass(frozen=True)
class EnsemblePrediction:
    """Per-formula ensemble statistics, in the order of the formulas given.

    Attributes:
        mean: (n,) float64 ensemble mean in ``units``; NaN where the formula was invalid.
        std: (n,) float64 uncertainty in ``units``: the calibrated spread when the ensemble has a
            calibration, else ``raw_std``; NaN where invalid.
        members: (n_models, n) float64 prediction of each model; NaN where invalid.
        valid: (n,) bool, True where the formula was featurized and predicted.
        errors: the invalid formulas: position, formula, reason and error class.
        target, units: what is predicted (e.g. ``e_form``, ``eV/atom``).
        raw_std: (n,) float64 population standard deviation across the models (ddof 0), before
            calibration; NaN where invalid (None: the same as ``std``).
    """

    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray
    valid: np.ndarray
    errors: list[RowError]
    target: str
    units: str
    raw_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.raw_std is None:
            object.__setattr__(self, "raw_std", self.std)


class OnnxRoostEnsemble:
    """N exported Roost models of one target, evaluated together on featurized formulas.

    Args:
        paths: the ``.onnx`` files (sha256 already checked; use :meth:`from_dir` to check).
        target, units: what the models predict.
        intra_op_threads: onnxruntime intra-op threads per session (None: onnxruntime's default).
        providers: onnxruntime providers in order of preference (None: CUDA first when available).
        pair_budget: rows x elements^2 per onnxruntime call (memory/speed trade-off).
        calibration: maps the members' spread to the reported std (None: the spread itself).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        target: str,
        units: str,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        pair_budget: int = DEFAULT_PAIR_BUDGET,
        calibration: Calibration | None = None,
    ) -> None:
        from htvs.onnx_sessions import open_session

        if not paths:
            raise ModelNotReady("an ensemble needs at least one ONNX file, none given")
        self.paths = tuple(Path(p) for p in paths)
        self.target = target
        self.units = units
        self.pair_budget = int(pair_budget)
        self.calibration = calibration
        self.sessions = []
        embeddings = set()
        for path in self.paths:
            session = open_session(path, intra_op_threads, providers)
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get("htvs.format") != ONNX_FORMAT:
                raise ModelNotReady(
                    f"{path} is not an htvs Roost export (htvs.format={meta.get('htvs.format')!r})"
                )
            config = json.loads(meta.get("htvs.roost_config", "{}"))
            embeddings.add(config.get("elem_embedding", "matscholar200"))
            self.sessions.append(session)
        if len(embeddings) != 1:
            raise ModelNotReady(
                f"models in one ensemble use different element embeddings: {sorted(embeddings)}"
            )
        (self.embedding,) = embeddings

    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        *,
        target: str | None = None,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        pair_budget: int = DEFAULT_PAIR_BUDGET,
    ) -> OnnxRoostEnsemble:
        """Load the ensemble described by ``directory/model_card.json``, checking every sha256;
        the card's ``calibration``, when it has one, applies to every prediction's std.

        Args:
            target: the target the card must declare (e.g. ``"e_form"``; None: any).

        Raises:
            ModelNotReady: the card is missing, malformed, of another format or target, a
                listed file is missing or has another sha256, or its ``calibration`` is malformed.
        """
        card = read_model_card(
            directory,
            kind=f"{target or 'composition'} model",
            card_format=CARD_FORMAT,
            target=target,
            hint="train one with `htvs train composition` and `htvs train export`",
        )
        units = card.data.get("units")
        if not isinstance(units, str) or not isinstance(card.data.get("target"), str):
            raise ModelNotReady(f"composition model in {card.folder}: its model card has no target or units")
        calibration = Calibration.from_card(card.data, where=f"composition model in {card.folder}")
        return cls(
            card.members,
            target=card.data["target"],
            units=units,
            intra_op_threads=intra_op_threads,
            providers=providers,
            pair_budget=pair_budget,
            calibration=calibration,
        )

    @property
    def n_models(self) -> int:
        return len(self.sessions)

    def predict_dense(self, z: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(n_models, B) predictions on padded inputs (z int64, weights float32, 0 at padding).

        Rows are grouped by their number of elements, so no padding reaches the models.
        """
        counts = (z > 0).sum(axis=1)
        out = np.full((self.n_models, len(z)), np.nan, dtype=np.float64)
        for k in np.unique(counts):
            if k == 0:
                continue  # an all-padding row has no composition: left NaN
            rows = np.flatnonzero(counts == k)
            z_k = np.ascontiguousarray(z[rows, :k], dtype=np.int64)
            w_k = np.ascontiguousarray(weights[rows, :k], dtype=np.float32)
            step = max(1, self.pair_budget // max(1, int(k) * int(k)))
            for start in range(0, len(rows), step):
                part = slice(start, start + step)
                feed = {INPUT_NAMES[0]: z_k[part], INPUT_NAMES[1]: w_k[part]}
                for m, session in enumerate(self.sessions):
                    (pred,) = session.run(None, feed)
                    out[m, rows[part]] = pred[:, 0]
        return out

    def predict(self, formulas: Sequence[str], batch_size: int = 4096) -> EnsemblePrediction:
        """Ensemble mean and std (calibrated, when the ensemble has a calibration) for each
        formula; invalid formulas become per-row errors.

        Args:
            formulas: formulas such as ``"Li3PS4"`` (any pymatgen-readable formula).
            batch_size: formulas featurized at a time.
        """
        formulas = list(formulas)
        n = len(formulas)
        members = np.full((self.n_models, n), np.nan, dtype=np.float64)
        valid = np.zeros(n, dtype=bool)
        errors: list[RowError] = []
        for start in range(0, n, batch_size):
            chunk = formulas[start : start + batch_size]
            batch, chunk_errors = featurize(chunk, self.embedding)
            errors.extend(replace(e, index=start + e.index) for e in chunk_errors)
            if len(batch.rows):
                rows = start + batch.rows
                members[:, rows] = self.predict_dense(batch.dense_z, batch.dense_weights)
                valid[rows] = True
        mean = members.mean(axis=0) if n else np.zeros(0)
        raw_std = members.std(axis=0) if n else np.zeros(0)
        std = self.calibration.apply(raw_std) if self.calibration is not None else raw_std
        return EnsemblePrediction(
            mean=mean,
            std=std,
            members=members,
            valid=valid,
            errors=errors,
            target=self.target,
            units=self.units,
            raw_std=raw_std,
        )
