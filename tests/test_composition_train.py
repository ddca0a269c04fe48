"""Roost ensemble training: determinism, kill-and-resume, metrics, bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from htvs.composition.datasets import TARGETS, DataSplit, load_split
from htvs.composition.model import RoostConfig
from htvs.composition.train import TrainConfig, ensemble_metrics, train_ensemble, train_one, Featurized
from htvs.errors import InvalidInput

TINY = RoostConfig(
    elem_fea_len=8, n_graph=1, elem_heads=1, elem_gate=(8,), elem_msg=(8,), cry_heads=1,
    cry_gate=(8,), cry_msg=(8,), trunk_hidden=(8,), out_hidden=(8,),
)  # fmt: skip


@pytest.fixture(scope="module")
def small_split() -> DataSplit:
    full = load_split("gap-expt")
    return DataSplit("gap-expt", full.train.iloc[:160], full.val.iloc[:40], full.test.iloc[:40])


def config(**kwargs) -> TrainConfig:
    base = {"target": "gap-expt", "roost": TINY, "n_models": 2, "max_epochs": 3, "batch_size": 32, "threads": 1}
    base.update(kwargs)
    return TrainConfig(**base)


def test_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_split("ef", seed=0), load_split("ef", seed=0)
    assert a.test["formula"].tolist() == b.test["formula"].tolist()
    train, test = set(a.train["formula"]), set(a.test["formula"])
    assert not train & test and not train & set(a.val["formula"])
    assert len(a.test) == pytest.approx(0.1 * (len(a.train) + len(a.val) + len(a.test)), abs=1)
    assert (load_split("gap-expt").train["target"] > 0).all()  # non-metals only
    assert set(TARGETS) == {"ef", "ef-bartel", "gap-mp", "gap-expt", "gap-expt-all"}
    folds = [load_split("gap-expt-all", cv_fold=k) for k in range(5)]
    tests = [set(f.test["formula"]) for f in folds]
    assert sum(len(t) for t in tests) == len(set().union(*tests))  # folds are disjoint
    assert any((f.test["target"] == 0).any() for f in folds)  # metals included
    with pytest.raises(InvalidInput, match="cv_fold"):
        load_split("gap-expt-all")


def test_ensemble_trains_and_reports_metrics(tmp_path: Path, small_split: DataSplit) -> None:
    metrics = train_ensemble(tmp_path, config(), small_split, log=lambda s: None)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert metrics["test"]["n"] == 40
    assert len(metrics["members"]) == 2
    for k in range(2):
        assert (tmp_path / f"model_{k}" / "best.pt").exists()
    # a second call resumes: nothing retrains, same metrics
    lines: list[str] = []
    again = train_ensemble(tmp_path, config(), small_split, log=lines.append)
    assert again["test"] == metrics["test"]
    assert not any("epoch" in line for line in lines)


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, small_split: DataSplit) -> None:
    import torch

    train, val = Featurized.from_frame(small_split.train), Featurized.from_frame(small_split.val)
    train_one(tmp_path / "straight", 0, config(), train, val, log=lambda s: None)

    class Killed(Exception):
        pass

    def die_after_first_epoch(line: str) -> None:
        if "epoch 1/" in line:
            raise Killed

    with pytest.raises(Killed):
        train_one(tmp_path / "killed", 0, config(), train, val, log=die_after_first_epoch)
    assert not (tmp_path / "killed" / "model_0" / "best.pt").exists()
    resumed = train_one(tmp_path / "killed", 0, config(), train, val, log=lambda s: None)
    straight = json.loads((tmp_path / "straight" / "model_0" / "done.json").read_text())
    assert resumed["epochs"] == straight["epochs"] == 3
    a = torch.load(tmp_path / "straight" / "model_0" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model_0" / "best.pt", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_changed_settings_in_an_existing_run_are_refused(tmp_path: Path, small_split: DataSplit) -> None:
    train_ensemble(tmp_path, config(n_models=1, max_epochs=1), small_split, log=lambda s: None)
    with pytest.raises(InvalidInput, match="different configuration"):
        train_ensemble(tmp_path, config(n_models=1, max_epochs=2), small_split, log=lambda s: None)


def test_missing_pretraining_run_is_named(tmp_path: Path, small_split: DataSplit) -> None:
    with pytest.raises(InvalidInput, match="nowhere"):
        train_ensemble(tmp_path, config(init_from=str(tmp_path / "nowhere")), small_split, log=lambda s: None)


@pytest.mark.parametrize(("kwargs", "name"), [({"n_models": 0}, "n_models"), ({"learning_rate": 2.0}, "learning_rate")])
def test_bad_settings(kwargs: dict, name: str) -> None:
    with pytest.raises(InvalidInput, match=name):
        config(**kwargs)
    with pytest.raises(InvalidInput, match="unknown target 'eff'"):
        load_split("eff")


def test_calibration_fractions() -> None:
    truth = np.zeros(1000)
    rng = np.random.default_rng(0)
    members = rng.normal(0.0, 1.0, size=(50, 1000)) + rng.normal(0.0, 1.0, size=1000)
    metrics = ensemble_metrics(members, truth)
    # the ensemble mean's error is ~N(0, 1) while the spread is ~1: about 68 % / 95 %
    assert 0.6 < metrics["within_1_sigma"] < 0.76
    assert 0.9 < metrics["within_2_sigma"] < 0.99


def test_device_setting_is_checked(tmp_path: Path, small_split: DataSplit, monkeypatch) -> None:
    import torch

    from htvs.composition.train import load_member, resolve_device

    with pytest.raises(InvalidInput, match="device must be one of cpu, cuda, got 'tpu'"):
        config(device="tpu")
    assert config().device == "cpu" and config(device="cuda").device == "cuda"  # no GPU needed to describe one
    older = {k: v for k, v in config().to_dict().items() if k != "device"}  # a run from before the setting
    assert TrainConfig.from_dict(older).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInput, match="device 'cuda' requested"):
        resolve_device("cuda")
    with pytest.raises(InvalidInput, match="device 'cuda' requested"):
        train_ensemble(tmp_path / "run", config(device="cuda"), small_split, log=lambda s: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    train_ensemble(tmp_path / "cpu", config(n_models=1, max_epochs=1), small_split, log=lambda s: None)
    with pytest.raises(InvalidInput, match="'gpu'"):
        load_member(tmp_path / "cpu", 0, TINY, device="gpu")


def test_deadline_keeps_the_best_completed_epochs(tmp_path: Path, small_split: DataSplit, monkeypatch) -> None:
    import time
    import types

    import torch

    import htvs.composition.train as train_module

    clock = {"now": 0.0}
    fake_time = types.SimpleNamespace(time=lambda: clock["now"], perf_counter=time.perf_counter)
    monkeypatch.setattr(train_module, "time", fake_time)

    def pass_deadline_after_first_epoch(line: str) -> None:
        if "epoch 1/" in line:
            clock["now"] = 100.0

    train, val = Featurized.from_frame(small_split.train), Featurized.from_frame(small_split.val)
    done = train_one(tmp_path, 0, config(), train, val, log=pass_deadline_after_first_epoch, deadline=10.0)
    assert done is not None and done["epochs"] == 1 and done["stop_reason"] == "deadline"
    assert done["device"] == "cpu" and json.loads((tmp_path / "model_0" / "done.json").read_text()) == done
    best = torch.load(tmp_path / "model_0" / "best.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in best.values())
    # past the deadline before the first epoch ends: nothing is marked done
    assert train_one(tmp_path, 1, config(), train, val, log=lambda s: None, deadline=10.0) is None
    assert not (tmp_path / "model_1" / "done.json").exists()
    # the ensemble scores the members finished in time and starts no more
    metrics = train_ensemble(tmp_path, config(), small_split, log=lambda s: None, deadline=10.0)
    assert metrics["members_trained"] == 1 and metrics["members_planned"] == 2
    # without a deadline, a finished run reports why each member stopped
    clock["now"] = 0.0
    full = train_one(tmp_path / "full", 0, config(), train, val, log=lambda s: None)
    assert full is not None and full["stop_reason"] == "max_epochs" and full["epochs"] == 3


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda_and_saves_cpu_weights(tmp_path: Path, small_split: DataSplit) -> None:
    import torch

    from htvs.composition.train import evaluate_run

    gpu = config(n_models=1, max_epochs=1, device="cuda")
    metrics = train_ensemble(tmp_path, gpu, small_split, log=lambda s: None)
    best = torch.load(tmp_path / "model_0" / "best.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in best.values())
    on_cpu = evaluate_run(tmp_path, small_split, device="cpu")
    assert on_cpu["test"]["ensemble_mae"] == pytest.approx(metrics["test"]["ensemble_mae"], abs=1e-5)
