"""A CSPNet-style periodic-E(3)-invariant denoiser (after Jiao et al., NeurIPS 2023, written anew).

Atoms of one crystal form a fully connected graph (every ordered pair, self-pairs included).
An edge sees both atoms' features, the lattice Gram matrix ``L L^T`` (Å^2; invariant to rotating
the cell) and Fourier features ``sin/cos(2 pi k (f_j - f_i))`` of the fractional-coordinate
difference (invariant to translating all atoms, periodic in the cell). Messages are averaged
per atom, so the network is permutation equivariant. Heads:

* coordinates: a per-atom 3-vector, the normalized wrapped-normal score of ``F_t``
  (invariant to rotations, because fractional);
* lattice: a per-crystal invariant 3x3 matrix ``K`` pooled from the atoms; the predicted lattice
  noise is ``K @ L`` (lattice vectors as rows), hence equivariant to ``L -> L Q^T``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: Atomic numbers 1..MAX_Z have an embedding row (only those seen in training are trusted).
MAX_Z = 100
#: Scale of the Gram-matrix input, Å^2 (keeps it O(1) for cells of a few Å).
GRAM_SCALE_A2 = 16.0


@dataclass(frozen=True)
class DenoiserConfig:
    """Size of the denoiser."""

    hidden: int = 128
    layers: int = 4
    n_frequencies: int = 10
    time_dim: int = 64

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of integer steps ``t`` ``[B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def fully_connected_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination atom indices of every ordered pair within each crystal."""
    src, dst, start = [], [], 0
    for n in num_atoms.tolist():
        idx = torch.arange(start, start + n)
        src.append(idx.repeat_interleave(n))
        dst.append(idx.repeat(n))
        start += n
    return torch.cat(src), torch.cat(dst)


def segment_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` rows grouped by ``index`` into ``size`` groups."""
    total = torch.zeros(size, values.shape[-1], dtype=values.dtype).index_add_(0, index, values)
    count = torch.zeros(size, dtype=values.dtype).index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    return total / count.clamp(min=1).unsqueeze(-1)


class MessageLayer(nn.Module):
    """One CSP message-passing layer with a pre-LayerNorm and a residual update."""

    def __init__(self, hidden: int, n_frequencies: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.src_proj = nn.Linear(hidden, hidden)
        self.dst_proj = nn.Linear(hidden, hidden, bias=False)
        self.geom_proj = nn.Linear(9 + 6 * n_frequencies, hidden, bias=False)
        self.edge_mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())

    def forward(self, h: torch.Tensor, geometry: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        hn = self.norm(h)
        # Linear(cat(h_src, h_dst, geom)) computed as a sum of projections (cheaper per edge).
        message = self.edge_mlp(self.src_proj(hn)[src] + self.dst_proj(hn)[dst] + self.geom_proj(geometry))
        aggregated = segment_mean(message, dst, len(h))
        return h + self.node_mlp(torch.cat([hn, aggregated], dim=-1))


class CSPDenoiser(nn.Module):
    """Predicts (lattice noise ``[B, 3, 3]``, normalized coordinate score ``[N, 3]``)."""

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config or DenoiserConfig()
        c = self.config
        self.embedding = nn.Embedding(MAX_Z + 1, c.hidden)
        self.node_in = nn.Linear(c.hidden + c.time_dim, c.hidden)
        self.layers = nn.ModuleList(MessageLayer(c.hidden, c.n_frequencies) for _ in range(c.layers))
        self.final_norm = nn.LayerNorm(c.hidden)
        self.coord_head = nn.Linear(c.hidden, 3, bias=False)
        self.lattice_head = nn.Linear(c.hidden, 9, bias=False)
        self.register_buffer("frequencies", 2 * math.pi * torch.arange(1, c.n_frequencies + 1, dtype=torch.float32),
                             persistent=False)

    def forward(
        self,
        atomic_numbers: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        num_atoms: torch.Tensor,
        t: torch.Tensor,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            atomic_numbers: ``[N]`` long. frac: ``[N, 3]`` fractional coordinates.
            lattice: ``[B, 3, 3]`` rows = lattice vectors, Å. num_atoms: ``[B]`` long.
            t: ``[B]`` integer diffusion steps. edges: precomputed :func:`fully_connected_edges`.
        """
        batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
        src, dst = edges if edges is not None else fully_connected_edges(num_atoms)
        c = self.config
        h = self.node_in(torch.cat([self.embedding(atomic_numbers), time_embedding(t, c.time_dim)[batch]], dim=-1))
        gram = (lattice @ lattice.transpose(1, 2)).reshape(-1, 9) / GRAM_SCALE_A2
        angles = (frac[src] - frac[dst]).unsqueeze(-1) * self.frequencies  # [E, 3, K]
        fourier = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(len(src), -1)
        geometry = torch.cat([gram[batch[src]], fourier], dim=-1)
        for layer in self.layers:
            h = layer(h, geometry, src, dst)
        h = self.final_norm(h)
        coord_score = self.coord_head(h)
        pooled = segment_mean(h, batch, len(num_atoms))
        lattice_noise = self.lattice_head(pooled).view(-1, 3, 3) @ lattice
        return lattice_noise, coord_score
