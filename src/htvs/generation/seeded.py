"""Template-seeded (partial) diffusion: start the reverse loop from a noised template, not from noise.

For a composition, the template baseline (:func:`htvs.generation.baselines.template_structures`:
the training structure of the same stoichiometry pattern with the closest electronegativities,
species swapped, cell rescaled to the estimated volume) is noised forward with the model's own
schedule up to the intermediate step ``t0 = round(t_start * T)``:

* lattice (Å): the DDPM forward ``L_t0 = sqrt(abar_t0) L_0 + sqrt(1 - abar_t0) eps``;
* fractional coordinates: the wrapped normal ``F_t0 = (F_0 + sigma_t0 eps) mod 1``;

and the reverse loop (:func:`htvs.generation.sampling.denoise_from`) runs from ``t0`` down to 0
with the composition as the condition. ``t_start = 1`` is nearly pure noise; small ``t_start``
keeps the template almost as it is. Sample ``j`` of ``K`` starts from the ``j``-th closest
template (as the baseline's sample ``j``); with fewer templates than ``K`` they are reused in
turn, each with fresh noise. A composition whose pattern has no template is sampled from pure
noise at step T (:func:`htvs.generation.sampling.sample_crystals`).

Every random number comes from seeded ``torch.Generator`` objects: the same inputs and seed give
the same structures.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from htvs.errors import InvalidInput, shown
from htvs.generation.diffusion import DiffusionSchedule

#: Starting points accepted for the partial loop: init "noise" (from step T) or "template".
INITS = ("noise", "template")
#: Offset between the generator seeds of the noise-started and the template-started chunks.
_SEEDED_STREAM = 500_000


def check_init(init: object) -> str:
    """``init`` if it is one of :data:`INITS`, else InvalidInput naming it."""
    if init not in INITS:
        raise InvalidInput(f"init must be one of {', '.join(INITS)}, got {shown(init)}")
    return str(init)


def check_t_start(t_start: object) -> float:
    """``t_start`` as a float in (0, 1] (fraction of the T diffusion steps), else InvalidInput naming it."""
    if isinstance(t_start, bool) or not isinstance(t_start, numbers.Real) or not (
        math.isfinite(float(t_start)) and 0.0 < float(t_start) <= 1.0
    ):
        raise InvalidInput(f"t_start must be a number in (0, 1] (a fraction of the diffusion steps), "
                           f"got {shown(t_start)}")
    return float(t_start)


def start_step(schedule: DiffusionSchedule, t_start: float) -> int:
    """The step ``t0 = round(t_start * T)``, at least 1."""
    return max(1, min(schedule.timesteps, round(check_t_start(t_start) * schedule.timesteps)))


@dataclass(frozen=True)
class StartingStructure:
    """A clean structure to seed the loop: atoms in site order, ``lattice_a`` ``[3, 3]`` (rows, Å),
    ``frac`` ``[n, 3]`` in [0, 1)."""

    atomic_numbers: tuple[int, ...]
    lattice_a: np.ndarray
    frac: np.ndarray

    @classmethod
    def of(cls, structure) -> StartingStructure:
        """From a pymatgen Structure."""
        return cls(tuple(int(site.specie.Z) for site in structure), np.asarray(structure.lattice.matrix, dtype=float),
                   np.remainder(np.asarray(structure.frac_coords, dtype=float), 1.0))


def forward_noise(schedule: DiffusionSchedule, lattice_a: torch.Tensor, frac: torch.Tensor, step: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_t, F_t)`` drawn from the forward process at ``step`` given clean ``lattice_a [B, 3, 3]`` (Å)
    and ``frac [N, 3]``; the lattice noise is drawn first, then the coordinate noise."""
    alpha_bar = float(schedule.alpha_bars[step])
    sigma = float(schedule.sigmas[step])
    lattice_t = alpha_bar**0.5 * lattice_a.float() + (1 - alpha_bar) ** 0.5 * torch.randn(
        lattice_a.shape, generator=generator)
    frac_t = torch.remainder(frac.float() + sigma * torch.randn(frac.shape, generator=generator), 1.0)
    return lattice_t, frac_t


