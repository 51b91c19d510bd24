"""A second pipeline this project never saw, in the style of the KFP v1 samples: a lightweight
component reads BigQuery with `google.cloud.bigquery.Client()` (no arguments, default
credentials) into a DataFrame and passes it on as a CSV artifact (OutputPath/InputPath), the
next step turns it into outputs, and a condition acts on one of them.

`covertype run --local --package` runs it unchanged; the values are checked against an
independent DuckDB query of the warehouse. Not `from __future__ import annotations`: kfp
reads the components' annotations.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import duckdb
import kfp
import pytest
from kfp import dsl
from kfp.components import InputPath, OutputPath, create_component_from_func

from pipeline.local import data, records
from pipeline.local.home import warehouse_path
from pipeline.local.records import RunStore
from pipeline.local.summary import step_output

COVERTYPE = str(Path(sys.executable).with_name("covertype"))
ROWS = 3000


def class_profile(source_table: str, profile_path: OutputPath("CSV")):
    """Rows and mean elevation per cover type, read with the BigQuery client."""
    from google.cloud import bigquery

    client = bigquery.Client()
    frame = client.query(
        f"SELECT Cover_Type, COUNT(*) AS n, AVG(Elevation) AS mean_elevation "
        f"FROM `{source_table}` GROUP BY Cover_Type ORDER BY Cover_Type").to_dataframe()
    frame.to_csv(profile_path, index=False)


def majority(profile_path: InputPath("CSV")) -> NamedTuple(
        "Outputs", [("cover_type", int), ("share", float), ("classes", int)]):
    """The most frequent class and its share of the rows."""
    import pandas as pd

    frame = pd.read_csv(profile_path)
    top = frame.loc[frame["n"].idxmax()]
    return int(top["Cover_Type"]), float(top["n"] / frame["n"].sum()), len(frame)


def report(text: str) -> str:
    print(text)
    return text


profile_op = create_component_from_func(class_profile, base_image="python:3.7")
majority_op = create_component_from_func(majority, base_image="python:3.7")
report_op = create_component_from_func(report, base_image="alpine:3")


@dsl.pipeline(name="class-balance", description="Is one cover type most of the data?")
def class_balance(source_table: str = "covertype_dataset.covertype", threshold: float = 0.3):
    profile = profile_op(source_table)
    top = majority_op(profile.outputs["profile"])
    with dsl.Condition(top.outputs["share"] > threshold):
        report_op("imbalanced")


@pytest.fixture
def loaded(home):
    data.ensure_source_table(ROWS)
    return home


def test_the_samples_style_pipeline_runs_and_agrees_with_duckdb(loaded, tmp_path):
    home = loaded
    package = tmp_path / "class_balance.yaml"
    kfp.compiler.Compiler().compile(class_balance, str(package))
    result = subprocess.run([COVERTYPE, "run", "--local", "--package", str(package)],
                            env={**os.environ, "COVERTYPE_HOME": str(home)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (record,) = RunStore(home / "runs").list()
    assert record.status == records.SUCCEEDED

    with duckdb.connect(str(warehouse_path(home)), read_only=True) as warehouse:
        expected = warehouse.sql(
            "SELECT Cover_Type, COUNT(*), AVG(Elevation) FROM covertype_dataset.covertype "
            "GROUP BY Cover_Type ORDER BY Cover_Type").fetchall()
    with open(record.steps["class-profile"].artifacts["class-profile-profile"]) as stream:
        profile = [(int(row["Cover_Type"]), int(row["n"]), float(row["mean_elevation"]))
                   for row in csv.DictReader(stream)]
    assert [row[:2] for row in profile] == [row[:2] for row in expected]
    assert [row[2] for row in profile] == pytest.approx([row[2] for row in expected], rel=1e-12)
    top = max(expected, key=lambda row: row[1])
    assert int(step_output(record, "majority", "cover_type")) == top[0]
    assert float(step_output(record, "majority", "share")) == pytest.approx(top[1] / ROWS,
                                                                            rel=1e-12)
    assert int(step_output(record, "majority", "classes")) == len(expected)
    assert record.steps["report"].status == (
        records.SUCCEEDED if top[1] / ROWS > 0.3 else records.SKIPPED)
