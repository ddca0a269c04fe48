"""Noise check of the MP-pretraining experiment: a second GNN training seed and two more forest seeds.

Run after ``bench_conductivity_pretrain.py`` on the same ``--work`` folder (it reads that run's
OBELiX graphs and pretrained weights, and uses the same element-set-grouped folds). It trains both
GNN recipes (from scratch, fine-tuned from the MP pretraining) with training seed 1, and refits the
forest and forest + pretrained embedding with forest seeds 1 and 2; nothing here is used to choose
a model. Writes ``WORK/seed_check.json``; progress on stderr. About 35 min on one core.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_conductivity_pretrain_seeds.py --work runs/cond-pretrain
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_conductivity_pretrain as B  # noqa: E402
from htvs.conductivity.baselines import score  # noqa: E402
from htvs.conductivity.cv import fold_of_groups  # noqa: E402
from htvs.conductivity.forest import ForestConfig, blend, fit_forest  # noqa: E402
from htvs.conductivity.graph import GraphConfig  # noqa: E402
from htvs.conductivity.pretrain import load_pretrained  # noqa: E402
from htvs.conductivity.train import ConductivityTrainConfig, build_graph_cache, ensemble_predict, make_entries  # noqa: E402
from htvs.datasets import load_obelix  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--work", type=Path, default=Path("runs/cond-pretrain"),
                    help="the folder of a finished bench_conductivity_pretrain.py run")
work = parser.parse_args().work
if not (work / "pretrain" / "best.pt").exists() or not (work / "graphs.npz").exists():
    parser.error(f"--work {work}: no finished bench_conductivity_pretrain.py run there (pretrain/best.pt, graphs.npz)")
torch.set_num_threads(1)
start = time.perf_counter()
log = lambda m: print(f"[{time.perf_counter() - start:6.0f} s] {m}", file=sys.stderr, flush=True)
trf, tef = load_obelix("train").reset_index(drop=True), load_obelix("test").reset_index(drop=True)
graphs = build_graph_cache([], GraphConfig(), work / "graphs.npz", log)
train, test = make_entries(trf, graphs), make_entries(tef, graphs)
pre = load_pretrained(work / "pretrain" / "best.pt")
state = torch.load(work / "pretrain" / "best.pt", weights_only=True)
folds = fold_of_groups(train.groups, 5, 0)
y, truth = train.log10_sigma.astype(float), test.log10_sigma.astype(float)
cif = test.has_structure
emb_tr, emb_te = B.embedding_matrix(pre, train), B.embedding_matrix(pre, test)
out = {"forest_seeds": {}, "gnn_seed1": {}}
x_tr, x_te = np.stack(train.globals_), np.stack(test.globals_)
for seed in (1, 2):
    fc = ForestConfig(seed=seed)
    oof = B.forest_cv(train, trf, emb_tr, fc, folds)
    res = {}
    for name in ("forest", "forest+embedding"):
        extra = (train.has_structure, cif, emb_tr, emb_te) if name == "forest+embedding" else ()
        p, q = B.forest_predict(x_tr, y, x_te, fc, *extra)
        res[name] = {"cv": score(*oof[name], y), "test": score(p, q, truth), "test_with_cif": score(p[cif], q[cif], truth[cif])}
        log(f"forest seed {seed} {name}: CV {res[name]['cv']['mae_log10_sigma']:.3f} test {res[name]['test']['mae_log10_sigma']:.3f}")
    out["forest_seeds"][seed] = res
fc = ForestConfig(seed=0)
trees = fit_forest(x_tr, y, fc).predict(x_te)
config = ConductivityTrainConfig(threads=1, seed=1)
for name, st in (("gnn_scratch", None), ("gnn_pretrained", state)):
    cv, members = B.gnn_cv_and_members(work / "seed1", name, config, train, fc, log, st)
    reg, prob = ensemble_predict(members, test)
    w = cv["blend_weight"]
    alone, mixed = blend(reg, prob, None, 1.0), blend(reg, prob, trees, w)
    out["gnn_seed1"][name] = {"cv_alone": cv["by_gnn_weight"]["1.0"], "cv_blend": cv["by_gnn_weight"][str(w)], "weight": w,
        "member_epochs": cv["member_epochs"],
        "test_alone": score(alone.log10_sigma_mean, alone.p_superionic, truth),
        "test_alone_with_cif": score(alone.log10_sigma_mean[cif], alone.p_superionic[cif], truth[cif]),
        "test_blend": score(mixed.log10_sigma_mean, mixed.p_superionic, truth),
        "test_blend_with_cif": score(mixed.log10_sigma_mean[cif], mixed.p_superionic[cif], truth[cif])}
    r = out["gnn_seed1"][name]
    log(f"seed 1 {name}: CV alone {r['cv_alone']['mae_log10_sigma']:.3f} blend {r['cv_blend']['mae_log10_sigma']:.3f} (w {w}); "
        f"test alone {r['test_alone']['mae_log10_sigma']:.3f} / CIF {r['test_alone_with_cif']['mae_log10_sigma']:.3f}, "
        f"blend {r['test_blend']['mae_log10_sigma']:.3f}")
    (work / "seed_check.json").write_text(json.dumps(out, indent=1))
log("done")
