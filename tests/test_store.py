"""Artifact store: contract tests (run here on the local backend, on S3 in test_store_s3.py),
local-backend specifics, content hashing, settings, and stage manifests / run_cached."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

import htvs
from htvs.errors import DataNotFound, InvalidInput, StageFailed
from htvs.settings import Settings
from htvs.store import (
    ArtifactStore,
    LocalStore,
    StageManifest,
    code_version,
    config_hash,
    content_hash,
    manifest_key,
    open_store,
    read_manifest,
    run_cached,
    stage_key,
    write_manifest,
)
from htvs.store.base import TEMP_PREFIX

BAD_KEYS = [
    "",
    "/abs/key",
    "a//b",
    "a/",
    "..",
    "../escape",
    "a/../b",
    "./a",
    "a\\b",
    "a\nb",
    f"a/{TEMP_PREFIX}x",
]


def _li3ps4_table() -> pa.Table:
    """A small formula table (Li3PS4 and friends) with ints, floats, strings, nulls and lists."""
    return pa.table(
        {
            "formula": ["Li3PS4", "Li7La3Zr2O12", "Li3ClSO4"],
            "n_atoms": pa.array([8, 24, 9], type=pa.int32()),
            "e_form_eV_per_atom": [-1.25, -2.9, None],
            "elements": [["Li", "P", "S"], ["Li", "La", "Zr", "O"], ["Li", "Cl", "S", "O"]],
        }
    )


class StoreContract:
    """Behaviour every ArtifactStore backend must share; subclasses provide a ``store`` fixture."""

    def test_url(self, store: ArtifactStore) -> None:
        assert store.url.startswith(("file://", "s3://"))
        assert store.url in repr(store)

    def test_bytes_round_trip_and_overwrite(self, store: ArtifactStore) -> None:
        store.put_bytes("raw/a.bin", b"\x00\x01payload")
        assert store.get_bytes("raw/a.bin") == b"\x00\x01payload"
        assert store.exists("raw/a.bin")
        store.put_bytes("raw/a.bin", bytearray(b"second"))
        assert store.get_bytes("raw/a.bin") == b"second"
        store.put_bytes("raw/empty", b"")
        assert store.get_bytes("raw/empty") == b""
        assert not store.exists("raw")  # a prefix is not an object

    def test_json_round_trip(self, store: ArtifactStore) -> None:
        doc = {"stage": "thermo", "thresholds": {"e_hull_eV_per_atom": 0.2}, "ids": [1, 2]}
        store.put_json("cfg/thermo.json", doc)
        assert store.get_json("cfg/thermo.json") == doc
        with pytest.raises(InvalidInput, match="cfg/nan.json"):
            store.put_json("cfg/nan.json", {"x": float("nan")})
        assert not store.exists("cfg/nan.json")

    def test_table_round_trip_is_zstd_parquet(self, store: ArtifactStore) -> None:
        table = _li3ps4_table()
        store.put_table("tables/formulas.parquet", table)
        assert store.get_table("tables/formulas.parquet").equals(table)
        meta = pq.ParquetFile(pa.BufferReader(store.get_bytes("tables/formulas.parquet"))).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        with pytest.raises(InvalidInput, match="pyarrow.Table"):
            store.put_table("tables/bad.parquet", {"formula": ["Li3PS4"]})  # type: ignore[arg-type]

    def test_file_round_trip(self, store: ArtifactStore, tmp_path: Path) -> None:
        src = tmp_path / "in" / "Li3PS4.cif"
        src.parent.mkdir()
        src.write_bytes(b"data_Li3PS4\n" * 1000)
        store.put_file("files/Li3PS4.cif", src)
        dest = store.get_file("files/Li3PS4.cif", tmp_path / "out" / "deep" / "copy.cif")
        assert dest.read_bytes() == src.read_bytes()
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
        with pytest.raises(InvalidInput, match="missing.cif"):
            store.put_file("files/x", tmp_path / "missing.cif")

    def test_list_by_prefix_sorted(self, store: ArtifactStore) -> None:
        keys = ["a/b/c", "ab", "a/bc", "a/b1", "z", "a/a"]
        for key in keys:
            store.put_bytes(key, key.encode())
        assert store.list() == sorted(keys)
        assert store.list("") == sorted(keys)
        assert store.list("a/") == ["a/a", "a/b/c", "a/b1", "a/bc"]
        assert store.list("a/b") == ["a/b/c", "a/b1", "a/bc"]  # plain string prefix, as S3
        assert store.list("a/b/") == ["a/b/c"]
        assert store.list("a") == ["a/a", "a/b/c", "a/b1", "a/bc", "ab"]
        assert store.list("nothing/") == []

    def test_delete(self, store: ArtifactStore) -> None:
        store.put_bytes("d/x", b"1")
        store.put_bytes("d/y", b"2")
        store.delete("d/x")
        assert not store.exists("d/x")
        assert store.list("d/") == ["d/y"]
        store.delete("d/x")  # deleting a missing object is not an error

    def test_missing_key_names_key_and_store(self, store: ArtifactStore, tmp_path: Path) -> None:
        for read in (store.get_bytes, store.get_json, store.get_table):
            with pytest.raises(DataNotFound, match="no/such/key") as info:
                read("no/such/key")
            assert store.url in str(info.value)
        with pytest.raises(DataNotFound, match="no/such/key"):
            store.get_file("no/such/key", tmp_path / "x")
        assert not (tmp_path / "x").exists()
        assert not store.exists("no/such/key")

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_refused(self, store: ArtifactStore, key: str) -> None:
        expected = repr(key) if key else "empty"
        for call in (
            lambda: store.put_bytes(key, b"x"),
            lambda: store.get_bytes(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.put_table(key, _li3ps4_table()),
        ):
            with pytest.raises(InvalidInput) as info:
                call()
            assert expected in str(info.value)
        assert store.list() == []

    @pytest.mark.parametrize("prefix", ["/abs", "a//b/", "../", "a\\b"])
    def test_bad_prefixes_refused(self, store: ArtifactStore, prefix: str) -> None:
        with pytest.raises(InvalidInput, match="prefix"):
            store.list(prefix)

    def test_failing_writer_leaves_nothing(self, store: ArtifactStore) -> None:
        store.put_bytes("atomic/kept", b"old")
        with pytest.raises(RuntimeError, match="writer died"):
            with store.open_write("atomic/new") as f:
                f.write(b"half of the ")
                raise RuntimeError("writer died")
        with pytest.raises(RuntimeError, match="writer died"):
            with store.open_write("atomic/kept") as f:
                f.write(b"new but torn")
                raise RuntimeError("writer died")
        assert store.list() == ["atomic/kept"]
        assert store.get_bytes("atomic/kept") == b"old"

    def test_unserializable_table_leaves_nothing(self, store: ArtifactStore) -> None:
        table = pa.table({"x": pa.array([None], type=pa.month_day_nano_interval())})
        with pytest.raises(pa.ArrowNotImplementedError):
            store.put_table("atomic/interval.parquet", table)
        assert store.list() == []

    def test_table_writer_crash_mid_write_leaves_nothing(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def torn_write(table: pa.Table, where: object, **kwargs: object) -> None:
            where.write(b"PAR1" + b"\0" * 4096)  # type: ignore[attr-defined]
            raise OSError("disk vanished mid-write")

        store.put_table("atomic/t.parquet", _li3ps4_table())
        monkeypatch.setattr(pq, "write_table", torn_write)
        with pytest.raises(OSError, match="mid-write"):
            store.put_table("atomic/t.parquet", pa.table({"x": [1]}))
        with pytest.raises(OSError, match="mid-write"):
            store.put_table("atomic/u.parquet", pa.table({"x": [1]}))
        monkeypatch.undo()
        assert store.list() == ["atomic/t.parquet"]
        assert store.get_table("atomic/t.parquet").equals(_li3ps4_table())

    def test_run_cached_hit_and_crash_recovery(self, store: ArtifactStore) -> None:
        calls: list[str] = []

        def stage(st: ArtifactStore, prefix: str) -> tuple[list[str], dict[str, int]]:
            calls.append(prefix)
            st.put_table(f"{prefix}/out.parquet", _li3ps4_table())
            if len(calls) == 1:
                raise RuntimeError("killed mid-stage")
            return [f"{prefix}/out.parquet"], {"out": 3}

        cfg = {"e_hull_max_eV_per_atom": 0.2}
        with pytest.raises(RuntimeError, match="killed"):
            run_cached(store, "thermo", cfg, ["inputs/formulas.parquet"], stage)
        assert read_manifest(store, calls[0]) is None
        first = run_cached(store, "thermo", cfg, ["inputs/formulas.parquet"], stage)
        again = run_cached(store, "thermo", cfg, ["inputs/formulas.parquet"], stage)
        assert len(calls) == 2 and calls[0] == calls[1]
        assert again == first
        assert first.row_counts == {"out": 3}
        prefix = calls[0]
        assert store.list(prefix + "/") == [f"{prefix}/manifest.json", f"{prefix}/out.parquet"]


class TestLocalStoreContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")


# ---------------------------------------------------------------------------- local backend


def _temp_litter(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_local_url_and_layout(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "root")
    assert store.url == (tmp_path / "new" / "root").resolve().as_uri()
    store.put_bytes("stages/substitute/x.bin", b"1")
    assert (tmp_path / "new" / "root" / "stages" / "substitute" / "x.bin").read_bytes() == b"1"
    with pytest.raises(DataNotFound, match="missing"):
        LocalStore(tmp_path / "missing", create=False)


def test_local_failures_leave_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k/v", b"old")
    with pytest.raises(RuntimeError):
        with store.open_write("k/w") as f:
            f.write(b"x")
            raise RuntimeError("boom")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr("htvs.store.local.os.replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        store.put_bytes("k/v", b"new")
    monkeypatch.undo()
    assert _temp_litter(tmp_path) == []
    assert store.get_bytes("k/v") == b"old"
    assert store.list() == ["k/v"]


def test_local_listing_hides_stray_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("s/real", b"1")
    (tmp_path / "s" / f"{TEMP_PREFIX}abc123").write_bytes(b"left by a killed process")
    assert store.list() == ["s/real"]


def test_local_object_and_prefix_cannot_share_a_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"1")
    with pytest.raises(InvalidInput, match="'a/b'"):
        store.put_bytes("a/b", b"2")
    store.put_bytes("c/d", b"3")
    with pytest.raises(InvalidInput, match="'c'"):
        store.put_bytes("c", b"4")


def test_open_store_local_forms(tmp_path: Path) -> None:
    for location in (tmp_path / "p", str(tmp_path / "s"), (tmp_path / "u").as_uri()):
        store = open_store(location)
        assert isinstance(store, LocalStore)
        store.put_bytes("x", b"1")
    assert (tmp_path / "u" / "x").exists()
    store = open_store(tmp_path / "p")
    assert open_store(store) is store


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/dir",
        "s3://",
        "file://otherhost/dir",
        "s3://Bad_Bucket/x",
        "s3://bkt/a/../b",
        "s3://bkt/x?versionId=1",
        "  ",
    ],
)
def test_open_store_bad_urls(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        open_store(url)
    assert repr(url.strip()) in str(info.value) or url.strip() in str(info.value)


def test_open_store_s3_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTVS_S3_ENDPOINT", raising=False)
    with pytest.raises(InvalidInput, match="HTVS_S3_ENDPOINT"):
        open_store("s3://htvs/campaign")


def test_settings_from_env_and_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTVS_S3_ENDPOINT", "minio.local:9000")
    monkeypatch.setenv("HTVS_S3_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("HTVS_S3_SECRET_KEY", "very-secret")
    monkeypatch.setenv("HTVS_S3_SECURE", "false")
    monkeypatch.setenv("HTVS_S3_REGION", "eu-west-1")
    s = Settings.from_env()
    assert (s.s3_endpoint, s.s3_secure, s.s3_region) == ("minio.local:9000", False, "eu-west-1")
    assert s.s3_secret_key is not None and s.s3_secret_key.get_secret_value() == "very-secret"
    assert "very-secret" not in repr(s)
    assert Settings(s3_endpoint="other:9000").s3_endpoint == "other:9000"
    with pytest.raises(ValidationError):
        s.s3_region = "us-east-1"  # type: ignore[misc]  # frozen


def test_import_reads_no_environment_and_no_minio() -> None:
    code = """
