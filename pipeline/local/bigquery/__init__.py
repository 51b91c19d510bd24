"""The local BigQuery: a DuckDB warehouse that answers BigQuery Standard SQL right or refuses.

Modules: `warehouse` (the DuckDB file, queries, loads, query jobs), `dialect` (translation and
the allowlist gate), `rules` + `functions` + `temporal` (the verified functions), `types`
(BigQuery types of results), `fingerprints` (FARM_FINGERPRINT and its row cache), `loading`
(CSV in and out), `jobs` (query job inputs), `names` (identifiers and errors).
"""
from pipeline.local.bigquery.fingerprints import fingerprint64
from pipeline.local.bigquery.jobs import validate_query_job
from pipeline.local.bigquery.names import (
    CACHE_DATASET,
    DEFAULT_DATASET,
    NotSupportedError,
    WarehouseError,
    parse_table_name,
    validate_identifier,
)
from pipeline.local.bigquery.warehouse import Warehouse

__all__ = [
    "CACHE_DATASET", "DEFAULT_DATASET", "NotSupportedError", "Warehouse", "WarehouseError",
    "fingerprint64", "parse_table_name", "validate_identifier", "validate_query_job",
]
