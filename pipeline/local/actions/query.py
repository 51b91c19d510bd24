"""The bigquery `query` action: the kfp 0.2.5 component's inputs, run on the local warehouse."""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

from pipeline.local.actions import inputs

# From the defining modules, not the package's lazy exports: the warm executor reads these
# imports to pick the zygote (DuckDB, sqlglot) this step forks from.
from pipeline.local.bigquery.jobs import validate_query_job
from pipeline.local.bigquery.warehouse import Warehouse


def query(
    query: Any,
    project_id: Any,
    dataset_id: Any = "",
    table_id: Any = "",
    output_gcs_path: Any = "",
    dataset_location: Any = "US",
    job_config: Any = "",
) -> dict[str, str]:
    """Run the query, write the table and the CSV; return the component's outputs.

    Inputs come as the launcher hands them over (pipeline/local/actions/inputs.py).

    Raises:
        ValueError: one line naming the bad input and the fix; nothing is written.
    """
    query = inputs.text("query", query, "'SELECT ...'")
    if not query.strip():
        raise ValueError("query is empty; pass a BigQuery Standard SQL statement")
    project_id = inputs.text("project_id", project_id, "my-project")
    dataset_id = inputs.text("dataset_id", dataset_id, "splits")
    table_id = inputs.text("table_id", table_id, "training")
    output_gcs_path = inputs.text("output_gcs_path", output_gcs_path, "gs://bucket/data.csv")
    dataset_location = inputs.text("dataset_location", dataset_location, "US")
    config = inputs.mapping("job_config", job_config, '{"query": {...}}') or None
    job_id = _job_id()
    validate_query_job(query, project_id, dataset_id, table_id, output_gcs_path, config, job_id)
    with Warehouse() as warehouse:
        result = warehouse.run_query_job(
            query,
            project_id,
            dataset_id=dataset_id,
            table_id=table_id,
            output_gcs_path=output_gcs_path,
            dataset_location=dataset_location,
            job_config=config,
            job_id=job_id,
        )
    return {"output_gcs_path": result["output_gcs_path"]}


def _job_id() -> str:
    """Stable across retries of one pipeline step (KFP_POD_NAME), random outside a pipeline."""
    pod_name = os.environ.get("KFP_POD_NAME", "")
    if pod_name:
        return hashlib.sha256(pod_name.encode()).hexdigest()[:32]
    return uuid.uuid4().hex
