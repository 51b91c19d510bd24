"""The local BigQuery: a DuckDB warehouse that answers BigQuery Standard SQL right or refuses.

Modules: `warehouse` (the DuckDB file, queries, loads, query jobs), `dialect` (translation and
the allowlist gate), `rules` (the rule registry) with `functions`, `strings`, `aggregates` and
`temporal` (the verified functions), `types` (BigQuery types of results and the API's value
text), `output` (bq's output formats), `fingerprints` (FARM_FINGERPRINT and its row cache),
`loading` (CSV in and out), `jobs` (query job inputs), `names` (identifiers and errors).
docs/bigquery.md lists what is supported and refused.
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
