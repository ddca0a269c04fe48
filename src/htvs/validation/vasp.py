"""The ``vasp`` backend: Materials-Project-compatible VASP inputs, a configured VASP run, parsing.

Inputs come from pymatgen's input sets, so they are MP's:

* relaxation: ``MPRelaxSet`` (PBE(+U), 520 eV, ISIF 3) with ``EDIFFG = -fmax`` and
  ``NSW = max_steps``;
* MD at T: three ``MPMDSet`` runs in their own folders, each started from the previous one's
  CONTCAR (positions and velocities): ``heat`` (TEBEG = start T, TEEND = T, velocity scaling
  ``SMASS = -1`` every ``NBLOCK = rescale_every_steps``), ``equilibrate`` and ``production``
  (Nosé thermostat ``SMASS = 0``; production writes XDATCAR every ``record_every_steps``).

Energies: ``Vasprun.get_computed_entry`` then ``MaterialsProject2020Compatibility`` (POTCAR hashes
not checked), so they are on the scale of the MP elemental references used for E_f.

Running needs a VASP command (``HTVS_VASP_COMMAND``, e.g. ``"mpirun -n 16 vasp_std"``) and
pymatgen's POTCAR directory (``PMG_VASP_PSP_DIR``); without them the backend is refused with
ModelNotReady. Tests generate the inputs (with ``POTCAR.spec`` instead of POTCAR, as atomate2's
tests do), compare them with reference inputs and parse hand-made recorded outputs; no VASP is
run. A VASP step cannot be interrupted midway here: cancellation is honoured between steps,
and a finished step (``htvs_done`` marker) is never run again.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput, ModelNotReady, StageFailed
from htvs.validation.config import MDConfig, RelaxConfig
from htvs.validation.md import ChunkCallback
from htvs.validation.records import MDTrajectory, RelaxResult, StopHook, ValidationCancelled, never_stop

DONE_MARKER = "htvs_done"
MD_STEPS = ("heat", "equilibrate", "production")
LI = "Li"


def relax_input_set(structure: Structure, config: RelaxConfig):
    """pymatgen ``MPRelaxSet`` for ``structure`` with the stage's force criterion and step limit."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    incar = {"EDIFFG": -float(config.fmax_ev_per_angstrom), "NSW": max(int(config.max_steps), 1)}
    if not config.relax_cell:
        incar["ISIF"] = 2
    return MPRelaxSet(structure, user_incar_settings=incar)


def md_input_sets(structure: Structure, temperature_k: float, config: MDConfig) -> dict[str, object]:
    """``{"heat"|"equilibrate"|"production": MPMDSet}`` of the protocol at ``temperature_k``.

    Steps of zero length are left out. ``structure`` is the MD supercell.
    """
    from pymatgen.io.vasp.sets import MPMDSet

    def md_set(start: float, end: float, nsteps: int, incar: dict) -> object:
        return MPMDSet(
            structure,
            start_temp=float(start),
            end_temp=float(end),
            nsteps=int(nsteps),
            time_step=float(config.timestep_fs),
            user_incar_settings=incar,
        )

    sets: dict[str, object] = {}
    if config.heat_steps:
        sets["heat"] = md_set(
            config.start_temperature_k,
            temperature_k,
            config.heat_steps,
            {"SMASS": -1, "NBLOCK": config.rescale_every_steps},
        )
    if config.equilibrate_steps:
        sets["equilibrate"] = md_set(temperature_k, temperature_k, config.equilibrate_steps, {"SMASS": 0})
    sets["production"] = md_set(
        temperature_k, temperature_k, config.production_steps, {"SMASS": 0, "NBLOCK": config.record_every_steps}
    )
    return sets


