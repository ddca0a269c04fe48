"""Shipping trained ensembles: ONNX export of a run's finished members with a model card, and
the shipped models that stage 2 loads (``src/htvs/models/<target>/``)."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from htvs.composition.datasets import TARGETS
from htvs.errors import InvalidInput
from htvs.model_cards import CARD_NAME

#: Stage-2 targets and the training run target each one ships from.
SHIPPED_TARGETS = {"e_form": ("ef", "eV/atom"), "band_gap": ("gap-expt", "eV")}


def shipped_model_dir(target: str) -> Path:
    """Folder of the shipped ONNX ensemble for ``target`` (``e_form`` or ``band_gap``)."""
    if target not in SHIPPED_TARGETS:
        raise InvalidInput(f"unknown model target {target!r}; choose from {sorted(SHIPPED_TARGETS)}")
    return Path(__file__).resolve().parent.parent / "models" / target


def load_ensemble(target: str, directory: Path | None = None, threads: int | None = None):
    """The ONNX ensemble of ``target`` from ``directory`` (default: the shipped one).

    Its std is the card's calibrated spread when the card has a ``calibration`` (see
    :mod:`htvs.composition.calibrate`), the members' raw spread otherwise.

    Raises:
        ModelNotReady: no model there, or its card does not check out (see
            :func:`htvs.model_cards.read_model_card`; the card must declare ``target``).
    """
    from htvs.composition.predictor import OnnxRoostEnsemble

    folder = Path(directory) if directory is not None else shipped_model_dir(target)
    return OnnxRoostEnsemble.from_dir(folder, target=target, intra_op_threads=threads)


def export_run(
    run_dir: Path,
    out_dir: Path,
    target: str,
    related: dict[str, Path] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Export every finished member of ``run_dir`` to ONNX in ``out_dir`` with a model card.

    The card carries the data/split description, the training configuration (seeds included),
    each member's training history summary and the run's ``metrics.json`` when present, plus
    the ``metrics.json`` of ``related`` runs (pretraining, ablations, cross-validation folds)
    under ``related_runs`` so that every reported figure sits next to the model, the device
    that trained the members (``trained_on``) and free-text ``notes`` (caveats, the command).
    """
    from htvs.composition.onnx_export import export_onnx, write_model_card
    from htvs.composition.train import TrainConfig, load_member

    if target not in SHIPPED_TARGETS:
        raise InvalidInput(f"unknown model target {target!r}; choose from {sorted(SHIPPED_TARGETS)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config_path = run_dir / "train_config.json"
    if not config_path.exists():
        raise InvalidInput(f"{run_dir} is not a training run (no train_config.json)")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    done = sorted(
        (int(p.parent.name.split("_")[1]), json.loads(p.read_text()))
        for p in run_dir.glob("model_*/done.json")
    )
    if not done:
        raise InvalidInput(f"{run_dir} has no finished ensemble member yet")
    units = SHIPPED_TARGETS[target][1]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.onnx"):
        stale.unlink()
    files = []
    for k, _ in done:
        path = out_dir / f"model_{k}.onnx"
        export_onnx(load_member(run_dir, k, config.roost), path, target=target, units=units)
        files.append(path.name)
    metrics_path = run_dir / "metrics.json"
    extra = {
        "data": TARGETS[config.target],
        "training_target": config.target,
        "split": {"seed": config.split_seed, "description": "see htvs.composition.datasets.load_split"},
        "train_config": config.to_dict(),
        "members_trained": len(done),
        "members_planned": config.n_models,
        "members": [
            {"model": k, "seed": d["seed"], "epochs": d["epochs"], "best_val_mae": d["best_val_mae"]}
            for k, d in done
        ],
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.exists() else None,
        "related_runs": _related_metrics(related or {}),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "trained_on": _trained_on(config.device, config.threads, [d for _, d in done]),
    }
    if notes:
        extra["notes"] = list(notes)
    return write_model_card(out_dir, files, target=target, units=units, extra=extra)


def _trained_on(device: str, threads: int, done: list[dict]) -> str:
    """``x86_64 CPU, torch threads 2`` or, for GPU runs, the GPU(s) named in the members' done.json."""
    if device != "cuda":
        return f"{platform.machine()} CPU, torch threads {threads}"
    gpus = sorted({str(d.get("device", "cuda")) for d in done})
    versions = sorted({str(d["torch"]) for d in done if "torch" in d})
    torch_part = f", torch {', '.join(versions)}" if versions else ""
    return f"{' + '.join(gpus)}{torch_part}, torch CPU threads {threads}"


def attach_runs(model_dir: Path, related: dict[str, Path]) -> Path:
    """Add the ``metrics.json`` of ``related`` runs to the ``related_runs`` of an existing model
    card (e.g. the Bartel-split comparison), leaving the shipped members untouched."""
    card_path = Path(model_dir) / CARD_NAME
    if not card_path.is_file():
        raise InvalidInput(f"no model card at {card_path}")
    card = json.loads(card_path.read_text())
    card.setdefault("related_runs", {}).update(_related_metrics(related))
    from htvs.atomic import write_text_atomic

    write_text_atomic(card_path, json.dumps(card, indent=1, sort_keys=True) + "\n")
    return card_path


def _related_metrics(related: dict[str, Path]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, run in sorted(related.items()):
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise InvalidInput(f"related run {name!r}: {path} does not exist (evaluate the run first)")
        metrics = json.loads(path.read_text())
        config_path = Path(run) / "train_config.json"
        if config_path.is_file():
            metrics["train_config"] = json.loads(config_path.read_text())
        out[name] = metrics
    return out
