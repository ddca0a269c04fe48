"""The tree-ensemble half of the shipped conductivity predictor, fitted with scikit-learn, served as ONNX.

On OBELiX a tree ensemble on composition + lattice + space-group descriptors is a strong model
(the dataset paper's simple baseline is a random forest), and in element-set-grouped
cross-validation on the train split our GNN members alone are worse than it. The shipped predictor
is therefore a blend of the two (:func:`blend`), with the GNN weight chosen by that
cross-validation (:mod:`htvs.conductivity.cv`).

The forest is read as a *distribution*, not averaged: every tree predicts log10 sigma, and

* the point prediction is the **median over trees**. Conductivities are heavy-tailed (a few
  entries sit 6-8 decades below the rest) and the score is the MAE, whose optimum is the
  conditional median; in the grouped CV the median beats the mean of the same trees
  (out-of-fold MAE 1.025 vs 1.061 for extra trees, 1.044 vs 1.098 for a random forest);
* ``P(sigma >= 1e-4 S/cm)`` is the **fraction of trees** at or above -4, so the class and the
  regression agree (P >= 0.5 exactly when the median is superionic) and one model serves both;
* the uncertainty is the robust spread of the trees, half the 15.9-84.1 percentile range.

Optionally (``ForestConfig.classifier``, on in the shipped model) a second tree ensemble is a
dedicated classifier of the superionic label, fitted on the same descriptors, and P is the mean of
the two probabilities: in the element-set-grouped CV on the train split (3 seeds) the average has
a lower Brier score and log loss than either alone (0.099 vs 0.103 for the fraction of regression
trees and 0.100 for the classifier), and the accuracy of the fraction (0.869 vs 0.871; the
classifier alone 0.860). The point prediction and the spread stay the regression trees'.

The forest reads the same global descriptor vector as the GNN's global branch
(:func:`htvs.conductivity.graph.global_features`), so it predicts any structure, not only OBELiX
rows. It is exported as one ONNX ``TreeEnsembleRegressor`` whose output has one column per tree,
built here from the fitted trees: skl2onnx's converter averages the trees inside the operator,
which would throw away the per-tree values that the median, the fraction and the spread need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from htvs.conductivity.baselines import LOG10_THRESHOLD
from htvs.errors import InvalidInput

TREES_FILE = "forest_trees.onnx"
#: The optional classifier half: one output column, the mean over its trees of P(superionic).
CLASSIFIER_FILE = "forest_classifier.onnx"
#: Kinds of scikit-learn tree ensemble the forest can be.
FOREST_KINDS = ("extra_trees", "random_forest")
#: Percentiles whose half-distance is the robust one-sigma spread of the trees.
SPREAD_PERCENTILES = (15.87, 84.13)


@dataclass(frozen=True)
class ForestConfig:
    """scikit-learn settings of the forest (a regressor of log10 sigma, S/cm).

    The training default (:class:`~htvs.conductivity.train.ConductivityTrainConfig`) is extra
    trees with ``max_features=0.33, min_samples_leaf=2``, chosen by the element-set-grouped CV on
    the train split (see BENCHMARKS.md for every variant compared). ``classifier`` adds a
    classifier of the same kind and settings whose probability is averaged into P(superionic).
    """

    n_estimators: int = 300
    min_samples_leaf: int = 2
    seed: int = 0
    max_features: float | str = 0.33
    kind: str = "extra_trees"
    classifier: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FOREST_KINDS:
            raise InvalidInput(f"forest kind must be one of {FOREST_KINDS}, got {self.kind!r}")
        if self.n_estimators < 1 or self.min_samples_leaf < 1:
            raise InvalidInput(f"forest needs n_estimators >= 1 and min_samples_leaf >= 1, got {self}")

    def to_dict(self) -> dict[str, int | float | str]:
        return asdict(self)


@dataclass(frozen=True)
class ForestPrediction:
    """Per-entry summary of the trees: median log10 sigma (S/cm), P superionic, spread (log10 units)."""

    log10_sigma: np.ndarray
    p_superionic: np.ndarray
    spread: np.ndarray


def summarize_trees(per_tree: np.ndarray) -> ForestPrediction:
    """Median, fraction at or above 1e-4 S/cm, and robust spread of (n_trees, n) tree predictions."""
    per_tree = np.asarray(per_tree, dtype=np.float64)
    low, high = np.percentile(per_tree, SPREAD_PERCENTILES, axis=0)
    return ForestPrediction(np.median(per_tree, axis=0), np.mean(per_tree >= LOG10_THRESHOLD, axis=0),
                            (high - low) / 2)


def with_classifier(trees: ForestPrediction, p_classifier: np.ndarray | None) -> ForestPrediction:
    """``trees`` with P(superionic) the mean of the trees' fraction and the classifier's probability."""
    if p_classifier is None:
        return trees
    p = (trees.p_superionic + np.asarray(p_classifier, dtype=np.float64)) / 2
    return ForestPrediction(trees.log10_sigma, p, trees.spread)


@dataclass
class Forest:
    """A fitted scikit-learn tree ensemble (regressor of log10 sigma) and its optional classifier."""

    regressor: object
    classifier: object | None = None

    def classifier_probability(self, global_features: np.ndarray) -> np.ndarray | None:
        """(n,) the classifier's mean P(sigma >= 1e-4 S/cm) over its trees, or None without one."""
        if self.classifier is None:
            return None
        x = np.asarray(global_features, dtype=np.float32)
        per_tree = np.stack([superionic_leaf_fraction(tree.tree_, self.classifier.classes_)[tree.apply(x)]
                             for tree in self.classifier.estimators_])
        return per_tree.astype(np.float32).astype(np.float64).mean(axis=0)

    def tree_predictions(self, global_features: np.ndarray) -> np.ndarray:
        """(n_trees, n) log10 sigma of every tree, rounded to float32 as the ONNX graph stores leaves
        (so both paths see the same values at the -4 class boundary)."""
        x = np.asarray(global_features, dtype=np.float32)
        per_tree = np.stack([tree.predict(x) for tree in self.regressor.estimators_])
        return per_tree.astype(np.float32).astype(np.float64)

    def predict(self, global_features: np.ndarray) -> ForestPrediction:
        return with_classifier(summarize_trees(self.tree_predictions(global_features)),
                               self.classifier_probability(global_features))


