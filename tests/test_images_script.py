"""docker/images_test.py (``make images-test``) parses its arguments and, in ``--dry-run``, prints the
podman commands it would run: the script cannot rot between releases. Needs no podman and no root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "images_test.py"


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_help_names_the_main_options(tmp_path: Path) -> None:
    result = run("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--skip-build", "--dry-run", "--images", "--base-image", "--gpu-base", "--find-links"):
        assert option in result.stdout


def test_dry_run_prints_builds_and_smoke_tests(tmp_path: Path) -> None:
    result = run("--dry-run", "--find-links", str(tmp_path), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "debootstrap --variant=minbase" in out and "podman import" in out
    # both CPU images from Dockerfile.service on the local base, torch from the mounted wheels
    assert "podman build --network host -f docker/Dockerfile.service -t localhost/htvs-light:images-test" in out
    assert "--build-arg HTVS_EXTRAS=all" in out and "localhost/htvs-full:images-test" in out
    assert "--build-arg PYTHON_IMAGE=localhost/htvs-base:bookworm" in out
    assert f"-v {tmp_path}:/opt/wheels:ro" in out
    # every service on its image: non-root, read-only, stopped with SIGTERM
    assert "--read-only --user 10001:10001 --tmpfs /tmp" in out
    for service, image in [("substitution", "light"), ("composition", "light"), ("structure", "light"),
                           ("conductivity", "light"), ("generator", "full"), ("dft", "full")]:
        assert f"localhost/htvs-{image}:images-test serve {service} --port 50051" in out
        assert f"podman stop -t 10 htvs-images-test-{service}" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dry_run"] is True and [i["image"] for i in summary["images"]] == ["light", "full"]
    assert [c["service"] for c in summary["checks"]] == [
        "substitution", "composition", "structure", "conductivity", "generator", "dft"]


def test_gpu_is_skipped_without_a_cuda_base(tmp_path: Path) -> None:
    result = run("--dry-run", "--images", "gpu", "--find-links", "", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gpu image: skipped" in result.stdout and "podman build" not in result.stdout
    given = run("--dry-run", "--images", "gpu", "--gpu-base", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
                "--find-links", "", tmp_path=tmp_path)
    assert "-f docker/Dockerfile.gpu" in given.stdout
    assert "--build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04" in given.stdout


def test_skip_build_makes_no_base_and_builds_nothing(tmp_path: Path) -> None:
    result = run("--dry-run", "--skip-build", "--images", "light", "--find-links", "", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "debootstrap" not in result.stdout and "podman build" not in result.stdout
    assert "podman run -d --name htvs-images-test-composition" in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--images", "light,tpu"], "'tpu'"),
        (["--services", "chem"], "'chem'"),
        (["--find-links", "/no/such/folder"], "'/no/such/folder'"),
        (["--nice", "40"], "40"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, args: list[str], named: str) -> None:
    result = run("--dry-run", *args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr


def test_dockerfiles_take_the_base_images_the_script_passes() -> None:
    """The script builds on a local base through these arguments; their public defaults stay."""
    service = (ROOT / "docker" / "Dockerfile.service").read_text()
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm" in service
    assert service.count("FROM ${PYTHON_IMAGE} AS") == 2
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in gpu and "FROM ${CUDA_IMAGE} AS base" in gpu
