"""Stage 7 without CHGNet: settings, structures, diffusion analysis, MD checkpoints, VASP I/O.

MD here runs on ASE's Lennard-Jones calculator (milliseconds per step), so the protocol,
checkpoints and resume are exercised without the MLIP; tests/test_validation_mlip.py runs
CHGNet. VASP is never run: inputs are compared with reference inputs and hand-made recorded
outputs are parsed (tests/data/validation/README.md), atomate2-style.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from htvs.errors import InvalidInput, ModelNotReady
from htvs.thermo import ReferenceHull
from htvs.validation import (
    AnalysisConfig,
    MDConfig,
    MDTrajectory,
    RelaxConfig,
    RelaxResult,
    SupercellConfig,
    ValidationCancelled,
    ValidationConfig,
    conductivity_from_trajectories,
    estimate_diffusivity,
    fit_arrhenius_sigma,
    formation_energy_per_atom,
    make_supercell,
    nernst_einstein_mS_cm,
    parse_temperatures,
    read_structure_file,
    run_md,
    validate_structure,
)
from htvs.validation.md import read_checkpoint
from htvs.validation.records import DiffusivityEstimate
from htvs.validation.stability import elemental_reference_energies
from htvs.validation.vasp import VaspBackend, md_input_sets, parse_md, parse_relax, relax_input_set, write_inputs

DATA = Path(__file__).parent / "data" / "validation"
VASP_DATA = DATA / "vasp" / "LiCl"
#: Set to 1 to rewrite the reference VASP inputs from the current code (then review the diff).
REGEN = os.environ.get("HTVS_REGEN_GOLDEN") == "1"


# --------------------------------------------------------------------------- helpers


def random_walk(d_cm2_s: float, n_li: int, n_frames: int, frame_fs: float, seed: int, t_k: float = 1000.0):
    """A trajectory of independent Gaussian random walkers with diffusivity ``d_cm2_s``.

    Per frame and Cartesian direction the step variance is 2 D dt (1 cm^2/s = 10 Å^2/fs).
    """
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, math.sqrt(2 * d_cm2_s * 10.0 * frame_fs), size=(n_frames - 1, n_li, 3))
    positions = np.concatenate([np.zeros((1, n_li, 3)), np.cumsum(steps, axis=0)])
    frac = np.random.default_rng(1).random((n_li + 8, 3))
    structure = Structure(Lattice.cubic(40.0), ["Li"] * n_li + ["O"] * 8, frac)
    return MDTrajectory(t_k, 2.0, int(frame_fs / 2), structure, positions, np.zeros((n_frames, 3)))


def licl() -> Structure:
    return read_structure_file(DATA / "LiCl.cif")


def lj_calculator():
    """Lennard-Jones whose forces are a pure function of the positions.

    ASE's LennardJones keeps a neighbour list with a skin between calls, so the order of the
    pair sums (and the last bit of the forces) depends on where the list was built; a
    resumed run would then differ from the uninterrupted one by rounding. Rebuilding the
    list at every call removes that history, as CHGNet (a new graph per call) does.
    """
    from ase.calculators.lj import LennardJones

    class FreshLennardJones(LennardJones):
        def calculate(self, *args, **kwargs):
            self.nl = None
            super().calculate(*args, **kwargs)

    return FreshLennardJones(sigma=2.29, epsilon=0.05, rc=4.5, smooth=True)


TINY_MD = MDConfig(
    temperatures_k=(800, 1200),
    heat_ps=0.02,
    equilibrate_ps=0.02,
    production_ps=0.2,
    record_every_steps=2,
    checkpoint_every_steps=25,
)


class LJBackend:
    """A stand-in MLIP: Lennard-Jones MD, and a 'relaxation' that keeps the structure with an
    energy 2 eV/atom below the MP elemental references (so E_f = -2 eV/atom)."""

    name = "mlip"

    def relax(self, structure, config, *, workdir=None, should_stop=lambda: False):
        refs = elemental_reference_energies()
        energy = sum(refs[site.specie.symbol] - 2.0 for site in structure)
        return RelaxResult(structure, energy, True, 0, 0.0)

    def run_md(self, structure, temperature_k, config, *, seed=None, checkpoint=None, on_chunk=None,
               should_stop=lambda: False):
        return run_md(structure, lj_calculator(), temperature_k, config, seed=seed, checkpoint=checkpoint,
                      on_chunk=on_chunk, should_stop=should_stop)


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


# --------------------------------------------------------------------------- settings and input


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("600,abc", "'abc'"),
        ("0,800", "'0'"),
        ("-300,800", "'-300'"),
        ("600,6000", "'6000'"),
        ("600,,800", "empty item"),
        ("", "no value"),
        ("600,600", "repeated"),
        ("nan,600", "'nan'"),
    ],
)
def test_bad_temperatures_are_named(text: str, named: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_temperatures(text)
    assert named in str(err.value)


def test_temperatures_are_sorted_floats() -> None:
    assert parse_temperatures("1200, 600,800") == (600.0, 800.0, 1200.0)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: MDConfig(heat_ps=-1), "heat time must be >= 0 ps, got -1"),
        (lambda: MDConfig(production_ps=-40), "production time must be > 0 ps, got -40"),
        (lambda: MDConfig(timestep_fs=0), "timestep must be >= 0.1 fs, got 0 (allowed: [0.1, 10] fs)"),
        (lambda: MDConfig(equilibrate_ps=float("inf")), "equilibrate time must be a finite number, got inf"),
        (lambda: SupercellConfig(min_length_angstrom=-8), "min supercell length must be >= 0 Å, got -8"),
        (lambda: SupercellConfig(max_atoms=0), "max atoms must be >= 1, got 0"),
        (lambda: RelaxConfig(fmax_ev_per_angstrom=-0.05), "fmax must be > 0 eV/Å, got -0.05"),
        (lambda: ValidationConfig(backend="gaussian"), "unknown backend 'gaussian'"),
        (lambda: ValidationConfig(md=MDConfig(temperatures_k=(900,))), "two or more temperatures"),
        (lambda: ValidationConfig(md=MDConfig(production_ps=2)), "smoothing 'max' fits MSD from a lag of 1 ps"),
        (lambda: AnalysisConfig(window_fractions=(0.5, 0.25, 1.0)), "must increase and end with 1.0"),
    ],
)
def test_bad_settings_are_named(build, named: str) -> None:
    with pytest.raises(InvalidInput) as err:
        build()
    assert named in str(err.value)


def test_paper_protocol_is_the_default() -> None:
    md = MDConfig()
    assert (md.heat_steps, md.equilibrate_steps, md.production_steps) == (1000, 2500, 20000)
    assert md.start_temperature_k == 100.0 and md.timestep_fs == 2.0
    assert all(600 <= t <= 1500 for t in md.temperatures_k)
    from htvs.validation.config import window_lengths_ps

    assert window_lengths_ps(md, AnalysisConfig()) == (10.0, 20.0, 30.0, 40.0)


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("malformed.cif", "malformed.cif: unreadable CIF"),
        ("LiNaCl2_disordered.cif", "disordered: 4 sites with mixed species"),
        ("NaCl.cif", "NaCl contains no Li"),
        ("missing.cif", "does not exist"),
    ],
)
def test_bad_structures_are_refused_with_the_reason(name: str, named: str) -> None:
    with pytest.raises(InvalidInput) as err:
        read_structure_file(DATA / name)
    assert named in str(err.value)


def test_supercell_reaches_the_minimum_length_and_respects_the_cap() -> None:
    cell = licl()  # 8 atoms, a = 5.14 Å
    assert len(make_supercell(cell, SupercellConfig(min_length_angstrom=8.0))) == 64
    assert len(make_supercell(cell, SupercellConfig(min_length_angstrom=0.0))) == 8
    assert len(make_supercell(cell, SupercellConfig(min_length_angstrom=0.0, min_atoms=20))) == 32
    with pytest.raises(InvalidInput, match="has 216 atoms, more than max atoms 100"):
        make_supercell(cell, SupercellConfig(min_length_angstrom=12.0, max_atoms=100))


# --------------------------------------------------------------------------- diffusion


def test_random_walk_diffusivity_is_recovered_within_5_percent() -> None:
    """2,000 walkers over 40 ps (50 fs frames): the Li-bootstrap error is ~1.7 %."""
    true_d = 1.0e-5
    estimate = estimate_diffusivity(random_walk(true_d, 2000, 801, 50.0, seed=7))
    assert estimate.diffusivity_cm2_s == pytest.approx(true_d, rel=0.05)
    assert 0.005 < estimate.diffusivity_std_cm2_s / true_d < 0.04  # a calibrated, not a vanishing, error
    assert estimate.window_ps == pytest.approx(40.0)


def test_nernst_einstein_against_a_hand_calculation() -> None:
    """sigma = n e^2 D / (k_B T) for 8 Li in a 10 Å cube at 1000 K with D = 1e-5 cm^2/s.

    n = 8 / (10 Å)^3 = 8 / 1e-21 cm^3 = 8e21 cm^-3;
    e^2 / (k_B T) = (1.602176634e-19 C)^2 / (1.380649e-23 J/K * 1000 K) = 1.8592488e-18 C^2/J;
    cm^-3 * C^2/J * cm^2/s = C^2 / (J s cm) = S/cm, so
    sigma = 8e21 * 1.8592488e-18 * 1e-5 = 0.14873990 S/cm = 148.73990 mS/cm.
    """
    structure = Structure(Lattice.cubic(10.0), ["Li"] * 8 + ["O"] * 4, np.random.default_rng(0).random((12, 3)))
    e, k_b = 1.602176634e-19, 1.380649e-23
    hand = 8 / 1e-21 * e**2 / (k_b * 1000.0) * 1e-5 * 1000.0  # mS/cm
    assert hand == pytest.approx(148.73990, rel=1e-6)
    assert nernst_einstein_mS_cm(1e-5, structure, 1000.0) == pytest.approx(hand, rel=1e-9)


def test_arrhenius_fit_recovers_ea_and_extrapolates() -> None:
    structure = Structure(Lattice.cubic(10.0), ["Li"] * 8 + ["O"] * 4, np.random.default_rng(0).random((12, 3)))
    k_b = 8.617333262e-05
    ea, d0 = 0.25, 1e-3
    estimates = [
        DiffusivityEstimate(t, 40.0, d0 * math.exp(-ea / (k_b * t)), 0.0, 0.0) for t in (600.0, 800.0, 1000.0, 1200.0)
    ]
    fit = fit_arrhenius_sigma(estimates, structure, 300.0)
    assert fit.activation_energy_ev == pytest.approx(ea, rel=1e-6)
    d300 = d0 * math.exp(-ea / (k_b * 300.0))
    assert fit.diffusivity_target_cm2_s == pytest.approx(d300, rel=1e-6)
    assert fit.sigma_target_mS_cm == pytest.approx(nernst_einstein_mS_cm(d300, structure, 300.0), rel=1e-9)


def test_windows_give_the_range_and_the_bootstrap_an_uncertainty() -> None:
    k_b = 8.617333262e-05
    trajectories = [
        random_walk(1e-3 * math.exp(-0.3 / (k_b * t)), 200, 401, 50.0, seed=int(t), t_k=t)
        for t in (600.0, 900.0, 1200.0)
    ]
    result = conductivity_from_trajectories(trajectories, AnalysisConfig())
    assert [fit.window_ps for fit in result.fits] == pytest.approx([5.0, 10.0, 15.0, 20.0])
    sigmas = [fit.sigma_target_mS_cm for fit in result.fits]
    assert result.sigma_low_mS_cm == min(sigmas) and result.sigma_high_mS_cm == max(sigmas)
    assert result.sigma_mean_mS_cm == sigmas[-1]
    assert result.activation_energy_ev == pytest.approx(0.3, abs=0.03)
    assert 0 < result.activation_energy_std_ev < 0.05 and 0 < result.sigma_std_log10 < 0.5


def test_too_short_a_run_for_max_smoothing_is_named() -> None:
    short = random_walk(1e-5, 20, 51, 10.0, seed=0)  # 0.5 ps
    with pytest.raises(InvalidInput, match="too short for smoothing 'max'"):
        estimate_diffusivity(short)
    assert estimate_diffusivity(short, AnalysisConfig(smoothing="none")).diffusivity_cm2_s > 0


# --------------------------------------------------------------------------- stability


def test_formation_energy_uses_the_mp_elemental_references() -> None:
    refs = elemental_reference_energies()
    energy = 4 * refs["Li"] + 4 * refs["Cl"] - 8 * 2.0
    assert formation_energy_per_atom("Li4Cl4", energy) == pytest.approx(-2.0)
    assert refs["Li"] == pytest.approx(-1.9089, abs=1e-3)  # MP's bcc Li, eV/atom


# --------------------------------------------------------------------------- MD and checkpoints


def test_md_protocol_heats_and_records_unwrapped_li(tmp_path: Path) -> None:
    cell = make_supercell(licl(), SupercellConfig(min_length_angstrom=0.0, min_atoms=16))
    chunks = []
    config = MDConfig(**{**TINY_MD.__dict__, "checkpoint_every_steps": 10})
    trajectory = run_md(cell, lj_calculator(), 1000.0, config, checkpoint=tmp_path / "md.npz",
                        on_chunk=lambda *args: chunks.append(args))
    assert trajectory.li_positions.shape == (TINY_MD.production_steps // 2 + 1, 8, 3)
    assert trajectory.duration_ps == pytest.approx(0.2)
    assert [c[0] for c in chunks][:3] == ["heat", "equilibrate", "production"] and chunks[-1][0] == "done"
    assert 600 < trajectory.mean_temperature_k < 1400
    assert chunks[-1][1] == chunks[-1][2] == TINY_MD.total_steps
    saved = read_checkpoint(tmp_path / "md.npz")
    assert int(saved["step"]) == TINY_MD.total_steps and saved["eta"].shape == (3,)


def test_killed_md_resumes_bit_for_bit(tmp_path: Path) -> None:
    cell = licl()
    reference = run_md(cell, lj_calculator(), 1200.0, TINY_MD, checkpoint=tmp_path / "whole.npz")
    path = tmp_path / "killed.npz"
    for stop in (7, 23, 61):  # inside heating, equilibration and production
        with pytest.raises(ValidationCancelled, match=f"after {stop} of"):
            run_md(cell, lj_calculator(), 1200.0, TINY_MD, checkpoint=path, stop_after_steps=stop)
        assert int(read_checkpoint(path)["step"]) == stop
    (tmp_path / ".killed.npz.tmp").write_bytes(b"half-written garbage")  # a crash mid-write
    resumed = run_md(cell, lj_calculator(), 1200.0, TINY_MD, checkpoint=path)
    np.testing.assert_array_equal(resumed.li_positions, reference.li_positions)
    whole, killed = read_checkpoint(tmp_path / "whole.npz"), read_checkpoint(path)
    for key in ("positions", "momenta", "eta", "p_eta", "framework_mean"):
        np.testing.assert_array_equal(killed[key], whole[key])
    again = run_md(cell, lj_calculator(), 1200.0, TINY_MD, checkpoint=path)  # finished: no step
    np.testing.assert_array_equal(again.li_positions, reference.li_positions)


def test_should_stop_is_honoured_between_chunks_and_other_settings_refused(tmp_path: Path) -> None:
    path = tmp_path / "md.npz"
    with pytest.raises(ValidationCancelled, match="after 25 of"):
        run_md(licl(), lj_calculator(), 800.0, TINY_MD, checkpoint=path, should_stop=lambda: True)
    other = MDConfig(**{**TINY_MD.__dict__, "timestep_fs": 1.0})
    with pytest.raises(InvalidInput, match="other settings .*timestep_fs"):
        run_md(licl(), lj_calculator(), 800.0, other, checkpoint=path)


def test_stage_end_to_end_with_a_stand_in_backend(tmp_path: Path, hull: ReferenceHull) -> None:
    config = ValidationConfig(
        supercell=SupercellConfig(min_length_angstrom=0.0), md=TINY_MD, analysis=AnalysisConfig(smoothing="none")
    )
    reports = []
    result = validate_structure(licl(), config, LJBackend(), hull, structure_id="LiCl", workdir=tmp_path,
                                progress=reports.append)
    doc = result.to_dict()
    assert doc["id"] == "LiCl" and doc["e_form"] == pytest.approx(-2.0)
    assert doc["phi_ox"] > doc["phi_red"] >= 0
    assert set(doc["diffusivity"]) == {"800", "1200"}
    sigma = doc["sigma_300K_mS_cm"]
    assert all(math.isfinite(sigma[k]) for k in ("mean", "low", "high"))
    assert sigma["low"] <= sigma["mean"] <= sigma["high"]
    assert {r.stage for r in reports} == {"relax", "md", "analysis", "done"}
    assert reports[-1].fraction == 1.0
    assert (tmp_path / "result.json").is_file() and (tmp_path / "md_800K.npz").is_file()
    with pytest.raises(InvalidInput, match="holds a run of another structure"):
        validate_structure(make_supercell(licl(), SupercellConfig(min_length_angstrom=6)), config, LJBackend(),
                           hull, workdir=tmp_path)


# --------------------------------------------------------------------------- VASP inputs and outputs


def _compare_inputs(generated: Path, reference: Path) -> None:
    from pymatgen.io.vasp import Incar, Kpoints, Poscar

    if REGEN:
        shutil.rmtree(reference, ignore_errors=True)
        shutil.copytree(generated, reference)
    assert sorted(p.name for p in generated.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert Incar.from_file(generated / "INCAR") == Incar.from_file(reference / "INCAR")
    assert str(Kpoints.from_file(generated / "KPOINTS")) == str(Kpoints.from_file(reference / "KPOINTS"))
    assert (generated / "POTCAR.spec").read_text() == (reference / "POTCAR.spec").read_text()
    ours, theirs = Poscar.from_file(generated / "POSCAR").structure, Poscar.from_file(reference / "POSCAR").structure
    assert ours.species == theirs.species
    np.testing.assert_allclose(ours.lattice.matrix, theirs.lattice.matrix, atol=1e-6)
    # same sites up to a lattice translation: a coordinate of 0.9999999 may be written as 1.0 or 0.0
    shift = ours.frac_coords - theirs.frac_coords
    np.testing.assert_allclose(shift - np.round(shift), 0.0, atol=1e-6)


def test_vasp_relax_inputs_match_the_reference(tmp_path: Path) -> None:
    from pymatgen.io.vasp import Incar

    write_inputs(relax_input_set(licl(), RelaxConfig()), tmp_path / "relax", potcar_spec=True)
    _compare_inputs(tmp_path / "relax", VASP_DATA / "relax_inputs")
    incar = Incar.from_file(tmp_path / "relax" / "INCAR")
    assert (incar["ENCUT"], incar["ISIF"], incar["IBRION"], incar["EDIFFG"]) == (520, 3, 2, -0.05)  # MP relax + fmax
    assert (tmp_path / "relax" / "POTCAR.spec").read_text().split() == ["Li_sv", "Cl"]  # MP's POTCAR choice


def test_vasp_md_inputs_match_the_reference(tmp_path: Path) -> None:
    from pymatgen.io.vasp import Incar

    md = MDConfig(temperatures_k=(1000, 1200), heat_ps=0.2, equilibrate_ps=0.2, production_ps=1.0)
    cell = make_supercell(licl(), SupercellConfig(min_length_angstrom=8.0))
    sets = md_input_sets(cell, 1000.0, md)
    assert list(sets) == ["heat", "equilibrate", "production"]
    for name, input_set in sets.items():
        write_inputs(input_set, tmp_path / name, potcar_spec=True)
        _compare_inputs(tmp_path / name, VASP_DATA / "md_1000K_inputs" / name)
    heat = Incar.from_file(tmp_path / "heat" / "INCAR")
    production = Incar.from_file(tmp_path / "production" / "INCAR")
    assert (heat["SMASS"], heat["TEBEG"], heat["TEEND"], heat["NSW"], heat["POTIM"]) == (-1, 100, 1000, 100, 2)
    assert (production["SMASS"], production["TEBEG"], production["NSW"], production["NBLOCK"]) == (0, 1000, 500, 5)
    assert heat["IBRION"] == production["IBRION"] == 0


def test_recorded_vasp_relaxation_is_parsed_with_mp2020_corrections(hull: ReferenceHull) -> None:
    relaxed = parse_relax(VASP_DATA / "relax_outputs")
    # e_0_energy -28.9738 eV + MP2020 Cl anion correction 4 x -0.614 eV (pymatgen's MP2020 table)
    assert relaxed.energy_ev == pytest.approx(-28.9738 - 4 * 0.614, abs=1e-3)
    assert relaxed.converged and relaxed.n_steps == 2 and relaxed.max_force_ev_per_angstrom == pytest.approx(0.01)
    assert relaxed.structure.lattice.abc == pytest.approx((5.16, 5.16, 5.16))
    from htvs.validation import assess_stability

    stability = assess_stability(hull, relaxed)
    assert stability.formula == "LiCl" and stability.e_form_ev_per_atom == pytest.approx(-2.05, abs=1e-3)


def test_recorded_vasp_md_is_unwrapped() -> None:
    trajectory = parse_md(VASP_DATA / "md_1000K_production_outputs", 1000.0, MDConfig())
    assert trajectory.li_positions.shape == (6, 4, 3)
    shift = trajectory.li_positions[-1] - trajectory.li_positions[0]
    np.testing.assert_allclose(shift[0], [2.57, 0, 0], atol=1e-6)  # crossed the cell face at x = 1
    np.testing.assert_allclose(shift[1], [0, -1.285, 0], atol=1e-6)


def test_vasp_backend_needs_a_command_and_potcars(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="HTVS_VASP_COMMAND"):
        VaspBackend.from_env({})
    with pytest.raises(ModelNotReady, match="PMG_VASP_PSP_DIR"):
        VaspBackend.from_env({"HTVS_VASP_COMMAND": "vasp_std", "PMG_VASP_PSP_DIR": str(tmp_path / "none")})
    backend = VaspBackend.from_env({"HTVS_VASP_COMMAND": "mpirun -n 4 vasp_std", "PMG_VASP_PSP_DIR": str(tmp_path)})
    assert backend.command == ("mpirun", "-n", "4", "vasp_std")


FAKE_VASP = """
import shutil, sys
from pathlib import Path
recorded = Path(sys.argv[1])
incar = Path("INCAR").read_text()
if "IBRION = 2" in incar:
    shutil.copy(recorded / "relax_outputs" / "vasprun.xml", "vasprun.xml")
