"""Stage 7: relax -> stability -> MD at each temperature -> D(T) -> Ea -> sigma(300 K).

:func:`validate_structure` is the stage function the CLI, the gRPC DFT runner and a campaign
step all call. The backend and the reference hull are passed in (loaded once by the caller).
With a ``workdir`` a run is resumable: the relaxation is kept in ``relax.json``, each
temperature's MD checkpoints in ``md_<T>K.npz``, and the result in ``result.json``; running
again with the same structure and settings continues where the last run stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pymatgen.core import Structure

from htvs.atomic import write_json_atomic
from htvs.errors import InvalidInput
from htvs.prototypes.readers import structure_from_json
from htvs.thermo import ReferenceHull
from htvs.validation.backends import Backend
from htvs.validation.config import ValidationConfig
from htvs.validation.flags import validation_flags
from htvs.validation.transport import conductivity_from_trajectories
from htvs.validation.inputs import check_structure, make_supercell
from htvs.validation.md import checkpoint_step
from htvs.validation.records import (
    MDTrajectory,
    ProgressCallback,
    RelaxResult,
    StopHook,
    ValidationCancelled,
    ValidationProgress,
    ValidationResult,
    never_stop,
    no_progress,
)
from htvs.validation.stability import HULL_NOTE, MLIP_NOTE, assess_stability

RELAX_FILE = "relax.json"
RESULT_FILE = "result.json"


def checkpoint_name(temperature_k: float) -> str:
    """File name of the MD checkpoint at ``temperature_k``, e.g. ``md_600K.npz``."""
    return f"md_{temperature_k:g}K.npz"


def _fingerprint(structure: Structure, config: ValidationConfig) -> str:
    """sha256 of the input structure and the relaxation settings (what relax.json depends on)."""
    payload = json.dumps(
        {"structure": structure.as_dict(), "relax": asdict(config.relax), "backend": config.backend},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _relax_or_resume(
    backend: Backend,
    structure: Structure,
    config: ValidationConfig,
    workdir: Path | None,
    should_stop: StopHook,
) -> RelaxResult:
    path = workdir / RELAX_FILE if workdir is not None else None
    key = _fingerprint(structure, config)
    if path is not None and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") != key:
            raise InvalidInput(
                f"work directory {workdir} holds a run of another structure or other relaxation "
                "settings; use another --workdir or empty it"
            )
        return RelaxResult(
            structure=structure_from_json(saved["structure"]),
            energy_ev=float(saved["energy_ev"]),
            converged=bool(saved["converged"]),
            n_steps=int(saved["n_steps"]),
            max_force_ev_per_angstrom=float(saved["max_force_ev_per_angstrom"]),
        )
    relaxed = backend.relax(structure, config.relax, workdir=workdir, should_stop=should_stop)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            {
                "fingerprint": key,
                "structure": relaxed.structure.as_dict(),
                "energy_ev": relaxed.energy_ev,
                "converged": relaxed.converged,
                "n_steps": relaxed.n_steps,
                "max_force_ev_per_angstrom": relaxed.max_force_ev_per_angstrom,
            },
            path,
        )
    return relaxed


def validate_structure(
    structure: Structure,
    config: ValidationConfig,
    backend: Backend,
    hull: ReferenceHull,
    *,
    structure_id: str = "structure",
    workdir: str | Path | None = None,
    progress: ProgressCallback = no_progress,
    should_stop: StopHook = never_stop,
) -> ValidationResult:
    """Validate one structure: relax, stability against ``hull``, MD, conductivity.

    Args:
        structure: an ordered Li-containing structure.
        config: the stage's settings (``config.backend`` should name ``backend``).
        backend: a loaded backend (:func:`htvs.validation.backends.load_backend`).
        hull: the reference hull (``ReferenceHull.bundled()``).
        structure_id: the caller's identifier, reported as ``id``.
        workdir: directory of checkpoints and results (None: nothing written, no resume).
        progress: called with a :class:`ValidationProgress` after the relaxation, after
            every MD chunk and at the end.
        should_stop: checked before the relaxation and between MD chunks; True raises
            :class:`ValidationCancelled` (checkpoints written so far are kept).

    Raises:
        InvalidInput: a structure that cannot be validated (disordered, no Li, too large a
            supercell, elements outside the reference data), or a workdir of another run.
        ModelNotReady: the backend cannot run.
        ValidationCancelled: ``should_stop`` returned True.
    """
    structure = check_structure(structure, structure_id)
    work = Path(workdir) if workdir is not None else None
    md = config.md
    temps = md.temperatures_k
    total_md = md.total_steps * len(temps)

    progress(ValidationProgress("relax", f"relaxing {structure.composition.reduced_formula} ({backend.name})"))
    relaxed = _relax_or_resume(backend, structure, config, work, should_stop)
    stability = assess_stability(hull, relaxed)
    supercell = make_supercell(relaxed.structure, config.supercell)
    progress(
        ValidationProgress(
            "relax",
            f"relaxed in {relaxed.n_steps} steps (converged: {relaxed.converged}); E_f "
            f"{stability.e_form_ev_per_atom:.3f} eV/atom, E_hull {stability.e_above_hull_ev_per_atom:.3f} "
            f"eV/atom; MD cell {len(supercell)} atoms",
            step=relaxed.n_steps,
            total_steps=config.relax.max_steps,
        )
    )

    trajectories: list[MDTrajectory] = []
    for index, temperature in enumerate(temps):
        before = index * md.total_steps

        def on_chunk(phase: str, step: int, total: int, current_t: float, *, _t=temperature, _b=before) -> None:
            progress(
                ValidationProgress(
                    "md",
                    f"{_t:g} K {phase}: step {step}/{total}, T = {current_t:.0f} K",
                    temperature_k=_t,
                    phase=phase,
                    step=step,
                    total_steps=total,
                    fraction=(_b + step) / total_md,
                )
            )

        checkpoint = work / checkpoint_name(temperature) if work is not None else None
        if checkpoint is not None and checkpoint_step(checkpoint) >= md.total_steps:
            on_chunk("done", md.total_steps, md.total_steps, temperature)
        trajectories.append(
            backend.run_md(
                supercell,
                temperature,
                md,
                seed=md.seed + index,
                checkpoint=checkpoint,
                on_chunk=on_chunk,
                should_stop=should_stop,
            )
        )

    progress(ValidationProgress("analysis", "MSD -> D(T) -> Arrhenius -> sigma(300 K)", fraction=1.0))
    conductivity = conductivity_from_trajectories(trajectories, config.analysis)
    notes = [MLIP_NOTE, HULL_NOTE] if backend.name == "mlip" else [HULL_NOTE]
    for window, reason in conductivity.skipped_windows:
        notes.append(f"production window {window:g} ps skipped: {reason}")
    # an unconverged relaxation, a temperature off its set point ...: flags, not notes
    flags = validation_flags(structure, relaxed, trajectories, conductivity, config.relax.fmax_ev_per_angstrom)
    result = ValidationResult(
        id=structure_id,
        backend=backend.name,
        relax=relaxed,
        stability=stability,
        conductivity=conductivity,
        supercell_atoms=len(supercell),
        notes=tuple(notes),
        flags=flags,
    )
    if work is not None:
        write_json_atomic(result.to_dict(), work / RESULT_FILE)
    verdict = "trusted" if result.trusted else f"{len(flags)} flag(s): {flags[0].code}" + (", ..." if len(flags) > 1 else "")
    progress(ValidationProgress("done", f"sigma(300 K) = {conductivity.sigma_mean_mS_cm:.3g} mS/cm; {verdict}",
                                fraction=1.0))
    return result


__all__ = ["ValidationCancelled", "checkpoint_name", "validate_structure"]
