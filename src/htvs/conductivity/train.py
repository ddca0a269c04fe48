"""Training of the conductivity GNN ensemble on OBELiX, scored with both baselines in one run.

Run layout (resumable; everything loaded with ``torch.load(weights_only=True)``)::

    RUN/train_config.json        the ConductivityTrainConfig (a rerun must match it)
    RUN/graphs.npz               cached crystal graphs of the CIF entries
    RUN/model_K/checkpoint.pt    last epoch: weights, optimizer, best weights, state
    RUN/model_K/best.pt          best-validation state dict of member K
    RUN/model_K/done.json        member metrics; its presence means "skip on resume"
    RUN/metrics.json             model vs. train-mean vs. random forest on the test split

Censored conductivities (``<1E-10``, ``<1E-8``: upper bounds) are trained on as the bound
itself; they are all far below 1e-4 S/cm, so their class label is exact.
Member K holds out its own validation fraction of the train split (seed ``split_seed + K``) for
early stopping on validation MAE, so the members see different data (bagging-like). By default
the validation rows are whole *element-set groups* (every entry whose composition has the same set
of elements goes to the same side): the official OBELiX test split shares the element set of a
training entry for only 36 of its 121 entries, while a random split does for ~75 %, so a random
validation set rewards memorising families and stops training too late.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from htvs.atomic import atomic_path, write_json_atomic
from htvs.checkpoints import end_epoch, resume, save_atomic
from htvs.conductivity.baselines import (
    LOG10_THRESHOLD,
    mean_baseline,
    paired_bootstrap_classification,
    paired_bootstrap_mae,
    random_forest_baseline,
    score,
)
from htvs.conductivity.calibration import METHODS as CALIBRATION_METHODS
from htvs.conductivity.calibration import ProbabilityCalibration, choose, reliability
from htvs.conductivity.cv import grouped_cv
from htvs.conductivity.forest import ForestConfig, blend, export_forest, fit_forest
from htvs.conductivity.graph import CrystalGraph, GraphConfig, build_graph, obelix_composition, table_global_features
from htvs.conductivity.model import ModelConfig, build_model, collate
from htvs.errors import InvalidInput


#: How a member's validation rows are drawn: ``random`` rows, or whole element-set groups.
VAL_GROUPINGS = ("random", "element_set")


@dataclass(frozen=True)
class ConductivityTrainConfig:
    """Settings of one ensemble training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    n_models: int = 5
    max_epochs: int = 120
    patience: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    classification_weight: float = 1.0
    val_fraction: float = 0.15
    seed: int = 0
    split_seed: int = 0
    threads: int = 2
    rf_seed: int = 0
    val_grouping: str = "element_set"
    structure_dropout: float = 0.0
    blend_weight: float | None = None
    cv_folds: int = 5
    forest_kind: str = "extra_trees"
    forest_trees: int = 300
    forest_min_leaf: int = 2
    forest_max_features: float = 0.33
    forest_classifier: bool = True
    calibration: str = "auto"

    def __post_init__(self) -> None:
        for name in ("n_models", "max_epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise InvalidInput(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_grouping not in VAL_GROUPINGS:
            raise InvalidInput(f"val_grouping must be one of {VAL_GROUPINGS}, got {self.val_grouping!r}")
        if self.blend_weight is not None and not 0 <= self.blend_weight <= 1:
            raise InvalidInput(f"blend_weight must be in [0, 1] or None (choose by CV), got {self.blend_weight}")
        if self.cv_folds < 2:
            raise InvalidInput(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.calibration not in ("auto", *CALIBRATION_METHODS):
            raise InvalidInput(f"calibration must be 'auto' or one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if not 0 <= self.structure_dropout < 1:
            raise InvalidInput(f"structure_dropout must be in [0, 1), got {self.structure_dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConductivityTrainConfig:
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data["model"])
        data["graph"] = GraphConfig(**data["graph"])
        return cls(**data)


@dataclass
class Entries:
    """OBELiX entries ready for training: graph (or None), global features, targets."""

    ids: list[str]
    graphs: list[CrystalGraph | None]
    globals_: list[np.ndarray]
    log10_sigma: np.ndarray
    censored: np.ndarray
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> Entries:
        rows = list(rows)
        return Entries([self.ids[i] for i in rows], [self.graphs[i] for i in rows],
                       [self.globals_[i] for i in rows], self.log10_sigma[rows], self.censored[rows],
                       [self.groups[i] for i in rows] if self.groups else [])

    def batch(self, rows: Sequence[int], drop_structure: np.ndarray | None = None):
        """Collated tensors of ``rows``; ``drop_structure[j]`` hides row j's graph (training only)."""
        graphs = [self.graphs[i] for i in rows]
        if drop_structure is not None:
            graphs = [None if drop else g for g, drop in zip(graphs, drop_structure)]
        return collate(graphs, [self.globals_[i] for i in rows])

    @property
    def has_structure(self) -> np.ndarray:
        return np.array([g is not None for g in self.graphs])


def build_graph_cache(cifs, config: GraphConfig, path: Path | None = None, log: Callable[[str], None] = print
                      ) -> dict[str, CrystalGraph]:
    """Graphs of ``cifs`` (``CifText`` records), cached in ``path`` (npz) when given."""
    from htvs.prototypes.readers import parse_cif

    if path is not None and path.exists():
        with np.load(path) as arrays:
            ids = json.loads(str(arrays["ids"]))
            return {i: CrystalGraph.from_arrays(arrays, i) for i in ids}
    graphs: dict[str, CrystalGraph] = {}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in cifs:
            graphs[cif.id] = build_graph(parse_cif(cif.text)[0], config)
    log(f"built {len(graphs)} crystal graphs in {time.perf_counter() - start:.0f} s")
    if path is not None:
        arrays: dict[str, np.ndarray] = {"ids": np.array(json.dumps(list(graphs)))}
        for i, g in graphs.items():
            arrays.update(g.to_arrays(i))
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, **arrays)
    return graphs


def make_entries(frame, graphs: dict[str, CrystalGraph]) -> Entries:
    """Entries of an OBELiX table; a CIF entry's global features come from its structure.

    A CIF whose set of elements differs from the table's composition is not used (the entry
    trains its global branch from the table row instead): 8 OBELiX CIFs lack sites of an element
    of the measured compound, e.g. the Li of several Li-La-Ti-O perovskites or all of Li4SiS4's.
    """
    ids, gs, gl, groups = [], [], [], []
    for _, row in frame.iterrows():
        graph = graphs.get(str(row["ID"]))
        if graph is not None and not same_elements(graph.global_features, table_global_features(row)):
            graph = None
        ids.append(str(row["ID"]))
        gs.append(graph)
        gl.append(graph.global_features if graph is not None else table_global_features(row))
        groups.append(element_set(row["Reduced Composition"]))
    return Entries(ids, gs, gl, frame["log10_sigma"].to_numpy(dtype=np.float32),
                   frame["sigma_censored"].to_numpy(dtype=bool), groups)


def same_elements(features_a: np.ndarray, features_b: np.ndarray) -> bool:
    """Whether two global-feature vectors have the same elements (their trailing atomic fractions)."""
    from htvs.conductivity.graph import MAX_Z

    return bool(np.array_equal(features_a[-MAX_Z:] > 0, features_b[-MAX_Z:] > 0))


def element_set(formula: str) -> str:
    """The sorted element symbols of an OBELiX formula, e.g. ``"La-Li-O-Zr"`` (the grouping key)."""
    return "-".join(sorted(el.symbol for el in obelix_composition(formula).elements))


def predict_entries(model, entries: Entries, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(log10 sigma, superionic logit) of every entry."""
    import torch

    model.eval()
    reg, logit = np.empty(len(entries)), np.empty(len(entries))
    with torch.no_grad():
        for lo in range(0, len(entries), batch_size):
            rows = list(range(lo, min(lo + batch_size, len(entries))))
            out = model(*entries.batch(rows).inputs())
            reg[rows], logit[rows] = out[:, 0].numpy(), out[:, 1].numpy()
    return reg, logit


def split_rows(n: int, fraction: float, seed: int, groups: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): about ``fraction`` of ``n`` entries for validation.

    With ``groups``, whole groups are drawn in a random order until the validation side holds at
    least ``fraction`` of the entries, so no group straddles the split.
    """
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * n)))
    if groups is None:
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    names = sorted(set(groups))
    members: dict[str, list[int]] = {name: [] for name in names}
    for row, name in enumerate(groups):
        members[name].append(row)
    val: list[int] = []
    for g in rng.permutation(len(names)):
        if len(val) >= n_val:
            break
        val.extend(members[names[g]])
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def train_member(run_dir: Path, k: int, config: ConductivityTrainConfig, data: Entries,
                 log: Callable[[str], None] = print) -> dict:
    """Train (or resume) member ``k``; returns its done.json contents."""
    import torch

    model_dir = run_dir / f"model_{k}"
    model_dir.mkdir(parents=True, exist_ok=True)
    done_path = model_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    torch.set_num_threads(config.threads)
    seed = config.seed * 1000 + k
    groups = data.groups if config.val_grouping == "element_set" else None
    train_rows, val_rows = split_rows(len(data), config.val_fraction, config.split_seed + k, groups)
    train, val = data.subset(train_rows), data.subset(val_rows)
    model = build_model(config.model, seed=seed)
    glob = np.stack(train.globals_)
    model.set_normalization(glob.mean(axis=0), glob.std(axis=0), float(train.log10_sigma.mean()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    checkpoint = model_dir / "checkpoint.pt"
    state, best = resume(checkpoint, model, optimizer, None, log, f"model {k}")
    y = torch.from_numpy(train.log10_sigma)
    label = (y >= LOG10_THRESHOLD).float()
    while state["epoch"] < config.max_epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"]
        torch.manual_seed(seed * 100_003 + epoch)  # dropout masks: a function of (seed, epoch)
        rng = np.random.default_rng([config.seed, k, epoch])
        order = rng.permutation(len(train))
        hide = rng.random(len(train)) < config.structure_dropout
        model.train()
        total = 0.0
        for lo in range(0, len(order), config.batch_size):
            rows = order[lo: lo + config.batch_size].tolist()
            out = model(*train.batch(rows, hide[rows] if config.structure_dropout else None).inputs())
            loss = torch.nn.functional.l1_loss(out[:, 0], y[rows]) + config.classification_weight * (
                torch.nn.functional.binary_cross_entropy_with_logits(out[:, 1], label[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        val_mae = float(np.mean(np.abs(predict_entries(model, val)[0] - val.log10_sigma)))
        best, _ = end_epoch(checkpoint, state, best, model, optimizer, None, val_mae,
                            {"train_loss": total / len(order)})
    save_atomic(best, model_dir / "best.pt")
    result = {"model": k, "seed": seed, "val_split_seed": config.split_seed + k, "epochs": state["epoch"],
              "best_val_mae": state["best_val"], "history": state["history"]}
    log(f"model {k}: {state['epoch']} epochs, best val MAE {state['best_val']:.3f}")
    write_json_atomic(result, done_path)
    return result


def load_member(path: Path, config: ModelConfig):
    """A member's weights (``best.pt``) in a model, eval mode."""
    import torch

    model = build_model(config)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return model


def ensemble_predict(models, entries: Entries) -> tuple[np.ndarray, np.ndarray]:
    """(members' log10 sigma, members' P superionic), each (n_members, n)."""
    outs = [predict_entries(m, entries) for m in models]
    return np.stack([o[0] for o in outs]), np.stack([1 / (1 + np.exp(-o[1])) for o in outs])


def _calibration(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean std and the fractions of test entries within 1 and 2 std (log10 units)."""
    err = np.abs(mean - truth)
    return {"mean_std": float(std.mean()), "within_1_std": float(np.mean(err <= std)),
            "within_2_std": float(np.mean(err <= 2 * std))}


def _probability_scores(p: np.ndarray, log10_pred: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy, ROC-AUC, Brier score and the reliability diagram of P(superionic) on the test split."""
    found = score(log10_pred, p, truth)
    return {"accuracy": found["accuracy"], "roc_auc": found["roc_auc"],
            **reliability(p, truth >= LOG10_THRESHOLD)}


def fit_calibration(run_dir: Path, config: ConductivityTrainConfig, cv: dict | None
                    ) -> tuple[ProbabilityCalibration, dict | None]:
    """The P(superionic) calibration map chosen on the CV's out-of-fold predictions (``RUN/cv/oof.npz``)
    and its nested-CV scores, or the identity when the run had no CV (a fixed blend weight)."""
    if cv is None:
        return ProbabilityCalibration(), None
    with np.load(Path(run_dir) / "cv" / "oof.npz") as oof:
        p, fold, label = oof["p_superionic"], oof["fold"], oof["y"] >= LOG10_THRESHOLD
    methods = CALIBRATION_METHODS if config.calibration == "auto" else (config.calibration,)
    calibration, scores, nested = choose(p, label, fold, methods)
    return calibration, {"methods": scores, "before": reliability(p, label),
                         "after_nested_cv": reliability(nested, label)}


def train_ensemble(run_dir: Path, config: ConductivityTrainConfig, train_frame=None, test_frame=None,
                   cifs=None, log: Callable[[str], None] = print) -> dict:
    """Train every member (resuming), pick the blend weight by grouped CV (unless fixed), fit the
    forest, export it to ``RUN/forest/``, then score the blend, the GNN ensemble alone, the forest
    alone, the train mean and the table random forest on the test split."""
    from htvs.datasets import load_obelix, load_obelix_cifs

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "train_config.json"
    if config_path.exists():
        if ConductivityTrainConfig.from_dict(json.loads(config_path.read_text())) != config:
            raise InvalidInput(f"{run_dir} was started with a different configuration ({config_path})")
    else:
        config_path.write_text(json.dumps(config.to_dict(), indent=1))
    train_frame = load_obelix("train") if train_frame is None else train_frame
    test_frame = load_obelix("test") if test_frame is None else test_frame
    wanted = set(train_frame["ID"]) | set(test_frame["ID"])
    cifs = [c for c in (load_obelix_cifs() if cifs is None else cifs) if c.id in wanted]
    graphs = build_graph_cache(cifs, config.graph, run_dir / "graphs.npz", log)
    train, test = make_entries(train_frame, graphs), make_entries(test_frame, graphs)
    log(f"{len(train)} train ({int(train.has_structure.sum())} with CIF) / {len(test)} test "
        f"({int(test.has_structure.sum())} with CIF)")
    members = [train_member(run_dir, k, config, train, log) for k in range(config.n_models)]
    models = [load_member(run_dir / f"model_{m['model']}" / "best.pt", config.model) for m in members]
    gnn_members, gnn_member_p = ensemble_predict(models, test)
    forest_config = ForestConfig(n_estimators=config.forest_trees, min_samples_leaf=config.forest_min_leaf,
                                 seed=config.rf_seed, max_features=config.forest_max_features, kind=config.forest_kind,
                                 classifier=config.forest_classifier)
    cv = None
    weight = config.blend_weight
    if weight is None:
        cv = grouped_cv(run_dir, config, train, config.cv_folds, forest_config, log)
        weight = cv["blend_weight"]
    forest = fit_forest(np.stack(train.globals_), train.log10_sigma, forest_config)
    export_forest(forest, run_dir / "forest")
    trees = forest.predict(np.stack(test.globals_))
    gnn = blend(gnn_members, gnn_member_p, None, 1.0)
    model = blend(gnn_members, gnn_member_p, trees, weight)
    calibration, calibration_cv = fit_calibration(run_dir, config, cv)
    mean, raw_prob, std = model.log10_sigma_mean, model.p_superionic, model.log10_sigma_std
    prob = calibration.apply(raw_prob)
    base_mean = mean_baseline(train.log10_sigma, len(test))
    rf = random_forest_baseline(train_frame, test_frame, seed=config.rf_seed)
    truth = test.log10_sigma.astype(float)
    subsets = {"all": np.ones(len(test), bool), "with_cif": test.has_structure, "without_cif": ~test.has_structure}
    table = {}
    for name, pred in {"model": (mean, prob), "gnn_ensemble": (gnn.log10_sigma_mean, gnn.p_superionic),
                       "forest": (trees.log10_sigma, trees.p_superionic),
                       "train_mean": (base_mean.log10_sigma, base_mean.p_superionic),
                       "random_forest": (rf.log10_sigma, rf.p_superionic)}.items():
        table[name] = {s: score(pred[0][m], pred[1][m], truth[m]) for s, m in subsets.items() if m.any()}
    metrics = {
        "data": "OBELiX (Therrien et al. 2026, CC BY 4.0), official train/test split",
        "censoring": "censored '<x' conductivities are trained on and scored as the bound x",
        "split": {"train": len(train), "train_with_cif": int(train.has_structure.sum()), "test": len(test),
                  "test_with_cif": int(test.has_structure.sum()),
                  "test_censored": int(test.censored.sum())},
        "members": [{k: m[k] for k in ("model", "seed", "val_split_seed", "epochs", "best_val_mae")}
                    for m in members],
        "test": table,
        "blend": {
            "gnn_weight": weight,
            "formula": ("model = gnn_weight * mean(GNN members) + (1 - gnn_weight) * median(forest trees); "
                        "P likewise with the fraction of trees >= -4; std = the mixture's (htvs.conductivity.forest.blend)"),
            "chosen_by": (f"{config.cv_folds}-fold element-set-grouped CV on the train split" if cv is not None
                          else "fixed in the training configuration"),
            "cv": cv,
            "forest": forest_config.to_dict(),
        },
        "model_vs_random_forest": {"a": "model", "b": "random_forest", "subset": "all",
                                   **paired_bootstrap_mae(mean, rf.log10_sigma, truth)},
        "model_vs_random_forest_by_subset": {
            name: {"mae": paired_bootstrap_mae(mean[m], rf.log10_sigma[m], truth[m]),
                   **paired_bootstrap_classification(prob[m], rf.p_superionic[m], truth[m])}
            for name, m in subsets.items() if m.any()},
        "calibration": {
            "map": calibration.to_dict(),
            "applies_to": "P(superionic) of the blend; the model row of `test` scores the calibrated P",
            "chosen_by": ("nested element-set-grouped CV on the train split's out-of-fold P (lowest Brier)"
                          if calibration_cv is not None else "no CV in this run: identity"),
            "cv": calibration_cv,
            "test_before": _probability_scores(raw_prob, mean, truth),
            "test_after": _probability_scores(prob, mean, truth),
            "random_forest_test": _probability_scores(rf.p_superionic, rf.log10_sigma, truth),
        },
        "model_uncertainty": _calibration(mean, std, truth),
        "gnn_uncertainty": _calibration(gnn.log10_sigma_mean, gnn.log10_sigma_std, truth),
        "forest_uncertainty": _calibration(trees.log10_sigma, trees.spread, truth),
    }
    write_json_atomic(metrics, run_dir / "metrics.json")
    return metrics
