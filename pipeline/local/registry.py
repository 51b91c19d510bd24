"""The local AI Platform Prediction model registry: models, versions and default versions on disk.

Layout under the root (default `<home>/registry`), shared by every process on the machine:

    .lock                                     flock held around every mutation
    <model>/model.json                        the Model: name, regions, defaultVersion {name},
                                              a fresh etag on every change to it or its versions
    <model>/versions/<version>/version.json   the Version (isDefault is derived from model.json)
    <model>/versions/<version>/model.pkl      (or model.joblib) the copied, verified artifact

    .vertex/...                               Vertex AI models, endpoints and operations
                                              (vertex_registry.py), sharing this lock and
                                              `stage_artifact`

Readers take no lock: every change becomes visible through one `os.rename`/`os.replace`, and
a version is staged and verified in `<model>/.staging-*` first, so a kill -9 never leaves a half
version visible. Names on disk use the project `local`; the registry is one namespace that
every project id sees, with names rendered under the project that asks.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import schema
from pipeline.atomic import write_atomic
from pipeline.errors import one_line
from pipeline.local.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pipeline.local.home import LOCAL_PROJECT_ID, registry_dir, storage_root
from pipeline.local.prediction import prepare_fast_path
from pipeline.local.storage import resolve_in_storage

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
PROJECT_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
ARTIFACT_NAMES = schema.MODEL_ARTIFACT_NAMES
TENSORFLOW_NAMES = ("saved_model.pb", "saved_model.pbtxt")
FRAMEWORK = "SCIKIT_LEARN"
DEFAULT_REGION = "us-central1"

MODEL_FIELDS = frozenset({"name", "description", "regions", "labels", "onlinePredictionLogging",
                          "onlinePredictionConsoleLogging"})
VERSION_FIELDS = frozenset({"name", "description", "deploymentUri", "runtimeVersion",
                            "pythonVersion", "framework", "labels", "machineType", "autoScaling",
                            "manualScaling", "acceleratorConfig", "requestLoggingConfig",
                            "serviceAccount"})
# Output-only fields: ignored in requests, as the cloud does.
MODEL_OUTPUT_ONLY = frozenset({"defaultVersion", "etag"})
VERSION_OUTPUT_ONLY = frozenset({"createTime", "state", "errorMessage", "isDefault", "etag",
                                 "lastUseTime", "lastMigrationTime", "lastMigrationModelId"})
# Version fields for custom code or containers, which the local server cannot honour.
VERSION_UNSUPPORTED = frozenset({"predictionClass", "packageUris", "container", "routes",
                                 "explanationConfig"})
_RACE_RETRIES = 3


class Registry:
    """Models and versions under `root`, mirroring projects.models and projects.models.versions."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else registry_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        # The project's storage beside this registry (the same home): artifacts come only
        # from there (see _copy_artifact).
        self.storage = storage_root(self.root.parent)

    # projects.models ------------------------------------------------------------------------

    def create_model(self, body: dict[str, Any], project: str = LOCAL_PROJECT_ID) -> dict:
        """Create an empty model from a Model body; its `name` is the short model id."""
        _check_project(project)
        body = _request_fields(body, "model", MODEL_FIELDS, MODEL_OUTPUT_ONLY)
        model = _check_name(body.get("name"), "model")
        regions = body.get("regions", [DEFAULT_REGION])
        if (not isinstance(regions, list) or len(regions) != 1
                or not isinstance(regions[0], str)):
            raise InvalidArgument(f"model {model}: regions must list exactly one region, "
                                  f"like [\"{DEFAULT_REGION}\"]")
        record = {**body, "name": _model_name(model), "regions": regions}
        staging = self.root / f".new-{uuid.uuid4().hex}"
        try:
            (staging / "versions").mkdir(parents=True)
            _write_json(staging / "model.json", {**record, "etag": _etag()})
            with self.locked():
                if (self.root / model).exists():
                    raise AlreadyExists(f"model {model} already exists; pick another model name "
                                        "or add a version to it")
                os.rename(staging, self.root / model)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get_model(model, project)

    def get_model(self, model: str, project: str = LOCAL_PROJECT_ID) -> dict:
        """The Model, with its default Version expanded as the cloud returns it."""
        _check_project(project)
        record = self._read_model(model)
        default = self._default_of(record)
        record.pop("defaultVersion", None)
        if default:
            with contextlib.suppress(NotFound):
                record["defaultVersion"] = self._read_version(model, default, default)
        return _in_project(record, project)

    def list_models(self, project: str = LOCAL_PROJECT_ID) -> list[dict]:
        """All models, by name."""
        _check_project(project)
        models = []
        for folder in sorted(self.root.iterdir()):
            if NAME_PATTERN.fullmatch(folder.name):
                with contextlib.suppress(NotFound):  # deleted while listing
                    models.append(self.get_model(folder.name, project))
        return models

    def delete_model(self, model: str, project: str = LOCAL_PROJECT_ID) -> dict:
        """Delete a model that has no versions left; return what it was."""
        record = self.get_model(model, project)
        with self.locked():
            self._read_model(model)
            versions = self._version_ids(model)
            if versions:
                raise FailedPrecondition(f"model {model} still has versions "
                                         f"({', '.join(versions)}); delete them first")
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            os.rename(self.root / model, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return record

    # projects.models.versions ---------------------------------------------------------------

    def create_version(self, model: str, body: dict[str, Any],
                       project: str = LOCAL_PROJECT_ID) -> dict:
        """Copy and verify the artifact under `deploymentUri`, then publish the version.

        The first version of a model (or any version of a model without a default) becomes
        the default.
        """
        _check_project(project)
        body = _request_fields(body, f"model {model} version", VERSION_FIELDS,
                               VERSION_OUTPUT_ONLY, VERSION_UNSUPPORTED)
        version = _check_name(body.get("name"), "version")
        uri = _check_deployment_uri(body.get("deploymentUri"), f"version {version}",
                                    self.storage)
        framework = body.get("framework", FRAMEWORK)
        if framework != FRAMEWORK:
            raise InvalidArgument(f"version {version}: framework {framework!r} is not served "
                                  f"locally; deploy a {FRAMEWORK} model.pkl or model.joblib")
        self._read_model(model)
        if (self._version_dir(model, version) / "version.json").exists():
            raise _version_exists(model, version)
        record = {**body, "name": _version_name(model, version), "deploymentUri": uri,
                  "framework": FRAMEWORK, "state": "READY", "createTime": _now(), "etag": _etag()}
        staging = self.root / model / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
        except FileNotFoundError:
            raise NotFound(f"model {model} was deleted meanwhile; create it again") from None
        try:
            self.stage_artifact(uri, staging)
            _write_json(staging / "version.json", record)
            with self.locked():
                model_record = self._read_model(model)
                if self._version_dir(model, version).exists():
                    raise _version_exists(model, version)
                os.rename(staging, self._version_dir(model, version))
                default = self._default_of(model_record)
                if not default or not self._version_dir(model, default).exists():
                    model_record["defaultVersion"] = {"name": record["name"]}
                self._write_model(model, model_record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get_version(model, version, project)

    def get_version(self, model: str, version: str, project: str = LOCAL_PROJECT_ID) -> dict:
        """One Version; `isDefault` is true for the model's default version."""
        _check_project(project)
        default = self._default_of(self._read_model(model))
        return _in_project(self._read_version(model, _check_name(version, "version"), default),
                           project)

    def list_versions(self, model: str, project: str = LOCAL_PROJECT_ID) -> list[dict]:
        """All versions of a model, by name."""
        _check_project(project)
        default = self._default_of(self._read_model(model))
        versions = []
        for version in self._version_ids(model):
            with contextlib.suppress(NotFound):  # deleted while listing
                versions.append(_in_project(self._read_version(model, version, default), project))
        return versions

    def delete_version(self, model: str, version: str, project: str = LOCAL_PROJECT_ID) -> dict:
        """Delete a version; the default one only when it is the last (as the cloud does)."""
        record = self.get_version(model, version, project)
        with self.locked():
            model_record = self._read_model(model)
            self._read_version(model, version, None)
            others = [other for other in self._version_ids(model) if other != version]
            is_default = self._default_of(model_record) == version
            if is_default and others:
                raise FailedPrecondition(
                    f"version {version} is the default of model {model}, which has other "
                    "versions; make another version the default (setDefault) before deleting it")
            trash = self.root / model / f".trash-{uuid.uuid4().hex}"
            os.rename(self._version_dir(model, version), trash)
            if is_default:
                model_record.pop("defaultVersion", None)
            self._write_model(model, model_record)
        shutil.rmtree(trash, ignore_errors=True)
        return record

    def set_default(self, model: str, version: str, project: str = LOCAL_PROJECT_ID) -> dict:
        """Make a version the one `models/{model}:predict` serves."""
        _check_project(project)
        with self.locked():
            model_record = self._read_model(model)
            self._read_version(model, _check_name(version, "version"), None)
            model_record["defaultVersion"] = {"name": _version_name(model, version)}
            self._write_model(model, model_record)
        return self.get_version(model, version, project)

    # serving --------------------------------------------------------------------------------

    def resolve(self, model: str, version: str | None = None) -> tuple[dict, Path]:
        """(Version record, artifact path) of a version, or of the default when `version` is None.

        A default that changes between the two reads is read again.
        """
        for _ in range(_RACE_RETRIES):
            name = version or self._default_of(self._read_model(model))
            if not name:
                raise FailedPrecondition(f"model {model} has no default version; create a "
                                         "version or call setDefault")
            try:
                record = self.get_version(model, name)
                return record, self._artifact(model, name)
            except NotFound:
                if version:
                    raise
        raise NotFound(f"the default version of model {model} keeps changing; try again")

    def stamp(self, model: str) -> str | None:
        """A value that changes whenever the model or any of its versions changes; None if absent.

        A prediction server compares it per request to reload without a restart.
        """
        try:
            return self._read_model(model)["etag"]
        except NotFound:
            return None

    # shared by the ml v1 and aiplatform v1 surfaces -----------------------------------------

    def stage_artifact(self, uri: str, staging: Path, field: str = "deploymentUri") -> Path:
        """Copy the model artifact under `uri` into `staging`, check that it loads, and make and
        verify its ONNX fast path there, before anything is visible; the copied artifact.

        Raises:
            FailedPrecondition: no single loadable model.pkl or model.joblib under `uri`.
        """
        artifact = _copy_artifact(uri, staging, self.storage, field)
        _verify_artifact(artifact, uri)
        prepare_fast_path(artifact, self.root.parent / "cache")
        return artifact

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock (every mutation, of either API surface, takes it)."""
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_model(self, model: str) -> dict:
        path = self.root / _check_name(model, "model") / "model.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"model {model} not found; create it first (projects.models.create)"
                           ) from None

    def _write_model(self, model: str, record: dict) -> None:
        _write_json(self.root / model / "model.json", {**record, "etag": _etag()})

    def _version_dir(self, model: str, version: str) -> Path:
        return self.root / model / "versions" / version

    def _version_ids(self, model: str) -> list[str]:
        folder = self.root / model / "versions"
        return sorted(entry.name for entry in folder.iterdir()
                      if NAME_PATTERN.fullmatch(entry.name)) if folder.is_dir() else []

    def _read_version(self, model: str, version: str, default: str | None) -> dict:
        try:
            record = json.loads((self._version_dir(model, version) / "version.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"version {version} of model {model} not found; list the versions "
                           "with projects.models.versions.list") from None
        if version == default:
            record["isDefault"] = True
        return record

    def _artifact(self, model: str, version: str) -> Path:
        for name in ARTIFACT_NAMES:
            path = self._version_dir(model, version) / name
            if path.exists():
                return path
        raise NotFound(f"version {version} of model {model} has no artifact any more")

    @staticmethod
    def _default_of(model_record: dict) -> str | None:
        name = (model_record.get("defaultVersion") or {}).get("name", "")
        return name.rsplit("/", 1)[-1] or None


def _check_name(name: Any, kind: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"{kind} name {name!r} is invalid; use a letter followed by up to "
                              "127 letters, digits or underscores")
    return name


def _check_project(project: str) -> None:
    if not PROJECT_PATTERN.fullmatch(project):
        raise InvalidArgument(f"project {project!r} is invalid; use lowercase letters, digits "
                              "and hyphens, starting with a letter")


def _check_deployment_uri(uri: Any, what: str, storage: Path,
                          field: str = "deploymentUri") -> str:
    """The artifact folder of an ml v1 version (deploymentUri) or a Vertex model (artifactUri),
    as given; refused (nothing read) unless it lies in `storage` (resolve_in_storage)."""
    if not isinstance(uri, str) or not uri:
        raise InvalidArgument(f"{what}: {field} is required; set it to the "
                              "folder holding model.pkl or model.joblib")
    resolve_in_storage(uri, f"{what}: {field}", storage)
    return uri


def _request_fields(body: Any, what: str, allowed: frozenset[str], ignored: frozenset[str],
                    unsupported: frozenset[str] = frozenset()) -> dict:
    """The body's settable fields; unknown fields are refused like the cloud's JSON parser does."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what}: the request body must be a JSON object")
    if refused := sorted(set(body) & unsupported):
        raise InvalidArgument(f"{what}: {refused[0]} (custom prediction code) is not served "
                              "locally; deploy a plain scikit-learn model")
    if unknown := sorted(set(body) - allowed - ignored - unsupported):
        raise InvalidArgument(f"{what}: unknown field {unknown[0]!r}; "
                              f"known fields: {', '.join(sorted(allowed))}")
    return {key: value for key, value in body.items() if key in allowed}


def _copy_artifact(uri: str, staging: Path, storage: Path, field: str = "deploymentUri") -> Path:
    """Copy model.pkl or model.joblib from the deployment folder into `staging`.

    The pickle trust boundary, in this one place: models are pickles, and unpickling runs
    code, so the registry unpickles (to verify, to serve) only files it copied here from the
    project's own storage, `storage` or the configured storage emulator (resolve_in_storage).
    The folder and the model file are each resolved, symlinks included, before anything is
    read; a location outside is refused with nothing read. Both API surfaces (ml v1 versions,
    Vertex AI models) come through here, by `Registry.stage_artifact`.
    """
    import fsspec

    location = resolve_in_storage(uri, field, storage)
    try:
        fs, folder = fsspec.core.url_to_fs(location)
        if not fs.isdir(folder):
            raise FailedPrecondition(f"{field} {uri} is not a folder; point it at the folder "
                                     "holding model.pkl or model.joblib")
        names = {path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)}
    except (OSError, ValueError, ImportError) as error:
        raise FailedPrecondition(f"cannot list {field} {uri} ({one_line(error)}); check "
                                 "the path and its credentials") from None
    found = [name for name in ARTIFACT_NAMES if name in names]
    if not found and names & set(TENSORFLOW_NAMES):
        raise FailedPrecondition(f"{uri} holds a SavedModel: TensorFlow models are not served "
                                 "locally; deploy a scikit-learn model.pkl or model.joblib")
    if not found:
        raise FailedPrecondition(f"{uri} holds no model.pkl or model.joblib; point {field} "
                                 "at the folder the trainer saved the model in")
    if len(found) > 1:
        raise FailedPrecondition(f"{uri} holds both model.pkl and model.joblib; keep only one")
    source_uri = resolve_in_storage(f"{location.rstrip('/')}/{found[0]}", field, storage)
    target = staging / found[0]
    with fs.open(source_uri, "rb") as source, open(target, "wb") as copy:
        shutil.copyfileobj(source, copy, 1 << 20)
    return target


