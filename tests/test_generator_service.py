"""``htvs.v1.StructureGeneratorService`` on loopback: Generate (per-row errors, refused requests,
a store input in chunks), Info, health, settings, and the server ``htvs serve generator`` starts.

The generator is the shipped one (``src/htvs/models/generator``), which is retrained from time to
time: formulas are built from the elements its card lists, and no test asserts a generated number,
only that the structures are valid cells of the asked composition and the stage function's own.
Sampling is 1000 diffusion steps per call (a few seconds for a few small cells on one core), so
every test samples at most twice.
"""

from __future__ import annotations

import dataclasses
import threading
import urllib.request
import warnings

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import generator_pb2 as pb
from htvs.grpc.gen import generator_pb2_grpc as pb_grpc
from htvs.grpc.serve import AVAILABLE_SERVICES, build_servicer, build_stage_servicer
from htvs.grpc.server import create_server

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(180)]

SERVICE = "htvs.v1.StructureGeneratorService"
#: Formulas per request of the servers here (a 7-row table is generated in chunks of 4 and 3).
MAX_FORMULAS = 4
SEED = 7


@pytest.fixture(scope="module")
def servicer():
    return build_servicer("generator", generator_device="cpu", generator_threads=1, max_batch_rows=MAX_FORMULAS)


@pytest.fixture(scope="module")
def known(servicer) -> list[str]:
    """Element symbols the model has a trained embedding for, by atomic number."""
    from pymatgen.core import Element

    return [Element.from_Z(z).symbol for z in sorted(servicer.generator.elements)]


@pytest.fixture(scope="module")
def formulas(servicer, known) -> dict[str, str]:
    """Two formulas the model can generate, one with an element it does not know, one above the
    atom limit."""
    from pymatgen.core import Element

    a, b = [s for s in known if s != "O"][:2]
    unknown = next(Element.from_Z(z).symbol for z in range(1, 95) if z not in servicer.generator.elements)
    oxide = "O" in known
    return {
        "good": f"{a}{b}O3" if oxide else f"{a}{b}2",
        "good2": f"{b}O" if oxide else f"{a}2{b}",
        "unknown": f"{a}{unknown}",
        "unknown_symbol": unknown,
        "too_many": f"{a}{servicer.max_atoms + 1}",
    }


