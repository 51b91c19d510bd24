"""Models load, and jobs write, only inside the project's own storage; tuning jobs are bounded.

Over real HTTP with Google's ml v1 client against the emulator. The model used for the pickle
boundary is a pickle whose `__reduce__` writes a marker file when it is unpickled: deployed
from anywhere outside the storage root, the marker must never appear. The same file deployed
from inside the root does write it, which shows the marker would catch a load.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BUNDLED_CSV
from googleapiclient.errors import HttpError
from test_local_run import covertype

from pipeline import schema
from pipeline.hypertune import HYPERTUNE_SETTINGS
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import jobs_dir, registry_dir, storage_root
from pipeline.local.storage import EMULATOR_ENV, resolve_in_storage
from pipeline.local.tuning import MAX_TRIALS, parallel_trial_limit
from pipeline.ml_client import EMULATOR_HOST_ENV, ml_service
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
IMAGE = "gcr.io/local/trainer_image:latest"


class MarkerPickle:
    """Unpickling it runs `exec`, which writes `marker`: what any pickle can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(ml v1 client, home, outside folder holding the marker pickle, marker path)."""
    home = tmp_path / "home"
    outside, marker = tmp_path / "outside", tmp_path / "marker"
    outside.mkdir()
    (outside / "model.pkl").write_bytes(pickle.dumps(MarkerPickle(marker)))
    monkeypatch.setenv("COVERTYPE_HOME", str(home))
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    with EmulatorServer(home=home) as server:
        monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
        ml = ml_service()
        ml.projects().models().create(parent="projects/local", body={"name": "m"}).execute()
        yield ml, home, outside, marker


def _tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _refused(request: object) -> str:
    with pytest.raises(HttpError) as raised:
        request.execute()
    error = json.loads(raised.value.content)["error"]
    assert (raised.value.resp.status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert "\n" not in error["message"]
    return error["message"]


# deploymentUri -------------------------------------------------------------------------------

def _layouts(home: Path, outside: Path) -> dict[str, str]:
    """deploymentUri values that lead outside the storage root, each set up on disk."""
    storage = storage_root(home)
    (storage / "inside").mkdir(parents=True)
    (storage / "linked_folder").symlink_to(outside, target_is_directory=True)
    (storage / "linked_file").mkdir()
    (storage / "linked_file" / "model.pkl").symlink_to(outside / "model.pkl")
    return {
        "absolute": str(outside),
        "dot-dot": f"{storage}/inside/../../../outside",
        "symlinked folder": str(storage / "linked_folder"),
        "symlinked model file": str(storage / "linked_file"),
        "file URL": f"file://{outside}",
        "http URL": "http://127.0.0.1:9/models/m",
        "gs:// out of its bucket": "gs://linked_folder/model.pkl",
        "relative": "outside",
        "the home itself": str(home),
    }


def test_deployment_uri_outside_the_storage_root_is_never_read(place) -> None:
    ml, home, outside, marker = place
    versions = ml.projects().models().versions()
    before = _tree(outside), _tree(registry_dir(home))
    for case, uri in _layouts(home, outside).items():
        request = versions.create(parent="projects/local/models/m",
                                  body={"name": "v1", "deploymentUri": uri})
        with pytest.raises(HttpError):
            request.execute()
        assert not marker.exists(), f"{case}: the pickle was loaded"
        message = _refused(request)
        assert "deploymentUri" in message, case
        assert f"use a folder under {storage_root(home)} (the local storage root)" in message, (
            case, message)
    assert (_tree(outside), _tree(registry_dir(home))) == before
    assert versions.list(parent="projects/local/models/m").execute() == {}


def _fitted_model() -> object:
    """The trainer's Pipeline fitted on a few bundled rows."""
    trainer = load_trainer()
    frame = schema.read_dataset(str(BUNDLED_CSV)).iloc[:2000]
    return trainer.build_model().fit(trainer.model_input(frame), frame[schema.LABEL_COLUMN])


def test_gs_uris_without_an_emulator_are_the_local_storage(place) -> None:
    """With no storage emulator configured, gs://BUCKET/PATH is the folder BUCKET/PATH of the
    storage root, as a local step's gs:// sees it: a model there deploys."""
    ml, home, outside, marker = place
    folder = storage_root(home) / "bucket" / "models" / "good"
    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(pickle.dumps(_fitted_model()))
    version = ml.projects().models().versions()
    operation = version.create(parent="projects/local/models/m", body={
        "name": "v1", "deploymentUri": "gs://bucket/models/good"}).execute()
    assert operation["done"] is True and "error" not in operation
    assert (registry_dir(home) / "m" / "versions" / "v1" / "model.pkl").read_bytes() == (
        folder / "model.pkl").read_bytes()
    assert not marker.exists()


