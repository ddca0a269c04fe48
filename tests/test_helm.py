"""The Helm chart (helm/htvs): lint and render with a real Helm engine, values schema, no secrets in values.

Helm runs through ``helm-sdkpy`` (Helm v4 as a shared library), which needs Python >= 3.12, so it lives
in its own venv, ``.venv-helm/`` at the repository root, created on first use (about 15 s with the
wheel cached; set ``HTVS_HELM_PYTHON`` to a ready interpreter to skip that).

helm-sdkpy has ``Lint`` but no ``template`` action and no values argument to ``Lint``. So each case
(the defaults, and each ``ci/*-values.yaml``) is a temporary copy of the chart whose ``values.yaml`` is
the defaults merged with the case's file the way Helm merges ``-f`` files. To see the rendered objects,
a second copy gets a probe template that ``include``s every template file and hands the result to
``fail``: in lint mode Helm logs a ``fail`` message instead of aborting, so the rendered manifests
come back base64-encoded on stderr. Lint messages carry no text through helm-sdkpy (their ``Err`` is
empty), so failures report the case, path and severity.
"""

from __future__ import annotations

import base64
import copy
import functools
import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "htvs"
HELM_VENV = ROOT / ".venv-helm"
HELM_SDKPY = "helm-sdkpy==0.1.32"
RELEASE = "test-release"  # the release name Helm's lint renders with
FULLNAME = f"{RELEASE}-htvs"
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
# the CI cases, and the examples the README tells users to install with (as "example-NAME")
CASES = [
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
    *sorted("example-" + p.name.removesuffix("-values.yaml") for p in (CHART / "examples").glob("*-values.yaml")),
]

LINT_SCRIPT = r'''
"""Lint chart copies with helm-sdkpy; print one JSON object {chart_dir: result} on stdout."""
import asyncio, json, sys
import helm_sdkpy

async def main(paths):
    lint = helm_sdkpy.Lint(helm_sdkpy.Configuration())
    out = {}
    for path in paths:
        try:
            out[path] = await lint.run(path)
        except helm_sdkpy.HelmError as error:
            out[path] = {"exception": f"{type(error).__name__}: {error}"}
    return out

print(json.dumps(asyncio.run(main(sys.argv[1:]))))
'''


# ------------------------------------------------------------------------------------------- helm venv
def _python312_candidates() -> Iterator[str]:
    if os.environ.get("HTVS_PYTHON312"):
        yield os.environ["HTVS_PYTHON312"]
    yield "python3.12"
    yield from sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    yield "python3.13"


