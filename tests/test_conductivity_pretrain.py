"""MP pretraining of the conductivity GNN: graphs from MP rows, pretraining + resume, fine-tune init."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from htvs.conductivity.graph import build_graph
from htvs.conductivity.model import ModelConfig, build_model
from htvs.conductivity.pretrain import (
    MPGraphs,
    PretrainConfig,
    build_mp_graphs,
    finetune_init,
    formula_sites,
    graph_embeddings,
    pretrain,
    read_mp_rows,
    seed_member,
    transferred_keys,
)
from htvs.conductivity.train import ConductivityTrainConfig, Entries, train_member
from htvs.errors import InvalidInput

TINY = ModelConfig(hidden=8, n_blocks=2, n_gaussians=8, global_hidden=8, head_hidden=8)


def cells() -> list[Structure]:
    """Eight small ordered cells (rock salt, CsCl, antifluorite types), 2-12 sites each."""
    out = []
    for a, (cation, anion) in zip((4.0, 5.6, 5.1, 4.2, 6.0, 5.3), (("Li", "F"), ("Na", "Cl"), ("Li", "Cl"),
                                                                    ("Mg", "O"), ("K", "Br"), ("Ca", "S"))):
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    out.append(Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]]))
    return out


@pytest.fixture(scope="module")
def graphs():
    return [build_graph(s) for s in cells()]


def mp_set(graphs) -> MPGraphs:
    """Targets that depend on the structure (mean electronegativity, atom count) so they can be learned."""
    targets = np.array([[-0.5 * g.global_features[1], 0.3 * g.global_features[0] / 10] for g in graphs], np.float32)
    return MPGraphs([f"mp-{i}" for i in range(len(graphs))], list(graphs), targets, {})


def tiny_config(**kw) -> PretrainConfig:
    return PretrainConfig(**{"model": TINY, "batch_size": 4, "val_fraction": 0.25, "learning_rate": 1e-2, **kw})


def test_formula_sites():
    assert formula_sites("Li4 Ge2 O6") == 12
    assert formula_sites("Cs1") == 1
    with pytest.raises(InvalidInput, match="names no element"):
        formula_sites("123")


def test_pretraining_lowers_the_loss(tmp_path, graphs):
    result = pretrain(tmp_path, tiny_config(epochs=12), mp_set(graphs), log=lambda _: None)
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert set(result["val_mae"]) == {"formation_energy_per_atom", "band_gap"}
    assert all(math.isfinite(v) for v in result["val_mae"].values())
    assert (tmp_path / "best.pt").exists() and (tmp_path / "done.json").exists()


def test_pretraining_resumes_from_its_checkpoint(tmp_path, graphs):
    data, messages = mp_set(graphs), []
    pretrain(tmp_path / "a", tiny_config(epochs=2), data, log=messages.append)
    (tmp_path / "a" / "done.json").unlink()  # as if killed after epoch 2 of a 4-epoch run
    resumed = pretrain(tmp_path / "a", tiny_config(epochs=4), data, log=messages.append)
    assert any("resumed after epoch 2" in m for m in messages)
    straight = pretrain(tmp_path / "b", tiny_config(epochs=4), data, log=lambda _: None)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["train_loss"] for h in resumed["history"]],
                               [h["train_loss"] for h in straight["history"]], rtol=1e-5)


def test_finetune_init_copies_exactly_the_message_passing_weights():
    pretrained, model = build_model(TINY, seed=1), build_model(TINY, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = pretrained.state_dict()
    finetune_init(model, source)
    after = model.state_dict()
    moved = transferred_keys(after)
    assert {k.split(".")[0] for k in moved} == {"embed", "blocks", "graph_out"}
    for key, value in after.items():
        expected = source[key] if key in moved else before[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(after["head.0.weight"], source["head.0.weight"])
    with pytest.raises(InvalidInput, match="embed.weight"):
        finetune_init(build_model(ModelConfig(), seed=0), source)


def test_seeded_member_starts_from_the_pretrained_weights(tmp_path, graphs):
    entries = Entries([f"x{i}" for i in range(len(graphs))], list(graphs), [g.global_features for g in graphs],
                      np.linspace(-8, -2, len(graphs)).astype(np.float32), np.zeros(len(graphs), bool),
                      [f"g{i % 4}" for i in range(len(graphs))])
    config = ConductivityTrainConfig(model=TINY, n_models=1, max_epochs=1, threads=1)
    source = build_model(TINY, seed=7).state_dict()
    assert seed_member(tmp_path, 0, config, entries, source)
    saved = torch.load(tmp_path / "model_0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], source[k]) for k in transferred_keys(saved))
    assert not seed_member(tmp_path, 0, config, entries, source)  # never overwrites
    messages = []
    done = train_member(tmp_path, 0, config, entries, log=messages.append)
    assert any("resumed after epoch 0" in m for m in messages) and done["epochs"] == 1


def test_bad_mp_rows_are_skipped_with_a_counted_reason(tmp_path):
    good = cells()[0].to(fmt="cif")
    rows = [
        {"material_id": "mp-good", "formation_energy_per_atom": -2.0, "band_gap": 5.0, "cif": good},
        {"material_id": "mp-cif", "formation_energy_per_atom": -1.0, "band_gap": 0.0, "cif": "data_x\nnonsense"},
        {"material_id": "mp-nan", "formation_energy_per_atom": float("nan"), "band_gap": 1.0, "cif": good},
        {"material_id": "mp-none", "formation_energy_per_atom": None, "band_gap": 1.0, "cif": good},
        {"material_id": "mp-778012", "formation_energy_per_atom": -13.57, "band_gap": 0.0, "cif": good},
    ]
    data = build_mp_graphs(rows, tiny_config(), tmp_path / "graphs", log=lambda _: None)
    assert data.ids == ["mp-good"] and data.targets.shape == (1, 2)
    assert data.skipped == {"bad_cif": 1, "bad_target": 2, "outlier": 1}
    again = build_mp_graphs(rows, tiny_config(), tmp_path / "graphs", log=lambda m: pytest.fail(m))  # cached
    assert again.ids == data.ids and again.skipped == data.skipped


def test_read_mp_rows_draws_a_seeded_subset_of_small_cells(tmp_path):
    path = tmp_path / "mp.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        for i in range(20):
            handle.write(json.dumps({"material_id": f"mp-{i}", "formula_sum": f"Li{i + 1} O1"}) + "\n")
    rows = read_mp_rows(path, n=5, max_sites=11, seed=0)
    assert len(rows) == 5 and all(formula_sites(r["formula_sum"]) <= 11 for r in rows)
    assert rows == read_mp_rows(path, n=5, max_sites=11, seed=0)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_mp_rows(tmp_path / "missing.jsonl.gz", 5, 40, 0)


def test_graph_embeddings_are_the_pooled_graph_output(graphs):
    model = build_model(TINY, seed=0)
    together = graph_embeddings(model, graphs)
    one_by_one = np.concatenate([graph_embeddings(model, [g]) for g in graphs])
    assert together.shape == (len(graphs), TINY.head_hidden)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
