"""Prototype sources: bundled set, local folder, Materials Project (recorded responses).

Reference counts: the 321 bundled OBELiX CIFs hold 72 fully ordered structures, 64 of them
Li-containing ternaries or quaternaries (``src/htvs/data/README.md``); pymatgen ships five Li
compounds, two of which (LiFePO4, Li3V2(PO4)3) are ordered ternaries/quaternaries.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from pymatgen.core import Structure
from requests.adapters import HTTPAdapter

from htvs.errors import InvalidInput, StageFailed
from htvs.prototypes import (
    ORDERED_SUFFIX,
    BundledSource,
    FolderSource,
    MaterialsProjectSource,
    PrototypeFilter,
    PrototypeSource,
    load_prototypes,
    prototypes_from_summary_docs,
)

DATA = Path(__file__).parent / "data" / "prototypes"
FOLDER = DATA / "folder"
FAKE_KEY = "0123456789abcdef0123456789abcdef"  # mp-api checks the length (32) only

#: ordered approximants found with the default OrderingBudget (measured, pymatgen 2026.10)
EXPECTED_APPROXIMANTS = {
    "bjw": "Li2MnCl4", "dvn": "Li2MgCl4", "e6b": "Li4GeS4", "gxz": "Li4Zn(PO4)2",
    "ia5": "LiLaNb2O7", "jqc": "Li7BiO6", "kmv": "Li4SnS4", "mfs": "Li2ZnGe3O8",
    "mfu": "Li3Fe(MoO4)3", "mn3": "Li4SnSe4", "oi6": "Li7SbO6", "pql": "Li8SiP4",
    "tvf": "Li3H4IN2", "wgw": "Sr3Li4Nb6O20", "xz4": "LiCe(MoO4)2", "yav": "Li2VCl4",
}  # fmt: skip


def _assert_valid_set(prototypes, flt: PrototypeFilter = PrototypeFilter()) -> None:
    ids = [p.id for p in prototypes]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for p in prototypes:
        assert p.structure.is_ordered, p.id
        assert set(flt.required_elements) <= set(p.species_amounts), p.id
        assert p.n_elements in flt.allowed_n_elements, p.id
        assert len(p.structure) <= flt.max_atoms, p.id
        assert sum(p.species_amounts.values()) == len(p.structure)


# --------------------------------------------------------------------------- bundled


def test_bundled_set_counts(bundled_prototypes) -> None:
    protos = bundled_prototypes.prototypes
    _assert_valid_set(protos)
    assert {p.source for p in protos} == {"bundled"}
    approximants = [p.id for p in protos if p.id.endswith(ORDERED_SUFFIX)]
    obelix = [p.id for p in protos if p.id.startswith("obelix:") and p.id not in approximants]
    pymatgen = [p.id for p in protos if p.id.startswith("pymatgen:")]
    assert len(obelix) == 64
    assert pymatgen == ["pymatgen:Li3V2(PO4)3", "pymatgen:LiFePO4"]
    assert approximants == sorted(f"obelix:{k}{ORDERED_SUFFIX}" for k in EXPECTED_APPROXIMANTS)
    assert len(protos) == 64 + 16 + 2


def test_bundled_accounts_for_every_input(bundled_prototypes) -> None:
    loaded = {p.id for p in bundled_prototypes.prototypes if not p.id.endswith(ORDERED_SUFFIX)}
    skipped = {s.name for s in bundled_prototypes.skipped}
    assert not loaded & skipped
    assert len([n for n in loaded | skipped if n.startswith("obelix:")]) == 321
    assert len([n for n in loaded | skipped if n.startswith("pymatgen:")]) == 21
    reasons = {s.name: s.reason for s in bundled_prototypes.skipped}
    assert reasons["pymatgen:Li2O"].startswith("has 2 elements")
    assert reasons["pymatgen:SrTiO3"].startswith("does not contain Li")
    assert reasons["pymatgen:Li10GeP2S12"].startswith("disordered")
    assert "ordered approximant loaded as obelix:jqc:ordered" in reasons["obelix:jqc"]


def test_bundled_approximants_keep_the_composition(bundled_prototypes) -> None:
    by_id = {p.id: p for p in bundled_prototypes.prototypes}
    for key, formula in EXPECTED_APPROXIMANTS.items():
        structure = by_id[f"obelix:{key}{ORDERED_SUFFIX}"].structure
        assert structure.composition.reduced_formula == formula
    # OBELiX jqc: Li7BiO6 with Li on 8 sites at 7/8 occupancy -> 7 Li in the P-1 cell
    assert by_id["obelix:jqc:ordered"].species_amounts == {"Li": 7, "Bi": 1, "O": 6}


def test_bundled_without_approximants_is_the_plain_set(bundled_prototypes) -> None:
    plain = BundledSource(ordered_approximants=False).load()
    expected = [p.id for p in bundled_prototypes.prototypes if not p.id.endswith(ORDERED_SUFFIX)]
    assert [p.id for p in plain.prototypes] == expected
    assert len(plain.prototypes) == 66


def test_bundled_load_returns_fresh_structures() -> None:
    first = load_prototypes("bundled")
    first.prototypes[0].structure.replace_species({"Li": "Na"})
    second = load_prototypes("bundled")
    assert "Li" in second.prototypes[0].structure.composition
    assert isinstance(BundledSource(), PrototypeSource)


# --------------------------------------------------------------------------- folder


def test_folder_loads_good_files_and_names_the_rest() -> None:
    result = load_prototypes(str(FOLDER))
    assert [p.id for p in result.prototypes] == [
        "Li3V2P3O12_entry", "LiFePO4", "LiZnPS4", "POSCAR_Li5BiO5",
    ]  # fmt: skip
    _assert_valid_set(result.prototypes)
    assert {p.source for p in result.prototypes} == {"folder"}
    reasons = {s.name: s.reason for s in result.skipped}
    assert set(reasons) == {
        "Li2O.json", "Li7BiO6_disordered.cif", "SrTiO3.json", "broken.cif",
        "not_a_structure.json", "notes.txt", "truncated.json",
    }  # fmt: skip
    assert reasons["Li2O.json"] == "has 2 elements (Li-O); allowed: 3, 4"
    assert reasons["SrTiO3.json"].startswith("does not contain Li")
    assert reasons["Li7BiO6_disordered.cif"] == "disordered: 8 partially occupied sites"
    assert reasons["broken.cif"].startswith("unreadable CIF")
    assert reasons["truncated.json"].startswith("invalid JSON")
    assert "neither a pymatgen Structure" in reasons["not_a_structure.json"]
    assert reasons["notes.txt"].startswith("not a structure file")


def test_folder_filter_and_approximants() -> None:
    small = FolderSource(FOLDER, prototype_filter=PrototypeFilter(max_atoms=20)).load()
    assert [p.id for p in small.prototypes] == ["LiZnPS4"]
    reasons = {s.name: s.reason for s in small.skipped}
    assert reasons["LiFePO4.json"] == "28 atoms in the cell exceed max_atoms=20"
    ordered = FolderSource(FOLDER, ordered_approximants=True).load()
    by_id = {p.id: p for p in ordered.prototypes}
    assert by_id["Li7BiO6_disordered:ordered"].species_amounts == {"Li": 7, "Bi": 1, "O": 6}


def test_folder_edge_cases(tmp_path: Path) -> None:
    cif = (FOLDER / "LiZnPS4.cif").read_text()
    (tmp_path / "two_blocks.cif").write_text(cif + "\n" + cif.replace("data_LiZnPS4", "data_again"))
    (tmp_path / "LiZnPS4.cif").write_text(cif)
    (tmp_path / "LiZnPS4.json").write_text((FOLDER / "LiFePO4.json").read_text())
    oxidized = Structure.from_file(FOLDER / "LiFePO4.json")
    oxidized.add_oxidation_state_by_element({"Li": 1, "Fe": 2, "P": 5, "O": -2})
    with gzip.open(tmp_path / "LiFePO4_oxi.json.gz", "wt") as fh:
        json.dump(oxidized.as_dict(), fh)
    vasp4 = (FOLDER / "POSCAR_Li5BiO5").read_text().splitlines()
    (tmp_path / "old.vasp").write_text("\n".join(vasp4[:5] + vasp4[6:]))
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden.cif").write_text("ignored")
    result = FolderSource(tmp_path).load()
    ids = [p.id for p in result.prototypes]
    assert ids == ["LiFePO4_oxi", "LiZnPS4", "two_blocks:1", "two_blocks:2"]
    assert result.prototypes[0].species_amounts == {"Li": 4, "Fe": 4, "P": 4, "O": 16}
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons["LiZnPS4.json"] == "id 'LiZnPS4' already taken by LiZnPS4.cif"
    assert "VASP 5" in reasons["old.vasp"]
    assert "not searched recursively" in reasons["sub"]
    assert ".hidden.cif" not in reasons


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(InvalidInput, match="no-such-folder"):
        FolderSource(missing).load()
    with pytest.raises(InvalidInput, match="is neither a source name .* nor an existing folder"):
        load_prototypes(str(missing))
    with pytest.raises(InvalidInput, match="is not a folder"):
        FolderSource(FOLDER / "LiFePO4.json").load()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"required_elements": ("Xq",)}, "'Xq' is not an element"),
        ({"allowed_n_elements": ()}, "allowed_n_elements"),
        ({"max_atoms": 0}, "max_atoms"),
    ],
)
def test_bad_filter_is_refused_with_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        PrototypeFilter(**kwargs)


# --------------------------------------------------------------------------- Materials Project


def _recorded_docs() -> list[dict]:
    with gzip.open(DATA / "mp_summary_response.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)["data"]


class FakeMaterialsProjectServer:
    """Answers mp-api's HTTP requests from the recorded summary documents.

    Serves ``/heartbeat`` and ``/materials/summary/`` (``_skip``/``_limit`` paging, the
    ``nsites_max`` and ``energy_above_hull_max`` criteria); anything else is a 404.
    """

    def __init__(self, docs: list[dict], summary_status: int = 200) -> None:
        self.docs = docs
        self.summary_status = summary_status
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Route every ``HTTPAdapter.send`` (sessions and ``requests.get``) to this server."""
        monkeypatch.setattr(HTTPAdapter, "send", lambda adapter, request, **kw: self.send(request))

    def send(self, request: requests.PreparedRequest) -> requests.Response:
        url = urlparse(request.url)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, params, dict(request.headers)))
        status, body = 404, {"detail": "not recorded"}
        if url.path == "/heartbeat":
            status = 200
            body = {"db_version": "2025.09.25", "version": "0.87.3"}
            body["access_controlled_batch_ids"] = []
        elif url.path == "/materials/summary/" and self.summary_status != 200:
            status, body = self.summary_status, {"detail": "internal error"}
        elif url.path == "/materials/summary/":
            docs = [
                d for d in self.docs
                if len(d["structure"]["sites"]) <= int(params.get("nsites_max", 10**9))
                and d["energy_above_hull"] <= float(params.get("energy_above_hull_max", "inf"))
            ]  # fmt: skip
            skip, limit = int(params.get("_skip", 0)), int(params.get("_limit", 1000))
            status = 200
            body = {"data": docs[skip : skip + limit], "meta": {"total_doc": len(docs)}}
        response = requests.Response()
        response.status_code = status
        response.url = request.url
        response.request = request
        response.encoding = "utf-8"
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(body).encode()
        return response

    def summary_requests(self) -> list[dict[str, str]]:
        return [params for path, params, _ in self.requests if path == "/materials/summary/"]


