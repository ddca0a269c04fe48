"""Training of Roost ensembles: fixed seeds, per-epoch checkpoints, resumable, metrics JSON.

Layout of a run directory::

    RUN/train_config.json          the TrainConfig (a rerun must match it)
    RUN/model_K/checkpoint.pt      last epoch: weights, optimizer, scheduler, best weights
    RUN/model_K/best.pt            best-validation weights (state dict) once model K is done
    RUN/model_K/done.json          per-model metrics; its presence means "skip on resume"
    RUN/metrics.json               ensemble metrics on the test split

Everything is loaded with ``torch.load(weights_only=True)``. Mini-batch order is a function of
(seed, model, epoch) only, so a run killed at any point and resumed gives the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from htvs.checkpoints import end_epoch, resume, save_atomic, write_json_atomic
from htvs.composition.datasets import UNITS, DataSplit, load_split
from htvs.composition.featurize import RoostBatch, _assemble, parse_fractions
from htvs.composition.model import RoostConfig, build_roost, roost_inputs
from htvs.errors import InvalidInput

#: The width trained for the shipped ensembles (273 k parameters, ~25 s/epoch on 81 k formulas
#: with 2 CPU threads).
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

    def __post_init__(self) -> None:
        for name in ("n_models", "max_epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.learning_rate < 1):
            raise InvalidInput(f"learning_rate must be in (0, 1), got {self.learning_rate}")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["roost"] = self.roost.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["roost"] = RoostConfig.from_dict(data["roost"])
        return cls(**data)


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
    import torch

    model.eval()
    out = np.empty(len(data), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            (pred,) = model(*roost_inputs(data.batch(rows)))
            out[rows] = pred[:, 0].numpy()
    return out


def train_one(
    run_dir: Path,
    k: int,
    config: TrainConfig,
    train: Featurized,
    val: Featurized,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) ensemble member ``k``; returns its done.json contents."""
    import torch

    model_dir = run_dir / f"model_{k}"
    model_dir.mkdir(parents=True, exist_ok=True)
    done_path = model_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    torch.set_num_threads(config.threads)
    seed = config.seed * 1000 + k
    model = build_roost(config.roost, seed=seed)
    if config.init_from:
        init = Path(config.init_from) / f"model_{k}" / "best.pt"
        if not init.exists():
            raise InvalidInput(f"init_from: {init} does not exist (train the pretraining run first)")
        model.load_state_dict(torch.load(init, weights_only=True))
    else:  # start the output at the training mean: faster, steadier L1 training
        with torch.no_grad():
            model.output_nns[0].fc_out.bias.fill_(float(np.mean(train.targets)))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.max_epochs, eta_min=config.min_learning_rate
    )
    checkpoint = model_dir / "checkpoint.pt"
    state, best_weights = resume(checkpoint, model, optimizer, scheduler, log, f"model {k}")
    targets = torch.from_numpy(train.targets)
    while state["epoch"] < config.max_epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        order = np.random.default_rng([config.seed, k, epoch]).permutation(len(train))
        model.train()
        total = 0.0
        for lo in range(0, len(order), config.batch_size):
            rows = order[lo : lo + config.batch_size]
            (pred,) = model(*roost_inputs(train.batch(rows)))
            loss = torch.nn.functional.l1_loss(pred[:, 0], targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
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
    save_atomic(best_weights, model_dir / "best.pt")
    result = {"model": k, "seed": seed, "epochs": state["epoch"], "best_val_mae": state["best_val"],
              "history": state["history"]}
    write_json_atomic(result, done_path)
    return result


def load_member(run_dir: Path, k: int, roost: RoostConfig):
    """Ensemble member ``k``'s best weights in an aviary Roost."""
    import torch

    model = build_roost(roost)
    model.load_state_dict(torch.load(Path(run_dir) / f"model_{k}" / "best.pt", weights_only=True))
    model.eval()
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


def train_ensemble(
    run_dir: Path, config: TrainConfig, split: DataSplit | None = None, log: Callable[[str], None] = print
) -> dict:
    """Train every member (resuming), then score the ensemble; writes RUN/metrics.json."""
    run_dir = Path(run_dir)
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
    split = split or load_split(
        config.target, seed=config.split_seed, cv_fold=config.cv_fold, cv_folds=config.cv_folds
    )
    train, val, test = (Featurized.from_frame(t) for t in (split.train, split.val, split.test))
    log(f"{config.target}: {len(train)} train / {len(val)} val / {len(test)} test formulas")
    for k in range(config.n_models):
        train_one(run_dir, k, config, train, val, log)
    return evaluate_run(run_dir, split)


def finished_members(run_dir: Path) -> list[dict]:
    """done.json of every finished member, by member index."""
    done = [json.loads(p.read_text()) for p in Path(run_dir).glob("model_*/done.json")]
    return sorted(done, key=lambda d: d["model"])


def evaluate_run(run_dir: Path, split: DataSplit | None = None) -> dict:
    """Score the finished members of a run (all of them, or those done so far) on its test split.

    Writes RUN/metrics.json; ``members_trained`` < ``members_planned`` marks a partial ensemble.
    """
    run_dir = Path(run_dir)
    config = TrainConfig.from_dict(json.loads((run_dir / "train_config.json").read_text()))
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
            [predict_rows(load_member(run_dir, m["model"], config.roost), test) for m in members]
        )
        metrics["test"] = ensemble_metrics(preds, test.targets)
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(run_dir / "metrics.json")
    return metrics
