"""Bagging positive-unlabeled (PU) training of the synthesizability model, and its model card.

The method of Mordelet & Vert (Pattern Recogn. Lett. 37, 201 (2014)) as used by Jang et al.
(J. Am. Chem. Soc. 142, 18836 (2020)) for CLscore: in each of K rounds a classifier is trained on
all training positives against an equally large random sample of the unlabeled set, and scores
the unlabeled compositions left out of that round (out of bag). The CLscore of an unlabeled
composition is its mean out-of-bag score; of any other composition the mean over all K rounds.
A fixed-seed 20 % of the positives is held out of every round: the true-positive rate on them is
the model's recall of experimentally reported compounds it never saw.

The classifier of a round is scikit-learn's MLPClassifier (one hidden ReLU layer, early stopping),
trained on one thread; its weights are stored as numpy arrays (:mod:`htvs.synth.model`).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htvs.errors import InvalidInput

#: The example compounds whose CLscore the card reports.
EXAMPLES = ("Li3PS4", "Li7La3Zr2O12", "LiCoO2", "Li10GeP2S12", "Li6PS5Cl", "LiFePO4", "Li2S", "Li3N")


@dataclass(frozen=True)
class BaggingResult:
    """The K round classifiers' arrays and the out-of-bag scores of the unlabeled rows.

    Attributes:
        arrays: ``mean``, ``scale`` (standardization) and ``w1``, ``b1``, ``w2``, ``b2`` (see
            :mod:`htvs.synth.model`).
        oob_score: (n_unlabeled,) mean out-of-bag probability (NaN where a row was in every bag).
        oob_rounds: (n_unlabeled,) rounds in which each unlabeled row was out of bag.
        epochs: epochs each round's MLP trained for.
    """

    arrays: dict[str, np.ndarray]
    oob_score: np.ndarray
    oob_rounds: np.ndarray
    epochs: list[int]


def _mlp(seed: int, hidden: int, alpha: float):
    from htvs.extras import require_extra

    require_extra("sklearn", "train", "training the synthesizability model")
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu", alpha=alpha, batch_size=256,
                         early_stopping=True, validation_fraction=0.1, max_iter=200, random_state=seed)


def bagging_pu(
    positives: np.ndarray,
    unlabeled: np.ndarray,
    rounds: int,
    seed: int = 0,
    hidden: int = 32,
    alpha: float = 1e-3,
    log: Callable[[str], None] = lambda line: None,
) -> BaggingResult:
    """Bagging PU learning on feature matrices (rows: compositions).

    Each round trains an MLP on all ``positives`` (label 1) against ``len(positives)`` rows of
    ``unlabeled`` drawn without replacement (label 0), and scores the unlabeled rows not drawn.

    Raises:
        InvalidInput: fewer than 2 rounds, no positives, or fewer unlabeled rows than positives.
    """
    from threadpoolctl import threadpool_limits

    if rounds < 2:
        raise InvalidInput(f"rounds must be at least 2, got {rounds}")
    if len(positives) == 0 or len(unlabeled) < len(positives):
        raise InvalidInput(f"need positives and at least as many unlabeled rows: got {len(positives)} positives, "
                           f"{len(unlabeled)} unlabeled")
    everything = np.vstack([positives, unlabeled])
    mean = everything.mean(axis=0)
    scale = everything.std(axis=0)
    scale[scale < 1e-12] = 1.0
    p = (positives - mean) / scale
    u = (unlabeled - mean) / scale
    rng = np.random.default_rng(seed)
    w1, b1, w2, b2, epochs = [], [], [], [], []
    total = np.zeros(len(u))
    counted = np.zeros(len(u), dtype=np.int64)
    start = time.perf_counter()
    with threadpool_limits(1):
        for k in range(rounds):
            drawn = rng.choice(len(u), size=len(p), replace=False)
            x = np.vstack([p, u[drawn]])
            y = np.r_[np.ones(len(p)), np.zeros(len(drawn))]
            model = _mlp(int(rng.integers(2**31 - 1)), hidden, alpha).fit(x, y)
            out_of_bag = np.ones(len(u), dtype=bool)
            out_of_bag[drawn] = False
            total[out_of_bag] += model.predict_proba(u[out_of_bag])[:, 1]
            counted[out_of_bag] += 1
            w1.append(model.coefs_[0])
            b1.append(model.intercepts_[0])
            w2.append(model.coefs_[1][:, 0])
            b2.append(model.intercepts_[1][0])
            epochs.append(int(model.n_iter_))
            log(f"round {k + 1}/{rounds}: {model.n_iter_} epochs, {time.perf_counter() - start:.0f} s")
    arrays = {"mean": mean, "scale": scale, "w1": np.stack(w1), "b1": np.stack(b1), "w2": np.stack(w2),
              "b2": np.asarray(b2)}
    with np.errstate(invalid="ignore", divide="ignore"):
        oob = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
    return BaggingResult(arrays, oob, counted, epochs)


def _fraction(mask: np.ndarray, weights: np.ndarray | None = None) -> float:
    if weights is None:
        return float(mask.mean()) if len(mask) else float("nan")
    return float((mask * weights).sum() / weights.sum()) if weights.sum() else float("nan")


def train_synthesizability(
    out_dir: str | Path,
    seed: int = 0,
    rounds: int = 25,
    hidden: int = 32,
    alpha: float = 1e-3,
    holdout: float = 0.2,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Train the PU model on OBELiX + expt_gap (positives) vs the MP 2018 snapshot (unlabeled),
    write it with its model card to ``out_dir`` and return the card.

    The held-out positives (``holdout`` of them, drawn with ``seed``) are never trained on; the
    written model is the one measured (it is not refitted on all positives).
    """
    from htvs.synth.data import load_pu_data
    from htvs.synth.features import (EMBEDDING, EMBEDDING_STATISTICS, STOICHIOMETRY_FEATURES, N_FEATURES,
                                     composition_features, embedding_matrix)
    from htvs.formula import parse_composition
    from htvs.synth.features import fraction_key
    from htvs.synth.model import THRESHOLD, _load, clscore, load_synth_model, save_model

    if not 0.0 < holdout < 1.0:
        raise InvalidInput(f"holdout must be between 0 and 1, got {holdout}")
    started = time.perf_counter()
    rows, matrix = embedding_matrix()
    data = load_pu_data(rows, data_dir)
    log(f"{len(data.positives):,} positive and {len(data.unlabeled):,} unlabeled compositions "
        f"({len(data.skipped)} skipped)")
    xp = composition_features([c.amounts for c in data.positives], rows, matrix)
    xu = composition_features([c.amounts for c in data.unlabeled], rows, matrix)
    order = np.random.default_rng(seed).permutation(len(xp))
    n_held = int(round(holdout * len(xp)))
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    result = bagging_pu(xp[train], xu, rounds, seed=seed, hidden=hidden, alpha=alpha, log=log)
    folder = save_model(Path(out_dir), result.arrays, {})  # provisional card: the metrics use the saved arrays
    _load.cache_clear()
    model = load_synth_model(folder)
    held_scores = model.predict(xp[held])
    all_rounds_u = model.predict(xu)
    li_p = np.array([c.li for c in data.positives])
    li_u = np.array([c.li for c in data.unlabeled])
    structures = np.array([c.structures for c in data.unlabeled], dtype=np.float64)
    oob = result.oob_score
    above = oob > THRESHOLD
    above_all = all_rounds_u > THRESHOLD
    metrics = {
        "threshold": THRESHOLD,
        "heldout_positives": int(n_held),
        "heldout_tpr": float((held_scores > THRESHOLD).mean()),
        "heldout_li_positives": int(li_p[held].sum()),
        "heldout_li_tpr": _fraction(held_scores[li_p[held]] > THRESHOLD),
        "heldout_median_clscore": float(np.median(held_scores)),
        "unlabeled_compositions": int(len(xu)),
        "unlabeled_oob_fraction_above": _fraction(above),
        "unlabeled_structures": int(structures.sum()),
        "unlabeled_structures_oob_fraction_above": _fraction(above, structures),
        "unlabeled_li_compositions": int(li_u.sum()),
        "unlabeled_li_oob_fraction_above": _fraction(above[li_u]),
        "unlabeled_li_structures": int(structures[li_u].sum()),
        "unlabeled_li_structures_oob_fraction_above": _fraction(above[li_u], structures[li_u]),
        "unlabeled_median_oob_clscore": float(np.nanmedian(oob)),
        "unlabeled_min_oob_rounds": int(result.oob_rounds.min()),
        "unlabeled_all_rounds_fraction_above": _fraction(above_all),
        "unlabeled_li_all_rounds_fraction_above": _fraction(above_all[li_u]),
    }
    examples = {}
    for formula, value in zip(EXAMPLES, clscore(EXAMPLES, model), strict=True):
        examples[formula] = value if isinstance(value, float) else value.message
    positive_keys = {fraction_key(c.amounts) for c in data.positives}
    train_keys = {fraction_key(data.positives[i].amounts) for i in train}
    example_roles = {}
    for formula in EXAMPLES:
        key = fraction_key({el.symbol: float(a) for el, a in parse_composition(formula).items()})
        example_roles[formula] = ("trained positive" if key in train_keys else "held-out positive"
                                  if key in positive_keys else "not a positive (unlabeled or unseen)")
    seconds = time.perf_counter() - started
    card = {
        "model": "synthesizability (CLscore-like), bagging PU learning on composition features",
        "trained": datetime.date.today().isoformat(),
        "training_seconds": round(seconds, 1),
        "data": {
            "positives": "experimentally reported compounds: OBELiX compositions ('Reduced Composition', 599 rows) "
                         "and the experimental band-gap set expt_gap (4,604 rows, metals included)",
            "unlabeled": "the compositions of the 36,737 structures of the 2018 Materials Project snapshot "
                         "(htvs.datasets.load_mp_structures), minus the positives' compositions",
            "deduplication": "by atomic fractions (= by reduced formula for integer formulas); an unlabeled "
                             "composition stands for all its MP structures (polymorphs)",
            "counts": data.counts,
            "skipped": [{"value": v, "reason": r} for v, r in data.skipped],
        },
        "split": {
            "heldout_fraction": holdout,
            "seed": seed,
            "heldout_positives": int(n_held),
            "training_positives": int(len(train)),
            "note": "the held-out positives are never trained on; the shipped model is the measured one",
        },
        "method": {
            "name": "bagging PU learning (Mordelet & Vert 2014), as Jang et al. (JACS 142, 18836 (2020))",
            "rounds": rounds,
            "per_round": "all training positives vs an equal-size random sample of the unlabeled (without "
                         "replacement); the unlabeled not drawn are scored out of bag",
            "classifier": f"scikit-learn MLPClassifier, one hidden ReLU layer of {hidden}, L2 alpha {alpha}, "
                          "Adam, batch 256, early stopping on 10 %; one thread; weights exported as float32 "
                          "numpy arrays (no pickle)",
            "clscore": "unlabeled: mean out-of-bag probability (the figures below); any composition scored "
                       "by the shipped model: mean over all rounds",
            "features": f"{N_FEATURES} composition features: fraction-weighted {', '.join(EMBEDDING_STATISTICS)} "
                        f"of the {EMBEDDING} element embedding, and {', '.join(STOICHIOMETRY_FEATURES)}",
            "epochs_per_round": result.epochs,
        },
        "metrics": metrics,
        "examples": {"clscore": examples, "role": example_roles},
        "differences_from_jang_et_al": [
            "positives: OBELiX + expt_gap (about 5,100 compositions) instead of the ICSD (tens of thousands "
            "of structures); expt_gap favours simple, well-characterized compounds, OBELiX Li conductors "
            "(many of them doped, with fractional amounts)",
            "features: composition only (element-embedding statistics and stoichiometry) instead of "
            "crystal-graph (CGCNN) structure features, so the score cannot tell polymorphs apart: every "
            "structure of a composition gets the composition's score",
            "unlabeled: the 2018 MP snapshot, much of which is itself ICSD-derived (reported) material, so "
            "the unlabeled set holds many unlabeled positives and the score is conservative for them; "
            "half of the expt_gap compositions also have an MP structure",
            "no structure features even where a CIF exists: the positives mostly have none, and a feature "
            "present for one class only would give the label away",
            "the held-out true-positive rate is measured on OBELiX + expt_gap compositions, not on ICSD "
            "structures; Jang et al. report about 87 %",
        ],
        "limits": [
            "a score of composition, not of a structure or a synthesis route",
            "elements without a matscholar200 embedding (Z > 103) cannot be scored",
            "doped, fractional compositions occur among the positives (OBELiX) and never among the unlabeled "
            "(MP cells are ordered), so the model may read a fractional amount as a sign of a reported compound",
            "reported compounds that are in MP but in neither OBELiX nor expt_gap are unlabeled here, and may "
            "score below 0.5 (see the examples: LiCoO2, LiFePO4, Li2S); a low score is weak evidence, a high "
            "score means 'resembles the reported compositions'",
            "the score is the bag's mean probability under balanced training, not a calibrated probability "
            "of synthesis",
        ],
        "reproduce": f"htvs train synthesizability --out DIR --seed {seed} --rounds {rounds}",
    }
    save_model(folder, result.arrays, card)
    _load.cache_clear()
    log(f"held-out TPR {metrics['heldout_tpr']:.3f}; unlabeled above {THRESHOLD}: "
        f"{metrics['unlabeled_oob_fraction_above']:.3f} (Li: {metrics['unlabeled_li_oob_fraction_above']:.3f}); "
        f"{seconds:.0f} s")
    return load_synth_model(folder).card