@pytest.fixture
def mp_server(monkeypatch: pytest.MonkeyPatch) -> FakeMaterialsProjectServer:
    """The real ``MPRester`` code path with only the HTTP transport replaced."""
    server = FakeMaterialsProjectServer(_recorded_docs())
    server.install(monkeypatch)
    monkeypatch.setenv("MP_API_KEY", FAKE_KEY)
    return server


def test_mp_source_through_mprester(mp_server: FakeMaterialsProjectServer) -> None:
    result = load_prototypes("mp")
    expected = sorted(d["material_id"] for d in _recorded_docs())
    assert [p.id for p in result.prototypes] == expected
    assert result.skipped == ()
    _assert_valid_set(result.prototypes)
    assert {p.source for p in result.prototypes} == {"materials_project"}
    lfp = next(p for p in result.prototypes if p.id == "mp-19017")
    assert lfp.species_amounts == {"Li": 4, "Fe": 4, "P": 4, "O": 16}
    (query,) = mp_server.summary_requests()
    assert query["elements"] == "Li"
    assert (query["nelements_min"], query["nelements_max"]) == ("3", "4")
    assert query["nsites_max"] == "200"
    assert query["deprecated"] == "False"
    assert query["batch_id_not_eq"] == "gnome_r2scan_statics"
    assert set(query["_fields"].split(",")) >= {"material_id", "structure"}
    keys = {h.get("x-api-key") for path, _, h in mp_server.requests if path != "/heartbeat"}
    assert keys == {FAKE_KEY}


