"""Typed settings of stage 7 (validate): relaxation, supercell, MD protocol, diffusion analysis.

Defaults follow the paper's protocol (Du & Wang): NVT with a Nosé–Hoover thermostat, start at
100 K and heat to T by velocity scaling over 2 ps, equilibrate 5 ps, produce 40 ps with a 2 fs
step, at several T in 600–1500 K; sigma(300 K) from the Arrhenius extrapolation, its range from
production windows of 10, 20, 30 and 40 ps. Every length is configurable within a sane range
(the module's :class:`~htvs.ranges.Range` constants), and the whole protocol is at most
``MAX_TOTAL_MD_STEPS`` steps. Each config checks itself on construction and raises
:class:`~htvs.errors.InvalidInput` naming the offending setting, its value and the allowed range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from htvs.errors import InvalidInput
from htvs.errors import shown
from htvs.ranges import Range

#: Highest MD temperature accepted, K (above it every solid here is far beyond melting).
MAX_TEMPERATURE_K = 5000.0
#: MD temperatures (and the start and extrapolation temperatures), K.
TEMPERATURE_K = Range(0.0, MAX_TEMPERATURE_K, "K", low_open=True)
#: Most MD temperatures in one protocol.
MAX_TEMPERATURES = 32
#: MD time step, fs (below 0.1 fs nothing is gained; above 10 fs Li dynamics is not integrated).
TIMESTEP_FS = Range(0.1, 10.0, "fs")
#: Heating and equilibration lengths, ps (0: skip the phase).
PHASE_PS = Range(0.0, 100_000.0, "ps")
#: Production length, ps.
PRODUCTION_PS = Range(0.0, 100_000.0, "ps", low_open=True)
#: Steps of the whole protocol (every temperature's heating + equilibration + production).
MAX_TOTAL_MD_STEPS = 100_000_000
#: Nosé–Hoover time constant, fs.
THERMOSTAT_DAMPING_FS = Range(0.0, 100_000.0, "fs", low_open=True)
#: Shortest default Nosé–Hoover time constant, in time steps (a tighter chain disturbs the
#: dynamics it should only thermostat).
MIN_DAMPING_STEPS = 10
#: Length of the Nosé–Hoover chain.
THERMOSTAT_CHAIN = Range(1, 10, integer=True)
#: Velocity-scaling, recording and checkpoint intervals, MD steps.
INTERVAL_STEPS = Range(1, 10_000_000, "steps", integer=True)
#: Seeds of the initial velocities and of the bootstrap.
SEED = Range(0, 2**32 - 1, integer=True)
#: Relaxation force criterion, eV/Å.
FMAX_EV_PER_ANGSTROM = Range(0.0, 10.0, "eV/Å", low_open=True)
#: Relaxation optimizer steps.
RELAX_STEPS = Range(0, 100_000, "steps", integer=True)
#: Minimum supercell vector length, Å (0 keeps the cell).
SUPERCELL_LENGTH_ANGSTROM = Range(0.0, 100.0, "Å")
#: Minimum number of atoms of the MD cell (0: no minimum).
MIN_ATOMS = Range(0, 100_000, integer=True)
#: Maximum number of atoms of the MD cell.
MAX_ATOMS = Range(1, 100_000, integer=True)
#: A production window as a fraction of the production run.
WINDOW_FRACTION = Range(0.0, 1.0, low_open=True)
#: Most production windows.
MAX_WINDOWS = 100
#: ``DiffusionAnalyzer``'s ``min_obs`` and ``avg_nsteps``.
MSD_SETTING = Range(1, 1_000_000, integer=True)
#: Parametric-bootstrap draws.
BOOTSTRAP_DRAWS = Range(0, 100_000, integer=True)
#: The paper's temperatures lie in 600–1500 K; these are the default four.
DEFAULT_TEMPERATURES_K = (600.0, 800.0, 1000.0, 1200.0)
#: Backends :func:`htvs.validation.backends.load_backend` knows.
BACKENDS = ("mlip", "vasp")
#: MSD smoothing modes of pymatgen's ``DiffusionAnalyzer``.
SMOOTHING_MODES = ("max", "constant", "none")


def _items(name: str, value: object, most: int) -> tuple:
    """``value`` (a list, tuple or other iterable, not a string) as a tuple of at most ``most``
    items; InvalidInput naming ``name`` otherwise."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise InvalidInput(f"{name} must be a list, got {shown(value)}")
    items = []
    for item in value:  # type: ignore[union-attr]
        items.append(item)
        if len(items) > most:
            raise InvalidInput(f"{name}: at most {most} items, got more: {shown(value)}")
    return tuple(items)