import collections.abc, json, os, sys

class Spy(collections.abc.MutableMapping):
    def __init__(self, env): self.env, self.seen, self.iterated = env, [], False
    def __getitem__(self, k): self.seen.append(k); return self.env[k]
    def __setitem__(self, k, v): self.env[k] = v
    def __delitem__(self, k): del self.env[k]
    def __iter__(self): self.iterated = True; return iter(self.env)
    def __len__(self): return len(self.env)
    def __contains__(self, k): self.seen.append(k); return k in self.env

spy = os.environ = Spy(os.environ)
import htvs.store, htvs.store.s3, htvs.store.local, htvs.store.manifest, htvs.store.keys
import htvs.settings
print(json.dumps({
    "htvs_vars_read": [k for k in spy.seen if str(k).startswith("HTVS_")],
    "iterated": spy.iterated,
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("minio", "pyarrow", "urllib3")),
}))
"""
    env = {**os.environ, "HTVS_S3_ENDPOINT": "should-not-be-read:1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"htvs_vars_read": [], "iterated": False, "heavy": []}


# ---------------------------------------------------------------------------- keys


class Phase(enum.Enum):
    CUBIC = "cubic"


@dataclasses.dataclass(frozen=True)
class ThermoConfig:
    e_hull_max: float = 0.2
    phi_ox_min: float = 4.0
    elements: tuple[str, ...] = ("Li", "S")
    data: Path = Path("data/mp")
    phase: Phase = Phase.CUBIC


class ThermoModel(BaseModel):
    e_hull_max: float = 0.2
    phi_ox_min: float = 4.0
    elements: tuple[str, ...] = ("Li", "S")
    data: Path = Path("data/mp")
    phase: Phase = Phase.CUBIC


def test_config_hash_is_canonical_sha256() -> None:
    expected = hashlib.sha256(b'{"a":[1,2.5,"x"],"b":{"c":null,"d":true}}').hexdigest()
    assert config_hash({"b": {"d": True, "c": None}, "a": (1, 2.5, "x")}) == expected
    assert config_hash({}) == hashlib.sha256(b"{}").hexdigest()
    # the same configuration as a dataclass, a pydantic model and plain containers
    plain = {
        "e_hull_max": 0.2,
        "phi_ox_min": 4.0,
        "elements": ["Li", "S"],
        "data": "data/mp",
        "phase": "cubic",
    }
    assert config_hash(ThermoConfig()) == config_hash(ThermoModel()) == config_hash(plain)
    assert config_hash(ThermoConfig(e_hull_max=0.1 + 0.2)) != config_hash(ThermoConfig(0.3))
    assert config_hash({"p": PurePosixPath("a/b")}) == config_hash({"p": "a/b"})
    assert config_hash({"s": {3, 1, 2}}) == config_hash({"s": [1, 2, 3]})
    assert config_hash(float("nan")) == config_hash(float("nan"))
    assert len(config_hash(ThermoConfig())) == 64


def test_config_hash_refuses_opaque_objects() -> None:
    with pytest.raises(InvalidInput, match="object"):
        config_hash({"model": object()})
    with pytest.raises(InvalidInput, match="'1'"):
        config_hash({1: "a", "1": "b"})


def test_content_hash_and_stage_key() -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""
    assert content_hash(b"") == empty
    assert stage_key("substitute", empty) == "stages/substitute/e3b0c44298fc1c14"
    with pytest.raises(InvalidInput, match="'a/b'"):
        stage_key("a/b", empty)
    with pytest.raises(InvalidInput, match="'xyz'"):
        stage_key("thermo", "xyz")


# ---------------------------------------------------------------------------- manifests


def _manifest(**changes: object) -> StageManifest:
    fields = dict(
        stage="thermo",
        config_hash=config_hash({"x": 1}),
        input_keys=("in/a.parquet",),
        output_keys=("stages/thermo/0123456789abcdef/out.parquet",),
        model_versions={"roost_ef": "sha256:abc"},
        row_counts={"out": 3},
        timings_s={"total": 0.5},
    )
    fields.update(changes)
    return StageManifest(**fields)  # type: ignore[arg-type]


def test_manifest_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    prefix = "stages/thermo/0123456789abcdef"
    assert read_manifest(store, prefix) is None
    manifest = _manifest()
    assert write_manifest(store, prefix, manifest) == manifest_key(prefix)
    assert read_manifest(store, prefix) == manifest
    assert manifest.code_version.startswith(htvs.__version__)
    assert manifest.created.endswith("+00:00")
    store.put_json(manifest_key(prefix), {"stage": "thermo"})
    with pytest.raises(StageFailed, match="manifest"):
        read_manifest(store, prefix)


def test_code_version_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    code_version.cache_clear()
    monkeypatch.setattr("htvs.store.manifest.subprocess.run", no_git)
    try:
        assert code_version() == htvs.__version__
    finally:
        code_version.cache_clear()


class RecordingStore(LocalStore):
    """A local store that records the order of writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def open_write(self, key: str):  # type: ignore[override]
        self.writes.append(key)
        return super().open_write(key)


