"""Formation energy, energy above the reference hull and Li window of a relaxed compound.

E_f = (E_total - sum_i n_i mu_i) / N with mu_i the energy per atom of element i's Materials
Project ground-state reference entry (the bundled ``mp_elemental_reference_entries``, GGA/GGA+U
with the MP2020 scheme, 2023-02-07), then :func:`htvs.thermo.e_above_hull` and
:func:`htvs.thermo.electrochemical_window` against the project's reference hull.

Caveats (also in the result's notes):

* CHGNet 0.3.0 was trained on MPtrj energies with the MP2020 corrections applied, so its total
  energies sit on the scale of these references (the same recipe Matbench Discovery uses).
  Its energy error (~30 meV/atom MAE on MPtrj) is larger than many E_hull margins.
* The reference hull is MP v2018.10 formation energies (matbench ``mp_e_form``), computed with
  the legacy MaterialsProjectCompatibility corrections, not MP2020: anion corrections of
  oxides, sulfides and halides differ between the two schemes by up to ~0.1 eV/atom, so
  E_hull near 0 is uncertain at that level.
* VASP energies go through ``MaterialsProject2020Compatibility`` before the same formula.
"""

from __future__ import annotations

import functools
import gzip
import json
import math

from pymatgen.core import Composition

from htvs.errors import DataNotFound, InvalidInput
from htvs.thermo import ReferenceHull, e_above_hull, electrochemical_window
from htvs.validation.records import RelaxResult, StabilityResult

ELEMENTAL_REFERENCES = "mp/mp_elemental_reference_entries_2023-02-07.json.gz"

#: Caveat of results computed with the MLIP.
MLIP_NOTE = (
    "E_f uses CHGNet 0.3.0 energies (MP2020-compatible scale, ~0.03 eV/atom MAE) against MP "
    "2023 elemental references"
)
#: Caveat of every result.
HULL_NOTE = (
    "the reference hull is MP v2018.10 (legacy corrections); E_hull within ~0.1 eV/atom of 0 "
    "is uncertain"
)


@functools.cache
def elemental_reference_energies() -> dict[str, float]:
    """Energy per atom (eV) of each element's MP ground-state reference entry."""
    from htvs.datasets import data_path

    with gzip.open(data_path(ELEMENTAL_REFERENCES), "rt") as handle:
        entries = json.load(handle)
    out: dict[str, float] = {}
    for symbol, entry in entries.items():
        n_atoms = sum(float(v) for v in entry["composition"].values())
        energy = float(entry["energy"]) + float(entry.get("correction", 0.0))
        out[symbol] = energy / n_atoms
    return out


def formation_energy_per_atom(composition: Composition | str, energy_ev: float) -> float:
    """E_f (eV/atom) of ``composition`` at total energy ``energy_ev`` (eV, for that composition).

    Raises:
        InvalidInput: a non-finite energy, or an element without an MP reference entry.
    """
    comp = Composition(composition)
    if not math.isfinite(energy_ev):
        raise InvalidInput(f"energy of {comp.formula} must be finite, got {energy_ev!r}")
    refs = elemental_reference_energies()
    total = 0.0
    for element, amount in comp.items():
        symbol = element.symbol
        if symbol not in refs:
            raise DataNotFound(f"element {symbol} has no MP elemental reference energy")
        total += amount * refs[symbol]
    return (energy_ev - total) / comp.num_atoms


def assess_stability(hull: ReferenceHull, relaxed: RelaxResult) -> StabilityResult:
    """E_f, E_hull, decomposition and window of the relaxed structure.

    Raises:
        InvalidInput: an element outside the reference data, or no Li.
    """
    comp = relaxed.structure.composition
    e_form = formation_energy_per_atom(comp, relaxed.energy_ev)
    formula = comp.reduced_formula
    hull_result = e_above_hull(hull, formula, e_form)
    window = electrochemical_window(hull, formula, e_form)
    return StabilityResult(
        formula=formula,
        e_form_ev_per_atom=e_form,
        e_above_hull_ev_per_atom=hull_result.e_above_hull_ev_per_atom,
        decomposition=hull_result.decomposition,
        phi_red_v=window.phi_red_v,
        phi_ox_v=window.phi_ox_v,
        reduction_products=window.reduction_products,
        oxidation_products=window.oxidation_products,
    )
