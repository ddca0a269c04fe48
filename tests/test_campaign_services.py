"""`htvs campaign run --services`: the same campaign through real gRPC channels on loopback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from htvs.campaign import load_campaign, run_campaign
from htvs.campaign.remote import GrpcBackend, parse_services
from htvs.errors import InvalidInput
from htvs.store import open_store
from test_campaign import write_config
from tiny_models import tiny_model_pair

pytestmark = pytest.mark.grpc


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def servers(models):
    from htvs.composition.ship import load_ensemble
    from htvs.grpc.composition_service import CompositionServicer
    from htvs.grpc.server import create_server
    from htvs.grpc.substitution_service import SubstitutionServicer
    from htvs.thermo import ReferenceHull

    substitution, sub_port = create_server("127.0.0.1:0", SubstitutionServicer())
    composition, comp_port = create_server(
        "127.0.0.1:0",
        CompositionServicer(
            ReferenceHull.bundled(), load_ensemble("e_form", models[0]), load_ensemble("band_gap", models[1]),
            max_batch_rows=100,  # forces the backend to split batches
        ),
    )
    from htvs.conductivity.predict import load_ensemble as load_conductivity
    from htvs.grpc.conductivity_service import ConductivityServicer

    conductivity, cond_port = create_server(
        "127.0.0.1:0", ConductivityServicer(load_conductivity(), max_batch_rows=100)
    )
    for server in (substitution, composition, conductivity):
        server.start()
    yield f"127.0.0.1:{sub_port}", f"127.0.0.1:{comp_port}", f"127.0.0.1:{cond_port}"
    for server in (substitution, composition, conductivity):
        server.stop(0)


def test_services_are_found_by_health_check(servers) -> None:
    sub, comp, cond = servers
    assert parse_services(f"{comp},{sub}") == {"substitution": sub, "composition": comp}
    assert parse_services(f"{comp},{sub},{cond}")["conductivity"] == cond
    assert parse_services(f"substitution={sub},composition={comp}")["composition"] == comp
    with pytest.raises(InvalidInput, match="no address serves composition"):
        parse_services(sub)
    with pytest.raises(InvalidInput, match="127.0.0.1:1"):
        parse_services("127.0.0.1:1", timeout_s=0.5)


def test_campaign_through_services_equals_in_process(tmp_path: Path, models, servers) -> None:
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    local = run_campaign(config, open_store(tmp_path / "local-store"), tmp_path / "local")
    backend = GrpcBackend(parse_services(",".join(servers)), chunk_rows=100)
    try:
        remote = run_campaign(config, open_store(tmp_path / "remote-store"), tmp_path / "remote", backend=backend)
    finally:
        backend.close()
    assert remote == local
    for name in ("substitutions.parquet", "formulas.parquet", "prototypes.parquet", "candidates.csv"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes(), name
    a = pd.read_parquet(tmp_path / "local" / "screen.parquet")
    b = pd.read_parquet(tmp_path / "remote" / "screen.parquet")
    pd.testing.assert_frame_equal(a, b, check_dtype=False, atol=1e-6)
    a = pd.read_parquet(tmp_path / "local" / "conductivity.parquet")
    b = pd.read_parquet(tmp_path / "remote" / "conductivity.parquet")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_dtype=False, atol=1e-6)