def _runs(python: str) -> bool:
    try:
        result = subprocess.run([python, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                                capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def helm_python() -> str:
    """An interpreter that can ``import helm_sdkpy``: .venv-helm/, created on demand."""
    if os.environ.get("HTVS_HELM_PYTHON"):
        return os.environ["HTVS_HELM_PYTHON"]
    python = HELM_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import helm_sdkpy"], capture_output=True).returncode == 0:
        return str(python)
    base = next((c for c in _python312_candidates() if _runs(c)), None)
    if base is None:
        pytest.skip("helm-sdkpy needs Python >= 3.12 and none was found (set HTVS_PYTHON312)")
    steps = [[base, "-m", "venv", "--clear", str(HELM_VENV)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", HELM_SDKPY]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"could not set up {HELM_VENV.name} ({' '.join(step[:3])}): {result.stderr[-800:]}")
    return str(python)


# ------------------------------------------------------------------------------------------ the cases
def merge_values(base: Any, overlay: Any) -> Any:
    """Helm's merge of a values file over the chart defaults: maps merge, lists replace, null deletes."""
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return copy.deepcopy(overlay)
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def case_values(case: str) -> dict:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if case == "default":
        return defaults
    if case.startswith("example-"):
        path = CHART / "examples" / f"{case.removeprefix('example-')}-values.yaml"
    else:
        path = CHART / "ci" / f"{case}-values.yaml"
    return merge_values(defaults, yaml.safe_load(path.read_text()) or {})


def chart_copy(destination: Path, values: dict, probe_label: str | None = None) -> Path:
    """A copy of the chart with ``values`` as its values.yaml (and optionally the render probe)."""
    shutil.copytree(CHART, destination)
    (destination / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    if probe_label is not None:
        files = sorted(p.name for p in (CHART / "templates").glob("*.yaml"))
        lines = ["{{- $out := dict }}"]
        include = '{{{{- $_ := set $out "{0}" (include (print .Template.BasePath "/{0}") .) }}}}'
        lines += [include.format(name) for name in files]
        lines.append(f'{{{{- fail (printf "HTVS_RENDER {probe_label} %s" ($out | toJson | b64enc)) }}}}')
        (destination / "templates" / "zz-render-probe.yaml").write_text("\n".join(lines) + "\n")
    return destination


@functools.cache
def _helm_run(helm_python: str, workdir: str) -> tuple[dict, dict[str, list[dict]]]:
    """Lint every case (plain copies) and render every case (probe copies) in one helm-sdkpy process."""
    base = Path(workdir)
    lint_dirs = {case: chart_copy(base / f"lint-{case}", case_values(case)) for case in CASES}
    bad = merge_values(case_values("default"), {"grpc": {"port": "not-a-port"}})
    lint_dirs["invalid-values"] = chart_copy(base / "lint-invalid-values", bad)
    probe_dirs = [chart_copy(base / f"render-{case}", case_values(case), probe_label=case) for case in CASES]
    script = base / "helm_lint.py"
    script.write_text(LINT_SCRIPT)
    result = subprocess.run(
        [helm_python, str(script), *map(str, lint_dirs.values()), *map(str, probe_dirs)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"helm-sdkpy lint script failed:\n{result.stderr[-3000:]}"
    by_dir = json.loads(result.stdout)
    lint = {case: by_dir[str(path)] for case, path in lint_dirs.items()}
    rendered: dict[str, list[dict]] = {}
    for label, payload in re.findall(r"HTVS_RENDER (\S+) ([A-Za-z0-9+/=]+)", result.stderr):
        files = json.loads(base64.b64decode(payload))
        rendered[label] = [
            doc for name in sorted(files) for doc in yaml.safe_load_all(files[name]) if isinstance(doc, dict)
        ]
    return lint, rendered


@pytest.fixture(scope="session")
def helm_results(helm_python: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, list[dict]]]:
    return _helm_run(helm_python, str(tmp_path_factory.mktemp("helm")))


@pytest.fixture(scope="session")
def rendered(helm_results: tuple[dict, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    objects = helm_results[1]
    if not objects:
        pytest.skip(
            "helm-sdkpy has no template action and this Helm does not log lint-mode fail() messages, "
            "so rendered manifests are unavailable (lint still ran)"
        )
    missing = sorted(set(CASES) - set(objects))
    assert not missing, f"cases that did not render (a template error? see test_chart_lints_clean): {missing}"
    return objects


def kinds(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> Iterator[tuple[str, dict]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------------ lint
@pytest.mark.parametrize("case", CASES)
def test_chart_lints_clean(helm_results: tuple[dict, dict], case: str) -> None:
    result = helm_results[0][case]
    assert "exception" not in result, result
    problems = [
        f"{case}: {message['Path']} severity {SEVERITY.get(message['Severity'], message['Severity'])}"
        for message in result.get("Messages") or []
        if message["Severity"] >= 2
    ]
    assert problems == [], problems
    assert not result.get("Errors"), f"{case}: {result['Errors']}"


def test_lint_catches_values_that_break_the_schema(helm_results: tuple[dict, dict]) -> None:
    """Guard against a lint that passes everything: a string port must be an error."""
    result = helm_results[0]["invalid-values"]
    severities = [m["Severity"] for m in result.get("Messages") or []]
    assert "exception" in result or 3 in severities, result


# ------------------------------------------------------------------------------------------ render
@pytest.mark.parametrize("case", CASES)
def test_pods_are_locked_down(rendered: dict[str, list[dict]], case: str) -> None:
    specs = list(pod_specs(rendered[case]))
    assert specs, f"{case}: no pods rendered"
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{name}/{container['name']}"
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{name}/{container['name']}: no /tmp emptyDir"
            for env in container.get("env", []):
                if re.search(r"KEY|PASSWORD|SECRET|TOKEN", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{name}: {env['name']}"


@pytest.mark.parametrize("case", CASES)
def test_services_have_grpc_probes_and_ports(rendered: dict[str, list[dict]], case: str) -> None:
    """Native gRPC probes: on the service port in plaintext, on the plaintext health-only port with TLS
    (the kubelet's gRPC probe cannot speak TLS)."""
    deployments = kinds(rendered[case], "Deployment")
    services = kinds(rendered[case], "Service")
    tls = case_values(case)["tls"]["enabled"]
    assert deployments, case
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] == ["serve", name.removeprefix(f"{FULLNAME}-")]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["grpc"] == {"port": 50052 if tls else 50051}, f"{name} {probe}"
        ports = {"grpc": 50051, "metrics": 9090, **({"health": 50052} if tls else {})}
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
        assert container["resources"]["requests"], name
        assert {p["name"] for p in services[name]["spec"]["ports"]} == {"grpc", "metrics"}


def test_default_install(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["default"]
    components = {n.removeprefix(f"{FULLNAME}-") for n in kinds(objects, "Deployment")}
    assert components == {"substitution", "composition", "structure", "conductivity"}  # dft is opt-in
    assert set(kinds(objects, "HorizontalPodAutoscaler")) == {f"{FULLNAME}-{c}" for c in components}
    assert set(kinds(objects, "PodDisruptionBudget")) == {f"{FULLNAME}-{c}" for c in components}
    for deployment in kinds(objects, "Deployment").values():
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        # the four default services need no torch: the light image
        assert "ghcr.io/htvs/htvs-light:" in deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert kinds(objects, "ServiceMonitor") == {}
    (minio,) = kinds(objects, "StatefulSet").values()
    assert minio["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert f"{FULLNAME}-minio" in kinds(objects, "Service")
    secret = kinds(objects, "Secret")[f"{FULLNAME}-s3"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {k: len(base64.b64decode(v)) for k, v in secret["data"].items()} == {"accessKey": 20, "secretKey": 40}


def test_gpu_values_schedule_gpu_services(rendered: dict[str, list[dict]]) -> None:
    deployments = kinds(rendered["gpu"], "Deployment")
    for component in ("composition", "conductivity", "generator"):
        spec = deployments[f"{FULLNAME}-{component}"]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, component
        assert "ghcr.io/htvs/htvs-gpu:" in container["image"], component
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true", component
        assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] == "gpu-h100", component
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), component
    cpu = deployments[f"{FULLNAME}-substitution"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    # the default install asks for no GPU anywhere but the workflow's predict step
    for name, spec in pod_specs(rendered["default"]):
        assert "nvidia.com/gpu" not in json.dumps(spec), name
    # the generator samples where torch sees its GPU, with the torch threads of its values
    generator = deployments[f"{FULLNAME}-generator"]["spec"]["template"]["spec"]["containers"][0]
    assert generator["args"][:2] == ["serve", "generator"]
    assert {"name": "HTVS_GENERATOR_THREADS", "value": "2"} in generator["env"]
    assert f"{FULLNAME}-generator" not in kinds(rendered["gpu"], "HorizontalPodAutoscaler")  # a GPU per replica
    assert deployments[f"{FULLNAME}-generator"]["spec"]["replicas"] == 1


def test_generator_without_a_gpu(rendered: dict[str, list[dict]]) -> None:
    """services.generator on CPU: the full image (torch), no GPU request or placement, its settings
    in the environment; the campaign template calls it for the generate step."""
    objects = rendered["generator-cpu"]
    deployment = kinds(objects, "Deployment")[f"{FULLNAME}-generator"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/htvs/htvs:0.1.0"  # torch: neither the light nor the GPU image
    assert "nvidia.com/gpu" not in json.dumps(spec) and "nodeSelector" not in spec and "tolerations" not in spec
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HTVS_GENERATOR_THREADS"] == "4" and env["HTVS_GENERATOR_DEVICE"] == "cpu"
    assert env["HTVS_STORE"] == "s3://htvs"  # the store of the generate stage it hosts
    assert container["resources"]["requests"]["cpu"] == "4"
    assert f"{FULLNAME}-generator" in kinds(objects, "Service")
    assert f"{FULLNAME}-generator" in kinds(objects, "PodDisruptionBudget")
    (template,) = kinds(objects, "WorkflowTemplate").values()
    parameters = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    named = dict(item.split("=") for item in parameters["services"].split(","))
    assert named["generator"] == f"{FULLNAME}-generator:50051"
    steps = {t["name"]: t for t in template["spec"]["templates"]}
    assert "--services" in steps["generate"]["container"]["args"]


def test_external_minio_values(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["external-minio"]
    assert kinds(objects, "StatefulSet") == {} and kinds(objects, "Secret") == {}
    for name, spec in pod_specs(objects):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["HTVS_S3_ENDPOINT"]["value"] == "minio.storage.svc.cluster.local:443", name
        assert env["HTVS_S3_SECURE"]["value"] == "true", name
        assert env["HTVS_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "htvs-external-s3", name
    (template,) = kinds(objects, "WorkflowTemplate").values()
    parameters = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    assert parameters["s3-secret"] == "htvs-external-s3" and parameters["s3-secure"] == "true"
    repository = yaml.safe_load(kinds(objects, "ConfigMap")[f"{FULLNAME}-artifact-repositories"]["data"]["minio"])
    assert repository["s3"]["endpoint"] == "minio.storage.svc.cluster.local:443"
    assert repository["s3"]["accessKeySecret"]["name"] == "htvs-external-s3"


def test_servicemonitor_values(rendered: dict[str, list[dict]]) -> None:
    (monitor,) = kinds(rendered["servicemonitor"], "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_production_values_tls_no_reflection_network_policy(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["production"]
    deployments = kinds(objects, "Deployment")
    assert deployments
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        flags = dict(zip(args, args[1:]))
        assert flags["--tls-cert"] == "/etc/htvs/tls/tls.crt" and flags["--tls-key"] == "/etc/htvs/tls/tls.key"
        assert flags["--tls-client-ca"] == "/etc/htvs/tls/ca.crt", "clientAuth: mutual TLS"
        assert flags["--health-port"] == "50052" and "--no-reflection" in args, name
        (volume,) = [v for v in spec["volumes"] if v["name"] == "grpc-tls"]
        assert volume["secret"] == {"secretName": "htvs-grpc-tls", "defaultMode": 0o440}
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "grpc-tls"]
        assert mount == {"name": "grpc-tls", "mountPath": "/etc/htvs/tls", "readOnly": True}
    for service in kinds(objects, "Service").values():  # the health-only port stays inside the pod network
        assert "health" not in {p["name"] for p in service["spec"]["ports"]}
    # the thin clients: only ca.crt of the servers' Secret, the client certificate, HTVS_GRPC_* pointing at them
    (template,) = kinds(objects, "WorkflowTemplate").values()
    assert argo_schema_errors(template) == []
    volumes = {v["name"]: v["secret"] for v in template["spec"]["volumes"] if "secret" in v}
    assert volumes["grpc-ca"]["secretName"] == "htvs-grpc-tls"
    assert volumes["grpc-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert volumes["grpc-client"]["secretName"] == "htvs-grpc-client-tls"
    for step in template["spec"]["templates"]:
        if "container" in step:
            env = {e["name"]: e.get("value") for e in step["container"]["env"]}
            assert env["HTVS_GRPC_CA"] == "/etc/htvs/grpc-ca/ca.crt", step["name"]
            assert env["HTVS_GRPC_CERT"] == "/etc/htvs/grpc-client/tls.crt", step["name"]
            assert {m["mountPath"] for m in step["container"]["volumeMounts"]} >= {"/etc/htvs/grpc-ca",
                                                                                  "/etc/htvs/grpc-client"}
    # one NetworkPolicy per service: gRPC from the campaign's pods and the named clients, metrics from monitoring
    pod_labels = template["spec"]["podMetadata"]["labels"]
    policies = kinds(objects, "NetworkPolicy")
    assert set(policies) == set(deployments)
    for name, policy in policies.items():
        selector = deployments[name]["spec"]["selector"]["matchLabels"]
        assert policy["spec"]["podSelector"]["matchLabels"] == selector
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        grpc_rule, metrics_rule = policy["spec"]["ingress"]
        assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        campaign, *clients = grpc_rule["from"]
        assert campaign["podSelector"]["matchLabels"].items() <= pod_labels.items(), "the campaign's pods match"
        assert campaign["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "campaign"
        assert [set(c) for c in clients] == [{"namespaceSelector", "podSelector"}, {"ipBlock"}]
        assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        (scraper,) = metrics_rule["from"]
        assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


@pytest.mark.parametrize("case", CASES)
def test_reflection_and_tls_follow_values(rendered: dict[str, list[dict]], case: str) -> None:
    values = case_values(case)
    for name, deployment in kinds(rendered[case], "Deployment").items():
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert ("--no-reflection" in args) is (not values["grpc"]["reflection"]), name
        assert ("--tls-cert" in args) is values["tls"]["enabled"], name
    if not values["networkPolicy"]["enabled"]:
        assert kinds(rendered[case], "NetworkPolicy") == {}


def test_minimal_values(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["minimal"]
    (deployment,) = kinds(objects, "Deployment").values()
    assert deployment["metadata"]["name"] == f"{FULLNAME}-substitution"
    assert deployment["spec"]["replicas"] == 1
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "WorkflowTemplate", "ServiceAccount"):
        assert kinds(objects, kind) == {}, kind
    (minio,) = kinds(objects, "StatefulSet").values()
    assert "volumeClaimTemplates" not in minio["spec"]
    assert {"name": "data", "emptyDir": {}} in minio["spec"]["template"]["spec"]["volumes"]


@pytest.mark.parametrize(("case", "file_name"), [("default", "campaign-services.yaml"),
                                               ("in-process", "campaign.yaml")])
def test_workflow_template_is_the_rendered_argo_file(rendered: dict[str, list[dict]], case: str,
                                                     file_name: str) -> None:
    """The chart's WorkflowTemplate is the rendered Argo file of its execution (services by default,
    as the chart deploys the services) with parameter defaults from values."""
    (template,) = kinds(rendered[case], "WorkflowTemplate").values()
    golden = yaml.safe_load((ROOT / "argo" / file_name).read_text())
    assert template["metadata"]["name"] == f"{FULLNAME}-campaign"
    assert template["spec"]["templates"] == golden["spec"]["templates"]
    assert template["spec"]["volumes"] == golden["spec"]["volumes"]
    parameters = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    assert set(parameters) == {p["name"] for p in golden["spec"]["arguments"]["parameters"]}
    assert parameters["store"] == "s3://htvs/campaigns"
    assert parameters["s3-endpoint"] == f"{FULLNAME}-minio:9000"
    assert parameters["s3-secret"] == f"{FULLNAME}-s3"
    if case == "default":  # thin clients of the release's Services, on the light image
        assert parameters["image"] == "ghcr.io/htvs/htvs-light:0.1.0"
        named = dict(item.split("=") for item in parameters["services"].split(","))
        services = kinds(rendered[case], "Service")
        for name, address in named.items():
            host, port = address.split(":")
            assert host in services and int(port) == 50051, name
        assert set(named) == {"substitution", "composition", "structure", "conductivity"}  # dft is opt-in
    else:
        assert parameters["image"] == "ghcr.io/htvs/htvs:0.1.0"
        assert json.loads(parameters["gpu-node-selector"]) == {"nvidia.com/gpu.present": "true"}
        assert json.loads(parameters["gpu-tolerations"])[0]["key"] == "nvidia.com/gpu"
    assert template["spec"]["serviceAccountName"] == f"{FULLNAME}-workflow"
    assert template["spec"]["artifactRepositoryRef"]["configMap"] in kinds(rendered[case], "ConfigMap")
    assert parameters["config-map"] == f"{FULLNAME}-campaign-config"
    # the services read and write the bucket the campaigns use
    for deployment in kinds(rendered[case], "Deployment").values():
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert parameters["store"].startswith(env["HTVS_STORE"] + "/")
    # every object of the release carries the release's name, so a second release in the namespace cannot collide
    for kind in ("WorkflowTemplate", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"):
        assert all(name.startswith(FULLNAME) for name in kinds(rendered[case], kind)), kind
    # and it is still a valid Argo document
    assert argo_schema_errors(template) == []


def argo_schema_errors(template: dict) -> list[str]:
    """Errors of a WorkflowTemplate against the Argo Workflows JSON Schema (tests/data/argo)."""
    jsonschema = pytest.importorskip("jsonschema")
    with gzip.open(ROOT / "tests" / "data" / "argo" / "argo-workflows-schema.json.gz", "rt") as handle:
        schema = json.load(handle)
    schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(template)]


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("case", CASES)
def test_values_validate_against_schema(case: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(case_values(case))]
    assert errors == [], errors


def test_schema_rejects_typos_and_bad_types() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))
    for overlay in ({"services": {"substitution": {"replicas": 2}}}, {"grpc": {"port": "50051"}},
                    {"s3": {"accessKey": "x"}}):
        assert list(validator.iter_errors(merge_values(case_values("default"), overlay))), overlay


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")
    else:
        yield path, node


@pytest.mark.parametrize("case", CASES)
def test_no_secret_values(case: str) -> None:
    """Credentials come from a Secret only: no password/key/token-like value in values files."""
    secretish = re.compile(r"password|passwd|secretkey|accesskey|token|credential", re.IGNORECASE)
    leaks = [path for path, value in _walk(case_values(case)) if secretish.search(path) and value not in ("", None)]
    assert leaks == [], leaks


def test_every_value_has_a_comment() -> None:
    """prometheus-community style: each key in values.yaml is documented on the line(s) above it,
    or sits inside a documented block (a commented key whose value is a plain structure)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_block_indent: int | None = None
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(\s.*)?$", line)
        if not match:
            continue
        indent = len(match.group(1))
        if documented_block_indent is not None and indent > documented_block_indent:
            continue
        documented_block_indent = None
        previous = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        value = (match.group(3) or "").strip()
        if previous.startswith("#"):
            if not value:
                documented_block_indent = indent  # a documented structure: its children need no comment
            continue
        if not value:
            continue  # a grouping key (e.g. `services:`); its children carry the comments
        undocumented.append(f"line {number + 1}: {line.strip()}")
    assert undocumented == [], undocumented


def test_merge_values_follows_helm() -> None:
    """The ci-file merge mirrors Helm's: maps merge, lists replace, null deletes."""
    merged = merge_values({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "d": None})
    assert merged == {"a": {"b": 1, "c": [3]}}


# ------------------------------------------------------------------------------- Kubernetes schemas
#: The Kubernetes versions the chart supports (Chart.yaml kubeVersion); the lowest and the highest
#: are validated (kubernetes-validate bundles the schemas, offline).
SUPPORTED_KUBERNETES = ("1.29", "1.37")
#: Custom resources: their schemas come with their operators, not with Kubernetes, so
#: kubernetes-validate has none. The WorkflowTemplate is checked against Argo's schema above.
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com (Prometheus Operator)",
                "WorkflowTemplate": "argoproj.io (Argo Workflows)"}


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
def test_manifests_validate_against_kubernetes_schemas(rendered: dict[str, list[dict]], version: str) -> None:
    """Every rendered object of every case against the strict schema of Kubernetes ``version``
    (unknown fields are errors); custom resources are skipped by kind and counted."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate.utils")
    problems, validated, skipped = [], 0, 0
    for case in CASES:
        for obj in rendered[case]:
            name = f"{case}: {obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] in CUSTOM_KINDS:
                skipped += 1
                continue
            try:
                kubernetes_validate.validate(obj, f"{version}.0", strict=True)
                validated += 1
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{name}: {error.message}")
    assert problems == [], "\n".join(problems)
    assert validated >= 10 * len(CASES), f"only {validated} objects validated ({skipped} custom resources skipped)"
    assert skipped >= 1, "the WorkflowTemplate should have been seen and skipped"


def test_kube_version_matches_the_validated_range() -> None:
    """Chart.yaml's kubeVersion starts at the lowest version validated; no upper bound (Helm would refuse
    newer clusters outright), the highest validated is the newest kubernetes-validate bundles."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate.utils")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    low, high = SUPPORTED_KUBERNETES
    assert chart["kubeVersion"] == f">={low}.0-0"
    newest = kubernetes_validate.major_minor(kubernetes_validate.latest_version())
    assert tuple(map(int, high.split("."))) <= tuple(map(int, newest.split("."))), f"schemas only up to {newest}"
