"""Local AI Platform Training: ml v1 training jobs run as local processes, tuning included.

Each job lives in `jobs_dir(home)/<jobId>/`: `job.json` (rewritten atomically on every change:
`{"project", "owner", "job": <the ml v1 Job>, "trialDetails": {trialId: {...}}}`), one log per
process (`master.log`, `trial-<n>.log`), per-trial metric files (`trial-<n>.metrics`, the
CLOUD_ML_HP_METRIC_FILE of that trial) and `events.jsonl` (one line per job state change and
trial start/end; the same lines go to this module's logger and to an optional callback).
`trialDetails` is the local-only part of the record: log file, exit code, and for a FAILED or
CANCELLED trial its reason and log tail; the API's Job carries only ml v1 fields.

Any `masterConfig.imageUri` runs the trainer image's entrypoint from this checkout
(`python -u trainer_image/train.py`); worker/parameter-server replicas are not started.
Such a `python -u <script.py>` entrypoint is forked from a preloaded trainer zygote
(pipeline/local/trainer_zygote.py) to skip ~2 s of imports per trial; if the zygote cannot
start, or COVERTYPE_TRAINER_COLD=1, each process starts a fresh interpreter instead.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import discovery
from pipeline.atomic import write_atomic
from pipeline.hypertune import HypertuneSpecError, TuningSpec, parse_spec
from pipeline.local.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pipeline.local.home import jobs_dir, storage_root
from pipeline.local.owner import current_owner, owner_alive
from pipeline.local.storage import resolve_in_storage
from pipeline.local.trainer_zygote import ForkedChild, TrainerZygote
from pipeline.local.tuning import (
    Suggestion,
    Tuner,
    best_first,
    check_trial_limits,
    final_metric,
    seed_for,
)
from pipeline.trainer import TRAIN_PY

TRAINER_ENTRYPOINT = (sys.executable, "-u", str(TRAIN_PY))
JOB_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
INTERRUPTED = "interrupted: the local training service that ran this job stopped; submit it again"
POLL_SECONDS = 0.05
COLD_ENV = "COVERTYPE_TRAINER_COLD"
TAIL_LINES = 20
JOB_DIR_FLAGS = ("--job-dir", "--job_dir")  # the trainer's output folder: only from jobDir
logger = logging.getLogger(__name__)
_LIVE_FOLDERS: set[str] = set()  # jobs being run by a service of this process


def now() -> str:
    """RFC 3339 UTC timestamp, as the ml v1 API prints them."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class TrainingService:
    """projects.jobs create/get/list/cancel over a local home folder.

    Args:
        home: The local home folder; jobs go to `jobs_dir(home)`.
        entrypoint: The command a trainer image runs (default: this checkout's trainer).
        on_event: Called with each event dict (job state change, trial start/end).
    """

    def __init__(self, home: Path, entrypoint: Sequence[str] = TRAINER_ENTRYPOINT,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.root = jobs_dir(home)
        self.root.mkdir(parents=True, exist_ok=True)
        self.entrypoint = tuple(entrypoint)
        self.on_event = on_event
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._zygote: TrainerZygote | None = None
        self._zygote_lock = threading.Lock()
        self._zygote_failed = False
        self._recover()

    def create_job(self, project: str, body: Any) -> dict:
        """Validate a Job, record it QUEUED and start running it; returns the Job.

        Raises:
            InvalidArgument: a bad Job (nothing is written); AlreadyExists: the jobId is taken.
        """
        job_id, training_input, spec = _validate(body, storage_root(self.root.parent))
        folder = self.root / job_id
        with self._lock:
            try:
                folder.mkdir()
            except FileExistsError:
                raise AlreadyExists(
                    f"job {job_id!r} already exists; choose another jobId") from None
            job = {"jobId": job_id, "trainingInput": training_input, "createTime": now(),
                   "state": "QUEUED"}
            if isinstance(body.get("labels"), dict):
                job["labels"] = body["labels"]
            record = {"project": project, "owner": current_owner(), "job": job, "trialDetails": {}}
            _write_json(folder / "job.json", record)
            _LIVE_FOLDERS.add(str(folder))
            run = _JobRun(self, folder, record, spec)
            thread = threading.Thread(target=run.run, name=f"training-{job_id}", daemon=True)
            self._threads[job_id] = thread
            response = dict(job)  # the runner mutates `job` from now on
        thread.start()
        return response

    def get_job(self, project: str, job_id: str) -> dict:
        """The Job as stored (NotFound if it is not in this project)."""
        return self._record(project, job_id)["job"]

    def list_jobs(self, project: str, page_size: int = 0, page_token: str = "") -> dict:
        """The project's jobs, newest first, as a ListJobsResponse."""
        records = [_read_json(path) for path in self.root.glob("*/job.json")]
        jobs = sorted((r["job"] for r in records if r["project"] == project),
                      key=lambda job: job["createTime"], reverse=True)
        if page_token and not page_token.isdigit():
            raise InvalidArgument(f"pageToken {page_token!r} is not one this service returned")
        start = int(page_token or 0)
        end = start + page_size if page_size > 0 else len(jobs)
        response: dict[str, Any] = {"jobs": jobs[start:end]}
        if end < len(jobs):
            response["nextPageToken"] = str(end)
        return response

    def cancel_job(self, project: str, job_id: str) -> dict:
        """Ask the job's runner (in any process) to stop; it kills running trials within ~0.1 s.

        Raises:
            FailedPrecondition: the job has already ended.
        """
        job = self._record(project, job_id)["job"]
        if job["state"] in TERMINAL_STATES:
            raise FailedPrecondition(f"job {job_id!r} is already {job['state']}; nothing to cancel")
        (self.root / job_id / "cancel").touch()
        return {}

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job this service runs (FAILED, interrupted) and wait for the runners."""
        self.closing.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        with self._zygote_lock:
            if self._zygote:
                self._zygote.close()

    def zygote(self) -> TrainerZygote | None:
        """The preloaded trainer zygote for a `python -u <script.py>` entrypoint (started on
        first use, restarted if it died), or None: run a cold interpreter per process."""
        entry = self.entrypoint
        if (os.environ.get(COLD_ENV) == "1" or len(entry) != 3
                or entry[:2] != (sys.executable, "-u") or not entry[2].endswith(".py")):
            return None
        with self._zygote_lock:
            if self._zygote_failed or self.closing.is_set():
                return None
            if self._zygote is None or not self._zygote.alive:
                try:
                    self._zygote = TrainerZygote(entry[2], _die_with_parent)
                except OSError as error:
                    logger.warning("trainer zygote unavailable, trials start cold: %s", error)
                    self._zygote_failed = True
                    return None
            return self._zygote

    def emit(self, job_id: str, event: str, **fields: Any) -> None:
        """Record an event in the job's events.jsonl, the logger and the callback."""
        entry = {"time": now(), "jobId": job_id, "event": event, **fields}
        with open(self.root / job_id / "events.jsonl", "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        logger.info("job %s: %s %s", job_id, event, details)
        if self.on_event:
            self.on_event(entry)

    def _record(self, project: str, job_id: str) -> dict:
        path = self.root / job_id / "job.json"
        if not JOB_ID.fullmatch(job_id) or not path.exists():
            raise NotFound(f"job projects/{project}/jobs/{job_id} not found")
        record = _read_json(path)
        if record["project"] != project:
            raise NotFound(f"job projects/{project}/jobs/{job_id} not found")
        return record

    def _recover(self) -> None:
        """Mark FAILED the unfinished jobs whose runner (a dead process) can no longer end them."""
        for path in self.root.glob("*/job.json"):
            record = _read_json(path)
            job = record["job"]
            if job["state"] in TERMINAL_STATES or _owner_alive(record["owner"], path.parent):
                continue
            job.update(state="FAILED", errorMessage=INTERRUPTED, endTime=now())
            for trial in job.get("trainingOutput", {}).get("trials", []):
                if trial["state"] not in TERMINAL_STATES:
                    trial.update(state="CANCELLED", endTime=job["endTime"])
            _write_json(path, record)
            logger.warning("job %s: %s", job["jobId"], INTERRUPTED)


def _validate(body: Any, storage: Path) -> tuple[str, dict, TuningSpec | None]:
    """Check a Job body; returns (jobId, trainingInput, tuning spec or None).

    The trainer writes only where `jobDir` says, which must lie in the project's own storage
    (`storage`, or the storage emulator's gs://), and a job starts at most as many trials as the
    machine takes (check_trial_limits).
    """
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a Job JSON object")
    _check_fields(body, "GoogleCloudMlV1__Job", "job")
    job_id = body.get("jobId")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise InvalidArgument(f"jobId {job_id!r} is invalid; use a letter then up to 127 "
                              "letters, digits or underscores")
    if body.get("predictionInput"):
        raise InvalidArgument("batch prediction jobs (predictionInput) are not supported "
                              "locally; submit a trainingInput job")
    training_input = body.get("trainingInput")
    if not isinstance(training_input, dict):
        raise InvalidArgument("trainingInput is missing; a training job needs a trainingInput")
    master = training_input.get("masterConfig") or {}
    if not isinstance(master, dict) or not master.get("imageUri"):
        if training_input.get("pythonModule"):
            raise InvalidArgument("trainingInput.pythonModule (package) jobs are not supported "
                                  "locally; set trainingInput.masterConfig.imageUri instead")
        raise InvalidArgument("trainingInput.masterConfig.imageUri is required; set it to the "
                              "trainer image")
    args = training_input.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise InvalidArgument("trainingInput.args must be a list of strings")
    job_dir = training_input.get("jobDir", "")
    if not isinstance(job_dir, str):
        raise InvalidArgument("trainingInput.jobDir must be a string path or gs:// URI")
    if not job_dir:
        raise InvalidArgument("trainingInput.jobDir is required by the local training service, "
                              f"as the trainer writes there; set it to a folder under {storage}")
    resolve_in_storage(job_dir, "trainingInput.jobDir", storage)
    # The trainer gets --job-dir=<jobDir> last, which wins over any earlier spelling (fire
    # keeps the last value) unless a "-" or "--" separator cuts the command line before it.
    if bad := [arg for arg in args if arg in ("-", "--") or arg.split("=", 1)[0] in JOB_DIR_FLAGS]:
        raise InvalidArgument(f"trainingInput.args holds {bad[0]!r}; the trainer's output folder "
                              "comes from trainingInput.jobDir only: remove it from args")
    hyperparameters = training_input.get("hyperparameters")
    try:
        spec = parse_spec(hyperparameters) if hyperparameters is not None else None
    except HypertuneSpecError as error:
        raise InvalidArgument(str(error)) from None
    if spec:
        check_trial_limits(spec)
    return job_id, training_input, spec


def _schemas() -> dict:
    return discovery.document("ml", "v1")["schemas"]


def _check_fields(value: dict, schema: str, where: str) -> None:
    """Refuse field names the ml v1 schema lacks, as the real API does (nested too)."""
    properties = _schemas()[schema]["properties"]
    for name, item in value.items():
        if name not in properties:
            raise InvalidArgument(f"unknown field {name!r} in {where}; use the ml v1 field "
                                  f"names of {schema.rsplit('__', 1)[-1]}")
        prop = properties[name]
        if "$ref" in prop and isinstance(item, dict):
            _check_fields(item, prop["$ref"], f"{where}.{name}")
        if "$ref" in prop.get("items", {}) and isinstance(item, list):
            for index, entry in enumerate(item):
                if isinstance(entry, dict):
                    _check_fields(entry, prop["items"]["$ref"], f"{where}.{name}[{index}]")


class _Stop(Exception):
    """The run must end now with this state and message."""

    def __init__(self, state: str, message: str = "") -> None:
        super().__init__(message)
        self.state = state


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, SIGKILL it when the service's process dies, so a
    killed runner leaves no orphan trials (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class _Process:
    """One trainer process (the master of a plain job, or a tuning trial)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path,
                 suggestion: Suggestion | None = None, zygote: TrainerZygote | None = None) -> None:
        self.log = log
        self.suggestion = suggestion
        self.metric: dict | None = None  # the trial's finalMetric, once read
        self.started = time.monotonic()
        self.popen: subprocess.Popen | ForkedChild
        if zygote:
            log.write_bytes(b"")
            try:
                self.popen = zygote.spawn(command[3:], env, str(log))  # after python -u script
                return
            except OSError as error:
                logger.warning("trainer zygote failed, starting %s cold: %s", log.stem, error)
        with open(log, "wb") as stream:
            self.popen = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True, preexec_fn=_die_with_parent)

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


class _JobRun:
    """Runs one job in a background thread, persisting the record after every change."""

    def __init__(self, service: TrainingService, folder: Path, record: dict,
                 spec: TuningSpec | None) -> None:
        self.service = service
        self.folder = folder
        self.record = record
        self.job = record["job"]
        self.spec = spec
        self.processes: list[_Process] = []
        self.seconds = 0.0

    def run(self) -> None:
        """The job's life: QUEUED -> PREPARING -> RUNNING -> SUCCEEDED/FAILED/CANCELLED."""
        state, message = "SUCCEEDED", ""
        try:
            self._set_state("PREPARING")
            entry = Path(self.service.entrypoint[-1])
            if entry.suffix == ".py" and not entry.exists():
                raise _Stop("FAILED", f"the trainer entrypoint {entry} does not exist")
            job_dir = self.job["trainingInput"].get("jobDir", "")
            if job_dir and "://" not in job_dir:
                Path(job_dir).mkdir(parents=True, exist_ok=True)
            self.job["startTime"] = now()
            self._set_state("RUNNING")
            if self.spec:
                self._tune(self.spec)
            else:
                self._train_once()
        except _Stop as stop:
            state, message = stop.state, str(stop)
        except Exception as error:  # a bug or an OS error must still end the job
            logger.exception("job %s crashed", self.job["jobId"])
            state, message = "FAILED", f"internal error of the local training service: {error}"
        finally:
            for process in self.processes:
                process.kill()
                self.seconds += time.monotonic() - process.started
                self._finish_trial(process, "CANCELLED", None, message)
            if message:
                self.job["errorMessage"] = message
            self.job["endTime"] = now()
            self._set_state(state)
            _LIVE_FOLDERS.discard(str(self.folder))

    def _set_state(self, state: str) -> None:
        self.job["state"] = state
        self._save()
        self.service.emit(self.job["jobId"], "job_state", state=state,
                          **({"error": self.job["errorMessage"]} if state == "FAILED" else {}))

    def _save(self) -> None:
        _write_json(self.folder / "job.json", self.record)

    def _check_stop(self) -> None:
        if self.service.closing.is_set():
            raise _Stop("FAILED", INTERRUPTED)
        if (self.folder / "cancel").exists():
            self._set_state("CANCELLING")
            raise _Stop("CANCELLED", "cancelled by a projects.jobs.cancel request")

    def _start(self, name: str, env: dict[str, str], flags: Sequence[str] = (),
               suggestion: Suggestion | None = None) -> _Process:
        training_input = self.job["trainingInput"]
        # --job-dir goes last: fire keeps a flag's last value, so neither args nor a trial's
        # flags can move the trainer's output out of the validated jobDir (see _validate).
        command = [*self.service.entrypoint, *training_input.get("args", []), *flags,
                   f"--job-dir={training_input['jobDir']}"]
        env = {**os.environ, "CLOUD_ML_JOB_ID": self.job["jobId"], **env}
        process = _Process(command, env, self.folder / f"{name}.log", suggestion,
                           self.service.zygote())
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
        self.job["trainingOutput"] = {"consumedMLUnits": self._ml_units()}
        code = process.popen.returncode
        self.record["trialDetails"]["master"] = {"logFile": str(process.log), "exitCode": code}
        if code != 0:
            raise _Stop("FAILED", f"The replica master exited with a non-zero status of {code}. "
                                  f"Last log lines: {_log_summary(process.tail())}")

    def _tune(self, spec: TuningSpec) -> None:
        # Seeded by what the job does (not its id or output folder): the same inputs propose
        # the same trials, so a run resumed after a crash, which submits a new job id, and a
        # repeated run give the same model.
        task = {key: value for key, value in self.job["trainingInput"].items() if key != "jobDir"}
        tuner = Tuner(spec, seed_for(json.dumps(task, sort_keys=True)))
        output = {"completedTrialCount": "0", "consumedMLUnits": 0.0, "trials": [],
                  "isHyperparameterTuningJob": True, "hyperparameterMetricTag": spec.metric_tag}
        self.job["trainingOutput"] = output
        started = failed = told = 0
        last_error = ""
        finished: dict[int, tuple[Suggestion, float | None]] = {}
        while True:
            while len(self.processes) < spec.max_parallel_trials:
                # Trial k is proposed from exactly trials 1..k-maxParallelTrials, told in order,
                # so the proposals do not depend on which parallel trial happened to end first.
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
                objective, error = self._trial_result(process, spec.metric_tag)
                self._finish_trial(process, "FAILED" if error else "SUCCEEDED", objective, error)
                finished[process.suggestion.number] = (process.suggestion, objective)
                if error:
                    failed += 1
                    last_error = f"trial {_trial_id(process)}: {error}"
            if spec.max_failed_trials and failed >= spec.max_failed_trials:
                raise _Stop("FAILED", f"{failed} trials failed, reaching maxFailedTrials="
                                      f"{spec.max_failed_trials}; last {last_error}")
        if failed == started:
            raise _Stop("FAILED", f"all {started} trials failed; last {last_error}")

    def _start_trial(self, number: int, suggestion: Suggestion) -> None:
        env = {"CLOUD_ML_TRIAL_ID": str(number),
               "CLOUD_ML_HP_METRIC_FILE": str(self.folder / f"trial-{number}.metrics")}
        self._start(f"trial-{number}", env, suggestion.flags(), suggestion)
        trial = {"trialId": str(number), "hyperparameters": suggestion.as_strings(),
                 "startTime": now(), "state": "RUNNING", "isTrialStoppedEarly": False}
        self.job["trainingOutput"]["trials"].append(trial)
        self._save()
        self.service.emit(self.job["jobId"], "trial_started", trialId=str(number),
                          hyperparameters=trial["hyperparameters"])

    def _trial_result(self, process: _Process, tag: str) -> tuple[float | None, str]:
        """(objective, "") for a good trial, (None, reason) for a failed one."""
        code = process.popen.returncode
        if code != 0:
            return None, f"exited with status {code}: {_log_summary(process.tail())}"
        metric = final_metric(self.folder / f"{process.log.stem}.metrics", tag)
        if metric is None:
            return None, (f"reported no finite {tag!r} metric (cloudml-hypertune writes it to "
                          "CLOUD_ML_HP_METRIC_FILE)")
        process.metric = metric
        return metric["objectiveValue"], ""

    def _finish_trial(self, process: _Process, state: str, objective: float | None,
                      error: str) -> None:
        if process.suggestion is None or self.spec is None:  # the master of a plain job
            return
        trial_id = _trial_id(process)
        output = self.job["trainingOutput"]
        trial = next(t for t in output["trials"] if t["trialId"] == trial_id)
        trial.update(state=state, endTime=now())
        if objective is not None:
            trial["finalMetric"] = process.metric
        details = {"logFile": str(process.log), "exitCode": process.popen.returncode}
        if error:
            details.update(error=error, logTail=process.tail())
        self.record["trialDetails"][trial_id] = details
        succeeded = [t for t in output["trials"] if t["state"] == "SUCCEEDED"]
        output["completedTrialCount"] = str(len(succeeded))
        output["consumedMLUnits"] = self._ml_units()
        output["trials"] = best_first(output["trials"], self.spec.goal)
        self._save()
        self.service.emit(self.job["jobId"], "trial_finished", trialId=trial_id, state=state,
                          **({"objectiveValue": objective} if objective is not None else {}),
                          **({"error": error} if error else {}))

    def _ml_units(self) -> float:
        """Local stand-in for ML units: process hours (wall clock) of the job's trainers."""
        return round(self.seconds / 3600, 6)


def _trial_id(process: _Process) -> str:
    return process.log.stem.removeprefix("trial-")


def _log_summary(text: str, limit: int = 600) -> str:
    """The last three non-blank lines of a log, joined on one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:] or "(no output)"


def _owner_alive(owner: dict, folder: Path) -> bool:
    """Whether the process that runs a job is still running it."""
    if owner.get("pid") == os.getpid():
        return str(folder) in _LIVE_FOLDERS
    return owner_alive(owner)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1))
