"""gRPC adapters of the stage functions (package ``htvs.v1``): protobuf <-> records, then the stage.

* :mod:`htvs.grpc.server`: ``create_server`` (health, reflection, the error-mapping and metrics
  interceptor, message-size limits, graceful stop).
* :mod:`htvs.grpc.substitution_service`, :mod:`htvs.grpc.composition_service`: the servicers.
* :mod:`htvs.grpc.serve`: ``serve(name, port, ...)``, behind ``htvs serve``.
* :mod:`htvs.grpc.gen`: stubs generated from ``protos/htvs/v1`` (never committed). Importing this
  package generates them when they are missing or stale (see :mod:`htvs.grpc.codegen`).
"""

from __future__ import annotations


def _ensure_stubs() -> None:
    """Generate the stubs if needed; the check itself only hashes the few .proto files.

    ``htvs.grpc.codegen`` is imported only when something must be generated, so that
    ``python -m htvs.grpc.codegen`` does not find its own module already imported.
    """
    import hashlib
    import re
    from pathlib import Path

    here = Path(__file__).resolve().parent
    protos = here.parents[2] / "protos" / "htvs" / "v1"
    try:
        text = (here / "gen" / "__init__.py").read_text(encoding="utf-8")
        match = re.search(r'^PROTO_DIGEST = "([0-9a-f]+)"$', text, re.MULTILINE)
        recorded = match.group(1) if match else None
    except OSError:
        recorded = None
    if protos.is_dir():
        digest = hashlib.sha256()
        for path in sorted(protos.glob("*.proto")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        if recorded == digest.hexdigest():
            return
    elif recorded is not None:
        return  # installed without protos/: use the stubs shipped with the package
    from htvs.grpc.codegen import generate

    generate()


_ensure_stubs()
