"""The Python examples of ``services/<name>/README.md`` run against their own server on loopback.

Every ```` ```python ```` block of a service's README is executed as written, except that the
documented address ``localhost:50051`` is replaced by the address of a server started here with
:func:`htvs.grpc.serve.build_servicer` and ``build_stage_servicer`` (what ``htvs serve NAME
--store DIR`` serves with its default resources: the shipped models, the bundled prototype set,
the shipped generator on the device torch sees, CHGNet for dft; a fresh directory store, which the batch RPCs read their ``input`` from and
write their ``output`` to) and :func:`htvs.grpc.server.create_server` on ``127.0.0.1:0``, and
the documented store directory ``/srv/htvs-store`` is replaced by that server's store directory.
A block passes when it runs without an exception and, where the README shows what it prints,
prints exactly that. The READMEs are also checked against the code they describe: every RPC of
the service is named, and the row limits quoted are the servicers' defaults.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
SERVICES_DIR = ROOT / "services"
#: The services of ``htvs serve NAME``, each documented in services/<name>/README.md.
NAMES = ("substitution", "composition", "structure", "generator", "conductivity", "dft")
#: The address the examples are written against.
DOC_ADDRESS = "localhost:50051"
#: The server's store directory the examples are written against (``htvs serve NAME --store``).
DOC_STORE = "/srv/htvs-store"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
#: ``prints ...`` and a ```` ```text ```` block right after an example: its exact output.
_PRINTS = re.compile(r"\nprints[^\n]*\n\n```text\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme(name: str) -> str:
    return (SERVICES_DIR / name / "README.md").read_text(encoding="utf-8")


def python_blocks(name: str) -> list[str]:
    return [code for code, _ in examples(name)]


def examples(name: str) -> list[tuple[str, str | None]]:
    """``(code, expected output or None)`` of each python block of services/<name>/README.md."""
    text = readme(name)
    out = []
    for match in _PYTHON_BLOCK.finditer(text):
        printed = _PRINTS.match(text, match.end())
        out.append((match.group(1), printed.group(1) if printed else None))
    return out


def _examples() -> list[pytest.param]:
    params = []
    for name in NAMES:
        for index, _ in enumerate(python_blocks(name)):
            params.append(pytest.param(name, index, id=f"{name}-{index}"))
    return params


@pytest.fixture(scope="module")
def address(tmp_path_factory) -> Iterator:
    """``address(name)``: host:port of a started server of service ``name`` (one per module),
    serving what ``htvs serve NAME --store DIR`` serves: its service and StageService."""
    from htvs.grpc.serve import build_servicer, build_stage_servicer
    from htvs.grpc.server import create_server
    from htvs.store import open_store

    started: dict[str, tuple[object, object, str, str]] = {}

    def get(name: str) -> tuple[str, str]:
        """(address, store directory) of the server of ``name``."""
        if name not in started:
            servicer = build_servicer(name)
            store = tmp_path_factory.mktemp(f"{name}-store")
            servicer.store = open_store(store)  # as serve() does: batch calls with an input use it
            stages = build_stage_servicer(name, servicer, str(store))
            server, port = create_server("127.0.0.1:0", servicer, stages)
            server.start()
            started[name] = (server, servicer, f"127.0.0.1:{port}", str(store))
        return started[name][2], started[name][3]

    yield get
    for server, servicer, _, _ in started.values():
        server.stop(None).wait()
        if hasattr(servicer, "shutdown"):
            servicer.shutdown(timeout=5)


def test_every_service_has_a_readme_with_an_example() -> None:
    overview = (SERVICES_DIR / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert python_blocks(name), f"services/{name}/README.md has no python example"
        assert f"({name}/README.md)" in overview, f"services/README.md does not link {name}/README.md"
        assert DOC_ADDRESS in readme(name), f"services/{name}/README.md does not use {DOC_ADDRESS}"
    # the batch RPCs' store input is shown on a store the test serves
    assert DOC_STORE in readme("composition"), f"services/composition/README.md does not use {DOC_STORE}"


@pytest.mark.parametrize(("name", "index"), _examples())
def test_readme_example_runs(name: str, index: int, address) -> None:
    code, expected = examples(name)[index]
    assert DOC_ADDRESS in code, f"example {index} of services/{name}/README.md names no server address"
    where, store = address(name)
    code = code.replace(DOC_ADDRESS, where).replace(DOC_STORE, store)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"services/{name}/README.md (python block {index})", "exec"), {"__name__": "__main__"})
    printed = out.getvalue()
    assert printed.strip(), f"example {index} of services/{name}/README.md printed nothing"
    if expected is not None:
        assert printed.rstrip() == expected.rstrip(), f"services/{name}/README.md shows another output"


def test_readmes_name_every_rpc() -> None:
    from htvs.grpc.gen import (
        composition_pb2,
        conductivity_pb2,
        dft_runner_pb2,
        generator_pb2,
        stage_pb2,
        structure_pb2,
        substitution_pb2,
    )

    services = {
        "substitution": substitution_pb2.DESCRIPTOR.services_by_name["SubstitutionService"],
        "composition": composition_pb2.DESCRIPTOR.services_by_name["CompositionService"],
        "structure": structure_pb2.DESCRIPTOR.services_by_name["StructureService"],
        "generator": generator_pb2.DESCRIPTOR.services_by_name["StructureGeneratorService"],
        "conductivity": conductivity_pb2.DESCRIPTOR.services_by_name["ConductivityService"],
        "dft": dft_runner_pb2.DESCRIPTOR.services_by_name["DFTRunnerService"],
    }
    for name, service in services.items():
        text = readme(name)
        assert service.full_name in text, f"services/{name}/README.md does not name {service.full_name}"
        for method in service.methods:
            assert f"`{method.name}`" in text, f"services/{name}/README.md does not document {method.name}"
    overview = (SERVICES_DIR / "README.md").read_text(encoding="utf-8")
    for method in stage_pb2.DESCRIPTOR.services_by_name["StageService"].methods:
        assert f"`{method.name}`" in overview, f"services/README.md does not document StageService.{method.name}"


def test_readmes_quote_the_servicers_limits() -> None:
    from htvs.conductivity.predict import ConductivityConfig
    from htvs.grpc import composition_service, conductivity_service, dft_runner_service, generator_service, server
    from htvs.grpc import structure_service, substitution_service

    quoted = {
        "substitution": (substitution_service.DEFAULT_MAX_PROTOTYPES, substitution_service.DEFAULT_MAX_RESULT_ROWS),
        "composition": (composition_service.DEFAULT_MAX_BATCH_ROWS,),
        "structure": (structure_service.DEFAULT_MAX_BATCH_ROWS,),
        "generator": (generator_service.DEFAULT_MAX_FORMULAS, generator_service.DEFAULT_MAX_SAMPLES),
        "conductivity": (conductivity_service.DEFAULT_MAX_BATCH_ROWS, ConductivityConfig().max_atoms),
        "dft": (dft_runner_service.DEFAULT_MAX_QUEUE, dft_runner_service.DEFAULT_MAX_FINISHED),
    }
    for name, limits in quoted.items():
        text = readme(name)
        for limit in limits:
            assert f"{limit:,}" in text, f"services/{name}/README.md does not quote the limit {limit:,}"
    overview = (SERVICES_DIR / "README.md").read_text(encoding="utf-8")
    assert f"{server.DEFAULT_MAX_MESSAGE_BYTES // (1024 * 1024)} MiB" in overview
