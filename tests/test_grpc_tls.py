"""TLS of the gRPC services, on loopback with certificates made here (``cryptography``).

Real servers (:func:`htvs.grpc.server.create_server` with the StageService, the cheapest htvs.v1
service to start) and real channels: a TLS client trusting the CA gets through, a plaintext one
does not; under mutual TLS a client without a certificate, or with one from another CA, is
refused and one with a trusted certificate gets through; the plaintext health-only port answers
the kubelet-style check and nothing else; reflection switched off refuses reflection requests.
The campaign's client (:mod:`htvs.campaign.remote`) calls a TLS service with the CA from the
environment. Bad TLS files fail with messages naming the file and the flag.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from htvs.errors import InvalidInput
from htvs.grpc.server import create_server
from htvs.grpc.tls import ClientTls, ServerTls, open_channel

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]
x509 = pytest.importorskip("cryptography.x509")

STAGE_SERVICE = "htvs.v1.StageService"
TIMEOUT = 5


# --------------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate signed by another CA
    rogue_key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key, cert) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path.with_suffix(".crt"), path.with_suffix(".key")


def _certificate(name: str, key, issuer_name, issuer_key, *, ca: bool, server: bool = False):
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca = _certificate("htvs test CA", ca_key, None, None, ca=True)
    rogue_ca = _certificate("another CA", rogue_ca_key, None, None, ca=True)
    ca_path, _ = _write(folder / "ca", ca_key, ca)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _write(folder / "server", server_key,
                    _certificate("localhost", server_key, ca.subject, ca_key, ca=False, server=True))
    client = _write(folder / "client", client_key, _certificate("campaign", client_key, ca.subject, ca_key, ca=False))
    rogue = _write(folder / "rogue", rogue_key,
                   _certificate("campaign", rogue_key, rogue_ca.subject, rogue_ca_key, ca=False))
    return Pki(ca_path, *server, *client, *rogue)


# --------------------------------------------------------------------------------- servers
def _stage_servicer():
    from htvs.campaign.stages import InProcessBackend
    from htvs.grpc.stage_service import StageServicer

    return StageServicer("substitution", None, InProcessBackend())


@pytest.fixture
def start():
    """start(**create_server options) -> (server, address); stopped at the end of the test."""
    servers = []

    def _start(**options):
        server, port = create_server("127.0.0.1:0", _stage_servicer(), **options)
        server.start()
        servers.append(server)
        return server, f"localhost:{port}"

    yield _start
    for server in servers:
        server.stop(None).wait(5)


def list_stages(channel: grpc.Channel):
    from htvs.grpc.gen import stage_pb2, stage_pb2_grpc

    return stage_pb2_grpc.StageServiceStub(channel).ListStages(stage_pb2.ListStagesRequest(), timeout=TIMEOUT)


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        list_stages(channel)
    return error.value.code()


def health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT).status


# --------------------------------------------------------------------------------- TLS
def test_tls_client_with_the_ca_gets_through_and_plaintext_is_refused(pki: Pki, start) -> None:
    _, address = start(tls=ServerTls(pki.server_cert, pki.server_key))
    with open_channel(address, ClientTls(ca=pki.ca)) as channel:
        assert list_stages(channel).service == "substitution"
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(address) as channel:
        assert refused(channel) is grpc.StatusCode.UNAVAILABLE
    with open_channel(address, ClientTls()) as channel:  # the system's roots do not trust the test CA
        assert refused(channel) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_trusted_client_certificate(pki: Pki, start) -> None:
    _, address = start(tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    with open_channel(address, ClientTls(ca=pki.ca)) as channel:  # no client certificate
        assert refused(channel) is grpc.StatusCode.UNAVAILABLE
    with open_channel(address, ClientTls(ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key)) as channel:
        assert refused(channel) is grpc.StatusCode.UNAVAILABLE
    with open_channel(address, ClientTls(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)) as channel:
        assert list_stages(channel).service == "substitution"


def test_plaintext_health_port_answers_health_only(pki: Pki, start) -> None:
    """What the chart's kubelet gRPC probe calls while the service port speaks TLS only."""
    server, _ = start(tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca),
                      health_address="127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert health(channel, STAGE_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        assert refused(channel) is grpc.StatusCode.UNIMPLEMENTED  # no htvs service through it
        server.stop(1).wait(5)
        with pytest.raises(grpc.RpcError):  # a stopping server fails the probe
            health(channel)


