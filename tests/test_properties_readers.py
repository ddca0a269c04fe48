"""Property-based tests of the structure readers (:mod:`htvs.prototypes.readers`).

Whatever text, JSON tree, CIF-like text or lattice they are given, the readers either return
structures with a sane cell (finite, lattice lengths 0.5-1000 Å, >= 1 Å^3 per site, at most the
site limit) or raise InvalidInput with a bounded message: never another exception, and never an
import of a module the input names (a probe module writes a file when imported).
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from htvs.errors import InvalidInput  # noqa: E402
from htvs.prototypes.readers import (  # noqa: E402
    DEFAULT_MAX_SITES,
    MAX_LATTICE_LENGTH_ANGSTROM,
    MIN_LATTICE_LENGTH_ANGSTROM,
    MIN_VOLUME_PER_SITE_ANGSTROM3,
    FileKind,
    parse_cif,
    parse_structures,
    structure_from_json,
)
from htvs.validation.inputs import structure_from_cif_text  # noqa: E402

pytestmark = [pytest.mark.timeout(120)]

MAX_MESSAGE = 2000

# A module that writes a marker file when imported, on sys.path for the whole module.
_PROBE_DIR = Path(tempfile.mkdtemp(prefix="htvs_probe_"))
PROBE = f"htvs_probe_{uuid.uuid4().hex[:12]}"
MARKER = _PROBE_DIR / "imported.txt"
(_PROBE_DIR / f"{PROBE}.py").write_text(
    f"from pathlib import Path\nPath({str(MARKER)!r}).write_text('imported')\nclass X:\n    pass\n"
)


@pytest.fixture(scope="module", autouse=True)
def probe_on_path():
    sys.path.insert(0, str(_PROBE_DIR))
    yield
    sys.path.remove(str(_PROBE_DIR))
    sys.modules.pop(PROBE, None)


def assert_nothing_imported() -> None:
    assert not MARKER.exists(), "a module named by the input was imported"
    assert PROBE not in sys.modules


def assert_sane(structure: Structure, max_sites: int = DEFAULT_MAX_SITES) -> None:
    assert isinstance(structure, Structure)
    assert 1 <= len(structure) <= max_sites
    matrix = structure.lattice.matrix
    assert np.all(np.isfinite(matrix)) and np.all(np.isfinite(structure.frac_coords))
    for length in np.linalg.norm(matrix, axis=1):
        assert MIN_LATTICE_LENGTH_ANGSTROM <= length <= MAX_LATTICE_LENGTH_ANGSTROM
    assert structure.volume >= MIN_VOLUME_PER_SITE_ANGSTROM3 * len(structure) * (1 - 1e-9)


def read_or_refuse(read, *args, max_sites: int = DEFAULT_MAX_SITES) -> list[Structure]:
    """The structures ``read(*args)`` returns (each checked), or [] when it raised InvalidInput."""
    try:
        out = read(*args)
    except InvalidInput as exc:
        assert 0 < len(str(exc)) < MAX_MESSAGE
        return []
    finally:
        assert_nothing_imported()
    structures = out if isinstance(out, list) else [out]
    for structure in structures:
        assert_sane(structure, max_sites)
    return structures


# --------------------------------------------------------------------------- strategies

MODULES = st.sampled_from([PROBE, f"{PROBE}.sub", "pymatgen.core.structure", "numpy", "builtins", "os", ""])
CLASSES = st.sampled_from(["X", "Structure", "Lattice", "array", "PeriodicSite", "Species", "system"])
KEYS = st.sampled_from(["@module", "@class", "lattice", "sites", "species", "element", "occu", "abc", "xyz",
                        "properties", "matrix", "structure", "energy", "label", "charge", "pbc", "data"])
NUMBERS = st.one_of(
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-320, 5e-324, 1e308, 0.5, 4.0, 1000.0, 1001.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8),
                    st.sampled_from(["Li", "O", "Cl", "X", "Xx", "D"]))


def tagged(children):
    return st.fixed_dictionaries({"@module": MODULES, "@class": CLASSES}, optional={"data": children})


JSON_TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=5)), children, max_size=5),
        tagged(children),
    ),
    max_leaves=30,
)


def li_cl_o_dict() -> dict:
    return Structure(Lattice.cubic(4.0), ["Li", "O", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]).as_dict()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_structure_dicts(draw):
    """A valid structure dict (or entry) with random values put at random paths, tags included."""
    d = li_cl_o_dict()
    if draw(st.booleans()):
        d = {"@module": "pymatgen.entries.computed_entries", "@class": "ComputedStructureEntry",
             "energy": -1.0, "structure": d}
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        parent = d
        for step in path[:-1]:
            parent = parent[step]
        value = draw(st.one_of(tagged(JSON_TREES), JSON_TREES))
        if isinstance(value, dict) and isinstance(parent[path[-1]], dict) and draw(st.booleans()):
            parent[path[-1]].update(value)  # tag an existing dict (lattice, site, species...)
        else:
            parent[path[-1]] = value
    return d


# --------------------------------------------------------------------------- properties


@given(st.text(max_size=400), st.sampled_from(list(FileKind)))
def test_garbage_text_is_read_or_refused(text: str, kind: FileKind) -> None:
    read_or_refuse(parse_structures, text, kind)


@given(JSON_TREES)
def test_random_json_trees_are_read_or_refused(tree) -> None:
    read_or_refuse(structure_from_json, tree)
    read_or_refuse(parse_structures, json.dumps(tree), FileKind.JSON)


@given(mutated_structure_dicts())
def test_structure_dicts_with_random_parts_are_read_or_refused(d) -> None:
    read_or_refuse(structure_from_json, d)
    text = json.dumps(d)  # NaN and Infinity survive as JSON extensions
    read_or_refuse(parse_structures, text, FileKind.JSON)


@given(mutated_structure_dicts())
def test_tagged_objects_anywhere_are_never_imported(d) -> None:
    try:
        structure_from_json(d)
    except InvalidInput:
        pass
    assert_nothing_imported()


CELL_NUMBERS = st.one_of(
    st.sampled_from(["1e-320", "0", "-4", "4.0", "10", "1000", "1e6", "nan", "inf", "90", "120", "179.999",
                     "0.0001", "4.0(3)", "?", "."]),
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False).map(lambda x: f"{x:.6g}"),
)
OPS = st.sampled_from(["x,y,z", "-x,-y,-z", "y,x,z", "-y,x-y,z", "x+1/2,y+1/2,z", "z,x,y", "x,y,z+1/3",
                       "garbage", "x,y", "2*x,y,z"])
ELEMENTS = st.one_of(st.sampled_from(["Li", "O", "Cl"]), st.sampled_from(["S", "P", "Xx", "X", "Li+", "O2-"]))
COORDS = st.one_of(st.floats(min_value=-2, max_value=2, allow_nan=False).map(lambda x: f"{x:.4f}"),
                   st.sampled_from(["0", "0.5", "1/2", "nan", "?", "0.25(1)"]))
SANE_OPS = st.sampled_from(["x,y,z", "-x,-y,-z", "y,x,z", "x+1/2,y+1/2,z", "z,x,y"])
SANE_ELEMENTS = st.sampled_from(["Li", "O", "Cl"])
SANE_COORDS = st.floats(min_value=0, max_value=1, allow_nan=False).map(lambda x: f"{x:.4f}")
OCCUPANCIES = st.one_of(st.just("1"), st.sampled_from(["1.0", "0.5", "0", "2", "-1", "?", "1e-320"]))


@st.composite
def cif_like(draw) -> str:
    lines = [f"data_{draw(st.text(alphabet='abcxyz_0123', min_size=1, max_size=6))}"]
    sane = draw(st.booleans())  # half the cells are sane, so the success path is exercised too
    for key in ("a", "b", "c"):
        lines.append(f"_cell_length_{key} {draw(st.sampled_from(['4.0', '5.5', '7.25']) if sane else CELL_NUMBERS)}")
    for key in ("alpha", "beta", "gamma"):
        lines.append(f"_cell_angle_{key} {'90' if sane else draw(st.one_of(st.just('90'), CELL_NUMBERS))}")
    if draw(st.booleans()):
        lines += ["loop_", "_symmetry_equiv_pos_as_xyz"]
        lines += [f"'{op}'" for op in draw(st.lists(SANE_OPS if sane else OPS, min_size=1, max_size=6))]
    else:
        lines.append(f"_symmetry_space_group_name_H-M '{draw(st.sampled_from(['P 1', 'F m -3 m', 'Q 9', 'P 63/m m c']))}'")
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
              "_atom_site_fract_z", "_atom_site_occupancy"]
    if sane:
        rows = draw(st.lists(st.tuples(SANE_ELEMENTS, SANE_COORDS, SANE_COORDS, SANE_COORDS, st.just("1")),
                             min_size=1, max_size=6))
    else:
        rows = draw(st.lists(st.tuples(ELEMENTS, COORDS, COORDS, COORDS, OCCUPANCIES), min_size=0, max_size=6))
    for i, (element, x, y, z, occupancy) in enumerate(rows):
        lines.append(f"{element}{i} {element} {x} {y} {z} {occupancy}")
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 3)) == 0:  # truncate or corrupt
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=10))
    return text


@settings(max_examples=50)  # ~0.1 s per CIF (an unknown space-group symbol makes pymatgen load its table)
@given(cif_like(), st.sampled_from([None, 5, 50]))
def test_cif_like_text_is_read_or_refused(text: str, max_sites) -> None:
    read_or_refuse(parse_cif, text, max_sites, max_sites=max_sites or DEFAULT_MAX_SITES)
    try:
        structure = structure_from_cif_text(text, "fuzz.cif", max_sites)
    except InvalidInput as exc:
        assert str(exc).startswith("fuzz.cif") and len(str(exc)) < MAX_MESSAGE
    else:
        assert structure.is_ordered and "Li" in structure.composition
        assert_sane(structure, max_sites or DEFAULT_MAX_SITES)


LATTICE_ENTRIES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-320, 5e-324, -1e-320, 0.4999, 0.5, 4.0, 1000.0, 1000.001, 1e300]),
)


@given(
    st.lists(st.lists(LATTICE_ENTRIES, min_size=3, max_size=3), min_size=3, max_size=3),
    st.lists(st.tuples(st.sampled_from(["Li", "O", "Cl"]),
                       st.lists(st.floats(-1, 2, allow_nan=False), min_size=3, max_size=3)),
             min_size=1, max_size=4),
)
def test_random_lattices_are_read_or_refused(matrix, sites) -> None:
    d = {
        "lattice": {"matrix": matrix},
        "sites": [{"species": [{"element": e, "occu": 1}], "abc": abc} for e, abc in sites],
    }
    read_or_refuse(structure_from_json, d)
    read_or_refuse(parse_structures, json.dumps(d), FileKind.JSON)
    poscar = "fuzz\n1.0\n" + "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in matrix)
    symbols = [e for e, _ in sites]
    poscar += " ".join(symbols) + "\n" + " ".join("1" for _ in symbols) + "\ndirect\n"
    poscar += "".join(" ".join(repr(v) for v in abc) + "\n" for _, abc in sites)
    read_or_refuse(parse_structures, poscar, FileKind.POSCAR)


@settings(max_examples=25)
@given(st.integers(1, 300), st.integers(1, 192))
def test_site_estimate_refuses_before_expanding(rows: int, n_ops: int) -> None:
    """A CIF listing ``n_ops`` translations x ``rows`` positions: refused iff it expands past the limit."""
    limit = 500
    ops = [f"'x+{k}/{n_ops},y,z'" for k in range(n_ops)]
    rng = np.random.default_rng(rows * 1000 + n_ops)
    lines = ["data_t", "_cell_length_a 400", "_cell_length_b 40", "_cell_length_c 40",
             "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90",
             "loop_", "_symmetry_equiv_pos_as_xyz", *ops,
             "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
             "_atom_site_fract_y", "_atom_site_fract_z"]
    lines += [f"Li{i} Li {x / n_ops:.6f} {y:.6f} {z:.6f}" for i, (x, y, z) in enumerate(rng.random((rows, 3)))]
    structures = read_or_refuse(parse_cif, "\n".join(lines) + "\n", limit, max_sites=limit)
    if rows * n_ops <= limit:
        assert structures and len(structures[0]) <= rows * n_ops
