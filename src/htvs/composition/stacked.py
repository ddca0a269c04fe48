"""A Roost ensemble trained in one process: K members' parameters stacked, evaluated together.

:class:`StackedRoost` holds the parameters of K aviary ``Roost`` models of one width, each
tensor stacked along a leading member axis (``(K, *shape)``, keyed by the aviary state-dict
name), and evaluates all of them at once on padded ``(K, B, M)`` compositions: every ``Linear``
is a batched matmul over the member axis, and the message passing is :class:`DenseRoost`'s
(no scatter ops). Member ``k`` computes exactly the function of the aviary ``Roost`` whose state
dict is :meth:`StackedRoost.member_state` ``(k)``, up to float rounding.

:func:`train_stacked` trains an ensemble with it on a split featurized once (cached in
``RUN/data.npz``). Member ``k`` gets the same initial weights (seed ``1000 * seed + k``), the
same mini-batches (order seeded by ``(seed, k, epoch)``), the same L1 loss, AdamW settings and
per-epoch cosine learning rate as ``htvs.composition.train.train_one``; the members share no
term of the loss and AdamW is elementwise, so one optimizer over the stacked tensors is K
independent optimizers. Each step evaluates member ``k`` on its own mini-batch; the rows of the
K mini-batches are grouped by element count (formulas of ``MERGE_FROM`` or more elements share
one padded group), so almost no pair of the message passing is padding. The loss is the same.

Speed (``benchmarks/bench_composition_training.py``, BENCHMARKS.md): on a 2-core CPU the
message passing is bound by memory traffic over the per-pair tensors, so the gain over the
per-member loop is a small factor, not an order of magnitude.

Layout of a stacked run directory (the per-member files are those of ``train.py``, so
``htvs train evaluate`` and ``htvs train export`` work on it unchanged)::

    RUN/train_config.json          the TrainConfig (a rerun must match it)
    RUN/data.npz                   the featurized train/val split (rebuilt if missing or stale)
    RUN/stacked/checkpoint.pt      stacked weights, optimizer, scheduler, best weights, state
    RUN/stacked/progress.json      epoch and step of the last checkpoint
    RUN/model_K/best.pt            member K's best-validation weights (aviary Roost state dict)
    RUN/model_K/done.json          member K's metrics ("stop_reason": max_epochs | patience |
                                   deadline; a deadline result is replaced when the run resumes)
    RUN/metrics.json               ensemble metrics on the test split

The checkpoint is written atomically after every epoch, and when a wall-clock ``deadline``
stops training between two steps (with the position inside the epoch), so a rerun continues
where the last one stopped; on the CPU the result is bit-identical to an uninterrupted run.
A member whose validation MAE (eV/atom for formation energy, eV for band gaps) has not improved
for ``patience`` epochs stops: it is left out of later steps and its weights no longer change.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from htvs.composition.dense import _masked_softmax_weights
from htvs.composition.model import RoostConfig, build_roost
from htvs.errors import InvalidInput

#: Rows per chunk when predicting (validation).
PREDICT_ROWS = 2048
#: Format tag of ``RUN/data.npz``.
CACHE_FORMAT = "htvs.stacked-data/1"
#: Format tag of ``RUN/stacked/checkpoint.pt``.
CHECKPOINT_FORMAT = "htvs.stacked-checkpoint/1"
#: Slope of aviary's ``SimpleNetwork`` activation (``nn.LeakyReLU()``).
LEAKY_SLOPE = 0.01


def _pname(key: str) -> str:
    return key.replace(".", "__")


class StackedRoost(nn.Module):
    """K aviary ``Roost`` models of one width (one output head, no batch norm), stacked.

    Inputs of :meth:`forward`:
        z: (K, B, M) or (B, M) int64 atomic numbers, 0 at padding positions ((B, M): the same
            rows for every member).
        weights: the matching float32 atomic fractions, 0 at padding positions.
        members: optional int64 indices of the members to evaluate (default: all K, in order);
            the first axis of ``z`` then has their count.

    Output:
        (K, B, n_out) float32 (n_out = 1, or 2 for a robust model), member by member.
    """

    def __init__(self, config: RoostConfig, states: list[dict[str, Tensor]]) -> None:
        super().__init__()
        if not states:
            raise InvalidInput("a stacked ensemble needs at least one member")
        self.config = config
        template = build_roost(config).state_dict()
        self.keys = list(template)
        for k, state in enumerate(states):
            if set(state) != set(template):
                raise InvalidInput(f"member {k}: its state dict does not match the Roost width {config}")
        self.params = nn.ParameterDict(
            {
                _pname(key): nn.Parameter(
                    torch.stack([state[key].detach().to(torch.float32).cpu() for state in states]).contiguous()
                )
                for key in self.keys
            }
        )
        self.n_members = len(states)
        self.fea_len = config.elem_fea_len

    @classmethod
    def from_models(cls, config: RoostConfig, models: list) -> StackedRoost:
        """Stack the weights of aviary ``Roost`` models (copied)."""
        return cls(config, [m.state_dict() for m in models])

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member ``k`` as an aviary ``Roost`` state dict (CPU copies)."""
        return {key: self.params[_pname(key)][k].detach().cpu().clone() for key in self.keys}

    def stacked_state(self) -> dict[str, Tensor]:
        """Every tensor, stacked, by aviary key (detached copies)."""
        return {key: self.params[_pname(key)].detach().clone() for key in self.keys}

    # -- building blocks -------------------------------------------------------------------
    def _p(self, key: str, members: Tensor | None) -> Tensor:
        p = self.params[_pname(key)]
        return p if members is None else p.index_select(0, members)

    def _linear(self, x: Tensor, prefix: str, members: Tensor | None, bias: bool = True) -> Tensor:
        """Member-wise ``Linear`` on x of shape (K, ..., in)."""
        w = self._p(f"{prefix}.weight", members)
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])
        if bias:
            out = torch.baddbmm(self._p(f"{prefix}.bias", members).unsqueeze(1), flat, w.transpose(1, 2))
        else:
            out = torch.bmm(flat, w.transpose(1, 2))
        return out.reshape(*shape[:-1], w.shape[1])

    def _n_hidden(self, prefix: str) -> int:
        n = 0
        while _pname(f"{prefix}.fcs.{n}.weight") in self.params:
            n += 1
        return n

    def _simple(self, x: Tensor, prefix: str, members: Tensor | None) -> Tensor:
        """aviary ``SimpleNetwork`` (LeakyReLU)."""
        for i in range(self._n_hidden(prefix)):
            x = nn.functional.leaky_relu(self._linear(x, f"{prefix}.fcs.{i}", members), LEAKY_SLOPE)
        return self._linear(x, f"{prefix}.fc_out", members)

    def _residual(self, x: Tensor, prefix: str, members: Tensor | None) -> Tensor:
        """aviary ``ResidualNetwork`` (ReLU; a bias-free projection where the width changes)."""
        for i in range(self._n_hidden(prefix)):
            hidden = torch.relu(self._linear(x, f"{prefix}.fcs.{i}", members))
            if _pname(f"{prefix}.res_fcs.{i}.weight") in self.params:
                x = hidden + self._linear(x, f"{prefix}.res_fcs.{i}", members, bias=False)
            else:
                x = hidden + x
        return self._linear(x, f"{prefix}.fc_out", members)

    @staticmethod
    def _first(prefix: str, n_hidden: int) -> str:
        return f"{prefix}.fcs.0" if n_hidden else f"{prefix}.fc_out"

    # -- forward ---------------------------------------------------------------------------
    def forward(self, z: Tensor, weights: Tensor, members: Tensor | None = None) -> Tensor:
        n = self.n_members if members is None else int(members.shape[0])
        emb = self._p("elem_embedding.weight", members)  # (K, n_z, 200)
        table = self._linear(emb, "material_nn.embedding", members)  # (K, n_z, F - 1)
        n_z = table.shape[1]
        if z.dim() == 2:
            z = z.unsqueeze(0).expand(n, -1, -1)
            weights = weights.unsqueeze(0).expand(n, -1, -1)
        offsets = (torch.arange(n, device=z.device) * n_z).view(n, 1, 1)
        gathered = table.reshape(n * n_z, -1)[z + offsets]
        x = torch.cat([gathered, weights.unsqueeze(-1)], dim=-1)  # (K, B, M, F)
        mask = z > 0
        for g in range(self.config.n_graph):
            x = self._message_layer(g, x, weights, mask, members)
        heads = []
        for h in range(self.config.cry_heads):
            prefix = f"material_nn.cry_pool.{h}"
            gate = self._simple(x, f"{prefix}.gate_nn", members).squeeze(-1)  # (K, B, M)
            power = self._p(f"{prefix}.pow", members).view(n, 1, 1)
            attention = _masked_softmax_weights(gate, weights, mask, power)
            message = self._simple(x, f"{prefix}.message_nn", members)  # (K, B, M, F)
            heads.append((attention.unsqueeze(-1) * message).sum(dim=-2))
        crystal = torch.stack(heads).mean(dim=0)
        crystal = torch.relu(self._residual(crystal, "trunk_nn", members))
        return self._residual(crystal, "output_nns.0", members)

    @staticmethod
    def _pair_sum(flat: Tensor, w: Tensor, bias: Tensor, n: int, b: int, m: int, f: int) -> Tensor:
        """First ``Linear`` on cat(x_i, x_j) for every pair: (K, B, M_i, M_j, S), as a
        broadcast sum of a self part and a neighbour part computed once per element."""
        self_part = torch.baddbmm(bias.unsqueeze(1), flat, w[:, :, :f].transpose(1, 2))
        nbr_part = torch.bmm(flat, w[:, :, f:].transpose(1, 2))
        return self_part.view(n, b, m, 1, -1) + nbr_part.view(n, b, 1, m, -1)

    def _message_layer(self, g: int, x: Tensor, weights: Tensor, mask: Tensor, members: Tensor | None) -> Tensor:
        """aviary ``MessageLayer`` over all (self i, neighbour j) pairs, as in DenseRoost.

        The first ``Linear`` of every gate and message network of the layer is applied once per
        element (self and neighbour parts, all networks in one batched matmul); the per-pair
        pre-activations are their broadcast sum, laid out as [gates of all heads | messages of
        all heads] so that one activation, one matmul (gate outputs) and one weighted sum
        (messages) cover every head.
        """
        n, b, m, f = x.shape
        heads = range(self.config.elem_heads)
        gates = [f"material_nn.graphs.{g}.pooling.{h}.gate_nn" for h in heads]
        msgs = [f"material_nn.graphs.{g}.pooling.{h}.message_nn" for h in heads]
        nets = [(p, self._n_hidden(p)) for p in gates + msgs]
        firsts = [self._first(p, nh) for p, nh in nets]
        w_first = torch.cat([self._p(f"{name}.weight", members) for name in firsts], dim=1)  # (K, S, 2F)
        b_first = torch.cat([self._p(f"{name}.bias", members) for name in firsts], dim=1)
        widths = [self.params[_pname(f"{name}.bias")].shape[1] for name in firsts]
        n_gate = sum(widths[: len(gates)])
        flat = x.reshape(n, b * m, f)
        simple = all(nh == 1 for _, nh in nets)  # one hidden layer per network (htvs's widths)
        if simple:
            # separate pair tensors for gates and messages: slicing one big tensor would cost
            # a zero-filled full-size gradient per slice in the backward pass
            pre_gate = self._pair_sum(flat, w_first[:, :n_gate], b_first[:, :n_gate], n, b, m, f)
            pre_msg = self._pair_sum(flat, w_first[:, n_gate:], b_first[:, n_gate:], n, b, m, f)
            hidden = nn.functional.leaky_relu(pre_gate, LEAKY_SLOPE).view(n, -1, n_gate)
            # every head's gate output in one matmul with a block matrix (S_gate, heads)
            blocks, b_gate = [], []
            for h, p in enumerate(gates):
                w_out = self._p(f"{p}.fc_out.weight", members).transpose(1, 2)  # (K, width, 1)
                blocks.append(nn.functional.pad(w_out, (h, len(gates) - 1 - h)))
                b_gate.append(self._p(f"{p}.fc_out.bias", members))
            w_gate = torch.cat(blocks, dim=1)  # (K, S_gate, heads)
            gate = torch.baddbmm(torch.cat(b_gate, dim=1).unsqueeze(1), hidden, w_gate)
            gate = gate.view(n, b, m, m, len(gates))
            msg_hidden = nn.functional.leaky_relu(pre_msg, LEAKY_SLOPE)
        else:
            pre = self._pair_sum(flat, w_first, b_first, n, b, m, f)
            chunks = pre.split(widths, dim=-1)
            gate_list = []
            for (p, nh), chunk in zip(nets[: len(gates)], chunks):
                out = chunk
                if nh:
                    out = nn.functional.leaky_relu(out, LEAKY_SLOPE)
                    for i in range(1, nh):
                        out = nn.functional.leaky_relu(self._linear(out, f"{p}.fcs.{i}", members), LEAKY_SLOPE)
                    out = self._linear(out, f"{p}.fc_out", members)
                gate_list.append(out)
            gate = torch.cat(gate_list, dim=-1)
            msg_hidden = None
        powers = torch.cat([self._p(f"material_nn.graphs.{g}.pooling.{h}.pow", members) for h in heads], dim=1)
        attention = _masked_softmax_weights(
            gate.movedim(-1, 2),  # (K, B, H, M_i, M_j)
            weights.view(n, b, 1, 1, m),
            mask.view(n, b, 1, 1, m),
            powers.view(n, 1, len(gates), 1, 1),
        ).movedim(2, -1)  # (K, B, M_i, M_j, H)
        total = attention.sum(dim=3)  # (K, B, M_i, H)
        n_heads = len(gates)
        if simple:
            width = msg_hidden.shape[-1] // n_heads
            pooled = (attention.unsqueeze(-1) * msg_hidden.view(n, b, m, m, n_heads, width)).sum(dim=3)
            w_out = torch.cat([self._p(f"{p}.fc_out.weight", members) for p in msgs], dim=2)  # (K, F, H*W)
            b_out = torch.stack([self._p(f"{p}.fc_out.bias", members) for p in msgs], dim=1)  # (K, H, F)
            update = torch.bmm(pooled.reshape(n, b * m, -1), w_out.transpose(1, 2)).view(n, b, m, f)
            update = update + torch.matmul(total, b_out.unsqueeze(1))  # sum_h total_h * bias_h
            return update / n_heads + x
        updates = []
        msg_chunks = chunks[len(gates) :]
        for h, ((p, nh), chunk) in enumerate(zip(nets[len(gates) :], msg_chunks)):
            a = attention[..., h]
            if nh:
                hid = nn.functional.leaky_relu(chunk, LEAKY_SLOPE)
                for i in range(1, nh):
                    hid = nn.functional.leaky_relu(self._linear(hid, f"{p}.fcs.{i}", members), LEAKY_SLOPE)
                pooled = (a.unsqueeze(-1) * hid).sum(dim=-2)
                w_out = self._p(f"{p}.fc_out.weight", members)
                upd = torch.bmm(pooled.reshape(n, b * m, -1), w_out.transpose(1, 2)).view(n, b, m, f)
                upd = upd + total[..., h : h + 1] * self._p(f"{p}.fc_out.bias", members).view(n, 1, 1, -1)
            else:
                upd = (a.unsqueeze(-1) * chunk).sum(dim=-2)
            updates.append(upd)
        return torch.stack(updates).mean(dim=0) + x


