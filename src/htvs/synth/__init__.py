"""Synthesizability: a CLscore-like positive-unlabeled score of compositions.

Positives are experimentally reported compounds (OBELiX, expt_gap), the unlabeled the 2018 MP
snapshot; bagging PU learning (Mordelet & Vert 2014) as Jang et al. (2020) used, here on
composition features. Nothing is loaded at import: :func:`clscore` reads the shipped model on
first use.
"""

from __future__ import annotations

from htvs.synth.model import THRESHOLD, clscore, clscore_column, load_synth_model, shipped_model_dir

__all__ = ["THRESHOLD", "clscore", "clscore_column", "load_synth_model", "shipped_model_dir",
           "train_synthesizability"]


def train_synthesizability(out_dir, seed: int = 0, rounds: int = 25, **options) -> dict:
    """Train and write the model with its card (:func:`htvs.synth.train.train_synthesizability`)."""
    from htvs.synth.train import train_synthesizability as run

    return run(out_dir, seed=seed, rounds=rounds, **options)