def _two_output_stage(calls: list[str]):
    def fn(store: ArtifactStore, prefix: str) -> tuple[list[str], dict[str, int], dict[str, float]]:
        calls.append(prefix)
        store.put_table(f"{prefix}/a.parquet", _li3ps4_table())
        store.put_json(f"{prefix}/b.json", {"n": 1})
        return [f"{prefix}/a.parquet", f"{prefix}/b.json"], {"a": 3}, {"featurize": 0.25}

    return fn


def test_run_cached_writes_manifest_last_and_hits(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    calls: list[str] = []
    fn = _two_output_stage(calls)
    models = {"r": "1"}
    m = run_cached(store, "predict", ThermoConfig(), ["in/f.parquet"], fn, model_versions=models)
    assert store.writes[-1] == manifest_key(calls[0])
    assert len(store.writes) == 3
    assert m.output_keys == (f"{calls[0]}/a.parquet", f"{calls[0]}/b.json")
    assert m.row_counts == {"a": 3} and m.model_versions == {"r": "1"}
    assert set(m.timings_s) == {"featurize", "total"}
    assert calls[0].startswith("stages/predict/")
    hit = run_cached(store, "predict", ThermoConfig(), ["in/f.parquet"], fn, model_versions=models)
    assert hit == m and len(calls) == 1 and len(store.writes) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"config": ThermoConfig(e_hull_max=0.1)},
        {"input_keys": ["in/other.parquet"]},
        {"input_keys": ["in/f.parquet", "in/g.parquet"]},
        {"model_versions": {"r": "2"}},
    ],
    ids=["config", "inputs", "more-inputs", "model"],
)
def test_run_cached_recomputes_on_change(tmp_path: Path, change: dict) -> None:
    store = LocalStore(tmp_path)
    calls: list[str] = []
    fn = _two_output_stage(calls)
    base = {"config": ThermoConfig(), "input_keys": ["in/f.parquet"], "model_versions": {"r": "1"}}
    run_cached(store, "predict", fn=fn, **base)  # type: ignore[arg-type]
    second = run_cached(store, "predict", fn=fn, **{**base, **change})  # type: ignore[arg-type]
    assert len(calls) == 2 and calls[0] != calls[1]
    assert second.config_hash == config_hash({**base, **change}["config"])


def test_run_cached_refuses_missing_outputs_and_corrupt_manifest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    def liar(st: ArtifactStore, prefix: str) -> tuple[list[str], dict[str, int]]:
        return [f"{prefix}/never-written.parquet"], {}

    with pytest.raises(StageFailed, match="never-written"):
        run_cached(store, "thermo", {}, [], liar)
    assert [k for k in store.list() if k.endswith("manifest.json")] == []

    calls: list[str] = []
    run_cached(store, "thermo", {"v": 1}, [], _two_output_stage(calls))
    store.put_bytes(manifest_key(calls[0]), b"{not json")
    run_cached(store, "thermo", {"v": 1}, [], _two_output_stage(calls))
    assert len(calls) == 2
    assert read_manifest(store, calls[0]) is not None