# -- data: the split featurized once ------------------------------------------------------


@dataclass
class DenseSplit:
    """One part of a split as padded arrays: ``z`` (N, M) int64 atomic numbers (0 = padding),
    ``fractions`` (N, M) float32 atomic fractions, ``targets`` (N,) float32 (eV/atom for
    formation energies, eV for band gaps), ``counts`` (N,) int64 elements per formula."""

    z: np.ndarray
    fractions: np.ndarray
    targets: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return (self.z > 0).sum(axis=1).astype(np.int64)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def from_frame(cls, frame) -> DenseSplit:
        """Formulas without an element embedding are dropped, as in ``Featurized.from_frame``."""
        from htvs.composition.train import Featurized

        data = Featurized.from_frame(frame)
        width = max((len(z) for z in data.zs), default=1)
        z = np.zeros((len(data), width), dtype=np.int64)
        fractions = np.zeros((len(data), width), dtype=np.float32)
        for i, (zi, wi) in enumerate(zip(data.zs, data.fractions)):
            z[i, : len(zi)] = zi
            fractions[i, : len(wi)] = wi
        return cls(z, fractions, data.targets.astype(np.float32))


def split_hash(split) -> str:
    """sha256 of the train and validation formulas and targets (what the cache depends on)."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for part in (split.train, split.val):
        digest.update("\n".join(map(str, part["formula"].tolist())).encode("utf-8"))
        digest.update(b"\x00")
        digest.update(np.ascontiguousarray(part["target"].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def load_featurized(path: Path, split, log: Callable[[str], None] = print) -> tuple[DenseSplit, DenseSplit]:
    """(train, val) of ``split`` as :class:`DenseSplit`, from the cache at ``path`` when it holds
    this split (same :func:`split_hash`); otherwise featurized and written there (compressed
    ``.npz``, atomically). A missing, unreadable or stale cache is rebuilt."""
    from htvs.atomic import atomic_path

    path = Path(path)
    expected = split_hash(split)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["format"]) == CACHE_FORMAT and str(saved["hash"]) == expected:
                    parts = tuple(
                        DenseSplit(saved[f"{name}_z"], saved[f"{name}_fractions"], saved[f"{name}_targets"])
                        for name in ("train", "val")
                    )
                    return parts  # type: ignore[return-value]
            log(f"{path}: featurized for another split; rebuilding it")
        except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
            log(f"{path}: unreadable ({type(exc).__name__}); rebuilding it")
    train, val = DenseSplit.from_frame(split.train), DenseSplit.from_frame(split.val)
    arrays = {"format": np.array(CACHE_FORMAT), "hash": np.array(expected)}
    for name, part in (("train", train), ("val", val)):
        arrays.update({f"{name}_z": part.z, f"{name}_fractions": part.fractions, f"{name}_targets": part.targets})
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return train, val


# -- batching: rows grouped by element count ----------------------------------------------


#: Formulas with at least this many elements share one padded group (they are rare).
MERGE_FROM = 6


def _groups(rows: np.ndarray, counts: np.ndarray, representative: dict[int, int]):
    """Cut each member's mini-batch (row ``k`` of ``rows``) into groups of equal element count.

    Returns a list of ``(index (A, n), valid (A, n) float32, width)``: member ``k``'s rows of the
    group, padded to the longest member with a stand-in row of that count (``valid`` 0: no
    loss, zero gradient), and the number of element columns the group needs.
    """
    capped = np.minimum(counts[rows], MERGE_FROM)
    out = []
    for m in np.unique(capped):
        members = [r[c == m] for r, c in zip(rows, capped)]
        n = max(len(sel) for sel in members)
        index = np.full((len(members), n), representative[int(m)], dtype=np.int64)
        valid = np.zeros((len(members), n), dtype=np.float32)
        for k, sel in enumerate(members):
            index[k, : len(sel)] = sel
            valid[k, : len(sel)] = 1.0
        out.append((index, valid, int(counts[index].max())))
    return out


def _representatives(counts: np.ndarray) -> dict[int, int]:
    reps = {}
    for m in np.unique(np.minimum(counts, MERGE_FROM)):
        reps[int(m)] = int(np.flatnonzero(np.minimum(counts, MERGE_FROM) == m)[0])
    return reps


def predict_stacked(model: StackedRoost, data: DenseSplit, members: Tensor | None = None) -> np.ndarray:
    """(n_members, len(data)) float64 predictions (first output) of the selected members."""
    device = next(model.parameters()).device
    n = model.n_members if members is None else int(members.shape[0])
    out = np.empty((n, len(data)), dtype=np.float64)
    counts = data.counts
    order = np.argsort(counts, kind="stable")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(order), PREDICT_ROWS):
            rows = order[lo : lo + PREDICT_ROWS]
            width = max(int(counts[rows].max()), 1)
            z = torch.from_numpy(data.z[rows, :width]).to(device)
            w = torch.from_numpy(data.fractions[rows, :width]).to(device)
            out[:, rows] = model(z, w, members)[..., 0].double().cpu().numpy()
    model.train(was_training)
    return out


# -- training -----------------------------------------------------------------------------


def initial_states(config, train_targets: np.ndarray) -> list[dict[str, Tensor]]:
    """Member ``k``'s starting weights exactly as ``train.train_one`` makes them: aviary's
    initialisation under seed ``1000 * seed + k`` with the output bias at the training mean, or
    ``init_from``'s ``model_k/best.pt``."""
    states = []
    for k in range(config.n_models):
        model = build_roost(config.roost, seed=config.seed * 1000 + k)
        if config.init_from:
            init = Path(config.init_from) / f"model_{k}" / "best.pt"
            if not init.exists():
                raise InvalidInput(f"init_from: {init} does not exist (train the pretraining run first)")
            model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
        else:
            with torch.no_grad():
                model.output_nns[0].fc_out.bias.fill_(float(np.mean(train_targets)))
        states.append(model.state_dict())
    return states


