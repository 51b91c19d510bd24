"""`covertype run --local` end to end on real rows: compiled package, stand-ins, gate."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sklearn.metrics import accuracy_score

from pipeline import schema
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.records import RunRecord, RunStore
from pipeline.local.registry import Registry
from pipeline.local.summary import RunSummary
from pipeline.local.training import render_job
from pipeline.local.tuning_jobs import tuning_job

ROWS = "20000"
COVERTYPE = str(Path(sys.executable).with_name("covertype"))


def covertype(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "COVERTYPE_HOME": str(home), **(env or {})}
    return subprocess.run([COVERTYPE, *args], env=environ, capture_output=True, text=True,
                          timeout=600)


def only_run(home: Path) -> RunRecord:
    runs = RunStore(home / "runs").list()
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, compiled_package) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("home")
    result = covertype(home, "run", "--local", "--package", str(compiled_package),
                       "--rows", ROWS)
    return home, result


def test_end_to_end_deploys_a_model_that_scores_as_evaluated(deployed):
    home, result = deployed
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_run(home)
    assert record.status == "Succeeded"
    assert {step.status for step in record.steps.values()} == {"Succeeded"}
    summary = RunSummary.of(record)
    assert summary.deployed_version == "projects/local/models/covertype_classifier/versions/v01"
    for text in (record.run_id, "Best trial: metric_value=", "Evaluation: accuracy",
                 "Deployed: projects/local/models/covertype_classifier/versions/v01",
                 f"Run folder: {home / 'runs' / record.run_id}"):
        assert text in result.stdout
    _, artifact = Registry(home / "registry").resolve("covertype_classifier")
    model = pickle.loads(artifact.read_bytes())
    test_split = schema.read_dataset(str(home / "gcs/staging/datasets/testing/data.csv"))
    predictions = model.predict(test_split[list(schema.FEATURE_COLUMNS)])
    accuracy = accuracy_score(test_split[schema.LABEL_COLUMN], predictions)
    assert accuracy == pytest.approx(summary.metric_value, abs=1e-12)
    assert 0.65 < accuracy < 0.8


def test_run_record_and_artifacts(deployed):
    home, _ = deployed
    record = only_run(home)
    folder = home / "runs" / record.run_id
    assert (folder / "pipeline.yaml").is_file()
    assert record.parameters["project_id"] == "local"
    assert record.parameters["gcs_root"] == str(home / "gcs" / "staging")
    for step in record.steps.values():
        if step.name != "condition-1":
            assert (folder / step.log).is_file(), step.name
            assert step.duration_s > 0 and step.start and step.end
    sizes = {split: sum(1 for _ in open(home / f"gcs/staging/datasets/{split}/data.csv")) - 1
             for split in schema.SPLIT_LOTS}
    assert 0.37 < sizes["training"] / int(ROWS) < 0.43
    assert 0.08 < sizes["validation"] / int(ROWS) < 0.12
    assert 0.08 < sizes["testing"] / int(ROWS) < 0.12
    metadata = json.loads(Path(record.steps["evaluate-model"].artifacts[
        "mlpipeline-ui-metadata"]).read_text())
    assert {output["type"] for output in metadata["outputs"]} == {"confusion_matrix", "table"}
    job = render_job(json.loads((home / "jobs" / record.steps["tune-hyperparameters"].outputs[
        "tune-hyperparameters-job_id"] / "job.json").read_text()))
    trials = job["trainingOutput"]["trials"]
    assert len(trials) == 6 and job["state"] == "SUCCEEDED"
    best = max(trials, key=lambda trial: trial["finalMetric"]["objectiveValue"])
    summary = RunSummary.of(record, tuning_job(record, home)[0])  # the CLI's summary
    assert float(summary.best_trial["alpha"]) == float(best["hyperparameters"]["alpha"])
    assert float(summary.best_trial["metric_value"]) == best["finalMetric"]["objectiveValue"]


def test_runs_list_and_show(deployed):
    home, _ = deployed
    record = only_run(home)
    listed = covertype(home, "runs", "list")
    assert listed.returncode == 0 and record.run_id in listed.stdout
    assert "covertype_classifier" in listed.stdout
    shown = covertype(home, "runs", "show", record.run_id)
    assert shown.returncode == 0
    assert "evaluation_metric_threshold = 0.69" in shown.stdout
    missing = covertype(home, "runs", "show", "nope")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"covertype: error: no run 'nope' under {home / 'runs'}; "
        "list runs with `covertype runs list`"]


def test_run_browser_renders_the_real_run(deployed, monkeypatch):
    """The run page of the run above, over real HTTP: its steps, its trials, its metric."""
    home, _ = deployed
    record = only_run(home)
    job_id = record.steps["tune-hyperparameters"].outputs["tune-hyperparameters-job_id"]
    job = render_job(json.loads((home / "jobs" / job_id / "job.json").read_text()))
    trials = job["trainingOutput"]["trials"]
    best = max(trials, key=lambda trial: trial["finalMetric"]["objectiveValue"])
    metric = float(record.steps["evaluate-model"].outputs["evaluate-model-metric_value"])
    monkeypatch.setenv("COVERTYPE_HOME", str(home))
    with EmulatorServer(home=home) as server:
        page = httpx.get(f"{server.url}/runs/{record.run_id}", timeout=30)
        listing = httpx.get(f"{server.url}/", timeout=30)
    assert page.status_code == listing.status_code == 200
    html = page.text
    nodes = dict(re.findall(r'<g id="node-([^"]+)" class="node status-(\w+)[^"]*"', html))
    assert nodes == {name: "succeeded" for name in record.steps}
    assert set(re.findall(r'<tr id="step-([^"]+)"', html)) == set(record.steps)
    assert sorted(re.findall(r'<tr id="trial-(\d+)"', html), key=int) == sorted(
        (trial["trialId"] for trial in trials), key=int)
    assert len(trials) == 6
    assert f'<tr id="trial-{best["trialId"]}" class="best">' in html
    assert re.search(rf'id="metric-vs-threshold">accuracy <b>{metric:.4f}</b> &gt; threshold '
                     r"0\.69", html)
    assert ('id="deployed-version"><code>projects/local/models/covertype_classifier/versions/'
            "v01</code>") in html
    assert f'href="/runs/{record.run_id}"' in listing.text


def test_gate_keeps_a_model_below_the_threshold_out(deployed, compiled_package):
    home, _ = deployed
    registry = Registry(home / "registry")
    before = registry.list_versions("covertype_classifier")
    result = covertype(home, "run", "--local", "--package", str(compiled_package), "--rows", ROWS,
                       "--param", "evaluation_metric_threshold=0.99", "--param", "version_id=v09")
    assert result.returncode == 0, result.stdout + result.stderr
    record = RunStore(home / "runs").list()[0]
    assert record.status == "Succeeded"
    assert record.steps["deploy-model"].status == "Skipped"
    assert record.steps["condition-1"].message.startswith("when '0.")
    assert "Not deployed: metric" in result.stdout and "threshold 0.99" in result.stdout
    assert registry.list_versions("covertype_classifier") == before


@pytest.mark.parametrize("args, message", [
    (["--param", "nope=1"], "unknown pipeline parameter 'nope'"),
    (["--param", "novalue"], "--param 'novalue' is not NAME=VALUE"),
    (["--rows", "0"], "--rows '0' is not a row count"),
    (["--package", "/nonexistent.yaml"], "no such pipeline package"),
])
def test_bad_run_arguments_change_nothing(tmp_path, compiled_package, args, message):
    home = tmp_path / "home"
    if "--package" not in args:
        args = ["--package", str(compiled_package), *args]
    result = covertype(home, "run", "--local", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
    assert not (home / "warehouse.duckdb").exists()
