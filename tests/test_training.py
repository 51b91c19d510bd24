"""Local AI Platform Training over real HTTP: the emulator, the real ml v1 client, real trials.

Trials run the real trainer (trainer_image/train.py) on 2,000/500 rows of the bundled data.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from googleapiclient.errors import HttpError

from pipeline.hypertune import HypertuneSpecError, parse_spec
from pipeline.local.actions.train import train
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import jobs_dir, storage_root
from pipeline.local.launcher import parse_inputs
from pipeline.local.tuning import Tuner, seed_for
from pipeline.ml_client import EMULATOR_HOST_ENV, ml_service

PROJECT = "local"
IMAGE = "gcr.io/local/trainer_image:latest"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    """One emulator over a fresh home for the module: (ml v1 client, home)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home=home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(EMULATOR_HOST_ENV, server.url)
        yield ml_service(), home


def _jobdir(home: Path) -> Path:
    """Where the tests' jobs write, in the home's storage (a jobDir must lie there)."""
    return storage_root(home) / "jobdir"


def _job(job_id: str, datasets: tuple[str, str], job_dir: Path, hyperparameters: dict | None,
         hptune: bool = True) -> dict:
    training_input = {
        "masterConfig": {"imageUri": IMAGE},
        "args": ["--training_dataset_path", datasets[0], "--validation_dataset_path",
                 datasets[1], "--hptune", str(hptune)],
        "jobDir": str(job_dir),
    }
    if hyperparameters is not None:
        training_input["hyperparameters"] = hyperparameters
    return {"jobId": job_id, "trainingInput": training_input}


def _hyper(*params: dict, **fields: object) -> dict:
    return {"goal": "MAXIMIZE", "hyperparameterMetricTag": "accuracy", "params": list(params),
            **fields}


MAX_ITER = {"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [5, 10]}
ALPHA = {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001, "maxValue": 0.001,
         "scaleType": "UNIT_LOG_SCALE"}


def _create(ml: object, body: dict) -> dict:
    return ml.projects().jobs().create(parent=f"projects/{PROJECT}", body=body).execute()


def _get(ml: object, job_id: str) -> dict:
    return ml.projects().jobs().get(name=f"projects/{PROJECT}/jobs/{job_id}").execute()


def _wait(ml: object, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := _get(ml, job_id))["state"] not in TERMINAL:
        assert time.monotonic() < deadline, f"{job_id} still {job['state']}"
        time.sleep(0.1)
    return job


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _max_overlap(trials: list[dict]) -> int:
    """The most trials observed running at once, from their start and end times."""
    edges = sorted([(_time(t["startTime"]), 1) for t in trials]
                   + [(_time(t["endTime"]), -1) for t in trials])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _run_tuning(ml: object, home: Path, job_id: str, datasets: tuple[str, str],
                hyperparameters: dict) -> dict:
    job = _create(ml, _job(job_id, datasets, _jobdir(home) / job_id, hyperparameters))
    assert job["state"] == "QUEUED" and job["jobId"] == job_id
    return _wait(ml, job_id)


def _check_tuning_output(job: dict, trials: int, parallel: int, goal: str = "MAXIMIZE") -> None:
    assert job["state"] == "SUCCEEDED", job.get("errorMessage")
    assert _time(job["createTime"]) <= _time(job["startTime"]) <= _time(job["endTime"])
    output = job["trainingOutput"]
    assert output["isHyperparameterTuningJob"] is True
    assert output["hyperparameterMetricTag"] == "accuracy"
    assert output["completedTrialCount"] == str(trials)
    assert output["consumedMLUnits"] > 0
    assert sorted(t["trialId"] for t in output["trials"]) == [str(i) for i in range(1, trials + 1)]
    for trial in output["trials"]:
        assert set(trial) == {"trialId", "hyperparameters", "finalMetric", "state", "startTime",
                              "endTime", "isTrialStoppedEarly"}
        assert trial["state"] == "SUCCEEDED" and trial["finalMetric"]["trainingStep"].isdigit()
        assert 0 < trial["finalMetric"]["objectiveValue"] <= 1
    assert _max_overlap(output["trials"]) == parallel
    values = [t["finalMetric"]["objectiveValue"] for t in output["trials"]]
    assert values == sorted(values, reverse=goal == "MAXIMIZE")  # best trial first by goal


def test_bayesian_search_runs_trials_in_parallel(emulator, datasets) -> None:
    ml, home = emulator
    job = _run_tuning(ml, home, "bayes", datasets,
                      _hyper(MAX_ITER, ALPHA, maxTrials=4, maxParallelTrials=2))
    _check_tuning_output(job, trials=4, parallel=2)
    for trial in job["trainingOutput"]["trials"]:
        assert trial["hyperparameters"]["max_iter"] in ("5", "10")
        assert 0.0001 <= float(trial["hyperparameters"]["alpha"]) <= 0.001
    folder = jobs_dir(home) / "bayes"
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["state"] for e in events if e["event"] == "job_state"] == [
        "PREPARING", "RUNNING", "SUCCEEDED"]
    assert sum(e["event"] == "trial_finished" for e in events) == 4
    metric_line = json.loads((folder / "trial-3.metrics").read_text().splitlines()[-1])
    assert metric_line["trial"] == "3"  # CLOUD_ML_TRIAL_ID reached the trainer


