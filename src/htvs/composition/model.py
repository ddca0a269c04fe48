"""The Roost architecture used by htvs, built from aviary (Goodall & Lee, Nat. Commun. 2020).

aviary-models is the maintained implementation by Roost's author; htvs only chooses the
width. The defaults are narrower than aviary's (2.3 M parameters, ~130 s/epoch on 95 k
formulas with 2 CPU threads, measured on a 2-core machine) so that a 10-model ensemble trains in hours on a
laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from htvs.composition.featurize import RoostBatch


@dataclass(frozen=True)
class RoostConfig:
    """Width and depth of one Roost model (aviary ``Roost`` keyword arguments)."""

    elem_embedding: str = "matscholar200"
    elem_fea_len: int = 64
    n_graph: int = 3
    elem_heads: int = 2
    elem_gate: tuple[int, ...] = (128,)
    elem_msg: tuple[int, ...] = (128,)
    cry_heads: int = 2
    cry_gate: tuple[int, ...] = (128,)
    cry_msg: tuple[int, ...] = (128,)
    trunk_hidden: tuple[int, ...] = (256, 128)
    out_hidden: tuple[int, ...] = (128, 64)
    robust: bool = field(default=False)

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RoostConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[arg-type]


def build_roost(config: RoostConfig, seed: int | None = None):
    """An untrained aviary ``Roost`` with one regression target (float32, on the CPU)."""
    import torch
    from aviary.roost.model import Roost

    if seed is not None:
        torch.manual_seed(seed)
    kwargs = config.to_dict()
    robust = bool(kwargs.pop("robust"))
    return Roost(robust=robust, n_targets=[1], task_dict={"target": "regression"}, **kwargs)


def roost_inputs(batch: RoostBatch, device=None):
    """Torch tensors in the order of aviary ``Roost.forward``, on ``device`` (default: CPU)."""
    import torch

    arrays = (batch.elem_weights, batch.elem_z, batch.self_idx, batch.nbr_idx, batch.cry_idx)
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    if device is None:
        return tensors
    return tuple(t.to(device) for t in tensors)


def roost_predict_torch(model, batch: RoostBatch) -> np.ndarray:
    """(n_rows,) predictions of an aviary Roost on a featurized batch (eval mode, no grad)."""
    import torch

    model.eval()
    with torch.no_grad():
        (out,) = model(*roost_inputs(batch))
    return out[:, 0].numpy().astype(np.float64)
