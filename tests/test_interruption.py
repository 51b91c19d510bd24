"""Interruption: Ctrl-C and SIGTERM stop a run in order; kill -9 at any moment, then --resume,
ends with the same model and metric as an uninterrupted run.

Kill moments are chosen by watching the run's own record (run.json step states), plus a
seeded random delay, never by wall-clock guesses about how long a step takes.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import pickle
import pty
import random
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
from test_local_run import COVERTYPE, covertype

from pipeline.local.records import RunRecord, RunStore
from pipeline.local.registry import Registry
from pipeline.local.summary import RunSummary
from pipeline.local.training import render_job
from pipeline.local.tuning_jobs import tuning_job

ROWS = "20000"
QUICK = ["--param", "hypertune_settings=" + json.dumps({"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 4, "maxParallelTrials": 2,
    "hyperparameterMetricTag": "accuracy",
    "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500, 1000]},
               {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"}]}})]
KILL_STEPS = ("create-training-split", "tune-hyperparameters", "train-final-model",
              "evaluate-model", "deploy-model")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_args(package: Path, *extra: str) -> list[str]:
    return [COVERTYPE, "run", "--local", "--package", str(package), "--rows", ROWS, *QUICK,
            *extra]


def _start(home: Path, args: list[str], env: dict | None = None,
           **options) -> subprocess.Popen:
    """The runner in its own session, so signalling its group spares pytest."""
    environ = {**os.environ, "COVERTYPE_HOME": str(home), **(env or {})}
    return subprocess.Popen(args, env=environ, start_new_session=True, **options)


def _runs(home: Path) -> list[RunRecord]:
    return RunStore(home / "runs").list()


def _step_states(home: Path) -> dict[str, str]:
    """Step states of the newest run as its runner last wrote them ({} before it exists)."""
    paths = sorted((home / "runs").glob("*/run.json"))
    if not paths:
        return {}
    try:
        steps = json.loads(paths[-1].read_text())["steps"]
    except (OSError, ValueError):
        return {}
    return {name: step["status"] for name, step in steps.items()}


def _wait_for(predicate, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _processes_of(home: Path) -> list[int]:
    """Processes (steps, trials, trainer zygotes, runner) still working for this home."""
    marker = f"COVERTYPE_HOME={home}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _assert_no_partial_files(home: Path) -> None:
    """Every file under a real name is whole (temporary names are hidden)."""
    for path in (home / "gcs").rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".csv":
            text = path.read_text()
            assert text.endswith("\n"), path
            assert {len(row) for row in csv.reader(text.splitlines())} == {13}, path
        elif path.suffix == ".pkl":
            pickle.loads(path.read_bytes())


def _model_bytes(home: Path, record: RunRecord) -> bytes:
    return (home / "gcs/staging/jobdir" / record.run_id / "model.pkl").read_bytes()


def test_ctrl_c_stops_the_whole_run_and_says_how_to_resume(tmp_path, compiled_package):
    """SIGINT to the process group, as a terminal sends it, with the live table on a tty."""
    home = tmp_path / "home"
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    runner = _start(home, _run_args(compiled_package), stdout=secondary,
                    stderr=subprocess.PIPE, env={"COLUMNS": "200", "TERM": "xterm"})
    os.close(secondary)
    screen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the runner closed the terminal
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    _wait_for(lambda: _step_states(home).get("tune-hyperparameters") == "Running"
              and any(home.glob("jobs/*/trial-1.log")))
    os.killpg(runner.pid, signal.SIGINT)
    stopped = time.monotonic()
    stderr = runner.communicate(timeout=60)[1].decode()
    reader.join(10)
    os.close(primary)
    _wait_for(lambda: not _processes_of(home), timeout=30)
    print(f"every process ended {time.monotonic() - stopped:.1f} s after Ctrl-C")

    assert runner.returncode == 130
    text = ANSI.sub("", screen.decode(errors="replace")).replace("\r", "\n")
    assert "Traceback" not in text + stderr and "^^^" not in text, text + stderr
    (record,) = _runs(home)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[-1] == ("Interrupted by Ctrl-C (SIGINT). Continue with: "
                         f"covertype run --local --resume {record.run_id}")
    assert record.status == "Interrupted"
    assert record.message.startswith("interrupted by Ctrl-C (SIGINT); continue with: ")
    tune = record.steps["tune-hyperparameters"]
    assert (tune.status, tune.message) == ("Interrupted", "interrupted by Ctrl-C (SIGINT)")
    assert {record.steps[name].status for name in ("evaluate-model", "deploy-model")} == {
        "Omitted"}
    (job,) = [render_job(json.loads(path.read_text())) for path in home.glob("jobs/*/job.json")]
    assert job["state"] == "FAILED" and "interrupted" in job["errorMessage"]
    shown = covertype(home, "runs", "show", record.run_id)
    assert shown.returncode == 0 and "interrupted by Ctrl-C (SIGINT)" in shown.stdout

    resumed = covertype(home, "run", "--local", "--resume", record.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = RunStore(home / "runs").load(record.run_id)
    assert record.status == "Succeeded" and record.resumes == 1
    assert record.steps["create-training-split"].reused == "resume"
    assert covertype(home, "run", "--local", "--resume", record.run_id).returncode == 2


def test_sigterm_stops_the_run_and_resume_refuses_overwritten_outputs(tmp_path,
                                                                      compiled_package):
    """SIGTERM to the runner alone: it stops its own steps. Then another run rewrites the
    split files, and resuming the first run would mix two tables: refused."""
    home = tmp_path / "home"
    runner = _start(home, _run_args(compiled_package, "--no-cache"), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _step_states(home).get("tune-hyperparameters") == "Running")
    runner.send_signal(signal.SIGTERM)
    stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 143, stdout + stderr
    assert "Traceback" not in stdout + stderr
    (record,) = _runs(home)
    assert stdout.strip().splitlines()[-1] == (
        f"Interrupted by SIGTERM. Continue with: covertype run --local --resume {record.run_id}")
    assert record.status == "Interrupted"
    # Signalled in the first milliseconds of the tuning step, whose process forked from a
    # zygote may not lead its group yet: the stop must still reach it.
    assert record.steps["tune-hyperparameters"].message == "interrupted by SIGTERM"
    assert {record.steps[name].status for name in ("evaluate-model", "deploy-model")} == {
        "Omitted"}
    _wait_for(lambda: not _processes_of(home), timeout=30)

    other = covertype(home, "run", "--local", "--package", str(compiled_package), *QUICK,
                      "--rows", "15000", "--param", "evaluation_metric_threshold=1.0")
    assert other.returncode == 0, other.stdout + other.stderr
    refused = covertype(home, "run", "--local", "--resume", record.run_id)
    assert refused.returncode == 2
    assert re.fullmatch(
        rf"covertype: error: cannot resume run {record.run_id}: \S+/datasets/\w+/data\.csv, an "
        r"output of its step create-\w+-split, has changed since \(another run wrote it\); "
        r"start a new run", refused.stderr.strip())
    assert RunStore(home / "runs").load(record.run_id).status == "Interrupted"


def test_kill_9_at_random_moments_then_resume_ends_like_an_uninterrupted_run(
        tmp_path, compiled_package):
    """One run killed five times: in a split, in tuning, in training, in evaluation and in
    deployment, each time at a seeded random delay after the step started, each kill followed
    by a resume that the next kill cuts short, the last one ending the run. Every step's
    outputs, whichever resume made them, must equal those of an uninterrupted run."""
    home = tmp_path / "home"
    reference = covertype(home, *_run_args(compiled_package, "--no-cache")[1:])
    assert reference.returncode == 0, reference.stdout + reference.stderr
    (uninterrupted,) = _runs(home)
    expected_model = _model_bytes(home, uninterrupted)
    expected = RunSummary.of(uninterrupted, tuning_job(uninterrupted, home)[0])
    assert expected.deployed_version and expected.best_trial

    delays = random.Random(20261203)
    command = _run_args(compiled_package, "--no-cache")
    run_id = ""
    for resumes, step in enumerate(KILL_STEPS):
        runner = _start(home, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda step=step, resumes=resumes: _running(home, step, resumes))
        time.sleep(delays.uniform(0, 0.2))
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        record = _runs(home)[0]
        run_id = run_id or record.run_id
        assert (record.run_id, record.status, record.resumes) == (
            run_id, "Interrupted", resumes), step
        assert f"covertype run --local --resume {run_id}" in record.message
        _wait_for(lambda: not _processes_of(home), timeout=30)  # steps and trials died too
        _assert_no_partial_files(home)
        command = [COVERTYPE, "run", "--local", "--resume", run_id, "--no-cache"]

    resumed = covertype(home, *command[1:])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = RunStore(home / "runs").load(run_id)
    assert record.status == "Succeeded" and record.resumes == len(KILL_STEPS)
    summary = RunSummary.of(record, tuning_job(record, home)[0])
    assert (summary.best_trial, summary.metric_value) == (expected.best_trial,
                                                          expected.metric_value)
    assert {name: step.files for name, step in record.steps.items()} == {
        name: step.files for name, step in uninterrupted.steps.items()}  # the split files
    assert _model_bytes(home, record) == expected_model
    _, deployed = Registry(home / "registry").resolve("covertype_classifier")
    assert deployed.read_bytes() == expected_model


def _running(home: Path, step: str, resumes: int) -> bool:
    """Whether the newest run, resumed `resumes` times, is running `step`."""
    paths = sorted((home / "runs").glob("*/run.json"))
    try:
        record = json.loads(paths[-1].read_text()) if paths else {}
    except (OSError, ValueError):
        return False
    return (record.get("resumes") == resumes and record.get("status") == "Running"
            and record["steps"][step]["status"] == "Running")


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    """Whatever a test ends with, it leaves no process of its home behind."""
    yield
    for pid in _processes_of(tmp_path / "home"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