def test_grid_search_caps_the_grid_at_max_trials(emulator, datasets) -> None:
    ml, home = emulator
    alphas = {"parameterName": "alpha", "type": "DISCRETE", "discreteValues": [0.0001, 0.001]}
    job = _run_tuning(ml, home, "grid", datasets, _hyper(
        MAX_ITER, alphas, algorithm="GRID_SEARCH", maxTrials=3, maxParallelTrials=3))
    _check_tuning_output(job, trials=3, parallel=3)
    points = {tuple(sorted(t["hyperparameters"].items())) for t in job["trainingOutput"]["trials"]}
    assert len(points) == 3 and points <= {
        (("alpha", a), ("max_iter", m)) for a in ("0.0001", "0.001") for m in ("5", "10")}


def test_random_search_minimize_lists_the_lowest_first(emulator, datasets) -> None:
    ml, home = emulator
    job = _run_tuning(ml, home, "random", datasets, _hyper(
        MAX_ITER, ALPHA, goal="MINIMIZE", algorithm="RANDOM_SEARCH", maxTrials=3,
        maxParallelTrials=2))
    _check_tuning_output(job, trials=3, parallel=2, goal="MINIMIZE")


def test_plain_job_runs_the_trainer_once(emulator, datasets) -> None:
    ml, home = emulator
    job_dir = _jobdir(home) / "plain"
    _create(ml, _job("plain", datasets, job_dir, None, hptune=False))
    job = _wait(ml, "plain")
    assert job["state"] == "SUCCEEDED", job.get("errorMessage")
    assert set(job["trainingOutput"]) == {"consumedMLUnits"}
    assert (job_dir / "model.pkl").stat().st_size > 0
    assert "saved" in (jobs_dir(home) / "plain" / "master.log").read_text()


def test_crashing_trial_fails_alone_and_tuning_goes_on(emulator, datasets) -> None:
    ml, home = emulator
    alphas = {"parameterName": "alpha", "type": "DISCRETE", "discreteValues": [-1, 0.0001]}
    job = _run_tuning(ml, home, "crash", datasets, _hyper(
        alphas, algorithm="GRID_SEARCH", maxTrials=2, maxParallelTrials=2))
    assert job["state"] == "SUCCEEDED"
    output = job["trainingOutput"]
    assert output["completedTrialCount"] == "1"
    good, bad = output["trials"]  # succeeded trials come first
    assert good["state"] == "SUCCEEDED" and bad["state"] == "FAILED"
    assert bad["hyperparameters"] == {"alpha": "-1"} and "finalMetric" not in bad
    record = json.loads((jobs_dir(home) / "crash" / "job.json").read_text())
    details = record["trialDetails"][bad["trialId"]]
    assert details["exitCode"] == 1
    assert "--alpha=-1 must be a finite number > 0" in details["logTail"]
    assert "exited with status 1" in details["error"]
    assert "--alpha=-1" in Path(details["logFile"]).read_text()


def test_job_fails_once_max_failed_trials_is_reached(emulator, datasets) -> None:
    ml, home = emulator
    alphas = {"parameterName": "alpha", "type": "DISCRETE", "discreteValues": [-3, -2, -1]}
    job = _run_tuning(ml, home, "maxfailed", datasets, _hyper(
        alphas, algorithm="GRID_SEARCH", maxTrials=3, maxFailedTrials=2))
    assert job["state"] == "FAILED"
    assert "2 trials failed, reaching maxFailedTrials=2" in job["errorMessage"]
    assert "\n" not in job["errorMessage"]
    assert [t["state"] for t in job["trainingOutput"]["trials"]] == ["FAILED", "FAILED"]


