"""Noise schedules and the wrapped normal distribution of DiffCSP-style joint diffusion.

* Lattice (Å): DDPM with a cosine beta schedule (Nichol & Dhariwal 2021),
  ``L_t = sqrt(abar_t) L_0 + sqrt(1 - abar_t) eps``.
* Fractional coordinates (dimensionless, on the torus [0, 1)^3): score matching with the wrapped
  normal ``F_t = w(F_0 + sigma_t eps)``, ``sigma_t`` exponential from ``sigma_begin`` to
  ``sigma_end``; the score target is divided by ``sqrt(E[score^2])`` so it has unit scale.

Index 0 of every schedule tensor is "no noise"; steps run 1..T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

#: Periodic images summed in the wrapped normal (enough for sigma <= 1 to machine precision).
N_IMAGES = 5


def _periodic_images(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float):
    """(z, s, sigma_t): the offsets ``x - mean`` over the nearest 2 N_IMAGES + 1 periodic images
    (last axis) and sigma shaped to broadcast against them."""
    sigma_t = torch.as_tensor(sigma, dtype=x.dtype)
    images = torch.arange(-N_IMAGES, N_IMAGES + 1, dtype=x.dtype)
    d = torch.remainder(x - mean + 0.5, 1.0) - 0.5
    z = d.unsqueeze(-1) + images
    s = sigma_t.unsqueeze(-1) if sigma_t.dim() else sigma_t
    return z, s, sigma_t


def wrapped_normal_log_density(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Elementwise log density of the wrapped normal on [0, 1) with period 1."""
    z, s, sigma_t = _periodic_images(x, mean, sigma)
    return torch.logsumexp(-(z**2) / (2 * s**2), dim=-1) - torch.log(sigma_t * math.sqrt(2 * math.pi))


def wrapped_normal_score(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """d/dx log of the wrapped normal density (periodic in ``x`` with period 1)."""
    z, s, _ = _periodic_images(x, mean, sigma)
    weights = torch.softmax(-(z**2) / (2 * s**2), dim=-1)
    return (weights * (-z / s**2)).sum(-1)


def expected_squared_score(sigmas: torch.Tensor, grid: int = 1000) -> torch.Tensor:
    """E[(d/dx log p)^2] under the wrapped normal of each width in ``sigmas`` (float64 ``[S]``).

    Exactly 1/sigma^2 below sigma = 0.05 (periodic images contribute < exp(-200)); otherwise a
    rectangle-rule quadrature over one period, which is spectrally accurate for a smooth periodic
    integrand.
    """
    sigmas = sigmas.to(torch.float64)
    out = 1.0 / sigmas**2
    wide = sigmas >= 0.05
    if wide.any():
        s = sigmas[wide].unsqueeze(-1)
        x = (torch.arange(grid, dtype=torch.float64) / grid - 0.5).expand(len(s), grid)
        density = wrapped_normal_log_density(x, torch.zeros(()), s).exp()
        score = wrapped_normal_score(x, torch.zeros(()), s)
        out[wide] = (density * score**2).sum(-1) / grid
    return out


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cosine beta schedule, ``[T]``, clipped to [1e-4, 0.999]."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(1e-4, 0.999)


@dataclass(frozen=True)
class DiffusionSchedule:
    """All per-step constants (float32 tensors of length T + 1, index 0 = clean).

    Attributes:
        timesteps: T.
        sigma_begin, sigma_end: fractional-coordinate noise at steps 1 and T (fractions of a cell edge).
    """

    timesteps: int = 1000
    sigma_begin: float = 0.005
    sigma_end: float = 0.5
    betas: torch.Tensor = field(init=False, repr=False)
    alpha_bars: torch.Tensor = field(init=False, repr=False)
    sigmas: torch.Tensor = field(init=False, repr=False)
    sigma_norms: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), cosine_betas(self.timesteps)])
        alpha_bars = torch.cumprod(1 - betas, dim=0)
        ratio = math.log(self.sigma_end / self.sigma_begin)
        steps = torch.arange(self.timesteps, dtype=torch.float64) / max(self.timesteps - 1, 1)
        sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), self.sigma_begin * torch.exp(ratio * steps)])
        norms = torch.cat([torch.ones(1, dtype=torch.float64), expected_squared_score(sigmas[1:])])
        object.__setattr__(self, "betas", betas.float())
        object.__setattr__(self, "alpha_bars", alpha_bars.float())
        object.__setattr__(self, "sigmas", sigmas.float())
        object.__setattr__(self, "sigma_norms", norms.float())

    def to_dict(self) -> dict[str, float | int | str]:
        return {"timesteps": self.timesteps, "sigma_begin": self.sigma_begin, "sigma_end": self.sigma_end,
                "lattice_beta_schedule": "cosine"}
