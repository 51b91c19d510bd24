"""Model quality: test accuracy of the model the product trains, and a stronger reference model.

The product offers one model, the lab's SGDClassifier pipeline (trainer_image/train.py has no
model option), so its rows come from the e2e runs' evaluate-model metric. The reference is
scikit-learn's HistGradientBoostingClassifier trained on the same training + validation rows
and scored on the same test rows: a yardstick, not something the pipeline can deploy.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench import Row
from pipeline import schema


def reference_accuracy(splits: Path) -> dict:
    """Fit HistGradientBoostingClassifier on training+validation; accuracy on testing."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    frames = {split: schema.read_dataset(str(splits / split / "data.csv"))
              for split in schema.SPLIT_LOTS}
    train = pd.concat([frames["training"], frames["validation"]], ignore_index=True)
    test = frames["testing"]
    features = list(schema.FEATURE_COLUMNS)
    encoder = ColumnTransformer([
        ("num", "passthrough", list(schema.NUMERIC_COLUMNS)),
        ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
         list(schema.CATEGORICAL_COLUMNS)),
    ])
    categorical = [False] * len(schema.NUMERIC_COLUMNS) + [True] * len(schema.CATEGORICAL_COLUMNS)
    model = Pipeline([("encode", encoder), ("classifier", HistGradientBoostingClassifier(
        categorical_features=categorical, random_state=0))])
    start = time.perf_counter()
    model.fit(train[features], train[schema.LABEL_COLUMN])
    fit_s = time.perf_counter() - start
    accuracy = float(model.score(test[features], test[schema.LABEL_COLUMN]))
    return {"accuracy": accuracy, "fit_s": round(fit_s, 3), "train_rows": len(train),
            "test_rows": len(test)}


def run(splits: Path, lab: dict, full: dict | None = None) -> dict:
    """Quality of the offered model (from the e2e results) and of the reference on `splits`."""
    result = {
        "offered_models": ["SGDClassifier(loss='log_loss'): the lab's model, the only one"],
        "threshold": lab["runs"][0]["threshold"],  # the run's evaluation_metric_threshold
        "sgd_lab": lab["ours"]["accuracy"],
        "sgd_lab_baseline": lab["baseline"]["accuracy"],
        "reference_hgb": reference_accuracy(splits),
    }
    if full:
        result["sgd_full"] = full["ours"]["accuracy"]
        result["sgd_full_baseline"] = full["baseline"]["accuracy"]
    return result


def rows(result: dict) -> list[Row]:
    """SGD (lab rows, all rows if measured) against the deploy threshold; the reference."""
    threshold = result["threshold"]
    target = f"> {threshold} (deploy gate)"
    lab = result["sgd_lab"]
    table = [Row("quality", "test accuracy, SGD default (only model offered), 100k rows",
                 lab, result["sgd_lab_baseline"], target, lab["min"] > threshold, 4)]
    if "sgd_full" in result:
        full = result["sgd_full"]
        table.append(Row("quality", "test accuracy, SGD default, all rows", full,
                         result["sgd_full_baseline"], target,
                         full["min"] > threshold, 4))
    reference = result["reference_hgb"]
    table.append(Row("quality", "test accuracy, HistGradientBoosting (reference, not offered),"
                     " 100k rows", reference["accuracy"], digits=4))
    return table
