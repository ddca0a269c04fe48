"""Hardening of structure inputs: untrusted pymatgen JSON imports nothing, deeply nested JSON is
refused as input, subnormal/collapsed cells are refused where structures are read, and oversized
CIFs are refused before pymatgen expands their symmetry.

Each test is built from a fuzzing reproducer and runs it through the reader, the gRPC service
and the CLI that reached the defect.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
import time
import uuid
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest
from monty.json import MontyEncoder
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from htvs.cli import app
from htvs.errors import InvalidInput
from htvs.grpc.gen import structure_pb2 as pb
from htvs.grpc.gen import structure_pb2_grpc as pb_grpc
from htvs.grpc.gen import substitution_pb2 as spb
from htvs.grpc.server import create_server
from htvs.grpc.structure_service import StructureServicer
from htvs.prototypes import FolderSource
from htvs.prototypes import readers
from htvs.prototypes.readers import (
    DEFAULT_MAX_SITES,
    FileKind,
    check_cell,
    decode_json,
    estimate_cif_sites,
    parse_cif,
    parse_poscar,
    parse_structures,
    structure_from_json,
)
from htvs.validation.inputs import check_structure, structure_from_cif_text

from conftest import PROTOTYPE_FOLDER

pytestmark = [pytest.mark.timeout(120)]

#: The fuzzing reproducer of the nesting crash.
DEEP = "[" * 100_000
MAX_MESSAGE = 2000


def li2o() -> Structure:
    """Antifluorite Li2O (a = 4.61 Å), 12 sites."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]])


def li_cl_o(a: float = 4.0) -> Structure:
    return Structure(Lattice.cubic(a), ["Li", "O", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])


