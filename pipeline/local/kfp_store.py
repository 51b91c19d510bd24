"""What the local KFP API server keeps: pipelines, their versions and packages, experiments, runs.

One JSON file per object under `<home>/kfp/` (`pipelines/`, `versions/` with each version's
workflow YAML beside it, `experiments/`, `runs/` with the package each run executes), written
with `write_atomic`, so a reader never sees half an object. A KFP run's id is its local run id:
the run record under `<home>/runs/<id>/` is the one `covertype run --local` writes.
Domain errors (`pipeline.local.errors`) are raised here and shaped into KFP's error JSON at the
HTTP edge.
"""
from __future__ import annotations

import json
import threading
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pipeline.atomic import write_atomic
from pipeline.local.errors import AlreadyExists, InvalidArgument, NotFound
from pipeline.local.home import local_home
from pipeline.local.package import PackageError, read_package
from pipeline.local.workflow import Workflow, WorkflowError

NAME_LIMIT = 255  # KFP's column size for pipeline, version, experiment and run names


def now() -> str:
    """RFC 3339 UTC timestamp; microseconds keep objects made in one second in order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Pipeline:
    id: str
    name: str
    description: str
    created_at: str
    default_version_id: str


@dataclass
class Version:
    id: str
    name: str
    pipeline_id: str
    description: str
    created_at: str
    parameters: list[dict[str, str]]  # [{name, value?}] as the workflow declares them


@dataclass
class Experiment:
    id: str
    name: str
    description: str
    created_at: str


@dataclass
class Run:
    """The KFP side of a run; its steps and status live in the local run record."""

    id: str
    name: str
    description: str
    created_at: str
    experiment_id: str
    parameters: list[dict[str, str]]
    pipeline_id: str = ""
    pipeline_name: str = ""
    version_id: str = ""
    version_name: str = ""
    service_account: str = ""
    server: dict = field(default_factory=dict)  # owner of the server that queued it
    terminated_at: str = ""  # when terminate was asked
    ended: dict = field(default_factory=dict)  # {status, message, at} when no run record says

    @property
    def terminated(self) -> bool:
        return bool(self.terminated_at)


Entry = TypeVar("Entry", Pipeline, Version, Experiment, Run)


class KfpStore:
    """Pipelines, versions, experiments and runs of the local KFP API, below `<home>/kfp`."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or local_home()
        self.root = self.home / "kfp"
        self._lock = threading.RLock()

    # Pipelines and versions --------------------------------------------------------------
    def create_pipeline(self, name: str, description: str, filename: str,
                        data: bytes) -> tuple[Pipeline, Version]:
        """Upload: a new pipeline whose first version has the pipeline's id and name (KFP 1.8)."""
        _check_name("pipeline", name)
        with self._lock:
            text, workflow = self.read_workflow(filename, data)
            if any(item.name == name for item in self.list(Pipeline)):
                raise AlreadyExists(f"Failed to create a new pipeline. The name {name} already "
                                    "exist. Please specify a new name.")
            created = now()
            pipeline_id = str(uuid.uuid4())
            version = Version(pipeline_id, name, pipeline_id, description, created,
                              _parameters(workflow))
            self._save_version(version, text)
            pipeline = Pipeline(pipeline_id, name, description, created, pipeline_id)
            self._save(pipeline)
        return pipeline, version

    def create_version(self, pipeline_id: str, name: str, description: str, filename: str,
                       data: bytes) -> Version:
        """upload_version: a version of an existing pipeline, which becomes its default."""
        _check_name("pipeline version", name)
        with self._lock:
            pipeline = self.get(Pipeline, pipeline_id)
            text, workflow = self.read_workflow(filename, data)
            if any(item.name == name for item in self.versions(pipeline_id)):
                raise AlreadyExists(f"Failed to create a new pipeline version. The name {name} "
                                    f"already exist in pipeline {pipeline_id}. Please specify "
                                    "a new name.")
            version = Version(str(uuid.uuid4()), name, pipeline_id, description, now(),
                              _parameters(workflow))
            self._save_version(version, text)
            pipeline.default_version_id = version.id
            self._save(pipeline)
        return version

    def versions(self, pipeline_id: str) -> list[Version]:
        """The pipeline's versions, oldest first."""
        return [item for item in self.list(Version) if item.pipeline_id == pipeline_id]

    def package(self, version_id: str) -> Path:
        """The workflow YAML of a version."""
        return self._folder(Version) / f"{version_id}.yaml"

    def delete_pipeline(self, pipeline_id: str) -> None:
        """Delete a pipeline and its versions (runs keep their own package)."""
        with self._lock:
            self.get(Pipeline, pipeline_id)
            for version in self.versions(pipeline_id):
                self._delete_version_files(version.id)
            (self._folder(Pipeline) / f"{pipeline_id}.json").unlink()

    def delete_version(self, version_id: str) -> None:
        """Delete a version; a deleted default gives way to the newest remaining (KFP 1.8)."""
        with self._lock:
            version = self.get(Version, version_id)
            self._delete_version_files(version_id)
            pipeline = self.get(Pipeline, version.pipeline_id)
            if pipeline.default_version_id == version_id:
                remaining = self.versions(pipeline.id)
                pipeline.default_version_id = remaining[-1].id if remaining else ""
                self._save(pipeline)

    # Experiments and runs ----------------------------------------------------------------
    def create_experiment(self, name: str, description: str) -> Experiment:
        _check_name("experiment", name)
        with self._lock:
            if any(item.name == name for item in self.list(Experiment)):
                raise AlreadyExists(f"Failed to create a new experiment. The name {name} "
                                    "already exists. Please specify a new name.")
            experiment = Experiment(str(uuid.uuid4()), name, description, now())
            self._save(experiment)
        return experiment

    def create_run(self, run: Run, workflow_text: str) -> None:
        """Keep a new run and the package it executes."""
        with self._lock:
            write_atomic(self.run_package(run.id), workflow_text)
            self._save(run)

    def run_package(self, run_id: str) -> Path:
        return self._folder(Run) / f"{run_id}.yaml"

    def run_log(self, run_id: str) -> Path:
        """Output of the run's `covertype run --local` process."""
        return self._folder(Run) / f"{run_id}.log"

    def update_run(self, run_id: str, **changes: Any) -> Run:
        """Change fields of a saved run."""
        with self._lock:
            run = self.get(Run, run_id)
            for name, value in changes.items():
                setattr(run, name, value)
            self._save(run)
        return run

    # Generic -----------------------------------------------------------------------------
    def get(self, kind: type[Entry], entry_id: str) -> Entry:
        """One object by id; NotFound with KFP's wording otherwise."""
        label = {Pipeline: "Pipeline", Version: "PipelineVersion", Experiment: "Experiment",
                 Run: "Run"}[kind]
        path = self._folder(kind) / f"{entry_id}.json"
        if not _safe_id(entry_id) or not path.is_file():
            raise NotFound(f"{label} {entry_id} not found.")
        return _load(kind, path)

    def list(self, kind: type[Entry]) -> list[Entry]:
        """All objects of a kind, oldest first (ties by id)."""
        entries = []
        for path in self._folder(kind).glob("*.json"):
            try:
                entries.append(_load(kind, path))
            except (ValueError, TypeError, OSError):
                continue  # a hand-edited or foreign file is not an object
        return sorted(entries, key=lambda entry: (entry.created_at, entry.id))

    def read_workflow(self, filename: str, data: bytes,
                      context: str = "Error creating pipeline") -> tuple[str, Workflow]:
        """A package's workflow YAML, checked exactly as the local runner reads packages.

        Raises:
            InvalidArgument: not a package, or not a workflow the runner can execute; the
                message starts with `context`.
        """
        try:
            text = read_package(filename, data)
        except PackageError as error:
            raise InvalidArgument(f"{context}: {error}") from None
        check = self.root / "uploads" / f"{uuid.uuid4().hex}.yaml"
        write_atomic(check, text)
        try:
            workflow = Workflow.load(check)
        except WorkflowError as error:
            message = str(error).replace(str(check), filename)
            raise InvalidArgument(f"{context}: {message}") from None
        finally:
            check.unlink(missing_ok=True)
        return text, workflow

    def _save_version(self, version: Version, text: str) -> None:
        write_atomic(self.package(version.id), text)
        self._save(version)

    def _delete_version_files(self, version_id: str) -> None:
        (self._folder(Version) / f"{version_id}.json").unlink(missing_ok=True)
        self.package(version_id).unlink(missing_ok=True)

    def _save(self, entry: Pipeline | Version | Experiment | Run) -> None:
        write_atomic(self._folder(type(entry)) / f"{entry.id}.json",
                     json.dumps(asdict(entry), indent=1))

    def _folder(self, kind: type) -> Path:
        return self.root / {Pipeline: "pipelines", Version: "versions",
                            Experiment: "experiments", Run: "runs"}[kind]


def _load(kind: type[Entry], path: Path) -> Entry:
    data = json.loads(path.read_text())
    known = {item.name for item in fields(kind)}
    return kind(**{name: value for name, value in data.items() if name in known})


def _safe_id(entry_id: str) -> bool:
    """Ids are UUIDs or run ids: never a path."""
    return bool(entry_id) and len(entry_id) <= 128 and all(
        char.isalnum() or char in "-_." for char in entry_id) and not entry_id.startswith(".")


def _check_name(kind: str, name: str) -> None:
    if not name.strip():
        raise InvalidArgument(f"The {kind} name is empty; pass a name")
    if len(name) > NAME_LIMIT:
        raise InvalidArgument(f"The {kind} name is longer than {NAME_LIMIT} characters")


def _parameters(workflow: Workflow) -> list[dict[str, str]]:
    return [{"name": name, **({"value": value} if value is not None else {})}
            for name, value in workflow.parameters.items()]
