"""The MD protocol at one temperature, with atomic checkpoints and resume (any ASE calculator).

Protocol (:class:`~htvs.validation.config.MDConfig`): seeded Maxwell–Boltzmann velocities at
the start temperature, zero total momentum; heating to T with ASE's ``VelocityVerlet`` and
velocity scaling (``force_temperature``) to a linear ramp; then one ASE
``NoseHooverChainNVT`` run for equilibration and production. Neither integrator wraps
positions, so the recorded Li positions are unwrapped.

Checkpoints: every ``checkpoint_every_steps`` (and when the run ends) the state is written to
one ``.npz`` file through a temporary file and an atomic rename: positions, momenta, the
Nosé–Hoover chain's ``eta`` / ``p_eta``, the step, and the production frames recorded so far.
A run killed at any point resumes from its last checkpoint; a finished checkpoint is the
result, and running again returns it without a step. Given the same calculator (CPU, same
thread count) a resumed run reproduces the uninterrupted one bit for bit (tested with an
analytic potential and with CHGNet).

ASE exposes no public API for the chain's state: ``_thermostat._eta`` / ``_p_eta`` are read and
written here, and a missing attribute (a future ASE) is reported as StageFailed rather than
resumed wrongly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput, StageFailed
from htvs.validation.config import MDConfig
from htvs.validation.records import MDTrajectory, StopHook, ValidationCancelled, never_stop

CHECKPOINT_FORMAT = "htvs.md-checkpoint/1"
LI_NUMBER = 3

#: ``on_chunk(phase of the last step done or "done", steps done, total steps, temperature K)``.
ChunkCallback = Callable[[str, int, int, float], None]


def phase_of(step: int, config: MDConfig) -> str:
    """The phase the next step belongs to (``"done"`` after the last)."""
    if step < config.heat_steps:
        return "heat"
    if step < config.heat_steps + config.equilibrate_steps:
        return "equilibrate"
    if step < config.total_steps:
        return "production"
    return "done"


def _settings(config: MDConfig, temperature_k: float, seed: int, structure: Structure) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed."""
    return {
        "format": CHECKPOINT_FORMAT,
        "temperature_k": float(temperature_k),
        "timestep_fs": float(config.timestep_fs),
        "heat_steps": config.heat_steps,
        "equilibrate_steps": config.equilibrate_steps,
        "production_steps": config.production_steps,
        "start_temperature_k": float(config.start_temperature_k),
        "damping_fs": config.damping_fs,
        "thermostat_chain": config.thermostat_chain,
        "rescale_every_steps": config.rescale_every_steps,
        "record_every_steps": config.record_every_steps,
        "seed": int(seed),
        "formula": structure.composition.formula,
        "n_atoms": len(structure),
    }


