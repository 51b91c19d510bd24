"""Executes a compiled KFP v1 package (Argo Workflow) on this machine.

The DAG engine (`dag.py`) walks the workflow with Argo's semantics; this module runs each
container step's own command as a local process (the GCP launcher is swapped for
`pipeline.local.launcher`) with its retryStrategy and activeDeadlineSeconds, passes its
parameters and artifacts, and keeps the run record. The local AI Platform emulator serves
the run's training and deploy calls. A stop signal (see `pipeline.local.processes`) ends the
run as Interrupted, ready to resume.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pipeline.errors import one_line
from pipeline.local import fixed_paths, records, roles
from pipeline.local.argo import RetryStrategy, WorkflowError, substitute
from pipeline.local.cache import CacheEntry, StepCache, named_files, output_digests, step_key
from pipeline.local.dag import DagEngine, StepCallback, StepFailed
from pipeline.local.home import local_home
from pipeline.local.launcher import STEP_ROOT_ENV
from pipeline.local.processes import RunInterrupted, RunProcesses
from pipeline.local.records import RunRecord, RunStore, StepRecord, resume_command
from pipeline.local.step_env import step_environment
from pipeline.local.warm import started_as
from pipeline.local.workflow import Workflow

# Container entrypoints served by a local module instead of an image.
LOCAL_MODULES = {"kfp_component.launcher": "pipeline.local.launcher"}
LOG_TAIL_LINES = 8

LineCallback = Callable[[StepRecord, str], None]


class LocalRunner:
    """Runs one workflow once: `LocalRunner(...).run()` returns the finished run record."""

    def __init__(self, workflow: Workflow, record: RunRecord, store: RunStore,
                 emulator_url: str, on_step: StepCallback | None = None,
                 on_line: LineCallback | None = None, cache: StepCache | None = None,
                 processes: RunProcesses | None = None) -> None:
        self.workflow = workflow
        self.cache = cache
        self.processes = processes or RunProcesses()
        self.record = record
        self.store = store
        self.emulator_url = emulator_url
        self.on_step = on_step or (lambda step: None)
        self.on_line = on_line or (lambda step, line: None)
        self.folder = store.folder(record.run_id)
        self.engine = DagEngine(workflow, record, store, self._run_container, self.on_step)
        self.processes.on_stop(lambda: self.engine.stop(self._stop()))

    def run(self) -> RunRecord:
        """Execute the entrypoint DAG and the exit handler; the record says how it ended.

        Raises:
            RunInterrupted: a stop signal ended the run (recorded Interrupted first).
        """
        self.store.save(self.record)
        try:
            self.engine.run()
        except BaseException as error:
            if self.processes.stop_signal is not None:
                raise self._interrupted(self._stop()) from None
            self._close_pending(records.OMITTED)
            if isinstance(error, StepFailed | WorkflowError):
                self.store.run_finished(self.record, records.FAILED, str(error))
                return self.record
            self.store.run_finished(self.record, records.FAILED,
                                    f"the local runner crashed: {one_line(error)}")
            raise
        self._close_pending(records.SKIPPED)
        self.store.run_finished(self.record, records.SUCCEEDED)
        return self.record

    def _stop(self) -> RunInterrupted:
        assert self.processes.stop_signal is not None
        return RunInterrupted(self.processes.stop_signal)

    def _interrupted(self, stop: RunInterrupted) -> RunInterrupted:
        """Record the run and the steps the stop cut short as Interrupted; return `stop`."""
        note = str(stop)
        for step in self.record.steps.values():
            if step.status == records.RUNNING:
                self.store.step_finished(self.record, step, records.INTERRUPTED, note)
                self.on_step(step)
        self._close_pending(records.OMITTED)
        self.store.run_finished(self.record, records.INTERRUPTED,
                                f"{note}; continue with: {resume_command(self.record.run_id)}")
        stop.record = self.record
        return stop

    def _close_pending(self, status: str) -> None:
        for step in self.record.steps.values():
            if step.status in (records.PENDING, records.RUNNING):
                step.status = status
        self.store.save(self.record)

    def warm_programs(self) -> list[tuple[list[str], dict[str, str]]]:
        """Each container template's command and environment (placeholders unresolved), in
        the order the run first reaches them: what the warm executor prestarts."""
        return [(_local_command([str(part) for part in
                                 self.workflow.templates[name]["container"].get("command", [])
                                 + self.workflow.templates[name]["container"].get("args", [])]),
                 self._environment({}))
                for name in self.workflow.containers_in_order()]

    def _environment(self, step_env: Mapping[str, str]) -> dict[str, str]:
        """A step's environment: this process's with the step's own variables, what a step
        sees of the local server (pipeline.local.step_env), unbuffered Python."""
        env = step_environment({**os.environ, **step_env}, self.emulator_url,
                               self.record.parameters)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # Containers ----------------------------------------------------------------------------
    def _run_container(self, step: StepRecord, template: dict[str, Any],
                       scope: dict[str, str], artifacts: dict[str, str],
                       deadline: float | None = None) -> None:
        """Run a container step to its end (retries included); `deadline` is the workflow's,
        as a `time.monotonic()` value."""
        step_dir = self.folder / "steps" / _folder_name(step.name)
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
        if step.component == roles.ML_ENGINE_TRAIN and roles.tunes(resolved):
            step.role = roles.TUNING
        command = _local_command([localise(part) for part in resolved])
        step_env = {item["name"]: (substitute(str(item.get("value", "")), scope)
                                   if "valueFrom" not in item
                                   else self._field_ref(item["valueFrom"], scope, template))
                    for item in container.get("env", [])}
        env = self._environment({name: localise(value) for name, value in step_env.items()})
        env[STEP_ROOT_ENV] = str(root)
        # Paths the program uses without naming them: a private /tmp, else one step at a time.
        # (A local stand-in module writes its fixed outputs below STEP_ROOT_ENV.)
        unnamed = [] if set(LOCAL_MODULES) & set(resolved) else fixed_paths.unnamed(
            mapping, "\n".join([*resolved, *step_env.values()]))
        private = (fixed_paths.private_tmp_command(command, root / "tmp", self._needed(step_dir),
                                                   fixed_paths.env_paths(env))
                   if unnamed and all(map(fixed_paths.under_tmp, unnamed))
                   and fixed_paths.private_tmp_available() else None)
        alone = unnamed if unnamed and private is None else []
        command = private or command
        note = fixed_paths.ALONE_NOTE.format(paths=", ".join(alone)) if alone else ""
        inputs_in = [item["path"] for item in template.get("inputs", {}).get("artifacts", [])]
        retry = RetryStrategy.of(template)
        step.log = str((step_dir / "log.txt").relative_to(self.folder))
        step_dir.mkdir(parents=True, exist_ok=True)
        key = None
        if self.cache is not None and _cacheable(template):
            inputs = {item["name"]: Path(artifacts[item["name"]]) for item in
                      template.get("inputs", {}).get("artifacts", [])
                      if not artifacts.get(item["name"], "raw:").startswith("raw:")}
            key = step_key(step.name, container, resolved, step_env, inputs)
            targets = {item["name"]: Path(mapping[item["path"]])
                       for item in outputs.get("artifacts", [])}
            entry = self.cache.restore(key, targets) if key is not None else None
            if entry is not None:
                self._restore(step, entry)
                return
        first_start, attempt = time.monotonic(), 0
        while True:
            if root.exists():
                shutil.rmtree(root)
            for path in mapping.values():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            for item in template.get("inputs", {}).get("artifacts", []):
                self._place_artifact(artifacts.get(item["name"], ""), Path(mapping[item["path"]]))
            self.store.step_started(self.record, step)
            self.on_step(step)
            timeout, limited_by = _timeout(template, deadline)
            error = False
            try:
                with (fixed_paths.one_at_a_time(alone, mapping, inputs_in) if alone
                      else nullcontext()):
                    code, tail = self._execute(step, command, env, step_dir, attempt, timeout,
                                               note)
            except OSError as exc:  # the command could not start: Argo's Error phase
                code, error = -1, True
                message = f"step {step.name} could not start {command[0]!r}: {one_line(exc)}"
            else:
                if code == 0:
                    break
                message = (f"step {step.name} failed (exit {code})"
                           + (": " + " | ".join(tail) if tail else "")
                           if code is not None else
                           f"step {step.name} exceeded {limited_by} and was killed")
            pause = retry.pause(attempt + 1, error, time.monotonic() - first_start)
            if pause is not None and deadline is not None and (
                    time.monotonic() + pause >= deadline):
                pause = None  # no retry past the workflow's deadline, as in Argo
            if pause is None:
                self.store.step_finished(self.record, step, records.FAILED, message)
                self.on_step(step)
                raise StepFailed(message)
            time.sleep(pause)
            attempt += 1
        step.outputs = {item["name"]: _read_output(mapping[item["valueFrom"]["path"]], step)
                        for item in outputs.get("parameters", [])}
        step.artifacts = {item["name"]: mapping[item["path"]]
                          for item in outputs.get("artifacts", [])
                          if Path(mapping[item["path"]]).exists()}
        step.files = output_digests(named_files(step.outputs, step.artifacts))
        self.store.step_finished(self.record, step, records.SUCCEEDED)
        if key is not None:
            self.cache.store(key, step.outputs, step.artifacts)

    def _restore(self, step: StepRecord, entry: CacheEntry) -> None:
        """Finish a step from the cache (its outputs already put back in place)."""
        self.store.step_started(self.record, step)
        step.artifacts = dict(entry.artifacts)
        step.outputs = dict(entry.outputs)
        step.files = output_digests(named_files(step.outputs, step.artifacts))
        step.reused = "cache"
        step.attempts -= 1
        self.store.step_finished(self.record, step, records.SUCCEEDED,
                                 "reused from the step cache")

    def _needed(self, step_dir: Path) -> list[Path]:
        """What a step cannot run without, kept in its private /tmp: the local home, the run,
        this checkout and the interpreter."""
        return [local_home(), self.folder, step_dir, Path(__file__).resolve().parents[2],
                Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]

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
        elif source and Path(source).is_dir():  # an OutputPath('Directory'), as Argo passes it
            shutil.copytree(source, target)
        elif source:
            shutil.copyfile(source, target)
        else:
            raise WorkflowError(f"input artifact for {target} was not produced")

    def _execute(self, step: StepRecord, command: list[str], env: Mapping[str, str],
                 cwd: Path, attempt: int, timeout: float | None = None, note: str = "",
                 ) -> tuple[int | None, list[str]]:
        """Run one process, streaming its output to the log file and the progress callback.

        Returns its exit code (None if it was killed at `timeout` seconds, with everything it
        started) and the last lines of its output. `note` goes first in the log.

        Raises:
            RunInterrupted: the run is stopping, and this process did not succeed.
        """
        tail: list[str] = []
        with open(cwd / "log.txt", "a" if attempt else "w") as log:
            if attempt:
                log.write(f"--- retry {attempt} ---\n")
            if note:
                log.write(note + "\n")
            process = self.processes.start(command, cwd, dict(env))
            step.process = started_as(process)
            try:
                code, killed = self._follow(step, process, log, tail, timeout)
            finally:
                self.processes.release(process)
        if code and self.processes.stop_signal is not None:
            raise RunInterrupted(self.processes.stop_signal)
        return (None if killed else code), [line for line in tail if line.strip()]

    def _follow(self, step: StepRecord, process: Any, log: Any, tail: list[str],
                timeout: float | None) -> tuple[int, bool]:
        """Stream a process's output to its log and the progress callback until it ends;
        (exit code, whether it was killed at `timeout` seconds with everything it started)."""
        killed = threading.Event()

        def kill() -> None:
            if process.poll() is None:
                killed.set()
                _kill_tree(process.pid)

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            line = line.rstrip("\n")
            tail[:] = (tail + [line])[-LOG_TAIL_LINES:]
            self.on_line(step, line)
        process.stdout.close()
        code = process.wait()
        if timer:
            timer.cancel()
        return code, killed.is_set()


def _timeout(template: dict[str, Any], deadline: float | None) -> tuple[float | None, str]:
    """Seconds the next attempt may run, and the limit that sets them."""
    own = template.get("activeDeadlineSeconds")
    timeout = float(own) if own else None
    limited_by = f"its deadline of {timeout:g} s (activeDeadlineSeconds)" if own else ""
    if deadline is not None:
        left = max(0.0, deadline - time.monotonic())
        if timeout is None or left < timeout:
            timeout, limited_by = left, "the workflow's deadline (activeDeadlineSeconds)"
    return timeout, limited_by


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (stopped first, so none forks away)."""
    stopped: set[int] = set()
    pending = {pid}
    while pending:
        for target in pending:
            try:
                os.kill(target, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped |= pending
        children: dict[int, set[int]] = {}
        for child, parent in _parents().items():
            children.setdefault(parent, set()).add(child)
        tree, frontier = set(), [pid]
        while frontier:
            current = frontier.pop()
            tree.add(current)
            frontier += [child for child in children.get(current, ()) if child not in tree]
        pending = tree - stopped
    for target in stopped:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _parents() -> dict[int, int]:
    """Every process's parent: from /proc on Linux, else from `ps` (macOS)."""
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        parents = {}
        for stat in proc.glob("[0-9]*/stat"):
            try:  # "pid (comm) state ppid ...", where comm may hold spaces and parentheses
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        return parents
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="],
                             capture_output=True, text=True).stdout.split()
    return {int(child): int(parent)
            for child, parent in zip(listing[::2], listing[1::2], strict=True)}


def _folder_name(step: str) -> str:
    """A step's folder: its name, or a shell-safe short form of a loop iteration's name."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", step):
        return step
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", step)[:80].strip("-")
    return f"{slug}-{hashlib.sha1(step.encode()).hexdigest()[:8]}"


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
    """An output parameter's value; like Argo's executor, without one trailing newline."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise StepFailed(f"step {step.name} did not write its output {path}") from None
    return text.removesuffix("\n")
