"""The random-forest half of the shipped conductivity predictor, fitted and served as ONNX.

On OBELiX a random forest on composition + lattice + space-group descriptors is a strong model
(the dataset paper's simple baseline), and in element-set-grouped cross-validation on the train
split our GNN members alone are worse than it; blending the two is better than either. The
shipped predictor is therefore ``w * GNN-ensemble + (1 - w) * forest`` with ``w`` chosen by that
cross-validation (:mod:`htvs.conductivity.cv`), and the model card scores the GNN alone, the
forest alone and the blend on the test split.

The forest reads the same global descriptor vector as the GNN's global branch
(:func:`htvs.conductivity.graph.global_features`), so it predicts any structure, not only OBELiX
rows. It is exported with skl2onnx (TreeEnsemble operators, run by onnxruntime) so that serving
needs neither scikit-learn nor pickles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from htvs.conductivity.baselines import LOG10_THRESHOLD

REGRESSOR_FILE = "forest_regressor.onnx"
CLASSIFIER_FILE = "forest_classifier.onnx"


@dataclass(frozen=True)
class ForestConfig:
    """scikit-learn settings of the two forests (regression of log10 sigma, sigma >= 1e-4 S/cm).

    The training default (:class:`~htvs.conductivity.train.ConductivityTrainConfig`) is
    ``max_features=0.33, min_samples_leaf=2``, chosen by the element-set-grouped CV on the train
    split (forest out-of-fold MAE 1.098 vs 1.133 with all features; ``sqrt`` with leaves of 1 was
    1.070 but exports to 8 MB instead of 4 MB). ``max_features=1.0`` (all features) is
    scikit-learn's regression default.
    """

    n_estimators: int = 300
    min_samples_leaf: int = 2
    seed: int = 0
    max_features: float | str = 1.0

    def to_dict(self) -> dict[str, int | float | str]:
        return asdict(self)


@dataclass
class Forest:
    """A fitted regressor/classifier pair."""

    regressor: object
    classifier: object

    def predict(self, global_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log10 sigma, P superionic) for (n, n_global) descriptors."""
        x = np.asarray(global_features, dtype=np.float32)
        proba = self.classifier.predict_proba(x)
        classes = list(self.classifier.classes_)
        p = proba[:, classes.index(1)] if 1 in classes else np.zeros(len(x))
        return self.regressor.predict(x), p


def fit_forest(global_features: np.ndarray, log10_sigma: np.ndarray, config: ForestConfig | None = None) -> Forest:
    """Fit both forests on (n, n_global) descriptors and log10 sigma (S/cm)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    config = config or ForestConfig()
    x = np.asarray(global_features, dtype=np.float32)
    y = np.asarray(log10_sigma, dtype=float)
    kwargs = {"n_estimators": config.n_estimators, "min_samples_leaf": config.min_samples_leaf,
              "max_features": config.max_features, "random_state": config.seed, "n_jobs": 1}
    return Forest(RandomForestRegressor(**kwargs).fit(x, y),
                  RandomForestClassifier(**kwargs).fit(x, (y >= LOG10_THRESHOLD).astype(np.int64)))


def export_forest(forest: Forest, directory: str | Path) -> list[Path]:
    """Write the two forests as ONNX files in ``directory``; returns their paths."""
    from skl2onnx import to_onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_features = forest.regressor.n_features_in_
    example = np.zeros((1, n_features), dtype=np.float32)
    opsets = {"": 17, "ai.onnx.ml": 3}
    paths = []
    for model, name, options in ((forest.regressor, REGRESSOR_FILE, None),
                                 (forest.classifier, CLASSIFIER_FILE, {"zipmap": False})):
        proto = to_onnx(model, example, target_opset=opsets, options=options)
        path = directory / name
        path.write_bytes(proto.SerializeToString())
        paths.append(path)
    return paths


class OnnxForest:
    """The exported forests run by onnxruntime; ``forest(global_features) -> (log10 sigma, P)``."""

    def __init__(self, directory: str | Path, threads: int | None = 1) -> None:
        from htvs.onnx_sessions import open_session

        # TreeEnsemble operators run on the CPU provider only
        directory = Path(directory)
        self.regressor = open_session(directory / REGRESSOR_FILE, threads, ["CPUExecutionProvider"])
        self.classifier = open_session(directory / CLASSIFIER_FILE, threads, ["CPUExecutionProvider"])

    def predict(self, global_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(global_features, dtype=np.float32)
        (reg,) = self.regressor.run(None, {self.regressor.get_inputs()[0].name: x})[:1]
        outputs = self.classifier.run(None, {self.classifier.get_inputs()[0].name: x})
        proba = outputs[1]  # (n, 2): P(False), P(True)
        return reg.reshape(-1).astype(np.float64), proba[:, -1].astype(np.float64)
