"""The pipeline's two lightweight components: pick the best tuning trial, evaluate the model.

The DSL turns each function into a KFP v1 component with `func_to_container_op`, which
carries only the function's own source: every import lives inside the body, and the base
image supplies the cloud-path package (`pipeline.schema`, `pipeline.best_run`, ...). The
annotations are the component's interface; kfp 1.8 checks them against what the DSL wires
in, so they name the KFP types of those arguments (the GCPProjectID parameter, the GCSPath
outputs of the GCP components). Errors are one line naming the problem and the fix.
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
    """Return the best trial of a finished hyperparameter tuning job, on either platform.

    `job_id` is the tuning step's output: an AI Platform job id, or a Vertex AI
    HyperparameterTuningJob resource name (projects/P/locations/R/hyperparameterTuningJobs/N).
    The best trial is chosen by its final metric (ml v1 `finalMetric.objectiveValue`, Vertex AI
    `finalMeasurement.metrics[]` of the study's metricId) and the job's goal (MAXIMIZE unless
    it says MINIMIZE), among the trials that succeeded; the order of the trials means nothing.
    The logic is `pipeline.best_run`, which the base image carries.

    Args:
        project_id: GCP project that ran the tuning job.
        job_id: the tuning job's id or resource name (the tuning step's `job_id` output).

    Returns:
        The best trial's metric value and its `alpha` and `max_iter` hyperparameters.

    Raises:
        ValueError: the job is unfinished, failed, not a tuning job or has no usable trial.
        RuntimeError: the API could not be reached or answered an error.
    """
    import json
    from collections import namedtuple

    from pipeline import best_run

    best = best_run.retrieve(project_id, job_id)
    print(f"Best trial of {job_id} ({best.goal}, {best.usable} of {best.total} trials usable): "
          f"{json.dumps(best.trial, sort_keys=True)}")
    return namedtuple("Outputs", ["metric_value", "alpha", "max_iter"])(
        best.metric_value, best.alpha, best.max_iter)


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
    import pickle
    from collections import namedtuple

    from pipeline import schema
    from pipeline.atomic import write_atomic

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
    write_atomic(mlpipeline_ui_metadata_path, json.dumps(ui_metadata))
    print(f"Evaluated {model_file} on {len(frame)} rows of {dataset_path}: {metrics_json}")
    return namedtuple("Outputs", ["metric_name", "metric_value", "mlpipeline_metrics"])(
        metric_name, values[metric_name], metrics_json
    )
