"""Training images: `.../trainer_image` runs the local trainer, any other image needs
`--image NAME=program.py`, and without one the job is refused with one line naming the option.

Over real HTTP with Google's own clients (ml v1 and aiplatform v1), and through the real
`covertype run --local` on a pipeline built from the 0.2.5 train component.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import kfp
import pytest
from googleapiclient.errors import HttpError
from kfp.components import load_component_from_file

from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.errors import InvalidArgument
from pipeline.local.home import jobs_dir, storage_root
from pipeline.local.records import RunStore
from pipeline.local.training_run import TRAINER_PROGRAM, program_for_image
from pipeline.ml_client import (
    EMULATOR_HOST_ENV,
    VERTEX_EMULATOR_HOST_ENV,
    aiplatform_service,
    ml_service,
)
from pipeline.settings import COMPONENTS_DIR

COVERTYPE = str(Path(sys.executable).with_name("covertype"))
CUSTOM = "europe-docker.pkg.dev/acme/models/churn_trainer"
PROGRAM = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    job_dir = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--job-dir="))
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    (Path(job_dir) / "ran.json").write_text(json.dumps(sys.argv[1:]))
    print("custom trainer ran")
""")


@pytest.mark.parametrize("image", [
    "covertype/trainer_image:local", "gcr.io/my-project/trainer_image",
    "gcr.io/my-project/trainer_image:latest", "localhost:5000/a/b/trainer_image:v1",
    "us-docker.pkg.dev/p/repo/trainer_image@sha256:" + "0" * 64,
])
def test_trainer_images_run_the_local_trainer(image):
    assert program_for_image(image) == TRAINER_PROGRAM


@pytest.mark.parametrize(("image", "name"), [
    ("gcr.io/my-project/trainer", "gcr.io/my-project/trainer"),
    ("gcr.io/my-project/trainer_image2:latest", "gcr.io/my-project/trainer_image2"),
    ("trainer_image", "trainer_image"),
    ("gcr.io/trainer_image/other:latest", "gcr.io/trainer_image/other"),
    ("localhost:5000/trainer_image_x", "localhost:5000/trainer_image_x"),
    (CUSTOM + ":v3", CUSTOM),
    (CUSTOM + "@sha256:" + "a" * 64, CUSTOM),
])
def test_other_images_are_refused_naming_the_option(image, name):
    with pytest.raises(InvalidArgument) as error:
        program_for_image(image)
    assert str(error.value) == (
        f"training image {image!r} has no local program: only images named .../trainer_image "
        f"run the local trainer; map this one with `covertype run --local --image "
        f"{name}=path/to/program.py`")


def test_a_mapping_by_name_or_full_reference_wins(tmp_path):
    program = str(tmp_path / "task.py")
    assert program_for_image(CUSTOM + ":v3", {CUSTOM: program}) == (
        sys.executable, "-u", program)
    assert program_for_image(CUSTOM + ":v3", {CUSTOM + ":v3": program})[-1] == program
    with pytest.raises(InvalidArgument):
        program_for_image(CUSTOM + ":v3", {CUSTOM + ":v2": program})
    # an explicit mapping may also replace the trainer image's program
    assert program_for_image("gcr.io/p/trainer_image:1", {"gcr.io/p/trainer_image": program})[
        -1] == program


@pytest.fixture
def program(tmp_path) -> Path:
    path = tmp_path / "churn" / "task.py"
    path.parent.mkdir()
    path.write_text(PROGRAM)
    return path


