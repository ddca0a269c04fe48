"""Does pretraining the conductivity GNN on Materials Project structures help on OBELiX?

One measured experiment, not part of the shipped model (see :mod:`htvs.conductivity.pretrain`).

1. Pretraining (resumable): ``--n-mp`` seeded random MP structures of at most 40 sites become
   crystal graphs (``WORK/mp_graphs/``); a ConductivityGNN with the shipped ModelConfig regresses
   their standardized formation energy (eV/atom) and band gap (eV) with an L1 loss for
   ``--epochs`` epochs, 5 % held out for validation MAEs (``WORK/pretrain/done.json``).
2. Configurations, all scored the same way and chosen only by the project's 5-fold
   element-set-grouped CV on the OBELiX train split (:func:`htvs.conductivity.cv.fold_of_groups`,
   seed 0); the test split is scored once, at the end, for every configuration:

   * ``gnn_scratch``: the shipped member recipe (:func:`htvs.conductivity.train.train_member`);
   * ``gnn_pretrained``: the same recipe started from the pretrained message-passing weights
     (embed, blocks, graph_out; global branch and heads freshly initialised as in ``scratch``);
   * ``*+forest``: each GNN blended with the shipped forest (:func:`htvs.conductivity.forest.blend`)
     at the GNN weight chosen on the grid :data:`htvs.conductivity.cv.WEIGHT_GRID` by the CV
     (:func:`htvs.conductivity.cv.grouped_cv`, one GNN member per fold);
   * ``forest+embedding``: the shipped forest on the global descriptors + the pretrained model's
     pooled 64-wide graph embedding, fitted on the entries with a usable CIF; entries without one
     are predicted by the composition-only forest (no feature is imputed);
   * ``forest``: the shipped forest alone; ``random_forest``: the project's RF baseline.

   For the test split each GNN is the ensemble of its 5 CV fold members (each trained on 4/5 of the
   train split, early-stopped on an element-set-grouped 15 % of that) — no extra members are trained.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_conductivity_pretrain.py \
        --work runs/cond-pretrain [--mp PATH] [--n-mp 24000] [--epochs 12]

Writes ``WORK/results.json`` and ``WORK/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

N_FOLDS = 5
CONFIGS = ("gnn_scratch", "gnn_scratch+forest", "gnn_pretrained", "gnn_pretrained+forest", "forest+embedding",
           "forest", "random_forest")
LABELS = {
    "gnn_scratch": "(i) GNN from scratch (shipped member recipe)",
    "gnn_scratch+forest": "(i) GNN from scratch + forest, CV weight",
    "gnn_pretrained": "(ii) GNN fine-tuned from MP pretraining",
    "gnn_pretrained+forest": "(ii) fine-tuned GNN + forest, CV weight",
    "forest+embedding": "(iii) forest on descriptors + pretrained embedding",
    "forest": "(iv) forest alone (shipped forest half)",
    "random_forest": "(v) baseline: random forest on the OBELiX table features",
}


def check_config(path: Path, config: dict) -> None:
    """Record the run's settings; a rerun in the same folder must use the same ones."""
    from htvs.errors import InvalidInput

    if path.exists():
        if json.loads(path.read_text()) != config:
            raise InvalidInput(f"{path.parent} was started with other settings ({path}); use another --work")
    else:
        path.write_text(json.dumps(config, indent=1))


def embedding_matrix(model, entries) -> np.ndarray:
    """(n, 64) pretrained graph embeddings; NaN rows for entries without a graph (never read)."""
    from htvs.conductivity.pretrain import graph_embeddings

    out = np.full((len(entries), model.config.head_hidden), np.nan, np.float32)
    rows = np.flatnonzero(entries.has_structure)
    out[rows] = graph_embeddings(model, [entries.graphs[i] for i in rows])
    return out


