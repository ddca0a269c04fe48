"""Predictor-corrector sampling of lattices (Å) and fractional coordinates at fixed composition.

At each step t = T..1: a Langevin corrector moves the coordinates along the predicted score
(step ``step_lr * (sigma_t / sigma_1)^2``), then a predictor takes one reverse-diffusion step:
DDPM ancestral for the lattice, reverse variance-exploding SDE for the coordinates (wrapped to
[0, 1)). Two denoiser evaluations per step, as in DiffCSP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from htvs.errors import InvalidInput
from htvs.generation.diffusion import DiffusionSchedule
from htvs.generation.model import CSPDenoiser, fully_connected_edges


@dataclass(frozen=True)
class SampleResult:
    """Sampled crystals: ``lattice [B, 3, 3]`` (rows, Å) and ``frac [N, 3]`` in [0, 1)."""

    lattice: torch.Tensor
    frac: torch.Tensor
    num_atoms: torch.Tensor


@torch.no_grad()
def sample_crystals(
    model: CSPDenoiser,
    schedule: DiffusionSchedule,
    atomic_numbers: torch.Tensor,
    num_atoms: torch.Tensor,
    generator: torch.Generator,
    step_lr: float = 1e-5,
    progress: Callable[[int], None] | None = None,
) -> SampleResult:
    """Sample one structure per entry of ``num_atoms`` with the given atoms (flat, crystal order).

    Starts from pure noise at step T (lattice ~ N(0, 1) Å, coordinates uniform) and runs
    :func:`denoise_from`.

    Args:
        step_lr: Langevin corrector step scale (0 turns the corrector off).
        generator: source of every random number (fixed seed -> identical samples).
        progress: called with the number of steps done.
    """
    n_crystals, n_atoms = len(num_atoms), int(num_atoms.sum())
    lattice = torch.randn(n_crystals, 3, 3, generator=generator)
    frac = torch.rand(n_atoms, 3, generator=generator)
    return denoise_from(model, schedule, atomic_numbers, num_atoms, lattice, frac, schedule.timesteps, generator,
                        step_lr=step_lr, progress=progress)


@torch.no_grad()
def denoise_from(
    model: CSPDenoiser,
    schedule: DiffusionSchedule,
    atomic_numbers: torch.Tensor,
    num_atoms: torch.Tensor,
    lattice: torch.Tensor,
    frac: torch.Tensor,
    start_step: int,
    generator: torch.Generator,
    step_lr: float = 1e-5,
    progress: Callable[[int], None] | None = None,
) -> SampleResult:
    """Run the reverse loop from step ``start_step`` (1..T) down to 0.

    ``lattice [B, 3, 3]`` (rows, Å) and ``frac [N, 3]`` (in [0, 1)) are the state at
    ``start_step``: pure noise at T (:func:`sample_crystals`) or a forward-noised structure at an
    intermediate step (:mod:`htvs.generation.seeded`).

    Args:
        progress: called with the number of steps done (1..start_step).
    """
    if isinstance(start_step, bool) or not 1 <= int(start_step) <= schedule.timesteps:
        raise InvalidInput(f"start_step must be between 1 and {schedule.timesteps}, got {start_step!r}")
    model.eval()
    n_crystals = len(num_atoms)
    edges = fully_connected_edges(num_atoms)
    lattice, frac = lattice.float(), torch.remainder(frac.float(), 1.0)
    sigma_1 = float(schedule.sigmas[1])
    for step in range(int(start_step), 0, -1):
        t = torch.full((n_crystals,), step, dtype=torch.long)
        sigma = float(schedule.sigmas[step])
        score_scale = float(schedule.sigma_norms[step]) ** 0.5
        if step_lr > 0:
            _, score = model(atomic_numbers, frac, lattice, num_atoms, t, edges)
            size = step_lr * (sigma / sigma_1) ** 2
            noise = torch.randn(frac.shape, generator=generator)
            frac = torch.remainder(frac + size * score * score_scale + (2 * size) ** 0.5 * noise, 1.0)
        eps_lattice, score = model(atomic_numbers, frac, lattice, num_atoms, t, edges)
        beta, alpha_bar = float(schedule.betas[step]), float(schedule.alpha_bars[step])
        alpha_bar_prev = float(schedule.alpha_bars[step - 1])
        mean = (lattice - beta / (1 - alpha_bar) ** 0.5 * eps_lattice) / (1 - beta) ** 0.5
        if step > 1:
            var = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
            lattice = mean + var**0.5 * torch.randn(lattice.shape, generator=generator)
        else:
            lattice = mean
        sigma_prev = float(schedule.sigmas[step - 1])
        size = sigma**2 - sigma_prev**2
        std = (sigma_prev**2 * size / sigma**2) ** 0.5
        noise = torch.randn(frac.shape, generator=generator)
        frac = torch.remainder(frac + size * score * score_scale + std * noise, 1.0)
        if progress is not None:
            progress(int(start_step) - step + 1)
    return SampleResult(lattice, frac, num_atoms)


def atom_chunks(sizes: Sequence[int], max_atoms: int) -> list[range]:
    """Consecutive ranges of crystals (by their atom counts ``sizes``) with at most ``max_atoms``
    atoms each, one crystal at least: the crystals denoised together in one batched loop."""
    chunks, start, atoms = [], 0, 0
    for index, n in enumerate(sizes):
        if atoms and atoms + n > max_atoms:
            chunks.append(range(start, index))
            start, atoms = index, 0
        atoms += n
    if start < len(sizes):
        chunks.append(range(start, len(sizes)))
    return chunks


def to_structures(result: SampleResult, atomic_numbers: torch.Tensor) -> list:
    """pymatgen Structures of a :class:`SampleResult` (None where the lattice is not finite)."""
    from pymatgen.core import Lattice, Structure

    structures, start = [], 0
    for index, n in enumerate(result.num_atoms.tolist()):
        lat = result.lattice[index].double().numpy()
        coords = result.frac[start : start + n].double().numpy()
        species = [int(z) for z in atomic_numbers[start : start + n].tolist()]
        start += n
        try:
            ok = bool((abs(lat) < 1e6).all()) and abs(float(Lattice(lat).volume)) > 1e-8
            structures.append(Structure(Lattice(lat), species, coords) if ok else None)
        except Exception:  # noqa: BLE001 - a degenerate sample is reported as None, not raised
            structures.append(None)
    return structures
