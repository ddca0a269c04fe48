"""Regenerate the prototype-source test data in this folder (see README.md).

Run from the repository root: ``.venv/bin/python tests/data/prototypes/make_test_data.py``.
The output is committed; tests never run this script.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.io.vasp import Poscar

from htvs.datasets import load_obelix_cifs
from htvs.prototypes.readers import parse_cif

HERE = Path(__file__).parent
FOLDER = HERE / "folder"

#: (material id, source, energy above hull eV/atom, is_stable); ids and energies illustrative.
MP_DOCS: tuple[tuple[str, str, float, bool], ...] = (
    ("mp-19017", "pymatgen:LiFePO4", 0.0, True),
    ("mp-1101528", "pymatgen:Li3V2(PO4)3", 0.012, False),
    ("mp-753720", "obelix:mq1", 0.0, True),  # Li3SbS4, 16 atoms
    ("mp-11175", "obelix:i47", 0.0, True),  # LiZnPS4, 14 atoms
    ("mp-1211100", "obelix:y2l", 0.004, False),  # Li5AlS4, 20 atoms
    ("mp-15762", "obelix:l9v", 0.021, False),  # Li3AlF6, 120 atoms
    ("mp-1195718", "obelix:skm", 0.087, False),  # Li5BiO5, 22 atoms
)


def _pymatgen_structure(stem: str) -> Structure:
    text = resources.files("pymatgen.util.structures").joinpath(f"{stem}.json").read_text()
    return Structure.from_dict(json.loads(text))


def _structure(source: str) -> Structure:
    kind, name = source.split(":", 1)
    if kind == "pymatgen":
        return _pymatgen_structure(name)
    return parse_cif(_obelix_text(name))[0]


def _obelix_text(obelix_id: str) -> str:
    return next(c.text for c in load_obelix_cifs() if c.id == obelix_id)


def _summary_doc(material_id: str, source: str, e_hull: float, stable: bool) -> dict:
    structure = _structure(source)
    structure.remove_oxidation_states()
    structure.add_site_property("magmom", [0.0] * len(structure))
    return {
        "material_id": material_id,
        "formula_pretty": structure.composition.reduced_formula,
        "structure": structure.as_dict(),
        "energy_above_hull": e_hull,
        "is_stable": stable,
    }


def write_mp_response() -> None:
    docs = [_summary_doc(*row) for row in MP_DOCS]
    payload = {"data": docs, "meta": {"total_doc": len(docs), "max_limit": 1000}}
    with gzip.open(HERE / "mp_summary_response.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=None, sort_keys=True)


def write_folder() -> None:
    FOLDER.mkdir(exist_ok=True)
    # good inputs: one per reader
    (FOLDER / "LiZnPS4.cif").write_text(_obelix_text("i47"))
    (FOLDER / "LiFePO4.json").write_text(json.dumps(_pymatgen_structure("LiFePO4").as_dict()))
    lvp = _pymatgen_structure("Li3V2(PO4)3")
    entry = ComputedStructureEntry(lvp, energy=-300.0, entry_id="illustrative-1")
    with gzip.open(FOLDER / "Li3V2P3O12_entry.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(entry.as_dict(), fh)
    Poscar(parse_cif(_obelix_text("skm"))[0]).write_file(FOLDER / "POSCAR_Li5BiO5")
    # filtered out
    (FOLDER / "Li7BiO6_disordered.cif").write_text(_obelix_text("jqc"))
    (FOLDER / "Li2O.json").write_text(json.dumps(_pymatgen_structure("Li2O").as_dict()))
    (FOLDER / "SrTiO3.json").write_text(json.dumps(_pymatgen_structure("SrTiO3").as_dict()))
    # malformed
    (FOLDER / "broken.cif").write_text("data_broken\n_cell_length_a 5.0\nthis is not a CIF loop\n")
    (FOLDER / "truncated.json").write_text('{"lattice": {"matrix": [[1, 0, 0],')
    (FOLDER / "not_a_structure.json").write_text(json.dumps({"formula": "Li3PS4"}))
    (FOLDER / "notes.txt").write_text("not a structure file\n")


if __name__ == "__main__":
    write_mp_response()
    write_folder()
