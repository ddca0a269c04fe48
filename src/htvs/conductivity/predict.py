"""Stage 6: Li-ion conductivity of structures from the shipped GNN ensemble.

The ensemble ships as ONNX graphs (``member_K.onnx``, run by onnxruntime; serving needs no torch)
next to ``model_card.json`` (configs, data, split, seeds, test metrics, sha256 of every file, and
the largest ONNX-vs-torch difference measured when it was exported).

Bad input never stops a batch: each item comes back as a :class:`ConductivityPrediction` or a
:class:`~htvs.errors.RowError` naming the reason (malformed CIF, no Li, too many atoms, NaN
coordinates); a structure without Li is not predicted and its record has kind
:data:`~htvs.errors.NO_LITHIUM`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from htvs.conductivity.calibration import ProbabilityCalibration
from htvs.conductivity.forest import blend
from htvs.conductivity.graph import GraphConfig, build_graph, collate_arrays
from htvs.errors import NO_LITHIUM, InvalidInput, ModelNotReady, RowError
from htvs.model_cards import CARD_NAME, read_model_card, sha256_of

CARD_FORMAT = "htvs.conductivity-gnn-ensemble/4"
#: What the shipped model was pretrained on (written into its card).
PRETRAINING = (
    "none: the GNN members start from random weights and they, the trees and the calibration are fitted on the "
    "OBELiX train split only. Measured in element-set-grouped CV and not adopted (BENCHMARKS.md): the GNN "
    "pretrained on 24,000 Materials Project structures (formation energy and band gap) and fine-tuned; its "
    "MP-pretrained pooled embedding, CHGNet 0.3.0's crystal features, and the shipped Roost ensembles' predicted "
    "formation energy and band gap as extra forest descriptors."
)


@dataclass(frozen=True)
class ConductivityConfig:
    """Settings of the conductivity stage.

    Attributes:
        max_atoms: largest number of sites a cell may have (larger cells are refused).
        batch_size: structures per forward pass.
    """

    max_atoms: int = 500
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_atoms < 1 or self.batch_size < 1:
            raise InvalidInput(f"max_atoms and batch_size must be >= 1, got {self.max_atoms}, {self.batch_size}")


@dataclass(frozen=True)
class ConductivityPrediction:
    """Predicted room-temperature Li-ion conductivity of one structure.

    Attributes:
        id: the caller's identifier.
        log10_sigma_mean: ensemble mean of log10 sigma, sigma in S/cm (300 K).
        log10_sigma_std: ensemble standard deviation of log10 sigma (the uncertainty).
        p_superionic: calibrated probability that sigma >= 1e-4 S/cm (the model card's
            ``calibration`` map applied to the blend's probability).
    """

    id: str
    log10_sigma_mean: float
    log10_sigma_std: float
    p_superionic: float

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "log10_sigma_mean": self.log10_sigma_mean,
                "log10_sigma_std": self.log10_sigma_std, "p_superionic": self.p_superionic}


@dataclass
class ConductivityEnsemble:
    """Loaded ensemble members plus the graph settings they were trained with.

    Attributes:
        models: members; each maps :func:`~htvs.conductivity.graph.collate_arrays` arrays to an
            (entries, 2) array (log10 sigma, superionic logit). Torch ``ConductivityGNN`` modules
            are accepted too and wrapped in :class:`~htvs.conductivity.onnx_export.TorchMember`.
        graph_config: how structures become graphs (must match training).
        card: the model card.
        forest: the tree-ensemble half of the blend (``predict(global_features) ->
            ForestPrediction``), or None for the GNN members alone.
        gnn_weight: weight ``w`` of the GNN half in :func:`htvs.conductivity.forest.blend`.
        calibration: maps the blend's P(superionic) to the calibrated probability served.
    """

    models: list
    graph_config: GraphConfig
    card: dict = field(default_factory=dict)
    forest: object | None = None
    gnn_weight: float = 1.0
    calibration: ProbabilityCalibration = field(default_factory=ProbabilityCalibration)

    def __post_init__(self) -> None:
        from htvs.conductivity.onnx_export import TorchMember

        self.models = [TorchMember(m) if hasattr(m, "state_dict") else m for m in self.models]


def default_model_dir() -> Path:
    """``htvs/models/conductivity`` inside the installed package."""
    return Path(str(resources.files("htvs") / "models" / "conductivity"))


def load_ensemble(directory: str | Path | None = None, threads: int | None = 1) -> ConductivityEnsemble:
    """Load the ensemble described by ``directory/model_card.json`` (default: the shipped one).

    Args:
        directory: folder with the card and the ``.onnx`` members.
        threads: onnxruntime intra-op threads per member (None: onnxruntime's default).

    Raises:
        ModelNotReady: the card is missing, malformed or of another format, or a member file
            is missing or has another sha256 (:func:`htvs.model_cards.read_model_card`).
    """
    from htvs.conductivity.forest import OnnxForest
    from htvs.conductivity.onnx_export import OnnxMember

    card = read_model_card(
        directory if directory is not None else default_model_dir(),
        kind="conductivity model",
        card_format=CARD_FORMAT,
        optional_members=("forest_files",),
        hint="train and export one with `htvs train conductivity` and `htvs train conductivity-export`",
    )
    models = [OnnxMember(path, threads) for path in card.files("models")]
    graph_config = GraphConfig(**card.data["graph_config"])
    blend = card.data.get("blend")
    if blend is None:
        return ConductivityEnsemble(models, graph_config, card.data)
    from htvs.conductivity.forest import CLASSIFIER_FILE

    try:
        calibration = ProbabilityCalibration.from_dict(card.data.get("calibration", {}).get("map", {"method": "identity"}))
    except (InvalidInput, AttributeError) as exc:
        raise ModelNotReady(f"{card.path}: bad 'calibration': {exc}") from exc
    has_classifier = CLASSIFIER_FILE in {entry["file"] for entry in card.data.get("forest_files", [])}
    return ConductivityEnsemble(models, graph_config, card.data, OnnxForest(card.folder, threads, has_classifier),
                                float(blend["gnn_weight"]), calibration)


def ship_ensemble(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Export a finished training run's members to ONNX in ``out_dir`` and write its model card.

    Each exported member is checked against its torch weights on the run's cached OBELiX graphs;
    the largest absolute difference goes into the card (``onnx_max_abs_diff``).
    """
    from htvs.conductivity.graph import GraphConfig as _GraphConfig
    from htvs.conductivity.model import ModelConfig
    from htvs.conductivity.onnx_export import OnnxMember, TorchMember, export_member
    from htvs.conductivity.train import build_graph_cache, load_member

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else default_model_dir()
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((run_dir / "train_config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    graphs = list(build_graph_cache([], _GraphConfig(**config["graph"]), run_dir / "graphs.npz").values())[:64]
    check = collate_arrays(graphs + [None], [g.global_features for g in graphs] + [graphs[0].global_features])
    models, worst = [], 0.0
    for stale in [*out.glob("member_*"), *out.glob("forest_*")]:
        stale.unlink()
    forest_files = []
    for source in sorted((run_dir / "forest").glob("*.onnx")):
        shutil.copyfile(source, out / source.name)
        forest_files.append({"file": source.name, "sha256": sha256_of(out / source.name)})
    for member in metrics["members"]:
        model = load_member(run_dir / f"model_{member['model']}" / "best.pt", ModelConfig.from_dict(config["model"]))
        path = export_member(model, out / f"member_{member['model']}.onnx")
        worst = max(worst, float(np.abs(OnnxMember(path)(check) - TorchMember(model)(check)).max()))
        models.append({"file": path.name, "sha256": sha256_of(path)})
    card = {
        "format": CARD_FORMAT,
        "target": "log10 sigma(300 K) regression and P(sigma >= 1e-4 S/cm) classification",
        "units": "log10(S/cm)",
        "loading": ("onnxruntime; GNN members: inputs as htvs.conductivity.graph.collate_arrays, output (entries, 2); "
                    "forest: one TreeEnsembleRegressor on the global descriptor vector, output (entries, trees); "
                    "combined by htvs.conductivity.forest.blend"),
        "model_config": config["model"],
        "graph_config": config["graph"],
        "train_config": config,
        "command": "htvs train conductivity RUN_DIR; htvs train conductivity-export RUN_DIR",
        "onnx_max_abs_diff": worst,
        "pretraining": PRETRAINING,
        **metrics,
        "models": models,
        "forest_files": forest_files,
    }
    path = out / CARD_NAME
    path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _as_structure(item_id: str, item, config: ConductivityConfig):
    """A validated pymatgen Structure, or raise InvalidInput naming the problem."""
    from pymatgen.core import Structure

    from htvs.prototypes.readers import check_cell, check_site_count, parse_cif  # the one reader and checks

    if isinstance(item, str):
        try:
            item = parse_cif(item, config.max_atoms)[0]  # refuses an oversized CIF before expanding it
        except InvalidInput as exc:
            what = "" if hasattr(exc, "n_sites") else "malformed CIF: "  # too large is not malformed
            raise InvalidInput(f"{item_id}: {what}{exc}") from exc
    if not isinstance(item, Structure):
        raise InvalidInput(f"{item_id}: expected a pymatgen Structure or CIF text, got {type(item).__name__}")
    if len(item) == 0:
        raise InvalidInput(f"{item_id}: structure has no sites")
    try:
        check_site_count(len(item), config.max_atoms)
        check_cell(item)
    except InvalidInput as exc:
        raise InvalidInput(f"{item_id}: {exc}") from exc
    return item


def predict_conductivity(
    structures: Sequence[tuple[str, object]],
    ensemble: ConductivityEnsemble,
    config: ConductivityConfig | None = None,
) -> list[ConductivityPrediction | RowError]:
    """Predict Li-ion conductivity of ``(id, Structure or CIF text)`` items, in input order.

    Args:
        structures: ``(id, pymatgen Structure)`` pairs; a ``str`` is read as CIF text.
        ensemble: from :func:`load_ensemble`.
        config: limits (default :class:`ConductivityConfig`).

    Returns:
        One record per item: a prediction, or a :class:`~htvs.errors.RowError` (``index``: the
        item's position, ``value``: its id) with the reason; the batch goes on.
    """
    config = config or ConductivityConfig()
    results: list[ConductivityPrediction | RowError | None] = [None] * len(structures)
    graphs, rows = [], []
    for i, (item_id, item) in enumerate(structures):
        item_id = str(item_id)
        try:
            structure = _as_structure(item_id, item, config)
            if "Li" not in {el.symbol for el in structure.composition.elements}:
                results[i] = RowError(i, item_id, f"{item_id}: structure {structure.composition.reduced_formula} "
                                      "contains no Li; not predicted", NO_LITHIUM)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = build_graph(structure, ensemble.graph_config)
        except InvalidInput as exc:
            results[i] = RowError.of(i, item_id, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - per-item failure, the batch goes on
            results[i] = RowError(i, item_id, f"{item_id}: could not build the crystal graph: {exc}", "InvalidInput")
            continue
        graphs.append(graph)
        rows.append(i)
    for lo in range(0, len(rows), config.batch_size):
        chunk = graphs[lo: lo + config.batch_size]
        arrays = collate_arrays(chunk, [g.global_features for g in chunk])
        outs = np.stack([member(arrays) for member in ensemble.models])
        trees = ensemble.forest.predict(arrays["global_features"]) if ensemble.forest is not None else None
        pred = blend(outs[:, :, 0], 1 / (1 + np.exp(-outs[:, :, 1])), trees, ensemble.gnn_weight)
        calibrated = ensemble.calibration.apply(pred.p_superionic)
        for j, row in enumerate(rows[lo: lo + config.batch_size]):
            results[row] = ConductivityPrediction(
                id=str(structures[row][0]),
                log10_sigma_mean=float(pred.log10_sigma_mean[j]),
                log10_sigma_std=float(pred.log10_sigma_std[j]),
                p_superionic=float(calibrated[j]),
            )
    return [r for r in results if r is not None]


def predict_cif_files(paths: Sequence[str | Path], ensemble: ConductivityEnsemble,
                      config: ConductivityConfig | None = None) -> list[ConductivityPrediction | RowError]:
    """Convenience: predict CIF files; ``id`` is the file name without its extension."""
    items: list[tuple[str, object]] = []
    for path in map(Path, paths):
        try:
            items.append((path.stem, path.read_text(encoding="utf-8", errors="replace")))
        except OSError as exc:
            items.append((path.stem, f"unreadable file: {exc}"))
    return predict_conductivity(items, ensemble, config)


def metrics_table(card: Mapping) -> str:
    """The model-vs-baselines test table of a model card, as Markdown."""
    lines = ["| model | subset | n | MAE log10 σ | accuracy | ROC-AUC |", "|---|---|---|---|---|---|"]
    for name, subsets in card["test"].items():
        for subset, m in subsets.items():
            lines.append(f"| {name} | {subset} | {m['n']} | {m['mae_log10_sigma']:.3f} | {m['accuracy']:.3f} | "
                         f"{m['roc_auc']:.3f} |")
    return "\n".join(lines)