def test_trials_without_the_metric_fail_the_job(emulator, datasets) -> None:
    ml, home = emulator
    body = _job("nometric", datasets, _jobdir(home) / "nometric", _hyper(MAX_ITER),
                hptune=False)
    _create(ml, body)
    job = _wait(ml, "nometric")
    assert job["state"] == "FAILED"
    assert job["errorMessage"].startswith("all 1 trials failed; last trial 1: reported no finite")


def _train(**flags: str) -> dict[str, str]:
    """The train action called as the launcher calls it: each flag's text parsed by fire."""
    return train(**parse_inputs(flags))


def test_train_action_end_to_end(emulator, datasets, monkeypatch, capsys) -> None:
    ml, home = emulator
    monkeypatch.setenv("KFP_POD_NAME", "covertype-run-abc12-3456")
    inputs = {
        "project_id": PROJECT,
        "args": json.dumps(_job("x", datasets, home, None)["trainingInput"]["args"]),
        "job_dir": str(_jobdir(home) / "action"),
        "master_image_uri": IMAGE,
        # a Python literal, as the lab writes its settings: the launcher's fire reads it
        "training_input": repr({"hyperparameters": _hyper(
            MAX_ITER, maxTrials=2, maxParallelTrials=2, enableTrialEarlyStopping=True)}),
        "job_id_prefix": "hypertune_",
        "wait_interval": "30",
    }
    started = time.monotonic()
    outputs = _train(**inputs)
    assert time.monotonic() - started < 20  # polled every 0.1 s, not every 30 s
    assert outputs == {"job_id": outputs["job_id"], "job_dir": inputs["job_dir"]}
    assert outputs["job_id"].startswith("hypertune_") and len(outputs["job_id"]) == 26
    job = _get(ml, outputs["job_id"])
    assert job["trainingInput"]["masterConfig"] == {"imageUri": IMAGE}
    assert job["trainingInput"]["hyperparameters"]["enableTrialEarlyStopping"] is True
    assert job["trainingOutput"]["completedTrialCount"] == "2"
    printed = capsys.readouterr().out
    assert "trial 1 " in printed and "-> accuracy=" in printed  # RUNNING may end before a poll
    assert _train(**inputs) == outputs  # a retried step finds its own job (HTTP 409)
    assert "was submitted before" in capsys.readouterr().out


def test_train_action_cancels_its_job_on_sigterm(emulator, datasets) -> None:
    ml, home = emulator
    inputs = {"project_id": PROJECT, "master_image_uri": IMAGE, "job_id_prefix": "sigterm_",
              "args": json.dumps(_job("x", datasets, home, None)["trainingInput"]["args"]),
              "job_dir": str(_jobdir(home) / "sigterm"), "training_input": json.dumps(
                  {"hyperparameters": _hyper(MAX_ITER, maxTrials=2)})}
    code = ("from pipeline.local.actions.train import train; "
            "from pipeline.local.launcher import parse_inputs; "
            f"train(**parse_inputs({inputs!r}))")
    env = {**os.environ, "KFP_POD_NAME": "covertype-run-sigterm"}
    step = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert step.stdout.readline().startswith("submitted training job sigterm_")
    step.terminate()
    printed = step.communicate(timeout=30)[0]
    assert "interrupted: cancelling" in printed, printed
    assert step.returncode == 128 + signal.SIGTERM
    job_id = next(path.name for path in jobs_dir(home).iterdir()
                  if path.name.startswith("sigterm_"))
    assert _wait(ml, job_id, timeout=10)["state"] == "CANCELLED", printed


def test_train_action_errors(emulator, datasets, monkeypatch) -> None:
    ml, home = emulator
    monkeypatch.setenv("KFP_POD_NAME", "covertype-run-fail-1")
    before = sorted(jobs_dir(home).iterdir())
    with pytest.raises(ValueError, match="training_input is neither JSON nor a Python literal"):
        _train(project_id=PROJECT, training_input='{"hyperparameters": }')
    with pytest.raises(ValueError, match=r"args\[1\] is 3, not a string"):
        _train(project_id=PROJECT, args='["--alpha", 3]')
    with pytest.raises(ValueError, match="args is not a list once the launcher has parsed it"):
        _train(project_id=PROJECT, args="--alpha 3")
    with pytest.raises(ValueError, match="job_id_prefix is a number once the launcher"):
        _train(project_id=PROJECT, job_id_prefix="2024")
    with pytest.raises(ValueError, match="refused: trainingInput.masterConfig.imageUri is requ"):
        _train(project_id=PROJECT, args='["--alpha", "3"]')
    assert sorted(jobs_dir(home).iterdir()) == before
    args = _job("x", datasets, home, None, hptune=False)["trainingInput"]["args"]
    with pytest.raises(RuntimeError, match=r"failed with state FAILED\. Error: The replica "
                                           r"master exited .* --alpha=-1 must be"):
        _train(project_id=PROJECT, args=json.dumps([*args, "--alpha=-1"]),
               master_image_uri=IMAGE, job_dir=str(_jobdir(home) / "action_fail"))


