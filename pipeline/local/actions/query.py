"""The bigquery `query` action: the kfp 0.2.5 component's inputs, run on the local warehouse."""
from __future__ import annotations

import hashlib
import json
import os
import uuid

from pipeline.local.bigquery import Warehouse, validate_query_job


def query(
    query: str,
    project_id: str,
    dataset_id: str = "",
    table_id: str = "",
    output_gcs_path: str = "",
    dataset_location: str = "US",
    job_config: str = "",
) -> dict[str, str]:
    """Run the query, write the table and the CSV; return the component's outputs.

    Raises:
        ValueError: one line naming the bad input and the fix; nothing is written.
    """
    if not query.strip():
        raise ValueError("query is empty; pass a BigQuery Standard SQL statement")
    config = None
    if job_config.strip():
        try:
            config = json.loads(job_config)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"job_config is not valid JSON ({error}); pass a JSON object or ''"
            ) from None
        if not isinstance(config, dict):
            raise ValueError(f"job_config must be a JSON object, got {job_config!r}")
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