def test_the_marker_does_catch_a_load_inside_the_root(place) -> None:
    """The control: a pickle in the project's storage is the user's own, and loading it runs
    its code, which the marker sees (the registry then refuses it: it has no predict())."""
    ml, home, outside, marker = place
    inside = storage_root(home) / "models" / "marker"
    inside.mkdir(parents=True)
    (inside / "model.pkl").write_bytes((outside / "model.pkl").read_bytes())
    with pytest.raises(HttpError) as raised:
        ml.projects().models().versions().create(
            parent="projects/local/models/m",
            body={"name": "v1", "deploymentUri": str(inside)}).execute()
    assert "holds a NoneType, which has no predict()" in str(raised.value)
    assert marker.read_text() == "unpickled"


def test_storage_emulator_uris_are_the_projects_storage(place, monkeypatch) -> None:
    """With STORAGE_EMULATOR_HOST set, gs:// is accepted, but never with '.' or '..' parts."""
    ml, home, outside, marker = place
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:9")
    versions = ml.projects().models().versions()
    message = _refused(versions.create(parent="projects/local/models/m", body={
        "name": "v1", "deploymentUri": "gs://bucket/models/../../other/m"}))
    assert "is not a plain gs://bucket/folder URI" in message
    message = _refused(versions.create(parent="projects/local/models/m",
                                       body={"name": "v1", "deploymentUri": str(outside)}))
    assert "or a gs:// URI of the storage emulator at http://127.0.0.1:9" in message
    uri = "gs://bucket/models/m"
    assert resolve_in_storage(uri, "deploymentUri", storage_root(home)) == uri
    assert not marker.exists()


# jobDir, args and the trial limits -------------------------------------------------------------

def _job(job_id: str, job_dir: str, args: list[str] | None = None,
         hyperparameters: dict | None = None) -> dict:
    training_input = {"masterConfig": {"imageUri": IMAGE}, "args": args or [], "jobDir": job_dir}
    if hyperparameters:
        training_input["hyperparameters"] = hyperparameters
    return {"jobId": job_id, "trainingInput": training_input}


def _tuning(**counts: int) -> dict:
    return {"goal": "MAXIMIZE", "hyperparameterMetricTag": "accuracy", **counts, "params": [
        {"parameterName": "alpha", "type": "DOUBLE", "minValue": 1e-4, "maxValue": 1e-3}]}


def test_job_dir_outside_the_storage_root_is_refused(place) -> None:
    ml, home, outside, _ = place
    jobs = ml.projects().jobs()
    storage = storage_root(home)
    cases = {case: f"{uri}/job" for case, uri in _layouts(home, outside).items()
             if case not in ("symlinked model file", "relative")}
    cases.update({"relative": "jobdir/x", "empty": ""})
    before = _tree(outside)
    for case, job_dir in cases.items():
        message = _refused(jobs.create(parent="projects/local", body=_job("escape", job_dir)))
        assert "trainingInput.jobDir" in message and str(storage) in message, (case, message)
        assert not (outside / "job").exists() and not (home / "job").exists(), case
    assert _tree(outside) == before
    assert not (jobs_dir(home) / "escape").exists()


@pytest.mark.parametrize("args", [["--job-dir", "/tmp/x"], ["--job_dir=/tmp/x"], ["/tmp/x", "-"],
                                  ["--", "--job-dir=/tmp/x"]])
def test_args_cannot_choose_the_output_folder(place, args: list[str]) -> None:
    ml, home, _, _ = place
    body = _job("args", f"{storage_root(home)}/jobdir/args", args)
    message = _refused(ml.projects().jobs().create(parent="projects/local", body=body))
    assert message.startswith("trainingInput.args holds") and "jobDir only" in message
    assert not (jobs_dir(home) / "args").exists()