BAD_HYPERPARAMETERS = [
    (_hyper(ALPHA, maxTrials=2, maxParallelTrials=3), "maxParallelTrials (3) exceeds maxTrials"),
    (_hyper({**ALPHA, "minValue": 0.1, "maxValue": 0.01}), "minValue 0.1 > maxValue 0.01"),
    (_hyper(ALPHA, algorithm="GRID_SEARCH"), "GRID_SEARCH cannot search DOUBLE parameter"),
    (_hyper({**ALPHA, "type": "FLOAT"}), "has type 'FLOAT'"),
    (_hyper({**ALPHA, "scaleType": "UNIT_EXP_SCALE"}), "has scaleType 'UNIT_EXP_SCALE'"),
    (_hyper(ALPHA, algorithm="ANNEALING"), "algorithm 'ANNEALING' is unknown"),
    (_hyper(ALPHA, goal="BEST"), "goal is 'BEST'; set it to MAXIMIZE or MINIMIZE"),
    (_hyper({**ALPHA, "minValue": 0}), "log scales need minValue > 0"),
    (_hyper({"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.1}),
     "needs numeric minValue and maxValue"),
    (_hyper({"parameterName": "max_iter", "type": "DISCRETE"}), "needs discreteValues"),
    (_hyper({"parameterName": "loss", "type": "CATEGORICAL"}), "needs categoricalValues"),
    (_hyper(ALPHA, ALPHA), "names 'alpha' twice"),
    (_hyper(), "params is missing or empty"),
]


@pytest.mark.parametrize(("hyperparameters", "message"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_http_400(emulator, datasets, hyperparameters, message) -> None:
    ml, home = emulator
    with pytest.raises(HttpError) as raised:
        _create(ml, _job("refused", datasets, _jobdir(home) / "refused", hyperparameters))
    error = json.loads(raised.value.content)["error"]
    assert (raised.value.resp.status, error["code"], error["status"]) == (
        400, 400, "INVALID_ARGUMENT")
    assert message in error["message"] and "\n" not in error["message"]
    assert not (jobs_dir(home) / "refused").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"jobId": "1job"}, "jobId '1job' is invalid"),
    ({"trainingInput": {"pythonModule": "trainer.task"}}, "pythonModule (package) jobs are not"),
    ({"trainingInput": {"args": []}}, "trainingInput.masterConfig.imageUri is required"),
    ({"trainingInput": {"goal": "MAXIMIZE"}}, "unknown field 'goal' in job.trainingInput"),
    ({"trainingInput": {"masterConfig": {"imageUri": IMAGE}, "args": "--a 1"}},
     "args must be a list of strings"),
])
def test_bad_jobs_are_http_400(emulator, datasets, change, message) -> None:
    ml, home = emulator
    body = {**_job("refused", datasets, home, None), **change}
    with pytest.raises(HttpError) as raised:
        _create(ml, body)
    assert raised.value.resp.status == 400
    assert message in json.loads(raised.value.content)["error"]["message"]
    assert not (jobs_dir(home) / "refused").exists()