def _wait(get, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (found := get())["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED",
                                            "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def test_google_clients_see_the_refusal_and_the_mapped_program(home, program, monkeypatch):
    job_dir = storage_root(home) / "jobs" / "churn"
    with EmulatorServer(home, images={CUSTOM: str(program)}) as server:
        monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
        monkeypatch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        jobs = ml_service().projects().jobs()
        body = {"jobId": "other", "trainingInput": {
            "masterConfig": {"imageUri": "gcr.io/acme/unknown:1"}, "jobDir": str(job_dir)}}
        with pytest.raises(HttpError) as refused:
            jobs.create(parent="projects/local", body=body).execute()
        assert refused.value.resp.status == 400
        assert json.loads(refused.value.content)["error"]["message"].endswith(
            "`covertype run --local --image gcr.io/acme/unknown=path/to/program.py`")
        assert not (jobs_dir(home) / "other").exists()
        pool = {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1",
                "containerSpec": {"imageUri": "gcr.io/acme/unknown:1"}}
        custom_jobs = aiplatform_service("us-central1").projects().locations().customJobs()
        with pytest.raises(HttpError) as vertex_refused:
            custom_jobs.create(parent="projects/local/locations/us-central1", body={
                "displayName": "x", "jobSpec": {"workerPoolSpecs": [pool]}}).execute()
        assert vertex_refused.value.resp.status == 400
        assert "has no local program" in json.loads(vertex_refused.value.content)["error"][
            "message"]

        body["jobId"], body["trainingInput"]["masterConfig"]["imageUri"] = "mapped", CUSTOM + ":v3"
        body["trainingInput"]["args"] = ["--epochs", "2"]
        jobs.create(parent="projects/local", body=body).execute()
        job = _wait(lambda: jobs.get(name="projects/local/jobs/mapped").execute())
    assert job["state"] == "SUCCEEDED", job
    assert json.loads((job_dir / "ran.json").read_text()) == [
        "--epochs", "2", f"--job-dir={job_dir}"]


def _train_pipeline(folder: Path) -> Path:
    train_op = load_component_from_file(str(COMPONENTS_DIR / "ml_engine" / "train" /
                                             "component.yaml"))

    @kfp.dsl.pipeline(name="churn training")
    def churn(project_id, gcs_root):
        train_op(project_id=project_id, master_image_uri=CUSTOM + ":v3",
                 job_dir=f"{gcs_root}/jobs/churn", args=json.dumps(["--epochs", "2"]))

    path = folder / "churn.yaml"
    kfp.compiler.Compiler().compile(churn, str(path))
    return path


def _covertype(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COVERTYPE, *args], env={**os.environ, "COVERTYPE_HOME": str(home)},
                          capture_output=True, text=True, timeout=300)


def test_run_refuses_an_unmapped_image_then_runs_the_mapped_program(home, tmp_path, program):
    package = str(_train_pipeline(tmp_path))
    refused = _covertype(home, "run", "--local", "--package", package, "--no-cache")
    assert refused.returncode == 1
    (record,) = RunStore(home / "runs").list()
    assert record.message.endswith(
        f"the training job was refused: training image '{CUSTOM}:v3' has no local program: "
        "only images named .../trainer_image run the local trainer; map this one with "
        f"`covertype run --local --image {CUSTOM}=path/to/program.py`")

    ran = _covertype(home, "run", "--local", "--package", package, "--no-cache",
                     "--image", f"{CUSTOM}={program}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    job_dir = storage_root(home) / "staging" / "jobs" / "churn"
    assert json.loads((job_dir / "ran.json").read_text()) == [
        "--epochs", "2", f"--job-dir={job_dir}"]


@pytest.mark.parametrize(("value", "message"), [
    ("gcr.io/acme/x", "--image 'gcr.io/acme/x' is not NAME=path/to/program.py"),
    ("=task.py", "--image '=task.py' is not NAME=path/to/program.py"),
    ("gcr.io/acme/x=missing.py", "'missing.py' is not a Python program file"),
    ("gcr.io/acme/x=README.md", "'README.md' is not a Python program file"),
])
def test_bad_image_options_are_one_line_errors(home, value, message):
    result = _covertype(home, "run", "--local", "--package", "p.yaml", "--image", value)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (home / "runs").exists()
