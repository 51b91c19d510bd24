"""Steps are recognised by what they run, not by their names.

What the DAG engine records of each step is checked on templates `dsl-compile`'s compiler
writes (0.2.5 GCP components, this project's Vertex AI ones, a lightweight step writing KFP's
metrics); the summary, `covertype runs list`/`show` and the run browser are checked on run
records as the runner writes them, with step names of someone else's pipeline.

Not `from __future__ import annotations`: kfp reads the components' return annotations.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import httpx
import kfp
import pytest
from kfp.components import create_component_from_func, load_component_from_file

from pipeline.local import records, roles
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import runs_dir
from pipeline.local.records import RunRecord, RunStore, StepRecord
from pipeline.local.summary import RunSummary
from pipeline.local.workflow import Workflow
from pipeline.settings import COMPONENTS_DIR

COVERTYPE = str(Path(sys.executable).with_name("covertype"))
VERSION = "projects/local/models/churn/versions/v7"


def _op(name: str):
    return load_component_from_file(str(COMPONENTS_DIR / name / "component.yaml"))


METRICS = "Metrics"  # KFP's type name of the metrics output


def assess(score: float) -> NamedTuple("Outputs", [("mlpipeline_metrics", METRICS)]):
    import json
    return (json.dumps({"metrics": [{"name": "auc", "numberValue": score}]}),)


def tidy(text: str) -> str:
    return text.strip()


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, dict]:
    query, train, deploy = _op("bigquery/query"), _op("ml_engine/train"), _op("ml_engine/deploy")
    vertex_tune = _op("vertex/hyperparameter_tuning_job")
    vertex_deploy = _op("vertex/deploy_model")
    assess_op = create_component_from_func(assess, base_image="python:3.11")
    tidy_op = create_component_from_func(tidy, base_image="python:3.11")

    @kfp.dsl.pipeline(name="someone else's")
    def foreign(project_id, settings):
        query(query="SELECT 1", project_id=project_id).set_display_name("make table")
        search = train(project_id=project_id, training_input=settings)
        train(project_id=project_id, args='["--epochs", "1"]')
        vertex_tune(project_id=project_id, region="us-central1", worker_image_uri="i",
                    args="[]", hypertune_settings=settings, base_output_directory="gs://b/d")
        vertex_deploy(model_uri="gs://b/m", project_id=project_id, region="us-central1",
                      model_id="m", version_id="v", serving_image_uri="s")
        deploy(model_uri=search.outputs["job_dir"], project_id=project_id)
        assess_op(0.9)
        tidy_op(" x ")

    path = tmp_path_factory.mktemp("recognition") / "foreign.yaml"
    kfp.compiler.Compiler().compile(foreign, str(path))
    return Workflow.load(path).templates


def test_the_component_and_role_of_each_template(templates):
    found = {name: (roles.component_of(template), roles.role_of(template,
                                                                 roles.component_of(template)))
             for name, template in templates.items() if "container" in template}
    assert found["bigquery-query"] == ("gcp/bigquery/query", "query")
    assert found["submitting-a-cloud-ml-training-job-as-a-pipeline-step"] == (
        "gcp/ml_engine/train", "training")  # tuning or not: the runner tells at run time
    assert found["submitting-a-cloud-ml-training-job-as-a-pipeline-step-2"] == (
        "gcp/ml_engine/train", "training")
    assert found["deploying-a-trained-model-to-cloud-machine-learning-engine"] == (
        "gcp/ml_engine/deploy", "deploy")
    assert found["vertex-ai-hyperparameter-tuning-job"] == (
        "vertex/hyperparameter_tuning_job", "tuning")
    assert found["vertex-ai-deploy-model"] == ("vertex/deploy_model", "deploy")
    assert found["assess"] == ("", "evaluation")
    assert found["tidy"] == ("", "")


@pytest.mark.parametrize(("arguments", "tuning"), [
    (["--training_input", '{"hyperparameters": {"goal": "MAXIMIZE"}}'], True),
    (["--training_input", "{'hyperparameters': {'goal': 'MAXIMIZE', 'x': True}}"], True),
    (["--training_input", '{"scaleTier": "BASIC"}'], False),
    (["--training_input", ""], False),
    (["--args", "[]"], False),
])
def test_the_runner_tells_tuning_from_training_by_the_resolved_input(arguments, tuning):
    assert roles.tunes(["--project_id", "p", *arguments]) is tuning


# Run records with someone else's step names ----------------------------------------------------
def _step(name: str, component: str, role: str, status: str = records.SUCCEEDED,
          **fields) -> StepRecord:
    return StepRecord(name=name, template=name, status=status, component=component, role=role,
                      start="2026-12-03T07:00:00.000Z", end="2026-12-03T07:00:05.000Z",
                      duration_s=5.0, attempts=1, **fields)


def _metrics(folder: Path, step: str, metrics: list[dict]) -> str:
    path = folder / "steps" / step / "root" / "tmp" / "outputs" / "mlpipeline_metrics" / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": metrics}))
    return str(path)


def _record(store: RunStore, run_id: str, deployed: bool, score: float,
            threshold: str = "0.8") -> RunRecord:
    folder = store.folder(run_id)
    metrics = _metrics(folder, "assess", [{"name": "f1", "numberValue": 0.5},
                                          {"name": "auc", "numberValue": score}])
    steps = [
        _step("search", "gcp/ml_engine/train", roles.TUNING,
              outputs={"search-job_id": "search_job"}),
        _step("fit", "gcp/ml_engine/train", roles.TRAINING),
        _step("assess", "", roles.EVALUATION, artifacts={"mlpipeline-metrics": metrics}),
        _step("deploy-model", "", "", outputs={"deploy-model-Output": "not a deployment"}),
        _step("ship-it", "gcp/ml_engine/deploy", roles.DEPLOY,
              status=records.SUCCEEDED if deployed else records.SKIPPED,
              outputs={"ship-it-version_name": VERSION} if deployed else {}),
    ]
    record = RunRecord(run_id, "churn", "p.yaml", {"evaluation_metric_name": "auc",
                                                   "evaluation_metric_threshold": threshold},
                       status=records.SUCCEEDED, start="2026-12-03T07:00:00.000Z",
                       duration_s=20.0, steps={step.name: step for step in steps})
    store.save(record)
    return record


@pytest.fixture
def runs(home) -> RunStore:
    store = RunStore(runs_dir(home))
    _record(store, "20261203-070000-aaaaaa", deployed=True, score=0.91)
    _record(store, "20261203-080000-bbbbbb", deployed=False, score=0.75)
    return store


def test_summary_finds_the_steps_by_role(runs):
    shipped = RunSummary.of(runs.load("20261203-070000-aaaaaa"))
    assert (shipped.deploy_step, shipped.evaluation_step, shipped.tuning_step) == (
        "ship-it", "assess", "search")
    assert shipped.deployed_version == VERSION and shipped.has_deploy
    assert (shipped.metric_name, shipped.metric_value) == ("auc", 0.91)  # from its metrics
    kept = RunSummary.of(runs.load("20261203-080000-bbbbbb"))
    assert kept.deployed_version is None
    assert kept.not_deployed_reason == "metric 0.7500 is not above the threshold 0.8"


def test_runs_list_and_show_say_what_was_deployed(home, runs):
    env = {**os.environ, "COVERTYPE_HOME": str(home)}
    listed = subprocess.run([COVERTYPE, "runs", "list"], env=env, capture_output=True,
                            text=True).stdout
    rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert "auc 0.9100" in rows["20261203-070000-aaaaaa"]
    assert rows["20261203-070000-aaaaaa"].rstrip().endswith("churn v7")
    assert rows["20261203-080000-bbbbbb"].rstrip().endswith("no")
    shown = subprocess.run([COVERTYPE, "runs", "show", "20261203-070000-aaaaaa"], env=env,
                           capture_output=True, text=True).stdout
    assert f"Deployed: {VERSION}" in shown and "Evaluation: auc 0.9100 vs threshold 0.8" in shown
    shown = subprocess.run([COVERTYPE, "runs", "show", "20261203-080000-bbbbbb"], env=env,
                           capture_output=True, text=True).stdout
    assert "Not deployed: metric 0.7500 is not above the threshold 0.8" in shown


def test_run_browser_labels_and_finds_them(home, runs):
    with EmulatorServer(home) as server:
        html = httpx.get(f"{server.url}/runs/20261203-070000-aaaaaa", timeout=10).text
        listing = httpx.get(server.url + "/", timeout=10).text
    nodes = dict(re.findall(r'<g id="node-([^"]+)" class="node status-\w+([^"]*)"', html))
    assert nodes == {"search": " role-tuning", "fit": " role-training",
                     "assess": " role-evaluation", "deploy-model": "", "ship-it": " role-deploy"}
    assert "<title>ship-it: Succeeded - deploy (gcp/ml_engine/deploy)</title>" in html
    assert ">deploy \u00b7 Succeeded \u00b7 5.0 s</text>" in html
    assert f'id="deployed-version"><code>{VERSION}</code>' in html
    assert re.search(r'id="metric-vs-threshold">auc <b>0.9100</b> &gt; threshold 0.8', html)
    assert '<tr id="metric-auc" class="best">' in html
    assert "Tuning job search_job: job search_job not found" in html  # found by its role
    assert f"<code>{VERSION}</code>" in listing.split('id="run-20261203-070000-aaaaaa"')[1]
