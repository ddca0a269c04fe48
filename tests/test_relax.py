"""htvs.relax: the CHGNet hull on one energy scale, batched relaxation, ``htvs relax``."""

from __future__ import annotations

import json
import math

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet")


@pytest.fixture(scope="module")
def model():
    import torch

    from htvs.validation.mlip import shared_chgnet

    torch.set_num_threads(1)
    return shared_chgnet("cpu")


@pytest.fixture(scope="module")
def hull(model, tmp_path_factory):
    from htvs.relax.reference import ChgnetHull

    return ChgnetHull(model, cache_dir=tmp_path_factory.mktemp("chgnet-hull"))


def _rocksalt_licl(a: float = 5.14) -> Structure:
    return Structure(Lattice.cubic(a), ["Li", "Li", "Li", "Li", "Cl", "Cl", "Cl", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                      [0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0]])


def _primitive_licl(a: float = 5.14) -> Structure:
    return _rocksalt_licl(a).get_primitive_structure()


@pytest.mark.slow
def test_known_compound_relaxes_onto_the_hull(model, hull):
    from htvs.relax.batch import BatchRelaxConfig
    from htvs.relax.pipeline import relax_and_assess

    start = _primitive_licl(5.4)  # 5 % too large
    start.perturb(0.03)
    [outcome] = relax_and_assess([("LiCl", start)], model, hull, BatchRelaxConfig(max_steps=60))
    assert outcome.error is None and outcome.converged
    assert abs(outcome.stability.e_above_hull_ev_per_atom) <= 0.03
    assert outcome.stability.decomposition == (("LiCl", 1.0),)
    assert outcome.stability.e_form_ev_per_atom < -1.5  # LiCl: MP -2.1 eV/atom
    assert outcome.structure.volume < start.volume
    # cached per chemical system, with the model key in the path
    from htvs.relax.reference import model_key

    cached = hull.cache_dir / "Cl-Li.json"
    assert cached.is_file() and model_key() in str(cached)
    doc = json.loads(cached.read_text())
    assert {p["formula"] for p in doc["phases"]} >= {"Li", "Cl2", "LiCl"}


def test_strained_structure_is_above_the_hull(model, hull):
    from htvs.relax.batch import BatchRelaxConfig
    from htvs.relax.pipeline import relax_and_assess

    # a hand-made unstable structure: LiCl compressed by 15 % in length, not relaxed
    [outcome] = relax_and_assess([("squeezed", _primitive_licl(4.4))], model, hull, BatchRelaxConfig(max_steps=0))
    assert outcome.error is None and not outcome.converged
    assert outcome.stability.e_above_hull_ev_per_atom > 0.1
    # the same energy scale: E_hull is the energy above the hull phase, per atom
    relaxed = hull.stability(_primitive_licl(), -100.0 * 2, "x")
    assert relaxed.e_above_hull_ev_per_atom < 0 and relaxed.decomposition == (("LiCl", 1.0),)


def test_dft_elemental_reference_for_an_element_the_snapshot_lacks(hull):
    from htvs.relax.reference import DFT_ELEMENT_PREFIX

    assert "S" not in hull.index.elemental and "S" in hull.index.elements
    sulfur = [p for p in hull.phases(["S"]) if p.formula == "S"]
    assert sulfur and sulfur[0].material_id.startswith(DFT_ELEMENT_PREFIX)


