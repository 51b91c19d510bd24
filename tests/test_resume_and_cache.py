"""Never lose work: the step cache, and resuming a run killed with SIGKILL."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

from test_local_run import COVERTYPE, covertype

from pipeline.local.records import RunStore
from pipeline.local.summary import RunSummary
from pipeline.local.tuning_jobs import tuning_job

ROWS = "20000"
SPLIT_STEPS = {"create-splits-dataset", "create-training-split", "create-validation-split",
               "create-testing-split"}


def _runs(home: Path):
    return RunStore(home / "runs").list()


def test_step_cache_reuses_unchanged_steps_only(tmp_path, compiled_package):
    home = tmp_path / "home"
    run = ["run", "--local", "--package", str(compiled_package), "--rows", ROWS]
    assert covertype(home, *run).returncode == 0
    second = covertype(home, *run)
    assert second.returncode == 0, second.stderr
    record = _runs(home)[0]
    reused = {name for name, step in record.steps.items() if step.reused == "cache"}
    assert reused == SPLIT_STEPS  # the other steps' inputs hold the run id, as on KFP
    assert "reused from the step cache" in second.stdout
    uncached = covertype(home, *run, "--no-cache")
    assert uncached.returncode == 0
    assert not any(step.reused for step in _runs(home)[0].steps.values())
    changed = covertype(home, "run", "--local", "--package", str(compiled_package),
                       "--rows", "15000")  # a changed source table invalidates the splits
    assert changed.returncode == 0
    assert {name for name, step in _runs(home)[0].steps.items() if step.reused} == {
        "create-splits-dataset"}  # the DDL reads no table
    (home / "gcs/staging/datasets/testing/data.csv").unlink()  # a lost output is recomputed
    again = covertype(home, "run", "--local", "--package", str(compiled_package),
                      "--rows", "15000")
    assert again.returncode == 0
    steps = _runs(home)[0].steps
    assert steps["create-testing-split"].reused == ""
    assert steps["create-training-split"].reused == "cache"
    assert (home / "gcs/staging/datasets/testing/data.csv").is_file()


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _trial_running(home: Path) -> bool:
    runs = list((home / "runs").glob("*/run.json"))
    if not runs:
        return False
    try:
        steps = json.loads(runs[0].read_text())["steps"]
    except ValueError:
        return False
    return (steps["tune-hyperparameters"]["status"] == "Running"
            and any(home.glob("jobs/*/trial-1.log")))


def _processes_of(home: Path) -> list[int]:
    """Processes (trials, trainer zygotes, steps) still working for this local home."""
    marker = f"COVERTYPE_HOME={home}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(tmp_path, compiled_package):
    home = tmp_path / "home"
    args = [COVERTYPE, "run", "--local", "--package", str(compiled_package), "--rows", ROWS,
            "--no-cache"]
    runner = subprocess.Popen(args, env={**os.environ, "COVERTYPE_HOME": str(home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    _wait_for(lambda: _trial_running(home))
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    (record,) = _runs(home)
    assert record.status == "Interrupted"
    assert record.steps["tune-hyperparameters"].status == "Interrupted"
    assert f"covertype run --local --resume {record.run_id}" in record.message
    shown = covertype(home, "runs", "show", record.run_id)
    assert "Interrupted" in shown.stdout
    _wait_for(lambda: not _processes_of(home), timeout=10)  # trials died with the service
    for path in (home / "gcs").rglob("*"):  # nothing half-written is visible
        assert not path.name.startswith(".") and not path.name.endswith(".tmp"), path

    resumed = covertype(home, "run", "--local", "--resume", record.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = RunStore(home / "runs").load(record.run_id)
    assert record.status == "Succeeded" and record.resumes == 1
    assert {name for name, step in record.steps.items() if step.reused == "resume"} == SPLIT_STEPS
    assert covertype(home, "run", "--local", "--resume", record.run_id).returncode == 2

    fresh = covertype(home, "run", "--local", "--package", str(compiled_package), "--rows", ROWS,
                      "--no-cache", "--param", "version_id=v02")
    assert fresh.returncode == 0
    uninterrupted = _runs(home)[0]
    best = [RunSummary.of(run, tuning_job(run, home)[0]).best_trial
            for run in (record, uninterrupted)]
    assert best[0] and best[0] == best[1]
    assert RunSummary.of(record).metric_value == RunSummary.of(uninterrupted).metric_value
    model = pickle.loads((home / "registry/covertype_classifier/versions/v01/model.pkl")
                         .read_bytes())
    assert model.predict is not None