class _State:
    """The mutable state of a run (what a checkpoint holds)."""

    def __init__(self, atoms, n_li: int) -> None:
        self.step = 0
        self.positions = atoms.get_positions()
        self.momenta = atoms.get_momenta()
        self.eta: np.ndarray | None = None
        self.p_eta: np.ndarray | None = None
        self.frames: list[np.ndarray] = []
        self.framework: list[np.ndarray] = []
        self.framework_rms: list[float] = []
        self.framework_start: np.ndarray | None = None  # framework positions at the first frame
        self.temperatures: list[float] = []
        self.n_li = n_li

    def arrays(self, settings: dict[str, Any]) -> dict[str, np.ndarray]:
        n_li = self.n_li
        return {
            "settings": np.array(json.dumps(settings, sort_keys=True)),
            "step": np.array(self.step, dtype=np.int64),
            "positions": self.positions,
            "momenta": self.momenta,
            "eta": self.eta if self.eta is not None else np.zeros(0),
            "p_eta": self.p_eta if self.p_eta is not None else np.zeros(0),
            "li_positions": np.asarray(self.frames, dtype=np.float64).reshape(-1, n_li, 3),
            "framework_mean": np.asarray(self.framework, dtype=np.float64).reshape(-1, 3),
            "frame_temperatures": np.asarray(self.temperatures, dtype=np.float64),
            "framework_rms": np.asarray(self.framework_rms, dtype=np.float64),
            "framework_start": self.framework_start if self.framework_start is not None else np.zeros((0, 3)),
        }


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (``.npz``) via a temporary file and an atomic rename."""
    from htvs.atomic import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint (no pickles are loaded)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInput(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc


def checkpoint_step(path: Path) -> int:
    """Steps done according to the checkpoint at ``path`` (0 when there is none)."""
    if not path.is_file():
        return 0
    return int(read_checkpoint(path)["step"])


def _restore(path: Path, settings: dict[str, Any], state: _State) -> None:
    saved = read_checkpoint(path)
    given = json.loads(str(saved["settings"]))
    if given != settings:
        diff = sorted(k for k in set(given) | set(settings) if given.get(k) != settings.get(k))
        raise InvalidInput(
            f"checkpoint {path} was written with other settings ({', '.join(diff)}); "
            "delete it or use another work directory"
        )
    state.step = int(saved["step"])
    state.positions = saved["positions"].copy()
    state.momenta = saved["momenta"].copy()
    state.eta = saved["eta"].copy() if saved["eta"].size else None
    state.p_eta = saved["p_eta"].copy() if saved["p_eta"].size else None
    state.frames = list(saved["li_positions"])
    state.framework = list(saved["framework_mean"])
    state.temperatures = [float(t) for t in saved["frame_temperatures"]]
    # checkpoints written before these were recorded resume with NaN for the frames they hold
    rms = saved.get("framework_rms", np.zeros(0))
    state.framework_rms = [float(x) for x in rms] + [math.nan] * (len(state.frames) - len(rms))
    start = saved.get("framework_start", np.zeros((0, 3)))
    state.framework_start = start.copy() if start.size else None


def _thermostat(nvt):
    chain = getattr(nvt, "_thermostat", None)
    if chain is None or not hasattr(chain, "_eta") or not hasattr(chain, "_p_eta"):
        raise StageFailed(
            "this ASE's NoseHooverChainNVT has no _thermostat._eta/_p_eta; the checkpoint of the "
            "thermostat cannot be written or restored (pin ase<4 or update htvs.validation.md)"
        )
    return chain


def _thermalize(atoms, temperature_k: float, rng: np.random.Generator) -> None:
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    else:  # ASE < 3.29
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    vd.Stationary(atoms)
    vd.force_temperature(atoms, temperature_k)


def run_md(
    structure: Structure,
    calculator,
    temperature_k: float,
    config: MDConfig,
    *,
    seed: int | None = None,
    checkpoint: str | Path | None = None,
    on_chunk: ChunkCallback | None = None,
    should_stop: StopHook = never_stop,
    stop_after_steps: int | None = None,
) -> MDTrajectory:
    """Run (or resume) the MD protocol of ``config`` at ``temperature_k`` on ``structure``.

    Args:
        structure: the MD cell (already a supercell), ordered, with Li.
        calculator: an ASE calculator (CHGNet's, or any other).
        temperature_k: thermostat temperature, K.
        config: the protocol (``temperatures_k`` is not used here).
        seed: seed of the initial velocities (default ``config.seed``).
        checkpoint: ``.npz`` path of the checkpoint (None: no checkpoints, no resume).
        on_chunk: called after every chunk of ``checkpoint_every_steps`` steps.
        should_stop: checked after every chunk; True stops the run with
            :class:`~htvs.validation.records.ValidationCancelled` after the checkpoint is written.
        stop_after_steps: stop (ValidationCancelled) once this many steps are done; for tests
            and benchmarks that simulate an interruption.

    Returns:
        The production trajectory.

    Raises:
        InvalidInput: a bad temperature, a structure without Li, or a checkpoint written with
            other settings.
        ValidationCancelled: ``should_stop`` or ``stop_after_steps`` ended the run early.
    """
    from ase import units
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import force_temperature
    from ase.md.verlet import VelocityVerlet
    from pymatgen.io.ase import AseAtomsAdaptor

    from htvs.validation.config import check_temperature

    temperature_k = check_temperature(temperature_k)
    seed = config.seed if seed is None else int(seed)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    numbers = atoms.get_atomic_numbers()
    li = np.flatnonzero(numbers == LI_NUMBER)
    framework = np.flatnonzero(numbers != LI_NUMBER)
    if li.size == 0:
        raise InvalidInput(f"{structure.composition.reduced_formula}: no Li atoms to follow")
    settings = _settings(config, temperature_k, seed, structure)
    path = Path(checkpoint) if checkpoint is not None else None

    n_heat, total = config.heat_steps, config.total_steps
    prod_start = n_heat + config.equilibrate_steps
    every = config.record_every_steps
    state = _State(atoms, li.size)
    if path is not None and path.is_file():
        _restore(path, settings, state)
        atoms.set_positions(state.positions)
        atoms.set_momenta(state.momenta)
    else:
        start_t = config.start_temperature_k if n_heat > 0 else temperature_k
        _thermalize(atoms, start_t, np.random.default_rng(seed))

    def record() -> None:
        state.frames.append(atoms.positions[li].copy())
        if framework.size:
            here = atoms.positions[framework]
            state.framework.append(here.mean(axis=0))
            if not state.frames[:-1]:
                state.framework_start = here.copy()
            state.framework_rms.append(_rms_displacement(here, state.framework_start))
        else:
            state.framework.append(np.zeros(3))
            state.framework_rms.append(0.0)
        state.temperatures.append(float(atoms.get_temperature()))

    def save() -> None:
        state.positions = atoms.get_positions()
        state.momenta = atoms.get_momenta()
        if nvt is not None:
            chain = _thermostat(nvt)
            state.eta, state.p_eta = chain._eta.copy(), chain._p_eta.copy()
        if path is not None:
            write_checkpoint(path, state.arrays(settings))

    timestep = config.timestep_fs * units.fs
    verlet = VelocityVerlet(atoms, timestep=timestep) if state.step < n_heat else None
    nvt = None

    def start_nvt():
        dyn = NoseHooverChainNVT(
            atoms,
            timestep=timestep,
            temperature_K=temperature_k,
            tdamp=config.damping_fs * units.fs,
            tchain=config.thermostat_chain,
        )
        if state.eta is not None and state.p_eta is not None:
            chain = _thermostat(dyn)
            chain._eta[:] = state.eta
            chain._p_eta[:] = state.p_eta
        return dyn

    if state.step == 0 and prod_start == 0:
        record()
    chunk = config.checkpoint_every_steps
    while state.step < total:
        end = min(total, (state.step // chunk + 1) * chunk)
        if stop_after_steps is not None:
            end = min(end, max(stop_after_steps, state.step + 1))
        while state.step < end:
            if state.step < n_heat:
                verlet.step()  # type: ignore[union-attr]
                state.step += 1
                if state.step % config.rescale_every_steps == 0 or state.step == n_heat:
                    ramp = config.start_temperature_k + (temperature_k - config.start_temperature_k) * (
                        state.step / n_heat
                    )
                    force_temperature(atoms, ramp)
            else:
                if nvt is None:
                    nvt = start_nvt()
                nvt.step()
                state.step += 1
            if state.step >= prod_start and (state.step - prod_start) % every == 0:
                record()
        save()
        if on_chunk is not None:
            phase = "done" if state.step >= total else phase_of(state.step - 1, config)
            on_chunk(phase, state.step, total, float(atoms.get_temperature()))
        if state.step < total and (
            (stop_after_steps is not None and state.step >= stop_after_steps) or should_stop()
        ):
            raise ValidationCancelled(
                f"MD at {temperature_k:g} K stopped after {state.step} of {total} steps"
                + (f"; checkpoint {path}" if path is not None else "")
            )
    state.positions = atoms.get_positions()
    return _trajectory(structure, state, temperature_k, config, li, framework)


def _rms_displacement(positions: np.ndarray, start: np.ndarray | None) -> float:
    """Root-mean-square displacement of ``positions`` from ``start`` after removing their mean
    (the drift), Å; NaN without a start (a resumed run of an older checkpoint)."""
    if start is None or start.shape != positions.shape:
        return math.nan
    moved = positions - start
    moved -= moved.mean(axis=0)
    return float(np.sqrt((moved**2).sum(axis=1).mean()))


def _trajectory(
    structure: Structure, state: _State, temperature_k: float, config: MDConfig, li: np.ndarray, framework: np.ndarray
) -> MDTrajectory:
    frames = np.asarray(state.frames, dtype=np.float64).reshape(-1, li.size, 3)
    fw = np.asarray(state.framework, dtype=np.float64).reshape(-1, 3)
    drift = fw - fw[:1] if len(fw) else fw
    temps = np.asarray(state.temperatures, dtype=np.float64)
    return MDTrajectory(
        temperature_k=float(temperature_k),
        timestep_fs=float(config.timestep_fs),
        record_every_steps=config.record_every_steps,
        structure=structure,
        li_positions=frames,
        framework_displacement=drift,
        mean_temperature_k=float(temps.mean()) if temps.size else math.nan,
        framework_rms_displacement=np.asarray(state.framework_rms, dtype=np.float64),
        final_positions=np.asarray(state.positions, dtype=np.float64).copy(),
    )

