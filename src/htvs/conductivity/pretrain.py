"""Pretraining the conductivity GNN on Materials Project structures, and the two ways to use it.

An experiment (``benchmarks/bench_conductivity_pretrain.py``), not part of the shipped model.

* **Graphs**: a seeded random subset of the MP snapshot (structures of at most ``max_sites``
  sites, |formation energy| <= ``max_abs_formation`` eV/atom) becomes crystal graphs with the
  shipped :class:`~htvs.conductivity.graph.GraphConfig`, cached in chunks of ``CHUNK`` rows
  (``WORK/mp_graphs/chunk_KKK.npz``), so a killed build resumes at the first missing chunk. A bad
  row (unreadable CIF, non-finite target, outlier, no embedding for a species) is skipped and its
  reason counted, never raised.
* **Pretraining**: a :class:`~htvs.conductivity.model.ConductivityGNN` with the shipped
  :class:`~htvs.conductivity.model.ModelConfig` (so its weights transfer) whose two output columns
  regress the *standardized* formation energy (eV/atom) and band gap (eV), with an **L1 loss** on
  each (the sum), like the L1 regression loss of :func:`~htvs.conductivity.train.train_member`.
  The global branch reads the structure's global descriptors, normalized with the MP training
  rows' mean/std. 5 % of the graphs are held out for a validation MAE in eV/atom and eV.
  Checkpointed every epoch (``WORK/pretrain/checkpoint.pt``); a killed run resumes.
* **Fine-tuning**: :func:`finetune_init` copies the message-passing part (``embed``, ``blocks``,
  ``graph_out``) of the pretrained model into a freshly built member; the global branch, the
  no-structure embedding and the heads stay as :func:`~htvs.conductivity.model.build_model` made
  them (their inputs/targets change: OBELiX normalization, log10 sigma). :func:`seed_member`
  writes that model as member K's epoch-0 checkpoint, so the unchanged
  :func:`~htvs.conductivity.train.train_member` resumes from it and trains it exactly like a
  member from scratch (same loss, optimizer, early stopping).
* **Embedding**: :func:`graph_embeddings` returns the pretrained model's pooled graph embedding
  (the output of ``graph_out``, ``head_hidden`` wide) of each crystal graph, a feature for the forest.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from htvs.atomic import atomic_path, write_json_atomic
from htvs.conductivity.graph import CrystalGraph, GraphConfig, build_graph
from htvs.conductivity.model import ModelConfig, build_model, collate
from htvs.errors import InvalidInput

#: Graphs per cache chunk.
CHUNK = 500
#: Names of the two pretraining targets and their units.
TARGETS = ("formation_energy_per_atom", "band_gap")
TARGET_UNITS = ("eV/atom", "eV")
#: Parameter-name prefixes of the message-passing part copied into a fine-tuned member.
TRANSFERRED = ("embed.", "blocks.", "graph_out.")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run.

    Attributes:
        n_structures: MP rows drawn (before bad rows are skipped).
        max_sites: largest cell (sites) drawn, counted from ``formula_sum``.
        max_abs_formation: rows with |E_f| above this (eV/atom) are skipped as outliers.
        val_fraction: share of the built graphs held out for the validation MAE.
        epochs: pretraining epochs (no early stopping; the best-validation weights are kept).
    """

    n_structures: int = 12000
    max_sites: int = 40
    max_abs_formation: float = 5.0
    val_fraction: float = 0.05
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)

    def __post_init__(self) -> None:
        for name in ("n_structures", "max_sites", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"pretraining {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise InvalidInput(f"pretraining val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.max_abs_formation > 0:
            raise InvalidInput(f"max_abs_formation must be > 0 eV/atom, got {self.max_abs_formation}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- MP rows -> graphs

def formula_sites(formula_sum: str) -> int:
    """Atoms in the cell from an MP ``formula_sum`` such as ``"Li4 Ge2 O6"`` (12)."""
    counts = re.findall(r"([A-Z][a-z]?)(\d*\.?\d*)", str(formula_sum))
    if not counts:
        raise InvalidInput(f"formula_sum {formula_sum!r} names no element")
    return int(round(sum(float(n) if n else 1.0 for _, n in counts)))


def read_mp_rows(path: str | Path, n: int, max_sites: int, seed: int) -> list[dict]:
    """A seeded random subset of ``n`` rows of an MP jsonl(.gz) file with at most ``max_sites`` sites.

    Rows whose ``formula_sum`` cannot be read are kept (they are skipped, with a counted reason,
    when their graph is built). The subset depends only on the file, ``n``, ``max_sites`` and ``seed``.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"MP structure file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                if formula_sites(row.get("formula_sum", "")) > max_sites:
                    continue
            except InvalidInput:
                pass
            rows.append(row)
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in np.sort(order)]


def mp_targets(row: dict, max_abs_formation: float) -> np.ndarray:
    """(2,) float32: formation energy (eV/atom) and band gap (eV) of an MP row.

    Raises:
        InvalidInput: a missing or non-finite target, or |E_f| > ``max_abs_formation``.
    """
    try:
        values = np.array([float(row[name]) for name in TARGETS], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidInput(f"{row.get('material_id')}: unreadable target ({err})") from None
    if not np.all(np.isfinite(values)):
        raise InvalidInput(f"{row.get('material_id')}: non-finite target {values.tolist()}")
    if abs(values[0]) > max_abs_formation:
        raise InvalidInput(f"{row.get('material_id')}: formation energy {values[0]:.2f} eV/atom outside "
                           f"±{max_abs_formation}")
    return values.astype(np.float32)


def mp_graph(row: dict, config: PretrainConfig) -> tuple[CrystalGraph, np.ndarray, str | None]:
    """(graph, targets, None) of one MP row, or (None, None, reason) when the row is unusable.

    Reasons: ``bad_target``, ``outlier``, ``bad_cif``, ``too_many_sites``, ``bad_graph``.
    """
    from htvs.prototypes.readers import parse_cif

    try:
        targets = mp_targets(row, math.inf)
    except InvalidInput:
        return None, None, "bad_target"
    if abs(targets[0]) > config.max_abs_formation:
        return None, None, "outlier"
    try:
        structure = parse_cif(str(row.get("cif", "")))[0]
    except Exception:  # noqa: BLE001 - parse_cif raises InvalidInput; pymatgen may raise others
        return None, None, "bad_cif"
    if len(structure) > config.max_sites:
        return None, None, "too_many_sites"
    try:
        graph = build_graph(structure, config.graph)
    except Exception:  # noqa: BLE001 - e.g. a species without an embedding
        return None, None, "bad_graph"
    return graph, targets, None


def _save_chunk(path: Path, ids: list[str], graphs: list[CrystalGraph], targets: list[np.ndarray],
                skipped: Counter) -> None:
    arrays: dict[str, np.ndarray] = {"ids": np.array(json.dumps(ids)), "skipped": np.array(json.dumps(skipped)),
                                     "targets": np.array(targets, dtype=np.float32).reshape(-1, 2)}
    for i, g in zip(ids, graphs):
        arrays.update(g.to_arrays(i))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def _load_chunk(path: Path) -> tuple[list[str], list[CrystalGraph], np.ndarray, Counter]:
    with np.load(path) as arrays:
        ids = json.loads(str(arrays["ids"]))
        return (ids, [CrystalGraph.from_arrays(arrays, i) for i in ids], arrays["targets"].copy(),
                Counter(json.loads(str(arrays["skipped"]))))


@dataclass
class MPGraphs:
    """Built MP graphs: ids, graphs, (n, 2) targets (eV/atom, eV), skip reasons of the drawn rows."""

    ids: list[str]
    graphs: list[CrystalGraph]
    targets: np.ndarray
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)


def build_mp_graphs(rows: Sequence[dict], config: PretrainConfig, directory: Path,
                    log: Callable[[str], None] = print) -> MPGraphs:
    """Graphs of ``rows``, cached as ``directory/chunk_KKK.npz`` (``CHUNK`` rows each; resumable)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids, graphs, targets, skipped = [], [], [], Counter()
    start, built = time.perf_counter(), 0
    for c, lo in enumerate(range(0, len(rows), CHUNK)):
        path = directory / f"chunk_{c:03d}.npz"
        if not path.exists():
            c_ids, c_graphs, c_targets, c_skipped = [], [], [], Counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for row in rows[lo: lo + CHUNK]:
                    graph, target, reason = mp_graph(row, config)
                    if reason is not None:
                        c_skipped[reason] += 1
                        continue
                    c_ids.append(str(row.get("material_id", f"row{lo + len(c_ids)}")))
                    c_graphs.append(graph)
                    c_targets.append(target)
            _save_chunk(path, c_ids, c_graphs, c_targets, c_skipped)
            built += min(CHUNK, len(rows) - lo)
            log(f"MP graphs: chunk {c} ({lo + CHUNK}/{len(rows)} rows), {time.perf_counter() - start:.0f} s "
                f"for {built} rows built this run")
        c_ids, c_graphs, c_targets, c_skipped = _load_chunk(path)
        ids += c_ids
        graphs += c_graphs
        targets.append(c_targets)
        skipped.update(c_skipped)
    stacked = np.concatenate(targets) if targets else np.zeros((0, 2), np.float32)
    return MPGraphs(ids, graphs, stacked, dict(skipped))


# --------------------------------------------------------------------------- pretraining

def split_mp(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of ``n`` graphs; at least one row on each side."""
    if n < 2:
        raise InvalidInput(f"pretraining needs at least 2 graphs, got {n}")
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _batch(data: MPGraphs, rows: Sequence[int]):
    return collate([data.graphs[i] for i in rows], [data.graphs[i].global_features for i in rows])


def predict_mp(model, data: MPGraphs, rows: Sequence[int], scale: np.ndarray, shift: np.ndarray,
               batch_size: int = 256) -> np.ndarray:
    """(len(rows), 2) predictions in eV/atom and eV (the model outputs standardized values)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            out.append(model(*_batch(data, rows[lo: lo + batch_size]).inputs()).numpy())
    return np.concatenate(out) * scale + shift if out else np.zeros((0, 2))


def pretrain(run_dir: Path, config: PretrainConfig, data: MPGraphs, log: Callable[[str], None] = print) -> dict:
    """Pretrain (or resume) in ``run_dir``; returns ``done.json``: validation MAEs (eV/atom, eV), history.

    Files: ``checkpoint.pt`` (every epoch), ``best.pt`` (best validation state dict),
    ``normalization.json`` (target mean/std), ``done.json`` (its presence means "skip").
    """
    import torch

    from htvs.checkpoints import end_epoch, resume, save_atomic

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done_path = run_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    torch.set_num_threads(config.threads)
    train_rows, val_rows = split_mp(len(data), config.val_fraction, config.seed)
    shift = data.targets[train_rows].mean(axis=0)
    scale = data.targets[train_rows].std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    y = torch.from_numpy(((data.targets - shift) / scale).astype(np.float32))
    model = build_model(config.model, seed=config.seed)
    glob = np.stack([data.graphs[i].global_features for i in train_rows])
    model.set_normalization(glob.mean(axis=0), glob.std(axis=0), 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    checkpoint = run_dir / "checkpoint.pt"
    state, best = resume(checkpoint, model, optimizer, None, log, "pretraining")
    start = time.perf_counter()
    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = train_rows[np.random.default_rng([config.seed, epoch]).permutation(len(train_rows))]
        model.train()
        total = 0.0
        for lo in range(0, len(order), config.batch_size):
            rows = order[lo: lo + config.batch_size].tolist()
            out = model(*_batch(data, rows).inputs())
            loss = torch.nn.functional.l1_loss(out, y[rows], reduction="none").mean(dim=0).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        pred = predict_mp(model, data, val_rows, scale, shift)
        mae = np.abs(pred - data.targets[val_rows]).mean(axis=0)
        val = float(np.sum(mae / scale))  # the loss's scale: sum of standardized MAEs
        best, _ = end_epoch(checkpoint, state, best, model, optimizer, None, val,
                            {"train_loss": total / len(order), f"val_mae_{TARGETS[0]}": float(mae[0]),
                             f"val_mae_{TARGETS[1]}": float(mae[1]), "seconds": time.perf_counter() - start})
        log(f"pretraining epoch {state['epoch']}/{config.epochs}: train loss {total / len(order):.3f}, "
            f"val MAE {mae[0]:.3f} eV/atom, {mae[1]:.3f} eV ({time.perf_counter() - start:.0f} s)")
    save_atomic(best, run_dir / "best.pt")
    model.load_state_dict(best)
    pred = predict_mp(model, data, val_rows, scale, shift)
    mae = np.abs(pred - data.targets[val_rows]).mean(axis=0)
    baseline = np.abs(np.median(data.targets[train_rows], axis=0) - data.targets[val_rows]).mean(axis=0)
    result = {
        "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "epochs": state["epoch"],
        "loss": "sum over the two targets of the L1 loss of standardized values",
        "target_mean": shift.tolist(), "target_std": scale.tolist(), "units": list(TARGET_UNITS),
        "val_mae": {TARGETS[0]: float(mae[0]), TARGETS[1]: float(mae[1])},
        "val_mae_predicting_train_median": {TARGETS[0]: float(baseline[0]), TARGETS[1]: float(baseline[1])},
        "history": state["history"],
    }
    write_json_atomic({"target_mean": shift.tolist(), "target_std": scale.tolist()}, run_dir / "normalization.json")
    write_json_atomic(result, done_path)
    return result


def load_pretrained(path: Path, config: ModelConfig | None = None):
    """The pretrained model (``best.pt``), eval mode."""
    import torch

    model = build_model(config)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return model


# --------------------------------------------------------------------------- fine-tuning, embeddings

def transferred_keys(state: dict) -> list[str]:
    """Keys of a state dict that belong to the message-passing part (:data:`TRANSFERRED`)."""
    return [k for k in state if k.startswith(TRANSFERRED)]


def finetune_init(model, pretrained_state: dict):
    """Copy the message-passing weights of ``pretrained_state`` into ``model`` (in place; returns it).

    Raises:
        InvalidInput: a transferred tensor is missing or has another shape (different ModelConfig).
    """
    import torch

    own = model.state_dict()
    keys = transferred_keys(own)
    for key in keys:
        if key not in pretrained_state or tuple(pretrained_state[key].shape) != tuple(own[key].shape):
            got = tuple(pretrained_state[key].shape) if key in pretrained_state else "missing"
            raise InvalidInput(f"pretrained weight {key!r} is {got}, the model needs {tuple(own[key].shape)}")
    with torch.no_grad():
        for key in keys:
            own[key].copy_(pretrained_state[key])
    return model


def seed_member(run_dir: Path, k: int, config, data, pretrained_state: dict) -> bool:
    """Write member ``k``'s epoch-0 checkpoint from pretrained weights, so that
    :func:`~htvs.conductivity.train.train_member` resumes from it (returns False if one exists).

    The model is built as ``train_member`` builds it (``build_model(config.model, seed)`` and the
    normalization of the same training rows), then :func:`finetune_init` replaces its
    message-passing weights; the optimizer state is a fresh AdamW's.
    """
    import torch

    from htvs.checkpoints import save_atomic
    from htvs.conductivity.train import split_rows

    checkpoint = Path(run_dir) / f"model_{k}" / "checkpoint.pt"
    if checkpoint.exists() or (checkpoint.parent / "done.json").exists():
        return False
    groups = data.groups if config.val_grouping == "element_set" else None
    train_rows, _ = split_rows(len(data), config.val_fraction, config.split_seed + k, groups)
    train = data.subset(train_rows)
    model = build_model(config.model, seed=config.seed * 1000 + k)
    glob = np.stack(train.globals_)
    model.set_normalization(glob.mean(axis=0), glob.std(axis=0), float(train.log10_sigma.mean()))
    finetune_init(model, pretrained_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    weights = {key: v.detach().clone() for key, v in model.state_dict().items()}
    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": []}
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": weights, "optimizer": optimizer.state_dict(), "best": weights,
                 "state": json.dumps(state)}, checkpoint)
    return True


def graph_embeddings(model, graphs: Iterable[CrystalGraph], batch_size: int = 128) -> np.ndarray:
    """(n, head_hidden) pooled graph embeddings: the output of ``model.graph_out`` for each graph."""
    import torch

    graphs = list(graphs)
    if not graphs:
        return np.zeros((0, model.config.head_hidden), np.float32)
    captured: list[np.ndarray] = []
    hook = model.graph_out.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().numpy()))
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(graphs), batch_size):
                part = graphs[lo: lo + batch_size]
                model(*collate(part, [g.global_features for g in part]).inputs())
    finally:
        hook.remove()
    return np.concatenate(captured).astype(np.float32)
