"""TLS of the htvs gRPC services: the server's credentials and the clients' channels.

Server side (``htvs serve --tls-cert --tls-key [--tls-client-ca]``): :class:`ServerTls` names
the PEM files, :meth:`ServerTls.credentials` reads them (each checked: present, readable, PEM of
the right kind) and builds ``grpc.ServerCredentials``; with a client CA the server requires and
verifies client certificates (mutual TLS).

Client side (the campaign's calls to the services): :class:`ClientTls` names the CA that signs
the servers' certificates and, for mutual TLS, the client's certificate and key;
:meth:`ClientTls.from_env` reads them from ``HTVS_GRPC_CA``, ``HTVS_GRPC_CERT``, ``HTVS_GRPC_KEY``
(and ``HTVS_GRPC_SERVER_NAME``, the name to check the servers' certificates against when it
differs from the address). :func:`open_channel` opens a TLS channel with them, or a plaintext one
without.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from htvs.errors import InvalidInput

#: Environment variables of the client side.
CLIENT_ENV = {"ca": "HTVS_GRPC_CA", "cert": "HTVS_GRPC_CERT", "key": "HTVS_GRPC_KEY",
              "server_name": "HTVS_GRPC_SERVER_NAME"}
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKERS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----")


def read_pem(path: Path | str, what: str, kind: str = "certificate") -> bytes:
    """The bytes of PEM file ``path`` (``what`` names it in errors, e.g. ``"--tls-cert"``).

    Args:
        kind: ``"certificate"`` (one or more ``CERTIFICATE`` blocks) or ``"key"`` (a private key).

    Raises:
        InvalidInput: the file is missing, unreadable, or holds no PEM block of that kind.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"{what}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if kind == "key" and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise InvalidInput(f"{what}: {path} is an encrypted key; give an unencrypted PEM key")
    markers = (_CERT_MARKER,) if kind == "certificate" else _KEY_MARKERS
    if not any(marker in data for marker in markers):
        raise InvalidInput(f"{what}: {path} is not a PEM {kind} (no '-----BEGIN ...' {kind} block)")
    return data


@dataclass(frozen=True)
class ServerTls:
    """The PEM files of a TLS server.

    Attributes:
        cert: the server's certificate chain (leaf first).
        key: its private key (unencrypted PEM).
        client_ca: CA bundle that signs client certificates; set, clients must present a
            certificate it verifies (mutual TLS). None: any client may connect over TLS.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_options(cls, cert: Path | str | None, key: Path | str | None,
                     client_ca: Path | str | None = None) -> ServerTls | None:
        """From ``--tls-cert``, ``--tls-key``, ``--tls-client-ca``: None when none is given
        (plaintext). InvalidInput when only one of cert and key, or a client CA without them."""
        if not cert and not key:
            if client_ca:
                raise InvalidInput("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
            return None
        if not cert or not key:
            missing = "--tls-cert" if not cert else "--tls-key"
            raise InvalidInput(f"TLS needs both --tls-cert and --tls-key; {missing} is missing")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """``grpc.ServerCredentials`` from the files (read now; InvalidInput naming a bad one)."""
        chain = read_pem(self.cert, "--tls-cert", "certificate")
        key = read_pem(self.key, "--tls-key", "key")
        roots = read_pem(self.client_ca, "--tls-client-ca", "certificate") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
        )


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to call TLS services.

    Attributes:
        ca: CA bundle that signs the servers' certificates (None: the system's roots).
        cert, key: the client's certificate and key, for servers that require them (mutual TLS).
        server_name: name checked against the servers' certificates instead of the address' host.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            given, missing = ("cert", "key") if self.cert else ("key", "cert")
            raise InvalidInput(
                f"client TLS: a {given} without a {missing}; set both {CLIENT_ENV['cert']} and {CLIENT_ENV['key']}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientTls | None:
        """From ``HTVS_GRPC_CA``/``_CERT``/``_KEY``/``_SERVER_NAME``; None when none is set (plaintext)."""
        env = os.environ if environ is None else environ
        values = {field: env.get(name) or None for field, name in CLIENT_ENV.items()}
        if not any(values[field] for field in ("ca", "cert", "key")):
            return None
        return cls(
            ca=Path(values["ca"]) if values["ca"] else None,
            cert=Path(values["cert"]) if values["cert"] else None,
            key=Path(values["key"]) if values["key"] else None,
            server_name=values["server_name"],
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """``grpc.ChannelCredentials`` from the files (read now; InvalidInput naming a bad one)."""
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, CLIENT_ENV["ca"], "certificate") if self.ca else None,
            private_key=read_pem(self.key, CLIENT_ENV["key"], "key") if self.key else None,
            certificate_chain=read_pem(self.cert, CLIENT_ENV["cert"], "certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        """Channel options: the name to check the server's certificate against, if set."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(address: str, tls: ClientTls | None = None,
                 options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A channel to ``address``: TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=[*options, *tls.options()])
