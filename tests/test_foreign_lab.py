"""A pipeline written in the lab's style (tests/foreign/lab/), never edited for this project:
compiled with `dsl-compile` against the component URLs `covertype serve` publishes, run with
`covertype run --local` end to end. It deploys, and the summary, `covertype runs list` and the
run browser recognise its tuning, evaluation and deploy steps, whose names are not ours.

Its helpers call `discovery.build('ml', 'v1')` with default credentials and `gsutil cp`; its
`hypertune_settings` default is a Python literal. Small: 20,000 rows, 2 trials.
"""
from __future__ import annotations

import pickle
import re

import httpx
import pytest
from foreign_support import FOREIGN, dsl_compile
from serve_process import covertype_serve
from sklearn.metrics import accuracy_score
from test_local_run import covertype, only_run

from pipeline import schema
from pipeline.local import records
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.registry import Registry
from pipeline.local.summary import RunSummary, step_output
from pipeline.local.tuning_jobs import tuning_job

ROWS = "20000"
TUNE = "submitting-a-cloud-ml-training-job-as-a-pipeline-step"
TRAIN = TUNE + "-2"
SCORE, BEST, DEPLOY = "score-model", "best-trial-of", (
    "deploying-a-trained-model-to-cloud-machine-learning-engine")
VERSION = "projects/local/models/lab_classifier/versions/v01"
PARAMS = {"region": "us-central1", "source_table_name": "covertype_dataset.covertype",
          "dataset_id": "splits", "evaluation_metric_name": "accuracy",
          "evaluation_metric_threshold": "0.5", "model_id": "lab_classifier",
          "version_id": "v01", "replace_existing_version": "True"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    package = root / "covertype_training_pipeline.yaml"
    with covertype_serve(root / "serving-home") as served:
        url = served.url
        compiled = dsl_compile(FOREIGN / "lab" / "covertype_training_pipeline.py", package,
                               COMPONENT_URL_SEARCH_PREFIX=f"{url}/components/gcp/",
                               BASE_IMAGE="gcr.io/my-project/base_image:latest",
                               TRAINER_IMAGE="gcr.io/my-project/trainer_image:latest",
                               RUNTIME_VERSION="2.11", PYTHON_VERSION="3.7")
    assert compiled.returncode == 0, compiled.stderr
    home = root / "home"
    params = [part for name, value in PARAMS.items() for part in ("--param", f"{name}={value}")]
    result = covertype(home, "run", "--local", "--package", str(package), "--rows", ROWS,
                       *params)
    return home, result


def test_it_runs_end_to_end_and_deploys(lab):
    home, result = lab
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_run(home)
    assert {step.status for step in record.steps.values()} == {records.SUCCEEDED}
    assert "True" in record.parameters["hypertune_settings"]  # the lab's Python literal
    summary = RunSummary.of(record, tuning_job(record, home)[0])
    assert (summary.tuning_step, summary.evaluation_step, summary.deploy_step) == (
        TUNE, SCORE, DEPLOY)
    assert summary.deployed_version == VERSION
    # the deployed model scores on the testing split as the lab's own evaluation said
    _, artifact = Registry(home / "registry").resolve("lab_classifier")
    model = pickle.loads(artifact.read_bytes())
    testing = schema.read_dataset(str(home / "gcs/staging/datasets/testing/data.csv"))
    accuracy = accuracy_score(testing[schema.LABEL_COLUMN],
                              model.predict(testing[list(schema.FEATURE_COLUMNS)]))
    assert summary.metric_name == "accuracy"
    assert summary.metric_value == pytest.approx(accuracy, abs=1e-12)
    # the lab takes trials[0]: the local service lists them best first, as AI Platform does
    assert float(step_output(record, BEST, "metric_value")) == float(
        summary.best_trial["metric_value"])
    assert float(step_output(record, BEST, "alpha")) == float(summary.best_trial["alpha"])


def test_the_summary_and_runs_list_recognise_the_steps(lab):
    home, result = lab
    record = only_run(home)
    assert [record.steps[name].role for name in (TUNE, TRAIN, SCORE, DEPLOY)] == [
        "tuning", "training", "evaluation", "deploy"]
    for text in ("Best trial: metric_value=", "Evaluation: accuracy ",
                 "vs threshold 0.5 -> passed", f"Deployed: {VERSION}"):
        assert text in result.stdout
    listed = covertype(home, "runs", "list").stdout
    row = next(line for line in listed.splitlines() if line.strip().startswith(record.run_id))
    assert "accuracy 0." in row and row.rstrip().endswith("lab_classifier v01")


def test_the_run_browser_recognises_the_steps(lab):
    home, _ = lab
    record = only_run(home)
    with EmulatorServer(home) as server:
        html = httpx.get(f"{server.url}/runs/{record.run_id}", timeout=30).text
    roles = dict(re.findall(r'<g id="node-([^"]+)" class="node status-succeeded role-(\w+)"',
                            html))
    assert {roles[name] for name in (TUNE, TRAIN, SCORE, DEPLOY)} == {
        "tuning", "training", "evaluation", "deploy"}
    assert roles[TUNE] == "tuning" and roles[DEPLOY] == "deploy" and roles[SCORE] == (
        "evaluation")
    assert re.findall(r'<tr id="trial-(\d+)"', html) == ["1", "2"]
    assert re.search(r'id="metric-vs-threshold">accuracy <b>0\.\d{4}</b> &gt; threshold 0.5',
                     html)
    assert f'id="deployed-version"><code>{VERSION}</code>' in html
