"""Per-epoch training checkpoints shared by the project's trainers (composition, conductivity).

A checkpoint holds the model, optimizer (and scheduler) state, the best-validation weights and
the early-stopping state as JSON; it is written atomically after every epoch and read with
``torch.load(weights_only=True)``, so a run killed at any point resumes from its last epoch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from htvs.atomic import atomic_path


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: readers never see a partial file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _copy_weights(model) -> dict:
    return {key: v.detach().clone() for key, v in model.state_dict().items()}


def resume(
    checkpoint: Path, model, optimizer, scheduler=None, log: Callable[[str], None] = print, label: str = ""
) -> tuple[dict, dict]:
    """Load ``checkpoint`` into model/optimizer/scheduler if it exists.

    Returns:
        (early-stopping state, best weights): fresh ones when there is no checkpoint.
    """
    import torch

    if not checkpoint.exists():
        state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": []}
        return state, _copy_weights(model)
    saved = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    state = json.loads(saved["state"])
    log(f"{label}: resumed after epoch {state['epoch']}")
    return state, saved["best"]


def end_epoch(
    checkpoint: Path, state: dict, best: dict, model, optimizer, scheduler, val_mae: float, record: dict
) -> tuple[dict, bool]:
    """Update early stopping with ``val_mae``, append ``record`` to the history, save the checkpoint.

    Returns:
        (best weights, whether this epoch improved on the best validation MAE).
    """
    improved = val_mae < state["best_val"]
    if improved:
        state["best_val"], state["bad_epochs"] = val_mae, 0
        best = _copy_weights(model)
    else:
        state["bad_epochs"] += 1
    state["epoch"] += 1
    state["history"].append({"epoch": state["epoch"], **record, "val_mae": val_mae})
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "best": best,
               "state": json.dumps(state)}
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    save_atomic(payload, checkpoint)
    return best, improved
