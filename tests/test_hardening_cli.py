"""Regression tests from fuzzing the CLI and the server bootstrap: output paths that cannot be
written, port numbers, and the interfaces a server binds by default."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from htvs.cli import app
from htvs.errors import InvalidInput

runner = CliRunner()
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture
def place(tmp_path: Path, monkeypatch) -> Path:
    """A folder with an existing folder ``folder`` and an existing file ``file``."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "formulas.csv").write_text("formula\nLi3PS4\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(args: list[str], named: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert "Traceback" not in result.output and named in result.output, (args, result.output)
    return result.output


@pytest.mark.parametrize(("out", "named"), [
    ("folder", "'folder': it is a folder"),
    ("file/x.csv", "'file' is a file"),
    ("/proc/x.csv", "'/proc'"),
])
def test_predict_refuses_an_output_it_cannot_write_before_predicting(place: Path, out: str, named: str) -> None:
    _refused(["predict", "Li3PS4", "--out", out], named)
    assert sorted(p.name for p in place.iterdir()) == ["file", "folder", "formulas.csv"]  # no temporary left
    assert list((place / "folder").iterdir()) == []


@pytest.mark.parametrize("args", [
    ["screen", "--formulas", "formulas.csv", "--out"],
    ["substitute", "--prototypes", "obelix", "--out"],
    ["generate", "SrTiO3", "--out"],
    ["campaign", "run", str(CONFIG), "--out"],
])
@pytest.mark.parametrize(("out", "named"), [("file", "'file' is a file"), ("/proc/x", "'/proc/x'")])
def test_commands_refuse_an_output_folder_they_cannot_write(place: Path, args: list[str], out: str,
                                                            named: str) -> None:
    _refused([*args, out], named)
    assert (place / "file").read_text() == "x"


def test_the_one_atomic_writer_names_a_path_it_cannot_write(place: Path) -> None:
    from htvs.atomic import output_file, output_folder, write_text_atomic

    for path, named in ((place / "folder", "it is a folder"), (place / "file" / "x", "'"), (Path("/proc/x/y"), "/proc/x")):
        with pytest.raises(InvalidInput, match=named):
            write_text_atomic(path, "data")
    with pytest.raises(InvalidInput, match="is a file"):
        output_folder(place / "file")
    assert output_file(place / "new" / "table.csv") == place / "new" / "table.csv"
    assert (place / "new").is_dir()


@pytest.mark.parametrize("port", ["99999", "-1", "x"])
def test_serve_refuses_a_port_outside_the_range(port: str) -> None:
    result = runner.invoke(app, ["serve", "substitution", "--port", port])
    assert result.exit_code == 2 and "--port" in result.output


@pytest.mark.parametrize(("address", "metrics_port", "named"), [
    ("127.0.0.1:99999", None, "gRPC port 99999 is outside 0..65535"),
    ("127.0.0.1:-1", None, "gRPC port -1"),
    ("127.0.0.1:0", 70000, "metrics port 70000"),
])
def test_create_server_refuses_a_port_outside_the_range(address: str, metrics_port, named: str) -> None:
    from htvs.grpc.serve import build_servicer
    from htvs.grpc.server import create_server

    with pytest.raises(InvalidInput, match=named):
        create_server(address, build_servicer("substitution"), metrics_port=metrics_port)


def test_serve_binds_loopback_unless_told_otherwise() -> None:
    """Both the gRPC port and the metrics endpoint listen on 127.0.0.1 by default."""
    import socket

    from htvs.grpc.serve import serve

    seen = {}
    started = threading.Event()

    def ready(server, port: int) -> None:
        seen["server"], seen["port"] = server, port
        started.set()

    thread = threading.Thread(target=serve, args=("substitution", 0, 0), kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert started.wait(60)
    server = seen["server"]
    try:
        assert server._metrics_httpd.server_address[0] == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", seen["port"]), timeout=5):
            pass
        outward = [a for a in {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
                   if not a.startswith("127.")]
        for address in outward:  # the machine's other addresses do not reach it
            with pytest.raises(OSError):
                socket.create_connection((address, seen["port"]), timeout=2).close()
    finally:
        server.stop(0)
        thread.join(30)


def test_a_status_message_is_bounded_whatever_the_error_echoes() -> None:
    """A servicer error echoing a 50,000-character value still reaches the client as
    INVALID_ARGUMENT (not RESOURCE_EXHAUSTED for oversized metadata), cut to the limit."""
    import grpc

    from htvs.grpc.gen import substitution_pb2 as pb
    from htvs.grpc.gen import substitution_pb2_grpc as pb_grpc
    from htvs.grpc.server import MAX_STATUS_MESSAGE, create_server

    class Echoing(pb_grpc.SubstitutionServiceServicer):
        service_name = "htvs.v1.SubstitutionService"

        def add_to_server(self, server) -> None:
            pb_grpc.add_SubstitutionServiceServicer_to_server(self, server)

        def ListPrototypes(self, request, context):
            raise InvalidInput(f"unknown set {request.prototype_set!r}")

    server, port = create_server("127.0.0.1:0", Echoing())
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.SubstitutionServiceStub(channel).ListPrototypes(
                    pb.ListPrototypesRequest(prototype_set="x" * 50_000), timeout=10)
    finally:
        server.stop(0)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details()) <= MAX_STATUS_MESSAGE and "characters cut" in err.value.details()
