"""Training of Roost ensembles: fixed seeds, per-epoch checkpoints, resumable, metrics JSON.

Layout of a run directory::

    RUN/train_config.json          the TrainConfig (a rerun must match it)
    RUN/model_K/checkpoint.pt      last epoch: weights, optimizer, scheduler, best weights
    RUN/model_K/best.pt            best-validation weights (state dict) once model K is done
    RUN/model_K/done.json          per-model metrics; its presence means "skip on resume"
    RUN/metrics.json               ensemble metrics on the test split

Everything is loaded with ``torch.load(weights_only=True)``. Mini-batch order is a function of
(seed, model, epoch) only, so a run killed at any point and resumed gives the same weights as
an uninterrupted one on the CPU; on a GPU (``device="cuda"``) the scatter reductions use atomics,
so runs agree only to rounding. ``best.pt`` always holds CPU tensors, whatever the device.

An optional wall-clock ``deadline`` stops training between mini-batches: the member keeps the
best weights of its completed epochs (``best.pt`` and ``done.json`` with ``"stop_reason":
"deadline"``; delete that ``done.json`` to resume the member from its ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from htvs.atomic import write_json_atomic
from htvs.checkpoints import end_epoch, resume, save_atomic
from htvs.composition.datasets import UNITS, DataSplit, load_split
from htvs.composition.featurize import RoostBatch, _assemble, parse_fractions
from htvs.composition.model import RoostConfig, build_roost, roost_inputs
from htvs.errors import InvalidInput

#: Devices training and evaluation accept (``cuda``: the first visible GPU).
DEVICES = ("cpu", "cuda")

#: The width trained for the shipped ensembles (273 k parameters, ~25 s/epoch on 81 k formulas
#: with 2 CPU threads; also ~25 s/epoch per member with 10 members sharing one H200 GPU).
SHIPPED_ROOST = RoostConfig(
    elem_fea_len=48,
    n_graph=3,
    elem_gate=(96,),
    elem_msg=(96,),
    cry_gate=(96,),
    cry_msg=(96,),
    trunk_hidden=(192, 96),
    out_hidden=(96, 48),
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one ensemble training run."""

    target: str = "ef"
    roost: RoostConfig = field(default_factory=lambda: SHIPPED_ROOST)
    n_models: int = 10
    max_epochs: int = 60
    patience: int = 8
    batch_size: int = 256
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    weight_decay: float = 1e-6
    seed: int = 0
    split_seed: int = 0
    threads: int = 2
    init_from: str | None = None  # run dir whose model_K/best.pt initialises model K
    cv_fold: int | None = None  # for k-fold targets (gap-expt-all): the test fold
    cv_folds: int = 5
    device: str = "cpu"  # "cpu" or "cuda"; checked against the machine when training starts

    def __post_init__(self) -> None:
        for name in ("n_models", "max_epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.learning_rate < 1):
            raise InvalidInput(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.device not in DEVICES:
            raise InvalidInput(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["roost"] = self.roost.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["roost"] = RoostConfig.from_dict(data["roost"])
        return cls(**data)


def resolve_device(name: str):
    """``torch.device(name)`` for ``name`` in :data:`DEVICES`; InvalidInput if it is unknown or
    if ``cuda`` is asked for on a machine (or torch build) without a usable GPU."""
    import torch

    if name not in DEVICES:
        raise InvalidInput(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            f"device 'cuda' requested but torch {torch.__version__} sees no usable GPU "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    return torch.device(name)


def device_description(device) -> str:
    """What trained a member, for done.json and model cards: ``cpu`` or ``cuda (<GPU name>)``."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@dataclass
class Featurized:
    """A table parsed once: per-formula atomic numbers and fractions, and targets."""

    formulas: list[str]
    zs: list[list[int]]
    fractions: list[list[float]]
    targets: np.ndarray

    @classmethod
    def from_frame(cls, frame) -> Featurized:
        zs, fr, keep = [], [], []
        for i, formula in enumerate(frame["formula"].tolist()):
            try:
                z, w = parse_fractions(formula)
            except InvalidInput:
                continue  # e.g. an element without an embedding: never trained on
            zs.append(z)
            fr.append(w)
            keep.append(i)
        targets = frame["target"].to_numpy(dtype=np.float32)[keep]
        return cls([frame["formula"].iloc[i] for i in keep], zs, fr, targets)

    def batch(self, rows: np.ndarray) -> RoostBatch:
        return _assemble(rows, [self.zs[i] for i in rows], [self.fractions[i] for i in rows])

    def __len__(self) -> int:
        return len(self.zs)


def predict_rows(model, data: Featurized, batch_size: int = 4096) -> np.ndarray:
    """(len(data),) float64 predictions of ``model`` on the device its parameters live on."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = np.empty(len(data), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            (pred,) = model(*roost_inputs(data.batch(rows), device))
            out[rows] = pred[:, 0].cpu().numpy()
    return out


def _train_epoch(
    model, optimizer, train: Featurized, order: np.ndarray, batch_size: int, device, deadline: float | None
) -> float | None:
    """One pass over ``train`` in ``order``; the summed L1 loss (eV/atom x rows), or None if
    ``deadline`` (``time.time()`` seconds) passed before the last mini-batch."""
    import torch

    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per mini-batch
    for lo in range(0, len(order), batch_size):
        if deadline is not None and time.time() >= deadline:
            return None
        rows = order[lo : lo + batch_size]
        (pred,) = model(*roost_inputs(train.batch(rows), device))
        target = torch.from_numpy(train.targets[rows]).to(device)
        loss = torch.nn.functional.l1_loss(pred[:, 0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * len(rows)
    return float(total)


def train_one(
    run_dir: Path,
    k: int,
    config: TrainConfig,
    train: Featurized,
    val: Featurized,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> dict | None:
    """Train (or resume) ensemble member ``k`` on ``config.device``.

    Args:
        deadline: optional wall-clock limit (``time.time()`` seconds since the epoch). Once it
            has passed, training stops between mini-batches (the unfinished epoch is dropped)
            and the best weights of the completed epochs are saved as the member's result.

    Returns:
        The member's done.json contents, or None when the deadline passed before its first
        epoch ended (nothing is written as done then).
    """
    import torch

    model_dir = run_dir / f"model_{k}"
    model_dir.mkdir(parents=True, exist_ok=True)
    done_path = model_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads)
    seed = config.seed * 1000 + k
    model = build_roost(config.roost, seed=seed)
    if config.init_from:
        init = Path(config.init_from) / f"model_{k}" / "best.pt"
        if not init.exists():
            raise InvalidInput(f"init_from: {init} does not exist (train the pretraining run first)")
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    else:  # start the output at the training mean: faster, steadier L1 training
        with torch.no_grad():
            model.output_nns[0].fc_out.bias.fill_(float(np.mean(train.targets)))
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.max_epochs, eta_min=config.min_learning_rate
    )
    checkpoint = model_dir / "checkpoint.pt"
    state, best_weights = resume(checkpoint, model, optimizer, scheduler, log, f"model {k}")
    stop_reason = ""
    while state["epoch"] < config.max_epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        order = np.random.default_rng([config.seed, k, epoch]).permutation(len(train))
        total = _train_epoch(model, optimizer, train, order, config.batch_size, device, deadline)
        if total is None:  # the deadline passed: the unfinished epoch is dropped
            stop_reason = "deadline"
            log(f"model {k}: wall-clock deadline reached in epoch {epoch + 1}; keeping the best of {epoch} epochs")
            break
        scheduler.step()
        val_mae = float(np.mean(np.abs(predict_rows(model, val) - val.targets)))
        record = {"train_mae": total / len(order), "seconds": round(time.perf_counter() - start, 1)}
        best_weights, improved = end_epoch(
            checkpoint, state, best_weights, model, optimizer, scheduler, val_mae, record
        )
        log(
            f"model {k} epoch {epoch + 1}/{config.max_epochs}: train MAE {total / len(order):.4f} "
            f"val MAE {val_mae:.4f}{' *' if improved else ''} ({state['history'][-1]['seconds']} s)"
        )
    if not stop_reason:
        stop_reason = "max_epochs" if state["epoch"] >= config.max_epochs else "patience"
    if state["epoch"] == 0:
        return None  # no completed epoch: nothing worth keeping
    save_atomic({key: v.detach().cpu() for key, v in best_weights.items()}, model_dir / "best.pt")
    result = {"model": k, "seed": seed, "epochs": state["epoch"], "best_val_mae": state["best_val"],
              "stop_reason": stop_reason, "device": device_description(device),
              "torch": torch.__version__, "history": state["history"]}
    write_json_atomic(result, done_path)
    return result


def load_member(run_dir: Path, k: int, roost: RoostConfig, device: str = "cpu"):
    """Ensemble member ``k``'s best weights in an aviary Roost on ``device`` (eval mode)."""
    import torch

    target = resolve_device(device)
    model = build_roost(roost)
    path = Path(run_dir) / f"model_{k}" / "best.pt"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.to(target).eval()
    return model


def ensemble_metrics(predictions: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE of the ensemble mean, mean member MAE, and error-vs-spread calibration.

    Args:
        predictions: (n_models, n_rows) member predictions.
        truth: (n_rows,) reference values.
    """
    mean = predictions.mean(axis=0)
    std = predictions.std(axis=0)
    error = np.abs(mean - truth)
    return {
        "n": int(truth.size),
        "ensemble_mae": float(error.mean()),
        "ensemble_rmse": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "member_mae_mean": float(np.mean(np.abs(predictions - truth[None, :]).mean(axis=1))),
        "mean_std": float(std.mean()),
        "within_1_sigma": float(np.mean(error <= std)),
        "within_2_sigma": float(np.mean(error <= 2 * std)),
    }


def start_run(run_dir: Path, config: TrainConfig) -> None:
    """Create ``run_dir`` with its train_config.json, or check that an existing run used ``config``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "train_config.json"
    if config_path.exists():
        previous = TrainConfig.from_dict(json.loads(config_path.read_text()))  # defaults fill new fields
        if previous != config:
            raise InvalidInput(
                f"{run_dir} was started with a different configuration ({config_path}); "
                "use a new --out or the same settings"
            )
    else:
        config_path.write_text(json.dumps(config.to_dict(), indent=1))


def train_ensemble(
    run_dir: Path,
    config: TrainConfig,
    split: DataSplit | None = None,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> dict:
    """Train every member (resuming), then score the ensemble; writes RUN/metrics.json.

    Args:
        deadline: optional wall-clock limit (``time.time()`` seconds) for the whole run: the
            member in training keeps its best completed epochs, later members are not started,
            and the members finished so far are scored (a partial ensemble).
    """
    resolve_device(config.device)  # fail before anything is written
    run_dir = Path(run_dir)
    start_run(run_dir, config)
    split = split or load_split(
        config.target, seed=config.split_seed, cv_fold=config.cv_fold, cv_folds=config.cv_folds
    )
    train, val, test = (Featurized.from_frame(t) for t in (split.train, split.val, split.test))
    log(f"{config.target}: {len(train)} train / {len(val)} val / {len(test)} test formulas")
    for k in range(config.n_models):
        finished = (run_dir / f"model_{k}" / "done.json").exists()
        if deadline is not None and time.time() >= deadline and not finished:
            log(f"wall-clock deadline reached: members {k}..{config.n_models - 1} not trained")
            break
        train_one(run_dir, k, config, train, val, log, deadline=deadline)
    return evaluate_run(run_dir, split, device=config.device)


def finished_members(run_dir: Path) -> list[dict]:
    """done.json of every finished member, by member index."""
    done = [json.loads(p.read_text()) for p in Path(run_dir).glob("model_*/done.json")]
    return sorted(done, key=lambda d: d["model"])


def evaluate_run(run_dir: Path, split: DataSplit | None = None, device: str = "cpu") -> dict:
    """Score the finished members of a run (all of them, or those done so far) on its test split.

    Writes RUN/metrics.json; ``members_trained`` < ``members_planned`` marks a partial ensemble.
    ``device`` is where the members run for scoring, whatever device trained them.
    """
    resolve_device(device)
    run_dir = Path(run_dir)
    config_path = run_dir / "train_config.json"
    if not config_path.is_file():
        raise InvalidInput(f"{run_dir} is not a training run (no train_config.json)")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    split = split or load_split(
        config.target, seed=config.split_seed, cv_fold=config.cv_fold, cv_folds=config.cv_folds
    )
    members = finished_members(run_dir)
    if not members:
        raise InvalidInput(f"{run_dir} has no finished ensemble member yet")
    metrics: dict[str, object] = {
        "target": config.target,
        "units": UNITS.get(config.target, ""),
        "split": split.sizes(),
        "members_trained": len(members),
        "members_planned": config.n_models,
        "members": [{k: m[k] for k in ("model", "seed", "epochs", "best_val_mae")} for m in members],
    }
    test = Featurized.from_frame(split.test)
    if len(test):
        preds = np.stack(
            [predict_rows(load_member(run_dir, m["model"], config.roost, device), test) for m in members]
        )
        metrics["test"] = ensemble_metrics(preds, test.targets)
    write_json_atomic(metrics, run_dir / "metrics.json")
    return metrics
