"""Relaxation of several structures per CHGNet call (cell + positions, FIRE).

Why not ``MlipBackend.relax`` in a loop: every optimizer step of one structure is one CHGNet call
(graph, forward and backward pass, Python overhead). Here the structures still being relaxed
are evaluated together in one ``predict_structure`` call per step (CHGNet batches their graphs),
and each structure then takes its own FIRE step.

Why this optimizer: no batched optimizer is installed here (no ``torch_sim``). Rather than
writing FIRE again, each structure keeps ASE's own :class:`~ase.optimize.FIRE` on ASE's
:class:`~ase.filters.FrechetCellFilter` — the objects the one-by-one path uses — and only the
energy, forces and stress come from the batched call, handed to ASE through a
``SinglePointCalculator``. The steps are therefore the one-by-one path's steps, and the relaxed
energies agree with it to float noise of the batched model evaluation (measured in
``benchmarks/bench_relax_batched.py``; tests hold them within 2 meV/atom).

A structure whose energy, forces or stress turn non-finite, or whose atoms come closer than
:data:`MIN_DISTANCE_ANGSTROM`, is stopped and reported as failed; the others go on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput

#: Atoms closer than this (Å) after a step: the relaxation has collapsed (exploded).
MIN_DISTANCE_ANGSTROM = 0.5
#: GPa -> eV/Å^3 (CHGNet predicts stress in GPa).
_GPA_TO_EV_PER_A3 = 1.0 / 160.21766208


@dataclass(frozen=True)
class BatchRelaxConfig:
    """Settings of :func:`relax_batch`.

    Attributes:
        fmax_ev_per_angstrom: convergence: largest force (and scaled stress) below this, eV/Å.
        max_steps: FIRE steps at most (0: a static evaluation of the given structures).
        batch_size: structures evaluated per CHGNet call.
        relax_cell: relax the cell too (``FrechetCellFilter``) or positions only.
    """

    fmax_ev_per_angstrom: float = 0.05
    max_steps: int = 200
    batch_size: int = 8
    relax_cell: bool = True

    def __post_init__(self) -> None:
        from htvs.ranges import Range

        Range(1e-4, 10.0, unit="eV/Å").check("fmax_ev_per_angstrom", self.fmax_ev_per_angstrom)
        Range(0, 100_000, integer=True).check("max_steps", self.max_steps)
        Range(1, 10_000, integer=True).check("batch_size", self.batch_size)


@dataclass
class BatchRelaxResult:
    """One structure's relaxation: the relaxed structure or why it failed.

    Attributes:
        structure: the relaxed structure (None when failed).
        energy_ev: total CHGNet energy of ``structure``, eV (MP2020-compatible scale).
        converged: the largest force fell below fmax within max_steps.
        n_steps: FIRE steps taken.
        max_force_ev_per_angstrom: largest residual (filter) force, eV/Å.
        error: why the relaxation failed (None when it did not).
    """

    structure: Structure | None = field(repr=False)
    energy_ev: float
    converged: bool
    n_steps: int
    max_force_ev_per_angstrom: float
    error: str | None = None

    @property
    def energy_per_atom_ev(self) -> float:
        """Energy per atom, eV/atom (NaN when failed)."""
        return self.energy_ev / len(self.structure) if self.structure is not None else math.nan


class _Job:
    """One structure being relaxed: its atoms, filter and ASE FIRE."""

    def __init__(self, structure: Structure, relax_cell: bool) -> None:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        self.atoms = AseAtomsAdaptor.get_atoms(structure)
        self.target = FrechetCellFilter(self.atoms) if relax_cell else self.atoms
        self.optimizer = FIRE(self.target, logfile=None)
        self.n_steps = 0
        self.energy_ev = math.nan
        self.max_force = math.nan
        self.converged = False
        self.error: str | None = None

    def structure(self) -> Structure:
        return Structure(self.atoms.cell.array.copy(), list(self.atoms.get_chemical_symbols()),
                         self.atoms.get_positions(), coords_are_cartesian=True)

    def attach(self, prediction: dict) -> None:
        """Hand one CHGNet prediction (``e`` eV/atom, ``f`` eV/Å, ``s`` GPa) to ASE."""
        from ase.calculators.singlepoint import SinglePointCalculator

        n = len(self.atoms)
        energy = float(np.asarray(prediction["e"]).reshape(-1)[0]) * n
        forces = np.asarray(prediction["f"], dtype=float).reshape(n, 3)
        stress = np.asarray(prediction["s"], dtype=float) * _GPA_TO_EV_PER_A3
        if stress.shape == (3, 3):  # -> Voigt order xx, yy, zz, yz, xz, xy (what ASE stores)
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        stress = stress.reshape(-1)
        if not (math.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            raise InvalidInput(f"non-finite CHGNet energy/forces/stress after {self.n_steps} steps "
                               f"(energy {energy!r} eV): the relaxation exploded")
        self.atoms.calc = SinglePointCalculator(self.atoms, energy=energy, free_energy=energy, forces=forces,
                                                stress=stress)
        self.energy_ev = energy
        with warnings.catch_warnings():
            # the cell filter's matrix logarithm warns at errors of ~1e-13 on every step: noise
            warnings.filterwarnings("ignore", message="logm result may be inaccurate", category=RuntimeWarning)
            gradient = self.target.get_forces()
        self.max_force = float(np.sqrt((gradient**2).sum(axis=1)).max()) if len(gradient) else 0.0

    def step(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="logm result may be inaccurate", category=RuntimeWarning)
            self.optimizer.step()
        self.n_steps += 1
        closest = min_distance_angstrom(self.atoms)
        if closest < MIN_DISTANCE_ANGSTROM:
            raise InvalidInput(f"atoms {closest:.3f} Å apart after {self.n_steps} steps (< {MIN_DISTANCE_ANGSTROM} Å):"
                               " the relaxation collapsed")


def min_distance_angstrom(atoms) -> float:
    """Shortest interatomic distance of periodic ``atoms``, Å (inf for a single atom with a
    large cell)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return math.inf
    distances = neighbor_list("d", atoms, MIN_DISTANCE_ANGSTROM * 2)
    return float(distances.min()) if len(distances) else math.inf


