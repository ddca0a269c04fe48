"""Property-based tests (Hypothesis) of what a request can make StageService and the store inputs
of the batch RPCs do: whatever the fields hold, the answer is a clear refusal with a bounded
message (never INTERNAL or UNKNOWN), nothing outside the server's store is touched, and the
server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from htvs.grpc.gen import common_pb2  # noqa: E402
from htvs.grpc.gen import stage_pb2 as pb  # noqa: E402
from htvs.grpc.gen import stage_pb2_grpc as pb_grpc  # noqa: E402
from htvs.grpc.gen import substitution_pb2 as spb  # noqa: E402
from htvs.grpc.gen import substitution_pb2_grpc as spb_grpc  # noqa: E402
from htvs.grpc.server import MAX_STATUS_MESSAGE  # noqa: E402

pytestmark = pytest.mark.grpc

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
CONFIG = json.dumps({"name": "p", "prototypes": {"source": "obelix"}})
# text that looks like what a confused or hostile caller sends
texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", "..", "../x", "/etc/passwd", "stages/predict/0123456789abcdef/manifest.json",
                     "s3://other/x", "file:///etc", "a//b", "\x00", "stages/x/../../y", "~", "%2e%2e/x"]),
    st.text(alphabet="./a-_%", max_size=30),
)




def _loads_default_prototypes(config_json: str) -> bool:
    """A config that is valid and leaves the prototype source at its default (the 4,320 MP
    prototypes): the prototypes stage then really runs, for a minute on a busy machine, which is
    not what these tests are about (CONFIG covers a valid run on a small source)."""
    decoded = json.loads(config_json)
    return decoded is None or (isinstance(decoded, dict) and set(decoded) <= {"name"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A substitution server with its StageService and a directory store; yields the channel,
    the store folder and a sentinel file outside it that nothing may touch."""
    from htvs.grpc.serve import build_servicer, build_stage_servicer
    from htvs.grpc.server import create_server
    from htvs.store import open_store

    base = tmp_path_factory.mktemp("props")
    sentinel = base / "outside.txt"
    sentinel.write_text("untouched")
    store = open_store(base / "store")
    servicer = build_servicer("substitution")
    servicer.store = store
    grpc_server, port = create_server("127.0.0.1:0", servicer, build_stage_servicer("substitution", servicer, store))
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, base / "store", sentinel
    channel.close()
    grpc_server.stop(0)


def _assert_refused_cleanly(call) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert len(exc.details() or "") <= MAX_STATUS_MESSAGE


def _outside_untouched(store_dir: Path, sentinel: Path) -> None:
    assert sentinel.read_text() == "untouched"
    assert sorted(p.name for p in sentinel.parent.iterdir()) == sorted(["outside.txt", store_dir.name])


@given(stage=st.one_of(st.sampled_from(["prototypes", "substitute", "predict", "report", ""]), st.text(max_size=20)),
       config=st.one_of(st.just(CONFIG), st.text(max_size=80),
                        st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                     max_leaves=10).map(json.dumps).filter(lambda c: not _loads_default_prototypes(c))),
       store_url=texts,
       inputs=st.dictionaries(st.sampled_from(["prototypes", "substitute", "x"]), st.lists(texts, max_size=3), max_size=2),
       shard=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_run_stage_refuses_cleanly(server, stage, config, store_url, inputs, shard) -> None:
    channel, store_dir, sentinel = server
    request = pb.RunStageRequest(stage=stage, config_json=config, store_url=store_url,
                                 inputs={k: pb.ManifestKeys(keys=v) for k, v in inputs.items()})
    if shard is not None:
        request.shard = shard
    stub = pb_grpc.StageServiceStub(channel)

    def call():
        for _ in stub.RunStage(request, timeout=60):
            pass

    _assert_refused_cleanly(call)
    _outside_untouched(store_dir, sentinel)


@given(key=texts, store_url=texts)
def test_store_inputs_refuse_cleanly_and_stay_inside(server, key, store_url) -> None:
    channel, store_dir, sentinel = server
    stub = spb_grpc.SubstitutionServiceStub(channel)
    request = spb.SubstituteRequest(input=common_pb2.StoreInput(key=key, store_url=store_url))
    _assert_refused_cleanly(lambda: stub.Substitute(request, timeout=30))
    _outside_untouched(store_dir, sentinel)


def test_the_server_still_serves(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel, _, _ = server
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
