"""The DAG engine: runs a compiled workflow's templates with Argo's semantics.

Dependencies, `when`, loops (`withItems`, `withParam`; the iterations' output parameters
aggregated into JSON lists for the tasks after the loop), sub-DAGs and recursion, DAG
outputs, the exit handler (`onExit`, run whether the entrypoint succeeded or failed, with
`{{workflow.status}}`), the workflow's and each DAG's `parallelism`, and the workflow's
`activeDeadlineSeconds`. Container steps are handed to `run_container` (the runner).

Each node of the run (a task, a loop iteration, the exit handler) is one step of the run
record, keyed by its task name; inside a loop iteration, a recursive call or the exit
handler, keys are paths (`for-loop-2(0:1).square`) so that every key is unique and the same
on a resumed run.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.errors import one_line
from pipeline.local import records, roles
from pipeline.local.argo import (
    WorkflowError,
    aggregate,
    evaluate_condition,
    go_json,
    item_label,
    item_scope,
    substitute,
    substitute_item,
)
from pipeline.local.processes import RunInterrupted
from pipeline.local.records import RunRecord, RunStore, StepRecord
from pipeline.local.workflow import Workflow

_DONE = {records.SUCCEEDED, records.SKIPPED, records.OMITTED}

StepCallback = Callable[[StepRecord], None]
# (step, template, scope, input artifacts, deadline as time.monotonic() or None)
ContainerRunner = Callable[[StepRecord, dict[str, Any], dict[str, str], dict[str, str],
                            float | None], None]


class StepFailed(RuntimeError):
    """A step failed (after its retries); the message says which and why."""


@dataclass(frozen=True)
class Node:
    """Where a step sits in the run: its record key, its parent and its enclosing templates."""

    key: str
    parent: str = ""
    scoped: bool = False  # children's keys are prefixed with this key
    stack: tuple[str, ...] = ()  # templates of the enclosing DAG instances (and its own)
    exit_handler: bool = False

    def child(self, name: str, template: str) -> Node:
        recursive = template in self.stack
        prefixed = (self.scoped or recursive) and self.key
        return Node(key=f"{self.key}.{name}" if prefixed else name, parent=self.key,
                    scoped=self.scoped or recursive, stack=(*self.stack, template),
                    exit_handler=self.exit_handler)

    def iteration(self, label: str) -> Node:
        return Node(key=f"{self.key}{label}", parent=self.key, scoped=True, stack=self.stack,
                    exit_handler=self.exit_handler)


@dataclass
class Outputs:
    """What a finished task hands to the tasks after it."""

    parameters: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


class DagEngine:
    """Runs one workflow's entrypoint and exit handler; steps are recorded as they go."""

    def __init__(self, workflow: Workflow, record: RunRecord, store: RunStore,
                 run_container: ContainerRunner, on_step: StepCallback) -> None:
        self.workflow = workflow
        self.record = record
        self.store = store
        self.run_container = run_container
        self.on_step = on_step
        self.started = time.monotonic()
        self.deadline = (self.started + workflow.deadline_s
                         if workflow.deadline_s is not None else None)
        self.pods = (threading.BoundedSemaphore(workflow.parallelism)
                     if workflow.parallelism > 0 else None)
        self.stopping = threading.Event()  # set on a stop or a failure: start nothing new
        self.stop_error: BaseException | None = None  # the stop (RunInterrupted), if any
        self.entry = Node(key="", stack=(workflow.entrypoint,))
        self._declare_dag(workflow.entrypoint, self.entry)
        self.exit: Node | None = None
        if workflow.on_exit:
            task_names = {task["name"] for template in workflow.templates.values()
                          for task in template.get("dag", {}).get("tasks", [])}
            key = workflow.on_exit if workflow.on_exit not in task_names else "onExit"
            self.exit = Node(key=key, scoped=True, stack=(workflow.on_exit,),
                             exit_handler=True)
            self._declare(self.exit, workflow.on_exit, [])
            if workflow.is_dag(workflow.on_exit):
                self._declare_dag(workflow.on_exit, self.exit)

    # The run --------------------------------------------------------------------------------
    def stop(self, error: BaseException) -> None:
        """A stop signal ends the run: no step starts any more; they raise `error` instead."""
        self.stop_error = error
        self.stopping.set()

    def run(self) -> None:
        """Run the entrypoint, then the exit handler; raise StepFailed if the run failed."""
        failure: Exception | None = None
        try:
            parameters = {name: substitute(value, self._globals())
                          for name, value in self.record.parameters.items()}
            self._run_dag(self.workflow.entrypoint,
                          self._template_scope(self.workflow.entrypoint, parameters, {}),
                          self.entry)
        except (StepFailed, WorkflowError) as error:
            failure = error
        if self.exit is not None:
            self._close_main_tree(records.OMITTED if failure else records.SKIPPED)
            exit_failure = self._run_exit_handler("Failed" if failure else "Succeeded")
            failure = failure or exit_failure  # the run's status follows Argo's
        if failure:
            raise failure

    def _run_exit_handler(self, status: str) -> StepFailed | None:
        """Argo's onExit: the workflow's arguments, `{{workflow.status}}` and its failures."""
        assert self.exit is not None
        for key, step in self.record.steps.items():  # a resumed run reruns it
            if key == self.exit.key or key.startswith(self.exit.key + "."):
                step.status, step.outputs, step.artifacts, step.reused = (
                    records.PENDING, {}, {}, "")
        failures = [{"displayName": step.name, "message": step.message,
                     "templateName": step.template, "phase": step.status,
                     "podName": "" if self.workflow.is_dag(step.template)
                     else self._pod_name(step.name), "finishedAt": step.end}
                    for step in self.record.steps.values() if step.status == records.FAILED]
        extra = {"workflow.status": status, "workflow.failures": go_json(failures)}
        step = self.record.steps[self.exit.key]
        try:
            parameters = {name: substitute(value, self._globals())
                          for name, value in self.record.parameters.items()}
            self._invoke(step, self.exit, self.workflow.on_exit, parameters, {}, extra)
        except StepFailed as error:
            return error
        return None

    def _close_main_tree(self, status: str) -> None:
        """Steps of the entrypoint that never ran are closed before the exit handler runs:
        Skipped (inside a branch not taken) or, after a failure, Omitted."""
        assert self.exit is not None
        for key, step in self.record.steps.items():
            if step.status == records.PENDING and not (
                    key == self.exit.key or key.startswith(self.exit.key + ".")):
                step.status = status
        self.store.save(self.record)

    # Scopes ---------------------------------------------------------------------------------
    def _globals(self) -> dict[str, str]:
        created = datetime.fromisoformat(self.record.start.replace("Z", "+00:00"))
        metadata = self.workflow.source.get("metadata") or {}
        scope = {"workflow.uid": self.record.run_id, "workflow.name": self.record.run_id,
                 "workflow.namespace": "local",
                 "workflow.serviceAccountName": str(self.workflow.spec.get(
                     "serviceAccountName", "default")),
                 "workflow.mainEntrypoint": self.workflow.entrypoint,
                 "workflow.creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "workflow.duration": f"{time.monotonic() - self.started:f}"}
        scope.update({f"workflow.parameters.{name}": value
                      for name, value in self.record.parameters.items()})
        for kind in ("labels", "annotations"):
            scope.update({f"workflow.{kind}.{key}": str(value)
                          for key, value in (metadata.get(kind) or {}).items()})
        return scope

    def _template_scope(self, template_name: str, parameters: dict[str, str],
                        artifacts: dict[str, str]) -> dict[str, str]:
        """A template invocation's scope: its declared inputs (or their defaults)."""
        template = self.workflow.templates[template_name]
        scope = self._globals()
        inputs = template.get("inputs") or {}
        for item in inputs.get("parameters") or []:
            value = parameters.get(item["name"], item.get("default"))
            if value is None:
                raise WorkflowError(f"input parameter {item['name']!r} of {template_name!r} "
                                    "was not supplied")
            scope[f"inputs.parameters.{item['name']}"] = str(value)
        for item in inputs.get("artifacts") or []:
            if item["name"] in artifacts:
                scope[f"inputs.artifacts.{item['name']}"] = artifacts[item["name"]]
        return scope

    # DAGs -----------------------------------------------------------------------------------
    def _run_dag(self, template_name: str, scope: dict[str, str],
                 node: Node) -> Outputs:
        """Run a DAG's tasks as their dependencies allow; fail fast, as Argo does."""
        template = self.workflow.templates[template_name]
        tasks = {task["name"]: task for task in template["dag"]["tasks"]}
        children = {name: node.child(name, task["template"]) for name, task in tasks.items()}
        limit = int(template.get("parallelism") or 0)
        slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        scope = dict(scope)
        finished: set[str] = set()
        running: dict[Future, str] = {}
        failure: Exception | None = None
        with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
            while True:
                for name, task in tasks.items():
                    dependencies = task.get("dependencies") or []
                    if (failure or name in finished or name in running.values()
                            or not all(dep in finished for dep in dependencies)):
                        continue
                    self._declare(children[name], task["template"],
                                  [children[dep].key for dep in dependencies])
                    running[pool.submit(self._run_task, task, dict(scope), children[name],
                                        slots)] = name
                if not running:
                    break
                try:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                except BaseException:  # Ctrl-C reaches the main thread: no new steps anywhere
                    self.stopping.set()
                    raise
                for future in done:
                    name = running.pop(future)
                    finished.add(name)
                    try:
                        outputs = future.result()
                    except (StepFailed, WorkflowError) as error:
                        failure = failure or error
                        continue
                    for key, value in (outputs.parameters if outputs else {}).items():
                        scope[f"tasks.{name}.outputs.parameters.{key}"] = value
                    for key, value in (outputs.artifacts if outputs else {}).items():
                        scope[f"tasks.{name}.outputs.artifacts.{key}"] = value
        unfinished = [name for name in tasks if name not in finished]
        if failure:
            raise failure
        if unfinished:  # a dependency that never finished: cannot happen after a check
            raise WorkflowError(f"tasks {unfinished} of {template_name!r} never became ready")
        outputs = template.get("outputs") or {}
        return Outputs(
            {item["name"]: substitute(item["valueFrom"]["parameter"], scope)
             for item in outputs.get("parameters") or []},
            {item["name"]: substitute(item["from"], scope)
             for item in outputs.get("artifacts") or []})

    def _run_task(self, task: dict[str, Any], scope: dict[str, str], node: Node,
                  slots: threading.BoundedSemaphore | None) -> Outputs | None:
        if "withItems" in task or "withParam" in task:
            return self._run_loop(task, scope, node, slots)
        with slots or nullcontext():
            return self._run_one(task, scope, node, {})

    def _run_loop(self, task: dict[str, Any], scope: dict[str, str], node: Node,
                  slots: threading.BoundedSemaphore | None) -> Outputs | None:
        """Expand a loop into iterations (limited by the DAG's parallelism) and aggregate."""
        group = self.record.steps[node.key]
        if group.status == records.SUCCEEDED:  # finished before this run was resumed
            self.on_step(group)
            return Outputs(dict(group.outputs))
        try:
            items = self._items(task, scope)
        except WorkflowError as error:
            raise self._fail(group, f"step {group.name}: {one_line(error)}") from error
        if not items:
            self._finish(group, records.SKIPPED, "no items to loop over")
            return None
        self.store.step_started(self.record, group)
        self.on_step(group)
        iterations = [node.iteration(item_label(index, item)) for index, item in
                      enumerate(items)]
        for child in iterations:
            self._declare(child, task["template"], [])
        stop = threading.Event()

        def iteration(child: Node, item: Any) -> Outputs | None:
            with slots or nullcontext():
                if stop.is_set():  # fail fast: later iterations do not start
                    return None
                try:
                    return self._run_one(task, scope, child, item_scope(item))
                except StepFailed:
                    stop.set()
                    raise

        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            futures = [pool.submit(iteration, child, item)
                       for child, item in zip(iterations, items, strict=True)]
            try:
                wait(futures)
            except BaseException:
                self.stopping.set()
                raise
        errors = [future.exception() for future in futures if future.exception()]
        if stops := [error for error in errors if isinstance(error, RunInterrupted)]:
            raise stops[0]
        if errors:
            raise self._fail(group, str(errors[0]))
        values: dict[str, list[str]] = {}
        for child in iterations:
            step = self.record.steps[child.key]
            if step.status == records.SUCCEEDED:
                for name, value in step.outputs.items():
                    values.setdefault(name, []).append(value)
        group.outputs = {name: aggregate(found) for name, found in values.items()}
        self._finish(group, records.SUCCEEDED)
        return Outputs(dict(group.outputs))

    def _items(self, task: dict[str, Any], scope: dict[str, str]) -> list[Any]:
        if "withItems" in task:
            return list(task["withItems"])
        text = substitute(str(task["withParam"]), scope)
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise WorkflowError(f"withParam value {text[:80]!r} is not a JSON list")
        return items

    def _run_one(self, task: dict[str, Any], scope: dict[str, str], node: Node,
                 item: dict[str, str]) -> Outputs | None:
        """One task (or loop iteration): its `when`, then its template."""
        step = self.record.steps[node.key]
        if step.status == records.SUCCEEDED:  # finished before this run was resumed
            self.on_step(step)
            return Outputs(dict(step.outputs), dict(step.artifacts))
        try:
            def resolve(text: Any) -> str:
                return substitute(substitute_item(str(text), item) if item else str(text),
                                  scope)

            arguments = task.get("arguments") or {}
            parameters = {entry["name"]: resolve(entry.get("value", ""))
                          for entry in arguments.get("parameters") or []}
            artifacts = {entry["name"]: (resolve(entry["from"]) if "from" in entry else
                                         "raw:" + resolve((entry.get("raw") or {}).get("data", "")))
                         for entry in arguments.get("artifacts") or []}
            if "when" in task:
                expression = resolve(task["when"])
                if not evaluate_condition(expression):
                    self._finish(step, records.SKIPPED, f"when '{expression}' is false")
                    return None
        except WorkflowError as error:
            raise self._fail(step, f"step {step.name}: {one_line(error)}") from error
        self._invoke(step, node, task["template"], parameters, artifacts, {})
        return Outputs(dict(step.outputs), dict(step.artifacts))

    def _invoke(self, step: StepRecord, node: Node, template_name: str,
                parameters: dict[str, str], artifacts: dict[str, str],
                extra: dict[str, str]) -> None:
        """Run a template for a step: a sub-DAG here, a container through the runner."""
        try:
            scope = {**self._template_scope(template_name, parameters, artifacts), **extra}
            if self.stop_error is not None:
                raise self.stop_error  # the step stays Pending: a resume runs it
            if self.stopping.is_set():
                raise StepFailed(f"step {step.name} did not start: the run is stopping")
            if (not node.exit_handler and self.deadline is not None
                    and time.monotonic() >= self.deadline):
                raise StepFailed(f"step {step.name} did not start: the workflow exceeded its "
                                 f"deadline of {self.workflow.deadline_s:g} s "
                                 "(activeDeadlineSeconds)")
            if self.workflow.is_dag(template_name):
                self.store.step_started(self.record, step)
                self.on_step(step)
                outputs = self._run_dag(template_name, scope, node)
                step.outputs, step.artifacts = outputs.parameters, outputs.artifacts
                self._finish(step, records.SUCCEEDED)
                return
            scope["pod.name"] = self._pod_name(node.key)
            scope["node.name"] = self._node_name(node.key)
            with self.pods or nullcontext():
                self.run_container(step, self.workflow.templates[template_name], scope,
                                   artifacts, None if node.exit_handler else self.deadline)
            self.on_step(step)
        except RunInterrupted:
            raise  # not a failure of the step: the runner records it Interrupted
        except StepFailed as error:
            if step.status != records.FAILED:
                self._fail(step, str(error))
            raise
        except Exception as error:  # noqa: BLE001 - any error fails its step, as in Argo
            raise self._fail(step, f"step {step.name}: {one_line(error)}") from error

    # Records --------------------------------------------------------------------------------
    def _declare(self, node: Node, template: str, dependencies: list[str]) -> StepRecord:
        spec = self.workflow.templates.get(template, {})
        component = roles.component_of(spec)
        return self.store.add_step(self.record, StepRecord(
            name=node.key, template=template, parent=node.parent, dependencies=dependencies,
            component=component, role=roles.role_of(spec, component)))

    def _declare_dag(self, template_name: str, node: Node) -> None:
        """Record the steps known before the run: everything outside loops and recursion."""
        tasks = {task["name"]: task for task in self.workflow.dag_tasks(template_name)}
        children = {name: node.child(name, task["template"]) for name, task in tasks.items()}
        for name in _topological(tasks):
            task, child = tasks[name], children[name]
            self._declare(child, task["template"],
                          [children[dep].key for dep in task.get("dependencies") or []])
            if ("withItems" not in task and "withParam" not in task
                    and task["template"] not in node.stack
                    and self.workflow.is_dag(task["template"])):
                self._declare_dag(task["template"], child)

    def _finish(self, step: StepRecord, status: str, message: str = "") -> None:
        self.store.step_finished(self.record, step, status, message)
        self.on_step(step)

    def _fail(self, step: StepRecord, message: str) -> StepFailed:
        self._finish(step, records.FAILED, message)
        return StepFailed(message)

    def _node_name(self, key: str) -> str:
        """Argo's node name of a step, `<workflow>.<task path>` (the Vertex AI components label
        their jobs with it); a resumed run's nodes get new names, as for pods."""
        attempt = f"-r{self.record.resumes}" if self.record.resumes else ""
        return f"{self.record.run_id}.{key}{attempt}"

    def _pod_name(self, key: str) -> str:
        """A pod-like name per step (a resumed run's pods get new names, as retried pods do)."""
        slug = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
        if slug != key:
            slug += "-" + hashlib.sha1(key.encode()).hexdigest()[:6]
        attempt = f"-r{self.record.resumes}" if self.record.resumes else ""
        return f"{self.record.run_id}-{slug}{attempt}"


def _topological(tasks: dict[str, dict[str, Any]]) -> list[str]:
    """Task names ordered so each follows its dependencies (ties keep the compiled order)."""
    ordered: list[str] = []
    remaining = list(tasks)
    while remaining:
        ready = [name for name in remaining
                 if all(dep in ordered for dep in tasks[name].get("dependencies") or [])]
        if not ready:  # a cycle, refused when the workflow was loaded
            raise WorkflowError(f"dependency cycle among {remaining}")
        ordered += ready
        remaining = [name for name in remaining if name not in ready]
    return ordered
