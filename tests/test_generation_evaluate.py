"""Stage-5 CSP evaluation: best-of-K matching, the random and template baselines, the Li subset, CLI.

A tiny generator (16 wide, 1 layer, 10 diffusion steps, 2 training steps) stands in for a real run:
only the bookkeeping is checked, never the model's match rate.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app
from htvs.generation import evaluate
from htvs.generation.baselines import (
    fit_volume_model,
    random_structures,
    ranked_elements,
    template_library,
    template_structures,
)
from htvs.generation.data import crystals_from_structures
from htvs.generation.evaluate import best_of_k, evaluate_run, evaluation_subsets, rms_matrix
from htvs.generation.model import DenoiserConfig
from htvs.generation.mp_data import li_ternary_quaternary, load_mp20
from htvs.generation.train import TrainConfig, train_generator

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY = DenoiserConfig(hidden=16, layers=1, n_frequencies=3, time_dim=8)


@pytest.fixture(scope="module")
def mp_train():
    return load_mp20("train")


@pytest.fixture(scope="module")
def mp_test():
    return load_mp20("test")


@pytest.fixture(scope="module")
def volumes(mp_train):
    return fit_volume_model(mp_train)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mp_train):
    run = tmp_path_factory.mktemp("gen") / "run"
    config = TrainConfig(max_steps=2, batch_size=8, model=TINY, timesteps=10, data="mp20")
    train_generator(run, config, log=lambda line: None, crystals=mp_train.subset(np.arange(16)))
    return run


def _cell(crystals, index: int) -> list[int]:
    start = int(crystals.offsets[index])
    return crystals.atomic_numbers[start : start + int(crystals.num_atoms[index])].tolist()


def _perovskite(a: str, b: str, x: str, edge_a: float = 3.9) -> Structure:
    return Structure(Lattice.cubic(edge_a), [a, b, x, x, x],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


# ------------------------------------------------------------------------------ best of K


def test_best_of_k_takes_any_match_and_the_best_rmse():
    nan = math.nan
    rms = np.array([[nan, 0.10, 0.05], [nan, nan, nan], [0.2, nan, nan]])
    valid = np.array([[False, True, True], [True, True, False], [True, True, True]])
    one = best_of_k(rms, valid, 1)
    assert one == {"n": 3, "valid_fraction": pytest.approx(2 / 3), "match_rate": pytest.approx(1 / 3),
                   "rmse": pytest.approx(0.2), "matched": 1}
    three = best_of_k(rms, valid, 3)
    assert three["matched"] == 2 and three["match_rate"] == pytest.approx(2 / 3)
    assert three["rmse"] == pytest.approx((0.05 + 0.2) / 2)  # the best sample of each matched structure
    assert three["valid_fraction"] == pytest.approx(7 / 9)
    assert best_of_k(rms, valid, 3, rows=[1])["rmse"] is None  # nothing matched: no RMSE


def test_ground_truth_among_the_samples_matches_with_zero_rmse(mp_test, volumes):
    index = next(i for i in range(len(mp_test)) if mp_test.num_atoms[i] >= 8 and len(set(_cell(mp_test, i))) >= 3)
    truth = mp_test.structure(index)
    decoys = random_structures([_cell(mp_test, index)], volumes, 2, seed=1)[0]
    rms, valid = rms_matrix([[None, decoys[0], truth.copy(), decoys[1]]], [truth], 4)
    assert valid.tolist() == [[False, True, True, True]]
    assert rms[0, 2] == pytest.approx(0.0, abs=1e-4)  # float32 coordinates: not exactly 0
    metrics = best_of_k(rms, valid, 4)
    assert metrics["matched"] == 1 and metrics["rmse"] == pytest.approx(0.0, abs=1e-4)
    assert best_of_k(rms, valid, 1)["matched"] == 0  # the first sample alone (None) is a miss


# ------------------------------------------------------------------------------ baselines


def test_template_swaps_species_by_count_and_electronegativity_and_rescales(volumes):
    library = template_library(crystals_from_structures([_perovskite("Sr", "Ti", "O")]))
    target = Structure(Lattice.cubic(4.0), ["S", "Zr", "S", "Ba", "S"], np.random.default_rng(0).random((5, 3)))
    numbers = [site.specie.Z for site in target]
    (sample,) = template_structures([numbers], library, volumes, 3, seed=0)[0]  # one template only
    assert sample.composition == Composition("BaZrS3")
    # Sr (X 0.95) -> Ba (0.89) and Ti (1.54) -> Zr (1.33): equal counts paired by electronegativity rank
    assert sample[0].specie.symbol == "Ba" and sample[1].specie.symbol == "Zr"
    assert sample.volume == pytest.approx(volumes.estimate(numbers), rel=1e-9)
    assert sample.lattice.angles == pytest.approx((90, 90, 90))  # isotropic rescaling


def test_template_keeps_the_test_composition_and_volume(mp_train, mp_test, volumes):
    library = template_library(mp_train)
    cells = [_cell(mp_test, i) for i in range(12)]
    drawn = template_structures(cells, library, volumes, 4, seed=0)
    again = template_structures(cells, library, volumes, 4, seed=0)
    for numbers, samples, repeat in zip(cells, drawn, again):
        pattern = ranked_elements(numbers)[1]
        assert len(samples) == min(4, len(library.by_pattern[pattern][0]))  # up to K distinct templates
        for sample, same in zip(samples, repeat):
            assert sorted(site.specie.Z for site in sample) == sorted(numbers)
            assert sample.volume == pytest.approx(volumes.estimate(numbers), rel=1e-9)
            assert sample == same  # deterministic by seed


def test_pattern_without_template_is_a_counted_miss(volumes):
    library = template_library(crystals_from_structures([_perovskite("Sr", "Ti", "O")]))
    cells = [[56, 40, 16, 16, 16], [3, 9]]  # BaZrS3 has the (1, 1, 3) pattern; LiF's (1, 1) has none
    drawn = template_structures(cells, library, volumes, 2, seed=0)
    assert [len(s) for s in drawn] == [1, 0]
    truth = [_perovskite("Ba", "Zr", "S", 4.2), Structure(Lattice.cubic(4.0), ["Li", "F"], [[0, 0, 0], [0.5] * 3])]
    metrics = best_of_k(*rms_matrix(drawn, truth, 2), 2)
    assert metrics["n"] == 2 and metrics["matched"] == 1 and metrics["match_rate"] == 0.5
    assert metrics["valid_fraction"] == 0.25  # the missing samples count as invalid


def test_random_baseline_volume_matches_the_estimate(mp_test, volumes):
    cells = [_cell(mp_test, i) for i in range(10)]
    drawn = random_structures(cells, volumes, 3, seed=4)
    for numbers, samples in zip(cells, drawn):
        assert len(samples) == 3
        for sample in samples:
            assert sorted(site.specie.Z for site in sample) == sorted(numbers)
            assert sample.volume == pytest.approx(volumes.estimate(numbers), rel=1e-9)
            assert all(60 <= angle <= 120 for angle in sample.lattice.angles)
    again = random_structures(cells, volumes, 3, seed=4)
    assert np.allclose(again[3][1].lattice.matrix, drawn[3][1].lattice.matrix)  # fixed seed, same cells


def test_volume_fit_is_positive_and_falls_back_for_unseen_elements(volumes):
    assert all(v >= 0 for v in volumes.volumes_a3.values())
    assert 10 < volumes.volumes_a3[3] < 25  # Li, Å^3/atom
    assert 0 < volumes.rms_relative_error < 0.3
    assert volumes.estimate([118, 118]) == pytest.approx(2 * volumes.fallback_a3)  # Og: never seen


def test_stoichiometry_pattern():
    assert ranked_elements([8, 22, 8, 38, 8]) == ((38, 22, 8), (1, 1, 3))


# ------------------------------------------------------------------------------ the evaluation


def test_li_subsets_are_li_ternary_or_quaternary(mp_test):
    li_all = set(li_ternary_quaternary(mp_test).tolist())
    main, li = evaluation_subsets(mp_test, 50, 7, seed=3)
    assert len(main) == 50 and len(li) == 7 and set(li.tolist()) <= li_all
    main0, li0 = evaluation_subsets(mp_test, 50, 0, seed=3)
    assert np.array_equal(main0, main) and set(li0.tolist()) == set(main.tolist()) & li_all


def test_evaluate_run_scores_model_and_baselines_on_the_same_structures(tiny_run, mp_train, monkeypatch):
    only_113 = [i for i in range(len(mp_train)) if ranked_elements(_cell(mp_train, i))[1] == (1, 1, 3)]
    train = mp_train.subset(np.asarray(only_113))
    real = evaluate.load_dataset
    monkeypatch.setattr(evaluate, "load_dataset", lambda name, split="test": (train, *real(name, split)[1:]))
    lines: list[str] = []
    metrics = evaluate_run(tiny_run, n_structures=5, samples=(2, 1), li_structures=3, seed=1, log=lines.append)
    assert metrics["samples"] == [1, 2] and metrics["dataset"] == "mp20"
    assert (metrics["test_structures"], metrics["li_structures"]) == (5, 3)
    assert set(metrics["per_k"]) == {"1", "2"}
    for part, n in ((metrics["per_k"], 5), (metrics["li_ternary_quaternary"]["per_k"], 3)):
        for k in ("1", "2"):
            assert set(part[k]) == {"model", "random", "template"}
            assert all(part[k][name]["n"] == n for name in part[k])
    _, test, _ = real("mp20")
    main, li = evaluation_subsets(test, 5, 3, 1)
    expected = sum(ranked_elements(_cell(test, int(i)))[1] != (1, 1, 3) for i in main)
    assert metrics["per_k"]["2"]["template"]["no_template"] == expected > 0
    assert metrics["sampling"]["structures"] == len(np.union1d(main, li)) * 2
    assert metrics["sampling"]["structures_per_s"] > 0
    assert metrics["published_diffcsp"]["per_k"]["20"] == {"match_rate": 0.7793, "rmse": 0.0492}
    assert json.loads((tiny_run / "metrics.json").read_text())["samples"] == [1, 2]
    assert any("sampling chunk 1/1" in line and "step 10/10" in line for line in lines)


def test_sampling_chunks_bound_the_atoms():
    from htvs.generation.sampling import atom_chunks

    chunks = atom_chunks([5, 5, 5, 20, 3, 30], 12)
    assert [list(c) for c in chunks] == [[0, 1], [2], [3], [4], [5]]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.slow
def test_cli_generator_evaluate_writes_metrics(runner, tiny_run):
    (tiny_run / "metrics.json").unlink(missing_ok=True)
    result = runner.invoke(app, ["train", "generator-evaluate", str(tiny_run), "--n-structures", "3",
                                 "--samples", "1", "--samples", "2", "--li-structures", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["samples"] == [1, 2] and metrics["subset_seed"] == 5
    assert metrics["li_ternary_quaternary"]["n"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "got 0"),
        (["--samples", "1", "--samples", "101"], "got 101"),
        (["--data", "mp21"], "'mp21'"),
        (["--n-structures", "0"], "got 0"),
        (["--li-structures", "-3"], "got -3"),
        (["--threads", "0"], "got 0"),
    ],
)
def test_cli_generator_evaluate_bad_options_exit_2(runner, tiny_run, args, message):
    result = runner.invoke(app, ["train", "generator-evaluate", str(tiny_run), *args])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_cli_generator_evaluate_missing_run_dir(runner, tmp_path):
    missing = tmp_path / "no-such-run"
    result = runner.invoke(app, ["train", "generator-evaluate", str(missing)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert str(missing) in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
