"""Sanity flags of stage 7, the MSD curves of a result, and the thermostat's time constant.

MD runs on ASE's Lennard-Jones (milliseconds per step), as in tests/test_validation.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from htvs.thermo import ReferenceHull
from htvs.validation import AnalysisConfig, MDConfig, SupercellConfig, ValidationConfig, make_supercell, run_md
from htvs.validation import validate_structure
from htvs.validation.flags import FlagBounds, validation_flags
from htvs.validation.records import (
    MAX_MSD_POINTS,
    ConductivityResult,
    DiffusivityEstimate,
    MDTrajectory,
    RelaxResult,
)
from test_validation import TINY_MD, LJBackend, licl, lj_calculator

#: The demo's MD lengths (configs/demo.yaml): 0.05 ps heating, 0.05 ps equilibration, 0.2 ps production.
DEMO_MD = MDConfig(temperatures_k=(800, 1200), heat_ps=0.05, equilibrate_ps=0.05, production_ps=0.2)


def conductivity(ea: float = 0.3, sigma: float = 1.0, temperatures=(600.0, 800.0, 1000.0)) -> ConductivityResult:
    d = tuple(DiffusivityEstimate(t, 1.0, 1e-6, 1e-7, 1.0) for t in temperatures)
    return ConductivityResult(d, (), ea, math.nan, sigma, sigma, sigma, math.nan)


def trajectory(cell: Structure, t_set: float = 800.0, t_mean: float = 800.0, rms: float = 0.3,
               final: np.ndarray | None = None) -> MDTrajectory:
    n_li = sum(site.specie.symbol == "Li" for site in cell)
    return MDTrajectory(t_set, 2.0, 5, cell, np.zeros((3, n_li, 3)), np.zeros((3, 3)), t_mean,
                        framework_rms_displacement=np.array([0.0, 0.1, rms]),
                        final_positions=cell.cart_coords.copy() if final is None else final)


def codes(flags) -> list[str]:
    return [f.code for f in flags]


def test_a_sound_result_has_no_flag() -> None:
    cell = licl()
    relaxed = RelaxResult(cell, -10.0, True, 12, 0.01)
    runs = [trajectory(cell, t, t * 1.05) for t in (600.0, 800.0, 1000.0)]
    assert validation_flags(cell, relaxed, runs, conductivity(), 0.05) == ()


def test_each_flag_names_its_value_and_bound() -> None:
    cell = licl()
    relaxed = RelaxResult(cell, -10.0, False, 50, 0.28)
    collapsed = cell.cart_coords.copy()
    collapsed[1] = collapsed[0] + [0.3, 0.0, 0.0]  # two atoms 0.3 Å apart at the end of a run
    runs = [trajectory(cell, 800.0, 1414.0), trajectory(cell, 1200.0, 1250.0, rms=2.4, final=collapsed)]
    fit = conductivity(ea=-0.015, sigma=4625.0, temperatures=(800.0, 1200.0))
    flags = validation_flags(cell, relaxed, runs, fit, 0.1)
    assert codes(flags) == ["relax_unconverged", "md_temperature", "atoms_collapsed", "framework_displaced",
                            "arrhenius", "arrhenius", "sigma_unphysical"]
    reasons = [f.reason for f in flags]
    assert "max force 0.280 eV/Å after 50 steps, above fmax 0.1 eV/Å" in reasons[0]
    assert "1414 K at the 800 K set point, 77 % off (bound 10 %)" in reasons[1]
    assert "end of the 1200 K run" in reasons[2] and "0.3" in reasons[2]
    assert "2.40 Å RMS" in reasons[3] and "1.5 Å" in reasons[3]
    assert "-0.015 eV" in reasons[4] and "2 temperatures, fewer than the 3 required" in reasons[5]
    assert "4625 mS/cm outside (0, 1000] mS/cm" in reasons[6]


def test_non_finite_sigma_and_a_blown_up_cell_are_flagged() -> None:
    cell = licl()
    blown = cell.copy()
    blown.scale_lattice(cell.volume * 2.5)
    flags = validation_flags(cell, RelaxResult(blown, -1.0, True, 3, 0.0), [], conductivity(sigma=math.inf), 0.05)
    assert codes(flags) == ["volume_out_of_range", "sigma_unphysical"]
    assert "factor 2.5" in flags[0].reason and "not a finite number" in flags[1].reason
    crushed = Structure(Lattice.cubic(1.5), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flags = validation_flags(crushed, RelaxResult(crushed, -1.0, True, 3, 0.0), [], None, 0.05,
                             FlagBounds(max_volume_ratio=10))
    assert codes(flags) == ["volume_out_of_range"] and "Å^3/atom" in flags[0].reason


def test_stage_result_carries_flags_trusted_and_msd_curves(tmp_path: Path) -> None:
    config = ValidationConfig(supercell=SupercellConfig(min_length_angstrom=0.0), md=TINY_MD,
                              analysis=AnalysisConfig(smoothing="none"))
    result = validate_structure(licl(), config, LJBackend(), ReferenceHull.bundled(), structure_id="LiCl")
    doc = result.to_dict()
    json.dumps(doc, allow_nan=False)  # the DFT runner service sends it this way
    assert doc["trusted"] is False and doc["trusted"] == result.trusted
    assert {"code": "arrhenius", "reason": "Arrhenius fit over 2 temperatures, fewer than the 3 required"} in doc["flags"]
    assert all(set(flag) == {"code", "reason"} for flag in doc["flags"])
    assert set(doc["msd_curves"]) == {"800", "1200"}
    for curve in doc["msd_curves"].values():
        assert set(curve) == {"t_ps", "msd_li_A2", "mean_temperature_K"}
        assert 2 < len(curve["t_ps"]) == len(curve["msd_li_A2"]) <= MAX_MSD_POINTS
        assert curve["t_ps"] == sorted(curve["t_ps"]) and curve["mean_temperature_K"] > 0
    assert not any("temperature" in note or "relaxation" in note for note in doc["notes"])  # flags now


def test_long_msd_curves_are_thinned_to_the_limit() -> None:
    from htvs.validation.records import thinned

    kept = thinned(np.arange(1001.0))
    assert len(kept) <= MAX_MSD_POINTS and kept[0] == 0 and kept[-1] == 1000


def test_validation_table_row_has_flags_trusted_and_curves() -> None:
    from htvs.campaign.validate_stage import VALIDATION_COLUMNS, _row

    candidate = pd.Series({"id": "x", "formula": "LiCl", "origin": "substitution", "p_superionic": 0.6})
    doc = {"formula": "LiCl", "e_above_hull": 0.0, "sigma_300K_mS_cm": {"mean": 1.0},
           "flags": [{"code": "a", "reason": "first"}, {"code": "b", "reason": "second"}], "trusted": False,
           "msd_curves": {"800": {"t_ps": [0.0, 0.1], "msd_li_A2": [0.0, 1.0], "mean_temperature_K": 801.0}}}
    row = _row(candidate, doc, None, 0.1)
    assert {"flags", "trusted", "msd_curves_json"} <= set(VALIDATION_COLUMNS) and set(row) == set(VALIDATION_COLUMNS)
    assert row["flags"] == "first; second" and row["trusted"] is False
    assert json.loads(row["msd_curves_json"])["800"]["mean_temperature_K"] == 801.0
    clean = _row(candidate, {**doc, "flags": [], "trusted": True}, None, 0.1)
    assert clean["flags"] == "" and clean["trusted"] is True
    failed = _row(candidate, None, "refused", 0.1)
    assert failed["trusted"] is False and failed["flags"] == "" and failed["msd_curves_json"] == "{}"


def test_cli_summary_prints_the_flags(capsys) -> None:
    from htvs.cli_validate import _print_summary

    payload = {"id": "x", "formula": "LiCl", "backend": "mlip", "e_form": -1.0, "e_above_hull": 0.0, "phi_red": 0.0,
               "phi_ox": 4.0, "diffusivity": {}, "activation_energy_eV": -0.015, "activation_energy_std_eV": None,
               "sigma_300K_mS_cm": {"mean": 4625.0, "low": None, "high": None}, "notes": [],
               "flags": [{"code": "arrhenius", "reason": "activation energy -0.015 eV: an Arrhenius fit needs Ea > 0 eV"}],
               "trusted": False}
    _print_summary(payload)
    out = capsys.readouterr().out
    assert "not trusted" in out and "flag arrhenius" in out and "-0.015 eV" in out


# --------------------------------------------------------------------------- the thermostat


def test_default_thermostat_time_constant_fits_the_protocol() -> None:
    assert MDConfig().damping_fs == 200.0  # the paper's protocol: 100 steps of 2 fs
    assert DEMO_MD.damping_fs == pytest.approx(50.0)  # a fifth of the demo's 0.25 ps of NVT
    tiny = MDConfig(heat_ps=0.01, equilibrate_ps=0.01, production_ps=0.04)
    assert tiny.damping_fs == pytest.approx(20.0)  # never under 10 time steps
    assert MDConfig(thermostat_damping_fs=300.0).damping_fs == 300.0


def heating_lj(rate_per_fs: float):
    """Lennard-Jones plus a force along each atom's momentum: it pumps heat in at
    ``2 * rate * E_kin``, as a structure sliding into a lower minimum does during MD."""
    from ase import units

    base = type(lj_calculator())

    class Heating(base):
        def calculate(self, atoms=None, properties=None, system_changes=None):
            super().calculate(atoms, properties, system_changes)
            self.results["forces"] = self.results["forces"] + rate_per_fs / units.fs * self.atoms.get_momenta()

    return Heating(sigma=2.29, epsilon=0.05, rc=4.5, smooth=True)


@pytest.mark.parametrize("temperature_k", [800.0, 1200.0])
def test_demo_length_md_holds_its_temperature_against_released_heat(temperature_k: float) -> None:
    """The demo's CHGNet MD ran 36 % hot (1,086 K at 800 K) with a 200 fs thermostat on 0.25 ps of
    NVT. With the same heat source, the old time constant runs hot here too; the default holds
    the mean production temperature within 10 % of the set point."""
    cell = make_supercell(licl(), SupercellConfig(min_length_angstrom=0.0, min_atoms=64))
    held = run_md(cell, heating_lj(1e-3), temperature_k, DEMO_MD)
    assert abs(held.mean_temperature_k - temperature_k) < 0.10 * temperature_k
    old = MDConfig(**{**DEMO_MD.__dict__, "thermostat_damping_fs": 100 * DEMO_MD.timestep_fs})
    hot = run_md(cell, heating_lj(1e-3), temperature_k, old)
    assert hot.mean_temperature_k > 1.15 * temperature_k
