"""The bundled Covertype rows (data/covertype.csv.gz, CC BY 4.0) loaded into the warehouse."""
from __future__ import annotations

from pathlib import Path

BUNDLED_CSV = Path(__file__).resolve().parents[2] / "data" / "covertype.csv.gz"
BUNDLED_ROWS = 426_599
LAB_ROWS = 100_000
SOURCE_TABLE = "covertype_dataset.covertype"


def parse_rows(value: str | int) -> int:
    """`--rows`: a positive count up to the bundled rows, or 'all'."""
    if str(value).lower() == "all":
        return BUNDLED_ROWS
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if not 1 <= rows <= BUNDLED_ROWS:
        raise ValueError(f"--rows {value!r} is not a row count; use 1..{BUNDLED_ROWS} or 'all'")
    return rows


def ensure_source_table(rows: int, table: str = SOURCE_TABLE,
                        warehouse: Path | None = None) -> bool:
    """Load the first `rows` bundled rows as `table` unless it already holds exactly them.

    The bundled file is shuffled, so its first rows are a random sample. Returns True when
    the table was (re)loaded.
    """
    from pipeline.local.bigquery import Warehouse  # DuckDB: only when the data is needed

    with Warehouse(warehouse) as store:
        try:
            current = store.query(f"SELECT COUNT(*) AS n FROM `{table}`").column("n")[0].as_py()
        except ValueError:
            current = None
        if current == rows:
            return False
        if rows == BUNDLED_ROWS:
            store.load_csv(table, str(BUNDLED_CSV))
            return True
        import tempfile

        import pandas as pd

        with tempfile.TemporaryDirectory() as folder:
            sample = Path(folder) / "covertype.csv"
            pd.read_csv(BUNDLED_CSV, nrows=rows).to_csv(sample, index=False)
            store.load_csv(table, str(sample))
        return True


def check_source_table(table: str, warehouse: Path | None = None) -> dict[str, int]:
    """Refuse a source table the pipeline cannot use, before any step runs.

    Checks the columns and their types, missing values, the label range and that every split
    gets rows. Returns the row count of each split.
    """
    from pipeline import schema
    from pipeline.local.bigquery import Warehouse

    expected = {name: ("int64" if kind == "INTEGER" else "string")
                for name, kind in schema.BIGQUERY_TYPES.items()}
    with Warehouse(warehouse) as store:
        columns = {field.name: str(field.type) for field in
                   store.query(f"SELECT * FROM `{table}` LIMIT 0").schema}
        for name, kind in expected.items():
            if name not in columns:
                raise ValueError(f"source table {table} has no column {name}; load a table with "
                                 f"the columns {', '.join(schema.COLUMNS)}")
            if columns[name] != kind:
                raise ValueError(f"source table {table} column {name} is {columns[name]}, "
                                 f"expected {schema.BIGQUERY_TYPES[name]}; reload it")
        nulls = " + ".join(f"COUNT(*) - COUNT({name})" for name in schema.COLUMNS)
        label = schema.LABEL_COLUMN
        stats = store.query(f"SELECT COUNT(*) AS n, MIN({label}) AS low, MAX({label}) AS high, "
                            f"{nulls} AS nulls FROM `{table}`").to_pylist()[0]
        if stats["nulls"]:
            raise ValueError(f"source table {table} has {stats['nulls']} empty values; "
                             "every column is required")
        if stats["n"] and not (schema.CLASSES[0] <= stats["low"] and
                               stats["high"] <= schema.CLASSES[-1]):
            raise ValueError(f"source table {table} has {label} values {stats['low']}.."
                             f"{stats['high']}; labels must be {schema.CLASSES[0]}.."
                             f"{schema.CLASSES[-1]}")
        rows = store.query(
            f"SELECT MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) AS lot, COUNT(*) AS n "
            f"FROM `{table}` AS cover GROUP BY lot").to_pylist()
    lots = {row["lot"]: row["n"] for row in rows}
    sizes = {split: sum(lots.get(lot, 0) for lot in split_lots)
             for split, split_lots in schema.SPLIT_LOTS.items()}
    empty = [split for split, size in sizes.items() if not size]
    if empty:
        raise ValueError(f"source table {table} gives an empty {empty[0]} split "
                         f"({stats['n']} rows); load more rows")
    return sizes