def forest_predict(x_tr, y_tr, x_te, forest_config, has_tr=None, has_te=None, e_tr=None, e_te=None):
    """(log10 sigma, P) of the forest; with embeddings, rows ``has_te`` use the descriptors+embedding
    forest fitted on rows ``has_tr``, the rest the descriptor forest."""
    from htvs.conductivity.forest import fit_forest

    base = fit_forest(x_tr, y_tr, forest_config).predict(x_te)
    pred, prob = base.log10_sigma.copy(), base.p_superionic.copy()
    if e_tr is not None and has_te.any():
        wide = fit_forest(np.hstack([x_tr[has_tr], e_tr[has_tr]]), y_tr[has_tr], forest_config)
        fitted = wide.predict(np.hstack([x_te[has_te], e_te[has_te]]))
        pred[has_te], prob[has_te] = fitted.log10_sigma, fitted.p_superionic
    return pred, prob


def forest_cv(train, frame, emb, forest_config, folds) -> dict:
    """Out-of-fold (log10 sigma, P) of forest, forest+embedding and the RF baseline, project folds."""
    from htvs.conductivity.baselines import random_forest_baseline

    x, y, has = np.stack(train.globals_), train.log10_sigma.astype(float), train.has_structure
    out = {name: (np.empty(len(y)), np.empty(len(y))) for name in ("forest", "forest+embedding", "random_forest")}
    for k in range(N_FOLDS):
        tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        for name in ("forest", "forest+embedding"):
            extra = (has[tr], has[te], emb[tr], emb[te]) if name == "forest+embedding" else ()
            p, q = forest_predict(x[tr], y[tr], x[te], forest_config, *extra)
            out[name][0][te], out[name][1][te] = p, q
        rf = random_forest_baseline(frame.iloc[tr], frame.iloc[te], seed=forest_config.seed)
        out["random_forest"][0][te], out["random_forest"][1][te] = rf.log10_sigma, rf.p_superionic
    return out


