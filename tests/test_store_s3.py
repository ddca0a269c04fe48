"""S3 backend of the artifact store, against a moto S3 server on loopback (marker ``s3``).

The shared contract (``StoreContract`` from test_store.py) runs here on S3, and the S3 backend
is compared with the local one on the same data.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

pytest.importorskip("moto", reason="moto[server] is not installed: no local S3 server to test on")
pytest.importorskip("minio", reason="the minio SDK is not installed: the S3 store cannot run")

from test_store import StoreContract, _li3ps4_table  # noqa: E402

from htvs.errors import DataNotFound  # noqa: E402
from htvs.settings import Settings  # noqa: E402
from htvs.store import LocalStore, S3Store, open_store, run_cached  # noqa: E402

pytestmark = pytest.mark.s3

_bucket_ids = itertools.count()


def _new_bucket() -> str:
    return f"htvs-test-{os.getpid()}-{next(_bucket_ids)}"


class TestS3StoreContract(StoreContract):
    @pytest.fixture
    def store(self, s3_settings: Settings) -> S3Store:
        return S3Store(_new_bucket(), "campaign-1", settings=s3_settings, create_bucket=True)


def test_s3_gives_the_same_results_as_local(tmp_path: Path, s3_settings: Settings) -> None:
    s3 = open_store(f"s3://{_new_bucket()}/runs/a", s3_settings, create_bucket=True)
    local = open_store(tmp_path / "local")
    assert s3.url.startswith("s3://htvs-test-") and s3.url.endswith("/runs/a")
    table = _li3ps4_table()
    for store in (s3, local):
        store.put_bytes("raw/z.bin", b"z" * 100)
        store.put_bytes("raw/a.bin", b"\x00\xff")
        store.put_json("cfg.json", {"threshold_V": 4.0})
        store.put_table("tables/formulas.parquet", table)
    assert (
        s3.list()
        == local.list()
        == ["cfg.json", "raw/a.bin", "raw/z.bin", "tables/formulas.parquet"]
    )
    assert s3.list("raw/") == local.list("raw/")
    for key in ("raw/z.bin", "raw/a.bin", "cfg.json"):
        assert s3.get_bytes(key) == local.get_bytes(key)
    s3_table = s3.get_table("tables/formulas.parquet")
    assert s3_table.equals(local.get_table("tables/formulas.parquet"))
    assert s3_table.equals(table)


def test_s3_run_cached_hit(s3_settings: Settings) -> None:
    store = S3Store(_new_bucket(), settings=s3_settings, create_bucket=True)
    calls: list[str] = []

    def fn(st: object, prefix: str) -> tuple[list[str], dict[str, int]]:
        calls.append(prefix)
        store.put_table(f"{prefix}/out.parquet", _li3ps4_table())
        return [f"{prefix}/out.parquet"], {"out": 3}

    first = run_cached(store, "thermo", {"phi_ox_min_V": 4.0}, ["in/x"], fn)
    assert run_cached(store, "thermo", {"phi_ox_min_V": 4.0}, ["in/x"], fn) == first
    assert len(calls) == 1
    assert store.list("stages/thermo/") == [f"{calls[0]}/manifest.json", f"{calls[0]}/out.parquet"]


def test_s3_prefixes_isolate_stores(s3_settings: Settings) -> None:
    bucket = _new_bucket()
    a = S3Store(bucket, "a", settings=s3_settings, create_bucket=True)
    b = S3Store(bucket, "b", settings=s3_settings)
    whole = S3Store(bucket, settings=s3_settings)
    a.put_bytes("k", b"1")
    b.put_bytes("k", b"2")
    assert a.list() == b.list() == ["k"]
    assert whole.list() == ["a/k", "b/k"]
    assert whole.url == f"s3://{bucket}"


def test_s3_missing_bucket(s3_settings: Settings) -> None:
    with pytest.raises(DataNotFound, match="no-such-bucket-here"):
        S3Store("no-such-bucket-here", settings=s3_settings)


def test_open_store_s3_from_environment(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = moto_endpoint.removeprefix("http://")
    monkeypatch.setenv("HTVS_S3_ENDPOINT", host)  # no scheme: HTVS_S3_SECURE decides
    monkeypatch.setenv("HTVS_S3_SECURE", "false")
    monkeypatch.setenv("HTVS_S3_ACCESS_KEY", "testing")
    monkeypatch.setenv("HTVS_S3_SECRET_KEY", "testing")
    monkeypatch.setenv("HTVS_S3_REGION", "us-east-1")
    store = open_store(f"s3://{_new_bucket()}", create_bucket=True)
    store.put_file("f.bin", _write(tmp_path / "f.bin", b"payload"))
    assert store.get_file("f.bin", tmp_path / "back.bin").read_bytes() == b"payload"
    assert isinstance(open_store(tmp_path / "x"), LocalStore)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_campaign_on_s3_equals_local(tmp_path: Path, s3_settings: Settings) -> None:
    """The embedded runner against the S3 backend writes the same final tables as a local run."""
    from htvs.campaign import load_campaign, run_campaign
    from test_campaign import write_config
    from tiny_models import tiny_model_pair

    config = load_campaign(write_config(tmp_path / "c.yaml", tiny_model_pair(tmp_path / "models")))
    s3 = open_store(f"s3://{_new_bucket()}/campaigns", s3_settings, create_bucket=True)
    remote = run_campaign(config, s3, tmp_path / "s3-out")
    local = run_campaign(config, open_store(tmp_path / "store"), tmp_path / "local-out")
    assert remote == local
    assert any(k.endswith("manifest.json") for k in s3.list("stages/"))
    for name in ("substitutions.parquet", "formulas.parquet", "screen.parquet", "funnel.json", "candidates.csv"):
        assert (tmp_path / "s3-out" / name).read_bytes() == (tmp_path / "local-out" / name).read_bytes(), name