def _verify_artifact(artifact: Path, uri: str) -> None:
    """Refuse an artifact that does not load into an object with predict()."""
    try:
        if artifact.name == "model.joblib":
            import joblib

            estimator = joblib.load(artifact)
        else:
            with open(artifact, "rb") as stream:
                estimator = pickle.load(stream)
    except Exception as error:  # anything a broken pickle raises
        raise FailedPrecondition(f"{uri}/{artifact.name} does not load "
                                 f"({type(error).__name__}: {one_line(error)}); save the fitted "
                                 "model again with pickle or joblib") from None
    if not callable(getattr(estimator, "predict", None)):
        raise FailedPrecondition(f"{uri}/{artifact.name} holds a {type(estimator).__name__}, "
                                 "which has no predict(); save the fitted estimator or Pipeline")


def _in_project(record: dict, project: str) -> dict:
    """The record with its resource names under `project`."""
    prefix, local = f"projects/{project}/", f"projects/{LOCAL_PROJECT_ID}/"

    def rename(name: str) -> str:
        return prefix + name[len(local):] if name.startswith(local) else name

    record = {**record, "name": rename(record["name"])}
    if "defaultVersion" in record:
        record["defaultVersion"] = _in_project(record["defaultVersion"], project)
    return record


def _version_exists(model: str, version: str) -> AlreadyExists:
    return AlreadyExists(f"version {version} of model {model} already exists; delete it first "
                         "or pick another version name")


def _model_name(model: str) -> str:
    return f"projects/{LOCAL_PROJECT_ID}/models/{model}"


def _version_name(model: str, version: str) -> str:
    return f"{_model_name(model)}/versions/{version}"


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def _etag() -> str:
    return base64.b64encode(os.urandom(8)).decode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