def test_mp_source_pages_and_criteria(mp_server: FakeMaterialsProjectServer) -> None:
    paged = MaterialsProjectSource(chunk_size=3).load()
    assert len(paged.prototypes) == 7
    assert [q.get("_skip", "0") for q in mp_server.summary_requests()] == ["0", "3", "6"]
    mp_server.requests.clear()
    stable = MaterialsProjectSource(
        energy_above_hull_max=0.01, prototype_filter=PrototypeFilter(max_atoms=20)
    ).load()
    (query,) = mp_server.summary_requests()
    assert (query["energy_above_hull_max"], query["nsites_max"]) == ("0.01", "20")
    # recorded: LiZnPS4 (14 atoms, 0 eV), Li5AlS4 (20, 0.004), Li3SbS4 (16, 0); the rest larger
    assert [p.id for p in stable.prototypes] == ["mp-11175", "mp-1211100", "mp-753720"]


def test_mp_server_error_is_stage_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeMaterialsProjectServer(_recorded_docs(), summary_status=500)
    server.install(monkeypatch)
    monkeypatch.setenv("MP_API_KEY", FAKE_KEY)
    with pytest.raises(StageFailed, match="Materials Project summary query failed"):
        load_prototypes("mp")


def test_mp_missing_key_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    called = []
    source = MaterialsProjectSource(client_factory=lambda key: called.append(key))
    with pytest.raises(InvalidInput, match="set the MP_API_KEY environment variable"):
        source.load()
    assert called == []


