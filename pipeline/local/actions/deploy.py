"""Executor of the ml_engine deploy component: model, version and default version over ml v1.

Mirrors kubeflow/pipelines 0.2.5 `ml_engine/_deploy.py`, `_create_model.py` and
`_create_version.py`; it talks to AI Platform, or to the local emulator when
`AI_PLATFORM_EMULATOR_HOST` is set (`pipeline.ml_client.ml_service`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from typing import Any

from googleapiclient.errors import HttpError

from pipeline import schema
from pipeline.local.actions import inputs
from pipeline.ml_client import ml_service

log = logging.getLogger(__name__)

FRAMEWORK = "SCIKIT_LEARN"
# Fields that tell an earlier attempt of this very step from a different version (upstream list).
_VERSION_IDENTITY = ("description", "deploymentUri", "runtimeVersion", "machineType", "labels",
                     "framework", "pythonVersion", "autoScaling", "manualScaling")
_MODEL_IDENTITY = ("description", "regions", "onlinePredictionLogging", "labels")
_STANDIN_SUFFIX = "_standin"


def deploy(model_uri: Any, project_id: Any, model_id: Any = "", version_id: Any = "",
           runtime_version: Any = "", python_version: Any = "", model: Any = "",
           version: Any = "", replace_existing_version: Any = False,
           set_default: Any = False, wait_interval: Any = 30) -> dict[str, str]:
    """Create the model if missing, create (or replace) the version, optionally make it default.

    Inputs come as the launcher hands them over (pipeline/local/actions/inputs.py).

    Returns:
        The component outputs: model_uri, model_name (projects/P/models/M) and version_name
        (projects/P/models/M/versions/V).

    Raises:
        ValueError: a bad input, or a version that exists and may not be replaced; raised before
            anything changes.
    """
    model_uri = inputs.text("model_uri", model_uri, "gs://bucket/jobdir/model")
    _check_model_uri(model_uri)
    project_id = inputs.text("project_id", project_id, "my-project")
    if not project_id.strip():
        raise ValueError("project_id is empty; pass the project to deploy into")
    model_id = inputs.text("model_id", model_id, "covertype_classifier")
    version_id = inputs.text("version_id", version_id, "v01")
    runtime_version = inputs.text("runtime_version", runtime_version, "2.11", number_ok=True)
    python_version = inputs.text("python_version", python_version, "3.7", number_ok=True)
    replace = inputs.flag("replace_existing_version", replace_existing_version)
    make_default = inputs.flag("set_default", set_default)
    interval = inputs.whole_number("wait_interval", wait_interval, 1, "30")
    model_body = inputs.mapping("model", model, '{"regions": ["us-central1"]}')
    version_body = inputs.mapping("version", version, '{"machineType": "mls1-c1-m2"}')
    context_id = _context_id()
    model_id = _normalize_name(model_id or f"model_{context_id}")
    version_id = _normalize_name(version_id or version_body.get("name") or f"ver_{context_id}")
    model_body["name"] = model_id
    version_body.update(name=version_id, deploymentUri=model_uri)
    if runtime_version:
        version_body["runtimeVersion"] = runtime_version
    if python_version:
        version_body["pythonVersion"] = python_version
    version_body.setdefault("framework", FRAMEWORK)

    ml = ml_service()
    model_name = f"projects/{project_id}/models/{model_id}"
    version_name = f"{model_name}/versions/{version_id}"
    existing_model = _get(ml.projects().models().get(name=model_name))
    existing = _get(_versions(ml).get(name=version_name)) if existing_model else None
    if existing_model:
        _check_same(model_body, existing_model, _MODEL_IDENTITY, f"model {model_name}",
                    "pick another model_id or leave out the model input")
    if existing and not replace and _changed(version_body, existing, _VERSION_IDENTITY):
        raise ValueError(f"version {version_name} already exists; set "
                         "replace_existing_version=True to replace it or pick a new version_id")

    if not existing_model:
        _create_model(ml, project_id, model_name, model_body, version_body, interval)
    elif not existing:
        _wait(ml, _versions(ml).create(parent=model_name, body=version_body).execute(), interval)
    elif replace:
        _replace_version(ml, model_name, version_body, existing, interval)
    else:
        log.info("version %s was deployed by an earlier attempt of this step", version_name)
    if make_default:
        _versions(ml).setDefault(name=version_name, body={}).execute()
    return {"model_uri": model_uri, "model_name": model_name, "version_name": version_name}


def _replace_version(ml: Any, model_name: str, body: dict, existing: dict,
                     interval: int) -> None:
    """Delete and re-create a version, never leaving the model without its served version.

    The new artifact is first deployed as `<version>_standin`, so a bad one fails before the
    old version is touched. When the old version is the default (which the service refuses to
    delete while others exist), the stand-in serves in its place until the re-created version
    is made default again; then the stand-in is retired.
    """
    versions = _versions(ml)
    version_name = f"{model_name}/versions/{body['name']}"
    standin_id = body["name"][:128 - len(_STANDIN_SUFFIX)] + _STANDIN_SUFFIX
    standin_name = f"{model_name}/versions/{standin_id}"
    stale = _get(versions.get(name=standin_name))  # left by an interrupted attempt
    stale_default = bool(stale and stale.get("isDefault"))
    was_default = stale_default or bool(existing.get("isDefault"))
    if stale and not stale_default:
        _wait(ml, versions.delete(name=standin_name).execute(), interval)
    if not stale_default:
        _wait(ml, versions.create(parent=model_name, body={**body, "name": standin_id}).execute(),
              interval)
    if was_default:
        versions.setDefault(name=standin_name, body={}).execute()
    _wait(ml, versions.delete(name=version_name).execute(), interval)
    _wait(ml, versions.create(parent=model_name, body=body).execute(), interval)
    if was_default:
        versions.setDefault(name=version_name, body={}).execute()
    _wait(ml, versions.delete(name=standin_name).execute(), interval)


def _create_model(ml: Any, project_id: str, model_name: str, model_body: dict,
                  version_body: dict, interval: int) -> None:
    """Create the model and its first version; drop the model again if the version fails.

    A model created meanwhile by someone else with the same settings is used as it is
    (upstream does the same), and never dropped.
    """
    try:
        ml.projects().models().create(parent=f"projects/{project_id}", body=model_body).execute()
        created = True
    except HttpError as error:
        if error.resp.status != 409:
            raise
        existing = ml.projects().models().get(name=model_name).execute()
        _check_same(model_body, existing, _MODEL_IDENTITY, f"model {model_name}",
                    "pick another model_id or leave out the model input")
        created = False
    try:
        _wait(ml, _versions(ml).create(parent=model_name, body=version_body).execute(), interval)
    except (HttpError, RuntimeError):
        if created:
            _wait(ml, ml.projects().models().delete(name=model_name).execute(), interval)
        raise


def _versions(ml: Any) -> Any:
    return ml.projects().models().versions()


def _get(request: Any) -> dict | None:
    """Execute a get; None when the resource does not exist."""
    try:
        return request.execute()
    except HttpError as error:
        if error.resp.status == 404:
            return None
        raise


def _wait(ml: Any, operation: dict, interval: int) -> dict:
    """Poll a long-running operation until done (the emulator's are done at once)."""
    while not operation.get("done"):
        log.info("operation %s is not done; waiting %ss", operation["name"], interval)
        time.sleep(interval)
        operation = ml.projects().operations().get(name=operation["name"]).execute()
    if error := operation.get("error"):
        raise RuntimeError(f"operation {operation['name']} failed: {error.get('code')} "
                           f"{error.get('message')}")
    return operation.get("response", {})


def _changed(requested: dict, existing: dict, fields: tuple[str, ...]) -> list[str]:
    """Fields set in the request whose value differs from the existing resource."""
    return [name for name in fields if name in requested and requested[name] != existing.get(name)]


def _check_same(requested: dict, existing: dict, fields: tuple[str, ...], what: str,
                fix: str) -> None:
    if changed := _changed(requested, existing, fields):
        raise ValueError(f"{what} already exists with a different {changed[0]} "
                         f"({existing.get(changed[0])!r}); {fix}")


def _check_model_uri(model_uri: str) -> None:
    """The folder must hold a scikit-learn artifact the local server can load."""
    import fsspec

    if not model_uri.strip():
        raise ValueError("model_uri is empty; pass the job_dir the trainer saved model.pkl in")
    try:
        fs, folder = fsspec.core.url_to_fs(model_uri)
        is_folder = fs.isdir(folder)
        names = {path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)}
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"model_uri {model_uri} cannot be listed ({error}); pass the job_dir "
                         "the trainer saved model.pkl in") from None
    if not is_folder:
        raise ValueError(f"model_uri {model_uri} is not a folder; pass the job_dir the trainer "
                         "saved model.pkl in, not the file")
    if not names & set(schema.MODEL_ARTIFACT_NAMES):
        raise ValueError(f"model_uri {model_uri} holds no "
                         f"{' or '.join(schema.MODEL_ARTIFACT_NAMES)}; pass the job_dir the "
                         "trainer saved the model in")


def _context_id() -> str:
    """Stable across retries of one step (upstream KfpExecutionContext.context_id)."""
    pod = os.environ.get("KFP_POD_NAME", "")
    return hashlib.md5(pod.encode()).hexdigest() if pod else uuid.uuid4().hex


def _normalize_name(name: str) -> str:
    """Upstream `normalize_name`: invalid characters become '_', a bad first letter gets 'x_'."""
    normalized = re.sub(r"[^0-9a-zA-Z_]+", "_", name)
    if not re.match(r"[a-zA-Z]", normalized):
        normalized = "x_" + normalized
    if normalized != name:
        log.info("normalized the name %r to %r", name, normalized)
    return normalized
