"""The campaign WorkflowTemplates (both executions): golden files, Argo JSON Schema, retries,
GPU requests, fan-out, and the services execution's thin clients.

The schema is Argo Workflows v4.1.x ``api/jsonschema/schema.json`` (draft 2020-12, Apache-2.0;
from the argoproj/argo-workflows repository, copied to ``tests/data/argo/``). Its ``IntOrString`` is declared as a plain string, while
Argo accepts integers there (``backoff.factor: 2``), so that one definition is widened; nothing else is.

``HTVS_REGENERATE_GOLDEN=1 pytest tests/test_argo.py`` rewrites ``argo/campaign*.yaml`` and their
copies in ``helm/htvs/files/`` (same as ``python argo/campaign.py``).
"""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import os
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytest.importorskip("hera", reason="hera (Argo Workflows SDK) is not installed")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "argo" / "campaign.py"
SCHEMA = Path(__file__).parent / "data" / "argo" / "argo-workflows-schema.json.gz"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


def load_definition() -> ModuleType:
    """Import argo/campaign.py (argo/ is not a package)."""
    spec = importlib.util.spec_from_file_location("htvs_argo_campaign", DEFINITION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def argo_validator() -> jsonschema.protocols.Validator:
    """A draft 2020-12 validator of the Argo schema with only IntOrString widened."""
    with gzip.open(SCHEMA, "rt", encoding="utf-8") as handle:
        schema = json.load(handle)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["definitions"][INT_OR_STRING] == {"type": "string"}, "schema changed upstream; revisit the widening"
    schema["definitions"][INT_OR_STRING] = {"type": ["string", "integer"]}
    validator_class = jsonschema.validators.validator_for(schema)
    assert validator_class is jsonschema.Draft202012Validator
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(document: dict) -> list[str]:
    """Human-readable schema violations of one rendered document (empty when valid)."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in argo_validator().iter_errors(document)
    ]


@pytest.fixture(scope="module")
def definition() -> ModuleType:
    return load_definition()


@pytest.fixture(scope="module", params=["in-process", "services"])
def execution(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def rendered(definition: ModuleType, execution: str) -> str:
    return definition.render(execution)


@pytest.fixture(scope="module")
def documents(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc is not None]


@pytest.fixture(scope="module")
def workflow_template(documents: list[dict]) -> dict:
    (template,) = [doc for doc in documents if doc["kind"] == "WorkflowTemplate"]
    return template


def templates_by_name(workflow_template: dict) -> dict[str, dict]:
    return {template["name"]: template for template in workflow_template["spec"]["templates"]}


def test_rendered_template_matches_golden_file(definition: ModuleType, rendered: str, execution: str) -> None:
    golden, chart_copy = definition.rendered_paths(execution)
    if os.environ.get("HTVS_REGENERATE_GOLDEN") == "1":
        for path in (golden, chart_copy):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered)
    assert golden.read_text() == rendered, f"{golden.name} is stale: run `python argo/campaign.py`"
    assert chart_copy.read_text() == rendered, f"the chart's {chart_copy.name} is stale: run `python argo/campaign.py`"


def test_every_document_validates_against_argo_schema(documents: list[dict]) -> None:
    assert documents, "nothing rendered"
    for document in documents:
        assert schema_errors(document) == [], f"{document['kind']} {document['metadata']['name']}"


def test_schema_stays_strict_outside_int_or_string(workflow_template: dict) -> None:
    """The widening must not make the schema accept garbage elsewhere."""
    broken = copy.deepcopy(workflow_template)
    broken["spec"]["templates"][0]["retryStrategy"]["limit"] = 1.5  # neither string nor integer
    broken["spec"]["entrypoint"] = 7
    errors = schema_errors(broken)
    assert errors, "schema accepted a float retry limit and an integer entrypoint"


@pytest.mark.parametrize("execution", ["in-process"], indirect=True)
def test_metadata_and_entrypoint(workflow_template: dict) -> None:
    assert workflow_template["apiVersion"] == "argoproj.io/v1alpha1"
    assert workflow_template["metadata"]["name"] == "htvs-campaign"
    spec = workflow_template["spec"]
    assert spec["entrypoint"] in templates_by_name(workflow_template)
    assert spec["artifactRepositoryRef"] == {"configMap": "htvs-artifact-repositories", "key": "minio"}
    parameters = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert {"store", "image", "gpu-image", "config-map", "gpus", "gpu-node-selector", "gpu-tolerations",
            "retry-limit", "s3-secret"} <= set(parameters)
    assert "value" not in parameters["store"], "store must be required at submission"
    json.loads(parameters["gpu-node-selector"]["value"])
    assert isinstance(json.loads(parameters["gpu-tolerations"]["value"]), list)


def test_every_template_retries_with_exponential_backoff(workflow_template: dict) -> None:
    containers = [t for t in workflow_template["spec"]["templates"] if "container" in t]
    assert {t["name"] for t in containers} == {"prototypes", "substitute", "shards", "predict", "screen", "generate",
                                               "structures", "relax", "conductivity", "validate", "report"}
    for template in containers:
        retry = template.get("retryStrategy")
        assert retry, f"{template['name']} has no retryStrategy"
        assert retry["limit"] == "{{workflow.parameters.retry-limit}}"
        backoff = retry["backoff"]
        assert backoff["duration"] and backoff["maxDuration"]
        assert int(backoff["factor"]) >= 2, f"{template['name']}: backoff is not exponential"


def test_containers_are_locked_down_and_read_secrets_by_reference(workflow_template: dict) -> None:
    assert workflow_template["spec"]["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in workflow_template["spec"]["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["config"]["configMap"]["name"] == "{{workflow.parameters.config-map}}"
    for template in workflow_template["spec"]["templates"]:
        if "container" not in template:
            continue
        container = template["container"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
        assert {"/tmp", "/config"} <= {mount["mountPath"] for mount in container["volumeMounts"]}
        env = {e["name"]: e for e in container["env"]}
        for key in ("HTVS_S3_ACCESS_KEY", "HTVS_S3_SECRET_KEY"):
            assert "value" not in env[key], f"{template['name']}: {key} must come from a Secret"
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "{{workflow.parameters.s3-secret}}"
        assert container["command"] == ["htvs"]
        args = container["args"]
        assert args[args.index("--config") + 1] == "/config/campaign.yaml"
        assert args[args.index("--store") + 1] == "{{workflow.parameters.store}}"


def substitute_defaults(text: str, workflow_template: dict, **overrides: str) -> str:
    values = {p["name"]: p.get("value") for p in workflow_template["spec"]["arguments"]["parameters"]}
    values.update(overrides)
    return re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda match: values[match.group(1)], text)


@pytest.mark.parametrize("execution", ["in-process"], indirect=True)
@pytest.mark.parametrize("step", ["predict", "generate", "relax", "validate"])
def test_gpu_steps_request_gpu_with_placement_from_parameters(workflow_template: dict, step: str) -> None:
    predict = templates_by_name(workflow_template)[step]
    assert predict["container"]["image"] == "{{workflow.parameters.gpu-image}}"
    patch = json.loads(substitute_defaults(predict["podSpecPatch"], workflow_template))
    (main,) = patch["containers"]
    assert main["name"] == "main"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert patch["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert patch["tolerations"][0]["key"] == "nvidia.com/gpu"
    # 0 GPUs and no placement constraints still give a valid patch
    cpu_patch = json.loads(
        substitute_defaults(
            predict["podSpecPatch"], workflow_template, gpus="0", **{"gpu-node-selector": "{}", "gpu-tolerations": "[]"}
        )
    )
    assert cpu_patch["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "0"
    # no other step asks for a GPU
    for name, template in templates_by_name(workflow_template).items():
        if name not in ("predict", "generate", "relax", "validate"):
            assert "gpu" not in json.dumps(template), name


def test_dag_fans_out_predict_over_shards_and_fans_in(workflow_template: dict) -> None:
    dag = templates_by_name(workflow_template)[workflow_template["spec"]["entrypoint"]]["dag"]
    tasks = {task["name"]: task for task in dag["tasks"]}
    assert tasks["predict"]["withParam"] == "{{tasks.shards.outputs.result}}"
    assert tasks["predict"]["arguments"]["parameters"] == [{"name": "shard", "value": "{{item}}"}]
    order = ["prototypes", "substitute", "shards", "predict", "screen", "generate", "structures", "relax",
             "conductivity", "validate", "report"]
    assert "depends" not in tasks["prototypes"]
    for before, after in zip(order, order[1:]):
        assert tasks[after]["depends"] == before
    shards_args = templates_by_name(workflow_template)["shards"]["container"]["args"]
    assert shards_args[:2] == ["campaign", "shards"]
    predict_args = templates_by_name(workflow_template)["predict"]["container"]["args"]
    assert predict_args[predict_args.index("--shard") + 1] == "{{inputs.parameters.shard}}"


def test_render_script_check_mode(definition: ModuleType) -> None:
    assert definition.main(["--check"]) == 0


@pytest.mark.parametrize("execution", ["services"], indirect=True)
def test_services_execution_runs_thin_clients_of_the_services(workflow_template: dict) -> None:
    """Every stage with a service is a light-image client passing --services; none asks for a
    GPU (the services' Deployments hold them); the report runs in its task."""
    from htvs.campaign.graph import STAGES

    assert workflow_template["metadata"]["name"] == "htvs-campaign-services"
    parameters = {p["name"]: p for p in workflow_template["spec"]["arguments"]["parameters"]}
    assert "gpu-image" not in parameters and "gpus" not in parameters
    named = dict(item.split("=") for item in parameters["services"]["value"].split(","))
    assert set(named) == {s.service for s in STAGES if s.service}
    templates = templates_by_name(workflow_template)
    assert "gpu" not in json.dumps(workflow_template["spec"]["templates"])
    for stage in STAGES:
        container = templates[stage.name]["container"]
        assert container["image"] == "{{workflow.parameters.image}}"
        args = container["args"]
        if stage.service is None:
            assert "--services" not in args, stage.name
        else:
            assert args[:3] == ["campaign", "stage", stage.name]
            assert args[args.index("--services") + 1] == "{{workflow.parameters.services}}", stage.name
            assert container["resources"]["requests"]["memory"] == "256Mi", stage.name