else:
    shutil.copy(recorded / "md_1000K_production_outputs" / "XDATCAR", "XDATCAR")
shutil.copy("POSCAR", "CONTCAR")
"""


def test_vasp_backend_runs_the_stage_with_a_recording_in_place_of_vasp(tmp_path: Path, hull: ReferenceHull) -> None:
    """A stand-in 'VASP' copies the recorded outputs; inputs are real MP inputs (POTCAR.spec)."""
    script = tmp_path / "fake_vasp.py"
    script.write_text(FAKE_VASP)
    backend = VaspBackend((sys.executable, str(script), str(VASP_DATA)), str(tmp_path), write_potcar=False)
    md = MDConfig(temperatures_k=(800, 1000), heat_ps=0.01, equilibrate_ps=0.01, production_ps=0.05)
    config = ValidationConfig(backend="vasp", supercell=SupercellConfig(min_length_angstrom=0.0), md=md,
                              analysis=AnalysisConfig(smoothing="none", window_fractions=(1.0,)))
    result = validate_structure(licl(), config, backend, hull, structure_id="LiCl", workdir=tmp_path / "run")
    assert result.stability.e_form_ev_per_atom == pytest.approx(-2.05, abs=1e-3)
    assert result.conductivity is not None and math.isfinite(result.conductivity.sigma_mean_mS_cm)
    production = tmp_path / "run" / "md_800K" / "production"
    assert (production / "htvs_done").is_file() and (production / "POTCAR.spec").is_file()
    assert (production / "POSCAR").read_text() == (tmp_path / "run" / "md_800K" / "equilibrate" / "CONTCAR").read_text()


# --------------------------------------------------------------------------- MLIP device (no GPU, no CHGNet load)


@pytest.mark.parametrize("device", ["tpu", "gpu", "", "cuda:", "cuda:x", "CPU"])
def test_mlip_device_name_is_checked_before_anything_loads(device: str) -> None:
    from htvs.validation.mlip import MlipBackend, resolve_device

    with pytest.raises(InvalidInput, match=f"device must be cpu, cuda, cuda:N or mps, got {device!r}"):
        resolve_device(device)
    with pytest.raises(InvalidInput, match="device must be"):
        MlipBackend(device=device, threads=None)


def test_mlip_cuda_without_a_gpu_is_named(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from htvs.validation.mlip import MlipBackend, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu" and resolve_device(None) == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ModelNotReady, match=f"device {device!r} asked for, but torch sees no CUDA device"):
            resolve_device(device)
    with pytest.raises(ModelNotReady, match="sees no CUDA device"):
        MlipBackend(device="cuda", threads=None)


def test_md_benchmark_step_cap() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from bench_md import SUPERCELLS, capped_steps
    finally:
        sys.path.pop(0)
    assert capped_steps(20, 0.5, None, 3) == 20  # no cap: always --steps
    assert capped_steps(20, 0.5, 4.0, 3) == 8
    assert capped_steps(20, 0.01, 4.0, 3) == 20  # never more than asked
    assert capped_steps(20, 10.0, 4.0, 3) == 3 and capped_steps(2, 10.0, 4.0, 3) == 2  # the floor, within --steps
    assert {n: int(np.prod(rep)) * 8 for n, rep in SUPERCELLS.items()} == {n: n for n in SUPERCELLS}
