"""Campaigns through the services: every stage on the service that hosts it (StageService),
over real gRPC channels on loopback, with the data in a real S3-compatible server (moto)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grpc
import pandas as pd
import pytest

from htvs.campaign import load_campaign, run_campaign
from htvs.campaign.graph import STAGES
from htvs.campaign.remote import StageClient, parse_services
from htvs.errors import InvalidInput
from htvs.store import open_store
from test_campaign import write_config
from tiny_models import tiny_model_pair

pytest.importorskip("moto", reason="moto[server] is not installed: no local S3 server to test on")
pytestmark = [pytest.mark.grpc, pytest.mark.s3]

_buckets = itertools.count()
#: A demo-length MD protocol, so that the dft service's stage runs in seconds.
TINY_MD = {"top_k": 1, "temperatures_k": [800, 1200], "heat_ps": 0.01, "equilibrate_ps": 0.01,
           "production_ps": 0.04, "smoothing": "none", "relax_max_steps": 3, "min_supercell_length_angstrom": 0}
#: Files of a campaign's --out folder compared between the execution paths.
TABLES = ("substitutions.parquet", "formulas.parquet", "prototypes.parquet", "predictions.parquet",
          "screen.parquet", "generated.parquet", "rejected.parquet", "structures.parquet", "conductivity.parquet",
          "validation.parquet")
#: Stage 5 on: the two best screened formulas, one sample each, on the generator service.
TINY_GENERATION = {"enabled": True, "max_formulas": 2, "n_samples": 1, "batch_crystals": 4}
TEXTS = ("funnel.json", "candidates.csv", "structure_candidates.csv")


def assert_same_outputs(a: Path, b: Path) -> None:
    """The two --out folders hold the same tables (floats to 1e-6) and the same text files."""
    for name in TABLES:
        left, right = pd.read_parquet(a / name), pd.read_parquet(b / name)
        assert len(left) == len(right), name
        pd.testing.assert_frame_equal(left, right, check_dtype=False, atol=1e-6, obj=name)
    for name in TEXTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def s3_root(moto_endpoint):
    """A fresh bucket on the moto server, as the services' store (their own credentials)."""
    from htvs.settings import Settings
    from htvs.store import S3Store

    settings = Settings(s3_endpoint=moto_endpoint, s3_access_key="testing", s3_secret_key="testing",
                        s3_secure=False, s3_region="us-east-1")
    return S3Store(f"htvs-services-{os.getpid()}-{next(_buckets)}", settings=settings, create_bucket=True)


@pytest.fixture(scope="module")
def services(models, s3_root):
    """The six services on loopback, each with its StageService on the S3 store; name -> address."""
    from htvs.grpc.serve import build_servicer, build_stage_servicer
    from htvs.grpc.server import create_server

    resources = {"composition": {"e_form_models": models[0], "band_gap_models": models[1]}}
    servers, addresses = [], {}
    for name in ("substitution", "composition", "generator", "structure", "conductivity", "dft"):
        servicer = build_servicer(name, **resources.get(name, {}))
        server, port = create_server("127.0.0.1:0", servicer,
                                     build_stage_servicer(name, servicer, s3_root, **resources.get(name, {})))
        server.start()
        servers.append(server)
        addresses[name] = f"127.0.0.1:{port}"
    yield addresses
    for server in servers:
        server.stop(0)


def test_every_stage_of_the_graph_has_a_host(services) -> None:
    hosted = {}
    for name, address in services.items():
        with grpc.insecure_channel(address) as channel:
            from htvs.grpc.gen import stage_pb2, stage_pb2_grpc

            reply = stage_pb2_grpc.StageServiceStub(channel).ListStages(stage_pb2.ListStagesRequest())
        assert reply.service == name
        hosted.update({s.name: name for s in reply.stages})
    assert hosted == {s.name: s.service for s in STAGES if s.service}


def test_services_are_found_by_asking_them(services) -> None:
    plain = ",".join(services.values())
    assert parse_services(plain) == services
    assert parse_services(f"composition={services['composition']}") == {"composition": services["composition"]}
    with pytest.raises(InvalidInput, match="unknown service 'gpu'"):
        parse_services("gpu=127.0.0.1:1")
    with pytest.raises(InvalidInput, match="127.0.0.1:1"):
        parse_services("127.0.0.1:1", timeout_s=0.5)


@pytest.mark.slow
def test_campaign_through_the_six_services_equals_in_process(tmp_path: Path, models, services, s3_root) -> None:
    """Every table of the demo-shaped campaign (stages 5 and 7 included, on a few samples and a
    demo-length MD protocol) is the same in process and through the services, with the data in S3."""
    config = load_campaign(write_config(tmp_path / "c.yaml", models, conductivity={"min_p_superionic": 0.0},
                                        generation=TINY_GENERATION,
                                        validation={**TINY_MD, "workdir": str(tmp_path / "md-local")}))
    local = run_campaign(config, open_store(tmp_path / "local-store"), tmp_path / "local")
    remote_config = config.model_copy(update={"validation": config.validation.model_copy(
        update={"workdir": tmp_path / "md-remote"})})
    client = StageClient(services)
    try:
        store = s3_root.below("campaigns/test")
        remote = run_campaign(remote_config, store, tmp_path / "remote", services=client)
    finally:
        client.close()
    assert remote == local
    assert_same_outputs(tmp_path / "local", tmp_path / "remote")
    # the stages ran on the services: their manifests are in S3, and the MD ran in the dft
    # service's work folder, not the client's
    manifests = [k for k in store.list("stages/") if k.endswith("manifest.json")]
    assert {k.split("/")[1] for k in manifests} == {s.name for s in STAGES if s.service}
    assert any((tmp_path / "md-remote").iterdir())