class _FakeSummary:
    def __init__(self, docs: list) -> None:
        self.docs = docs
        self.kwargs: dict = {}

    def search(self, **kwargs):
        self.kwargs = kwargs
        return self.docs


class _FakeClient:
    def __init__(self, docs: list) -> None:
        self.materials = type("Materials", (), {})()
        self.materials.summary = _FakeSummary(docs)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_mp_client_is_injectable_and_docs_are_filtered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    docs = _recorded_docs()[:2]
    li2o = Structure.from_file(FOLDER / "Li2O.json")
    disordered = Structure.from_file(FOLDER / "Li7BiO6_disordered.cif")
    docs += [
        {"material_id": "mp-1960", "structure": li2o.as_dict()},
        {"material_id": "mp-0", "structure": disordered},  # a model field holds a Structure
        {"material_id": "mp-1", "structure": None},
        {"structure": li2o.as_dict()},
    ]
    client = _FakeClient(docs)
    keys: list[str] = []
    source = MaterialsProjectSource(
        api_key="explicit-key", client_factory=lambda k: keys.append(k) or client
    )
    result = source.load()
    assert keys == ["explicit-key"]
    assert client.materials.summary.kwargs["num_elements"] == (3, 4)
    assert [p.id for p in result.prototypes] == ["mp-1101528", "mp-19017"]
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons["mp-1960"].startswith("has 2 elements")
    assert reasons["mp-0"].startswith("disordered")
    assert reasons["mp-1"] == "summary document without structure"
    assert reasons["document 5"] == "summary document without material_id"
    assert prototypes_from_summary_docs([], PrototypeFilter()).prototypes == ()


def test_import_reads_no_key_and_loads_no_client() -> None:
    code = "import sys, htvs.prototypes; print('mp_api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
