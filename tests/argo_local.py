"""Execute a rendered Argo WorkflowTemplate on this machine, as Argo would, one process per pod.

Schema validation cannot catch a wrong argument or parameter name; running the template can.
This walks the DAG of the entrypoint in dependency order, expands ``withParam`` from the
``outputs.result`` (stdout) of the task it names, substitutes ``{{workflow.parameters.*}}``,
``{{inputs.parameters.*}}`` and ``{{item}}``, resolves ``secretKeyRef`` environment variables from
the given Secrets, maps volume mount paths to local folders, and runs each container's command and
args as a local process, retrying as its ``retryStrategy`` says. Anything it does not understand
(an unknown template kind, a field such as ``when``, an expression left unsubstituted) fails
loudly rather than being skipped. ``podSpecPatch`` (GPU placement) is the one field ignored: it
only places pods.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_EXPRESSION = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_TASK_FIELDS = {"name", "template", "depends", "dependencies", "withParam", "arguments"}
_CONTAINER_FIELDS = {"name", "image", "command", "args", "env", "resources", "securityContext", "volumeMounts"}
_TEMPLATE_FIELDS = {"name", "container", "dag", "inputs", "retryStrategy", "podSpecPatch"}


class ArgoLocalError(AssertionError):
    """The template asks for something that cannot be executed as written."""


@dataclass
class TaskRun:
    """One executed pod: the task name, its item (fan-out), the argv run and its stdout."""

    task: str
    item: str | None
    argv: list[str]
    stdout: str
    attempts: int


@dataclass
class LocalArgo:
    """How the cluster is mimicked.

    Attributes:
        commands: container command[0] -> local argv prefix (e.g. ``{"htvs": [".venv/bin/htvs"]}``).
        mounts: volume name -> local folder for its mount path.
        secrets: Secret name -> {key: value}.
        env: extra environment of every process (PATH, PYTHONPATH...).
        timeout_s: limit of one process.
    """

    commands: dict[str, list[str]]
    mounts: dict[str, Path]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 600.0

    def submit(self, template: dict, parameters: dict[str, str]) -> list[TaskRun]:
        """Run ``template`` (a WorkflowTemplate document) with ``parameters`` (``-p name=value``)."""
        spec = template["spec"]
        declared = {p["name"]: p.get("value") for p in spec["arguments"]["parameters"]}
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise ArgoLocalError(f"parameters {unknown} are not declared by the template")
        values = {**declared, **parameters}
        missing = sorted(name for name, value in values.items() if value is None)
        if missing:
            raise ArgoLocalError(f"required parameters {missing} were not given")
        scope = {f"workflow.parameters.{name}": str(value) for name, value in values.items()}
        templates = {t["name"]: t for t in spec["templates"]}
        volumes = {v["name"] for v in spec.get("volumes", [])}
        if set(self.mounts) != volumes:
            raise ArgoLocalError(f"volumes {sorted(volumes)} need local folders; got {sorted(self.mounts)}")
        entry = templates[spec["entrypoint"]]
        if "dag" not in entry:
            raise ArgoLocalError(f"entrypoint {entry['name']!r} is not a DAG")
        return self._dag(entry["dag"]["tasks"], templates, scope)

    # ------------------------------------------------------------------------- DAG

    def _dag(self, tasks: list[dict], templates: dict[str, dict], scope: dict[str, str]) -> list[TaskRun]:
        by_name = {t["name"]: t for t in tasks}
        for task in tasks:
            extra = set(task) - _TASK_FIELDS
            if extra:
                raise ArgoLocalError(f"task {task['name']!r}: fields {sorted(extra)} are not supported here")
        done: dict[str, list[TaskRun]] = {}
        runs: list[TaskRun] = []
        while len(done) < len(tasks):
            ready = [t for t in tasks if t["name"] not in done and all(d in done for d in _needs(t, by_name))]
            if not ready:
                raise ArgoLocalError(f"the DAG has a cycle or an unknown dependency among {sorted(set(by_name) - set(done))}")
            for task in ready:
                done[task["name"]] = self._task(task, templates, scope, done)
                runs.extend(done[task["name"]])
        return runs

    def _task(self, task: dict, templates: dict[str, dict], scope: dict[str, str], done) -> list[TaskRun]:
        local = dict(scope)
        for name, runs in done.items():
            if len(runs) == 1:
                local[f"tasks.{name}.outputs.result"] = runs[0].stdout
        items: list[str | None] = [None]
        if "withParam" in task:
            text = _substitute(task["withParam"], local, f"task {task['name']!r} withParam")
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ArgoLocalError(f"task {task['name']!r}: withParam is not a JSON list: {text[:200]!r}") from exc
            if not isinstance(loaded, list):
                raise ArgoLocalError(f"task {task['name']!r}: withParam gave {loaded!r}, not a list")
            items = [json.dumps(i) if not isinstance(i, str) else i for i in loaded]
        if task["template"] not in templates:
            raise ArgoLocalError(f"task {task['name']!r} names an unknown template {task['template']!r}")
        template = templates[task["template"]]
        runs = []
        for item in items:
            inputs = {}
            item_scope = {**local, **({"item": item} if item is not None else {})}
            for argument in task.get("arguments", {}).get("parameters", []):
                inputs[argument["name"]] = _substitute(str(argument["value"]), item_scope, f"task {task['name']!r}")
            runs.append(self._pod(task["name"], template, local, inputs, item))
        return runs

    # ------------------------------------------------------------------------- one pod

    def _pod(self, task: str, template: dict, scope: dict[str, str], inputs: dict[str, str], item) -> TaskRun:
        extra = set(template) - _TEMPLATE_FIELDS
        if extra or "container" not in template:
            raise ArgoLocalError(f"template {template['name']!r}: only containers are supported (has {sorted(template)})")
        declared = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        if set(inputs) != declared:
            raise ArgoLocalError(f"template {template['name']!r} declares inputs {sorted(declared)}, "
                                 f"task {task!r} passes {sorted(inputs)}")
        container = template["container"]
        extra = set(container) - _CONTAINER_FIELDS
        if extra:
            raise ArgoLocalError(f"container of {template['name']!r}: fields {sorted(extra)} are not supported here")
        pod_scope = {**scope, **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        where = f"template {template['name']!r}"
        mounts = {m["mountPath"]: self.mounts[m["name"]] for m in container.get("volumeMounts", [])}
        command = [self._local_path(_substitute(c, pod_scope, where), mounts) for c in container["command"]]
        args = [self._local_path(_substitute(a, pod_scope, where), mounts) for a in container.get("args", [])]
        if command[0] not in self.commands:
            raise ArgoLocalError(f"{where}: no local program for the container command {command[0]!r}")
        argv = [*self.commands[command[0]], *command[1:], *args]
        env = {**os.environ, **self.env}
        for variable in container.get("env", []):
            env[variable["name"]] = self._env_value(variable, pod_scope, mounts, where)
        retry = template.get("retryStrategy", {})
        limit = int(_substitute(str(retry.get("limit", "0")), pod_scope, where))
        for attempt in range(1, limit + 2):
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=self.timeout_s)
            if result.returncode == 0:
                return TaskRun(task, item, argv, result.stdout.strip(), attempt)
        raise ArgoLocalError(f"task {task!r} (item {item}) failed {limit + 1} time(s), exit {result.returncode}:\n"
                             f"argv: {argv}\nstderr:\n{result.stderr[-4000:]}")

    def _env_value(self, variable: dict, scope: dict[str, str], mounts: dict[str, Path], where: str) -> str:
        if "value" in variable:
            return self._local_path(_substitute(variable["value"], scope, where), mounts)
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise ArgoLocalError(f"{where}: env {variable['name']!r} has neither value nor secretKeyRef")
        name = _substitute(ref["name"], scope, where)
        if name not in self.secrets or ref["key"] not in self.secrets[name]:
            raise ArgoLocalError(f"{where}: env {variable['name']!r} needs Secret {name!r} key {ref['key']!r}")
        return self.secrets[name][ref["key"]]

    @staticmethod
    def _local_path(text: str, mounts: dict[str, Path]) -> str:
        for mount_path, folder in mounts.items():
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(folder) + text[len(mount_path):]
        return text


def _needs(task: dict, by_name: dict[str, dict]) -> list[str]:
    names = list(task.get("dependencies", []))
    if "depends" in task:  # "a && (b.Succeeded || c)": the task names in it
        names += [n for n in re.findall(r"[A-Za-z0-9][A-Za-z0-9-]*", task["depends"])
                  if n not in ("Succeeded", "Failed", "Skipped", "Errored", "Daemoned", "AnySucceeded", "AllFailed")]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ArgoLocalError(f"task {task['name']!r} depends on unknown tasks {unknown}")
    return names


def _substitute(text: str, scope: dict[str, str], where: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in scope:
            raise ArgoLocalError(f"{where}: {{{{{name}}}}} names nothing defined here")
        return scope[name]

    return _EXPRESSION.sub(value, text)
