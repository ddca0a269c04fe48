"""The shipped synthesizability model: a bag of small MLPs as plain numpy arrays, and CLscore.

The model folder holds ``model_card.json`` and ``weights.npz`` (no pickle: read with
``allow_pickle=False``): the feature standardization (``mean``, ``scale``) and, for each of the
K bagging rounds, one MLP with one hidden ReLU layer and a logistic output (``w1`` (K, F, H),
``b1`` (K, H), ``w2`` (K, H), ``b2`` (K,)). CLscore of a composition is the mean over the K
rounds of the MLPs' probabilities that it is a positive (experimentally reported) compound.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htvs.errors import InvalidInput, ModelNotReady, RowError

#: ``format`` of the card of a synthesizability model folder.
CARD_FORMAT = "htvs.synth-pu-mlp/1"
#: ``target`` of the card.
TARGET = "clscore"
#: File of the arrays, listed in the card with its sha256 under ``weights_sha256``.
WEIGHTS_FILE = "weights.npz"
#: Arrays of :data:`WEIGHTS_FILE`.
ARRAYS = ("mean", "scale", "w1", "b1", "w2", "b2")
#: A composition with CLscore above this is "likely synthesizable" (Jang et al.'s threshold).
THRESHOLD = 0.5


def shipped_model_dir() -> Path:
    """The folder of the model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "models" / "synthesizability"


@dataclass(frozen=True)
class SynthModel:
    """A loaded bag of MLPs (see the module docstring for the arrays)."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    card: dict

    @property
    def rounds(self) -> int:
        return int(self.w1.shape[0])

    def round_probabilities(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(rounds, n) probabilities of each round's MLP for the (n, F) feature rows."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise InvalidInput(f"features must be (n, {self.mean.shape[0]}), got shape {features.shape}")
        out = np.empty((self.rounds, len(features)), dtype=np.float64)
        for start in range(0, len(features), batch_size):
            x = (features[start : start + batch_size] - self.mean) / self.scale
            hidden = np.maximum(np.einsum("nf,kfh->knh", x, self.w1) + self.b1[:, None, :], 0.0)
            logit = np.einsum("knh,kh->kn", hidden, self.w2) + self.b2[:, None]
            out[:, start : start + batch_size] = 1.0 / (1.0 + np.exp(-logit))
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n,) CLscore: the mean over rounds of :meth:`round_probabilities`."""
        return self.round_probabilities(features).mean(axis=0)


def save_model(folder: Path, arrays: dict[str, np.ndarray], card: dict) -> Path:
    """Write ``weights.npz`` (float32, compressed) and ``model_card.json`` (with its sha256) to ``folder``."""
    import json

    from htvs.atomic import write_bytes_atomic
    from htvs.model_cards import CARD_NAME, sha256_of

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    np.savez_compressed(weights, **{name: np.asarray(arrays[name], dtype=np.float32) for name in ARRAYS})
    card = {**card, "format": CARD_FORMAT, "target": TARGET, "weights_sha256": sha256_of(weights)}
    write_bytes_atomic(folder / CARD_NAME, (json.dumps(card, indent=1, sort_keys=True) + "\n").encode())
    return folder


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> SynthModel:
    from htvs.model_cards import read_model_card

    card = read_model_card(folder, kind="synthesizability model", card_format=CARD_FORMAT, target=TARGET,
                           members=(), files={WEIGHTS_FILE: "weights_sha256"},
                           hint="train one with `htvs train synthesizability --out DIR`")
    try:
        with np.load(Path(folder) / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {name: np.asarray(npz[name], dtype=np.float64) for name in ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ModelNotReady(f"synthesizability model in {folder}: {WEIGHTS_FILE} is not readable ({exc})") from exc
    k, f, h = arrays["w1"].shape
    expected = {"mean": (f,), "scale": (f,), "b1": (k, h), "w2": (k, h), "b2": (k,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ModelNotReady(f"synthesizability model in {folder}: {name} has shape {arrays[name].shape}, "
                                f"expected {shape}")
    return SynthModel(card=card.data, **arrays)


def load_synth_model(folder: str | Path | None = None) -> SynthModel:
    """The model of ``folder`` (default: the shipped one), read once per folder and cached.

    Raises:
        ModelNotReady: the folder, its card or its weights are missing or do not match.
    """
    return _load(str(Path(folder).resolve() if folder is not None else shipped_model_dir()))


def clscore(formulas: Iterable[str], model: SynthModel | None = None) -> list[float | RowError]:
    """CLscore (0..1, above 0.5: likely synthesizable) of each formula, in order.

    A formula that does not parse (:func:`htvs.formula.parse_composition`) or holds an element
    without a matscholar200 embedding gets a :class:`~htvs.errors.RowError` in its place (naming
    the formula or the element); the other rows are scored. Loads the shipped model on first
    use when ``model`` is not given.
    """
    from htvs.formula import parse_composition
    from htvs.synth.features import EMBEDDING, composition_features, embedding_matrix, missing_elements

    items = list(formulas)
    rows, matrix = embedding_matrix()
    out: list[float | RowError] = [0.0] * len(items)
    good: list[int] = []
    compositions: list[dict[str, float]] = []
    for i, formula in enumerate(items):
        try:
            comp = parse_composition(formula)
        except InvalidInput as exc:
            out[i] = RowError.of(i, formula, exc)
            continue
        amounts = {el.symbol: float(amount) for el, amount in comp.items()}
        missing = missing_elements(amounts, rows)
        if missing:
            out[i] = RowError(index=i, value=str(formula), kind="DataNotFound",
                              message=f"formula {formula!r}: no {EMBEDDING} element embedding for "
                                      f"{', '.join(missing)}, so the synthesizability model cannot score it")
            continue
        good.append(i)
        compositions.append(amounts)
    if good:
        scores = (model or load_synth_model()).predict(composition_features(compositions, rows, matrix))
        for i, score in zip(good, scores, strict=True):
            out[i] = float(score)
    return out


def clscore_column(formulas: Sequence[str], model: SynthModel | None = None) -> list[float | None]:
    """:func:`clscore` with None in place of a row error (a table column)."""
    return [None if isinstance(v, RowError) else v for v in clscore(formulas, model)]
