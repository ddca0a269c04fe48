"""A DenseGNN-style conductivity model in PyTorch.

* node input: occupancy-weighted species embedding + vacancy fraction -> ``hidden`` features;
* ``n_blocks`` densely connected message-passing blocks: block t reads the concatenation of the
  input features and every earlier block's output (DenseNet-style), and passes gated edge messages
  ``sigmoid(W_g z_ij) * softplus(W_c z_ij)`` with ``z_ij = [h_i, h_j, rbf(d_ij)]``;
* readout: the mean over sites of all blocks' features -> graph embedding; entries without a
  structure get a learned "no-structure" embedding instead;
* a global-feature MLP branch (composition, space group, lattice, atom count), standardized with
  the training set's mean/std stored as buffers;
* two heads on [graph embedding, global embedding]: log10 sigma (S/cm) and the logit of
  P(sigma >= 1e-4 S/cm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from htvs.conductivity.graph import INPUT_NAMES, NODE_INPUT, CrystalGraph, collate_arrays, global_feature_names



@dataclass(frozen=True)
class ModelConfig:
    """Widths of the model (the shipped ensemble uses the defaults)."""

    hidden: int = 32
    n_blocks: int = 3
    n_gaussians: int = 32
    cutoff: float = 5.0
    gaussian_width: float = 0.3
    global_hidden: int = 64
    head_hidden: int = 64
    dropout: float = 0.1

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**data)


@dataclass
class GraphBatch:
    """A batch of entries as tensors; entries without a structure have no nodes."""

    node_features: torch.Tensor  # (N, 201)
    node_graph: torch.Tensor  # (N,) entry index of each node
    edge_src: torch.Tensor  # (E,)
    edge_dst: torch.Tensor  # (E,)
    edge_distance: torch.Tensor  # (E,)
    global_features: torch.Tensor  # (B, G)
    has_structure: torch.Tensor  # (B,) bool

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.node_features, self.node_graph, self.edge_src, self.edge_dst, self.edge_distance,
                self.global_features, self.has_structure)


def collate(graphs: list[CrystalGraph | None], globals_: list[np.ndarray]) -> GraphBatch:
    """:func:`collate_arrays` as torch tensors."""
    arrays = collate_arrays(graphs, globals_)
    return GraphBatch(**{name: torch.from_numpy(arrays[name]) for name in INPUT_NAMES})


def sum_rows(values: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``out[i] = sum of values[j] with index[j] == i`` for a (n_rows, d) output.

    Written with ``scatter_add`` rather than ``index_add``: the former exports to ONNX as
    ScatterElements(reduction="add"), the latter as a plain ScatterElements that keeps only one of
    several rows sent to the same index.
    """
    out = torch.zeros(n_rows, values.shape[1], dtype=values.dtype, device=values.device)
    return out.scatter_add(0, index[:, None].expand(-1, values.shape[1]), values)


class GatedDenseBlock(nn.Module):
    """One message-passing block reading the concatenation of all earlier node features."""

    def __init__(self, in_features: int, hidden: int, n_gaussians: int) -> None:
        super().__init__()
        self.project = nn.Linear(in_features, hidden)
        self.gate = nn.Linear(2 * hidden + n_gaussians, hidden)
        self.core = nn.Linear(2 * hidden + n_gaussians, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, dense: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, rbf: torch.Tensor) -> torch.Tensor:
        h = self.project(dense)
        z = torch.cat([h[dst], h[src], rbf], dim=1)
        message = torch.sigmoid(self.gate(z)) * nn.functional.softplus(self.core(z))
        aggregated = sum_rows(message, dst, h.shape[0])
        return nn.functional.softplus(h + self.norm(aggregated))


class ConductivityGNN(nn.Module):
    """DenseGNN-style graph network + global branch, two outputs per entry."""

    def __init__(self, config: ModelConfig | None = None, n_global: int | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        n_global = n_global or len(global_feature_names())
        self.register_buffer("global_mean", torch.zeros(n_global))
        self.register_buffer("global_std", torch.ones(n_global))
        self.register_buffer("centers", torch.linspace(0.0, config.cutoff, config.n_gaussians))
        self.embed = nn.Linear(NODE_INPUT, config.hidden)
        self.blocks = nn.ModuleList(
            GatedDenseBlock(config.hidden * (t + 1), config.hidden, config.n_gaussians)
            for t in range(config.n_blocks)
        )
        graph_width = config.hidden * (config.n_blocks + 1)
        self.graph_out = nn.Sequential(nn.Linear(graph_width, config.head_hidden), nn.SiLU())
        self.no_structure = nn.Parameter(torch.zeros(config.head_hidden))
        self.global_branch = nn.Sequential(
            nn.Linear(n_global, config.global_hidden), nn.SiLU(), nn.Dropout(config.dropout),
            nn.Linear(config.global_hidden, config.global_hidden), nn.SiLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(config.head_hidden + config.global_hidden, config.head_hidden), nn.SiLU(),
            nn.Dropout(config.dropout), nn.Linear(config.head_hidden, 2),
        )

    def set_normalization(self, mean: np.ndarray, std: np.ndarray, target_mean: float) -> None:
        """Store the training set's global-feature mean/std and start the regression at its mean."""
        with torch.no_grad():
            self.global_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.global_std.copy_(torch.as_tensor(np.where(std > 1e-8, std, 1.0), dtype=torch.float32))
            self.head[-1].bias[0] = float(target_mean)

    def forward(
        self,
        node_features: torch.Tensor,
        node_graph: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        edge_distance: torch.Tensor,
        global_features: torch.Tensor,
        has_structure: torch.Tensor,
    ) -> torch.Tensor:
        """Returns (B, 2): log10 sigma (S/cm) and the superionic logit."""
        n_entries = global_features.shape[0]
        width = self.config.cutoff / (self.config.n_gaussians - 1)
        rbf = torch.exp(-((edge_distance[:, None] - self.centers[None, :]) / max(width, self.config.gaussian_width)) ** 2)
        features = [nn.functional.softplus(self.embed(node_features))]
        for block in self.blocks:
            features.append(block(torch.cat(features, dim=1), edge_src, edge_dst, rbf))
        nodes = torch.cat(features, dim=1)
        pooled = sum_rows(nodes, node_graph, n_entries)
        counts = sum_rows(torch.ones_like(nodes[:, :1]), node_graph, n_entries)
        pooled = pooled / counts.clamp(min=1.0)
        graph = self.graph_out(pooled)
        graph = torch.where(has_structure[:, None], graph, self.no_structure[None, :].expand_as(graph))
        glob = self.global_branch((global_features - self.global_mean) / self.global_std)
        return self.head(torch.cat([graph, glob], dim=1))


def build_model(config: ModelConfig | None = None, seed: int = 0) -> ConductivityGNN:
    """A freshly initialised model; weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return ConductivityGNN(config)
