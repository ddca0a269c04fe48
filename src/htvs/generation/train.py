"""Training of the stage-5 generator: on the MP-20-like set (train part) or on perov_5 (its val split,
since perov_5's train split is not available here).

Resumable and reproducible: the mini-batch of step ``s`` comes from a permutation seeded by the
epoch, and its noise from a generator seeded by ``s``, so a run resumed from its checkpoint
(model, EMA, optimizer, step) is bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from htvs.atomic import write_json_atomic
from htvs.checkpoints import save_atomic
from htvs.errors import InvalidInput
from htvs.generation.data import CrystalArrays, load_perov5
from htvs.generation.diffusion import DiffusionSchedule, wrapped_normal_score
from htvs.generation.model import CSPDenoiser, DenoiserConfig, fully_connected_edges

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
HISTORY = "history.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the model and schedule sizes are fixed for a run at its first start).

    Attributes:
        max_steps: stop after this many optimizer steps in total.
        time_budget_s: stop (after saving) once this many seconds ran in this invocation; 0 = none.
        device: torch device of the model (``cpu``, ``cuda``, ``cuda:N``). Random numbers are
            drawn on the CPU whatever the device, so a run may move between devices; resuming is
            bit-identical on the device the run was interrupted on.
        checkpoint_every: steps between checkpoints.
        ema_decay: decay of the exponential moving average of the weights (used for sampling).
    """

    max_steps: int = 20_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 250
    log_every: int = 50
    time_budget_s: float = 0.0
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    timesteps: int = 1000
    sigma_begin: float = 0.005
    sigma_end: float = 0.5
    data: str = "perov5"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise InvalidInput(f"training data must be one of {sorted(DATASETS)}, got {self.data!r}")

    def run_dict(self) -> dict:
        """The settings that define a run (must not change when resuming)."""
        keys = ("batch_size", "learning_rate", "warmup_steps", "grad_clip", "ema_decay", "seed",
                "timesteps", "sigma_begin", "sigma_end")
        return {**{k: getattr(self, k) for k in keys}, "model": self.model.to_dict(),
                "data": DATASETS[self.data]}


#: Training sets by name, with the description a run records.
DATASETS = {"perov5": "perov_5 val (train split not available here)",
            "mp20": "MP-20-like train part (htvs.generation.mp_data)"}


def training_crystals(name: str) -> CrystalArrays:
    """The training crystals of dataset ``name`` (see :data:`DATASETS`)."""
    if name == "mp20":
        from htvs.generation.mp_data import load_mp20

        return load_mp20("train")
    return load_perov5("val")


def crystal_tensors(crystals: CrystalArrays) -> dict[str, torch.Tensor]:
    """Torch views of a :class:`CrystalArrays` (float32 coordinates and lattice, long types)."""
    return {
        "lattice": torch.from_numpy(np.ascontiguousarray(crystals.lattice, dtype=np.float32)),
        "frac": torch.from_numpy(np.ascontiguousarray(crystals.frac, dtype=np.float32)),
        "atomic_numbers": torch.from_numpy(crystals.atomic_numbers.astype(np.int64)),
        "num_atoms": torch.from_numpy(crystals.num_atoms.astype(np.int64)),
    }


