"""ONNX export of conductivity GNN members, and the onnxruntime member used for serving.

The exported graph takes the seven arrays of :func:`htvs.conductivity.graph.collate_arrays`
(inputs named :data:`~htvs.conductivity.graph.INPUT_NAMES`; the node, edge and entry axes are all
dynamic, and a batch whose entries have no structure has zero nodes and edges) and returns
``output`` (entries, 2): log10 sigma (S/cm, 300 K) and the logit of P(sigma >= 1e-4 S/cm).
Serving therefore needs numpy, pymatgen and onnxruntime, not torch.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from htvs.conductivity.graph import INPUT_NAMES

#: Format tag stored in each exported graph's metadata.
ONNX_FORMAT = "htvs.conductivity-gnn/1"
OUTPUT_NAME = "output"
#: Opset 17: ScatterElements/ScatterND with reduction="add" (index_add) needs >= 16.
DEFAULT_OPSET = 17


def _example_inputs():
    """A traced example: two entries with structures (3 and 2 nodes) and one without."""
    import torch

    from htvs.conductivity.graph import NODE_INPUT, global_feature_names

    generator = torch.Generator().manual_seed(0)
    n_global = len(global_feature_names())
    return (
        torch.rand(5, NODE_INPUT, generator=generator),
        torch.tensor([0, 0, 0, 2, 2]),
        torch.tensor([1, 2, 0, 4, 3, 4]),
        torch.tensor([0, 0, 1, 3, 4, 4]),
        torch.tensor([2.1, 2.5, 2.1, 3.0, 3.0, 4.2]),
        torch.rand(3, n_global, generator=generator),
        torch.tensor([True, False, True]),
    )


def export_member(model, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write a trained :class:`~htvs.conductivity.model.ConductivityGNN` as a float32 ONNX graph."""
    import onnx
    import torch

    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    dynamic = {"node_features": {0: "nodes"}, "node_graph": {0: "nodes"}, "edge_src": {0: "edges"},
               "edge_dst": {0: "edges"}, "edge_distance": {0: "edges"}, "global_features": {0: "entries"},
               "has_structure": {0: "entries"}, OUTPUT_NAME: {0: "entries"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model, _example_inputs(), buffer, input_names=list(INPUT_NAMES),
                                  output_names=[OUTPUT_NAME], dynamic_axes=dynamic, opset_version=opset,
                                  do_constant_folding=True, dynamo=False)
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"htvs.format": ONNX_FORMAT,
                                        "htvs.model_config": json.dumps(model.config.to_dict(), sort_keys=True),
                                        "htvs.units": "log10(S/cm); logit of P(sigma >= 1e-4 S/cm)"})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


class OnnxMember:
    """One exported member run by onnxruntime; ``member(arrays) -> (entries, 2)`` float64."""

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        from htvs.onnx_sessions import open_session

        self.path = Path(path)
        self.session = open_session(path, threads)
        self._names = [i.name for i in self.session.get_inputs()]

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session.run([OUTPUT_NAME], {name: arrays[name] for name in self._names})
        return out.astype(np.float64)


class TorchMember:
    """A torch member behind the same call as :class:`OnnxMember` (training-time evaluation, tests)."""

    def __init__(self, model) -> None:
        self.model = model.eval()

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(*(torch.from_numpy(arrays[name]) for name in INPUT_NAMES))
        return out.numpy().astype(np.float64)
