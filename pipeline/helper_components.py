"""The pipeline's two lightweight components: pick the best tuning trial, evaluate the model.

The DSL turns each function into a KFP v1 component with `func_to_container_op`, which
carries only the function's own source: every import and helper lives inside the body,
and the base image supplies `pipeline.schema` and `pipeline.ml_client`. The annotations are
the component's interface; kfp 1.8 checks them against what the DSL wires in, so they name
the KFP types of those arguments (the GCPProjectID parameter, the GCSPath outputs of the
0.2.5 GCP components). Errors are one line naming the problem and the fix.
"""
from typing import NamedTuple

from kfp.components import OutputPath

# KFP v1 type names, compared by name by kfp's type checker. Kept as constants (not string
# literal annotations) so linters do not read them as Python names.
GCP_PROJECT_ID = "GCPProjectID"
GCS_PATH = "GCSPath"
METRICS = "Metrics"


def retrieve_best_run(
    project_id: GCP_PROJECT_ID, job_id: str
) -> NamedTuple("Outputs", [("metric_value", float), ("alpha", float), ("max_iter", int)]):
    """Return the best trial of a finished hyperparameter tuning job.

    The best trial is chosen by `finalMetric.objectiveValue` and the job's goal (MAXIMIZE
    unless the job says MINIMIZE), among the trials that succeeded; the order of
    `trainingOutput.trials` means nothing.

    Args:
        project_id: GCP project that ran the tuning job.
        job_id: the tuning job's id (the train component's `job_id` output).

    Returns:
        The best trial's objective value and its `alpha` and `max_iter` hyperparameters.

    Raises:
        ValueError: the job is unfinished, failed, not a tuning job or has no usable trial.
        RuntimeError: the AI Platform API could not be reached or answered an error.
    """
    import json
    import math
    from collections import namedtuple

    from googleapiclient.errors import HttpError

    from pipeline import ml_client

    def api_error(error: HttpError) -> str:
        try:
            message = json.loads(error.content.decode("utf-8"))["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.content.decode("utf-8", "replace").strip() or error.resp.reason
        fix = {
            401: "check the pipeline's credentials",
            403: "check the pipeline's service account may read AI Platform jobs",
            404: "check project_id and job_id (the tuning step's job_id output)",
        }.get(error.resp.status, "retry the step")
        return f"HTTP {error.resp.status} {' '.join(str(message).split())}; {fix}"

    def measured(trial: dict) -> float | None:
        value = trial.get("finalMetric", {}).get("objectiveValue")
        if trial.get("state", "SUCCEEDED") != "SUCCEEDED" or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    def hyperparameter(trial: dict, name: str, parse: type) -> float:
        text = trial.get("hyperparameters", {}).get(name)
        if text is None:
            raise ValueError(
                f"trial {trial.get('trialId')} has no hyperparameter {name!r}; add {name} "
                "to the tuning job's trainingInput.hyperparameters.params"
            )
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or (parse is int and not value.is_integer()):
            raise ValueError(
                f"trial {trial.get('trialId')} has {name}={text!r}; expected a "
                f"{'whole number' if parse is int else 'number'}: fix the tuning params"
            )
        return parse(value)

    if not project_id or not job_id or "/" in project_id + job_id:
        raise ValueError(
            f"project_id={project_id!r} job_id={job_id!r}: both must be non-empty ids without "
            "'/'; pass the project and the tuning step's job_id output"
        )
    name = f"projects/{project_id}/jobs/{job_id}"
    try:
        job = ml_client.ml_service().projects().jobs().get(name=name).execute()
    except HttpError as error:
        raise RuntimeError(f"getting job {name} failed: {api_error(error)}") from None
    except OSError as error:
        raise RuntimeError(
            f"getting job {name} failed: {error}; check the network or "
            f"{ml_client.EMULATOR_HOST_ENV}"
        ) from None

    state = job.get("state", "STATE_UNSPECIFIED")
    if state != "SUCCEEDED":
        detail = f" ({' '.join(job['errorMessage'].split())})" if job.get("errorMessage") else ""
        raise ValueError(
            f"job {name} is {state}{detail}, not SUCCEEDED; wait for it to finish or fix its "
            "failure and re-run the tuning step"
        )
    spec = job.get("trainingInput", {}).get("hyperparameters")
    if not spec:
        raise ValueError(
            f"job {name} is not a hyperparameter tuning job (no trainingInput.hyperparameters); "
            "pass the job_id of the tuning step"
        )
    goal = spec.get("goal", "GOAL_TYPE_UNSPECIFIED")
    if goal not in ("GOAL_TYPE_UNSPECIFIED", "MAXIMIZE", "MINIMIZE"):
        raise ValueError(f"job {name} has goal {goal!r}; expected MAXIMIZE or MINIMIZE")
    trials = job.get("trainingOutput", {}).get("trials", [])
    usable = [trial for trial in trials if measured(trial) is not None]
    if not usable:
        raise ValueError(
            f"job {name} has no successful trial with a finalMetric among {len(trials)} trials; "
            "check that the trainer reports the metric tag with cloudml-hypertune"
        )
    pick = min if goal == "MINIMIZE" else max
    best = pick(usable, key=measured)
    outputs = namedtuple("Outputs", ["metric_value", "alpha", "max_iter"])(
        measured(best), hyperparameter(best, "alpha", float), hyperparameter(best, "max_iter", int)
    )
    print(
        f"Best trial of {name} ({'MINIMIZE' if goal == 'MINIMIZE' else 'MAXIMIZE'}, "
        f"{len(usable)} of {len(trials)} trials usable): {json.dumps(best, sort_keys=True)}"
    )
    return outputs


def evaluate_model(
    dataset_path: GCS_PATH,
    model_path: GCS_PATH,
    metric_name: str,
    mlpipeline_ui_metadata_path: OutputPath(),
) -> NamedTuple(
    "Outputs", [("metric_name", str), ("metric_value", float), ("mlpipeline_metrics", METRICS)]
):
    """Score the trained model on the test split, for the deploy condition and the KFP UI.

    Computes accuracy and macro precision, recall and f1 (macro over the classes present in
    the labels or the predictions), returns the selected one, the KFP metrics JSON with all
    four (selected first), and writes a confusion matrix and a metrics table as
    `mlpipeline-ui-metadata`.

    Args:
        dataset_path: the test split CSV (local path or gs://).
        model_path: the final training job_dir folder holding model.pkl (local or gs://).
        metric_name: one of pipeline.schema.METRIC_NAMES.
        mlpipeline_ui_metadata_path: where to write the KFP UI metadata JSON.

    Returns:
        metric_name, its value and the `mlpipeline-metrics` JSON text.

    Raises:
        ValueError: unknown metric, missing or unreadable model, or a bad dataset.
    """
    import json
    import os
    import pickle
    import tempfile
    from collections import namedtuple

    from pipeline import schema

    def write_atomically(path: str, text: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(descriptor, "w") as stream:
                stream.write(text)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    if metric_name not in schema.METRIC_NAMES:
        raise ValueError(
            f"unknown metric_name {metric_name!r}; use one of {', '.join(schema.METRIC_NAMES)}"
        )
    import fsspec

    model_file = model_path.rstrip("/") + "/model.pkl"
    try:
        with fsspec.open(model_file, "rb") as stream:
            model = pickle.load(stream)
    except FileNotFoundError:
        raise ValueError(
            f"{model_file}: no such file; model_path must be the final training job_dir"
        ) from None
    except Exception as error:  # unpickling raises many types; all mean a bad file
        raise ValueError(
            f"{model_file}: not a readable pickled model ({type(error).__name__}: "
            f"{' '.join(str(error).split())}); re-run the final training step"
        ) from None
    if not callable(getattr(model, "predict", None)):
        raise ValueError(
            f"{model_file}: holds a {type(model).__name__}, not a model with predict(); "
            "re-run the final training step"
        )
    frame = schema.read_dataset(dataset_path)
    labels = frame[schema.LABEL_COLUMN].to_numpy()
    try:
        predicted = model.predict(frame[list(schema.FEATURE_COLUMNS)])
    except Exception as error:  # whatever the model raises, the fix is the same
        raise ValueError(
            f"{model_file}: predict failed on {dataset_path} ({type(error).__name__}: "
            f"{' '.join(str(error).split())}); train on the Covertype schema and re-run training"
        ) from None

    from sklearn import metrics

    macro = {"average": "macro", "zero_division": 0}
    scores = {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "precision": metrics.precision_score(labels, predicted, **macro),
        "recall": metrics.recall_score(labels, predicted, **macro),
        "f1": metrics.f1_score(labels, predicted, **macro),
    }
    values = {name: float(scores[name]) for name in schema.METRIC_NAMES}
    order = [metric_name] + [name for name in schema.METRIC_NAMES if name != metric_name]
    metrics_json = json.dumps(
        {"metrics": [{"name": n, "numberValue": values[n], "format": "RAW"} for n in order]}
    )

    matrix = metrics.confusion_matrix(labels, predicted, labels=list(schema.CLASSES))
    names = schema.CLASS_NAMES
    matrix_csv = "".join(
        f"{names[target]},{names[guess]},{int(matrix[target][guess])}\n"
        for target in range(len(names))
        for guess in range(len(names))
    )
    ui_metadata = {
        "outputs": [
            {
                "type": "confusion_matrix",
                "format": "csv",
                "schema": [
                    {"name": "target", "type": "CATEGORY"},
                    {"name": "predicted", "type": "CATEGORY"},
                    {"name": "count", "type": "NUMBER"},
                ],
                "labels": list(names),
                "storage": "inline",
                "source": matrix_csv,
            },
            {
                "type": "table",
                "format": "csv",
                "header": ["metric", "value"],
                "storage": "inline",
                "source": "".join(f"{n},{values[n]}\n" for n in order),
            },
        ]
    }
    write_atomically(mlpipeline_ui_metadata_path, json.dumps(ui_metadata))
    print(f"Evaluated {model_file} on {len(frame)} rows of {dataset_path}: {metrics_json}")
    return namedtuple("Outputs", ["metric_name", "metric_value", "mlpipeline_metrics"])(
        metric_name, values[metric_name], metrics_json
    )