def diffusion_loss(
    model: CSPDenoiser, schedule: DiffusionSchedule, batch: dict[str, torch.Tensor], generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss: MSE of the lattice noise + MSE of the normalized wrapped-normal score."""
    num_atoms = batch["num_atoms"]
    n_crystals = len(num_atoms)
    index = torch.repeat_interleave(torch.arange(n_crystals), num_atoms)
    t = torch.randint(1, schedule.timesteps + 1, (n_crystals,), generator=generator)
    alpha_bar = schedule.alpha_bars[t].view(-1, 1, 1)
    eps_lattice = torch.randn(batch["lattice"].shape, generator=generator)
    lattice_t = alpha_bar.sqrt() * batch["lattice"] + (1 - alpha_bar).sqrt() * eps_lattice
    sigma = schedule.sigmas[t][index].unsqueeze(-1)
    frac0 = batch["frac"]
    frac_t = torch.remainder(frac0 + sigma * torch.randn(frac0.shape, generator=generator), 1.0)
    target = wrapped_normal_score(frac_t, frac0, sigma) / schedule.sigma_norms[t][index].sqrt().unsqueeze(-1)
    # the noise above is drawn on the CPU (same numbers on every device); the model runs on its own
    device = next(model.parameters()).device
    inputs = [x.to(device) for x in (batch["atomic_numbers"], frac_t.float(), lattice_t.float(), num_atoms, t,
                                     *fully_connected_edges(num_atoms))]
    with device:  # tensors the denoiser builds inside forward go to its device too
        pred_lattice, pred_score = model(*inputs[:5], (inputs[5], inputs[6]))
    eps_lattice, target = eps_lattice.to(device), target.to(device)
    loss_lattice = torch.mean((pred_lattice - eps_lattice) ** 2)
    loss_coord = torch.mean((pred_score - target) ** 2)
    loss = loss_lattice + loss_coord
    return loss, {"loss": loss.item(), "loss_lattice": loss_lattice.item(), "loss_coord": loss_coord.item()}


def _batch(crystals: CrystalArrays, config: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    per_epoch = max(len(crystals) // config.batch_size, 1)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(len(crystals), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
    chosen = order[position * config.batch_size : (position + 1) * config.batch_size].numpy()
    return crystal_tensors(crystals.subset(np.sort(chosen)))


def build(config: TrainConfig) -> tuple[CSPDenoiser, CSPDenoiser, torch.optim.Optimizer, DiffusionSchedule]:
    """Fresh model, its EMA copy, the optimizer and the schedule, from the run's seed."""
    torch.manual_seed(config.seed)
    model = CSPDenoiser(config.model)
    ema = CSPDenoiser(config.model)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = DiffusionSchedule(config.timesteps, config.sigma_begin, config.sigma_end)
    return model, ema, optimizer, schedule


def train_generator(
    run_dir: str | Path,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    crystals: CrystalArrays | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) the denoiser in ``run_dir``; returns ``{"step", "seconds", "last"}``.

    Args:
        crystals: training set (default: the bundled set named by ``config.data``).
        stop_after: stop after this many steps *in this call* (simulates an interruption; tests).
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    crystals = crystals if crystals is not None else training_crystals(config.data)
    if len(crystals) < config.batch_size:
        raise InvalidInput(f"batch size {config.batch_size} exceeds the {len(crystals)} training crystals")
    model, ema, optimizer, schedule = build(config)
    model.to(config.device)
    ema.to(config.device)
    step, elapsed_before = 0, 0.0
    if (run / CHECKPOINT).exists():
        saved_config = json.loads((run / CONFIG).read_text())
        if saved_config != config.run_dict():
            raise InvalidInput(f"{run} was started with other settings: {saved_config}")
        state = torch.load(run / CHECKPOINT, weights_only=True, map_location=config.device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = int(state["step"]), float(state["seconds"])
        log(f"generator: resumed at step {step}")
    else:
        write_json_atomic(config.run_dict(), run / CONFIG)
    elements = sorted({int(z) for z in crystals.atomic_numbers})
    start, started_at, last = time.monotonic(), step, {}

    def save() -> None:
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "seconds": elapsed_before + time.monotonic() - start,
                     "elements": torch.tensor(elements)}, run / CHECKPOINT)

    model.train()
    while step < config.max_steps:
        if stop_after is not None and step - started_at >= stop_after:
            break
        if config.time_budget_s and time.monotonic() - start > config.time_budget_s:
            log(f"generator: time budget of {config.time_budget_s:.0f} s reached at step {step}")
            break
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(config.warmup_steps, 1))
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        loss, last = diffusion_loss(model, schedule, _batch(crystals, config, step), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.mul_(config.ema_decay).add_(p, alpha=1 - config.ema_decay)
        step += 1
        if step % config.log_every == 0:
            seconds = elapsed_before + time.monotonic() - start
            record = {"step": step, "seconds": round(seconds, 1), **{k: round(v, 5) for k, v in last.items()}}
            with (run / HISTORY).open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            log(f"step {step}/{config.max_steps}  loss {last['loss']:.4f} (lattice {last['loss_lattice']:.4f}, "
                f"coords {last['loss_coord']:.4f})  {seconds:.0f} s")
        if step % config.checkpoint_every == 0:
            save()
    save()
    return {"step": step, "seconds": elapsed_before + time.monotonic() - start, "last": last}


def load_run_model(run_dir: str | Path, use_ema: bool = True) -> tuple[CSPDenoiser, DiffusionSchedule, dict, list[int]]:
    """The (EMA) denoiser of a run, its schedule, run settings and trained atomic numbers."""
    run = Path(run_dir)
    if not (run / CHECKPOINT).exists():
        raise InvalidInput(f"{run} has no {CHECKPOINT}; train first with `htvs train generator --out {run}`")
    settings = json.loads((run / CONFIG).read_text())
    state = torch.load(run / CHECKPOINT, weights_only=True, map_location="cpu")
    model = CSPDenoiser(DenoiserConfig(**settings["model"]))
    model.load_state_dict(state["ema" if use_ema else "model"])
    schedule = DiffusionSchedule(settings["timesteps"], settings["sigma_begin"], settings["sigma_end"])
    settings = {**settings, "step": int(state["step"]), "seconds": float(state["seconds"])}
    return model, schedule, settings, [int(z) for z in state["elements"].tolist()]

