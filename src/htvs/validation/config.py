"""Typed settings of stage 7 (validate): relaxation, supercell, MD protocol, diffusion analysis.

Defaults follow the paper's protocol (Du & Wang): NVT with a Nosé–Hoover thermostat, start at
100 K and heat to T by velocity scaling over 2 ps, equilibrate 5 ps, produce 40 ps with a 2 fs
step, at several T in 600–1500 K; sigma(300 K) from the Arrhenius extrapolation, its range from
production windows of 10, 20, 30 and 40 ps. Every length is configurable. Each config checks
itself on construction and raises :class:`~htvs.errors.InvalidInput` naming the offending value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from htvs.errors import InvalidInput, finite_number

#: Highest MD temperature accepted, K (above it every solid here is far beyond melting).
MAX_TEMPERATURE_K = 5000.0
#: The paper's temperatures lie in 600–1500 K; these are the default four.
DEFAULT_TEMPERATURES_K = (600.0, 800.0, 1000.0, 1200.0)
#: Backends :func:`htvs.validation.backends.load_backend` knows.
BACKENDS = ("mlip", "vasp")
#: MSD smoothing modes of pymatgen's ``DiffusionAnalyzer``.
SMOOTHING_MODES = ("max", "constant", "none")


def _number(name: str, value: object) -> float:
    """``value`` as a finite float, or InvalidInput naming ``name`` and the value."""
    return finite_number(name, value)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_temperature(value: object, name: str = "temperature") -> float:
    """A temperature in K within (0, ``MAX_TEMPERATURE_K``]; InvalidInput naming the value."""
    temperature = _number(f"{name} (K)", value)
    if temperature <= 0:
        raise InvalidInput(f"{name} must be > 0 K, got {value!r}")
    if temperature > MAX_TEMPERATURE_K:
        raise InvalidInput(f"{name} must be <= {MAX_TEMPERATURE_K:g} K, got {value!r}")
    return temperature


def parse_temperatures(text: str | Iterable[object]) -> tuple[float, ...]:
    """``"600,800,1000"`` (or a sequence) -> sorted distinct temperatures in K.

    Raises:
        InvalidInput: an empty list, a non-numeric item, a temperature <= 0 K or above
            ``MAX_TEMPERATURE_K``, or a repeated temperature; the message names the item.
    """
    items: list[object]
    if isinstance(text, str):
        items = [part.strip() for part in text.split(",")]
        if all(not part for part in items):
            raise InvalidInput(f"temperatures: no value in {text!r}; give e.g. 600,800,1000,1200")
        if any(not part for part in items):
            raise InvalidInput(f"temperatures: empty item in {text!r}")
    else:
        items = list(text)
    if not items:
        raise InvalidInput("temperatures: give at least one temperature in K")
    values = [check_temperature(item, f"temperature {item!r}") for item in items]
    if len(set(values)) != len(values):
        raise InvalidInput(f"temperatures: repeated value in {list(items)!r}")
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
        fmax = _number("fmax (eV/Å)", self.fmax_ev_per_angstrom)
        if fmax <= 0:
            raise InvalidInput(f"fmax must be > 0 eV/Å, got {self.fmax_ev_per_angstrom!r}")
        _integer("max relax steps", self.max_steps, 0)


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
        length = _number("min supercell length (Å)", self.min_length_angstrom)
        if length < 0:
            raise InvalidInput(f"min supercell length must be >= 0 Å, got {self.min_length_angstrom!r}")
        _integer("min atoms", self.min_atoms, 0)
        _integer("max atoms", self.max_atoms, 1)
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
        thermostat_damping_fs: Nosé–Hoover time constant, fs (None: 100 time steps, ASE's
            recommendation).
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
        step = _number("timestep (fs)", self.timestep_fs)
        if step <= 0:
            raise InvalidInput(f"timestep must be > 0 fs, got {self.timestep_fs!r}")
        if step > 10:
            raise InvalidInput(f"timestep must be <= 10 fs for Li dynamics, got {self.timestep_fs!r}")
        for name, value in (("heat", self.heat_ps), ("equilibrate", self.equilibrate_ps)):
            if _number(f"{name} time (ps)", value) < 0:
                raise InvalidInput(f"{name} time must be >= 0 ps, got {value!r}")
        if _number("production time (ps)", self.production_ps) <= 0:
            raise InvalidInput(f"production time must be > 0 ps, got {self.production_ps!r}")
        check_temperature(self.start_temperature_k, "start temperature")
        if self.thermostat_damping_fs is not None and _number(
            "thermostat damping (fs)", self.thermostat_damping_fs
        ) <= 0:
            raise InvalidInput(f"thermostat damping must be > 0 fs, got {self.thermostat_damping_fs!r}")
        _integer("thermostat chain", self.thermostat_chain, 1)
        _integer("rescale interval (steps)", self.rescale_every_steps, 1)
        _integer("record interval (steps)", self.record_every_steps, 1)
        _integer("checkpoint interval (steps)", self.checkpoint_every_steps, 1)
        _integer("seed", self.seed, 0)
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
        """The Nosé–Hoover time constant in use, fs."""
        if self.thermostat_damping_fs is not None:
            return float(self.thermostat_damping_fs)
        return 100.0 * self.timestep_fs


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
        fractions = tuple(_number("window fraction", f) for f in self.window_fractions)
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise InvalidInput(f"window fractions must lie in (0, 1], got {self.window_fractions!r}")
        if sorted(set(fractions)) != list(fractions) or fractions[-1] != 1.0:
            raise InvalidInput(
                f"window fractions must increase and end with 1.0, got {self.window_fractions!r}"
            )
        object.__setattr__(self, "window_fractions", fractions)
        if self.smoothing not in SMOOTHING_MODES:
            raise InvalidInput(f"smoothing must be one of {SMOOTHING_MODES}, got {self.smoothing!r}")
        _integer("min_obs", self.min_obs, 1)
        _integer("avg_nsteps", self.avg_nsteps, 1)
        check_temperature(self.target_temperature_k, "target temperature")
        _integer("bootstrap draws", self.n_bootstrap, 0)
        _integer("seed", self.seed, 0)


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
        if self.backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.device is not None and self.device not in ("cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise InvalidInput(f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
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
