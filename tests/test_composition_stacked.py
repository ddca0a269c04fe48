"""The stacked Roost ensemble trainer: equivalence with aviary/DenseRoost, bit-identical resume,
per-member early stopping, refused checkpoints, the data cache and the export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from htvs.composition.datasets import DataSplit, load_split
from htvs.composition.dense import DenseRoost
from htvs.composition.featurize import featurize
from htvs.composition.model import RoostConfig, build_roost, roost_inputs
from htvs.composition.train import TrainConfig, load_member
from htvs.errors import InvalidInput

import htvs.composition.stacked as stacked_module
from htvs.composition.stacked import StackedRoost, load_featurized, predict_stacked, train_stacked

#: Two heads and one hidden layer per network: the stacked fast path (htvs's shipped layout).
TINY = RoostConfig(
    elem_fea_len=8, n_graph=2, elem_heads=2, elem_gate=(8,), elem_msg=(8,), cry_heads=2,
    cry_gate=(8,), cry_msg=(8,), trunk_hidden=(16, 8), out_hidden=(8, 4),
)  # fmt: skip
#: No hidden layers in the message networks, deeper gates, three heads: the general path.
ODD = RoostConfig(
    elem_fea_len=6, n_graph=1, elem_heads=3, elem_gate=(5, 4), elem_msg=(), cry_heads=1,
    cry_gate=(5, 4), cry_msg=(), trunk_hidden=(8,), out_hidden=(4,),
)  # fmt: skip
FORMULAS = ["Li", "Li2O", "Li3PS4", "Li7La3Zr2O12", "LiMn0.5Ni0.5PO4", "LiNaMgAlSiO6", "LiNaKMgAlSO8",
            "LiBeBCNOFNa", "NaCl", "Cs2AgBiBr6", "LiCoO2", "Fe2O3"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_split() -> DataSplit:
    full = load_split("gap-expt")
    return DataSplit("gap-expt", full.train.iloc[:200], full.val.iloc[:40], full.test.iloc[:40])


def config(**kwargs) -> TrainConfig:
    base = {"target": "gap-expt", "roost": TINY, "n_models": 2, "max_epochs": 2, "batch_size": 32, "threads": 1}
    base.update(kwargs)
    return TrainConfig(**base)


def quiet(line: str) -> None:
    pass


def _random_members(roost: RoostConfig, n: int) -> list:
    models = []
    for k in range(n):
        model = build_roost(roost, seed=100 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".pow"):
                    p.fill_(-1.3 + 1.1 * k)  # off the default: the power path is exercised
        models.append(model.eval())
    return models


@pytest.mark.parametrize("roost", [TINY, ODD], ids=["tiny", "odd"])
def test_each_member_equals_dense_roost_and_aviary(roost: RoostConfig) -> None:
    models = _random_members(roost, 3)
    batch, errors = featurize(FORMULAS)
    assert not errors
    z, w = torch.from_numpy(batch.dense_z), torch.from_numpy(batch.dense_weights)
    stacked = StackedRoost.from_models(roost, models).eval()
    with torch.no_grad():
        together = stacked(z, w)[..., 0]
        subset = stacked(z.expand(2, -1, -1), w.expand(2, -1, -1), torch.tensor([2, 0]))[..., 0]
        for k, model in enumerate(models):
            (aviary,) = model(*roost_inputs(batch))
            dense = DenseRoost.from_aviary(model).eval()(z, w)
            np.testing.assert_allclose(together[k].numpy(), aviary[:, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(together[k].numpy(), dense[:, 0].numpy(), atol=1e-5)
    assert torch.equal(subset[0], together[2]) and torch.equal(subset[1], together[0])
    for k, model in enumerate(models):  # unstacking gives back the aviary state dict exactly
        state = stacked.member_state(k)
        assert all(torch.equal(state[key], v) for key, v in model.state_dict().items())


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _fake_clock(monkeypatch, stop_when):
    """Replace the module's clock: time.time() is 0 until ``stop_when(calls)`` says the
    deadline (1.0) has passed."""
    import time as real_time
    import types

    calls = {"n": 0}

    def now() -> float:
        calls["n"] += 1
        return 2.0 if stop_when(calls["n"]) else 0.0

    monkeypatch.setattr(stacked_module, "time", types.SimpleNamespace(time=now, perf_counter=real_time.perf_counter))
    return calls


@pytest.mark.parametrize("stop_after_calls", [7, 9], ids=["end-of-epoch-1", "inside-epoch-2"])
def test_resume_is_bit_identical(tmp_path: Path, small_split: DataSplit, monkeypatch, stop_after_calls) -> None:
    straight = tmp_path / "straight"
    train_stacked(straight, config(), small_split, log=quiet)
    # 200 rows / 32 = 7 steps per epoch; the clock is read once before each step
    _fake_clock(monkeypatch, lambda n: n > stop_after_calls)
    killed = tmp_path / "killed"
    first = train_stacked(killed, config(), small_split, log=quiet, deadline=1.0)
    state = json.loads((killed / "stacked" / "progress.json").read_text())
    if stop_after_calls == 7:
        assert state == {"epoch": 1, "step": 0}
        assert first["members_trained"] == 2  # both members kept their first epoch
        assert json.loads((killed / "model_0" / "done.json").read_text())["stop_reason"] == "deadline"
    else:
        assert state == {"epoch": 1, "step": 2}
    monkeypatch.undo()
    train_stacked(killed, config(), small_split, log=quiet)
    for k in range(2):
        a, b = _weights(straight / f"model_{k}" / "best.pt"), _weights(killed / f"model_{k}" / "best.pt")
        assert _same(a, b)
        done = json.loads((killed / f"model_{k}" / "done.json").read_text())
        assert done["stop_reason"] == "max_epochs" and done["epochs"] == 2
        ref = json.loads((straight / f"model_{k}" / "done.json").read_text())
        assert [h["val_mae"] for h in done["history"]] == [h["val_mae"] for h in ref["history"]]
        assert [h["train_mae"] for h in done["history"]] == [h["train_mae"] for h in ref["history"]]
    assert _same(_weights(straight / "stacked" / "checkpoint.pt")["model"],
                 _weights(killed / "stacked" / "checkpoint.pt")["model"])


def test_early_stopping_freezes_a_member(tmp_path: Path, small_split: DataSplit, monkeypatch) -> None:
    real = stacked_module.predict_stacked
    epochs = {"n": 0}

    def member_1_gets_worse(model, data, members=None):
        out = real(model, data, members)
        order = list(range(model.n_members)) if members is None else members.tolist()
        if 1 in order:
            epochs["n"] += 1
            out[order.index(1)] += 10.0 * epochs["n"]  # its validation MAE rises every epoch
        return out

    monkeypatch.setattr(stacked_module, "predict_stacked", member_1_gets_worse)
    snapshots = {}

    def snapshot(line: str) -> None:
        if line.startswith("stacked epoch"):
            epoch = int(line.split()[2].split("/")[0])
            snapshots[epoch] = _weights(tmp_path / "stacked" / "checkpoint.pt")["model"]

    train_stacked(tmp_path, config(max_epochs=4, patience=1), small_split, log=snapshot)
    done = [json.loads((tmp_path / f"model_{k}" / "done.json").read_text()) for k in range(2)]
    assert (done[0]["stop_reason"], done[0]["epochs"]) == ("max_epochs", 4)
    assert (done[1]["stop_reason"], done[1]["epochs"]) == ("patience", 2)
    for key in snapshots[2]:
        assert torch.equal(snapshots[2][key][1], snapshots[4][key][1])  # member 1 frozen after epoch 2
    assert any(not torch.equal(snapshots[2][key][0], snapshots[4][key][0]) for key in snapshots[2])
    assert done[1]["best_val_mae"] == done[1]["history"][0]["val_mae"]  # its best is epoch 1


def test_missing_or_corrupt_checkpoint_is_refused(tmp_path: Path, small_split: DataSplit) -> None:
    train_stacked(tmp_path, config(max_epochs=1), small_split, log=quiet)
    checkpoint = tmp_path / "stacked" / "checkpoint.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidInput, match=f"{checkpoint}.*corrupt"):
        train_stacked(tmp_path, config(max_epochs=1), small_split, log=quiet)
    checkpoint.unlink()
    with pytest.raises(InvalidInput, match=f"{checkpoint} is missing"):
        train_stacked(tmp_path, config(max_epochs=1), small_split, log=quiet)
    checkpoint.write_bytes(good)
    train_stacked(tmp_path, config(max_epochs=1), small_split, log=quiet)  # restored: fine again
    # a run of the other engine, or other settings, is refused before anything is trained
    other = tmp_path / "aviary"
    (other / "model_0").mkdir(parents=True)
    (other / "model_0" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(InvalidInput, match="per-member"):
        train_stacked(other, config(), small_split, log=quiet)
    with pytest.raises(InvalidInput, match="different configuration"):
        train_stacked(tmp_path, config(max_epochs=3), small_split, log=quiet)


def test_featurized_cache_is_checked_and_rebuilt(tmp_path: Path, small_split: DataSplit) -> None:
    path = tmp_path / "data.npz"
    train, val = load_featurized(path, small_split, log=quiet)
    assert train.z.dtype == np.int64 and train.fractions.dtype == np.float32 and train.targets.dtype == np.float32
    np.testing.assert_allclose(train.fractions.sum(axis=1), 1.0, rtol=1e-6)
    lines: list[str] = []
    again, _ = load_featurized(path, small_split, log=lines.append)
    assert not lines and np.array_equal(again.z, train.z)
    path.write_bytes(b"not a zip file")
    load_featurized(path, small_split, log=lines.append)
    assert "unreadable" in lines[-1]
    other = DataSplit("x", small_split.train.iloc[:100], small_split.val, small_split.test)
    smaller, _ = load_featurized(path, other, log=lines.append)
    assert "another split" in lines[-1] and len(smaller) == 100


def test_export_round_trip(tmp_path: Path, small_split: DataSplit) -> None:
    from htvs.composition.ship import export_run

    run = tmp_path / "run"
    metrics = train_stacked(run, config(), small_split, log=quiet)
    assert metrics["members_trained"] == 2 and metrics["test"]["n"] == 40
    saved = _weights(run / "stacked" / "checkpoint.pt")
    batch, errors = featurize(FORMULAS)
    z, w = torch.from_numpy(batch.dense_z), torch.from_numpy(batch.dense_weights)
    best = StackedRoost(TINY, [{key: v[k] for key, v in saved["best"].items()} for k in range(2)]).eval()
    with torch.no_grad():
        together = best(z, w)[..., 0]
        for k in range(2):
            member = load_member(run, k, TINY)  # the aviary Roost that `htvs train export` loads
            (aviary,) = member(*roost_inputs(batch))
            dense = DenseRoost.from_aviary(member).eval()(z, w)
            np.testing.assert_allclose(together[k].numpy(), aviary[:, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(together[k].numpy(), dense[:, 0].numpy(), atol=1e-5)
    card = json.loads(export_run(run, tmp_path / "models", "band_gap").read_text())
    assert [m["file"] for m in card["models"]] == ["model_0.onnx", "model_1.onnx"]
    assert card["members_trained"] == 2
    # the validation predictions behind early stopping are the stacked model's own
    _, val = load_featurized(run / "data.npz", small_split, log=quiet)
    pred = predict_stacked(best, val)
    mae = np.mean(np.abs(pred - val.targets[None, :]), axis=1)
    for k in range(2):
        done = json.loads((run / f"model_{k}" / "done.json").read_text())
        assert done["best_val_mae"] == pytest.approx(mae[k], abs=1e-6)


def test_cli_help_names_the_engines() -> None:
    from typer.testing import CliRunner

    from htvs.cli import app

    result = CliRunner().invoke(app, ["train", "composition", "--help"])
    assert result.exit_code == 0 and "stacked" in result.output
    bad = CliRunner().invoke(app, ["train", "composition", "--out", "/tmp/x", "--engine", "fast"])
    assert bad.exit_code != 0 and "fast" in bad.output
