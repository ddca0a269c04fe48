"""Tiny, randomly initialised Roost ensembles exported to ONNX, for tests that need model files."""

from __future__ import annotations

from pathlib import Path

from htvs.composition.model import RoostConfig, build_roost
from htvs.composition.onnx_export import export_onnx, write_model_card

TINY = RoostConfig(
    elem_fea_len=8, n_graph=1, elem_heads=1, elem_gate=(8,), elem_msg=(8,), cry_heads=1,
    cry_gate=(8,), cry_msg=(8,), trunk_hidden=(8,), out_hidden=(8,),
)  # fmt: skip


def tiny_ensemble(folder: Path, target: str, units: str, bias: float, n_models: int = 2) -> Path:
    """Write ``n_models`` tiny models whose outputs sit near ``bias`` plus a model card."""
    import torch

    files = []
    for k in range(n_models):
        model = build_roost(TINY, seed=k)
        with torch.no_grad():
            model.output_nns[0].fc_out.bias.fill_(bias)
        files.append(export_onnx(model, folder / f"model_{k}.onnx", target=target, units=units).name)
    write_model_card(folder, files, target=target, units=units)
    return folder


def tiny_model_pair(root: Path) -> tuple[Path, Path]:
    """(E_f ensemble near -2 eV/atom, band-gap ensemble near 3 eV) under ``root``."""
    return (
        tiny_ensemble(root / "ef", "e_form", "eV/atom", -2.0),
        tiny_ensemble(root / "gap", "band_gap", "eV", 3.0),
    )
