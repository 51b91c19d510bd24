"""Query jobs as the kfp 0.2.5 bigquery component runs them: inputs, dispositions, plan."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlglot import exp

from pipeline.local.bigquery.dialect import Catalog, translate
from pipeline.local.bigquery.names import DEFAULT_DATASET, WarehouseError, validate_identifier

_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,127}")
_WRITE_DISPOSITIONS = ("WRITE_TRUNCATE", "WRITE_APPEND", "WRITE_EMPTY")
_CREATE_DISPOSITIONS = ("CREATE_IF_NEEDED", "CREATE_NEVER")
_JOB_CONFIG_KEYS = {"writeDisposition", "createDisposition", "useLegacySql", "priority"}


def validate_query_job(
    query: str,
    project_id: str,
    dataset_id: str = "",
    table_id: str = "",
    output_gcs_path: str = "",
    job_config: Mapping[str, Any] | None = None,
    job_id: str = "",
) -> None:
    """Check a query job's inputs without opening the warehouse (run_query_job checks too)."""
    plan_query_job(query, project_id, dataset_id, table_id, output_gcs_path, job_config,
                   job_id or "0")


def plan_query_job(
    query: str,
    project_id: str,
    dataset_id: str,
    table_id: str,
    output_gcs_path: str,
    job_config: Mapping[str, Any] | None,
    job_id: str,
    catalog: Catalog | None = None,
) -> tuple[exp.Expression, tuple[str, str] | None, str, str]:
    """The translated statement, destination (dataset, table) or None, and dispositions."""
    if not _PROJECT_ID.fullmatch(project_id or ""):
        raise WarehouseError(f"invalid project_id {project_id!r}: pass a GCP project id")
    write, create = _dispositions(job_config)
    statement = translate(query, catalog)
    destination = None
    if dataset_id or output_gcs_path:
        destination = (
            validate_identifier("dataset_id", dataset_id or DEFAULT_DATASET),
            validate_identifier("table_id", table_id or f"query_{job_id}"),
        )
        if not isinstance(statement, exp.Query):
            raise WarehouseError("only a SELECT query can write a destination table")
    return statement, destination, write, create


def _dispositions(job_config: Mapping[str, Any] | None) -> tuple[str, str]:
    """Write and create dispositions: the component's defaults, or BigQuery's for a config."""
    if not job_config:
        return "WRITE_TRUNCATE", "CREATE_IF_NEEDED"
    unknown = set(job_config) - {"query", "labels"}
    config = job_config.get("query", {})
    if unknown or not isinstance(config, Mapping):
        raise WarehouseError(
            f"job_config: unsupported keys {sorted(unknown) or ['query']}; pass "
            '{"query": {"writeDisposition": ..., "createDisposition": ...}}'
        )
    if set(config) - _JOB_CONFIG_KEYS:
        raise WarehouseError(
            f"job_config: unsupported query keys {sorted(set(config) - _JOB_CONFIG_KEYS)}; "
            f"supported: {', '.join(sorted(_JOB_CONFIG_KEYS))}"
        )
    if config.get("useLegacySql"):
        raise WarehouseError("job_config: legacy SQL is not supported; use Standard SQL")
    write = config.get("writeDisposition", "WRITE_EMPTY")
    create = config.get("createDisposition", "CREATE_IF_NEEDED")
    if write not in _WRITE_DISPOSITIONS or create not in _CREATE_DISPOSITIONS:
        raise WarehouseError(
            f"job_config: unknown disposition {write!r}/{create!r}; use one of "
            f"{', '.join(_WRITE_DISPOSITIONS + _CREATE_DISPOSITIONS)}"
        )
    return write, create
