"""Tests of the lightweight components, as Python functions and as the programs KFP runs.

The ml v1 API is the only fake: googleapiclient's HttpMockSequence over the real discovery
document. The model is a real sklearn pipeline fitted on real Covertype rows.
"""
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import kfp
import pandas as pd
import pytest
from googleapiclient.http import HttpMockSequence
from kfp import dsl
from kfp.components import func_to_container_op, load_component_from_text
from kfp.dsl.types import InconsistentTypeException
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline import helper_components, ml_client, schema

REPO = Path(__file__).resolve().parents[1]
DISCOVERY = REPO / "pipeline" / "discovery" / "ml.v1.json"
DATA = REPO / "data" / "covertype.csv.gz"
PROJECT, JOB_ID = "my-project", "hptune_1234"
JOB_URI = f"https://ml.googleapis.com/v1/projects/{PROJECT}/jobs/{JOB_ID}?alt=json"

# Stand-in for the GCP components upstream: the 0.2.5 output types the DSL wires in.
UPSTREAM = """
name: Upstream
outputs:
- {name: job_id, type: String}
- {name: job_dir, type: GCSPath}
- {name: output_gcs_path, type: GCSPath}
implementation:
  container:
    image: stub
    command: [stub]
    fileOutputs: {job_id: /tmp/a.txt, job_dir: /tmp/b.txt, output_gcs_path: /tmp/c.txt}
"""
DOWNSTREAM = """
name: Downstream
inputs:
- {name: alpha, type: Float}
- {name: max_iter, type: Integer}
implementation:
  container: {image: stub, command: [stub], args: [{inputValue: alpha}, {inputValue: max_iter}]}
"""


@pytest.fixture(autouse=True)
def local_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COVERTYPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ml_client.EMULATOR_HOST_ENV, raising=False)


@pytest.fixture(scope="module")
def workflow() -> dict:
    """Compile a tiny pipeline wired like the real DSL: this also runs kfp's type checks."""
    best_op = func_to_container_op(helper_components.retrieve_best_run, base_image="base:1")
    evaluate_op = func_to_container_op(helper_components.evaluate_model, base_image="base:1")
    upstream_op = load_component_from_text(UPSTREAM)
    downstream_op = load_component_from_text(DOWNSTREAM)

    @dsl.pipeline(name="tiny")
    def tiny(project_id: helper_components.GCP_PROJECT_ID, metric_name: str = "accuracy"):
        upstream = upstream_op()
        best = best_op(project_id=project_id, job_id=upstream.outputs["job_id"])
        evaluation = evaluate_op(
            dataset_path=upstream.outputs["output_gcs_path"],
            model_path=upstream.outputs["job_dir"],
            metric_name=metric_name,
        )
        with dsl.Condition(evaluation.outputs["metric_value"] > 0.69):
            downstream_op(alpha=best.outputs["alpha"], max_iter=best.outputs["max_iter"])

    return kfp.compiler.Compiler()._create_workflow(tiny)


def template(workflow: dict, name: str) -> dict:
    return next(t for t in workflow["spec"]["templates"] if t["name"] == name)