def cif_text(structure: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(CifWriter(structure))


def subnormal_cif(length: str = "1e-320") -> str:
    """The fuzzing reproducer of the subnormal-lattice crash: an ordered Li-O-Cl cell with a = ``length``."""
    return f"""data_tiny
_cell_length_a {length}
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Li1 Li 0 0 0 1
O1 O 0.5 0.5 0.5 1
Cl1 Cl 0.5 0 0 1
"""


def expanding_cif(rows: int = 100) -> str:
    """A ~7 kB CIF listing Fm-3m's 192 operations and ``rows`` general positions: ~19k sites."""
    from pymatgen.symmetry.groups import SpaceGroup

    rng = np.random.default_rng(1)
    lines = ["data_big", "_cell_length_a 60", "_cell_length_b 60", "_cell_length_c 60",
             "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90",
             "loop_", "_symmetry_equiv_pos_as_xyz"]
    lines += [f"'{op.as_xyz_str()}'" for op in SpaceGroup("Fm-3m").symmetry_ops]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
    for i in range(rows):
        x, y, z = rng.random(3) * 0.5
        element = ("Li", "O", "Cl")[i % 3]  # a ternary, so a prototype filter does not reject it first
        lines.append(f"{element}{i} {element} {x:.5f} {y:.5f} {z:.5f} 1")
    return "\n".join(lines) + "\n"


def p1_cif(n_sites: int) -> str:
    """A P1 CIF of ``n_sites`` Li/O sites in a cube of ~10 Å^3 per site."""
    rng = np.random.default_rng(2)
    a = (10.0 * n_sites) ** (1 / 3)
    species = ["Li", "O"] * (n_sites // 2) + ["Li"] * (n_sites % 2)
    return cif_text(Structure(Lattice.cubic(a), species, rng.random((n_sites, 3))))


# --------------------------------------------------------------------------- the import probe


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``(module name, marker file)``: an importable module that writes the marker when imported."""
    name = f"htvs_probe_{uuid.uuid4().hex[:12]}"
    marker = tmp_path / "imported.txt"
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\nclass X:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield name, marker
    sys.modules.pop(name, None)


def assert_not_imported(probe) -> None:
    name, marker = probe
    assert not marker.exists(), "the probe module was imported"
    assert name not in sys.modules


def tagged(name: str) -> dict:
    return {"@module": name, "@class": "X"}


def structure_dict() -> dict:
    return li_cl_o().as_dict()


def poisoned(name: str) -> dict[str, dict]:
    """Structure dicts naming module ``name`` in every place a fuzzer put it."""
    out = {}
    d = structure_dict()
    d["sites"][0]["properties"] = {"x": tagged(name)}
    out["site property"] = d
    d = structure_dict()
    d["sites"][1]["properties"] = {"x": [1, {"y": [{"z": tagged(name)}]}]}
    out["nested site property"] = d
    d = structure_dict()
    d["properties"] = {"meta": {"deep": tagged(name)}}
    out["structure property"] = d
    d = structure_dict()
    d["lattice"].update(tagged(name))
    out["lattice"] = d
    d = structure_dict()
    d["sites"][0]["species"][0].update(tagged(name))
    out["species"] = d
    d = structure_dict()
    d["sites"][2].update(tagged(name))
    out["site"] = d
    d = structure_dict()
    d.update(tagged(name))
    out["structure"] = d
    d = structure_dict()
    d["sites"][0]["properties"] = {"x": tagged(name)}
    out["entry"] = {"@module": "pymatgen.entries.computed_entries", "@class": "ComputedStructureEntry",
                    "energy": -1.0, "structure": d}
    return out


def test_probe_is_imported_by_pymatgen_from_dict(probe) -> None:
    """The hole itself: pymatgen's Structure.from_dict imports a module a site property names."""
    name, marker = probe
    d = structure_dict()
    d["sites"][0]["properties"] = {"x": tagged(name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Structure.from_dict(d)
    assert marker.exists() and name in sys.modules


@pytest.mark.parametrize("where", list(poisoned("m")))
def test_reader_refuses_module_tags_without_importing(probe, where: str) -> None:
    name, _ = probe
    obj = poisoned(name)[where]
    with pytest.raises(InvalidInput) as info:
        structure_from_json(obj)
    assert name in str(info.value) and len(str(info.value)) < MAX_MESSAGE
    with pytest.raises(InvalidInput):
        parse_structures(json.dumps(obj), FileKind.JSON)
    assert_not_imported(probe)


def test_reader_refuses_stdlib_module_tags_without_importing() -> None:
    """The reported reproducer named stdlib ``this``; ``tabnanny`` is a side-effect-free stand-in."""
    assert "tabnanny" not in sys.modules
    obj = structure_dict()
    obj["sites"][0]["properties"] = {"x": tagged("tabnanny")}
    with pytest.raises(InvalidInput, match="tabnanny"):
        structure_from_json(obj)
    assert "tabnanny" not in sys.modules


def test_overlong_module_name_is_clipped_in_the_message() -> None:
    obj = structure_dict()
    obj["sites"][0]["properties"] = {"x": tagged("m" * 100_000)}
    with pytest.raises(InvalidInput) as info:
        structure_from_json(obj)
    assert len(str(info.value)) < 500


def test_reader_keeps_what_pymatgen_writes() -> None:
    """Oxidation states, site and structure properties, labels, charge, an entry, a monty numpy array."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    s = li_cl_o()
    s.add_oxidation_state_by_element({"Li": 1, "O": -2, "Cl": -1})
    s.add_site_property("magmom", [0.0, 0.5, 1.0])
    s.add_site_property("selective_dynamics", [[True, False, True]] * 3)
    s.properties = {"source": "test", "numbers": [1, 2]}
    s.relabel_sites()
    text = json.dumps(s.as_dict(), cls=MontyEncoder)
    back = parse_structures(text, FileKind.JSON)[0]
    assert back == s
    assert back.site_properties == s.site_properties
    assert [site.label for site in back] == [site.label for site in s]
    assert back.properties == s.properties and back.charge == s.charge
    assert [str(sp) for sp in back.species] == ["Li+", "O2-", "Cl-"]

    d = copy.deepcopy(s.as_dict())  # as_dict shares the site property dicts
    d["sites"][0]["properties"]["forces"] = json.loads(json.dumps(np.array([0.1, 0.2, 0.3]), cls=MontyEncoder))
    assert structure_from_json(d)[0].properties["forces"] == [0.1, 0.2, 0.3]

    entry = ComputedStructureEntry(s, -5.0)
    assert structure_from_json(json.loads(json.dumps(entry.as_dict(), cls=MontyEncoder))) == s

    disordered = Structure(Lattice.cubic(4), [{"Li": 0.5, "Na": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structure_from_json(disordered.as_dict()) == disordered
    cartesian = li_cl_o().as_dict()
    for site in cartesian["sites"]:
        del site["abc"]
    assert structure_from_json(cartesian) == li_cl_o()


def test_the_input_dict_is_not_changed() -> None:
    d = structure_dict()
    d["sites"][0]["properties"] = {"magmom": 1.0}
    before = copy.deepcopy(d)
    structure_from_json(d)
    assert d == before


# --------------------------------------------------------------------------- services and CLI


@pytest.fixture(scope="module")
def stub():
    servicer = StructureServicer(max_sites=50)
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.StructureServiceStub(channel)
    channel.close()
    server.stop(None).wait()


def lizn_json(item_id: str) -> pb.StructureData:
    structure = Structure.from_file(PROTOTYPE_FOLDER / "LiZnPS4.cif")
    return pb.StructureData(id=item_id, pymatgen_json=json.dumps(structure.as_dict()))


def test_deduplicate_refuses_untrusted_rows_and_goes_on(stub, probe) -> None:
    name, _ = probe
    evil = poisoned(name)["site property"]
    structures = [
        lizn_json("good"),
        pb.StructureData(id="evil", pymatgen_json=json.dumps(evil)),
        pb.StructureData(id="deep", pymatgen_json=DEEP),
        pb.StructureData(id="tiny", cif=subnormal_cif()),
        pb.StructureData(id="big", cif=expanding_cif()),
        pb.StructureData(id="long-int", pymatgen_json="1" * 10_000),
        lizn_json("again"),
    ]
    start = time.perf_counter()
    response = stub.Deduplicate(pb.DeduplicateRequest(structures=structures), timeout=60)
    assert time.perf_counter() - start < 20
    assert list(response.unique_ids) == ["good"]
    refused = {r.value: r for r in response.refused}
    assert set(refused) == {"evil", "deep", "tiny", "big", "long-int"}
    assert name in refused["evil"].message and "structures[1] ('evil')" in refused["evil"].message
    assert "nested too deeply" in refused["deep"].message and "structures[2] ('deep')" in refused["deep"].message
    assert "0.5-1000 Å" in refused["tiny"].message and "1e-320" in refused["tiny"].message
    assert "limit of 50" in refused["big"].message and "192 symmetry operations x 100" in refused["big"].message
    assert "invalid JSON" in refused["long-int"].message
    assert all(r.kind == "InvalidInput" and len(r.message) < MAX_MESSAGE for r in response.refused)
    assert_not_imported(probe)


def test_overlong_ids_are_echoed_bounded(stub) -> None:
    long_id = "x" * 100_000
    response = stub.Deduplicate(pb.DeduplicateRequest(structures=[pb.StructureData(id=long_id, pymatgen_json=DEEP)]),
                                timeout=60)
    (row,) = response.refused
    assert "nested too deeply" in row.message and len(row.message) < MAX_MESSAGE


def test_materialize_refuses_untrusted_and_oversized_inline_prototypes(stub, probe) -> None:
    name, _ = probe
    substitution = spb.Substitution(
        prototype_id="p", replacements=[spb.Replacement(from_element="Zn", to_element="Mg")]
    )
    lfp = Structure.from_file(PROTOTYPE_FOLDER / "LiFePO4.json")  # 28 sites
    cases = {
        "evil": pb.StructureData(id="p", pymatgen_json=json.dumps(poisoned(name)["lattice"])),
        "deep": pb.StructureData(id="p", pymatgen_json=DEEP),
        "big": pb.StructureData(id="p", cif=expanding_cif()),
        "oversized": pb.StructureData(id="p", pymatgen_json=json.dumps((lfp * (1, 1, 2)).as_dict())),
    }
    expected = {"evil": name, "deep": "nested too deeply", "big": "limit of 50", "oversized": "56 sites exceeds the limit of 50"}
    for case, message in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.Materialize(pb.MaterializeRequest(prototypes=[message], substitutions=[substitution]), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert expected[case] in info.value.details() and "prototypes[0] ('p')" in info.value.details(), case
    ok = stub.Materialize(pb.MaterializeRequest(prototypes=[lizn_json("p")], substitutions=[substitution]), timeout=60)
    assert ok.n_materialized == 1
    assert_not_imported(probe)


def test_servicer_site_limit_is_checked() -> None:
    with pytest.raises(InvalidInput, match="max_sites"):
        StructureServicer(max_sites=0)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_dedupe_refuses_untrusted_files(runner: CliRunner, tmp_path: Path, probe) -> None:
    name, _ = probe
    (tmp_path / "evil.json").write_text(json.dumps(poisoned(name)["species"]))
    (tmp_path / "deep.json").write_text(DEEP)
    (tmp_path / "tiny.cif").write_text(subnormal_cif())
    (tmp_path / "big.cif").write_text(expanding_cif())
    good = PROTOTYPE_FOLDER / "LiZnPS4.cif"
    files = [str(tmp_path / f) for f in ("evil.json", "deep.json", "tiny.cif", "big.cif")]
    result = runner.invoke(app, ["structures", "dedupe", str(good), *files, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["unique"] == ["LiZnPS4"]
    refused = {r["id"]: r["error"] for r in payload["refused"]}
    assert set(refused) == {"evil", "deep", "tiny", "big"}
    assert name in refused["evil"] and "nested too deeply" in refused["deep"]
    assert "0.5-1000 Å" in refused["tiny"] and "symmetry operations" in refused["big"]
    assert_not_imported(probe)


def bad_folder(tmp_path: Path, probe_name: str) -> Path:
    """A prototype folder with one good file and every reproducer."""
    folder = tmp_path / "protos"
    folder.mkdir()
    for file in ("LiZnPS4.cif", "LiFePO4.json"):
        (folder / file).write_bytes((PROTOTYPE_FOLDER / file).read_bytes())
    (folder / "deep.json").write_text(DEEP)
    (folder / "evil.json").write_text(json.dumps(poisoned(probe_name)["nested site property"]))
    (folder / "tiny.cif").write_text(subnormal_cif())
    (folder / "big.cif").write_text(expanding_cif())
    return folder


def test_prototype_folder_lists_the_reproducers_and_loads_the_rest(tmp_path: Path, probe) -> None:
    name, _ = probe
    loaded = FolderSource(bad_folder(tmp_path, name)).load()
    assert [p.id for p in loaded.prototypes] == ["LiFePO4", "LiZnPS4"]
    reasons = {s.name: s.reason for s in loaded.skipped}
    assert set(reasons) == {"deep.json", "evil.json", "tiny.cif", "big.cif"}
    assert "nested too deeply" in reasons["deep.json"] and name in reasons["evil.json"]
    assert "0.5-1000 Å" in reasons["tiny.cif"]
    assert f"limit of {DEFAULT_MAX_SITES}" in reasons["big.cif"]
    assert_not_imported(probe)


def test_cli_prototypes_and_substitute_on_the_folder(runner: CliRunner, tmp_path: Path, probe) -> None:
    name, _ = probe
    folder = bad_folder(tmp_path, name)
    result = runner.invoke(app, ["prototypes", "--source", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    skipped = {s["name"] for s in json.loads(result.stdout)["skipped"]}
    assert {"deep.json", "evil.json", "tiny.cif", "big.cif"} <= skipped
    result = runner.invoke(app, ["substitute", "-p", str(folder), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert_not_imported(probe)


def test_cli_conductivity_predict_refuses_deep_json(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(DEEP)
    result = runner.invoke(app, ["conductivity", "predict", str(tmp_path / "deep.json"), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "nested too deeply" in result.output


def test_cli_validate_refuses_a_subnormal_cell_before_loading_models(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tiny.cif"
    path.write_text(subnormal_cif())
    start = time.perf_counter()
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "tiny.cif: lattice length a = 1e-320 Å is outside the accepted 0.5-1000 Å" in result.output
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- deep JSON


def test_deep_json_is_invalid_input() -> None:
    for text in (DEEP, "{\"a\":" * 100_000, "1" * 10_000):
        with pytest.raises(InvalidInput, match="invalid JSON"):
            decode_json(text)
        with pytest.raises(InvalidInput, match="invalid JSON"):
            parse_structures(text, FileKind.JSON)
    obj = structure_dict()
    nested: object = 1
    for _ in range(200):  # decodable, but deeper than properties may be
        nested = [nested]
    obj["sites"][0]["properties"] = {"x": nested}
    with pytest.raises(InvalidInput, match="nested deeper than"):
        parse_structures(json.dumps(obj), FileKind.JSON)


def test_gzip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "MAX_TEXT_CHARS", 10_000)
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b" " * 100_000))
    with pytest.raises(InvalidInput, match="unzips to more than 10000 bytes"):
        readers.read_text(path, gzipped=True)


# --------------------------------------------------------------------------- cells


def _json_with_matrix(matrix) -> dict:
    d = structure_dict()
    d["lattice"] = {"matrix": matrix}
    return d


POSCAR_TINY = "tiny\n1e-320\n1 0 0\n0 1 0\n0 0 1\nLi O Cl\n1 1 1\ndirect\n0 0 0\n.5 .5 .5\n.5 0 0\n"


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda: parse_cif(subnormal_cif()), "lattice length a = 1e-320 Å is outside the accepted 0.5-1000 Å"),
        (lambda: parse_cif(subnormal_cif("5000")), "lattice length a = 5000 Å"),
        (lambda: structure_from_cif_text(subnormal_cif(), "tiny.cif"), "tiny.cif: lattice length a = 1e-320 Å"),
        (lambda: structure_from_json(_json_with_matrix([[1e-320, 0, 0], [0, 4, 0], [0, 0, 4]])), "1e-320 Å"),
        (lambda: structure_from_json(_json_with_matrix([[4, 0, 0], [4, 1e-4, 0], [0, 0, 4]])),
         "below the minimum of 1 Å^3 per site"),
        (lambda: structure_from_json(_json_with_matrix([[4, 0, 0], [0, 4, 0], [0, 0, float("nan")]])), "NaN"),
        (lambda: parse_poscar(POSCAR_TINY), "0.5-1000 Å"),
        (lambda: check_structure(li_cl_o(1e-300), "x"), "x: lattice length a = 1e-300 Å"),
        (lambda: check_structure(li_cl_o(1e4), "x"), "outside the accepted 0.5-1000 Å"),
    ],
)
def test_insane_cells_are_refused_with_the_range(read, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        read()
    assert message in str(info.value)


def test_a_sane_cell_passes() -> None:
    assert check_cell(li2o()) is not None
    assert len(structure_from_cif_text(cif_text(li_cl_o()), "ok.cif")) == 3


# --------------------------------------------------------------------------- size before work


def test_expanding_cif_is_refused_before_expansion() -> None:
    text = expanding_cif()
    assert len(text) < 10_000
    start = time.perf_counter()
    with pytest.raises(InvalidInput) as info:
        parse_cif(text)
    assert time.perf_counter() - start < 3  # expanding it takes ~20 s
    message = str(info.value)
    assert f"exceeds the limit of {DEFAULT_MAX_SITES} atoms per cell" in message
    assert "192 symmetry operations x 100 atom-site rows" in message and "not expanded" in message
    with pytest.raises(InvalidInput, match="exceeds the limit of 200"):
        structure_from_cif_text(text, "big.cif", max_sites=200)


def test_oversized_p1_cif_is_refused_cheaply_by_the_submit_reader() -> None:
    """structure_from_cif_text with max_sites (what DFTRunnerService.Submit calls) refuses in ms."""
    text = p1_cif(5000)
    start = time.perf_counter()
    with pytest.raises(InvalidInput) as info:
        structure_from_cif_text(text, "big.cif", max_sites=200)
    assert time.perf_counter() - start < 2  # building it takes ~4 s here, 25 s on the reporter's machine
    assert "big.cif: 5000 sites exceeds the limit of 200 atoms per cell" in str(info.value)


def test_site_limit_applies_to_every_format() -> None:
    with pytest.raises(InvalidInput, match="12 sites exceeds the limit of 5"):
        parse_structures(json.dumps(li2o().as_dict()), FileKind.JSON, max_sites=5)
    poscar = li2o().to(fmt="poscar")
    with pytest.raises(InvalidInput, match="12 sites exceeds the limit of 5"):
        parse_structures(poscar, FileKind.POSCAR, max_sites=5)
    with pytest.raises(InvalidInput, match="12 sites exceeds the limit of 5"):
        parse_structures(cif_text(li2o()), FileKind.CIF, max_sites=5)
    assert len(parse_structures(poscar, FileKind.POSCAR, max_sites=12)[0]) == 12
    with pytest.raises(InvalidInput, match="max_sites must be a positive integer"):
        parse_cif(cif_text(li2o()), max_sites=0)


def test_estimate_matches_pymatgen_on_bundled_cifs() -> None:
    from pymatgen.io.cif import CifParser

    from htvs.datasets import load_obelix_cifs

    cifs = load_obelix_cifs()[::8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in cifs:
            parser = CifParser.from_str(cif.text)
            block = next(iter(parser._cif.data.values()))
            estimate = estimate_cif_sites(parser, block)[0]
            assert estimate == len(parser.parse_structures(primitive=False)[0]), cif.id
