"""The bundled Covertype rows (data/covertype.csv.gz, CC BY 4.0) loaded into the warehouse."""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.local.bigquery import Warehouse

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
        import pandas as pd

        with tempfile.TemporaryDirectory() as folder:
            sample = Path(folder) / "covertype.csv"
            pd.read_csv(BUNDLED_CSV, nrows=rows).to_csv(sample, index=False)
            store.load_csv(table, str(sample))
        return True