def superionic_leaf_fraction(tree, classes: np.ndarray) -> np.ndarray:
    """(node_count,) the fraction of superionic training weight in each node of a fitted
    classifier tree (``tree_`` of a scikit-learn estimator), whatever scale ``tree.value`` has."""
    value = tree.value[:, 0, :]
    classes = [bool(c) for c in classes]
    if True not in classes:
        return np.zeros(tree.node_count)
    return value[:, classes.index(True)] / value.sum(axis=1)


def fit_forest(global_features: np.ndarray, log10_sigma: np.ndarray, config: ForestConfig | None = None) -> Forest:
    """Fit the forest on (n, n_global) descriptors and log10 sigma (S/cm)."""
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

    config = config or ForestConfig()
    extra = config.kind == "extra_trees"
    settings = dict(n_estimators=config.n_estimators, min_samples_leaf=config.min_samples_leaf,
                    max_features=config.max_features, random_state=config.seed, n_jobs=1)
    x, y = np.asarray(global_features, dtype=np.float32), np.asarray(log10_sigma, dtype=float)
    regressor = (ExtraTreesRegressor if extra else RandomForestRegressor)(**settings).fit(x, y)
    classifier = None
    if config.classifier:
        classifier = (ExtraTreesClassifier if extra else RandomForestClassifier)(**settings).fit(
            x, y >= LOG10_THRESHOLD)
    return Forest(regressor, classifier)


def _float32_at_or_below(threshold: float) -> float:
    """The largest float32 <= ``threshold``: for float32 inputs ``x <= t`` then equals ``x <= t32``
    exactly, as scikit-learn compares float32 features with float64 thresholds."""
    t32 = np.float32(threshold)
    if float(t32) > threshold:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


def trees_to_onnx(forest: Forest):
    """An ONNX model ``X (n, n_features) float -> Y (n, n_trees) float``: every tree's prediction."""
    estimators = forest.regressor.estimators_
    return _tree_ensemble_onnx([e.tree_ for e in estimators], [e.tree_.value[:, 0, 0] for e in estimators],
                               per_tree=True, n_features=int(forest.regressor.n_features_in_))


def classifier_to_onnx(forest: Forest):
    """An ONNX model ``X (n, n_features) float -> Y (n, 1) float``: the classifier's mean P(superionic)."""
    estimators = forest.classifier.estimators_
    weights = [superionic_leaf_fraction(e.tree_, forest.classifier.classes_) / len(estimators) for e in estimators]
    return _tree_ensemble_onnx([e.tree_ for e in estimators], weights, per_tree=False,
                               n_features=int(forest.classifier.n_features_in_))


