"""Template-seeded (partial) diffusion: the loop starts at t0, t0 -> 0 keeps the template, the
noise fallback, determinism and the errors of its settings.

A tiny randomly initialised denoiser stands in for the shipped one: only shapes, bookkeeping and
the size of the last step are checked, never a match rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from htvs.errors import InvalidInput
from htvs.generation.data import crystals_from_structures
from htvs.generation.diffusion import DiffusionSchedule
from htvs.generation.model import CSPDenoiser, DenoiserConfig
from htvs.generation.sampling import denoise_from, sample_crystals
from htvs.generation.seeded import (
    StartingStructure,
    TemplatePrior,
    check_init,
    check_t_start,
    forward_noise,
    sample_jobs,
    sample_seeded,
    start_step,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("one_torch_thread")]

TINY = DenoiserConfig(hidden=16, layers=1, n_frequencies=3, time_dim=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CSPDenoiser(TINY).eval()


def _perovskite(a: str, b: str, x: str, edge_a: float = 3.9) -> Structure:
    return Structure(Lattice.cubic(edge_a), [a, b, x, x, x],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def prior():
    train = crystals_from_structures([_perovskite("Sr", "Ti", "O"), _perovskite("Ba", "Zr", "O", 4.2)])
    return TemplatePrior.from_train(train)


def test_denoise_from_runs_t0_steps_and_returns_valid_shapes(model):
    schedule = DiffusionSchedule(timesteps=20)
    numbers = torch.tensor([38, 22, 8, 8, 8, 3, 9])
    counts = torch.tensor([5, 2])
    generator = torch.Generator().manual_seed(0)
    lattice = torch.stack([torch.eye(3) * 3.9, torch.eye(3) * 4.0])
    frac = torch.rand(7, 3, generator=generator)
    done: list[int] = []
    result = denoise_from(model, schedule, numbers, counts, lattice, frac, 6, generator, progress=done.append)
    assert done == [1, 2, 3, 4, 5, 6]
    assert result.lattice.shape == (2, 3, 3) and result.frac.shape == (7, 3)
    assert torch.isfinite(result.lattice).all()
    assert bool(((result.frac >= 0) & (result.frac < 1)).all())
    with pytest.raises(InvalidInput, match="start_step must be between 1 and 20, got 21"):
        denoise_from(model, schedule, numbers, counts, lattice, frac, 21, generator)


def test_sample_crystals_is_denoise_from_pure_noise_at_t(model):
    schedule = DiffusionSchedule(timesteps=8)
    numbers, counts = torch.tensor([3, 8, 8]), torch.tensor([3])
    a = sample_crystals(model, schedule, numbers, counts, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    lattice, frac = torch.randn(1, 3, 3, generator=g), torch.rand(3, 3, generator=g)
    b = denoise_from(model, schedule, numbers, counts, lattice, frac, 8, g)
    assert torch.equal(a.lattice, b.lattice) and torch.equal(a.frac, b.frac)


def test_forward_noise_uses_the_schedule_at_t0():
    schedule = DiffusionSchedule(timesteps=1000)
    lattice = torch.eye(3).expand(4000, 3, 3) * 5.0
    frac = torch.full((4000, 3), 0.5)
    lattice_t, frac_t = forward_noise(schedule, lattice, frac, 400, torch.Generator().manual_seed(0))
    alpha_bar, sigma = float(schedule.alpha_bars[400]), float(schedule.sigmas[400])
    assert float(lattice_t[:, 0, 0].mean()) == pytest.approx(5.0 * alpha_bar**0.5, abs=0.05)
    assert float(lattice_t[:, 0, 1].std()) == pytest.approx((1 - alpha_bar) ** 0.5, rel=0.05)
    assert float(frac_t.std()) == pytest.approx(sigma, rel=0.05)  # sigma(400) << 0.5: no wrapping


def test_t0_near_zero_returns_the_template_up_to_the_last_step(model, prior):
    schedule = DiffusionSchedule(timesteps=1000)
    assert start_step(schedule, 1e-4) == 1
    template = prior.starting_structures([[38, 22, 8, 8, 8]], 1, seed=0)[0][0]
    [[structure]] = sample_seeded(model, schedule, [[38, 22, 8, 8, 8]], 1, 0, 1e-4, prior)
    assert [site.specie.Z for site in structure] == list(template.atomic_numbers)
    assert np.allclose(structure.lattice.matrix, template.lattice_a, atol=0.1)  # Å
    delta = np.remainder(structure.frac_coords - template.frac + 0.5, 1.0) - 0.5
    assert np.abs(delta).max() < 0.05


def test_template_is_swapped_and_rescaled_and_reused_in_turn(prior):
    [starts] = prior.starting_structures([[20, 20, 50, 50, 8, 8, 8, 8, 8, 8]], 1, seed=0)
    assert starts == [None]  # pattern (2, 2, 6) has no template
    [starts] = prior.starting_structures([[56, 72, 8, 8, 8]], 3, seed=0)
    assert len(starts) == 3 and starts[0] is starts[2] and starts[0] is not starts[1]
    assert sorted(starts[0].atomic_numbers) == [8, 8, 8, 56, 72]
    volume = abs(np.linalg.det(starts[0].lattice_a))
    assert volume == pytest.approx(prior.volumes.estimate([56, 72, 8, 8, 8]), rel=1e-6)


def test_composition_without_template_falls_back_to_noise_from_t(model, prior):
    schedule = DiffusionSchedule(timesteps=12)
    lines: list[str] = []
    cells = [[3, 9], [38, 22, 8, 8, 8]]
    out = sample_seeded(model, schedule, cells, 2, 0, 0.25, prior, log=lines.append)
    assert any(line.startswith("template-started") and line.endswith("3 steps") for line in lines)
    assert any(line.startswith("noise-started") and "2 crystals" in line and line.endswith("12 steps")
               for line in lines)
    for cell, samples in zip(cells, out, strict=True):
        assert len(samples) == 2
        for s in samples:
            assert sorted(site.specie.Z for site in s) == sorted(cell)


def test_seeded_sampling_is_deterministic(model, prior):
    schedule = DiffusionSchedule(timesteps=10)
    first = sample_seeded(model, schedule, [[38, 22, 8, 8, 8]], 2, 7, 0.5, prior)
    again = sample_seeded(model, schedule, [[38, 22, 8, 8, 8]], 2, 7, 0.5, prior)
    other = sample_seeded(model, schedule, [[38, 22, 8, 8, 8]], 2, 8, 0.5, prior)
    assert [s.lattice.matrix.tolist() for s in first[0]] == [s.lattice.matrix.tolist() for s in again[0]]
    assert first[0][0].lattice.matrix.tolist() != other[0][0].lattice.matrix.tolist()


def test_jobs_are_chunked_and_keep_their_order(model):
    schedule = DiffusionSchedule(timesteps=4)
    start = StartingStructure.of(_perovskite("Sr", "Ti", "O"))
    jobs = [([38, 22, 8, 8, 8], start), ([3, 9], None), ([38, 22, 8, 8, 8], start), ([3, 3, 8], None)]
    out = sample_jobs(model, schedule, jobs, 0.5, 0, max_atoms_per_call=5)
    assert [len(s) for s in out] == [5, 2, 5, 3]


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, math.nan, "0.3", True, None])
def test_t_start_out_of_range_is_refused_naming_the_value(value):
    with pytest.raises(InvalidInput, match=r"t_start must be a number in \(0, 1\]") as info:
        check_t_start(value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_init_must_be_noise_or_template():
    assert check_init("template") == "template"
    with pytest.raises(InvalidInput, match="init must be one of noise, template, got 'prior'"):
        check_init("prior")


# ------------------------------------------------------------------------------ evaluation and CLI


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from htvs.generation.mp_data import load_mp20
    from htvs.generation.train import TrainConfig, train_generator

    run = tmp_path_factory.mktemp("gen-seeded") / "run"
    config = TrainConfig(max_steps=2, batch_size=8, model=TINY, timesteps=10, data="mp20")
    train_generator(run, config, log=lambda line: None, crystals=load_mp20("train").subset(np.arange(16)))
    return run


def test_evaluate_run_scores_the_seeded_model_on_val(tiny_run):
    from htvs.generation.evaluate import evaluate_run

    lines: list[str] = []
    metrics = evaluate_run(tiny_run, n_structures=3, samples=(2, 1), li_structures=0, seed=1, init="template",
                           t_start=0.5, split="val", log=lines.append)
    assert metrics["split"] == "val" and metrics["task"].startswith("CSP on mp20 val")
    assert metrics["init"] == {"kind": "template", "t_start": 0.5, "start_step": 5}
    assert set(metrics["per_k"]["2"]) == {"model", "random", "template"}
    assert metrics["per_k"]["1"]["model"]["n"] == 3
    assert any("template-started" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--init", "template", "--t-start", "0"], "t_start must be a number in (0, 1]"),
        (["--init", "template", "--t-start", "1.5"], "got 1.5"),
        (["--init", "prior"], "got 'prior'"),
        (["--split", "train"], "got 'train'"),
    ],
)
def test_cli_seeded_options_out_of_range_exit_2(tiny_run, args, message):
    from typer.testing import CliRunner

    from htvs.cli import EXIT_BAD_INPUT, app

    result = CliRunner().invoke(app, ["train", "generator-evaluate", str(tiny_run), "--n-structures", "2",
                                      "--samples", "1", *args])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in " ".join(result.stderr.split())