def test_other_spellings_of_the_job_dir_flag_lose_to_job_dir(place, tmp_path: Path) -> None:
    """fire takes `-j X` as --job-dir too; the service puts --job-dir=<jobDir> last, so the
    trainer writes into jobDir and nowhere else."""
    ml, home, outside, _ = place
    rows = pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=1500)
    storage = storage_root(home)
    (storage / "data").mkdir(parents=True)
    rows.iloc[:1000].to_csv(storage / "data" / "train.csv", index=False)
    rows.iloc[1000:].to_csv(storage / "data" / "validation.csv", index=False)
    escape = tmp_path / "escape"
    args = ["-j", str(escape), "--training_dataset_path", str(storage / "data" / "train.csv"),
            "--validation_dataset_path", str(storage / "data" / "validation.csv"),
            "--hptune", "False", "--max_iter", "5"]
    job_dir = storage / "jobdir" / "plain"
    ml.projects().jobs().create(parent="projects/local",
                                body=_job("plain", str(job_dir), args)).execute()
    deadline = time.monotonic() + 120
    while (job := ml.projects().jobs().get(name="projects/local/jobs/plain").execute())[
            "state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["state"] == "SUCCEEDED", job.get("errorMessage")
    assert (job_dir / "model.pkl").is_file() and not escape.exists()


def test_tuning_jobs_are_bounded(place) -> None:
    ml, home, _, _ = place
    jobs = ml.projects().jobs()
    job_dir = f"{storage_root(home)}/jobdir/tune"
    limit = max(os.cpu_count() or 1, 3)  # one trial per core, never below the lab's 3
    assert parallel_trial_limit() == limit
    message = _refused(jobs.create(parent="projects/local", body=_job(
        "wide", job_dir, hyperparameters=_tuning(maxTrials=limit + 1,
                                                 maxParallelTrials=limit + 1))))
    assert message == (
        f"trainingInput.hyperparameters.maxParallelTrials is {limit + 1}, over this machine's "
        f"limit of {limit} trials at once (one per core, {os.cpu_count()} cores, and never "
        "below the pipeline default of 3); lower maxParallelTrials")
    message = _refused(jobs.create(parent="projects/local", body=_job(
        "long", job_dir, hyperparameters=_tuning(maxTrials=1001))))
    assert message == ("trainingInput.hyperparameters.maxTrials is 1001, over the local limit "
                       "of 1000 trials per job; lower maxTrials")
    assert MAX_TRIALS == 1000 and not any(jobs_dir(home).iterdir())
    # the limits themselves are accepted (the jobs are cancelled at once)
    for job_id, counts in (("at_limit", {"maxTrials": limit, "maxParallelTrials": limit}),
                           ("many", {"maxTrials": 1000})):
        created = jobs.create(parent="projects/local", body=_job(
            job_id, job_dir, ["--hptune", "True"], _tuning(**counts))).execute()
        assert created["state"] == "QUEUED"
        try:
            jobs.cancel(name=f"projects/local/jobs/{job_id}", body={}).execute()
        except HttpError as error:  # its trials (given no data) may all have failed already
            assert "is already FAILED" in str(error)


def test_the_pipeline_default_runs_on_any_machine() -> None:
    """The lab's 3 parallel trials are within the limit even on a 1- or 2-core laptop."""
    defaults = HYPERTUNE_SETTINGS["hyperparameters"]
    assert defaults["maxParallelTrials"] <= parallel_trial_limit()
    assert defaults["maxTrials"] <= MAX_TRIALS


@pytest.mark.parametrize(("gcs_root", "message"), [
    ("/tmp/elsewhere", "gcs_root /tmp/elsewhere is outside the project's storage; use a folder "
                       "under {storage} (the local storage root) or gs://BUCKET/FOLDER (its "
                       "folder BUCKET)"),
    ("{home}/runs", "gcs_root {home}/runs is outside the project's storage; use a folder "
                    "under {storage} (the local storage root) or gs://BUCKET/FOLDER (its "
                    "folder BUCKET)"),
    ("gs://bucket/staging/../../../runs", "gcs_root 'gs://bucket/staging/../../../runs' is not a "
                                          "folder URI; use gs://bucket/folder or an absolute "
                                          "local path, without '..', quotes or a trailing slash"),
])
def test_a_local_run_refuses_a_gcs_root_outside_the_storage(tmp_path: Path, compiled_package: Path,
                                                            gcs_root: str, message: str) -> None:
    """Refused before anything is written: later its training job and deploy would be."""
    home = tmp_path / "home"
    values = {"home": home, "storage": home / "gcs"}
    result = covertype(home, "run", "--local", "--package", str(compiled_package), "--param",
                       f"gcs_root={gcs_root.format(**values)}", env={EMULATOR_ENV: ""})
    assert result.returncode == 2, result.stdout
    assert result.stderr == f"covertype: error: {message.format(**values)}\n", result.stderr
    assert sorted(path.name for path in home.iterdir()) == []