def gnn_cv_and_members(work: Path, name: str, config, train, forest_config, log, pretrained_state=None):
    """Grouped CV of one GNN recipe (resumable); returns (cv.json, the 5 fold members)."""
    from htvs.conductivity.cv import fold_of_groups, grouped_cv
    from htvs.conductivity.pretrain import seed_member
    from htvs.conductivity.train import load_member

    run_dir = work / name
    if pretrained_state is not None:
        folds = fold_of_groups(train.groups, N_FOLDS, config.split_seed)
        member_config = replace(config, n_models=1)
        for k in range(N_FOLDS):
            fold_dir = run_dir / "cv" / f"fold_{k}"
            if not (run_dir / "cv" / f"fold_{k}.npz").exists():
                seed_member(fold_dir, 0, member_config, train.subset(np.flatnonzero(folds != k)), pretrained_state)
    cv = grouped_cv(run_dir, config, train, N_FOLDS, forest_config, log)
    members = [load_member(run_dir / "cv" / f"fold_{k}" / "model_0" / "best.pt", config.model)
               for k in range(N_FOLDS)]
    epochs = [json.loads((run_dir / "cv" / f"fold_{k}" / "model_0" / "done.json").read_text())["epochs"]
              for k in range(N_FOLDS)]
    cv["member_epochs"] = epochs
    return cv, members


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/cond-pretrain"))
    parser.add_argument("--mp", type=Path, default=None,
                        help="the MP snapshot (mp_structures.jsonl.gz; default: htvs.datasets.mp_structures_path())")
    parser.add_argument("--n-mp", type=int, default=24000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--gnn-max-epochs", type=int, default=120,
                        help="max epochs of an OBELiX GNN member (the shipped recipe: 120; lower only to smoke-test)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(1)
    from htvs.conductivity.baselines import paired_bootstrap_mae, random_forest_baseline, score
    from htvs.conductivity.cv import fold_of_groups
    from htvs.conductivity.forest import ForestConfig, blend
    from htvs.conductivity.graph import GraphConfig
    from htvs.conductivity.pretrain import PretrainConfig, build_mp_graphs, load_pretrained, pretrain, read_mp_rows
    from htvs.conductivity.train import ConductivityTrainConfig, build_graph_cache, ensemble_predict, make_entries
    from htvs.datasets import load_obelix, load_obelix_cifs, mp_structures_path

    args.mp = args.mp if args.mp is not None else mp_structures_path()
    pre_config = PretrainConfig(n_structures=args.n_mp, epochs=args.epochs)
    train_config = ConductivityTrainConfig(threads=1, max_epochs=args.gnn_max_epochs)
    check_config(args.work / "settings.json", {"mp": str(args.mp), "pretrain": pre_config.to_dict(),
                                               "train": train_config.to_dict()})
    seconds = {}

    # 1. pretraining
    rows = read_mp_rows(args.mp, pre_config.n_structures, pre_config.max_sites, pre_config.seed)
    log(f"{len(rows)} MP rows drawn (<= {pre_config.max_sites} sites, seed {pre_config.seed})")
    mp = build_mp_graphs(rows, pre_config, args.work / "mp_graphs", log)
    del rows
    log(f"{len(mp)} MP graphs; skipped: {mp.skipped}")
    seconds["mp_graphs"] = time.perf_counter() - start
    pre = pretrain(args.work / "pretrain", pre_config, mp, log)
    n_mp, skipped = len(mp), mp.skipped
    del mp
    log(f"pretraining: val MAE {pre['val_mae']} (train-median predictor {pre['val_mae_predicting_train_median']})")
    seconds["pretraining_done"] = time.perf_counter() - start
    pretrained = load_pretrained(args.work / "pretrain" / "best.pt", pre_config.model)
    pretrained_state = torch.load(args.work / "pretrain" / "best.pt", weights_only=True)

    # 2. OBELiX
    train_frame, test_frame = load_obelix("train"), load_obelix("test")
    train_frame, test_frame = train_frame.reset_index(drop=True), test_frame.reset_index(drop=True)
    wanted = set(train_frame["ID"]) | set(test_frame["ID"])
    cifs = [c for c in load_obelix_cifs() if c.id in wanted]
    graphs = build_graph_cache(cifs, GraphConfig(), args.work / "graphs.npz", log)
    train, test = make_entries(train_frame, graphs), make_entries(test_frame, graphs)
    forest_config = ForestConfig(n_estimators=train_config.forest_trees, min_samples_leaf=train_config.forest_min_leaf,
                                 seed=train_config.rf_seed, max_features=train_config.forest_max_features,
                                 kind=train_config.forest_kind)
    counts = {"train": len(train), "train_with_cif": int(train.has_structure.sum()), "test": len(test),
              "test_with_cif": int(test.has_structure.sum())}
    log(f"OBELiX: {counts}")

    # 3. CV on the train split
    folds = fold_of_groups(train.groups, N_FOLDS, train_config.split_seed)
    cv_gnn, members = {}, {}
    for name, state in (("gnn_scratch", None), ("gnn_pretrained", pretrained_state)):
        cv_gnn[name], members[name] = gnn_cv_and_members(args.work, name, train_config, train, forest_config, log,
                                                         state)
        seconds[f"cv_{name}_done"] = time.perf_counter() - start
    emb_train, emb_test = embedding_matrix(pretrained, train), embedding_matrix(pretrained, test)
    oof = forest_cv(train, train_frame, emb_train, forest_config, folds)
    y_tr = train.log10_sigma.astype(float)
    cv = {}
    for name in ("gnn_scratch", "gnn_pretrained"):
        table = cv_gnn[name]["by_gnn_weight"]
        cv[name] = table["1.0"]
        cv[f"{name}+forest"] = {**table[str(cv_gnn[name]["blend_weight"])], "gnn_weight": cv_gnn[name]["blend_weight"]}
    for name, (pred, prob) in oof.items():
        cv[name] = score(pred, prob, y_tr)
    for name in CONFIGS:
        log(f"cv {name}: MAE {cv[name]['mae_log10_sigma']:.3f} acc {cv[name]['accuracy']:.3f} "
            f"AUC {cv[name]['roc_auc']:.3f}")
    best = min(CONFIGS, key=lambda c: cv[c]["mae_log10_sigma"])
    log(f"best in CV: {best}")

    # 4. the test split, once, for every configuration
    x_tr, x_te = np.stack(train.globals_), np.stack(test.globals_)
    from htvs.conductivity.forest import fit_forest

    trees = fit_forest(x_tr, y_tr, forest_config).predict(x_te)
    preds = {"forest": (trees.log10_sigma, trees.p_superionic)}
    preds["forest+embedding"] = forest_predict(x_tr, y_tr, x_te, forest_config, train.has_structure,
                                               test.has_structure, emb_train, emb_test)
    rf = random_forest_baseline(train_frame, test_frame, seed=forest_config.seed)
    preds["random_forest"] = (rf.log10_sigma, rf.p_superionic)
    for name in ("gnn_scratch", "gnn_pretrained"):
        reg, prob = ensemble_predict(members[name], test)
        alone = blend(reg, prob, None, 1.0)
        mixed = blend(reg, prob, trees, cv_gnn[name]["blend_weight"])
        preds[name] = (alone.log10_sigma_mean, alone.p_superionic)
        preds[f"{name}+forest"] = (mixed.log10_sigma_mean, mixed.p_superionic)
    truth = test.log10_sigma.astype(float)
    subsets = {"all": np.ones(len(test), bool), "with_cif": test.has_structure, "without_cif": ~test.has_structure}
    results_test = {name: {s: score(preds[name][0][m], preds[name][1][m], truth[m]) for s, m in subsets.items()}
                    for name in CONFIGS}
    for name in CONFIGS:
        t = results_test[name]
        log(f"test {name}: MAE {t['all']['mae_log10_sigma']:.3f} / CIF {t['with_cif']['mae_log10_sigma']:.3f} "
            f"acc {t['all']['accuracy']:.3f} AUC {t['all']['roc_auc']:.3f}")
    pairs = [(best, "random_forest"), ("gnn_pretrained", "gnn_scratch"),
             ("gnn_pretrained+forest", "gnn_scratch+forest"), ("forest+embedding", "forest"),
             ("gnn_pretrained+forest", "random_forest"), ("forest", "random_forest")]
    bootstrap = {}
    for a, b in pairs:
        for s in ("all", "with_cif"):
            m = subsets[s]
            bootstrap[f"{a} vs {b} ({s})"] = paired_bootstrap_mae(preds[a][0][m], preds[b][0][m], truth[m])
    seconds["total"] = time.perf_counter() - start
    out = {"machine": machine_info(), "settings": json.loads((args.work / "settings.json").read_text()),
           "forest": forest_config.to_dict(), "mp": {"graphs": n_mp, "skipped": skipped}, "pretraining": {k: v for k, v in pre.items() if k != "history"},
           "pretraining_history": pre["history"], "counts": counts, "best_in_cv": best,
           "gnn_cv": {k: {"blend_weight": v["blend_weight"], "member_epochs": v["member_epochs"],
                          "by_gnn_weight": v["by_gnn_weight"]} for k, v in cv_gnn.items()},
           "cv": cv, "test": results_test, "bootstrap": bootstrap,
           "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    from htvs.atomic import write_json_atomic, write_text_atomic

    write_json_atomic(out, args.work / "results.json")
    lines = ["| configuration | CV MAE | CV acc | CV AUC | test MAE all / with CIF / no CIF | test acc | test AUC |",
             "|---|---|---|---|---|---|---|"]
    for name in CONFIGS:
        c, t = cv[name], results_test[name]
        label = LABELS[name] + (f" (w = {cv[name]['gnn_weight']})" if "gnn_weight" in cv[name] else "")
        label = f"**{label}** (best in CV)" if name == best else label
        lines.append(f"| {label} | {c['mae_log10_sigma']:.3f} | {c['accuracy']:.3f} | {c['roc_auc']:.3f} | "
                     f"{t['all']['mae_log10_sigma']:.3f} / {t['with_cif']['mae_log10_sigma']:.3f} / "
                     f"{t['without_cif']['mae_log10_sigma']:.3f} | {t['all']['accuracy']:.3f} | "
                     f"{t['all']['roc_auc']:.3f} |")
    lines += ["", "| paired bootstrap of test MAE (A - B, log10 units) | observed | 95 % interval | A better |",
              "|---|---|---|---|"]
    for key, b in bootstrap.items():
        lines.append(f"| {key} | {b['mae_difference']:+.3f} | {b['ci95_low']:+.3f} … {b['ci95_high']:+.3f} | "
                     f"{100 * b['fraction_a_better']:.0f} % |")
    write_text_atomic(args.work / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"pretraining_val_mae": pre["val_mae"], "seconds": out["seconds"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
