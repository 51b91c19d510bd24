"""Executes a compiled KFP v1 package (Argo Workflow) on this machine.

Walks the DAG with Argo's semantics (dependencies, `when`, parameter and artifact passing,
retryStrategy), runs independent steps in parallel, runs each container's own command as a
local process (the GCP launcher is swapped for `pipeline.local.launcher`), and keeps a run
record. The local AI Platform emulator serves the run's training and deploy calls.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pipeline.local import records
from pipeline.local.cache import CacheEntry, StepCache, step_key
from pipeline.local.launcher import STEP_ROOT_ENV
from pipeline.local.records import RunRecord, RunStore, StepRecord
from pipeline.local.step_env import step_environment
from pipeline.local.workflow import Workflow, WorkflowError, evaluate_condition, substitute

# Container entrypoints served by a local module instead of an image.
LOCAL_MODULES = {"kfp_component.launcher": "pipeline.local.launcher"}
LOG_TAIL_LINES = 8
_DONE = {records.SUCCEEDED, records.SKIPPED, records.OMITTED}

LineCallback = Callable[[StepRecord, str], None]
StepCallback = Callable[[StepRecord], None]


class StepFailed(RuntimeError):
    """A container step exited non-zero (after its retries)."""


class LocalRunner:
    """Runs one workflow once: `LocalRunner(...).run()` returns the finished run record."""

    def __init__(self, workflow: Workflow, record: RunRecord, store: RunStore,
                 emulator_url: str, on_step: StepCallback | None = None,
                 on_line: LineCallback | None = None, cache: StepCache | None = None) -> None:
        self.workflow = workflow
        self.cache = cache
        self.record = record
        self.store = store
        self.emulator_url = emulator_url
        self.on_step = on_step or (lambda step: None)
        self.on_line = on_line or (lambda step, line: None)
        self.folder = store.folder(record.run_id)
        for task, parent in workflow.walk_tasks():
            record.steps.setdefault(task["name"], StepRecord(
                name=task["name"], template=task["template"], parent=parent,
                dependencies=list(task.get("dependencies", []))))

    def run(self) -> RunRecord:
        """Execute the entrypoint DAG; the record says how it ended."""
        self.store.save(self.record)
        scope = {f"inputs.parameters.{name}": value
                 for name, value in self.record.parameters.items()}
        scope.update(self._workflow_scope())
        try:
            self._run_dag(self.workflow.entrypoint, scope)
        except (StepFailed, WorkflowError) as error:
            self._close_pending(records.OMITTED)
            self.store.run_finished(self.record, records.FAILED, str(error))
        except BaseException:
            self._close_pending(records.OMITTED)
            self.store.run_finished(self.record, records.FAILED, "interrupted")
            raise
        else:
            self._close_pending(records.SKIPPED)
            self.store.run_finished(self.record, records.SUCCEEDED)
        return self.record

    def _workflow_scope(self) -> dict[str, str]:
        return {"workflow.uid": self.record.run_id, "workflow.name": self.record.run_id,
                "workflow.namespace": "local"}

    def _close_pending(self, status: str) -> None:
        for step in self.record.steps.values():
            if step.status in (records.PENDING, records.RUNNING):
                step.status = status
        self.store.save(self.record)

    # DAG -----------------------------------------------------------------------------------
    def _run_dag(self, template_name: str, scope: dict[str, str]) -> None:
        tasks = {task["name"]: task for task in self.workflow.dag_tasks(template_name)}
        finished: set[str] = set()
        running: dict[Future, str] = {}
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
            while len(finished) < len(tasks):
                for name, task in tasks.items():
                    deps = task.get("dependencies", [])
                    if (name in finished or name in running.values() or failure
                            or not all(dep in finished for dep in deps)):
                        continue
                    step = self.record.steps[name]
                    if any(self.record.steps[dep].status not in _DONE for dep in deps):
                        step.status = records.OMITTED
                        finished.add(name)
                        continue
                    running[pool.submit(self._run_task, task, scope)] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finished.add(running.pop(future))
                    if future.exception() and not failure:
                        failure = future.exception()
        if failure:
            raise failure

    def _run_task(self, task: dict[str, Any], dag_scope: dict[str, str]) -> None:
        step = self.record.steps[task["name"]]
        if step.status == records.SUCCEEDED:  # finished before this run was resumed
            self.on_step(step)
            self._publish(task["name"], step, dag_scope)
            return
        arguments = {item["name"]: substitute(str(item.get("value", "")), dag_scope)
                     for item in task.get("arguments", {}).get("parameters", [])}
        artifacts = {item["name"]: self._artifact_source(item, dag_scope)
                     for item in task.get("arguments", {}).get("artifacts", [])}
        if "when" in task:
            expression = substitute(task["when"], dag_scope)
            if not evaluate_condition(expression):
                step.status, step.message = records.SKIPPED, f"when '{expression}' is false"
                self.store.save(self.record)
                self.on_step(step)
                return
        template = self.workflow.templates[task["template"]]
        scope = {f"inputs.parameters.{name}": value for name, value in arguments.items()}
        scope.update(self._workflow_scope())
        if "dag" in template:
            self.store.step_started(self.record, step)
            self.on_step(step)
            try:
                self._run_dag(task["template"], scope)
            except BaseException as error:
                self.store.step_finished(self.record, step, records.FAILED, str(error))
                self.on_step(step)
                raise
            self.store.step_finished(self.record, step, records.SUCCEEDED)
        else:
            # A resumed run gets new pod names, so retried cloud jobs get new ids.
            attempt = f"-r{self.record.resumes}" if self.record.resumes else ""
            scope["pod.name"] = f"{self.record.run_id}-{task['name']}{attempt}"
            scope["node.name"] = f"{self.record.run_id}.{task['name']}{attempt}"
            self._run_container(step, template, scope, artifacts)
        self.on_step(step)
        self._publish(task["name"], step, dag_scope)

    @staticmethod
    def _publish(task: str, step: StepRecord, dag_scope: dict[str, str]) -> None:
        """Make a finished task's outputs visible to the tasks after it."""
        for name, value in step.outputs.items():
            dag_scope[f"tasks.{task}.outputs.parameters.{name}"] = value
        for name, path in step.artifacts.items():
            dag_scope[f"tasks.{task}.outputs.artifacts.{name}"] = path

    def _artifact_source(self, item: dict[str, Any], scope: dict[str, str]) -> str:
        if "from" in item:
            return substitute(item["from"], scope)
        if "raw" in item:
            return "raw:" + substitute(item["raw"].get("data", ""), scope)
        raise WorkflowError(f"artifact argument {item['name']!r} has no 'from' or 'raw'")

    # Containers ----------------------------------------------------------------------------
    def _run_container(self, step: StepRecord, template: dict[str, Any],
                       scope: dict[str, str], artifacts: dict[str, str]) -> None:
        step_dir = self.folder / "steps" / step.name
        root = step_dir / "root"
        container = template["container"]
        outputs = template.get("outputs", {})
        paths = [item["valueFrom"]["path"] for item in outputs.get("parameters", [])]
        paths += [item["path"] for item in outputs.get("artifacts", [])]
        paths += [item["path"] for item in template.get("inputs", {}).get("artifacts", [])]
        mapping = {path: str(root / path.lstrip("/")) for path in paths}

        def localise(text: str) -> str:
            for container_path, local_path in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
                text = text.replace(container_path, local_path)
            return text

        resolved = [substitute(str(part), scope) for part in
                    container.get("command", []) + container.get("args", [])]
        command = _local_command([localise(part) for part in resolved])
        step_env = {item["name"]: (substitute(str(item.get("value", "")), scope)
                                   if "valueFrom" not in item
                                   else self._field_ref(item["valueFrom"], scope, template))
                    for item in container.get("env", [])}
        env = step_environment(
            {**os.environ, **{name: localise(value) for name, value in step_env.items()}},
            self.emulator_url, self.record.parameters)
        env.update({STEP_ROOT_ENV: str(root), "PYTHONUNBUFFERED": "1"})
        limit = int(template.get("retryStrategy", {}).get("limit", 0) or 0)
        step.log = str((step_dir / "log.txt").relative_to(self.folder))
        step_dir.mkdir(parents=True, exist_ok=True)
        key = None
        if self.cache is not None and _cacheable(template):
            inputs = {item["name"]: Path(artifacts[item["name"]]) for item in
                      template.get("inputs", {}).get("artifacts", [])
                      if not artifacts.get(item["name"], "raw:").startswith("raw:")}
            key = step_key(container, resolved, step_env, inputs)
            entry = self.cache.lookup(key)
            if entry is not None:
                self._restore(step, entry, outputs, mapping)
                return
        for attempt in range(limit + 1):
            if root.exists():
                shutil.rmtree(root)
            for path in mapping.values():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            for item in template.get("inputs", {}).get("artifacts", []):
                self._place_artifact(artifacts.get(item["name"], ""), Path(mapping[item["path"]]))
            self.store.step_started(self.record, step)
            self.on_step(step)
            code, tail = self._execute(step, command, env, step_dir, attempt)
            if code == 0:
                break
            if attempt == limit:
                message = f"step {step.name} failed (exit {code}): " + " | ".join(tail)
                self.store.step_finished(self.record, step, records.FAILED, message)
                self.on_step(step)
                raise StepFailed(message)
        step.outputs = {item["name"]: _read_output(mapping[item["valueFrom"]["path"]], step)
                        for item in outputs.get("parameters", [])}
        step.artifacts = {item["name"]: mapping[item["path"]]
                          for item in outputs.get("artifacts", [])
                          if Path(mapping[item["path"]]).exists()}
        self.store.step_finished(self.record, step, records.SUCCEEDED)
        if key is not None:
            self.cache.store(key, step.outputs, step.artifacts)

    def _restore(self, step: StepRecord, entry: CacheEntry, outputs: dict[str, Any],
                 mapping: dict[str, str]) -> None:
        """Finish a step from the cache: its artifacts copied into place, its outputs reused."""
        self.store.step_started(self.record, step)
        for item in outputs.get("artifacts", []):
            if item["name"] in entry.artifacts:
                target = Path(mapping[item["path"]])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entry.artifacts[item["name"]], target)
                step.artifacts[item["name"]] = str(target)
        step.outputs = dict(entry.outputs)
        step.reused = "cache"
        step.attempts -= 1
        self.store.step_finished(self.record, step, records.SUCCEEDED,
                                 "reused from the step cache")

    def _field_ref(self, value_from: dict[str, Any], scope: dict[str, str],
                   template: dict[str, Any]) -> str:
        """The pod fields KFP's `add-pod-env` exposes, as a local pod would have them."""
        path = value_from.get("fieldRef", {}).get("fieldPath", "")
        labels = template.get("metadata", {}).get("labels", {})
        fields = {"metadata.name": scope["pod.name"], "metadata.uid": scope["pod.name"],
                  "metadata.namespace": "local",
                  "metadata.labels['workflows.argoproj.io/workflow']": self.record.run_id,
                  "metadata.labels['pipeline/runid']": self.record.run_id,
                  "metadata.annotations['workflows.argoproj.io/node-name']": scope["node.name"]}
        if path.startswith("metadata.labels['"):
            fields.setdefault(path, str(labels.get(path[len("metadata.labels['"):-2], "")))
        if path not in fields:
            raise WorkflowError(f"unsupported env valueFrom {value_from}")
        return fields[path]

    def _place_artifact(self, source: str, target: Path) -> None:
        if source.startswith("raw:"):
            target.write_text(source[4:])
        elif source:
            shutil.copyfile(source, target)
        else:
            raise WorkflowError(f"input artifact for {target} was not produced")

    def _execute(self, step: StepRecord, command: list[str], env: Mapping[str, str],
                 cwd: Path, attempt: int) -> tuple[int, list[str]]:
        """Run one process, streaming its output to the log file and the progress callback."""
        tail: list[str] = []
        with open(cwd / "log.txt", "a" if attempt else "w") as log:
            if attempt:
                log.write(f"--- retry {attempt} ---\n")
            process = subprocess.Popen(command, cwd=cwd, env=dict(env), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                tail = (tail + [line])[-LOG_TAIL_LINES:]
                self.on_line(step, line)
            return process.wait(), [line for line in tail if line.strip()]


def _cacheable(template: dict[str, Any]) -> bool:
    """KFP's opt-out: a zero max cache staleness (`set_caching_options`/`P0D`)."""
    metadata = template.get("metadata", {})
    staleness = metadata.get("annotations", {}).get("pipelines.kubeflow.org/max_cache_staleness")
    return (staleness != "P0D"
            and metadata.get("labels", {}).get("pipelines.kubeflow.org/enable_caching") != "false")


def _local_command(command: list[str]) -> list[str]:
    """Run `python` as this interpreter and GCP launcher modules as their local stand-ins."""
    if command and command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]
    return [LOCAL_MODULES.get(part, part) for part in command]


def _read_output(path: str, step: StepRecord) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise StepFailed(f"step {step.name} did not write its output {path}") from None
