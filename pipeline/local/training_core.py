"""The local training core: jobs and tuning trials as local processes, behind any API surface.

API-neutral: the ml v1 surface (`training.py`, projects.jobs) and the aiplatform v1 surface
(`vertex_training.py`, customJobs and hyperparameterTuningJobs) validate their own request,
describe it as a `JobTask`, submit it here and render their own resource from the record.
The engine owns the job's life (`training_run.py`): states, processes forked from preloaded
zygotes (the warm executor, pipeline/local/warm.py), trials proposed by the tuner, metric
reading, cancel, and recovery of jobs whose owning process died.

Each job lives in `jobs_dir(home)/<id>/`: `job.json` (rewritten atomically on every change),
one log per process (`master.log`, `trial-<n>.log`), per-trial metric files
(`trial-<n>.metrics`, the CLOUD_ML_HP_METRIC_FILE of that trial) and `events.jsonl` (one line
per job state change and trial start/end; the same lines go to this module's logger and to an
optional callback). The record (`job.json`):

    {"api", "kind", "project", "location", "id", "owner", "request": <the API body>,
     "state": QUEUED|PREPARING|RUNNING|SUCCEEDED|FAILED|CANCELLING|CANCELLED,
     "createTime", "startTime", "endTime", "updateTime", "error": {"code", "message"},
     "hours": process hours, "outputDir", "tuning": bool,
     "trials": [{"id", "values", "state": RUNNING|SUCCEEDED|FAILED|CANCELLED, "startTime",
                 "endTime", "metric": {"value", "step"}}],
     "trialDetails": {trialId or "master": {"logFile", "exitCode", "process", "error",
                                            "logTail"}}}

`error.code` is a google.rpc.Code (1 cancelled, 3 the program failed, 10 interrupted, 13 an
internal error). `trialDetails` is local-only: log file, exit code, how the process started
(`warm.started_as`), and for a failed or cancelled trial its reason and log tail.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomic
from pipeline.local.errors import AlreadyExists, FailedPrecondition, NotFound
from pipeline.local.home import jobs_dir, storage_root
from pipeline.local.owner import current_owner, owner_alive
from pipeline.local.storage import resolve_in_storage
from pipeline.local.training_run import (
    ABORTED,
    INTERRUPTED,
    PROGRAM_FAILED,
    TERMINAL_STATES,
    JobRun,
    JobTask,
    now,
    program_for_image,
    save,
)
from pipeline.local.warm import WarmExecutor

JOB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,127}")

logger = logging.getLogger(__name__)
_LIVE_FOLDERS: set[str] = set()  # jobs being run by an engine of this process


def check_output_dir(uri: str, field: str, storage: Path) -> str:
    """The folder a job writes to (ml v1 jobDir, Vertex baseOutputDirectory.outputUriPrefix):
    one check for both API surfaces; "" when unset.

    The trainer writes only there, so it must lie in the project's own storage (`storage`, or
    the storage emulator's gs://, see resolve_in_storage); nothing is created before.

    Raises:
        InvalidArgument: a URI the trainer cannot or may not write to.
    """
    if uri:
        resolve_in_storage(uri, field, storage)
    return uri


class TrainingEngine:
    """Runs submitted jobs in background threads; one instance per server app.

    Args:
        home: The local home folder; jobs go to `jobs_dir(home)`.
        on_event: Called with each event dict (job state change, trial start/end).
        server_url: the server this engine runs in; its trials then see it as a pipeline step
            does (pipeline.local.step_env), so gs:// paths reach the local storage.
        executor: forks the jobs' processes from preloaded zygotes; the local runner shares
            its own (closed by the runner). Default: one of the engine's, closed with it.
        images: training image -> the local program it runs (`--image`, see
            `program_for_image`).
    """

    def __init__(self, home: Path, on_event: Callable[[dict], None] | None = None,
                 server_url: str | None = None, executor: WarmExecutor | None = None,
                 images: Mapping[str, str] | None = None) -> None:
        self.images = dict(images or {})
        self.root = jobs_dir(home)
        self.server_url = server_url
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage = storage_root(home)  # where jobs may write (check_output_dir)
        self.on_event = on_event
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self.executor = executor or WarmExecutor()
        self._own_executor = executor is None
        self._recover()

    def submit(self, key: str, identity: dict[str, str], request: dict, task: JobTask) -> dict:
        """Record a job QUEUED under `key` and start running it; returns the record.

        Args:
            key: the job's id (its folder name).
            identity: api, kind, project and location of the surface that owns it.
            request: the validated API body, kept for rendering.
            task: what to run.

        Raises:
            AlreadyExists: `key` is taken; InvalidArgument: the image has no local program
                (nothing is written).
        """
        program_for_image(task.image, self.images)
        folder = self.root / key
        with self._lock:
            try:
                folder.mkdir()
            except FileExistsError:
                raise AlreadyExists(f"job {key!r} already exists; choose another jobId") from None
            created = now()
            record = {**identity, "id": key, "owner": current_owner(), "request": request,
                      "state": "QUEUED", "createTime": created, "updateTime": created,
                      "outputDir": task.output_dir, "tuning": task.tuning is not None,
                      "trials": [], "trialDetails": {}}
            save(folder, record)
            _LIVE_FOLDERS.add(str(folder))
            run = JobRun(self, folder, record, task)
            thread = threading.Thread(target=run.run, name=f"training-{key}", daemon=True)
            self._threads[key] = thread
            response = json.loads(json.dumps(record))  # the runner changes `record` from now on
        thread.start()
        return response

    def record(self, key: str) -> dict:
        """The stored record of job `key`.

        Raises:
            NotFound: no such job (the message is the surface's to write; this one is plain).
        """
        return read_record(self.root, key)

    def records(self) -> list[dict]:
        """Every job's record, in no particular order."""
        return read_records(self.root)

    def cancel(self, key: str, reason: str) -> None:
        """Ask the job's runner (in any process) to stop; it kills running trials within ~0.1 s.

        Raises:
            NotFound: no such job; FailedPrecondition: the job has already ended.
        """
        state = self.record(key)["state"]
        if state in TERMINAL_STATES:
            raise FailedPrecondition(f"job {key!r} is already {state}; nothing to cancel")
        write_atomic(self.root / key / "cancel", reason)

    def process_environment(self) -> dict[str, str]:
        """The environment a trainer process starts from: this process's, plus what a step's
        program sees of the local server (emulator switches, storage) when one is known."""
        if not self.server_url:
            return dict(os.environ)
        from pipeline.local.step_env import step_environment

        return step_environment(os.environ, self.server_url, {})

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job this engine runs (FAILED, interrupted) and wait for the runners."""
        self.closing.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        if self._own_executor:
            self.executor.close()

    def emit(self, key: str, event: str, **fields: Any) -> None:
        """Record an event in the job's events.jsonl, the logger and the callback."""
        entry = {"time": now(), "jobId": key, "event": event, **fields}
        with open(self.root / key / "events.jsonl", "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")
        details = " ".join(f"{name}={value}" for name, value in fields.items())
        logger.info("job %s: %s %s", key, event, details)
        if self.on_event:
            self.on_event(entry)

    def finished(self, folder: Path) -> None:
        """Called by a runner when its job has ended."""
        _LIVE_FOLDERS.discard(str(folder))

    def _recover(self) -> None:
        """Mark FAILED the unfinished jobs whose runner (a dead process) can no longer end them."""
        for path in self.root.glob("*/job.json"):
            record = _read_json(path)
            if record["state"] in TERMINAL_STATES or _owner_alive(record["owner"], path.parent):
                continue
            ended = now()
            record.update(state="FAILED", endTime=ended, updateTime=ended,
                          error={"code": ABORTED, "message": INTERRUPTED})
            for trial in record["trials"]:
                if trial["state"] not in TERMINAL_STATES:
                    trial.update(state="CANCELLED", endTime=ended)
            save(path.parent, record)
            logger.warning("job %s: %s", record["id"], INTERRUPTED)


def read_record(root: Path, key: str) -> dict:
    """The stored record of job `key` under the jobs folder `root` (no engine needed: the CLI
    and the run browser read jobs this way).

    Raises:
        NotFound: no such job.
    """
    path = root / key / "job.json"
    if not JOB_KEY.fullmatch(key) or not path.exists():
        raise NotFound(f"job {key} not found")
    return _read_json(path)


def read_records(root: Path) -> list[dict]:
    """Every job's record under the jobs folder `root`, in no particular order."""
    found = []
    for path in root.glob("*/job.json"):
        try:
            found.append(_read_json(path))
        except (OSError, ValueError):  # a job folder being created or removed
            continue
    return found


def _owner_alive(owner: dict, folder: Path) -> bool:
    """Whether the process that runs a job is still running it."""
    if owner.get("pid") == os.getpid():
        return str(folder) in _LIVE_FOLDERS
    return owner_alive(owner)


def _read_json(path: Path) -> dict:
    return _upgrade(json.loads(path.read_text(encoding="utf-8")))


def _upgrade(record: dict) -> dict:
    """A record of the layout before the core served two APIs (`{"project", "owner",
    "job": <ml v1 Job>, "trialDetails"}`), in today's layout, so older local homes still show
    their jobs."""
    if "api" in record:
        return record
    job = record["job"]
    training_input, output = job.get("trainingInput", {}), job.get("trainingOutput", {})
    upgraded = {"api": "ml.v1", "kind": "jobs", "project": record["project"], "location": "",
                "id": job["jobId"], "owner": record["owner"],
                "request": {key: job[key] for key in ("jobId", "trainingInput", "labels")
                            if key in job},
                "state": job["state"], "createTime": job["createTime"],
                "updateTime": job.get("endTime") or job["createTime"],
                "outputDir": training_input.get("jobDir", ""),
                "tuning": "hyperparameters" in training_input, "trials": [],
                "trialDetails": record.get("trialDetails", {})}
    upgraded.update({key: job[key] for key in ("startTime", "endTime") if key in job})
    if job.get("errorMessage"):
        upgraded["error"] = {"code": PROGRAM_FAILED, "message": job["errorMessage"]}
    if "consumedMLUnits" in output:
        upgraded["hours"] = output["consumedMLUnits"]
    for trial in output.get("trials", []):
        upgraded["trials"].append({"id": trial["trialId"], "state": trial["state"],
                                   "values": trial.get("hyperparameters", {}),
                                   **{key: trial[key] for key in ("startTime", "endTime")
                                      if key in trial}})
        if "finalMetric" in trial:
            upgraded["trials"][-1]["metric"] = {
                "value": trial["finalMetric"]["objectiveValue"],
                "step": int(trial["finalMetric"].get("trainingStep", 0))}
    return upgraded