@pytest.fixture(scope="module")
def server(servicer, tmp_path_factory):
    """(server, channel, store, address) of the generator with its StageService and a directory store."""
    from htvs.store import open_store

    store = open_store(tmp_path_factory.mktemp("generator-store"))
    servicer.store = store
    server, port = create_server("127.0.0.1:0", servicer, build_stage_servicer("generator", servicer, store),
                                 metrics_port=0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel, store, f"127.0.0.1:{port}"
    channel.close()
    server.stop(None).wait()


@pytest.fixture(scope="module")
def stub(server):
    return pb_grpc.StructureGeneratorServiceStub(server[1])


@pytest.fixture(scope="module")
def batch(formulas) -> list[str]:
    return [formulas["good"], formulas["unknown"], formulas["too_many"], formulas["good2"]]


@pytest.fixture(scope="module")
def answer(stub, batch) -> pb.GenerateResponse:
    """Generate on the batch: two good formulas and two refused, 2 samples each."""
    return stub.Generate(pb.GenerateRequest(formulas=batch, n_samples=2, seed=SEED), timeout=150)


def read_cif(text: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def assert_generated(row: pb.GeneratedStructureRow, formula: str) -> None:
    from pymatgen.core import Composition

    assert not row.HasField("error"), row.error.message
    structure = read_cif(row.cif)
    assert structure.composition == Composition(formula)  # the atoms as written, no reduction
    assert row.num_atoms == len(structure) == Composition(formula).num_atoms
    assert row.volume_a3 == pytest.approx(structure.volume, rel=1e-4) and row.volume_a3 > 0


# --------------------------------------------------------------------------- Generate


def test_generate_returns_cifs_and_goes_on_past_bad_rows(answer, batch, formulas, known, servicer, server) -> None:
    rows = answer.rows
    assert [(r.formula, r.sample if r.HasField("sample") else None) for r in rows] == [
        (batch[0], 0), (batch[0], 1), (batch[1], None), (batch[2], None), (batch[3], 0), (batch[3], 1)]
    assert (answer.n_formulas, answer.n_generated, answer.n_errors) == (4, 4, 2)
    assert (answer.n_samples, answer.seed, answer.max_atoms) == (2, SEED, servicer.max_atoms)
    assert answer.step_lr == pytest.approx(1e-5)
    for row in (rows[0], rows[1]):
        assert_generated(row, formulas["good"])
    for row in (rows[4], rows[5]):
        assert_generated(row, formulas["good2"])
    assert rows[0].cif != rows[1].cif  # two samples, two structures
    unknown, too_many = rows[2], rows[3]
    for row, index in ((unknown, 1), (too_many, 2)):
        assert row.error.index == index and row.error.value == batch[index] and row.error.kind == "InvalidInput"
        assert not row.cif and not row.HasField("volume_a3")
    assert f"element {formulas['unknown_symbol']} " in unknown.error.message
    assert ", ".join(known) in unknown.error.message  # the elements the model knows
    assert f"{servicer.max_atoms + 1} atoms" in too_many.error.message
    assert f"max_atoms={servicer.max_atoms}" in too_many.error.message
    # the rows are counted by the metrics endpoint
    with urllib.request.urlopen(f"http://127.0.0.1:{server[0].metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    labels = 'method="Generate",service="StructureGeneratorService"'
    assert f"htvs_rows_processed_total{{{labels}}} 6.0" in text
    assert f"htvs_row_errors_total{{{labels}}} 2.0" in text


@pytest.mark.slow
def test_the_service_answers_what_the_stage_answers(answer, batch, servicer) -> None:
    """Same formulas, samples and seed: the stage function gives the very same CIFs."""
    from htvs.generation.stage import GenerationConfig, GeneratedStructure, generate_structures

    expected = generate_structures(batch, servicer.generator, GenerationConfig(n_samples=2, seed=SEED))
    cifs = [r.cif for r in expected if isinstance(r, GeneratedStructure)]
    assert [r.cif for r in answer.rows if r.cif] == cifs


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "GenerateRequest.formulas is empty"),
        ({"formulas": ["LiO"] * (MAX_FORMULAS + 1)}, f"limit of {MAX_FORMULAS}"),
        ({"n_samples": 0}, "GenerateRequest: n_samples must be an integer between 1 and 32, got 0"),
        ({"n_samples": 33}, "got 33"),
        ({"n_samples": 4_000_000_000}, "got 4000000000"),
        ({"seed": 2**53}, "seed must be <= 9007199254740991, got 9007199254740992"),
        ({"seed": 2**64 - 1}, "got 18446744073709551615"),
        ({"step_lr": -1.0}, "step_lr must be >= 0, got -1.0"),
        ({"step_lr": 2.0}, "step_lr must be <= 1, got 2.0"),
        ({"step_lr": float("nan")}, "got nan"),
        ({"step_lr": float("inf")}, "got inf"),
        ({"input": common_pb2.StoreInput(key="k/1")}, "or input, not both"),
    ],
    ids=["empty", "too-many-formulas", "n-samples-0", "n-samples-above", "n-samples-huge", "seed-2^53",
         "seed-2^64-1", "step-lr-negative", "step-lr-above-1", "step-lr-nan", "step-lr-inf", "inline-and-store"],
)
def test_bad_requests_are_invalid_argument(stub, fields, named) -> None:
    request = pb.GenerateRequest(**fields)
    if "formulas" not in fields and fields:
        request.formulas.append("LiO")
    if "input" in fields:
        request.formulas.append("LiO")
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.details()