def test_reflection_can_be_switched_off(start) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    _, on = start()
    _, off = start(reflection_enabled=False)
    with grpc.insecure_channel(on) as channel:
        assert STAGE_SERVICE in set(ProtoReflectionDescriptorDatabase(channel).get_services())
    with grpc.insecure_channel(off) as channel:
        with pytest.raises(grpc.RpcError) as error:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert list_stages(channel).service == "substitution"  # the services themselves still answer


def test_the_campaign_client_calls_tls_services_with_the_ca_from_the_environment(
        pki: Pki, start, monkeypatch: pytest.MonkeyPatch) -> None:
    from htvs.campaign.remote import StageClient, parse_services

    _, address = start(tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    monkeypatch.setenv("HTVS_GRPC_CA", str(pki.ca))
    monkeypatch.setenv("HTVS_GRPC_CERT", str(pki.client_cert))
    monkeypatch.setenv("HTVS_GRPC_KEY", str(pki.client_key))
    assert parse_services(address) == {"substitution": address}  # asked over mutual TLS
    client = StageClient({"substitution": address})
    try:
        assert list_stages(client._channel("substitution")).service == "substitution"
    finally:
        client.close()
    monkeypatch.delenv("HTVS_GRPC_CERT")
    monkeypatch.delenv("HTVS_GRPC_KEY")
    with pytest.raises(InvalidInput, match="no htvs service answers"):
        parse_services(address, timeout_s=2)  # TLS without a client certificate: refused


# --------------------------------------------------------------------------------- bad files
def test_bad_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello\n")
    cases = [
        (ServerTls(tmp_path / "missing.crt", pki.server_key), r"--tls-cert: .*missing\.crt does not exist"),
        (ServerTls(not_pem, pki.server_key), r"--tls-cert: .*cert\.txt is not a PEM certificate"),
        (ServerTls(pki.server_cert, pki.server_cert), r"--tls-key: .*server\.crt is not a PEM key"),
        (ServerTls(pki.server_cert, pki.server_key, tmp_path), r"--tls-client-ca: .* is a directory"),
    ]
    for tls, message in cases:
        with pytest.raises(InvalidInput, match=message):
            create_server("127.0.0.1:0", _stage_servicer(), tls=tls)
    with pytest.raises(InvalidInput, match="--tls-key is missing"):
        ServerTls.from_options(pki.server_cert, None)
    with pytest.raises(InvalidInput, match="--tls-client-ca needs --tls-cert"):
        ServerTls.from_options(None, None, pki.ca)
    assert ServerTls.from_options(None, None) is None
    with pytest.raises(InvalidInput, match="HTVS_GRPC_CA: .*missing.pem does not exist"):
        ClientTls(ca=tmp_path / "missing.pem").credentials()
    with pytest.raises(InvalidInput, match="HTVS_GRPC_KEY"):
        ClientTls.from_env({"HTVS_GRPC_CERT": str(pki.client_cert)})
    assert ClientTls.from_env({}) is None


def test_htvs_serve_names_a_missing_certificate(pki: Pki, tmp_path: Path) -> None:
    """The CLI refuses the start in one line (exit 2) before loading any model."""
    missing = tmp_path / "nope.crt"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("htvs")), "serve", "substitution", "--port", "0",
         "--tls-cert", str(missing), "--tls-key", str(pki.server_key)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"--tls-cert: {missing} does not exist" in result.stderr
