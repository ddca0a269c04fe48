"""Shared fixtures: heavy reference objects are built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Small prototype files (CIF, pymatgen JSON, POSCAR; some deliberately bad).
PROTOTYPE_FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"


@pytest.fixture(scope="session")
def bundled_prototypes():
    """The bundled prototype set (OBELiX + pymatgen Li structures)."""
    from htvs.prototypes import load_prototypes

    return load_prototypes("bundled")


def folder_prototype(name: str, file: str):
    """A Prototype from a file of :data:`PROTOTYPE_FOLDER`, oxidation states removed."""
    from pymatgen.core import Structure

    from htvs.prototypes import Prototype

    structure = Structure.from_file(PROTOTYPE_FOLDER / file)
    structure.remove_oxidation_states()
    return Prototype.from_structure(name, "test", structure)


@pytest.fixture(scope="module")
def prototypes():
    """LiFePO4 and LiZnPS4 from the test folder, by id."""
    protos = [folder_prototype("LiFePO4", "LiFePO4.json"), folder_prototype("LiZnPS4", "LiZnPS4.cif")]
    return {p.id: p for p in protos}
