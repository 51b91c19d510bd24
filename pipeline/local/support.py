"""What the local runner executes, checked over the whole workflow before the first step.

An explicit allowlist of the workflow, template, container and task fields that KFP v1's
compiler emits and that the runner implements with Argo's semantics; every other field is
refused with one line naming the construct and the step. Fields that only place pods on a
cluster (service account, node selectors, tolerations, CPU/memory requests and limits, image
pull settings) have no local meaning and are accepted. References between steps
(`{{tasks.x.outputs.parameters.y}}`, `{{item.a}}`, `{{workflow.status}}`) are resolved
statically, as Argo validates a workflow at submission.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.local.argo import (
    POD_FIELDS,
    RETRY_POLICIES,
    WorkflowError,
    is_comparison,
    parse_duration,
    placeholders,
)

CLUSTER = "run this pipeline on a KFP cluster"
# Placement and cluster bookkeeping: no effect on what a step computes.
_PLACEMENT = {"serviceAccountName", "imagePullSecrets", "podGC", "ttlStrategy",
              "ttlSecondsAfterFinished", "nodeSelector", "tolerations", "affinity",
              "podDisruptionBudget", "priorityClassName", "schedulerName", "priority"}
_SPEC_KEYS = {"entrypoint", "arguments", "templates", "onExit", "parallelism",
              "activeDeadlineSeconds"} | _PLACEMENT
_TEMPLATE_KEYS = {"name", "inputs", "outputs", "metadata", "container", "dag", "retryStrategy",
                  "activeDeadlineSeconds", "parallelism"} | _PLACEMENT
_CONTAINER_KEYS = {"name", "image", "command", "args", "env", "imagePullPolicy", "resources"}
_TASK_KEYS = {"name", "template", "arguments", "dependencies", "when", "withItems", "withParam"}
_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_TYPES = {
    "resource": "a Kubernetes resource step (dsl.ResourceOp, dsl.VolumeOp or "
                "dsl.VolumeSnapshotOp)",
    "script": "a script template", "steps": "a steps template",
    "suspend": "a suspend template", "containerSet": "a containerSet template",
    "data": "a data template", "http": "an HTTP template", "plugin": "a plugin template",
}
_FIELDS = {
    "volumes": "volumes (dsl.VolumeOp, pvolumes, add_volume)",
    "volumeClaimTemplates": "volume claim templates",
    "volumeMounts": "volume mounts (pvolumes, add_volume_mount)",
    "initContainers": "init containers (add_init_container)",
    "sidecars": "sidecars (dsl.Sidecar, add_sidecar)",
    "podSpecPatch": "a pod spec patch (podSpecPatch)",
    "securityContext": "a security context",
    "envFrom": "environment variables from a config map or secret (envFrom)",
    "workingDir": "a working directory (workingDir)",
    "artifactRepositoryRef": "an artifact repository (artifactRepositoryRef)",
    "synchronization": "a mutex or semaphore (synchronization)",
    "memoize": "memoization (memoize)", "daemon": "a daemon step (daemon)",
    "hostNetwork": "host networking (hostNetwork)", "dnsConfig": "a DNS config (set_dns_config)",
    "dnsPolicy": "a DNS policy", "hooks": "lifecycle hooks (hooks)",
    "onExit": "a task exit handler (onExit on a task)", "depends": "depends expressions",
    "continueOn": "continueOn", "withSequence": "withSequence loops",
    "templateRef": "a template reference (templateRef)", "inline": "an inline template",
}
_WORKFLOW_VARS = {"workflow.name", "workflow.namespace", "workflow.uid", "workflow.duration",
                  "workflow.serviceAccountName", "workflow.mainEntrypoint",
                  "workflow.creationTimestamp"}
EXIT_VARS = {"workflow.status", "workflow.failures"}


def _refuse(step: str | None, construct: str, fix: str = CLUSTER) -> WorkflowError:
    where = f"step {step!r}" if step else "the pipeline"
    return WorkflowError(f"{construct} in {where} is not supported by the local runner; {fix}")


def check_supported(document: dict[str, Any]) -> None:
    """Raise WorkflowError for the first construct the local runner cannot run faithfully."""
    spec = document.get("spec") or {}
    for key in spec:
        if key not in _SPEC_KEYS:
            raise _refuse(None, _FIELDS.get(key, f"the workflow field {key!r}"))
    for item in (spec.get("arguments") or {}).get("artifacts") or []:
        raise _refuse(None, f"the input artifact {item.get('name')!r} of the workflow")
    for item in (spec.get("arguments") or {}).get("parameters") or []:
        _only(item, {"name", "value"}, None, "a pipeline parameter field")
    templates = {template["name"]: template for template in spec.get("templates") or []}
    entrypoint = spec.get("entrypoint")
    if entrypoint not in templates or "dag" not in templates[entrypoint]:
        raise WorkflowError(f"the entrypoint {entrypoint!r} is not a DAG template of the "
                            "workflow; recompile the pipeline with dsl-compile")
    if spec.get("onExit") and spec["onExit"] not in templates:
        raise WorkflowError(f"the exit handler {spec['onExit']!r} is not a template of the "
                            "workflow; recompile the pipeline with dsl-compile")
    for name, template in templates.items():
        _check_template(name, template, templates)
    main = _reachable(entrypoint, templates)
    exit_only = _reachable(spec.get("onExit"), templates) - main
    global_vars = (_WORKFLOW_VARS
                   | {f"workflow.parameters.{item['name']}"
                      for item in (spec.get("arguments") or {}).get("parameters") or []}
                   | {f"workflow.labels.{key}" for key in
                      (document.get("metadata") or {}).get("labels") or {}}
                   | {f"workflow.annotations.{key}" for key in
                      (document.get("metadata") or {}).get("annotations") or {}})
    for name, template in templates.items():
        known = global_vars | (EXIT_VARS if name in exit_only else set())
        if "dag" in template:
            _check_dag_references(name, template, templates, known)
        else:
            scope = known | {"pod.name"} | {f"inputs.parameters.{item['name']}" for item in
                                            (template.get("inputs") or {}).get("parameters") or []}
            for text in _strings(template["container"]):
                _check_text(text, scope, name, looped=None)


def _only(mapping: dict[str, Any], allowed: set[str], step: str | None, what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise _refuse(step, _FIELDS.get(key, f"{what} {key!r}"))


def _check_template(name: str, template: dict[str, Any], templates: dict[str, Any]) -> None:
    for key, construct in _TYPES.items():
        if key in template:
            raise _refuse(name, construct)
    if ("container" in template) == ("dag" in template):
        raise WorkflowError(f"template {name!r} has no container or dag; recompile the pipeline")
    _only(template, _TEMPLATE_KEYS, name, "the template field")
    inputs, outputs = template.get("inputs") or {}, template.get("outputs") or {}
    _only(inputs, {"parameters", "artifacts"}, name, "the input field")
    _only(outputs, {"parameters", "artifacts"}, name, "the output field")
    for item in inputs.get("parameters") or []:
        _only(item, {"name", "default", "description"}, name, "the input parameter field")
    if "container" in template:
        _check_container(name, template)
        input_artifact, output_parameter = {"name", "path", "optional"}, {"path"}
        output_artifact = {"name", "path", "optional"}
    else:
        for key in ("retryStrategy", "activeDeadlineSeconds"):
            if key in template:
                raise _refuse(name, f"{key} on a DAG template")
        _check_dag(name, template["dag"], templates)
        input_artifact, output_parameter = {"name"}, {"parameter"}
        output_artifact = {"name", "from"}
    for item in inputs.get("artifacts") or []:
        _only(item, input_artifact, name, f"the input artifact {item.get('name')!r} field")
    for item in outputs.get("parameters") or []:
        _only(item, {"name", "valueFrom"}, name, "the output parameter field")
        _only(item.get("valueFrom") or {}, output_parameter, name,
              f"the output parameter {item.get('name')!r} source")
    for item in outputs.get("artifacts") or []:
        _only(item, output_artifact, name,
              f"the output artifact {item.get('name')!r} location")


def _check_container(name: str, template: dict[str, Any]) -> None:
    container = template["container"]
    _only(container, _CONTAINER_KEYS, name, "the container field")
    for kind in ("requests", "limits"):
        for resource in (container.get("resources") or {}).get(kind) or {}:
            if resource not in _RESOURCES:
                raise _refuse(name, f"the resource {resource!r} (e.g. a GPU or TPU limit)")
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            continue
        if set(source) != {"fieldRef"}:
            raise _refuse(name, f"the environment variable {item.get('name')!r} from "
                                f"{', '.join(source)}")
        path = source["fieldRef"].get("fieldPath", "")
        if path not in POD_FIELDS and not (
                path.startswith("metadata.labels['") and path.endswith("']")):
            raise _refuse(name, f"the pod field {path!r} in an environment variable")
    strategy = template.get("retryStrategy") or {}
    _only(strategy, {"limit", "retryPolicy", "backoff"}, name, "the retryStrategy field")
    _only(strategy.get("backoff") or {}, {"duration", "factor", "maxDuration", "cap"}, name,
          "the retry backoff field")
    if strategy.get("retryPolicy", "OnFailure") not in RETRY_POLICIES:
        raise WorkflowError(f"step {name!r}: retryPolicy {strategy['retryPolicy']!r} is not "
                            f"one of {', '.join(RETRY_POLICIES)}")
    for key in ("duration", "maxDuration", "cap"):
        if key in (strategy.get("backoff") or {}):
            parse_duration(strategy["backoff"][key])


def _check_dag(name: str, dag: dict[str, Any], templates: dict[str, Any]) -> None:
    _only(dag, {"tasks", "failFast"}, name, "the DAG field")
    if dag.get("failFast", True) is not True:
        raise _refuse(name, "failFast: false")
    tasks = {task["name"]: task for task in dag.get("tasks") or []}
    for task in tasks.values():
        for key in task:
            if key not in _TASK_KEYS:
                raise _refuse(task["name"], _FIELDS.get(key, f"the task field {key!r}"))
        if task.get("template") not in templates:
            raise WorkflowError(f"task {task['name']!r} runs the missing template "
                                f"{task.get('template')!r}; recompile the pipeline")
        for dependency in task.get("dependencies") or []:
            if dependency not in tasks:
                raise WorkflowError(f"task {task['name']!r} depends on {dependency!r}, which "
                                    f"is not a task of {name!r}")
        arguments = task.get("arguments") or {}
        _only(arguments, {"parameters", "artifacts"}, task["name"], "the argument field")
        for item in arguments.get("parameters") or []:
            _only(item, {"name", "value"}, task["name"], "the argument field")
        for item in arguments.get("artifacts") or []:
            _only(item, {"name", "from", "raw"}, task["name"], "the artifact argument field")
        if "withItems" in task and not isinstance(task["withItems"], list):
            raise WorkflowError(f"task {task['name']!r}: withItems is not a list")
    _ancestors(name, tasks)  # refuses a cycle


def _ancestors(name: str, tasks: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Each task's transitive dependencies; a cycle is an error."""
    found: dict[str, set[str]] = {}

    def visit(task: str, path: tuple[str, ...]) -> set[str]:
        if task in path:
            raise WorkflowError(f"dependency cycle in {name!r}: {' -> '.join(path + (task,))}")
        if task not in found:
            result: set[str] = set()
            for dependency in tasks[task].get("dependencies") or []:
                result |= {dependency} | visit(dependency, path + (task,))
            found[task] = result
        return found[task]

    for task in tasks:
        visit(task, ())
    return found