@dataclass(frozen=True)
class TemplatePrior:
    """Template library and volume model that seed the loop (see :mod:`htvs.generation.baselines`)."""

    library: object
    volumes: object

    @classmethod
    def from_train(cls, train) -> TemplatePrior:
        from htvs.generation import baselines

        return cls(baselines.template_library(train), baselines.fit_volume_model(train))

    def starting_structures(self, compositions: Sequence[Sequence[int]], k: int, seed: int
                            ) -> list[list[StartingStructure | None]]:
        """``k`` starting structures per composition: the ``j``-th closest template for sample ``j``
        (reused in turn when there are fewer than ``k``); ``None`` where the pattern has none."""
        from htvs.generation.baselines import template_structures

        out = []
        for templates in template_structures(compositions, self.library, self.volumes, k, seed):
            seeds = [StartingStructure.of(s) for s in templates]
            out.append([seeds[j % len(seeds)] if seeds else None for j in range(k)])
        return out


@lru_cache(maxsize=1)
def bundled_prior() -> TemplatePrior:
    """The template prior of the bundled MP-20-like train part (built on first use, once per process)."""
    from htvs.generation.mp_data import load_mp20

    return TemplatePrior.from_train(load_mp20("train"))


def sample_jobs(
    model,
    schedule: DiffusionSchedule,
    jobs: Sequence[tuple[Sequence[int], StartingStructure | None]],
    t_start: float,
    seed: int,
    step_lr: float = 1e-5,
    max_atoms_per_call: int = 2_000,
    log: Callable[[str], None] | None = None,
) -> list:
    """One pymatgen Structure (None where the lattice degenerated) per job ``(atomic numbers, start)``.

    Jobs with a starting structure are noised to ``t0 = round(t_start * T)`` and denoised from
    there (their atoms in the starting structure's site order); jobs without one are sampled from
    pure noise at T. Batched in chunks of at most ``max_atoms_per_call`` atoms.
    """
    from htvs.generation.sampling import atom_chunks, denoise_from, sample_crystals, to_structures

    t0 = start_step(schedule, t_start)
    out: list = [None] * len(jobs)
    seeded = [i for i, (_, s) in enumerate(jobs) if s is not None]
    unseeded = [i for i, (_, s) in enumerate(jobs) if s is None]
    for group, stream, steps in ((seeded, _SEEDED_STREAM, t0), (unseeded, 0, schedule.timesteps)):
        sizes = [len(jobs[i][0]) for i in group]
        for c, chunk in enumerate(atom_chunks(sizes, max_atoms_per_call)):
            members = [group[p] for p in chunk]
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + stream + c)
            if log is not None:
                log(f"{'template' if stream else 'noise'}-started chunk {c + 1}: {len(members)} crystals, "
                    f"{sum(len(jobs[i][0]) for i in members)} atoms, {steps} steps")
            if stream:
                starts = [jobs[i][1] for i in members]
                numbers = torch.tensor([z for s in starts for z in s.atomic_numbers], dtype=torch.long)
                counts = torch.tensor([len(s.atomic_numbers) for s in starts], dtype=torch.long)
                lattice = torch.from_numpy(np.stack([s.lattice_a for s in starts])).float()
                frac = torch.from_numpy(np.concatenate([s.frac for s in starts])).float()
                lattice_t, frac_t = forward_noise(schedule, lattice, frac, t0, generator)
                result = denoise_from(model, schedule, numbers, counts, lattice_t, frac_t, t0, generator,
                                      step_lr=step_lr)
            else:
                numbers = torch.tensor([int(z) for i in members for z in jobs[i][0]], dtype=torch.long)
                counts = torch.tensor([len(jobs[i][0]) for i in members], dtype=torch.long)
                result = sample_crystals(model, schedule, numbers, counts, generator, step_lr=step_lr)
            for i, structure in zip(members, to_structures(result, numbers), strict=True):
                out[i] = structure
    return out


def sample_seeded(
    model,
    schedule: DiffusionSchedule,
    compositions: Sequence[Sequence[int]],
    k: int,
    seed: int,
    t_start: float,
    prior: TemplatePrior,
    step_lr: float = 1e-5,
    max_atoms_per_call: int = 2_000,
    log: Callable[[str], None] | None = None,
) -> list[list]:
    """``k`` template-seeded samples per composition (atomic numbers of the cell), in composition order.

    Template ranking uses ``seed`` exactly as the template baseline does, so sample ``j`` starts
    from the baseline's ``j``-th structure.
    """
    check_t_start(t_start)
    starts = prior.starting_structures(compositions, k, seed)
    jobs = [(list(map(int, numbers)), starts[i][j]) for i, numbers in enumerate(compositions) for j in range(k)]
    structures = sample_jobs(model, schedule, jobs, t_start, seed, step_lr, max_atoms_per_call, log)
    return [structures[i * k : (i + 1) * k] for i in range(len(compositions))]
