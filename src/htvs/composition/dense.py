"""Roost on dense, zero-padded compositions: the same function as aviary's ``Roost``, no scatter ops.

aviary's ``Roost.forward`` works on a flat list of element nodes and pools with
``scatter_reduce``; a traced ONNX graph of it bakes the scatter output sizes in, so it fails on
any other batch size (``ScatterElements ... indices element out of data bounds``). :class:`DenseRoost` computes the same prediction from a
``(batch, max_elements)`` layout, where padding positions carry ``z = 0`` and weight 0 and are
removed by masks, so an exported graph has truly dynamic batch and element axes.

Three rewrites make it cheaper than a literal translation, all exact up to float rounding:

* the element embedding and the descriptor's first ``Linear`` are applied to the embedding table
  (one small GEMM) and then gathered per element;
* the first layer of every message-layer gate/message network acts on ``cat(x_i, x_j)``, so it
  splits into a self part and a neighbour part computed once per element (not per pair), whose
  broadcast sum is the per-pair pre-activation;
* the last ``Linear`` of a message network commutes with the attention-weighted sum over
  neighbours, so it is applied once per element after the sum (its bias scaled by the sum of the
  attention weights, which aviary's ``+ 1e-10`` makes slightly less than 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from aviary.roost.model import Roost

#: Added to the softmax denominators, as in aviary's ``WeightedAttentionPooling``.
SOFTMAX_EPS = 1e-10


def _first_linear(net: nn.Module) -> nn.Linear:
    return net.fcs[0] if len(net.fcs) else net.fc_out


def _rest_of_network(net: nn.Module, hidden: Tensor, *, last_linear: bool) -> Tensor:
    """Continue an aviary ``SimpleNetwork`` from the pre-activation of its first layer.

    Args:
        net: the ``SimpleNetwork``.
        hidden: output of ``_first_linear(net)`` (before its activation).
        last_linear: apply ``fc_out`` (True) or stop before it (False).
    """
    if not len(net.fcs):
        return hidden  # the first linear was fc_out itself
    x = net.acts[0](hidden)
    for fc, act in zip(list(net.fcs)[1:], list(net.acts)[1:]):
        x = act(fc(x))
    return net.fc_out(x) if last_linear else x


def _masked_softmax_weights(gate: Tensor, weights: Tensor, mask: Tensor, power: Tensor) -> Tensor:
    """aviary's weighted attention over the last axis: ``w**pow * exp(g - max g) / (sum + 1e-10)``.

    ``gate``, ``weights`` and ``mask`` broadcast to each other; masked (padding) entries get
    attention 0 and never enter the max, the power or the sum.
    """
    lowest = torch.finfo(gate.dtype).min
    gate_max = torch.where(mask, gate, lowest).amax(dim=-1, keepdim=True)
    safe_weights = torch.where(mask, weights, torch.ones_like(weights))
    unnorm = torch.where(mask, safe_weights**power * torch.exp(gate - gate_max), 0.0)
    return unnorm / (unnorm.sum(dim=-1, keepdim=True) + SOFTMAX_EPS)


class DenseRoost(nn.Module):
    """aviary ``Roost`` (one output head) evaluated on padded ``(batch, max_elements)`` inputs.

    The modules of the aviary model are shared, not copied: training the aviary model changes
    this one too. Batch norm inside the networks is not supported (aviary's default is off).

    Inputs of :meth:`forward`:
        z: (B, M) int64 atomic numbers, 0 at padding positions.
        weights: (B, M) float32 atomic fractions (each row sums to 1), 0 at padding positions.

    Output:
        (B, n_out) float32, the first of aviary's ``output_nns`` (n_out = 1 for regression,
        2 for a robust model: mean and log aleatoric std).
    """

    def __init__(self, roost: Roost) -> None:
        super().__init__()
        if len(roost.output_nns) != 1:
            raise ValueError(f"DenseRoost supports one target, the model has {len(roost.output_nns)}")
        descriptor = roost.material_nn
        for module in descriptor.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise ValueError("DenseRoost does not support batch norm inside Roost networks")
        self.elem_embedding = roost.elem_embedding
        self.embedding = descriptor.embedding
        self.graphs = descriptor.graphs
        self.cry_pool = descriptor.cry_pool
        self.trunk_nn = roost.trunk_nn
        self.output_nn = roost.output_nns[0]
        self.fea_len = descriptor.embedding.out_features + 1
        #: (n_z, fea_len - 1) embedding table; None computes it from the shared parameters
        self.frozen_table: Tensor | None = None
        self.train(roost.training)

    @classmethod
    def from_aviary(cls, model: Roost) -> DenseRoost:
        """A DenseRoost sharing the parameters of a (trained) aviary ``Roost``."""
        return cls(model)

    def element_table(self) -> Tensor:
        """(n_z, fea_len - 1): the descriptor ``Linear`` applied to each element's embedding."""
        if self.frozen_table is not None:
            return self.frozen_table
        return self.embedding(self.elem_embedding.weight)

    def freeze_table(self) -> DenseRoost:
        """Store :meth:`element_table` as a constant (for export: one small table in the file)."""
        with torch.no_grad():
            self.frozen_table = self.embedding(self.elem_embedding.weight).detach().clone()
        return self

    def forward(self, z: Tensor, weights: Tensor) -> Tensor:
        mask = z > 0
        # embedding + descriptor Linear, computed on the table and gathered (exact up to rounding)
        table = self.element_table()
        x = torch.cat([nn.functional.embedding(z, table), weights.unsqueeze(-1)], dim=-1)
        for layer in self.graphs:
            x = self._message_layer(layer, x, weights, mask, self.fea_len)
        heads = [self._pool(head, x, weights, mask) for head in self.cry_pool]
        crystal = torch.stack(heads).mean(dim=0)
        crystal = torch.relu(self.trunk_nn(crystal))
        return self.output_nn(crystal)

    @staticmethod
    def _pool(head: nn.Module, x: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """aviary ``WeightedAttentionPooling`` of the elements of each row: (B, M, F) -> (B, F)."""
        gate = head.gate_nn(x).squeeze(-1)
        attention = _masked_softmax_weights(gate, weights, mask, head.pow)
        message = head.message_nn(x)
        return torch.matmul(attention.unsqueeze(-2), message).squeeze(-2)

    @staticmethod
    def _message_layer(
        layer: nn.Module, x: Tensor, weights: Tensor, mask: Tensor, fea_len: int
    ) -> Tensor:
        """aviary ``MessageLayer`` over all (self i, neighbour j) pairs of each row."""
        # first layer of each network on cat(x_i, x_j) = self part (x_i) + neighbour part (x_j),
        # each computed once per element; the broadcast sum is the (B, M_i, M_j, H) pre-activation
        chunks = []
        for head in layer.pooling:
            for net in (head.gate_nn, head.message_nn):
                first = _first_linear(net)
                self_part = torch.matmul(x, first.weight[:, :fea_len].t()) + first.bias
                nbr_part = torch.matmul(x, first.weight[:, fea_len:].t())
                chunks.append(self_part.unsqueeze(2) + nbr_part.unsqueeze(1))
        nbr_mask = mask.unsqueeze(1)  # (B, 1, M_j)
        nbr_weights = weights.unsqueeze(1)
        updates = []
        for h, head in enumerate(layer.pooling):
            gate = _rest_of_network(head.gate_nn, chunks[2 * h], last_linear=True).squeeze(-1)
            attention = _masked_softmax_weights(gate, nbr_weights, nbr_mask, head.pow)  # (B, M, M)
            msg_net = head.message_nn
            if len(msg_net.fcs):
                hidden = _rest_of_network(msg_net, chunks[2 * h + 1], last_linear=False)
                pooled = torch.matmul(attention.unsqueeze(-2), hidden).squeeze(-2)  # (B, M, Hm)
                total = attention.sum(dim=-1, keepdim=True)
                update = torch.matmul(pooled, msg_net.fc_out.weight.t()) + total * msg_net.fc_out.bias
            else:
                update = torch.matmul(attention.unsqueeze(-2), chunks[2 * h + 1]).squeeze(-2)
            updates.append(update)
        return torch.stack(updates).mean(dim=0) + x
