"""Shared fixtures: heavy reference objects are built once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # property-based tests: no per-example deadline on a shared 2-core machine, a fixed budget
    from hypothesis import HealthCheck, settings

    settings.register_profile("htvs", deadline=None, max_examples=100, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    # a longer random hunt: HTVS_HYPOTHESIS_PROFILE=long make test PYTEST_ARGS=tests/test_properties_*.py
    settings.register_profile("long", deadline=None, max_examples=2000, derandomize=False,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HTVS_HYPOTHESIS_PROFILE", "htvs"))
except ImportError:  # the property-based tests skip themselves
    pass

#: Small prototype files (CIF, pymatgen JSON, POSCAR; some deliberately bad).
PROTOTYPE_FOLDER = Path(__file__).parent / "data" / "prototypes" / "folder"


@pytest.fixture(scope="session")
def bundled_prototypes():
    """The bundled prototype set (OBELiX + pymatgen Li structures)."""
    from htvs.prototypes import load_prototypes

    return load_prototypes("bundled")


def folder_prototype(name: str, file: str):
    """A Prototype from a file of :data:`PROTOTYPE_FOLDER`, oxidation states removed."""
    from pymatgen.core import Structure

    from htvs.prototypes import Prototype

    structure = Structure.from_file(PROTOTYPE_FOLDER / file)
    structure.remove_oxidation_states()
    return Prototype.from_structure(name, "test", structure)


@pytest.fixture(scope="module")
def prototypes():
    """LiFePO4 and LiZnPS4 from the test folder, by id."""
    protos = [folder_prototype("LiFePO4", "LiFePO4.json"), folder_prototype("LiZnPS4", "LiZnPS4.cif")]
    return {p.id: p for p in protos}


# --------------------------------------------------------------------------- a local S3 server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server started for this test session."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_moto_command(port), stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within 30 s")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_settings(moto_endpoint: str):
    """Settings reaching the moto server (its credentials are any)."""
    from htvs.settings import Settings

    return Settings(
        s3_endpoint=moto_endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_secure=False,
        s3_region="us-east-1",
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one torch thread (and do not fight other jobs for cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
