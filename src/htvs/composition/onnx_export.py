"""Export an aviary Roost to ONNX (through :class:`DenseRoost`) and write ensemble model cards.

The exported graph takes ``z`` (batch, elements) int64 atomic numbers and ``weights``
(batch, elements) float32 atomic fractions, zero-padded, and returns ``prediction``
(batch, n_out) float32; both axes are dynamic. The Roost width, the target and its units travel
in the model's ``metadata_props`` (keys in :data:`METADATA_KEYS`).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from htvs.composition.model import RoostConfig
from htvs.model_cards import CARD_NAME, sha256_of

if TYPE_CHECKING:
    from aviary.roost.model import Roost

#: Format tag of the exported graphs (inputs/outputs as in the module docstring).
ONNX_FORMAT = "htvs.roost-dense/1"
#: Format tag of ``model_card.json`` files read by :class:`htvs.composition.predictor.OnnxRoostEnsemble`.
CARD_FORMAT = "htvs.roost-onnx-ensemble/1"
METADATA_KEYS = ("htvs.format", "htvs.roost_config", "htvs.target", "htvs.units", "htvs.aviary_version")
INPUT_NAMES = ("z", "weights")
OUTPUT_NAME = "prediction"
DEFAULT_OPSET = 17


def config_of(model: Roost) -> RoostConfig:
    """The :class:`RoostConfig` an aviary ``Roost`` was built with (from its ``model_params``)."""
    params = model.model_params
    names = {f.name for f in fields(RoostConfig)}
    return RoostConfig.from_dict({k: v for k, v in params.items() if k in names})


def export_onnx(
    model: Roost,
    path: str | Path,
    *,
    target: str = "e_form",
    units: str = "eV/atom",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` as a float32 ONNX graph with dynamic batch and element axes.

    Args:
        model: a trained aviary ``Roost`` with one target (left unchanged; exported in eval mode).
        path: the ``.onnx`` file to write (parent folders are created).
        target: name of the predicted quantity, stored in the metadata.
        units: its units (e.g. ``eV/atom`` for formation energy, ``eV`` for band gap).
        opset: ONNX opset version.

    Returns:
        The path written.
    """
    import onnx
    import torch
    from importlib.metadata import version

    from htvs.composition.dense import DenseRoost

    config = config_of(model)
    was_training = model.training
    dense = DenseRoost.from_aviary(model).eval().freeze_table()
    # a traced example with padding (rows of 1, 2 and 3 elements) so that masks are exercised
    z = torch.tensor([[3, 8, 15], [3, 0, 0], [11, 17, 0]], dtype=torch.int64)
    w = torch.tensor([[0.375, 0.5, 0.125], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            with torch.no_grad():
                torch.onnx.export(
                    dense,
                    (z, w),
                    buffer,
                    input_names=list(INPUT_NAMES),
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={
                        "z": {0: "batch", 1: "elements"},
                        "weights": {0: "batch", 1: "elements"},
                        OUTPUT_NAME: {0: "batch"},
                    },
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "htvs.format": ONNX_FORMAT,
        "htvs.roost_config": json.dumps(config.to_dict(), sort_keys=True),
        "htvs.target": target,
        "htvs.units": units,
        "htvs.aviary_version": version("aviary-models"),
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"Roost ({target}, {units}) on zero-padded compositions; inputs z, weights"
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def write_model_card(
    directory: str | Path,
    files: Sequence[str | Path],
    *,
    target: str,
    units: str,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``model_card.json`` for an ensemble of ONNX files inside ``directory``.

    The card lists each file (relative to ``directory``) with its sha256, the target and units;
    ``extra`` (data, split, metrics, ...) is stored alongside under the given keys.

    Returns:
        The card's path.
    """
    root = Path(directory)
    models = []
    for file in files:
        full = Path(file) if Path(file).is_absolute() else root / file
        models.append({"file": full.relative_to(root).as_posix(), "sha256": sha256_of(full)})
    card: dict[str, object] = dict(extra or {})
    card.update({"format": CARD_FORMAT, "target": target, "units": units, "models": models})
    path = root / CARD_NAME
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