def write_inputs(input_set, directory: str | Path, *, potcar_spec: bool = False) -> Path:
    """Write INCAR, KPOINTS, POSCAR and POTCAR (or ``POTCAR.spec``, the symbols) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        input_set.write_input(str(directory), potcar_spec=potcar_spec)
    return directory


def _vasprun(directory: Path):
    from pymatgen.io.vasp.outputs import Vasprun

    path = directory / "vasprun.xml"
    if not path.is_file():
        raise StageFailed(f"no vasprun.xml in {directory}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
        except Exception as exc:  # noqa: BLE001 - a truncated vasprun raises many kinds
            raise StageFailed(f"cannot parse {path}: {type(exc).__name__}: {exc}") from exc


def mp2020_energy(entry) -> float:
    """Total energy (eV) of a ComputedEntry after ``MaterialsProject2020Compatibility``.

    Raises:
        StageFailed: the scheme refuses the entry (e.g. an incompatible functional or U).
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed = MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry)
    if processed is None:
        raise StageFailed(f"MaterialsProject2020Compatibility refused the entry of {entry.composition.formula}")
    return float(processed.energy)


def parse_relax(directory: str | Path) -> RelaxResult:
    """The relaxed structure and MP2020-corrected energy from ``directory/vasprun.xml``."""
    vasprun = _vasprun(Path(directory))
    entry = vasprun.get_computed_entry(inc_structure=True)
    forces = np.asarray(vasprun.ionic_steps[-1].get("forces", np.zeros((1, 3))), dtype=np.float64)
    structure = vasprun.final_structure.copy()
    structure.remove_oxidation_states()
    return RelaxResult(
        structure=structure,
        energy_ev=mp2020_energy(entry),
        converged=bool(vasprun.converged_ionic),
        n_steps=len(vasprun.ionic_steps),
        max_force_ev_per_angstrom=float(np.sqrt((forces**2).sum(axis=1)).max()) if forces.size else 0.0,
    )


