"""The local BigQuery: a DuckDB warehouse that answers BigQuery Standard SQL right or refuses.

Modules: `warehouse` (the DuckDB file, queries, loads, query jobs), `dialect` (translation and
the allowlist gate), `rules` (the rule registry) with `functions`, `strings`, `aggregates` and
`temporal` (the verified functions), `types` (BigQuery types of results and the API's value
text), `output` (bq's output formats), `fingerprints` (FARM_FINGERPRINT and its row cache),
`loading` (CSV in and out), `jobs` (query job inputs), `names` (identifiers and errors).
docs/bigquery.md lists what is supported and refused.
"""
import importlib
from typing import Any

# Name -> the module that defines it, imported on first use (PEP 562), so that a module
# below (`output`'s formats, say) can be imported without loading DuckDB and sqlglot.
_EXPORTS = {"fingerprint64": "fingerprints", "validate_query_job": "jobs",
            "CACHE_DATASET": "names", "DEFAULT_DATASET": "names", "NotSupportedError": "names",
            "WarehouseError": "names", "parse_table_name": "names",
            "validate_identifier": "names", "Warehouse": "warehouse"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