def command_line(container: dict, values: dict, out_dir: Path) -> list:
    """The container's command line with input parameters filled and outputs under out_dir."""
    args = [
        re.sub(r"\{\{inputs\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], arg)
        for arg in container["args"]
    ]
    return container["command"] + [arg.replace("/tmp/outputs/", f"{out_dir}/") for arg in args]


def venv_env() -> dict:
    """The environment a base image gives: `python3` is this venv's Python, `pipeline` imports."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---- retrieve_best_run ------------------------------------------------------------------


def trial(trial_id: int, value: float, alpha: str = "0.0005", max_iter: str = "500", **extra):
    return {
        "trialId": str(trial_id),
        "hyperparameters": {"alpha": alpha, "max_iter": max_iter},
        "finalMetric": {"trainingStep": "1", "objectiveValue": value},
        "state": "SUCCEEDED",
        "startTime": "2026-11-02T10:00:00Z",
        "endTime": "2026-11-02T10:01:00Z",
        **extra,
    }


def tuning_job(trials: list, goal: str = "MAXIMIZE", state: str = "SUCCEEDED", **extra) -> dict:
    return {
        "jobId": JOB_ID,
        "state": state,
        "trainingInput": {
            "region": "us-central1",
            "hyperparameters": {
                "goal": goal,
                "maxTrials": 6,
                "maxParallelTrials": 3,
                "hyperparameterMetricTag": "accuracy",
                "params": [
                    {"parameterName": "max_iter", "type": "DISCRETE",
                     "discreteValues": [500, 1000]},
                    {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                     "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"},
                ],
            },
        },
        "trainingOutput": {
            "completedTrialCount": str(len(trials)),
            "isHyperparameterTuningJob": True,
            "hyperparameterMetricTag": "accuracy",
            "trials": trials,
        },
        **extra,
    }


@pytest.fixture
def ml_api(monkeypatch):
    """Answer jobs.get with (status, body) through the real client; return the mock http."""

    def serve(body: dict, status: int = 200) -> HttpMockSequence:
        http = HttpMockSequence([
            ({"status": "200"}, DISCOVERY.read_text()),
            ({"status": str(status)}, json.dumps(body)),
        ])
        build = ml_client.ml_service
        monkeypatch.setattr(ml_client, "ml_service", lambda: build(http=http))
        return http

    return serve


def test_retrieve_best_run_picks_the_best_trial_not_the_first(ml_api, capsys):
    http = ml_api(tuning_job([
        trial(1, 0.70, "0.0001", "500"),
        trial(2, 0.73, "0.00075", "1000"),
        trial(3, 0.71, "0.0009", "500"),
    ]))

    outputs = helper_components.retrieve_best_run(PROJECT, JOB_ID)

    assert outputs == (0.73, 0.00075, 1000)
    assert (outputs.metric_value, outputs.alpha, outputs.max_iter) == (0.73, 0.00075, 1000)
    assert isinstance(outputs.max_iter, int)
    assert [(uri, method) for uri, method, _, _ in http.request_sequence[1:]] == [(JOB_URI, "GET")]
    assert '"trialId": "2"' in capsys.readouterr().out


def test_retrieve_best_run_minimize_picks_the_lowest(ml_api):
    trials = [trial(1, 0.4, "0.0002"), trial(2, 0.2, "0.0003"), trial(3, 0.3)]
    ml_api(tuning_job(trials, "MINIMIZE"))

    assert helper_components.retrieve_best_run(PROJECT, JOB_ID) == (0.2, 0.0003, 500)


def test_retrieve_best_run_skips_failed_and_unmeasured_trials(ml_api):
    unmeasured = trial(3, 0.0)
    del unmeasured["finalMetric"], unmeasured["state"]
    ml_api(tuning_job([
        trial(1, 0.95, "0.0009", state="FAILED"),
        trial(2, 0.72, "0.0004", "1000"),
        unmeasured,
        trial(4, 0.60, state="CANCELLED"),
        trial(5, float("nan")),
    ]))

    assert helper_components.retrieve_best_run(PROJECT, JOB_ID) == (0.72, 0.0004, 1000)


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (tuning_job([], state="RUNNING"), "is RUNNING, not SUCCEEDED; wait"),
        (
            tuning_job([trial(1, 0.7)], state="FAILED", errorMessage="trial 1 crashed\nexit 1"),
            r"is FAILED \(trial 1 crashed exit 1\), not SUCCEEDED",
        ),
        ({**tuning_job([]), "trainingInput": {}}, "not a hyperparameter tuning job"),
        (tuning_job([]), "no successful trial with a finalMetric among 0 trials"),
        (tuning_job([trial(1, 0.7, state="FAILED")]), "no successful trial .* among 1 trials"),
        (tuning_job([trial(1, 0.7, max_iter="5e2x")]), "max_iter='5e2x'; expected a whole number"),
        (tuning_job([{**trial(1, 0.7), "hyperparameters": {"alpha": "0.1"}}]), "no .*'max_iter'"),
    ],
)
def test_retrieve_best_run_rejects_unusable_jobs(ml_api, job, expected):
    ml_api(job)

    with pytest.raises(ValueError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB_ID)

    assert re.search(expected, one_line(error))


@pytest.mark.parametrize(
    ("status", "message", "fix"),
    [
        (
            404,
            "Field: name Error: The specified job was not found.",
            "check project_id and job_id (the tuning step's job_id output)",
        ),
        (500, "Internal error encountered.", "retry the step"),
    ],
    ids=["404", "500"],
)
def test_retrieve_best_run_reports_api_errors(ml_api, status, message, fix):
    body = {"error": {"code": status, "message": message, "status": "X"}}
    ml_api(body, status=status)

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB_ID)

    assert one_line(error) == (
        f"getting job projects/{PROJECT}/jobs/{JOB_ID} failed: HTTP {status} {message}; {fix}"
    )


def test_retrieve_best_run_reports_an_unreachable_emulator(monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(ml_client.EMULATOR_HOST_ENV, f"http://127.0.0.1:{port}")

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB_ID)

    assert one_line(error).endswith(f"; check the network or {ml_client.EMULATOR_HOST_ENV}")


def test_retrieve_best_run_rejects_empty_ids_before_calling(ml_api):
    http = ml_api(tuning_job([trial(1, 0.7)]))

    with pytest.raises(ValueError, match="both must be non-empty ids"):
        helper_components.retrieve_best_run(PROJECT, "")
    assert http.request_sequence == []


def test_retrieve_best_run_program_writes_its_outputs(workflow, ml_api, monkeypatch, tmp_path):
    container = template(workflow, "retrieve-best-run")["container"]
    http = ml_api(tuning_job([trial(1, 0.70), trial(2, 0.74, "0.0002", "1000")]))
    command = command_line(
        container, {"project_id": PROJECT, "upstream-job_id": JOB_ID}, tmp_path
    )
    assert command[:2] == ["sh", "-ec"] and 'python3 -u "$program_path" "$@"' in command[2]

    # The program runs in this process so the mocked API answers it; sh only writes it to a file.
    monkeypatch.setattr(sys, "argv", ["retrieve_best_run", *command[4:]])
    exec(compile(command[3], "retrieve_best_run", "exec"), {"__name__": "__main__"})

    assert [(uri, method) for uri, method, _, _ in http.request_sequence[1:]] == [(JOB_URI, "GET")]
    written = {name: (tmp_path / name / "data").read_text() for name in os.listdir(tmp_path)}
    assert written == {"metric_value": "0.74", "alpha": "0.0002", "max_iter": "1000"}


def test_retrieve_best_run_component_interface(workflow):
    spec = func_to_container_op(helper_components.retrieve_best_run).component_spec
    program = spec.implementation.container.command[3]
    assert 'dest="project_id", type=str' in program and 'dest="job_id", type=str' in program
    assert [(i.name, i.type) for i in spec.inputs] == [
        ("project_id", "GCPProjectID"), ("job_id", "String")
    ]
    assert [(o.name, o.type) for o in spec.outputs] == [
        ("metric_value", "Float"), ("alpha", "Float"), ("max_iter", "Integer")
    ]
    outputs = template(workflow, "retrieve-best-run")["outputs"]
    assert {p["name"]: p["valueFrom"]["path"] for p in outputs["parameters"]} == {
        "retrieve-best-run-alpha": "/tmp/outputs/alpha/data",
        "retrieve-best-run-max_iter": "/tmp/outputs/max_iter/data",
    }


def test_component_types_are_checked_against_the_wiring():
    best_op = func_to_container_op(helper_components.retrieve_best_run)

    @dsl.pipeline(name="miswired")
    def miswired(project_id: str):
        best_op(project_id=project_id, job_id="hptune_1")

    with pytest.raises(InconsistentTypeException, match='"String" is incompatible .*GCPProjectID'):
        kfp.compiler.Compiler()._create_workflow(miswired)


# ---- evaluate_model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A real model fitted on 3,000 rows like the trainer's, and 1,000 other rows to test on."""
    rows = pd.read_csv(DATA, nrows=4000, dtype={n: str for n in schema.CATEGORICAL_COLUMNS})
    train, test = rows.iloc[:3000], rows.iloc[3000:]
    model = Pipeline([
        ("features", ColumnTransformer([
            ("numeric", StandardScaler(), list(schema.NUMERIC_COLUMNS)),
            ("categorical", OneHotEncoder(handle_unknown="ignore"),
             list(schema.CATEGORICAL_COLUMNS)),
        ])),
        ("classifier", SGDClassifier(loss="log_loss", tol=1e-3, random_state=0)),
    ]).fit(train[list(schema.FEATURE_COLUMNS)], train[schema.LABEL_COLUMN])
    folder = tmp_path_factory.mktemp("evaluation")
    (folder / "jobdir").mkdir()
    with open(folder / "jobdir" / "model.pkl", "wb") as stream:
        pickle.dump(model, stream)
    test.to_csv(folder / "testing.csv", index=False)
    labels = test[schema.LABEL_COLUMN]
    predicted = model.predict(test[list(schema.FEATURE_COLUMNS)])
    macro = {"average": "macro", "zero_division": 0}
    return {
        "dataset": str(folder / "testing.csv"),
        "model_dir": str(folder / "jobdir"),
        "rows": len(test),
        "expected": {
            "accuracy": metrics.accuracy_score(labels, predicted),
            "precision": metrics.precision_score(labels, predicted, **macro),
            "recall": metrics.recall_score(labels, predicted, **macro),
            "f1": metrics.f1_score(labels, predicted, **macro),
        },
        "matrix": metrics.confusion_matrix(labels, predicted, labels=list(schema.CLASSES)),
    }


def check_ui_metadata(path: Path, trained: dict, first: str) -> None:
    matrix, table = json.loads(path.read_text())["outputs"]
    assert {k: v for k, v in matrix.items() if k != "source"} == {
        "type": "confusion_matrix",
        "format": "csv",
        "schema": [
            {"name": "target", "type": "CATEGORY"},
            {"name": "predicted", "type": "CATEGORY"},
            {"name": "count", "type": "NUMBER"},
        ],
        "labels": list(schema.CLASS_NAMES),
        "storage": "inline",
    }
    cells = [line.split(",") for line in matrix["source"].splitlines()]
    assert len(cells) == len(schema.CLASSES) ** 2
    assert sum(int(count) for _, _, count in cells) == trained["rows"]
    names = schema.CLASS_NAMES
    assert {(t, p): int(c) for t, p, c in cells} == {
        (names[t], names[p]): int(trained["matrix"][t][p]) for t in schema.CLASSES
        for p in schema.CLASSES
    }
    assert table["type"] == "table" and table["storage"] == "inline"
    assert table["format"] == "csv" and table["header"] == ["metric", "value"]
    rows = [line.split(",") for line in table["source"].splitlines()]
    assert rows[0][0] == first
    assert {name: float(value) for name, value in rows} == trained["expected"]


def test_evaluate_model_matches_sklearn_metrics(trained, tmp_path):
    ui_path = tmp_path / "ui" / "metadata.json"

    name, value, metrics_json = helper_components.evaluate_model(
        trained["dataset"], trained["model_dir"] + "/", "recall", str(ui_path)
    )

    assert (name, value) == ("recall", trained["expected"]["recall"])
    reported = json.loads(metrics_json)["metrics"]
    assert [m["name"] for m in reported] == ["recall", "accuracy", "precision", "f1"]
    assert all(m["format"] == "RAW" for m in reported)
    assert {m["name"]: m["numberValue"] for m in reported} == trained["expected"]
    assert 0.5 < trained["expected"]["accuracy"] < 0.9
    check_ui_metadata(ui_path, trained, "recall")
    assert os.listdir(ui_path.parent) == ["metadata.json"]


def test_evaluate_model_program_writes_its_outputs(workflow, trained, tmp_path):
    container = template(workflow, "evaluate-model")["container"]
    values = {
        "upstream-output_gcs_path": trained["dataset"],
        "upstream-job_dir": trained["model_dir"],
        "metric_name": "f1",
    }

    done = subprocess.run(
        command_line(container, values, tmp_path), env=venv_env(), capture_output=True,
        text=True, timeout=120,
    )

    assert done.returncode == 0, done.stderr
    written = {name: (tmp_path / name / "data").read_text() for name in os.listdir(tmp_path)}
    assert written["metric_name"] == "f1"
    assert float(written["metric_value"]) == trained["expected"]["f1"]
    assert json.loads(written["mlpipeline_metrics"])["metrics"][0] == {
        "name": "f1", "numberValue": trained["expected"]["f1"], "format": "RAW"
    }
    check_ui_metadata(tmp_path / "mlpipeline_ui_metadata" / "data", trained, "f1")


def test_evaluate_model_program_fails_on_unknown_metric(workflow, tmp_path):
    container = template(workflow, "evaluate-model")["container"]
    values = {"upstream-output_gcs_path": "x.csv", "upstream-job_dir": "d", "metric_name": "auc"}

    done = subprocess.run(
        command_line(container, values, tmp_path / "out"), env=venv_env(), capture_output=True,
        text=True, timeout=60,
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ValueError: unknown metric_name 'auc'; use one of accuracy, precision, recall, f1"
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["mlpipeline_ui_metadata"]  # argparse's mkdir
    assert os.listdir(tmp_path / "out" / "mlpipeline_ui_metadata") == []


def test_evaluate_model_component_interface(workflow):
    spec = func_to_container_op(helper_components.evaluate_model).component_spec
    program = spec.implementation.container.command[3]
    assert 'dest="dataset_path", type=str' in program and 'dest="model_path", type=str' in program
    assert [(i.name, i.type) for i in spec.inputs] == [
        ("dataset_path", "GCSPath"), ("model_path", "GCSPath"), ("metric_name", "String")
    ]
    assert [(o.name, o.type) for o in spec.outputs] == [
        ("mlpipeline_ui_metadata", None), ("metric_name", "String"), ("metric_value", "Float"),
        ("mlpipeline_metrics", "Metrics"),
    ]
    outputs = template(workflow, "evaluate-model")["outputs"]
    artifacts = {a["name"]: a["path"] for a in outputs["artifacts"]}
    assert artifacts["mlpipeline-ui-metadata"] == "/tmp/outputs/mlpipeline_ui_metadata/data"
    assert artifacts["mlpipeline-metrics"] == "/tmp/outputs/mlpipeline_metrics/data"
    assert {p["name"]: p["valueFrom"]["path"] for p in outputs["parameters"]} == {
        "evaluate-model-metric_value": "/tmp/outputs/metric_value/data"
    }


def test_evaluate_model_rejects_unknown_metric_before_reading(tmp_path):
    ui_path = tmp_path / "ui.json"

    with pytest.raises(ValueError) as error:
        helper_components.evaluate_model("missing.csv", "missing", "roc_auc", str(ui_path))

    assert one_line(error) == (
        "unknown metric_name 'roc_auc'; use one of accuracy, precision, recall, f1"
    )
    assert not ui_path.exists()


def test_evaluate_model_reports_a_model_that_cannot_predict(trained, tmp_path):
    rows = pd.read_csv(trained["dataset"])
    numeric = rows[list(schema.NUMERIC_COLUMNS)]
    numeric_only = SGDClassifier(random_state=0).fit(numeric, rows[schema.LABEL_COLUMN])
    model_dir = bad_model(tmp_path / "jobdir", pickle.dumps(numeric_only))

    with pytest.raises(ValueError) as error:
        helper_components.evaluate_model(trained["dataset"], model_dir, "f1", str(tmp_path / "u"))

    expected = r"model\.pkl: predict failed on .*testing\.csv \(ValueError: .*re-run training$"
    assert re.search(expected, one_line(error))
    assert not (tmp_path / "u").exists()


def bad_model(folder: Path, content: bytes | None) -> str:
    folder.mkdir()
    if content is not None:
        (folder / "model.pkl").write_bytes(content)
    return str(folder)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"model\.pkl: no such file; model_path must be the final training job_dir"),
        (b"not a pickle", r"model\.pkl: not a readable pickled model \(UnpicklingError: "),
        (pickle.dumps({"weights": [1]})[:-4], r"\(UnpicklingError: pickle data was truncated\)"),
        (pickle.dumps({"weights": [1]}), r"holds a dict, not a model with predict\(\)"),
    ],
    ids=["missing", "not-a-pickle", "truncated", "no-predict"],
)
def test_evaluate_model_rejects_bad_models(trained, tmp_path, content, expected):
    model_dir = bad_model(tmp_path / "jobdir", content)
    ui_path = tmp_path / "ui.json"

    with pytest.raises(ValueError) as error:
        helper_components.evaluate_model(trained["dataset"], model_dir, "accuracy", str(ui_path))

    assert re.search(expected, one_line(error))
    assert "re-run the final training step" in str(error.value) or content is None
    assert not ui_path.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Elevation,Aspect\n1,2\n", "column 'Slope' is missing"),
        (None, "no such file; check the path"),
    ],
)
def test_evaluate_model_rejects_bad_datasets(trained, tmp_path, text, expected):
    dataset = tmp_path / "testing.csv"
    if text is not None:
        dataset.write_text(text)
    ui_path = tmp_path / "ui.json"

    with pytest.raises(schema.SchemaError) as error:
        helper_components.evaluate_model(str(dataset), trained["model_dir"], "f1", str(ui_path))

    assert expected in one_line(error)
    assert not ui_path.exists()


def test_evaluate_model_rejects_a_csv_with_bad_values(trained, tmp_path):
    rows = pd.read_csv(trained["dataset"], dtype=str)
    rows.loc[5, "Elevation"] = "high"
    rows.to_csv(tmp_path / "testing.csv", index=False)

    with pytest.raises(schema.SchemaError) as error:
        helper_components.evaluate_model(
            str(tmp_path / "testing.csv"), trained["model_dir"], "f1", str(tmp_path / "ui.json")
        )

    assert "row 6 column 'Elevation' has 'high'; expected an INTEGER" in one_line(error)