def test_a_stage_refuses_what_is_not_its_input(tmp_path: Path, models, services, s3_root) -> None:
    from htvs.grpc.gen import stage_pb2 as pb
    from htvs.grpc.gen import stage_pb2_grpc

    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    base = {"config_json": config.model_dump_json(), "store_url": s3_root.url}
    cases = [
        (pb.RunStageRequest(stage="structures", **base), "composition", "not run by the composition service"),
        (pb.RunStageRequest(stage="screen", **base), "composition", "needs the manifests of"),
        (pb.RunStageRequest(stage="screen", inputs={"predict": pb.ManifestKeys(keys=["../x"] * 3)}, **base),
         "composition", "not a manifest key of stage 'predict'"),
        (pb.RunStageRequest(stage="prototypes", config_json="{", store_url=s3_root.url), "substitution",
         "not valid JSON"),
        (pb.RunStageRequest(stage="prototypes", config_json=base["config_json"], store_url="s3://other-bucket/x"),
         "substitution", "outside this server's store"),
        (pb.RunStageRequest(stage="prototypes", config_json=base["config_json"], store_url=s3_root.url + "/a/../b"),
         "substitution", "'..' segment"),
        (pb.RunStageRequest(stage="prototypes", shard=0, **base), "substitution", "not sharded"),
    ]
    for request, service, message in cases:
        with grpc.insecure_channel(services[service]) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                list(stage_pb2_grpc.StageServiceStub(channel).RunStage(request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, caught.value.details())
        assert message in caught.value.details()


def test_models_other_than_the_served_ones_are_refused(tmp_path: Path, services, s3_root) -> None:
    other = tiny_model_pair(tmp_path / "other")
    config = load_campaign(write_config(tmp_path / "c.yaml", other))
    client = StageClient(services)
    try:
        from htvs.errors import ModelNotReady

        with pytest.raises(ModelNotReady, match="serves"):
            run_campaign(config, s3_root.below("campaigns/other"), tmp_path / "o", services=client)
    finally:
        client.close()


def _objects(store, prefix: str = "stages/") -> dict[str, bytes]:
    """Every stage output under ``prefix`` (manifests left out: they record times)."""
    return {key: store.get_bytes(key) for key in store.list(prefix) if not key.endswith("manifest.json")}


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["services", "in-process"])
def test_the_rendered_workflow_template_runs(tmp_path: Path, models, services, s3_root, moto_endpoint,
                                             execution: str) -> None:
    """Execute the rendered WorkflowTemplate itself (tests/argo_local.py): every task's container
    command and args as a local process against the loopback services and the S3 server; every
    stage output and report file equals the embedded run's (byte for byte; floats of a table to
    1e-6 where the services' ONNX sessions use other thread counts)."""
    import sys

    import yaml
    from argo_local import LocalArgo
    from test_argo import load_definition

    from htvs.campaign.runner import report_prefix

    (tmp_path / "config").mkdir()
    config_path = write_config(tmp_path / "config" / "campaign.yaml", models,
                               conductivity={"min_p_superionic": 0.0}, generation=TINY_GENERATION)
    config = load_campaign(config_path)
    local_store = open_store(tmp_path / "local-store")
    run_campaign(config, local_store, tmp_path / "local")

    template = yaml.safe_load(load_definition().render(execution))
    (tmp_path / "pod-tmp").mkdir()
    argo = LocalArgo(
        commands={"htvs": [str(Path(sys.executable).with_name("htvs"))]},
        mounts={"config": tmp_path / "config", "tmp": tmp_path / "pod-tmp"},
        secrets={"htvs-s3": {"accessKey": "testing", "secretKey": "testing"}},
        env={"HTVS_S3_REGION": "us-east-1"},
    )
    parameters = {"store": f"{s3_root.url}/argo/{execution}",
                  "s3-endpoint": moto_endpoint.removeprefix("http://"), "s3-secure": "false"}
    if execution == "services":
        parameters["services"] = ",".join(f"{name}={address}" for name, address in services.items())
    runs = argo.submit(template, parameters)

    assert [r.task for r in runs].count("predict") == config.composition.shards
    store = s3_root.below(f"argo/{execution}")
    expected = _objects(local_store)
    assert _objects(store).keys() == expected.keys()
    for key, data in _objects(store).items():
        if key.endswith(".parquet") and data != expected[key]:  # ONNX thread counts differ: floats to 1e-6
            pd.testing.assert_frame_equal(store.get_table(key).to_pandas(), local_store.get_table(key).to_pandas(),
                                          check_dtype=False, atol=1e-6, obj=key)
        else:
            assert data == expected[key], key
    for name in ("funnel.json", "candidates.csv", "structure_candidates.csv"):
        key = f"{report_prefix(config)}/{name}"
        assert store.get_bytes(key) == local_store.get_bytes(key), name