def test_duplicate_get_list_and_cancel(emulator, datasets, monkeypatch, request) -> None:
    _, home = emulator
    monkeypatch.setenv("COVERTYPE_COLD", "1")  # a cold trial lasts long enough to cancel
    server = EmulatorServer(home=home).start()  # the engine reads COVERTYPE_COLD when made
    request.addfinalizer(server.stop)
    monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
    ml = ml_service()
    body = _job("cancelme", datasets, _jobdir(home) / "cancelme",
                _hyper(MAX_ITER, maxTrials=3))
    _create(ml, body)
    with pytest.raises(HttpError) as raised:
        _create(ml, body)
    assert raised.value.resp.status == 409
    while not _get(ml, "cancelme").get("trainingOutput", {}).get("trials"):
        time.sleep(0.05)
    assert ml.projects().jobs().cancel(name=f"projects/{PROJECT}/jobs/cancelme",
                                       body={}).execute() == {}
    job = _wait(ml, "cancelme", timeout=10)
    assert job["state"] == "CANCELLED"
    trials = job["trainingOutput"]["trials"]
    assert [t["state"] for t in trials].count("CANCELLED") == 1 and len(trials) < 3
    killed = next(t["trialId"] for t in trials if t["state"] == "CANCELLED")
    assert not (jobs_dir(home) / "cancelme" / f"trial-{killed}.metrics").exists()
    with pytest.raises(HttpError) as raised:  # already ended
        ml.projects().jobs().cancel(name=f"projects/{PROJECT}/jobs/cancelme", body={}).execute()
    assert raised.value.resp.status == 400
    with pytest.raises(HttpError) as raised:
        ml.projects().jobs().get(name="projects/other/jobs/cancelme").execute()
    assert raised.value.resp.status == 404
    listed = ml.projects().jobs().list(parent=f"projects/{PROJECT}", pageSize=1).execute()
    assert len(listed["jobs"]) == 1 and "nextPageToken" in listed
    assert ml.projects().jobs().list(parent="projects/other").execute() == {"jobs": []}


def test_interrupted_jobs_end_failed(tmp_path, datasets, monkeypatch) -> None:
    """Stopping the emulator kills a running job; a fresh service fails a dead runner's job."""
    monkeypatch.setenv("COVERTYPE_HOME", str(tmp_path))
    monkeypatch.setenv("COVERTYPE_COLD", "1")  # a cold trial lasts until the server stops
    with EmulatorServer(home=tmp_path) as server:
        monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
        ml = ml_service()
        _create(ml, _job("stopped", datasets, _jobdir(tmp_path), _hyper(MAX_ITER)))
        while not _get(ml, "stopped").get("trainingOutput", {}).get("trials"):
            time.sleep(0.05)  # RUNNING, with its first trial started
    path = jobs_dir(tmp_path) / "stopped" / "job.json"
    record = json.loads(path.read_text())
    assert record["state"] == "FAILED"
    assert record["error"]["message"].startswith("interrupted")
    assert record["trials"][0]["state"] == "CANCELLED"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record["state"] = "RUNNING"
    record["owner"] = {"pid": int(dead.stdout), "startTicks": None}
    path.write_text(json.dumps(record))
    with EmulatorServer(home=tmp_path) as server:
        monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
        job = _get(ml_service(), "stopped")
    assert job["state"] == "FAILED" and job["errorMessage"].startswith("interrupted")


def test_tuner_values_flags_and_reproducibility() -> None:
    spec = parse_spec(_hyper(
        {"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500.0, 1000]},
        {"parameterName": "n", "type": "INTEGER", "minValue": 1, "maxValue": 3},
        {"parameterName": "loss", "type": "CATEGORICAL", "categoricalValues": ["a", "b"]},
        algorithm="GRID_SEARCH", maxTrials=50))
    defaults = parse_spec({"goal": "MINIMIZE", "params": [MAX_ITER]})
    assert (defaults.max_trials, defaults.max_parallel_trials, defaults.metric_tag) == (
        1, 1, "training/hptuning/metric")
    tuner = Tuner(spec, seed_for("grid"))
    assert tuner.budget == 12  # the grid is smaller than maxTrials
    flags = [tuner.ask().flags() for _ in range(12)]
    assert tuner.ask() is None and len({tuple(f) for f in flags}) == 12
    assert {f[0] for f in flags} == {"--max_iter=500", "--max_iter=1000"}
    assert flags == [Tuner(spec, seed_for("grid")).ask().flags()] + flags[1:]
    reverse = parse_spec(_hyper({"parameterName": "r", "type": "DOUBLE", "minValue": 1,
                                 "maxValue": 100, "scaleType": "UNIT_REVERSE_LOG_SCALE"},
                                algorithm="RANDOM_SEARCH", maxTrials=400))
    tuner = Tuner(reverse, 7)
    values = [tuner.ask().values["r"] for _ in range(400)]
    assert all(1 <= v <= 100 for v in values) and sum(v > 50 for v in values) > 300
    with pytest.raises(HypertuneSpecError, match="discreteValues must be in strictly increasing"):
        parse_spec(_hyper({"parameterName": "m", "type": "DISCRETE", "discreteValues": [2, 1]}))

