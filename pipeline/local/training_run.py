"""One local training job's life, API-neutral: states, processes, tuning trials, metrics.

A `JobRun` runs in a background thread of the `TrainingEngine` (training_core.py) and keeps the
job's record current (written atomically after every change):
QUEUED -> PREPARING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (through CANCELLING).

The image's program (`program_for_image`) is forked by the engine's warm executor
(pipeline/local/warm.py) from a zygote that has its libraries loaded, which skips ~2 s of
imports per trial; if it cannot be, or with COVERTYPE_COLD=1, each process starts a fresh
interpreter instead.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomic
from pipeline.hypertune import TuningSpec
from pipeline.local.errors import InvalidArgument
from pipeline.local.processes import die_with_parent
from pipeline.local.tuning import Suggestion, Tuner, final_metric, seed_for
from pipeline.local.warm import ForkedProcess, WarmExecutor, started_as
from pipeline.trainer import TRAIN_PY

TRAINER_PROGRAM = (sys.executable, "-u", str(TRAIN_PY))
TRAINER_IMAGE = "trainer_image"  # the last segment of the names of images that run the trainer
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
INTERRUPTED = "interrupted: the local training service that ran this job stopped; submit it again"
CANCELLED, PROGRAM_FAILED, ABORTED, INTERNAL = 1, 3, 10, 13  # google.rpc.Code values
POLL_SECONDS = 0.05
TAIL_LINES = 20
logger = logging.getLogger(__name__)


def now() -> str:
    """RFC 3339 UTC timestamp with microseconds, as Google's APIs print them."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def program_for_image(image_uri: str, images: Mapping[str, str] | None = None,
                      ) -> tuple[str, ...]:
    """The command a training image runs locally: THE one place that maps images to programs.

    A program mapped to the image (`covertype run --local --image NAME=program.py`, by the
    image's full reference or its name without tag or digest) runs with this interpreter;
    else an image named `.../trainer_image` (any registry, tag or digest) runs this checkout's
    trainer (`python -u trainer_image/train.py`). Any other image is refused, never replaced.

    Raises:
        InvalidArgument: an image with no local program, naming the option that maps one.
    """
    images = images or {}
    name = image_name(image_uri)
    program = images.get(image_uri) or images.get(name)
    if program:
        return (sys.executable, "-u", program)
    if name.endswith("/" + TRAINER_IMAGE):
        return TRAINER_PROGRAM
    raise InvalidArgument(f"training image {image_uri!r} has no local program: only images named "
                          f".../{TRAINER_IMAGE} run the local trainer; map this one with "
                          f"`covertype run --local --image {name}=path/to/program.py`")


def image_name(image_uri: str) -> str:
    """An image reference without its digest (`@sha256:...`) and tag (`:latest`)."""
    name = image_uri.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[:len(name) - len(last)] + last.split(":", 1)[0]


@dataclass(frozen=True)
class JobTask:
    """What a job runs, in API-neutral terms; made by an API surface from its request.

    Attributes:
        image: the container image URI (`program_for_image` picks the program).
        args: arguments after the program, for every process.
        last_args: arguments after a trial's flags, which they must win over (fire keeps a
            flag's last value): ml v1's `--job-dir`.
        env: environment added for every process.
        output_dir: created first when it is a local path ("" for none).
        tuning: the search, or None for a job that runs its program once.
        seed_key: what the tuning seed derives from; it leaves out run-specific fields (ids,
            output folders), so the same inputs propose the same trials.
        trial_env: extra environment of one trial, from its id.
        replica: how failure messages name the single process of a plain job.
        max_failed_name: how failure messages name the failed-trials limit.
    """

    image: str
    args: tuple[str, ...] = ()
    last_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    output_dir: str = ""
    tuning: TuningSpec | None = None
    seed_key: str = ""
    trial_env: Callable[[str], dict[str, str]] | None = None
    replica: str = "master"
    max_failed_name: str = "maxFailedTrials"


def save(folder: Path, record: dict) -> None:
    """Write a job's record atomically."""
    write_atomic(folder / "job.json", json.dumps(record, indent=1))


class _Stop(Exception):
    """The run must end now with this state, message and google.rpc code."""

    def __init__(self, state: str, message: str, code: int) -> None:
        super().__init__(message)
        self.state = state
        self.code = code


