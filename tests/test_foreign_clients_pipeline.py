"""A pipeline in the style of the KFP v1 samples, never seen by this project, run locally:
lightweight components that use Google's clients and gsutil the usual way, unchanged.

`covertype run --local --package` runs it; the values that come out are checked against the
warehouse (DuckDB, read directly) and the storage folder.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import kfp
from kfp import dsl
from kfp.components import create_component_from_func
from test_local_run import covertype, only_run

from pipeline.local import data
from pipeline.local.home import storage_root, warehouse_path

ROWS = "3000"


def count_classes(project_id: str) -> str:
    """Rows per class, read with the BigQuery client as a sample component would."""
    from google.cloud import bigquery

    client = bigquery.Client(project=project_id)
    rows = client.query("SELECT Cover_Type, COUNT(*) AS n FROM covertype_dataset.covertype "
                        "GROUP BY Cover_Type ORDER BY Cover_Type").result()
    return ",".join(f"{row.Cover_Type}:{row.n}" for row in rows)


def publish(counts: str, bucket: str) -> str:
    """Write the counts with the storage client, copy them with gsutil, read them back."""
    import subprocess

    from google.cloud import storage

    client = storage.Client()
    target = client.lookup_bucket(bucket) or client.create_bucket(bucket)
    target.blob("reports/counts.txt").upload_from_string(counts)
    subprocess.run(["gsutil", "cp", f"gs://{bucket}/reports/counts.txt",
                    f"gs://{bucket}/reports/copy.txt"], check=True)
    return subprocess.run(["gsutil", "cat", f"gs://{bucket}/reports/copy.txt"], check=True,
                          capture_output=True, text=True).stdout


count_op = create_component_from_func(count_classes, base_image="python:3.9")
publish_op = create_component_from_func(publish, base_image="google/cloud-sdk:slim")


@dsl.pipeline(name="clients-sample", description="BigQuery to GCS with Google's clients")
def clients_sample(project_id: str = "sample-project", bucket: str = "sample-reports"):
    counts = count_op(project_id)
    publish_op(counts.output, bucket)


def test_sample_pipeline_with_google_clients_runs_locally(tmp_path, monkeypatch):
    package = tmp_path / "clients_sample.yaml"
    kfp.compiler.Compiler().compile(clients_sample, str(package))
    home = tmp_path / "home"
    monkeypatch.setenv("COVERTYPE_HOME", str(home))
    data.ensure_source_table(int(ROWS))  # the sample has no source table parameter
    result = covertype(home, "run", "--local", "--package", str(package), "--rows", ROWS)
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_run(home)
    with duckdb.connect(str(warehouse_path(home)), read_only=True) as con:
        expected = ",".join(f"{label}:{count}" for label, count in con.execute(
            "SELECT Cover_Type, COUNT(*) FROM covertype_dataset.covertype GROUP BY 1 ORDER BY 1"
        ).fetchall())
    assert sum(int(pair.split(":")[1]) for pair in expected.split(",")) == int(ROWS)
    steps = {step.template: step for step in record.steps.values()}
    assert steps["count-classes"].outputs == {"count-classes-Output": expected}
    # an output no task consumes is an artifact in KFP v1's compiled workflow
    assert Path(steps["publish"].artifacts["publish-Output"]).read_text() == expected
    reports = storage_root(home) / "sample-reports" / "reports"
    assert (reports / "counts.txt").read_text() == (reports / "copy.txt").read_text() == expected