def test_a_negative_seed_is_invalid_argument(server) -> None:
    """A client that writes seed -1 as a signed 64-bit varint (what an int64 field would send)
    reaches the server as 2^64-1 and is refused, naming that value."""
    good = pb.GenerateRequest(formulas=["LiO"]).SerializeToString()
    negative = bytes([3 << 3]) + bytes([0xFF] * 9 + [0x01])  # field 3, varint of -1 as int64
    call = server[1].unary_unary(f"/{SERVICE}/Generate", request_serializer=lambda raw: raw,
                                 response_deserializer=pb.GenerateResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(good + negative, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seed must be <= 9007199254740991, got 18446744073709551615" in info.value.details()


@pytest.mark.slow
def test_generate_from_the_store_in_chunks(stub, server, answer, batch, formulas) -> None:
    """A 7-row table on a server of 4 formulas per call: chunks of 4 and 3. The first chunk is the
    inline call (same seed); the second draws other noise although its sampled formulas are the
    first chunk's; error indices are table rows; a repeated call reads the finished result."""
    store = server[2]
    table = [*batch, formulas["good"], formulas["unknown"], formulas["good2"]]
    store.put_table("inputs/formulas.parquet", pa.table({"formula": table}))
    request = pb.GenerateRequest(input=common_pb2.StoreInput(key="inputs/formulas.parquet"), n_samples=2, seed=SEED)
    stored = stub.Generate(request, timeout=150)
    assert not stored.rows
    assert (stored.n_formulas, stored.n_generated, stored.n_errors) == (7, 8, 3)
    assert (stored.n_samples, stored.seed) == (2, SEED)
    assert stored.output.store_url == store.url and store.exists(stored.output.manifest_key)
    assert stored.output.rows["rows"] == 11
    rows = store.get_table(stored.output.keys["rows"]).to_pylist()
    assert [r["formula"] for r in rows] == [r.formula for r in answer.rows] + [table[4]] * 2 + [table[5]] + [table[6]] * 2
    first, second = rows[:6], rows[6:]
    assert [r["cif"] or "" for r in first] == [r.cif for r in answer.rows]  # chunk 0 is the inline call
    assert [r["error"]["index"] for r in rows if r["error"]] == [1, 2, 5]
    assert {r["cif"] for r in second if r["cif"]}.isdisjoint(r.cif for r in answer.rows)  # its own seed
    for row in second:
        if row["cif"]:
            assert_generated(pb.GeneratedStructureRow(formula=row["formula"], cif=row["cif"],
                                                      num_atoms=row["num_atoms"], volume_a3=row["volume_a3"]),
                             row["formula"])
    again = stub.Generate(request, timeout=30)  # the finished result, not sampled again
    assert again.output.manifest_key == stored.output.manifest_key and again.n_generated == 8


def test_a_store_table_of_refused_formulas_is_answered_in_the_store(stub, server, formulas) -> None:
    """A table (6 rows: chunks of 4 and 2) whose formulas are all refused: no sampling, the row
    errors go to the output table with their table rows as index, the counts add up over the
    chunks, and the same call again reads the finished result."""
    store = server[2]
    table = [formulas["unknown"], formulas["too_many"], "Xx2O", formulas["unknown"], "", formulas["too_many"]]
    store.put_table("inputs/refused.parquet", pa.table({"formula": table, "note": ["x"] * len(table)}))
    request = pb.GenerateRequest(input=common_pb2.StoreInput(key="inputs/refused.parquet"), n_samples=2, seed=3)
    stored = stub.Generate(request, timeout=60)
    assert not stored.rows and (stored.n_formulas, stored.n_generated, stored.n_errors) == (6, 0, 6)
    assert stored.output.rows["rows"] == 6 and set(stored.output.keys) == {"rows", "summary"}
    rows = store.get_table(stored.output.keys["rows"]).to_pylist()
    assert [r["error"]["index"] for r in rows] == list(range(6))
    assert [r["error"]["value"] or "" for r in rows] == table  # an empty string is an unset field: null
    assert "Xx" in rows[2]["error"]["message"] and "empty formula" in rows[4]["error"]["message"]
    assert all(r.get("cif") is None and r.get("sample") is None for r in rows)  # no such columns
    summary = store.get_json(stored.output.keys["summary"])
    assert summary["n_errors"] == 6 and summary["seed"] == 3
    again = stub.Generate(request, timeout=30)
    assert again.output.manifest_key == stored.output.manifest_key and again.n_errors == 6


def test_chunk_seeds_are_deterministic_and_bounded() -> None:
    from htvs.generation.stage import MAX_SEED
    from htvs.grpc.generator_service import chunk_seed

    assert chunk_seed(5, 0, MAX_SEED) == 5
    seeds = {chunk_seed(5, start, MAX_SEED) for start in (4, 8, 12)}
    assert len(seeds) == 3 and 5 not in seeds and all(0 <= s <= MAX_SEED for s in seeds)
    assert chunk_seed(MAX_SEED, 4, MAX_SEED) == chunk_seed(MAX_SEED, 4, MAX_SEED) <= MAX_SEED
    assert {chunk_seed(1, start, 9) for start in range(1, 200)} <= set(range(10))


def test_a_caller_that_leaves_while_waiting_is_not_sampled_for(servicer, batch) -> None:
    """Calls sample one at a time; one waiting its turn whose caller has gone ends with CANCELLED."""

    class Gone:
        def time_remaining(self):
            return None

        def is_active(self):
            return False

        def abort(self, code, details):
            raise RuntimeError(code, details)

    config = servicer.config_of(pb.GenerateRequest(formulas=batch))
    with servicer._sampling:  # another call is sampling
        with pytest.raises(RuntimeError) as info:
            servicer.generate(batch, config, Gone())
    assert info.value.args[0] == grpc.StatusCode.CANCELLED


# --------------------------------------------------------------------------- Info, health, serve


def test_info_lists_the_elements_and_limits(stub, servicer, known) -> None:
    info = stub.Info(pb.GeneratorInfoRequest(), timeout=30)
    card = servicer.generator.card
    assert list(info.elements) == known and list(info.atomic_numbers) == sorted(servicer.generator.elements)
    assert (info.max_atoms, info.max_samples, info.max_formulas) == (servicer.max_atoms, 32, MAX_FORMULAS)
    assert info.name == card["name"] and info.data == card["data"] and info.sha256 == card["sha256"]
    assert info.sampling_steps == card["schedule"]["timesteps"] and info.training_steps == card["steps"]
    assert (info.device, info.threads) == ("cpu", 1)
    import json

    assert json.loads(info.metrics_json) == (card.get("metrics") or {})
    ours = {m.model: m for m in info.metrics}
    if card.get("metrics", {}).get("model"):
        assert ours["model"].n == card["metrics"]["model"]["n"] > 0
        assert 0.0 <= ours["model"].match_rate <= 1.0


def test_health_reflection_and_stage_service(server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from htvs.campaign.graph import STAGES
    from htvs.grpc.gen import stage_pb2, stage_pb2_grpc

    channel = server[1]
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE, "htvs.v1.StageService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    assert {SERVICE, "htvs.v1.StageService"} <= set(ProtoReflectionDescriptorDatabase(channel).get_services())
    listed = stage_pb2_grpc.StageServiceStub(channel).ListStages(stage_pb2.ListStagesRequest(), timeout=5)
    assert listed.service == "generator"
    assert [s.name for s in listed.stages] == [s.name for s in STAGES if s.service == "generator"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny_models import tiny_model_pair

    return tiny_model_pair(tmp_path_factory.mktemp("composition-models"))


def generation_config(tmp_path, tiny_models, **generation):
    from htvs.campaign import load_campaign
    from test_campaign import write_config

    section = {"enabled": True, "max_formulas": 4, "n_samples": 1, "batch_crystals": 8, **generation}
    return load_campaign(write_config(tmp_path / "c.yaml", tiny_models, generation=section))


def test_run_stage_refuses_another_generator(server, tmp_path, tiny_models) -> None:
    """RunStage of ``generate`` with a configuration naming a generator this server does not
    serve: FAILED_PRECONDITION, naming both."""
    import shutil

    from htvs.generation.stage import default_model_dir
    from htvs.grpc.gen import stage_pb2, stage_pb2_grpc

    other = tmp_path / "other-generator"
    shutil.copytree(default_model_dir(), other)
    config = generation_config(tmp_path, tiny_models, models=str(other))
    request = stage_pb2.RunStageRequest(stage="generate", config_json=config.model_dump_json())
    with pytest.raises(grpc.RpcError) as info:
        list(stage_pb2_grpc.StageServiceStub(server[1]).RunStage(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "generation.models" in info.value.details() and str(other) in info.value.details()
    assert "serves the shipped model" in info.value.details()


@pytest.mark.slow
def test_the_generate_stage_on_the_service_equals_in_process(server, tmp_path, tiny_models) -> None:
    """The campaign's ``generate`` step through the service's StageService (its upstream in
    process) writes the tables the embedded runner writes."""
    import pandas as pd

    from htvs.campaign.graph import output_key
    from htvs.campaign.remote import StageClient
    from htvs.campaign.runner import run_step
    from htvs.store import open_store

    config = generation_config(tmp_path, tiny_models)
    local = run_step(open_store(tmp_path / "local"), config, "generate")["generate"]
    client = StageClient({"generator": server[3]})
    store = server[2].below("campaigns/stage-test")
    try:
        remote = run_step(store, config, "generate", services=client)["generate"]
    finally:
        client.close()
    assert remote.row_counts == local.row_counts and local.row_counts["generated_formulas"] > 0
    for output in ("generated", "rejected"):
        ours = store.get_table(output_key(remote, "generate", output)).to_pandas()
        theirs = open_store(tmp_path / "local").get_table(output_key(local, "generate", output)).to_pandas()
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False, atol=1e-6, obj=output)


def test_serve_generator_starts_with_settings_from_the_environment(servicer, tmp_path, monkeypatch) -> None:
    """``htvs serve generator``: the service is available; serve() runs it with its StageService."""
    from htvs.grpc.serve import serve

    assert "generator" in AVAILABLE_SERVICES
    seen: dict[str, object] = {}

    def ready(started, port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE),
                                                               timeout=5)
            seen["status"] = reply.status
            seen["info"] = pb_grpc.StructureGeneratorServiceStub(channel).Info(pb.GeneratorInfoRequest(), timeout=5)
        started.stop(None)

    thread = threading.Thread(target=serve, args=("generator", 0), daemon=True,
                              kwargs={"servicer": servicer, "store": str(tmp_path), "ready": ready, "grace_s": 1})
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert seen["status"] == health_pb2.HealthCheckResponse.SERVING
    assert seen["info"].elements


def test_generator_settings(tmp_path, monkeypatch) -> None:
    from htvs.errors import InvalidInput, ModelNotReady
    from htvs.generation.device import resolve_device
    from htvs.grpc.generator_service import GeneratorSettings

    monkeypatch.setenv("HTVS_GENERATOR_THREADS", "3")
    monkeypatch.setenv("HTVS_GENERATOR_DEVICE", "cpu")
    settings = GeneratorSettings.from_env()
    assert (settings.threads, settings.device, settings.model) == (3, "cpu", None)
    monkeypatch.setenv("HTVS_GENERATOR_THREADS", "0")
    with pytest.raises(InvalidInput, match="HTVS_GENERATOR_THREADS: .*got '0'"):
        GeneratorSettings.from_env()
    monkeypatch.delenv("HTVS_GENERATOR_THREADS")
    # a folder without a generator fails the start, naming it
    monkeypatch.setenv("HTVS_GENERATOR_MODEL", str(tmp_path))
    with pytest.raises(ModelNotReady, match="model_card.json"):
        build_servicer("generator")
    monkeypatch.delenv("HTVS_GENERATOR_MODEL")
    with pytest.raises(InvalidInput, match="'tpu' is not one of auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("CPU") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelNotReady, match="'cuda' was asked for, but torch .* sees no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(InvalidInput, match="max_formulas must be >= 1, got 0"):
        build_servicer("generator", generator_device="cpu", generator_model=None, max_batch_rows=0)


@pytest.mark.slow
def test_the_device_adapter_samples_what_the_plain_model_samples(servicer, formulas) -> None:
    """:func:`on_device` on the CPU: arguments moved, the device as default, outputs back on the
    CPU; the structures are the plain model's."""
    from htvs.generation.stage import GenerationConfig, generate_structures
    from htvs.grpc.generator_service import on_device

    wrapped = dataclasses.replace(servicer.generator, model=on_device(servicer.generator.model, "cpu"))
    config = GenerationConfig(n_samples=1, seed=3)
    plain = generate_structures([formulas["good2"]], servicer.generator, config)
    adapted = generate_structures([formulas["good2"]], wrapped, config)
    assert [r.cif for r in adapted] == [r.cif for r in plain]


@pytest.mark.gpu
def test_generate_on_a_gpu(formulas) -> None:
    """On a CUDA device (skipped without one): valid structures of the asked composition."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = build_servicer("generator", generator_device="cuda")
    server, port = create_server("127.0.0.1:0", gpu)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.StructureGeneratorServiceStub(channel)
            reply = stub.Generate(pb.GenerateRequest(formulas=[formulas["good"]], n_samples=2, seed=1), timeout=120)
            assert stub.Info(pb.GeneratorInfoRequest(), timeout=10).device == "cuda"
    finally:
        server.stop(None).wait()
    assert reply.n_generated == 2
    for row in reply.rows:
        assert_generated(row, formulas["good"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generator-device", "tpu"], "generator device 'tpu' is not one of"),
        (["--generator-model", "/nonexistent/generator"], "no generator in /nonexistent/generator"),
    ],
)
def test_cli_serve_generator_refuses_bad_settings_before_serving(args, message):
    from typer.testing import CliRunner

    from htvs.cli import app

    result = CliRunner().invoke(app, ["serve", "generator", "--port", "0", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
