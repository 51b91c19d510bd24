"""Covertype trainer: one tuning trial or the final fit, as a `fire` CLI.

AI Platform starts this once per tuning trial as `python -u train.py --job-dir DIR
--training_dataset_path P --validation_dataset_path P --hptune True --alpha=A --max_iter=N`;
Vertex AI runs the same command line without `--job-dir` and gives the folder for the model
as `AIP_MODEL_DIR`, which, when set, is where the final fit saves it. Start-up stays light:
pandas, scikit-learn and fsspec are imported only once the inputs are checked. The model is a
plain scikit-learn Pipeline (no custom classes, no lambdas), so `pickle.load` works wherever
the same scikit-learn is installed and skl2onnx can convert it.

Model input contract: a DataFrame with the 10 `schema.NUMERIC_COLUMNS` as numbers (cast to
float64 by `model_input`) and the 2 `schema.CATEGORICAL_COLUMNS` as strings, in schema order.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any

from pipeline import schema
from pipeline.atomic import write_atomic

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

HPTUNE_METRIC_TAG = "accuracy"
MODEL_FILENAME = "model.pkl"
METRIC_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
MODEL_DIR_ENV = "AIP_MODEL_DIR"  # Vertex AI: the folder the model must be saved in
DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"
RANDOM_STATE = 42
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def build_model(alpha: float = 0.0001, max_iter: int = 1000) -> Pipeline:
    """Build the lab's unfitted Pipeline: scaled numerics + one-hot categoricals -> SGD.

    Columns are selected by name so the fitted model checks its input columns and skl2onnx
    can map each to a named input. `random_state` is fixed so trials are reproducible.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    preprocessor = ColumnTransformer(
        transformers=[
            ("num", StandardScaler(), list(schema.NUMERIC_COLUMNS)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(schema.CATEGORICAL_COLUMNS)),
        ]
    )
    classifier = SGDClassifier(
        loss="log_loss", tol=1e-3, alpha=alpha, max_iter=max_iter, random_state=RANDOM_STATE
    )
    return Pipeline([("preprocessor", preprocessor), ("classifier", classifier)])


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the feature columns in schema order: numerics as float64, categoricals as str."""
    features = frame[list(schema.FEATURE_COLUMNS)].copy()
    for name in schema.NUMERIC_COLUMNS:
        features[name] = features[name].astype("float64")
    for name in schema.CATEGORICAL_COLUMNS:
        features[name] = features[name].astype(str)
    return features


def parse_bool(name: str, value: Any) -> bool:
    """Accept the usual spellings of a flag value (`fire` hands over bool, int or str)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--{name}={value!r} is not a boolean; pass True or False")


def _check_inputs(
    paths: dict[str, Any], alpha: Any, max_iter: Any
) -> tuple[dict[str, str], float, int]:
    """Validate the inputs before any work; return the paths, alpha and max_iter typed.

    `fire` parses flag values as Python literals, so a folder named `123` arrives as an int.
    """
    checked = {}
    for name, value in paths.items():
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise ValueError(f"--{name}={value!r} is not a path; pass a local path or gs:// URI")
        checked[name] = str(value)
    try:
        alpha_value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"--alpha={alpha!r} is not a number; pass e.g. --alpha=0.0001") from None
    if not (math.isfinite(alpha_value) and alpha_value > 0):
        raise ValueError(f"--alpha={alpha!r} must be a finite number > 0, e.g. 0.0001")
    try:
        iter_value = float(max_iter)
    except (TypeError, ValueError):
        iter_value = math.nan
    if isinstance(max_iter, bool) or not (math.isfinite(iter_value) and iter_value.is_integer()):
        raise ValueError(f"--max_iter={max_iter!r} is not a whole number; pass e.g. 1000")
    if iter_value < 1:
        raise ValueError(f"--max_iter={max_iter!r} must be >= 1, e.g. 1000")
    return checked, alpha_value, int(iter_value)