def _reachable(root: str | None, templates: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    pending = [root] if root else []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += [task["template"] for task in templates[name].get("dag", {}).get("tasks", [])]
    return seen


def _outputs(template: dict[str, Any], prefix: str, looped: bool) -> set[str]:
    """The scope keys a finished task adds; a loop hands on only its output parameters."""
    outputs = template.get("outputs") or {}
    keys = {f"{prefix}.outputs.parameters.{item['name']}" for item in
            outputs.get("parameters") or []}
    if not looped:
        keys |= {f"{prefix}.outputs.artifacts.{item['name']}" for item in
                 outputs.get("artifacts") or []}
    return keys


def _check_dag_references(name: str, template: dict[str, Any], templates: dict[str, Any],
                          known: set[str]) -> None:
    tasks = {task["name"]: task for task in template["dag"].get("tasks") or []}
    inputs = template.get("inputs") or {}
    base = known | {f"inputs.parameters.{item['name']}" for item in
                    inputs.get("parameters") or []} | {
        f"inputs.artifacts.{item['name']}" for item in inputs.get("artifacts") or []}
    produced = {task_name: _outputs(templates[task["template"]], f"tasks.{task_name}",
                                    "withItems" in task or "withParam" in task)
                for task_name, task in tasks.items()}
    ancestors = _ancestors(name, tasks)
    for task_name, task in tasks.items():
        scope = base.union(*(produced[ancestor] for ancestor in ancestors[task_name]))
        looped = "withItems" in task or "withParam" in task
        fields = [item.get("value", "") for item in
                  (task.get("arguments") or {}).get("parameters") or []]
        fields += [item.get("from", "") or (item.get("raw") or {}).get("data", "") for item in
                   (task.get("arguments") or {}).get("artifacts") or []]
        for text in [*fields, task.get("when", ""), task.get("withParam", "")]:
            _check_text(str(text), scope, task_name, looped, tasks, produced)
        if "when" in task and not is_comparison(str(task["when"])):
            raise _refuse(task_name, f"the when expression {task['when']!r} (the local runner "
                                     "evaluates one comparison, as KFP v1 writes it)")
        _check_arguments(task, templates[task["template"]])
    everything = base.union(*produced.values())
    outputs = template.get("outputs") or {}
    for item in (outputs.get("parameters") or []) + (outputs.get("artifacts") or []):
        source = (item.get("valueFrom") or {}).get("parameter", "") or item.get("from", "")
        if not source:
            raise WorkflowError(f"template {name!r}: output {item['name']!r} has no source")
        _check_text(str(source), everything, name, False, tasks, produced)


def _check_arguments(task: dict[str, Any], template: dict[str, Any]) -> None:
    given = {item["name"] for item in (task.get("arguments") or {}).get("parameters") or []}
    for item in (template.get("inputs") or {}).get("parameters") or []:
        if item["name"] not in given and "default" not in item:
            raise WorkflowError(f"task {task['name']!r} does not supply the input parameter "
                                f"{item['name']!r} of {template['name']!r}; recompile the "
                                "pipeline")
    given = {item["name"] for item in (task.get("arguments") or {}).get("artifacts") or []}
    for item in (template.get("inputs") or {}).get("artifacts") or []:
        if item["name"] not in given and not item.get("optional"):
            raise WorkflowError(f"task {task['name']!r} does not supply the input artifact "
                                f"{item['name']!r} of {template['name']!r}; recompile the "
                                "pipeline")


def _check_text(text: str, scope: set[str], step: str, looped: bool | None,
                tasks: dict[str, Any] | None = None,
                produced: dict[str, set[str]] | None = None) -> None:
    """Refuse a placeholder that cannot resolve; `looped` None: `{{item}}` is plain text
    here (a container's command, where Argo does not substitute it)."""
    for tag in placeholders(text):
        if tag == "item" or tag.startswith("item."):
            if looped is False:
                raise WorkflowError(f"{{{{{tag}}}}} in step {step!r} is outside a loop "
                                    "(withItems/withParam); recompile the pipeline")
            continue
        if tag in scope:
            continue
        if tag in EXIT_VARS:
            raise _refuse(step, f"{{{{{tag}}}}} outside the exit handler",
                          "Argo sets it only for the exit handler (dsl.ExitHandler)")
        parts = tag.split(".")
        if tasks is not None and produced is not None and parts[0] == "tasks" and len(parts) > 1:
            task = parts[1]
            if task in tasks and tag not in produced[task]:
                looped_task = "withItems" in tasks[task] or "withParam" in tasks[task]
                reason = ("Argo hands on only the output parameters of a loop"
                          if looped_task and ".outputs.artifacts." in tag else
                          f"task {task!r} declares no such output; Argo refuses this "
                          "workflow too")
                raise WorkflowError(f"{{{{{tag}}}}} in step {step!r} cannot be resolved: "
                                    f"{reason}")
            if task in tasks:
                raise WorkflowError(f"{{{{{tag}}}}} in step {step!r} refers to task {task!r}, "
                                    "which it does not depend on")
        if parts[0] == "inputs":
            raise WorkflowError(f"{{{{{tag}}}}} in step {step!r} cannot be resolved: its "
                                "template declares no such input; recompile the pipeline")
        raise _refuse(step, f"the placeholder {{{{{tag}}}}}")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a container spec (command, args, env values, image)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, Iterable):
        for item in value:
            yield from _strings(item)