def relax_batch(
    structures: Sequence[Structure],
    model,
    config: BatchRelaxConfig = BatchRelaxConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> list[BatchRelaxResult]:
    """Relax ``structures`` with CHGNet ``model``, ``config.batch_size`` per model call.

    Each step evaluates every unfinished structure of the current group in one
    ``model.predict_structure`` call, then steps each with its FIRE. A structure leaves the
    group when converged, at ``max_steps`` or on failure; the group is refilled from the queue
    so the batch stays full. ``progress(done, total)`` is called as structures finish.

    Returns:
        one result per structure, in input order; failures have ``error`` set.
    """
    with _one_blas_thread():
        return _relax_batch(structures, model, config, progress)


def _one_blas_thread():
    """BLAS on one thread while relaxing: the cell filter's 3x3 ``logm`` / ``expm_frechet`` ran
    6x slower with OpenBLAS's 2 threads on this loaded 2-core machine (48 vs 8 ms per logm) and
    took 2/3 of a relaxation's time. A no-op without threadpoolctl."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _relax_batch(structures, model, config, progress) -> list[BatchRelaxResult]:
    results: list[BatchRelaxResult | None] = [None] * len(structures)
    queue = list(range(len(structures)))[::-1]
    active: dict[int, _Job] = {}
    done = 0

    def finish(index: int, job: _Job) -> None:
        nonlocal done
        if job.error is None:
            results[index] = BatchRelaxResult(job.structure(), job.energy_ev, job.converged, job.n_steps,
                                              job.max_force)
        else:
            results[index] = BatchRelaxResult(None, math.nan, False, job.n_steps, job.max_force, job.error)
        done += 1
        if progress is not None:
            progress(done, len(structures))

    while queue or active:
        while queue and len(active) < config.batch_size:
            index = queue.pop()
            try:
                active[index] = _Job(structures[index], config.relax_cell)
            except Exception as exc:  # noqa: BLE001 - ase/pymatgen raise many kinds; recorded per structure
                results[index] = BatchRelaxResult(None, math.nan, False, 0, math.nan, f"cannot set up: {exc}")
                done += 1
        if not active:
            break
        order = list(active)
        structures_now = [active[i].structure() for i in order]
        predictions = _predict(model, structures_now, config.batch_size)
        for index, prediction in zip(order, predictions):
            job = active[index]
            try:
                job.attach(prediction)
                if job.max_force < config.fmax_ev_per_angstrom:
                    job.converged = True
                elif job.n_steps < config.max_steps:
                    job.step()
                    continue
            except InvalidInput as exc:
                job.error = str(exc)
            finish(index, active.pop(index))
    return results  # type: ignore[return-value]


def _predict(model, structures: list[Structure], batch_size: int) -> list[dict]:
    """CHGNet predictions (energy, forces, stress) of ``structures``, one model call per batch."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        out = model.predict_structure(structures, task="efs", batch_size=batch_size)
    return [out] if isinstance(out, dict) else list(out)
