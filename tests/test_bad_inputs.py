"""The bad-input table of a local run: one line naming the problem and the fix, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest
from test_local_run import covertype

from pipeline.covertype_training_pipeline import HYPERTUNE_SETTINGS


def _settings(**changes) -> str:
    settings = json.loads(json.dumps(HYPERTUNE_SETTINGS))
    hyperparameters = settings["hyperparameters"]
    for key, value in changes.items():
        if key == "alpha":
            hyperparameters["params"][1].update(value)
        else:
            hyperparameters[key] = value
    return json.dumps(settings)


PARAMETERS = [
    ("evaluation_metric_threshold=high", "evaluation_metric_threshold 'high' is not a number"),
    ("evaluation_metric_threshold=1.5", "evaluation_metric_threshold '1.5' is not a number in"),
    ("evaluation_metric_name=auc", "evaluation_metric_name 'auc' is unknown; use one of"),
    ("hypertune_settings={'hyperparameters': True", "hypertune_settings is neither JSON nor a"),
    ("hypertune_settings={'hyperparameters': True}", 'with a "hyperparameters" object'),
    ("dataset_id=None", "dataset_id 'None' would reach the components as None (no value)"),
    ("replace_existing_version=false", "replace_existing_version 'false' is not a boolean"),
    (f"hypertune_settings={_settings(maxParallelTrials=9)}",
     "maxParallelTrials (9) exceeds maxTrials (6)"),
    (f"hypertune_settings={_settings(alpha={'minValue': 0.1, 'maxValue': 0.01})}",
     "has minValue 0.1 > maxValue 0.01"),
    (f"hypertune_settings={_settings(algorithm='GRID_SEARCH')}",
     "GRID_SEARCH cannot search DOUBLE parameter 'alpha'"),
    (f"hypertune_settings={_settings(alpha={'type': 'FLOAT'})}", "FLOAT"),
    (f"hypertune_settings={_settings(alpha={'scaleType': 'UNIT_CUBIC_SCALE'})}",
     "UNIT_CUBIC_SCALE"),
    ("source_table_name=covertype_dataset.covertype'; DROP TABLE x; --",
     "source_table_name \"covertype_dataset.covertype'; DROP TABLE x; --\" is not"),
    ("source_table_name=covertype_dataset..covertype", "is not [project.]dataset.table"),
    ("dataset_id=../splits", "dataset_id '../splits' is not a BigQuery dataset id"),
    ("model_id=covertype/classifier", "model_id 'covertype/classifier' is not an AI Platform"),
    ("version_id=v01\"", "version_id 'v01\"' is not an AI Platform name"),
    ("gcs_root=/tmp/../etc", "gcs_root '/tmp/../etc' is not a folder URI"),
    ("replace_existing_version=maybe", "replace_existing_version 'maybe' is not a boolean"),
    ("project_id=[/bold]", "project_id '[/bold]' is not a GCP project id; use 6-30 lowercase"),
    ("project_id=My-Project", "project_id 'My-Project' is not a GCP project id"),
    ("project_id=abcde", "project_id 'abcde' is not a GCP project id"),
    ("project_id=my-project-", "project_id 'my-project-' is not a GCP project id"),
    ("project_id=1-project", "project_id '1-project' is not a GCP project id"),
    (f"project_id=a{'b' * 30}", f"project_id 'a{'b' * 30}' is not a GCP project id"),
]


def _nothing_written(home) -> None:
    runs = home / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert not (home / "registry").exists() or not any((home / "registry").iterdir())
    assert not (home / "gcs").exists()
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


@pytest.mark.parametrize("param, message", PARAMETERS)
def test_bad_parameters(tmp_path, compiled_package, param, message):
    home = tmp_path / "home"
    result = covertype(home, "run", "--local", "--package", str(compiled_package),
                       "--param", param)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    _nothing_written(home)


@pytest.fixture(scope="module")
def bad_tables(tmp_path_factory):
    """A warehouse holding broken copies of the source table."""
    home = tmp_path_factory.mktemp("bad-home")
    columns = ("Elevation, Aspect, Slope, Horizontal_Distance_To_Hydrology, "
               "Vertical_Distance_To_Hydrology, Horizontal_Distance_To_Roadways, Hillshade_9am, "
               "Hillshade_Noon, Hillshade_3pm, Horizontal_Distance_To_Fire_Points, "
               "Wilderness_Area, Soil_Type")
    csv = tmp_path_factory.mktemp("csv") / "rows.csv"
    import pandas as pd
    from conftest import BUNDLED_CSV
    pd.read_csv(BUNDLED_CSV, nrows=500).to_csv(csv, index=False)
    statements = [
        "CREATE SCHEMA IF NOT EXISTS bad",
        f"CREATE TABLE bad.no_label AS SELECT {columns} FROM covertype_dataset.covertype",
        f"CREATE TABLE bad.text_elevation AS SELECT CAST(Elevation AS STRING) AS Elevation, "
        f"{columns.split(', ', 1)[1]}, Cover_Type FROM covertype_dataset.covertype",
        f"CREATE TABLE bad.labels AS SELECT {columns}, Cover_Type + 1 AS Cover_Type "
        "FROM covertype_dataset.covertype",
        "CREATE TABLE bad.tiny AS SELECT * FROM covertype_dataset.covertype LIMIT 3",
    ]
    loaded = covertype(home, "bq", "load", "covertype_dataset.covertype", str(csv))
    assert loaded.returncode == 0, loaded.stderr
    for statement in statements:
        result = covertype(home, "bq", "query", statement)
        assert result.returncode == 0, (statement, result.stderr)
    return home


@pytest.mark.parametrize("table, message", [
    ("bad.missing", "not found"),
    ("bad.no_label", "has no column Cover_Type"),
    ("bad.text_elevation", "column Elevation is string, expected INTEGER"),
    ("bad.labels", "has Cover_Type values 1..7; labels must be 0..6"),
    ("bad.tiny", "split (3 rows); load more rows"),
])
def test_bad_source_tables(bad_tables, compiled_package, table, message):
    home = bad_tables
    result = covertype(home, "run", "--local", "--package", str(compiled_package),
                       "--param", f"source_table_name={table}")
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    _nothing_written(home)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as warehouse:
        schemas = {row[0] for row in warehouse.sql("SELECT schema_name FROM duckdb_schemas()")
                   .fetchall()}
    assert "splits" not in schemas and "bad" in schemas


@pytest.mark.parametrize("project_id, accepted", [
    ("local", True), ("my-project", True), ("abcdef", True), (f"a{'b' * 29}", True),
    ("my-project-", False), ("[/bold]", False), ("local-", False), ("", False),
])
def test_project_id_as_make_run_checks_it(project_id, accepted):
    """`python -m pipeline.parameters` is what `make run` calls before submitting."""
    result = subprocess.run([sys.executable, "-m", "pipeline.parameters",
                             f"project_id={project_id}"], capture_output=True, text=True)
    assert result.returncode == (0 if accepted else 2), result.stderr
    if not accepted:
        assert result.stderr.splitlines() == [
            f"error: project_id {project_id!r} is not a GCP project id; use 6-30 lowercase "
            "letters, digits or hyphens, starting with a letter and not ending with a hyphen "
            "(or local for a local run)"]


def test_markup_in_user_text_is_printed_as_text(tmp_path, compiled_package):
    """Rich markup in a parameter reaches the step notes and the run record: the run's
    summary, `runs show` and `runs list` print it literally (it once crashed them for good)."""
    home = tmp_path / "home"
    (home / "gcs").mkdir(parents=True)  # inside the storage root, so the run starts
    (home / "gcs" / "blocker").write_text("a file where the run wants a folder")
    root = f"{home}/gcs/blocker/[/bold]x[red]"
    result = covertype(home, "run", "--local", "--package", str(compiled_package), "--rows",
                       "5000", "--param", f"gcs_root={root}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr
    assert f"cannot write {root}/datasets/" in result.stdout
    (run_id,) = [path.name for path in (home / "runs").iterdir()]
    shown = covertype(home, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"gcs_root = {root}" in shown.stdout
    assert f"cannot write {root}/datasets/" in shown.stdout
    listed = covertype(home, "runs", "list")
    assert listed.returncode == 0 and run_id in listed.stdout
