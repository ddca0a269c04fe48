"""Stage 5 (htvs.generation): wrapped normal, denoiser symmetries, resumable training, sampling, CLI.

The generator is trained on perov_5 val (train split not available here) and ships in
``htvs/models/generator``; no sampled number is asserted, only validity and composition.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Composition, Structure
from typer.testing import CliRunner

from htvs.cli import EXIT_BAD_INPUT, app
from htvs.generation.data import load_perov5
from htvs.generation.diffusion import wrapped_normal_log_density, wrapped_normal_score
from htvs.generation.model import CSPDenoiser, DenoiserConfig, fully_connected_edges
from htvs.errors import RowError
from htvs.generation.stage import GenerationConfig, generate_structures, load_generator
from htvs.generation.train import TrainConfig, train_generator

pytestmark = pytest.mark.timeout(120)

TINY = DenoiserConfig(hidden=16, layers=2, n_frequencies=3, time_dim=8)


@pytest.fixture(scope="module")
def shipped():
    return load_generator()


def test_bundled_perov5_splits():
    val, test = load_perov5("val"), load_perov5("test")
    assert (len(val), len(test)) == (3787, 3785)  # the CDVAE perov_5 split sizes
    assert set(val.num_atoms.tolist()) == {5}
    assert np.all((val.frac >= 0) & (val.frac < 1))


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.5])
def test_wrapped_normal_score_is_periodic_and_the_log_density_gradient(sigma):
    x = torch.linspace(-0.9, 1.9, 57, dtype=torch.float64)
    mean = torch.tensor(0.3, dtype=torch.float64)
    score = wrapped_normal_score(x, mean, sigma)
    tol = 1e-8 / sigma**2  # rounding of x + 1 relative to a score of order 1/sigma
    assert torch.allclose(score, wrapped_normal_score(x + 1.0, mean, sigma), atol=tol)
    assert torch.allclose(score, wrapped_normal_score(x, mean + 2.0, sigma), atol=tol)
    h = 1e-6
    fd = (wrapped_normal_log_density(x + h, mean, sigma) - wrapped_normal_log_density(x - h, mean, sigma)) / (2 * h)
    assert torch.allclose(score, fd, rtol=1e-5, atol=1e-4 / sigma)
    grid = torch.arange(20000, dtype=torch.float64) / 20000  # the density integrates to 1 over a period
    assert float(wrapped_normal_log_density(grid, mean, sigma).exp().mean()) == pytest.approx(1.0, rel=1e-6)


def _random_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.tensor([5, 3])
    numbers = torch.randint(1, 90, (8,), generator=g)
    frac = torch.rand(8, 3, generator=g)
    lattice = 4 * torch.eye(3) + 0.5 * torch.randn(2, 3, 3, generator=g)
    t = torch.tensor([10, 700])
    return numbers, frac, lattice, num_atoms, t


def test_denoiser_symmetries():
    torch.manual_seed(0)
    model = CSPDenoiser(DenoiserConfig(hidden=32, layers=2)).double().eval()
    numbers, frac, lattice, num_atoms, t = _random_batch()
    frac, lattice = frac.double(), lattice.double()
    with torch.no_grad():
        lat_out, score = model(numbers, frac, lattice, num_atoms, t)
        # permutation of the atoms inside each crystal
        perm = torch.tensor([3, 0, 4, 1, 2, 7, 5, 6])
        lat_p, score_p = model(numbers[perm], frac[perm], lattice, num_atoms, t)
        assert torch.allclose(lat_p, lat_out, atol=1e-10)
        assert torch.allclose(score_p, score[perm], atol=1e-10)
        # a translation of all fractional coordinates (wrapped into the cell)
        shifted = torch.remainder(frac + torch.tensor([0.37, -0.81, 0.52], dtype=torch.float64), 1.0)
        lat_s, score_s = model(numbers, shifted, lattice, num_atoms, t)
        assert torch.allclose(lat_s, lat_out, atol=1e-9)
        assert torch.allclose(score_s, score, atol=1e-9)
        # a rotation of the cell: L -> L Q^T; coordinate scores invariant, lattice noise equivariant
        q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
        lat_r, score_r = model(numbers, frac, lattice @ q.T, num_atoms, t)
        assert torch.allclose(score_r, score, atol=1e-9)
        assert torch.allclose(lat_r, lat_out @ q.T, atol=1e-9)


def test_fully_connected_edges_stay_inside_each_crystal():
    src, dst = fully_connected_edges(torch.tensor([2, 3]))
    assert len(src) == 4 + 9
    assert set(zip(src.tolist(), dst.tolist())) >= {(0, 1), (1, 0), (2, 4), (4, 3)}
    assert not any((s < 2) != (d < 2) for s, d in zip(src.tolist(), dst.tolist()))


def test_tiny_training_resumes_bit_identically(tmp_path):
    crystals = load_perov5("val").subset(np.arange(24))
    config = TrainConfig(max_steps=6, batch_size=8, checkpoint_every=2, log_every=2, model=TINY, timesteps=50)
    quiet = lambda line: None  # noqa: E731
    train_generator(tmp_path / "straight", config, log=quiet, crystals=crystals)
    train_generator(tmp_path / "resumed", config, log=quiet, crystals=crystals, stop_after=3)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    train_generator(tmp_path / "resumed", config, log=quiet, crystals=crystals)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def _check(rows, formula: str, n: int) -> None:
    assert [r.sample for r in rows] == list(range(n))
    for row in rows:
        structure = Structure.from_str(row.cif, fmt="cif")
        assert np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()
        assert structure.volume > 0
        assert structure.composition == Composition(formula)


def test_shipped_generator_makes_valid_structures_for_a_perov5_test_formula(shipped):
    test = load_perov5("test")
    formula = test.structure(0).composition.formula.replace(" ", "")
    rows = generate_structures([formula], shipped, GenerationConfig(n_samples=2, seed=3))
    assert not any(isinstance(r, RowError) for r in rows)
    _check(rows, formula, 2)
    again = generate_structures([formula], shipped, GenerationConfig(n_samples=2, seed=3))
    assert [r.cif for r in again] == [r.cif for r in rows]  # fixed seed, same structures
    card = shipped.card
    assert card["split"] and card["data"] and card["steps"] > 0 and card["sha256"]


def test_stage_reports_bad_formulas_and_keeps_the_good_ones(shipped):
    from pymatgen.core import Element

    unknown = next(Element.from_Z(z).symbol for z in range(1, 95) if z not in shipped.elements)
    odd = f"Li3{unknown}S4"
    rows = generate_structures(["SrTiO3", odd, "Xq2", "Sr5Ti5O15"], shipped, GenerationConfig(max_atoms=20))
    assert not isinstance(rows[0], RowError)
    assert [(r.index, r.value, r.kind) for r in rows[1:]] == [
        (1, odd, "InvalidInput"), (2, "Xq2", "InvalidInput"), (3, "Sr5Ti5O15", "InvalidInput")]
    assert f"element {unknown}" in rows[1].message and "embedding" in rows[1].message
    assert "Xq2" in rows[2].message
    assert "max_atoms=20" in rows[3].message and "25 atoms" in rows[3].message
    with pytest.raises(ValueError, match="n_samples"):
        GenerationConfig(n_samples=0)


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_cli_generate_json_and_cif_files(runner, tmp_path):
    result = runner.invoke(app, ["generate", "SrTiO3", "--n-samples", "2", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["formula"], r["sample"]) for r in rows] == [("SrTiO3", 0), ("SrTiO3", 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SrTiO3_0.cif", "SrTiO3_1.cif"]
    assert Structure.from_file(tmp_path / "SrTiO3_1.cif").composition == Composition("SrTiO3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "Xq2"], "Xq2"),
        (["generate", "Li3RnS4"], "element Rn of 'Li3RnS4' has no trained embedding"),
        (["generate", "Sr4Ti4O12", "--max-atoms", "10"], "max_atoms=10"),
        (["generate", "SrTiO3", "--n-samples", "0"], "n_samples"),
        (["generate", "SrTiO3", "--n-samples", "101"], "between 1 and 100"),
    ],
)
def test_cli_generate_bad_input_exits_2_without_traceback(runner, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_training_device_is_checked_before_training(tmp_path):
    from typer.testing import CliRunner

    from htvs.cli import app

    result = CliRunner().invoke(app, ["train", "generator", "--out", str(tmp_path / "run"), "--device", "auto"])
    assert result.exit_code == 2 and "--device auto is for serving" in result.output
    result = CliRunner().invoke(app, ["train", "generator", "--out", str(tmp_path / "run"), "--device", "gpu0"])
    assert result.exit_code == 2 and "'gpu0' is not one of" in result.output
    assert not (tmp_path / "run").exists()
