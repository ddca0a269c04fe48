"""The campaign's ``relax`` stage on a tiny structures table: relaxed structures passed on,
thresholds applied, errors recorded, origin kept, disabled = pass-through, config checks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet")


def _licl(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Li"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                      [0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0]]).get_primitive_structure()


def _rows() -> list[dict]:
    from htvs.structures.parallel import structure_arrays

    good, squeezed = _licl(5.2), _licl(4.0)
    no_li = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    disordered = Structure(Lattice.cubic(4.0), [{"Li": 0.5, "Na": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows = []
    for row_id, structure, origin, arrays in (("good", good, "substitution", True),
                                              ("squeezed", squeezed, "generated", True),
                                              ("no-li", no_li, "substitution", True),
                                              ("disordered", disordered, "substitution", False)):
        lattice, species, coords = structure_arrays(structure) if arrays else (None, None, None)
        rows.append({"id": row_id, "formula": structure.composition.reduced_formula, "prototype_id": "p1",
                     "origin": origin, "duplicate_of": None, "cif": structure.to(fmt="cif"),
                     "lattice_matrix": lattice, "species": species, "frac_coords": coords})
    rows.append({**rows[0], "id": "good-twin", "duplicate_of": "good", "cif": None, "lattice_matrix": None,
                 "species": None, "frac_coords": None})
    return rows


def _structures_manifest(store):
    from htvs.store import run_cached
    from htvs.structures.parallel import COLUMNS, _ARROW_TYPES

    rows = _rows()
    table = pa.table({c: pa.array([r[c] for r in rows], type=_ARROW_TYPES.get(c, pa.string())) for c in COLUMNS})

    def step(store, prefix):
        store.put_table(f"{prefix}/structures.parquet", table)
        store.put_json(f"{prefix}/errors.json", [])
        return [f"{prefix}/structures.parquet", f"{prefix}/errors.json"], {"structures": len(rows)}

    return run_cached(store, "structures", {"test": "relax"}, [], step), table


def _config(tmp_path: Path, **relax):
    from htvs.campaign.config import parse_campaign

    return parse_campaign({"relax": {"cache_dir": str(tmp_path / "hull"), **relax}})


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_relax_stage_keeps_stable_relaxed_structures_and_records_errors(tmp_path: Path) -> None:
    from htvs.campaign.graph import output_key
    from htvs.campaign.stages import RELAX_COLUMNS, run_relax
    from htvs.store import open_store

    store = open_store(tmp_path / "store")
    structures, before = _structures_manifest(store)
    config = _config(tmp_path, enabled=True, max_steps=2, batch_size=4)
    manifest = run_relax(store, config, structures)
    report = store.get_table(output_key(manifest, "relax", "relax")).to_pandas().set_index("id")
    assert list(report.reset_index().columns) == list(RELAX_COLUMNS)
    assert set(report.index) == {"good", "squeezed", "no-li", "disordered"}
    assert report.loc["good", "stable"] and report.loc["good", "e_above_hull"] < 0.1
    assert report.loc["squeezed", "error"] is None and not report.loc["squeezed", "stable"]
    assert report.loc["squeezed", "e_above_hull"] > 0.1  # above the 0.1 eV/atom threshold
    assert report.loc["squeezed", "origin"] == "generated" and report.loc["good", "origin"] == "substitution"
    assert "no Li" in report.loc["no-li", "error"]
    assert "disorder" in report.loc["disordered", "error"].lower() or "partial" in report.loc["disordered", "error"]
    assert manifest.row_counts["relaxed"] == 2 and manifest.row_counts["relaxed_stable"] == 1
    assert manifest.row_counts["errors"] == 2
    passed = store.get_table(output_key(manifest, "relax", "structures")).to_pandas()
    assert list(passed["id"]) == ["good", "good-twin"]  # the stable one and its duplicate
    assert set(passed["origin"]) == {"substitution"}
    relaxed = Structure.from_str(passed.loc[0, "cif"], fmt="cif")
    assert abs(relaxed.volume - _licl(5.2).volume) > 1e-3  # the RELAXED structure is passed on
    assert passed.loc[0, "lattice_matrix"] is not None


def test_relax_stage_disabled_passes_structures_through(tmp_path: Path) -> None:
    from htvs.campaign.graph import output_key
    from htvs.campaign.stages import run_relax
    from htvs.store import open_store

    store = open_store(tmp_path / "store")
    structures, before = _structures_manifest(store)
    manifest = run_relax(store, _config(tmp_path), structures)
    after = store.get_table(output_key(manifest, "relax", "structures"))
    assert after.equals(before)
    assert manifest.row_counts["relaxed"] == 0
    assert store.get_table(output_key(manifest, "relax", "relax")).num_rows == 0


def test_relax_stage_cap_passes_the_rest_unrelaxed(tmp_path: Path) -> None:
    from htvs.campaign.graph import output_key
    from htvs.campaign.stages import run_relax
    from htvs.store import open_store

    store = open_store(tmp_path / "store")
    structures, before = _structures_manifest(store)
    manifest = run_relax(store, _config(tmp_path, enabled=True, max_structures=1, max_steps=2), structures)
    report = store.get_table(output_key(manifest, "relax", "relax")).to_pandas().set_index("id")
    assert "beyond relax.max_structures = 1" in report.loc["squeezed", "error"]
    passed = store.get_table(output_key(manifest, "relax", "structures")).to_pandas()
    assert {"good", "squeezed", "no-li", "disordered"} <= set(passed["id"])
    assert manifest.row_counts["passed_unrelaxed"] == 3
    assert passed.set_index("id").loc["squeezed", "cif"] == before.to_pandas().set_index("id").loc["squeezed", "cif"]


def test_relax_section_is_checked() -> None:
    from htvs.campaign.config import parse_campaign
    from htvs.errors import InvalidInput

    assert parse_campaign({}).relax.enabled is False
    assert parse_campaign({}).relax.max_e_above_hull_ev_per_atom == 0.1
    with pytest.raises(InvalidInput, match=r"relax.fmax_ev_per_angstrom.*eV/Å"):
        parse_campaign({"relax": {"fmax_ev_per_angstrom": 0}})
    with pytest.raises(InvalidInput, match="relax"):
        parse_campaign({"relax": {"max_steps": -1}})
    with pytest.raises(InvalidInput, match="relax"):
        parse_campaign({"relax": {"nope": 1}})
    from htvs.campaign.config import resolve_paths

    resolved = resolve_paths(parse_campaign({"relax": {"cache_dir": "hull-cache"}}), Path("/campaigns"))
    assert resolved.relax.cache_dir == Path("/campaigns/hull-cache")


def test_relax_stage_in_the_graph() -> None:
    from htvs.campaign.graph import STAGES_BY_NAME, STEP_NAMES

    assert STEP_NAMES.index("structures") < STEP_NAMES.index("relax") < STEP_NAMES.index("conductivity")
    assert STAGES_BY_NAME["conductivity"].needs == ("relax",)
    assert STAGES_BY_NAME["relax"].service == "dft"


def test_the_dft_service_hosts_relax() -> None:
    from htvs.grpc.stage_service import hosted_stages

    assert {"relax", "validate"} <= set(hosted_stages("dft"))
