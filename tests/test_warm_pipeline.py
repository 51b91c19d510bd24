"""The whole pipeline run warm (steps and trials forked from preloaded zygotes) and cold (every
process a new interpreter, `--cold`) gives byte-identical results: the split CSVs, every trial,
the model, the metrics, the deployed version's artifact."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import schema
from pipeline.local.records import RunStore
from pipeline.local.registry import Registry
from pipeline.local.warm import COLD_ENV

ROWS = "20000"
COVERTYPE = str(Path(sys.executable).with_name("covertype"))
# The library set each step forks from (condition-1 is a DAG, not a process).
WARM_STEPS = {"create-splits-dataset": "forked:bigquery",
              "create-training-split": "forked:bigquery",
              "create-validation-split": "forked:bigquery",
              "create-testing-split": "forked:bigquery",
              "tune-hyperparameters": "forked:google", "retrieve-best-run": "forked:google",
              "train-final-model": "forked:google", "evaluate-model": "forked:sklearn",
              "condition-1": "", "deploy-model": "forked:google"}


@pytest.fixture(scope="module")
def results(tmp_path_factory, compiled_package) -> dict[str, dict]:
    """What the same package produced warm and with --cold, one after the other in the same
    (emptied) home, as the tuning seed depends on the data paths, not on the run."""
    home = tmp_path_factory.mktemp("runs") / "home"
    environ = {key: value for key, value in os.environ.items() if key != COLD_ENV}
    found = {}
    for mode in ("warm", "cold"):
        shutil.rmtree(home, ignore_errors=True)
        result = subprocess.run(
            [COVERTYPE, "run", "--local", "--package", str(compiled_package), "--rows", ROWS,
             *(["--cold"] if mode == "cold" else [])],
            env={**environ, "COVERTYPE_HOME": str(home)}, capture_output=True, text=True,
            timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        found[mode] = _results(home)
    return found


def _results(home: Path) -> dict:
    (record,) = RunStore(home / "runs").list()
    jobs = {job["tuning"]: job for job in (json.loads(path.read_text())
                                          for path in (home / "jobs").glob("*/job.json"))}
    evaluation = record.steps["evaluate-model"].artifacts
    return {
        "steps": {name: step.process for name, step in record.steps.items()},
        "trial processes": {tuning: {detail["process"] for detail in job["trialDetails"].values()}
                            for tuning, job in jobs.items()},
        "splits": {split: (home / f"gcs/staging/datasets/{split}/data.csv").read_bytes()
                   for split in schema.SPLIT_LOTS},
        "trials": [(trial["values"], trial["metric"]) for trial in jobs[True]["trials"]],
        "model": (home / "gcs/staging/jobdir" / record.run_id / "model.pkl").read_bytes(),
        "metrics": {name: Path(evaluation[name]).read_bytes()
                    for name in ("mlpipeline-metrics", "mlpipeline-ui-metadata")},
        # Every output parameter, the run id made neutral; job ids (random, as on AI
        # Platform) left out.
        "outputs": {name: {key: value.replace(record.run_id, "<run>")
                           for key, value in step.outputs.items() if not key.endswith("job_id")}
                    for name, step in record.steps.items()},
        "deployed": Registry(home / "registry").resolve("covertype_classifier")[1].read_bytes(),
    }


def test_steps_and_trials_fork_warm_and_start_cold_with_the_switch(results):
    warm, cold = results["warm"], results["cold"]

    assert warm["steps"] == WARM_STEPS
    assert cold["steps"] == {name: "new" if process else "" for name, process in
                             WARM_STEPS.items()}
    assert warm["trial processes"] == {True: {"forked:sklearn"}, False: {"forked:sklearn"}}
    assert cold["trial processes"] == {True: {"new"}, False: {"new"}}


@pytest.mark.parametrize("what", ["splits", "trials", "model", "metrics", "outputs",
                                  "deployed"])
def test_both_paths_give_byte_identical_results(results, what):
    assert results["warm"][what] == results["cold"][what]


def test_the_deployed_artifact_is_the_trained_model(results):
    assert len(results["warm"]["trials"]) == 6
    assert results["warm"]["deployed"] == results["warm"]["model"]
