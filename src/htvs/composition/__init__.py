"""Stage 2 of the funnel: Roost composition models (formation energy, band gap).

Training uses aviary's Roost; serving uses the exported ONNX ensembles through onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["predict_compositions"]


def predict_compositions(formulas: Sequence[str], e_form_model, band_gap_model, batch_size: int = 4096) -> pd.DataFrame:
    """Ensemble predictions for ``formulas`` (stage 2).

    Args:
        formulas: compositions, e.g. the unique formulas of the substitution stage.
        e_form_model, band_gap_model: loaded ensembles (``htvs.composition.ship.load_ensemble``).

    Returns:
        One row per formula, in order: ``formula``, ``e_form_mean``/``e_form_std`` (eV/atom),
        ``band_gap_mean``/``band_gap_std`` (eV) and ``error`` (None, or why the row was not
        predicted). A bad row never stops the batch.
    """
    formulas = list(formulas)
    ef = e_form_model.predict(formulas, batch_size=batch_size)
    gap = band_gap_model.predict(formulas, batch_size=batch_size)
    errors: list[str | None] = [None] * len(formulas)
    for err in [*ef.errors, *gap.errors]:
        errors[err.index] = errors[err.index] or err.message
    return pd.DataFrame(
        {
            "formula": formulas,
            "e_form_mean": ef.mean,
            "e_form_std": ef.std,
            # a band gap is never negative; the regression can dip below 0 for metals
            "band_gap_mean": np.maximum(gap.mean, 0.0),
            "band_gap_std": gap.std,
            "error": errors,
        }
    )