def check_temperature(value: object, name: str = "temperature") -> float:
    """A temperature in K within (0, ``MAX_TEMPERATURE_K``] (a number or its text, as on a
    command line); InvalidInput naming the value and the range."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"{name} must be a number of K, got {shown(value)}") from None
    return TEMPERATURE_K.check(name, number, as_given=value)


def parse_temperatures(text: str | Iterable[object]) -> tuple[float, ...]:
    """``"600,800,1000"`` (or a sequence) -> sorted distinct temperatures in K.

    Raises:
        InvalidInput: an empty list, more than ``MAX_TEMPERATURES`` items, a non-numeric item,
            a temperature <= 0 K or above ``MAX_TEMPERATURE_K``, or a repeated temperature; the
            message names the item.
    """
    items: tuple
    if isinstance(text, str):
        parts = text.split(",", MAX_TEMPERATURES)
        if len(parts) > MAX_TEMPERATURES:
            raise InvalidInput(f"temperatures: at most {MAX_TEMPERATURES} values, got more in {shown(text)}")
        items = tuple(part.strip() for part in parts)
        if all(not part for part in items):
            raise InvalidInput(f"temperatures: no value in {shown(text)}; give e.g. 600,800,1000,1200")
        if any(not part for part in items):
            raise InvalidInput(f"temperatures: empty item in {shown(text)}")
    else:
        items = _items("temperatures", text, MAX_TEMPERATURES)
    if not items:
        raise InvalidInput("temperatures: give at least one temperature in K")
    values = [check_temperature(item, f"temperature {shown(item)}") for item in items]
    if len(set(values)) != len(values):
        raise InvalidInput(f"temperatures: repeated value in {shown(list(items))}")
    return tuple(sorted(values))


@dataclass(frozen=True)
class RelaxConfig:
    """Relaxation of cell and positions before everything else.

    Attributes:
        fmax_ev_per_angstrom: force (and scaled stress) convergence criterion, eV/Å.
        max_steps: optimizer steps at most; a relaxation that does not converge is reported
            (``RelaxResult.converged``) and the run goes on with the last structure.
        relax_cell: relax the cell too (ASE ``FrechetCellFilter``) or only positions.
    """

    fmax_ev_per_angstrom: float = 0.05
    max_steps: int = 500
    relax_cell: bool = True

    def __post_init__(self) -> None:
        FMAX_EV_PER_ANGSTROM.check("fmax", self.fmax_ev_per_angstrom)
        RELAX_STEPS.check("max relax steps", self.max_steps)
        if not isinstance(self.relax_cell, bool):
            raise InvalidInput(f"relax_cell must be true or false, got {shown(self.relax_cell)}")


@dataclass(frozen=True)
class SupercellConfig:
    """Size of the MD cell made from the relaxed structure.

    Each lattice vector is repeated ``ceil(min_length / |a_i|)`` times, then the shortest
    direction is doubled until the cell holds at least ``min_atoms``. A result above
    ``max_atoms`` is refused (InvalidInput naming both numbers) rather than silently shrunk.

    Attributes:
        min_length_angstrom: minimum length of every lattice vector of the supercell, Å
            (0 keeps the cell).
        min_atoms: minimum number of atoms (0: no minimum).
        max_atoms: maximum number of atoms.
    """

    min_length_angstrom: float = 8.0
    min_atoms: int = 0
    max_atoms: int = 200

    def __post_init__(self) -> None:
        SUPERCELL_LENGTH_ANGSTROM.check("min supercell length", self.min_length_angstrom)
        MIN_ATOMS.check("min atoms", self.min_atoms)
        MAX_ATOMS.check("max atoms", self.max_atoms)
        if self.min_atoms > self.max_atoms:
            raise InvalidInput(f"min atoms {self.min_atoms} exceeds max atoms {self.max_atoms}")


@dataclass(frozen=True)
class MDConfig:
    """The MD protocol at each temperature (times in ps, time step in fs).

    Phases: velocities drawn at ``start_temperature_k`` (seeded), heated linearly to T by
    velocity scaling over ``heat_ps`` (velocity Verlet, rescaled every
    ``rescale_every_steps``); then NVT with a Nosé–Hoover chain (ASE ``NoseHooverChainNVT``)
    for ``equilibrate_ps`` and ``production_ps``. The Li positions (unwrapped) and the mean
    framework displacement are recorded every ``record_every_steps`` during production. A
    checkpoint is written every ``checkpoint_every_steps`` and at the end.

    Attributes:
        temperatures_k: the MD temperatures, K (sorted, distinct).
        timestep_fs: integration time step, fs.
        heat_ps: heating time, ps (0: start at T directly).
        equilibrate_ps: equilibration time, ps.
        production_ps: production time, ps (> 0).
        start_temperature_k: initial temperature of the heating ramp, K.
        thermostat_damping_fs: Nosé–Hoover time constant, fs (None: see :attr:`damping_fs`).
        thermostat_chain: length of the Nosé–Hoover chain.
        rescale_every_steps: velocity-scaling interval during heating, steps.
        record_every_steps: trajectory sampling interval during production, steps.
        checkpoint_every_steps: steps between checkpoints (and progress reports, and checks
            of the cancellation hook).
        seed: seed of the initial velocities (each temperature adds its index).
    """

    temperatures_k: tuple[float, ...] = DEFAULT_TEMPERATURES_K
    timestep_fs: float = 2.0
    heat_ps: float = 2.0
    equilibrate_ps: float = 5.0
    production_ps: float = 40.0
    start_temperature_k: float = 100.0
    thermostat_damping_fs: float | None = None
    thermostat_chain: int = 3
    rescale_every_steps: int = 1
    record_every_steps: int = 5
    checkpoint_every_steps: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures_k", parse_temperatures(self.temperatures_k))
        TIMESTEP_FS.check("timestep", self.timestep_fs)
        PHASE_PS.check("heat time", self.heat_ps)
        PHASE_PS.check("equilibrate time", self.equilibrate_ps)
        PRODUCTION_PS.check("production time", self.production_ps)
        TEMPERATURE_K.check("start temperature", self.start_temperature_k)
        if self.thermostat_damping_fs is not None:
            THERMOSTAT_DAMPING_FS.check("thermostat damping", self.thermostat_damping_fs)
        THERMOSTAT_CHAIN.check("thermostat chain", self.thermostat_chain)
        INTERVAL_STEPS.check("rescale interval", self.rescale_every_steps)
        INTERVAL_STEPS.check("record interval", self.record_every_steps)
        INTERVAL_STEPS.check("checkpoint interval", self.checkpoint_every_steps)
        SEED.check("seed", self.seed)
        total = len(self.temperatures_k) * self.total_steps
        if total > MAX_TOTAL_MD_STEPS:
            raise InvalidInput(
                f"the MD protocol is {total:,} steps ({len(self.temperatures_k)} temperatures x "
                f"{self.heat_ps:g} + {self.equilibrate_ps:g} + {self.production_ps:g} ps at "
                f"{self.timestep_fs:g} fs), more than {MAX_TOTAL_MD_STEPS:,}; shorten heat, "
                "equilibrate or production, or lengthen the timestep"
            )
        if self.production_steps < 2 * self.record_every_steps:
            raise InvalidInput(
                f"production of {self.production_ps} ps at {self.timestep_fs} fs is "
                f"{self.production_steps} steps: fewer than two recorded frames "
                f"(every {self.record_every_steps} steps)"
            )

    def _steps(self, ps: float) -> int:
        return int(round(ps * 1000.0 / self.timestep_fs))

    @property
    def heat_steps(self) -> int:
        """Heating steps (``heat_ps`` / ``timestep_fs``, rounded)."""
        return self._steps(self.heat_ps)

    @property
    def equilibrate_steps(self) -> int:
        return self._steps(self.equilibrate_ps)

    @property
    def production_steps(self) -> int:
        return self._steps(self.production_ps)

    @property
    def total_steps(self) -> int:
        """Steps of one temperature: heating + equilibration + production."""
        return self.heat_steps + self.equilibrate_steps + self.production_steps

    @property
    def damping_fs(self) -> float:
        """The Nosé–Hoover time constant in use, fs.

        ``thermostat_damping_fs`` when given. By default 100 time steps (ASE's advice; 200 fs at
        2 fs, the paper's protocol), but at most a fifth of the thermostatted time (equilibration
        + production) and at least :data:`MIN_DAMPING_STEPS` time steps: a chain takes a few
        time constants to carry away heat, and a structure that is not at its minimum (an
        unconverged relaxation, an unstable compound rearranging) releases heat in the first
        picoseconds. With 100 steps on the demo's 0.25 ps of NVT that heat stayed: CHGNet MD of
        the demo's LiP2(S4Cl)3 averaged 1,086 K at an 800 K set point, and 858 K with this rule.
        """
        if self.thermostat_damping_fs is not None:
            return float(self.thermostat_damping_fs)
        nvt_fs = (self.equilibrate_steps + self.production_steps) * self.timestep_fs
        return max(MIN_DAMPING_STEPS * self.timestep_fs, min(100.0 * self.timestep_fs, nvt_fs / 5.0))


@dataclass(frozen=True)
class AnalysisConfig:
    """From Li trajectories to D(T), the Arrhenius fit and sigma(300 K).

    Attributes:
        window_fractions: production windows, as fractions of the production run, whose D
            give the sigma range; the default with 40 ps production is the paper's 10, 20, 30,
            40 ps. The last must be 1.0 (the full run gives the reported mean).
        smoothing: MSD smoothing of pymatgen's ``DiffusionAnalyzer``: ``"max"`` (all time
            origins, fit from a lag of 1 ps; its default), ``"constant"`` or ``"none"``
            (displacement from the first frame; usable for runs shorter than 1 ps).
        min_obs: ``DiffusionAnalyzer``'s ``min_obs`` (smoothing ``"max"``).
        avg_nsteps: ``DiffusionAnalyzer``'s ``avg_nsteps`` (smoothing ``"constant"``).
        target_temperature_k: the extrapolation temperature, K.
        n_bootstrap: parametric-bootstrap draws for the statistical uncertainty of Ea and
            sigma (0: none).
        seed: seed of the bootstrap.
    """

    window_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    smoothing: str = "max"
    min_obs: int = 30
    avg_nsteps: int = 1000
    target_temperature_k: float = 300.0
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        given = _items("window fractions", self.window_fractions, MAX_WINDOWS)
        fractions = tuple(WINDOW_FRACTION.check("window fraction", f) for f in given)
        if not fractions or sorted(set(fractions)) != list(fractions) or fractions[-1] != 1.0:
            raise InvalidInput(
                f"window fractions must increase and end with 1.0, got {shown(self.window_fractions)}"
            )
        object.__setattr__(self, "window_fractions", fractions)
        if not isinstance(self.smoothing, str) or self.smoothing not in SMOOTHING_MODES:
            raise InvalidInput(f"smoothing must be one of {SMOOTHING_MODES}, got {shown(self.smoothing)}")
        MSD_SETTING.check("min_obs", self.min_obs)
        MSD_SETTING.check("avg_nsteps", self.avg_nsteps)
        TEMPERATURE_K.check("target temperature", self.target_temperature_k)
        BOOTSTRAP_DRAWS.check("bootstrap draws", self.n_bootstrap)
        SEED.check("seed", self.seed)


@dataclass(frozen=True)
class ValidationConfig:
    """Everything stage 7 needs besides the structure and the backend.

    Attributes:
        backend: ``"mlip"`` (CHGNet through ASE) or ``"vasp"``.
        device: torch device of the MLIP (``"cpu"``, ``"cuda"``; None: CUDA when present).
        relax: relaxation settings.
        supercell: MD cell size.
        md: the MD protocol.
        analysis: the diffusion analysis.
    """

    backend: str = "mlip"
    device: str | None = None
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    supercell: SupercellConfig = field(default_factory=SupercellConfig)
    md: MDConfig = field(default_factory=MDConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {shown(self.backend)}; choose from {', '.join(BACKENDS)}")
        if self.device is not None and not (
            isinstance(self.device, str) and re.fullmatch(r"cpu|mps|cuda(:[0-9]{1,3})?", self.device)
        ):
            raise InvalidInput(f"device must be cpu, cuda, cuda:N or mps, got {shown(self.device)}")
        if len(self.md.temperatures_k) < 2:
            raise InvalidInput(
                f"sigma(300 K) needs an Arrhenius fit over two or more temperatures, got "
                f"{list(self.md.temperatures_k)}"
            )
        if self.analysis.smoothing == "max" and self.md.production_ps * min(self.analysis.window_fractions) <= 1.0:
            shortest = self.md.production_ps * min(self.analysis.window_fractions)
            raise InvalidInput(
                f"the shortest production window is {shortest:g} ps, but smoothing 'max' fits "
                "MSD from a lag of 1 ps; lengthen production, drop short windows, or use "
                "smoothing 'none'"
            )


def window_lengths_ps(md: MDConfig, analysis: AnalysisConfig) -> Sequence[float]:
    """The production windows in ps (e.g. 10, 20, 30, 40)."""
    return tuple(md.production_ps * f for f in analysis.window_fractions)