def test_refusals_name_the_value(model, hull):
    from htvs.errors import InvalidInput
    from htvs.relax.pipeline import relax_and_assess

    with pytest.raises(InvalidInput, match="7 elements"):
        hull.check_system(["Li", "Na", "K", "Rb", "Cs", "Cl", "Br"])
    with pytest.raises(InvalidInput, match=r"\['Og'\]|Og"):
        hull.check_system(["Li", "Og"])
    no_li = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    disordered = Structure(Lattice.cubic(4.0), [{"Li": 0.5, "Na": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big = _rocksalt_licl().make_supercell(3)
    outcomes = relax_and_assess([("no-li", no_li), ("disordered", disordered), ("big", big),
                                 ("unreadable", "unreadable: not a CIF")], model, hull, max_atoms=100)
    assert [o.structure for o in outcomes] == [None] * 4
    assert "no Li" in outcomes[0].error
    assert "disorder" in outcomes[1].error.lower() or "partial" in outcomes[1].error.lower()
    assert "216 sites" in outcomes[2].error and "max_atoms = 100" in outcomes[2].error
    assert outcomes[3].error == "unreadable: not a CIF"


def test_collapsing_relaxation_is_reported_not_raised(model):
    from htvs.relax.batch import BatchRelaxConfig, relax_batch

    collapsed = Structure(Lattice.cubic(5.0), ["Li", "Cl"], [[0, 0, 0], [0.08, 0, 0]])  # 0.4 Å apart
    good = _primitive_licl()
    bad_result, good_result = relax_batch([collapsed, good], model, BatchRelaxConfig(max_steps=2))
    assert bad_result.error is not None and "Å apart" in bad_result.error and bad_result.structure is None
    assert good_result.error is None and math.isfinite(good_result.energy_ev)


@pytest.mark.slow
def test_batched_agrees_with_one_by_one(model):
    from htvs.relax.batch import BatchRelaxConfig, relax_batch
    from htvs.validation.config import RelaxConfig
    from htvs.validation.mlip import MlipBackend

    starts = []
    for i, a in enumerate((5.0, 5.3)):
        s = _primitive_licl(a)
        s.perturb(0.02 * (i + 1))
        starts.append(s)
    batched = relax_batch(starts, model, BatchRelaxConfig(max_steps=25, batch_size=2))
    backend = MlipBackend(model=model)
    for start, result in zip(starts, batched):
        single = backend.relax(start, RelaxConfig(max_steps=25))
        assert result.error is None
        assert abs(result.energy_per_atom_ev - single.energy_per_atom_ev) <= 0.002  # eV/atom
        assert result.n_steps == single.n_steps


@pytest.mark.slow
def test_cli_relaxes_good_files_and_reports_bad_ones(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from htvs.cli import app

    start = _primitive_licl(5.3)
    good = tmp_path / "Li Cl (good).cif"
    good.write_text(start.to(fmt="cif"))
    bad = tmp_path / "bad.cif"
    bad.write_text("not a cif")
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["relax", str(good), str(bad), "--max-steps", "30", "--out", str(out),
                                      "--cache", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["relaxed"] == 1 and doc["failed"] == 1
    first, second = doc["results"]
    assert first["formula"] == "LiCl" and abs(first["e_above_hull_eV_per_atom"]) < 0.05
    assert (out / "Li_Cl_good_relaxed.cif").is_file()
    assert "bad.cif" in second["error"]
    result = CliRunner().invoke(app, ["relax", str(bad), "--cache", str(cache)])
    assert result.exit_code == 2


def test_reference_energies_are_read_back_from_the_cache(hull) -> None:
    from htvs.relax.reference import ChgnetHull

    class NoModel:
        def predict_structure(self, *args, **kwargs):
            raise AssertionError("the cached chemical system must not call the model")

    hull.phases(["Li", "Cl"])  # computed (or already cached) by the shared fixture
    again = ChgnetHull(NoModel(), cache_dir=hull.cache_root, records=hull._records)
    assert again.cache_dir == hull.cache_dir
    assert [(p.formula, p.energy_per_atom_ev) for p in again.phases(["Cl", "Li"])] == [
        (p.formula, p.energy_per_atom_ev) for p in hull.phases(["Li", "Cl"])]
    other_mode = ChgnetHull(NoModel(), cache_dir=hull.cache_root, mode="relaxed")
    assert other_mode.cache_dir != hull.cache_dir  # static and relaxed energies never mix