class _Process:
    """One process of a job (the single replica of a plain job, or a tuning trial)."""

    def __init__(self, program: Sequence[str], arguments: list[str], env: dict[str, str],
                 log: Path, suggestion: Suggestion | None = None,
                 executor: WarmExecutor | None = None,
                 stop: threading.Event | None = None) -> None:
        self.log = log
        self.suggestion = suggestion
        self.metric: tuple[float, int] | None = None  # the trial's (value, step), once read
        self.started = time.monotonic()
        self.popen: subprocess.Popen | ForkedProcess | None = None
        command = [*program, *arguments]
        with open(log, "wb") as stream:
            warm = executor.prepare(command, env, stop) if executor else None
            if stop is not None and stop.is_set():  # the service stopped while it waited
                raise _Stop("FAILED", INTERRUPTED, ABORTED)
            if warm:
                self.popen = warm.start(os.getcwd(), session=True, output=stream.fileno())
            if self.popen is None:
                self.popen = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env,
                                              start_new_session=True,
                                              preexec_fn=die_with_parent)

    @property
    def trial_id(self) -> str:
        return self.log.stem.removeprefix("trial-")

    def kill(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after 2 s."""
        for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(grace)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if self.popen.poll() is not None:
                    return

    def tail(self) -> str:
        """The last lines of the log."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-TAIL_LINES:])[-4000:]


class JobRun:
    """Runs one job in a background thread, persisting the record after every change.

    Args:
        engine: the TrainingEngine (its closing flag, zygotes, events).
        folder: the job's folder.
        record: the job's record, changed in place and saved.
        task: what to run.
    """

    def __init__(self, engine: Any, folder: Path, record: dict, task: JobTask) -> None:
        self.engine = engine
        self.folder = folder
        self.record = record
        self.task = task
        self.program = program_for_image(task.image, engine.images)
        self.processes: list[_Process] = []
        self.seconds = 0.0

    def run(self) -> None:
        """The job's life: QUEUED -> PREPARING -> RUNNING -> SUCCEEDED/FAILED/CANCELLED."""
        state, error = "SUCCEEDED", None
        try:
            self._set_state("PREPARING")
            entry = Path(self.program[-1])
            if entry.suffix == ".py" and not entry.exists():
                raise _Stop("FAILED", f"the trainer entrypoint {entry} does not exist", INTERNAL)
            output = self.task.output_dir
            if output and "://" not in output:
                Path(output).mkdir(parents=True, exist_ok=True)
            self.record["startTime"] = now()
            self._set_state("RUNNING")
            if self.task.tuning:
                self._tune(self.task.tuning)
            else:
                self._train_once()
        except _Stop as stop:
            state, error = stop.state, {"code": stop.code, "message": str(stop)}
        except Exception as crash:  # a bug or an OS error must still end the job
            logger.exception("job %s crashed", self.record["id"])
            state, error = "FAILED", {"code": INTERNAL, "message": "internal error of the "
                                      f"local training service: {crash}"}
        finally:
            for process in self.processes:
                process.kill()
                self.seconds += time.monotonic() - process.started
                self._finish_trial(process, "CANCELLED", error["message"] if error else "")
            if error:
                self.record["error"] = error
            self.record["endTime"] = now()
            self._set_state(state)
            self.engine.finished(self.folder)

    def _set_state(self, state: str) -> None:
        self.record["state"] = state
        self._save()
        failed = state == "FAILED" and "error" in self.record
        self.engine.emit(self.record["id"], "job_state", state=state,
                         **({"error": self.record["error"]["message"]} if failed else {}))

    def _save(self) -> None:
        self.record["updateTime"] = now()
        save(self.folder, self.record)

    def _check_stop(self) -> None:
        if self.engine.closing.is_set():
            raise _Stop("FAILED", INTERRUPTED, ABORTED)
        cancel = self.folder / "cancel"
        if cancel.exists():
            self._set_state("CANCELLING")
            raise _Stop("CANCELLED", cancel.read_text() or "cancelled", CANCELLED)

    def _start(self, name: str, env: dict[str, str], flags: Sequence[str] = (),
               suggestion: Suggestion | None = None) -> _Process:
        env = {**self.engine.process_environment(), **self.task.env, **env}
        process = _Process(self.program, [*self.task.args, *flags, *self.task.last_args], env,
                           self.folder / f"{name}.log", suggestion, self.engine.executor,
                           self.engine.closing)
        self.processes.append(process)
        return process

    def _wait_any(self) -> list[_Process]:
        """Sleep until a process ends (or a stop is asked); return the ended ones."""
        while True:
            self._check_stop()
            ended = [process for process in self.processes if process.popen.poll() is not None]
            if ended:
                for process in ended:
                    self.processes.remove(process)
                    self.seconds += time.monotonic() - process.started
                return ended
            time.sleep(POLL_SECONDS)

    def _train_once(self) -> None:
        metric_file = self.folder / "master.metrics"  # keeps a stray hypertune call local
        process = self._start("master", {"CLOUD_ML_HP_METRIC_FILE": str(metric_file)})
        self._wait_any()
        self.record["hours"] = self._hours()
        code = process.popen.returncode
        self.record["trialDetails"]["master"] = {"logFile": str(process.log), "exitCode": code,
                                                 "process": started_as(process.popen)}
        if code != 0:
            raise _Stop("FAILED", f"The replica {self.task.replica} exited with a non-zero "
                                  f"status of {code}. Last log lines: "
                                  f"{_log_summary(process.tail())}", PROGRAM_FAILED)

    def _tune(self, spec: TuningSpec) -> None:
        tuner = Tuner(spec, seed_for(self.task.seed_key))
        started = failed = told = 0
        last_error = ""
        finished: dict[int, tuple[Suggestion, float | None]] = {}
        while True:
            while len(self.processes) < spec.max_parallel_trials:
                # Trial k is proposed from exactly trials 1..k-parallel, told in order, so the
                # proposals do not depend on which parallel trial happened to end first.
                while told < started + 1 - spec.max_parallel_trials and told in finished:
                    tuner.tell(*finished.pop(told))
                    told += 1
                if told < started + 1 - spec.max_parallel_trials:
                    break
                suggestion = tuner.ask()
                if suggestion is None:
                    break
                started += 1
                self._start_trial(started, suggestion)
            if not self.processes:
                break
            for process in self._wait_any():
                error = self._trial_result(process, spec.metric_tag)
                self._finish_trial(process, "FAILED" if error else "SUCCEEDED", error)
                value = process.metric[0] if process.metric else None
                finished[process.suggestion.number] = (process.suggestion, value)
                if error:
                    failed += 1
                    last_error = f"trial {process.trial_id}: {error}"
            if spec.max_failed_trials and failed >= spec.max_failed_trials:
                raise _Stop("FAILED", f"{failed} trials failed, reaching "
                                      f"{self.task.max_failed_name}={spec.max_failed_trials}; "
                                      f"last {last_error}", PROGRAM_FAILED)
        if failed == started:
            raise _Stop("FAILED", f"all {started} trials failed; last {last_error}",
                        PROGRAM_FAILED)

    def _start_trial(self, number: int, suggestion: Suggestion) -> None:
        trial_id = str(number)
        env = {"CLOUD_ML_TRIAL_ID": trial_id,
               "CLOUD_ML_HP_METRIC_FILE": str(self.folder / f"trial-{number}.metrics"),
               **(self.task.trial_env(trial_id) if self.task.trial_env else {})}
        self._start(f"trial-{number}", env, suggestion.flags(), suggestion)
        self.record["trials"].append({"id": trial_id, "values": dict(suggestion.values),
                                      "state": "RUNNING", "startTime": now()})
        self._save()
        self.engine.emit(self.record["id"], "trial_started", trialId=trial_id,
                         hyperparameters=suggestion.as_strings())

    def _trial_result(self, process: _Process, tag: str) -> str:
        """"" for a good trial (its metric read), else why it failed."""
        code = process.popen.returncode
        if code != 0:
            return f"exited with status {code}: {_log_summary(process.tail())}"
        process.metric = final_metric(self.folder / f"{process.log.stem}.metrics", tag)
        if process.metric is None:
            return (f"reported no finite {tag!r} metric (cloudml-hypertune writes it to "
                    "CLOUD_ML_HP_METRIC_FILE)")
        return ""

    def _finish_trial(self, process: _Process, state: str, error: str) -> None:
        if process.suggestion is None:  # the single process of a plain job
            return
        trial_id = process.trial_id
        trial = next(t for t in self.record["trials"] if t["id"] == trial_id)
        trial.update(state=state, endTime=now())
        if state == "SUCCEEDED" and process.metric:
            trial["metric"] = {"value": process.metric[0], "step": process.metric[1]}
        details = {"logFile": str(process.log), "exitCode": process.popen.returncode,
                   "process": started_as(process.popen)}
        if error:
            details.update(error=error, logTail=process.tail())
        self.record["trialDetails"][trial_id] = details
        self.record["hours"] = self._hours()
        self._save()
        value = trial.get("metric", {}).get("value")
        self.engine.emit(self.record["id"], "trial_finished", trialId=trial_id, state=state,
                         **({"objectiveValue": value} if value is not None else {}),
                         **({"error": error} if error else {}))

    def _hours(self) -> float:
        """Process hours (wall clock) of the job's programs so far."""
        return round(self.seconds / 3600, 6)


def _log_summary(text: str, limit: int = 600) -> str:
    """The last three non-blank lines of a log, joined on one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:] or "(no output)"
