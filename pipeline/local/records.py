"""Run records: one folder per run with its parameters, step states, timings, logs, outputs.

`<home>/runs/<run_id>/run.json` is rewritten atomically on every change, so a reader (the
CLI, the run browser) never sees half a record, and a killed run leaves its last state.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomic
from pipeline.local.home import runs_dir
from pipeline.local.owner import current_owner, owner_alive

RUN_FILE = "run.json"
# Step and run states follow Argo's node phases; Interrupted is a run (or step) stopped by a
# signal (Ctrl-C, SIGTERM) or whose runner process died without finishing it (kill -9, power
# loss): resume it.
PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, OMITTED, INTERRUPTED = (
    "Pending", "Running", "Succeeded", "Failed", "Skipped", "Omitted", "Interrupted")


# What a run id may be: it names a folder and a URL segment (a KFP run id is one too).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_run_id() -> str:
    """Sortable, unique: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def resume_command(run_id: str) -> str:
    """The command that continues a failed or interrupted run."""
    return f"covertype run --local --resume {run_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StepRecord:
    """One executed DAG task (container or sub-DAG)."""

    name: str
    template: str
    status: str = PENDING
    dependencies: list[str] = field(default_factory=list)
    parent: str = ""
    start: str = ""
    end: str = ""
    duration_s: float | None = None
    attempts: int = 0
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    log: str = ""
    reused: str = ""  # "cache" or "resume" when the step's outputs were reused, not recomputed
    # How its (last) process started: "forked:<library set>" from a preloaded zygote
    # (pipeline/local/warm.py), or "new" (a new interpreter or any other command).
    process: str = ""
    # sha256 of each file an output parameter names (e.g. a split CSV): a resumed run checks
    # that no other run has changed them since.
    files: dict[str, str] = field(default_factory=dict)
    component: str = ""  # what it runs, e.g. gcp/ml_engine/deploy (pipeline/local/roles.py)
    role: str = ""  # what it does: tuning, training, deploy, query, evaluation or ''


@dataclass
class RunRecord:
    """The whole run, serialised to run.json."""

    run_id: str
    pipeline: str
    package: str
    parameters: dict[str, str]
    status: str = RUNNING
    start: str = field(default_factory=_now)
    end: str = ""
    duration_s: float | None = None
    message: str = ""
    owner: dict = field(default_factory=current_owner)
    resumes: int = 0
    steps: dict[str, StepRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Read a saved record; a run whose runner died reads as Interrupted."""
        steps = {name: StepRecord(**step) for name, step in data.pop("steps", {}).items()}
        record = cls(**data, steps=steps)
        if record.status == RUNNING and not owner_alive(record.owner):
            record.status = INTERRUPTED
            record.message = (f"the runner (pid {record.owner.get('pid')}) stopped before the "
                              f"run finished; resume it: {resume_command(record.run_id)}")
            for step in record.steps.values():
                if step.status == RUNNING:
                    step.status = INTERRUPTED
        return record


class RunStore:
    """Writes and reads run records below `<home>/runs`; thread-safe for one writer process."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or runs_dir()
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def save(self, record: RunRecord) -> None:
        """Persist the record atomically (write a temp file, then rename)."""
        with self._lock:
            write_atomic(self.folder(record.run_id) / RUN_FILE,
                         json.dumps(asdict(record), indent=1))

    def add_step(self, record: RunRecord, step: StepRecord) -> StepRecord:
        """Add a step the run has just reached (a loop iteration, say), or return the one
        already recorded under its name; safe while another thread saves the record."""
        with self._lock:
            return record.steps.setdefault(step.name, step)

    def step_started(self, record: RunRecord, step: StepRecord) -> None:
        step.status, step.start, step.end, step.duration_s = RUNNING, _now(), "", None
        step.attempts += 1
        self._started[f"{record.run_id}/{step.name}"] = time.monotonic()
        self.save(record)

    def step_finished(self, record: RunRecord, step: StepRecord, status: str,
                      message: str = "") -> None:
        started = self._started.pop(f"{record.run_id}/{step.name}", None)
        step.status, step.message, step.end = status, message, _now()
        if started is not None:
            step.duration_s = round(time.monotonic() - started, 3)
        self.save(record)

    def run_finished(self, record: RunRecord, status: str, message: str = "") -> None:
        record.status, record.message, record.end = status, message, _now()
        started = datetime.fromisoformat(record.start.replace("Z", "+00:00"))
        record.duration_s = round((datetime.now(UTC) - started).total_seconds(), 3)
        self.save(record)

    def load(self, run_id: str) -> RunRecord:
        path = self.folder(run_id) / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no run {run_id!r} under {self.root}; "
                                    "list runs with `covertype runs list`")
        return RunRecord.from_dict(json.loads(path.read_text()))

    def list(self) -> list[RunRecord]:
        """All runs, newest first; unreadable folders are skipped."""
        records = []
        for path in sorted(self.root.glob(f"*/{RUN_FILE}"), reverse=True):
            try:
                records.append(RunRecord.from_dict(json.loads(path.read_text())))
            except (ValueError, TypeError):
                continue
        return records