def _tree_ensemble_onnx(trees: list, leaf_values: list[np.ndarray], per_tree: bool, n_features: int):
    """One ``TreeEnsembleRegressor`` over fitted scikit-learn ``tree_`` objects: tree t's leaf writes
    ``leaf_values[t][leaf]`` into output column t (``per_tree``) or into the single column (summed)."""
    from onnx import TensorProto, helper

    nodes: dict[str, list] = {key: [] for key in ("treeids", "nodeids", "featureids", "modes", "values",
                                                   "truenodeids", "falsenodeids")}
    targets: dict[str, list] = {key: [] for key in ("treeids", "nodeids", "ids", "weights")}
    for t, (tree, values) in enumerate(zip(trees, leaf_values)):
        for node in range(tree.node_count):
            leaf = tree.children_left[node] == -1
            nodes["treeids"].append(t)
            nodes["nodeids"].append(node)
            nodes["featureids"].append(0 if leaf else int(tree.feature[node]))
            nodes["modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            nodes["values"].append(0.0 if leaf else _float32_at_or_below(float(tree.threshold[node])))
            nodes["truenodeids"].append(0 if leaf else int(tree.children_left[node]))
            nodes["falsenodeids"].append(0 if leaf else int(tree.children_right[node]))
            if leaf:
                targets["treeids"].append(t)
                targets["nodeids"].append(node)
                targets["ids"].append(t if per_tree else 0)
                targets["weights"].append(float(values[node]))
    n_out = len(trees) if per_tree else 1
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=n_out,
        aggregate_function="SUM", post_transform="NONE",
        **{f"nodes_{k}": v for k, v in nodes.items()}, **{f"target_{k}": v for k, v in targets.items()},
    )
    graph = helper.make_graph(
        [node], "conductivity_forest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_out])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="htvs")
    model.ir_version = 8
    return model


def export_forest(forest: Forest, directory: str | Path) -> list[Path]:
    """Write the forest as ONNX in ``directory`` (the regression trees, one output column per tree,
    and the classifier when there is one); returns the paths."""
    from htvs.atomic import write_bytes_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / TREES_FILE]
    write_bytes_atomic(paths[0], trees_to_onnx(forest).SerializeToString())
    stale = directory / CLASSIFIER_FILE
    if forest.classifier is not None:
        write_bytes_atomic(stale, classifier_to_onnx(forest).SerializeToString())
        paths.append(stale)
    elif stale.exists():
        stale.unlink()
    return paths


class OnnxForest:
    """The exported forest run by onnxruntime; ``predict(global_features) -> ForestPrediction``.

    Args:
        directory: folder with the exported files.
        threads: onnxruntime intra-op threads.
        classifier: whether to use the classifier half (a model card says so; None: when
            ``directory`` holds its file).
    """

    def __init__(self, directory: str | Path, threads: int | None = 1, classifier: bool | None = None) -> None:
        from htvs.onnx_sessions import open_session

        directory = Path(directory)
        # TreeEnsemble operators run on the CPU provider only
        self.session = open_session(directory / TREES_FILE, threads, ["CPUExecutionProvider"])
        if classifier is None:
            classifier = (directory / CLASSIFIER_FILE).exists()
        self.classifier = (open_session(directory / CLASSIFIER_FILE, threads, ["CPUExecutionProvider"])
                           if classifier else None)

    def tree_predictions(self, global_features: np.ndarray) -> np.ndarray:
        x = np.asarray(global_features, dtype=np.float32)
        (per_tree,) = self.session.run(None, {"X": x})
        return per_tree.T.astype(np.float64)

    def classifier_probability(self, global_features: np.ndarray) -> np.ndarray | None:
        if self.classifier is None:
            return None
        (p,) = self.classifier.run(None, {"X": np.asarray(global_features, dtype=np.float32)})
        return p[:, 0].astype(np.float64)

    def predict(self, global_features: np.ndarray) -> ForestPrediction:
        return with_classifier(summarize_trees(self.tree_predictions(global_features)),
                               self.classifier_probability(global_features))


@dataclass(frozen=True)
class BlendPrediction:
    """The shipped predictor's output per entry (log10 S/cm, probability, log10 units)."""

    log10_sigma_mean: np.ndarray
    log10_sigma_std: np.ndarray
    p_superionic: np.ndarray


def blend(gnn_members: np.ndarray, gnn_p: np.ndarray, forest: ForestPrediction | None, gnn_weight: float
          ) -> BlendPrediction:
    """The mixture ``w * GNN + (1 - w) * forest`` of the two predictive distributions.

    Args:
        gnn_members: (n_members, n) log10 sigma of every GNN member.
        gnn_p: (n_members, n) P superionic of every GNN member.
        forest: the forest's summary, or None for the GNN members alone.
        gnn_weight: ``w`` in [0, 1].

    The mean and P are the weighted means; the variance is the mixture's,
    ``w s_g^2 + (1 - w) s_f^2 + w (1 - w) (m_g - m_f)^2``, so disagreement between the halves
    widens the uncertainty.
    """
    m_g, s_g, p_g = gnn_members.mean(axis=0), gnn_members.std(axis=0), gnn_p.mean(axis=0)
    if forest is None:
        return BlendPrediction(m_g, s_g, p_g)
    w = float(gnn_weight)
    m_f, s_f = forest.log10_sigma, forest.spread
    var = w * s_g**2 + (1 - w) * s_f**2 + w * (1 - w) * (m_g - m_f) ** 2
    return BlendPrediction(w * m_g + (1 - w) * m_f, np.sqrt(var), w * p_g + (1 - w) * forest.p_superionic)