def _fresh_member() -> dict:
    return {"best_val": math.inf, "bad_epochs": 0, "epochs": 0, "stop_reason": "", "history": []}


def read_checkpoint(path: Path) -> dict:
    """The stacked checkpoint at ``path``; InvalidInput naming it if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(
            f"stacked checkpoint {path} is missing but {path.parent / 'progress.json'} says training "
            "had started; restore it or train into a new --out"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
        json.loads(saved["state"])
    except Exception as exc:
        raise InvalidInput(
            f"stacked checkpoint {path} is corrupt or not a checkpoint ({type(exc).__name__}: {exc}); "
            "restore it or train into a new --out"
        ) from None
    return saved


def _write_member(run_dir: Path, k: int, weights: dict[str, Tensor], member: dict, config, device, reason: str) -> dict:
    """model_K/best.pt (aviary Roost state dict, CPU tensors) and model_K/done.json."""
    from htvs.atomic import write_json_atomic
    from htvs.checkpoints import save_atomic
    from htvs.composition.train import device_description

    model_dir = run_dir / f"model_{k}"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_atomic({key: v.detach().cpu().clone() for key, v in weights.items()}, model_dir / "best.pt")
    result = {"model": k, "seed": config.seed * 1000 + k, "epochs": member["epochs"],
              "best_val_mae": member["best_val"], "stop_reason": reason, "engine": "stacked",
              "device": device_description(device), "torch": torch.__version__, "history": member["history"]}
    write_json_atomic(result, model_dir / "done.json")
    return result


def train_step(
    model: StackedRoost,
    optimizer,
    tensors: tuple[Tensor, Tensor, Tensor],
    counts: np.ndarray,
    representatives: dict[int, int],
    rows: np.ndarray,
    select: Tensor | None = None,
    frozen: list[int] | tuple[int, ...] = (),
) -> Tensor:
    """One optimizer step: member ``select[i]`` (or ``i``) on its mini-batch ``rows[i]``.

    Args:
        tensors: the training split's ``z``, fractions and targets (eV/atom or eV) on the device.
        counts: elements per training formula; ``representatives``: :func:`_representatives`.
        rows: (members, batch) row indices, one mini-batch per selected member.
        frozen: members whose weights must not change (AdamW's momentum and weight decay would
            move them even with a zero gradient: they are put back after the step).

    Returns:
        (members,) the L1 loss of each selected member (mean over its mini-batch), detached.
    """
    z_all, w_all, t_all = tensors
    device = z_all.device
    loss_sum = torch.zeros(rows.shape[0], dtype=torch.float32, device=device)
    for index, valid, width in _groups(rows, counts, representatives):
        idx = torch.from_numpy(index).to(device)
        pred = model(z_all[idx, :width], w_all[idx, :width], select)[..., 0]
        error = (pred - t_all[idx]).abs() * torch.from_numpy(valid).to(device)
        loss_sum = loss_sum + error.sum(dim=1)
    losses = loss_sum / rows.shape[1]  # L1 mean over each member's mini-batch
    optimizer.zero_grad()
    losses.sum().backward()
    kept = []
    if frozen:
        fi = torch.tensor(list(frozen), dtype=torch.int64, device=device)
        kept = [(p, p.detach()[fi].clone()) for p in model.parameters()]
    optimizer.step()
    if kept:
        with torch.no_grad():
            for p, value in kept:
                p[fi] = value
    return losses.detach()


def train_stacked(
    run_dir: Path,
    config,
    split=None,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> dict:
    """Train (or resume) all ``config.n_models`` members together; score them on the test split.

    Args:
        run_dir: the run directory (layout in the module docstring).
        config: a ``htvs.composition.train.TrainConfig``.
        split: the data (default: ``load_split`` of the config's target and split seed).
        deadline: optional wall-clock limit (``time.time()`` seconds). Training stops between two
            steps once it has passed; the position is checkpointed, members with a completed
            epoch get their best weights written (``stop_reason`` ``deadline``) and are scored,
            and a rerun continues from that step.

    Returns:
        The run's metrics (as ``train_ensemble``), or, when the deadline passed before any member
        finished an epoch, ``{"members_trained": 0, ...}``.
    """
    from htvs.atomic import write_json_atomic
    from htvs.checkpoints import save_atomic
    from htvs.composition.datasets import load_split
    from htvs.composition.train import evaluate_run, resolve_device, start_run

    device = resolve_device(config.device)
    run_dir = Path(run_dir)
    stale = sorted(run_dir.glob("model_*/checkpoint.pt"))
    if stale:
        raise InvalidInput(
            f"{run_dir} was started by the per-member (aviary) engine ({stale[0]}); "
            "resume it without --engine stacked or use a new --out"
        )
    start_run(run_dir, config)
    split = split or load_split(
        config.target, seed=config.split_seed, cv_fold=config.cv_fold, cv_folds=config.cv_folds
    )
    torch.set_num_threads(config.threads)
    train, val = load_featurized(run_dir / "data.npz", split, log)
    if len(train) == 0 or len(val) == 0:
        raise InvalidInput(f"{run_dir}: the split has {len(train)} usable training and {len(val)} validation formulas")
    log(f"{config.target}: {len(train)} train / {len(val)} val formulas, {config.n_models} members stacked")
    n_models = config.n_models
    model = StackedRoost(config.roost, initial_states(config, train.targets)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.max_epochs, eta_min=config.min_learning_rate
    )
    folder = run_dir / "stacked"
    folder.mkdir(exist_ok=True)
    checkpoint, progress = folder / "checkpoint.pt", folder / "progress.json"
    if progress.exists() or checkpoint.exists():
        saved = read_checkpoint(checkpoint)
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise InvalidInput(f"stacked checkpoint {checkpoint} does not fit this run: {exc}") from None
        best = {key: v.to(device) for key, v in saved["best"].items()}
        state = json.loads(saved["state"])
        partial = saved["partial"].to(device)
        log(f"stacked: resumed at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        best = model.stacked_state()
        state = {"epoch": 0, "step": 0, "members": [_fresh_member() for _ in range(n_models)]}
        partial = torch.zeros(n_models, dtype=torch.float64, device=device)
    members = state["members"]

    def save() -> None:
        payload = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "best": best, "state": json.dumps(state),
                   "partial": partial}
        save_atomic(payload, checkpoint)
        write_json_atomic({"epoch": state["epoch"], "step": state["step"]}, progress)

    def member_weights(k: int) -> dict[str, Tensor]:
        return {key: v[k] for key, v in best.items()}

    z_all = torch.from_numpy(train.z).to(device)
    w_all = torch.from_numpy(train.fractions).to(device)
    t_all = torch.from_numpy(train.targets).to(device)
    counts = train.counts
    reps = _representatives(counts)
    n_rows, batch = len(train), config.batch_size
    n_steps = -(-n_rows // batch)
    stopped_by_deadline = False
    model.train()
    while state["epoch"] < config.max_epochs:
        epoch = state["epoch"]
        active = [k for k in range(n_models) if not members[k]["stop_reason"]]
        if not active:
            break
        select = None if len(active) == n_models else torch.tensor(active, dtype=torch.int64, device=device)
        frozen_idx = [k for k in range(n_models) if k not in active]
        orders = np.stack([np.random.default_rng([config.seed, k, epoch]).permutation(n_rows) for k in active])
        start = time.perf_counter()
        for step in range(state["step"], n_steps):
            if deadline is not None and time.time() >= deadline:
                stopped_by_deadline = True
                state["step"] = step
                break
            rows = orders[:, step * batch : (step + 1) * batch]
            losses = train_step(model, optimizer, (z_all, w_all, t_all), counts, reps, rows, select, frozen_idx)
            done_rows = torch.tensor(active, dtype=torch.int64, device=device)
            partial.index_add_(0, done_rows, losses.detach().double() * rows.shape[1])
        if stopped_by_deadline:
            break
        scheduler.step()
        val_pred = predict_stacked(model, val, select)
        val_mae = np.mean(np.abs(val_pred - val.targets[None, :]), axis=1)
        seconds = round(time.perf_counter() - start, 1)
        improved = []
        for i, k in enumerate(active):
            member = members[k]
            mae = float(val_mae[i])
            member["epochs"] = epoch + 1
            member["history"].append({"epoch": epoch + 1, "train_mae": float(partial[k]) / n_rows,
                                      "seconds": seconds, "val_mae": mae})
            if mae < member["best_val"]:
                member["best_val"], member["bad_epochs"] = mae, 0
                with torch.no_grad():
                    for key in model.keys:
                        best[key][k] = model.params[_pname(key)][k]
                improved.append(k)
            else:
                member["bad_epochs"] += 1
            if member["bad_epochs"] >= config.patience:
                member["stop_reason"] = "patience"
            elif epoch + 1 >= config.max_epochs:
                member["stop_reason"] = "max_epochs"
        state["epoch"], state["step"] = epoch + 1, 0
        partial.zero_()
        save()
        for k in active:
            if members[k]["stop_reason"]:
                _write_member(run_dir, k, member_weights(k), members[k], config, device, members[k]["stop_reason"])
        log(
            f"stacked epoch {epoch + 1}/{config.max_epochs}: {len(active)} members, "
            f"val MAE {' '.join(f'{v:.4f}' for v in val_mae)} "
            f"(improved: {len(improved)}; {seconds} s)"
        )
    if stopped_by_deadline:
        save()
        log(f"stacked: wall-clock deadline reached at epoch {state['epoch'] + 1}, step {state['step']}; "
            "rerun the same command to continue")
        for k in range(n_models):
            if not members[k]["stop_reason"] and members[k]["epochs"] > 0:
                _write_member(run_dir, k, member_weights(k), members[k], config, device, "deadline")
    if not any((run_dir / f"model_{k}" / "done.json").exists() for k in range(n_models)):
        return {"members_trained": 0, "members_planned": n_models, "epoch": state["epoch"], "step": state["step"]}
    return evaluate_run(run_dir, split, device=config.device)
