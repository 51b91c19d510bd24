"""The Covertype data contract: columns, types, classes, split lots and metrics.

Every other module (trainer, evaluator, warehouse, server, tests) imports these facts
instead of retyping them. This module is copied into the trainer and base images, so it
depends on nothing but the standard library at import time (pandas/fsspec load lazily).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

NUMERIC_COLUMNS: tuple[str, ...] = (
    "Elevation",
    "Aspect",
    "Slope",
    "Horizontal_Distance_To_Hydrology",
    "Vertical_Distance_To_Hydrology",
    "Horizontal_Distance_To_Roadways",
    "Hillshade_9am",
    "Hillshade_Noon",
    "Hillshade_3pm",
    "Horizontal_Distance_To_Fire_Points",
)
CATEGORICAL_COLUMNS: tuple[str, ...] = ("Wilderness_Area", "Soil_Type")
FEATURE_COLUMNS: tuple[str, ...] = NUMERIC_COLUMNS + CATEGORICAL_COLUMNS
LABEL_COLUMN = "Cover_Type"
COLUMNS: tuple[str, ...] = FEATURE_COLUMNS + (LABEL_COLUMN,)

# BigQuery column types of the lab's table (`bq load` schema).
BIGQUERY_TYPES: dict[str, str] = {
    **{name: "INTEGER" for name in NUMERIC_COLUMNS},
    **{name: "STRING" for name in CATEGORICAL_COLUMNS},
    LABEL_COLUMN: "INTEGER",
}

WILDERNESS_AREAS: tuple[str, ...] = ("Rawah", "Neota", "Commanche", "Cache")
SOIL_TYPES: tuple[str, ...] = tuple(
    "C" + code
    for code in (
        "2702 2703 2704 2705 2706 2717 3501 3502 4201 4703 4704 4744 4758 5101 5151 6101 "
        "6102 6731 7101 7102 7103 7201 7202 7700 7701 7702 7709 7710 7745 7746 7755 7756 "
        "7757 7790 8703 8707 8708 8771 8772 8776"
    ).split()
)
CLASSES: tuple[int, ...] = tuple(range(7))
CLASS_NAMES: tuple[str, ...] = (
    "Spruce/Fir",
    "Lodgepole Pine",
    "Ponderosa Pine",
    "Cottonwood/Willow",
    "Aspen",
    "Douglas-fir",
    "Krummholz",
)

# MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(row))), 10) buckets of each split.
SPLIT_LOTS: dict[str, tuple[int, ...]] = {
    "training": (1, 2, 3, 4),
    "validation": (8,),
    "testing": (9,),
}

# File names of a scikit-learn model in a deployment folder, as AI Platform Prediction (and
# Vertex AI's scikit-learn serving) looks for them; the trainer writes the first.
MODEL_ARTIFACT_NAMES: tuple[str, ...] = ("model.pkl", "model.joblib")

# Metrics the evaluator computes; all are bounded to [0, 1]. Multi-class ones are macro.
METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


class SchemaError(ValueError):
    """A dataset does not match the Covertype schema."""


def validate_frame(frame: pd.DataFrame, source: str, with_label: bool = True) -> pd.DataFrame:
    """Check columns, types and values; return the frame with the columns in schema order.

    Raises:
        SchemaError: naming the first bad column or row and how to fix it.
    """
    import pandas as pd

    expected = COLUMNS if with_label else FEATURE_COLUMNS
    missing = [name for name in expected if name not in frame.columns]
    if missing:
        raise SchemaError(
            f"{source}: column {missing[0]!r} is missing; "
            f"expected the columns {', '.join(expected)}"
        )
    if frame.empty:
        raise SchemaError(f"{source}: no rows; check the query or split that produced it")
    integer_columns = NUMERIC_COLUMNS + ((LABEL_COLUMN,) if with_label else ())
    for name in integer_columns:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise SchemaError(
                f"{source}: row {row + 1} column {name!r} has {frame[name].iloc[row]!r}; "
                "expected an INTEGER"
            )
    for name in CATEGORICAL_COLUMNS:
        bad = frame[name].isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise SchemaError(
                f"{source}: row {row + 1} column {name!r} is empty; expected a STRING"
            )
    if with_label:
        labels = pd.to_numeric(frame[LABEL_COLUMN])
        bad = ~labels.isin(CLASSES)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise SchemaError(
                f"{source}: row {row + 1} has {LABEL_COLUMN}={labels.iloc[row]}; "
                f"labels must be {CLASSES[0]}..{CLASSES[-1]}"
            )
    frame = frame[list(expected)].copy()
    for name in integer_columns:
        frame[name] = pd.to_numeric(frame[name]).astype("int64")
    for name in CATEGORICAL_COLUMNS:
        frame[name] = frame[name].astype(str)
    return frame


def read_dataset(path: str, with_label: bool = True) -> pd.DataFrame:
    """Read a split CSV from a local path or a gs:// URI and validate it."""
    import fsspec
    import pandas as pd

    try:
        with fsspec.open(path, "rb", compression="infer") as stream:
            frame = pd.read_csv(stream, dtype={name: str for name in CATEGORICAL_COLUMNS})
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such file; check the path") from None
    except pd.errors.ParserError as error:
        raise SchemaError(f"{path}: not a well-formed CSV ({error}); fix the ragged row") from None
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{path}: the file is empty; check the query that produced it") from None
    return validate_frame(frame, path, with_label)
