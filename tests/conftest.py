"""Shared fixtures: heavy reference objects are built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled_prototypes():
    """The bundled prototype set (OBELiX + pymatgen Li structures)."""
    from htvs.prototypes import load_prototypes

    return load_prototypes("bundled")
