"""`covertype bq`: query and load the local BigQuery warehouse (DuckDB file in COVERTYPE_HOME)."""
from __future__ import annotations

import argparse
import sys

from pipeline.local.bigquery import Warehouse
from pipeline.local.bigquery.output import FORMATS, render


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bq query` and `bq load`."""
    parser = subparsers.add_parser("bq", help="query and load the local BigQuery warehouse")
    commands = parser.add_subparsers(dest="bq_command", required=True)
    query = commands.add_parser(
        "query", help="run one BigQuery Standard SQL statement and print its rows like bq "
                      "(docs/bigquery.md lists what is supported)")
    query.add_argument("sql", help='e.g. "SELECT COUNT(*) FROM `covertype_dataset.covertype`"')
    query.add_argument("--format", choices=FORMATS, default=None,
                       help="output format as in bq (default: pretty on a terminal, csv "
                            "when piped)")
    query.set_defaults(func=_query)
    load = commands.add_parser("load", help="load a CSV with a header into dataset.table")
    load.add_argument("table", help="dataset.table, e.g. covertype_dataset.covertype")
    load.add_argument("csv_path", help="local path or gs:// URI; .gz is decompressed")
    load.add_argument("--append", action="store_true", help="append instead of replacing")
    load.set_defaults(func=_load)


def _query(args: argparse.Namespace) -> int:
    output_format = args.format or ("pretty" if sys.stdout.isatty() else "csv")
    with Warehouse() as warehouse:
        rows = warehouse.query(args.sql)
    if rows.num_columns:
        # Through Python's stdout, never by path: `>> file` must append, not truncate.
        sys.stdout.write(render(rows, output_format))
        sys.stdout.flush()
    return 0


def _load(args: argparse.Namespace) -> int:
    with Warehouse() as warehouse:
        rows = warehouse.load_csv(args.table, args.csv_path, replace=not args.append)
    print(f"{rows} rows loaded into {args.table}")
    return 0