def unwrapped_cartesian(frac_frames: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian positions (Å) of wrapped fractional frames, unwrapped by the minimum image.

    Assumes no atom moves more than half a cell between consecutive frames.
    """
    steps = np.diff(frac_frames, axis=0)
    steps -= np.round(steps)
    unwrapped = np.concatenate([frac_frames[:1], frac_frames[:1] + np.cumsum(steps, axis=0)])
    return unwrapped @ lattice


def parse_md(directory: str | Path, temperature_k: float, config: MDConfig) -> MDTrajectory:
    """The production trajectory of ``directory/XDATCAR`` (frames every ``record_every_steps``)."""
    from pymatgen.io.vasp.outputs import Xdatcar

    path = Path(directory) / "XDATCAR"
    if not path.is_file():
        raise StageFailed(f"no XDATCAR in {directory}")
    try:
        structures = Xdatcar(str(path)).structures
    except Exception as exc:  # noqa: BLE001
        raise StageFailed(f"cannot parse {path}: {type(exc).__name__}: {exc}") from exc
    if len(structures) < 2:
        raise StageFailed(f"{path} holds {len(structures)} frame(s); need >= 2")
    first = structures[0]
    lattice = first.lattice.matrix
    frac = np.array([s.frac_coords for s in structures])
    cart = unwrapped_cartesian(frac, lattice)
    is_li = np.array([site.specie.symbol == LI for site in first])
    if not is_li.any():
        raise InvalidInput(f"{path}: no Li in the trajectory")
    framework = cart[:, ~is_li].mean(axis=1) if (~is_li).any() else np.zeros((len(cart), 3))
    return MDTrajectory(
        temperature_k=float(temperature_k),
        timestep_fs=float(config.timestep_fs),
        record_every_steps=config.record_every_steps,
        structure=first,
        li_positions=cart[:, is_li],
        framework_displacement=framework - framework[:1],
        mean_temperature_k=float("nan"),
    )


@dataclass(frozen=True)
class VaspBackend:
    """Runs VASP with MP-compatible inputs in a work directory.

    Attributes:
        command: the VASP command line, split (e.g. ``["mpirun", "-n", "16", "vasp_std"]``).
        potcar_dir: pymatgen's POTCAR directory (``PMG_VASP_PSP_DIR``).
        write_potcar: write POTCAR files (True), or only ``POTCAR.spec`` with the symbols
            (False: for preparing inputs to run elsewhere, and for tests without POTCARs).
    """

    command: tuple[str, ...]
    potcar_dir: str
    write_potcar: bool = True
    name: str = "vasp"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> VaspBackend:
        """From ``HTVS_VASP_COMMAND`` and ``PMG_VASP_PSP_DIR``.

        Raises:
            ModelNotReady: either is unset, or the POTCAR directory does not exist.
        """
        env = os.environ if environ is None else environ
        command = env.get("HTVS_VASP_COMMAND", "").strip()
        potcars = env.get("PMG_VASP_PSP_DIR", "").strip()
        if not command:
            raise ModelNotReady("the vasp backend needs HTVS_VASP_COMMAND (e.g. 'mpirun -n 16 vasp_std')")
        if not potcars or not Path(potcars).is_dir():
            raise ModelNotReady(
                f"the vasp backend needs PMG_VASP_PSP_DIR pointing at pymatgen's POTCAR folder, got {potcars!r}"
            )
        return cls(tuple(shlex.split(command)), potcars)

    def _run(self, directory: Path) -> None:
        if (directory / DONE_MARKER).is_file():
            return
        log = directory / "vasp.out"
        with open(log, "w", encoding="utf-8") as handle:
            try:
                code = subprocess.run(self.command, cwd=directory, stdout=handle, stderr=subprocess.STDOUT).returncode
            except OSError as exc:
                raise ModelNotReady(f"cannot start VASP {' '.join(self.command)!r}: {exc}") from exc
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-500:]
            raise StageFailed(f"VASP exited with status {code} in {directory}: {tail}")
        (directory / DONE_MARKER).write_text("ok\n")

    def relax(
        self,
        structure: Structure,
        config: RelaxConfig,
        *,
        workdir: Path | None = None,
        should_stop: StopHook = never_stop,
    ) -> RelaxResult:
        if workdir is None:
            raise InvalidInput("the vasp backend needs a work directory (--workdir)")
        if should_stop():
            raise ValidationCancelled("stopped before the relaxation")
        directory = Path(workdir) / "relax"
        if not (directory / DONE_MARKER).is_file():
            write_inputs(relax_input_set(structure, config), directory, potcar_spec=not self.write_potcar)
        self._run(directory)
        return parse_relax(directory)

    def run_md(
        self,
        structure: Structure,
        temperature_k: float,
        config: MDConfig,
        *,
        seed: int | None = None,
        checkpoint: Path | None = None,
        on_chunk: ChunkCallback | None = None,
        should_stop: StopHook = never_stop,
    ) -> MDTrajectory:
        """Heat, equilibrate and produce in ``<checkpoint without suffix>/<step>`` folders.

        ``seed`` is unused: VASP draws its own initial velocities.
        """
        if checkpoint is None:
            raise InvalidInput("the vasp backend needs a work directory (--workdir)")
        root = Path(checkpoint).with_suffix("")
        sets = md_input_sets(structure, temperature_k, config)
        done_steps = 0
        previous: Path | None = None
        for name, input_set in sets.items():
            directory = root / name
            if not (directory / DONE_MARKER).is_file():
                if should_stop():
                    raise ValidationCancelled(f"VASP MD at {temperature_k:g} K stopped before {name}")
                write_inputs(input_set, directory, potcar_spec=not self.write_potcar)
                if previous is not None:  # continue from the last positions and velocities
                    (directory / "POSCAR").write_text((previous / "CONTCAR").read_text())
            self._run(directory)
            done_steps += int(input_set.incar["NSW"])  # type: ignore[attr-defined]
            if on_chunk is not None:
                on_chunk(name, done_steps, config.total_steps, float(temperature_k))
            previous = directory
        return parse_md(root / "production", temperature_k, config)
