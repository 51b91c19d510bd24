"""Names and errors of the local BigQuery: datasets, tables, and the one-line refusals."""
from __future__ import annotations

import re

from pipeline.errors import one_line

DEFAULT_DATASET = "kfp_tmp_dataset"
# Hidden dataset (BigQuery hides names starting with "_") holding fingerprint caches.
CACHE_DATASET = "_covertype_cache"
DOCS = "docs/bigquery.md"
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,1024}")


class WarehouseError(ValueError):
    """A bad query, name or file for the local warehouse; the message is one line."""


class NotSupportedError(WarehouseError):
    """A function or form of BigQuery SQL the stand-in has not verified, so it refuses it."""

    def __init__(self, what: str) -> None:
        self.what = one_line(what)
        super().__init__(f"not supported by the local BigQuery: {self.what} (see {DOCS})")


def first_line(error: BaseException) -> str:
    """The first line of an error: DuckDB appends context lines users do not need."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def validate_identifier(kind: str, value: str) -> str:
    """Check a dataset or table id against BigQuery's rules; return it."""
    if not _IDENTIFIER.fullmatch(value or ""):
        raise WarehouseError(
            f"invalid {kind} {value!r}: use 1-1024 letters, digits or underscores"
        )
    if kind.startswith("dataset") and value.lower() == CACHE_DATASET:
        raise WarehouseError(f"invalid {kind} {value!r}: reserved for the local warehouse")
    return value


def parse_table_name(name: str) -> tuple[str, str]:
    """Split and check `dataset.table`."""
    dataset, dot, table = (name or "").partition(".")
    if (not dot or not _IDENTIFIER.fullmatch(dataset) or not _IDENTIFIER.fullmatch(table)
            or dataset.lower() == CACHE_DATASET):
        raise WarehouseError(
            f"invalid table name {name!r}: use dataset.table, each 1-1024 letters, digits "
            "or underscores"
        )
    return dataset, table


def quote(name: str) -> str:
    """A DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"
