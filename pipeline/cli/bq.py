"""`covertype bq`: query and load the local BigQuery warehouse (DuckDB file in COVERTYPE_HOME)."""
from __future__ import annotations

import argparse
import sys

import duckdb

from pipeline.local.bigquery import Warehouse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bq query` and `bq load`."""
    parser = subparsers.add_parser("bq", help="query and load the local BigQuery warehouse")
    commands = parser.add_subparsers(dest="bq_command", required=True)
    query = commands.add_parser(
        "query", help="run one BigQuery Standard SQL statement; print the rows as CSV"
    )
    query.add_argument("sql", help='e.g. "SELECT COUNT(*) FROM `covertype_dataset.covertype`"')
    query.set_defaults(func=_query)
    load = commands.add_parser("load", help="load a CSV with a header into dataset.table")
    load.add_argument("table", help="dataset.table, e.g. covertype_dataset.covertype")
    load.add_argument("csv_path", help="local path or gs:// URI; .gz is decompressed")
    load.add_argument("--append", action="store_true", help="append instead of replacing")
    load.set_defaults(func=_load)


def _query(args: argparse.Namespace) -> int:
    with Warehouse() as warehouse:
        rows = warehouse.query(args.sql)
    if rows.num_columns:
        sys.stdout.flush()
        # DuckDB's CSV writer quotes only where needed and writes BigQuery's true/false.
        duckdb.connect().from_arrow(rows).write_csv("/dev/stdout", header=True)
    return 0


def _load(args: argparse.Namespace) -> int:
    with Warehouse() as warehouse:
        rows = warehouse.load_csv(args.table, args.csv_path, replace=not args.append)
    print(f"{rows} rows loaded into {args.table}")
    return 0