def _report_metric(value: float, global_step: int) -> None:
    """Report the trial's metric through cloudml-hypertune (JSON lines in the metric file)."""
    import hypertune

    path = os.path.abspath(os.environ.get(METRIC_FILE_ENV, DEFAULT_METRIC_FILE))
    os.environ[METRIC_FILE_ENV] = path  # hypertune cannot create the folder of a bare name
    os.makedirs(os.path.dirname(path), exist_ok=True)  # parallel trials may race on it
    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=HPTUNE_METRIC_TAG, metric_value=value, global_step=global_step
    )


def save_model(model: Pipeline, job_dir: str) -> str:
    """Pickle the model as `model.pkl` in job_dir; return its URI.

    Local writes are atomic (`pipeline.atomic`), so a killed trainer never leaves a
    half-written model. A GCS object becomes visible only once fully uploaded.
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, folder = fsspec.core.url_to_fs(job_dir)
    uri = job_dir.rstrip("/") + "/" + MODEL_FILENAME
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(folder.rstrip("/") + "/" + MODEL_FILENAME, "wb") as stream:
            stream.write(payload)
        return uri
    write_atomic(os.path.join(folder, MODEL_FILENAME), payload, durable=True)
    return uri


def train_evaluate(
    training_dataset_path: str,
    validation_dataset_path: str,
    alpha: float = 0.0001,
    max_iter: int = 1000,
    hptune: bool = False,
    job_dir: str = "",
) -> None:
    """Run one tuning trial (hptune) or the final fit on train+validation.

    Args:
        job_dir: Local folder or gs:// URI; the final fit writes `model.pkl` there, or in
            `AIP_MODEL_DIR` when that is set (Vertex AI passes no --job-dir).
        training_dataset_path: Training split CSV (local path or gs:// URI).
        validation_dataset_path: Validation split CSV (local path or gs:// URI).
        alpha: SGDClassifier regularisation strength, > 0.
        max_iter: SGDClassifier maximum epochs, >= 1.
        hptune: True: report validation accuracy; False: fit on train+validation, save model.

    Raises:
        ValueError: a bad flag value; schema.SchemaError (a ValueError): a bad dataset.
    """
    hptune = parse_bool("hptune", hptune)
    model_dir = os.environ.get(MODEL_DIR_ENV, "").strip() or job_dir
    if not hptune and model_dir == "":
        raise ValueError(f"no folder for the model: pass --job-dir or set {MODEL_DIR_ENV}")
    paths, alpha, max_iter = _check_inputs(
        {
            "training_dataset_path": training_dataset_path,
            "validation_dataset_path": validation_dataset_path,
            **({} if hptune else {"job-dir": model_dir}),
        },
        alpha,
        max_iter,
    )
    import pandas as pd

    train = schema.read_dataset(paths["training_dataset_path"])
    validation = schema.read_dataset(paths["validation_dataset_path"])
    model = build_model(alpha, max_iter)
    if hptune:
        model.fit(model_input(train), train[schema.LABEL_COLUMN])
        accuracy = float(
            model.score(model_input(validation), validation[schema.LABEL_COLUMN])
        )
        epochs = int(model.named_steps["classifier"].n_iter_)
        _report_metric(accuracy, epochs)
        print(f"{HPTUNE_METRIC_TAG}={accuracy:.6f} alpha={alpha} max_iter={max_iter} "
              f"epochs={epochs} train_rows={len(train)} validation_rows={len(validation)}")
        return
    full = pd.concat([train, validation], ignore_index=True)
    model.fit(model_input(full), full[schema.LABEL_COLUMN])
    uri = save_model(model, paths["job-dir"])
    print(f"saved {uri} alpha={alpha} max_iter={max_iter} rows={len(full)}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input ends with a one-line error on stderr and exit status 1."""
    import fire

    try:
        fire.Fire(train_evaluate, command=argv, name="train.py")
    except ValueError as error:
        message = " ".join(str(error).split())
        print(f"train.py: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
