"""Stage 7 (validate): relax, stability, MD, diffusion and conductivity of a few candidates.

Typical use::

    from htvs.thermo import ReferenceHull
    from htvs.validation import ValidationConfig, load_backend, read_structure_file, validate_structure

    config = ValidationConfig()                      # the paper's protocol
    backend = load_backend("mlip")                    # CHGNet 0.3.0, weights from the wheel
    result = validate_structure(read_structure_file("Li3ClSO4.cif"), config, backend,
                                ReferenceHull.bundled(), structure_id="Li3ClSO4", workdir="run/")
    result.to_dict()   # e_form, e_above_hull, phi_red/ox, D(T), Ea, sigma(300 K) mean/low/high
    result.trusted     # False when a sanity flag was raised (result.flags: code and reason)

Modules: :mod:`~htvs.validation.config` (settings), :mod:`~htvs.validation.inputs` (structures,
supercells), :mod:`~htvs.validation.mlip` (CHGNet), :mod:`~htvs.validation.vasp` (MP inputs,
parsing), :mod:`~htvs.validation.md` (protocol, checkpoints), :mod:`~htvs.validation.transport`
(D, Arrhenius, Nernst–Einstein), :mod:`~htvs.validation.stability` (E_f, E_hull, window),
:mod:`~htvs.validation.flags` (sanity flags), :mod:`~htvs.validation.pipeline` (the stage
function). Nothing heavy (torch, chgnet, ase) is imported until a backend or an MD run needs it.
"""

from __future__ import annotations

from htvs.validation.backends import Backend, load_backend
from htvs.validation.config import (
    AnalysisConfig,
    MDConfig,
    RelaxConfig,
    SupercellConfig,
    ValidationConfig,
    parse_temperatures,
)
from htvs.validation.transport import (
    conductivity_from_trajectories,
    estimate_diffusivity,
    fit_arrhenius_sigma,
    nernst_einstein_mS_cm,
)
from htvs.validation.flags import FlagBounds, validation_flags
from htvs.validation.inputs import make_supercell, read_structure_file, structure_from_cif_text
from htvs.validation.md import run_md
from htvs.validation.records import (
    ArrheniusFit,
    ConductivityResult,
    DiffusivityEstimate,
    Flag,
    MDTrajectory,
    RelaxResult,
    StabilityResult,
    ValidationCancelled,
    ValidationProgress,
    ValidationResult,
)
from htvs.validation.pipeline import validate_structure
from htvs.validation.stability import assess_stability, formation_energy_per_atom

__all__ = [
    "AnalysisConfig",
    "ArrheniusFit",
    "Backend",
    "ConductivityResult",
    "DiffusivityEstimate",
    "Flag",
    "FlagBounds",
    "MDConfig",
    "MDTrajectory",
    "RelaxConfig",
    "RelaxResult",
    "StabilityResult",
    "SupercellConfig",
    "ValidationCancelled",
    "ValidationConfig",
    "ValidationProgress",
    "ValidationResult",
    "assess_stability",
    "conductivity_from_trajectories",
    "estimate_diffusivity",
    "fit_arrhenius_sigma",
    "formation_energy_per_atom",
    "load_backend",
    "make_supercell",
    "nernst_einstein_mS_cm",
    "parse_temperatures",
    "read_structure_file",
    "run_md",
    "structure_from_cif_text",
    "validate_structure",
    "validation_flags",
]
