"""Benchmark: the pipeline's three split queries on the local warehouse vs a per-row Python UDF.

Run `python bench/bench_splits.py [rows_csv] [--repeats N]`; prints JSON with the seconds of
all three splits (median/min/max over the repeats) and the speed-up over the per-row UDF.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import farmhash
import sqlglot

from pipeline import schema
from pipeline.local.bigquery import CACHE_DATASET, Warehouse

BUNDLED_CSV = Path(__file__).resolve().parents[1] / "data" / "covertype.csv.gz"
SOURCE = "covertype_dataset.covertype"


def split_query(lots: tuple[int, ...], source: str = f"`{SOURCE}`") -> str:
    """The pipeline's split query (a subquery source makes ours skip its fingerprint cache)."""
    return (
        f"SELECT * FROM {source} AS cover WHERE "
        f"MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) IN ({', '.join(map(str, lots))})"
    )


def _per_row_fingerprint(text: str) -> int:
    value = farmhash.fingerprint64(text)
    return value - 2**64 if value >= 2**63 else value


def _per_row_splits(path: Path) -> list[int]:
    """The straightforward stand-in: sqlglot translation + a per-row (native) Python UDF."""
    sizes = []
    for lots in schema.SPLIT_LOTS.values():
        con = duckdb.connect(str(path))
        con.create_function("farm_fingerprint", _per_row_fingerprint, ["VARCHAR"], "BIGINT")
        sql = sqlglot.transpile(split_query(lots), read="bigquery", write="duckdb")[0]
        sizes.append(con.sql(sql).to_arrow_table().num_rows)
        con.close()
    return sizes


def _our_splits(path: Path, source: str = f"`{SOURCE}`") -> list[int]:
    """The local warehouse as a pipeline step uses it: open, query to Arrow, close."""
    sizes = []
    for lots in schema.SPLIT_LOTS.values():
        with Warehouse(path) as warehouse:
            sizes.append(warehouse.query(split_query(lots, source)).num_rows)
    return sizes


def _timed(function: Callable[..., list[int]], *args: object) -> tuple[float, list[int]]:
    start = time.perf_counter()
    sizes = function(*args)
    return time.perf_counter() - start, sizes


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(seconds), 3), "min": round(min(seconds), 3),
            "max": round(max(seconds), 3)}


def run(rows_csv: str, repeats: int = 5) -> dict:
    """Time the three splits over `rows_csv` loaded into a temporary warehouse.

    Variants, each on a fresh copy of the loaded warehouse: `per_row_udf` (the baseline),
    `vectorised_udf` (ours without the fingerprint cache), `ours` (as the pipeline runs right
    after `load_csv`, which computes the fingerprints) and `ours_cache_rebuild` (the table
    changed since the load, so the first split recomputes the fingerprints).
    """
    with tempfile.TemporaryDirectory() as folder:
        loaded, stale = Path(folder) / "loaded.duckdb", Path(folder) / "stale.duckdb"
        start = time.perf_counter()
        with Warehouse(loaded) as warehouse:
            rows = warehouse.load_csv(SOURCE, rows_csv)
        load_seconds = time.perf_counter() - start
        shutil.copy(loaded, stale)
        with duckdb.connect(str(stale)) as con:
            con.execute(f"DROP SCHEMA {CACHE_DATASET} CASCADE")
        variants = [
            ("per_row_udf", stale, _per_row_splits, ()),
            ("vectorised_udf", stale, _our_splits, (f"(SELECT * FROM `{SOURCE}`)",)),
            ("ours", loaded, _our_splits, ()),
            ("ours_cache_rebuild", stale, _our_splits, ()),
        ]
        seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
        sizes = {}
        work = Path(folder) / "work.duckdb"
        for _ in range(repeats):
            for name, template, function, args in variants:
                shutil.copy(template, work)
                elapsed, sizes[name] = _timed(function, work, *args)
                seconds[name].append(elapsed)
                work.unlink()
        if len({tuple(s) for s in sizes.values()}) != 1:
            raise AssertionError(f"the variants disagree on the split sizes: {sizes}")
    result = {"rows": rows, "repeats": repeats, "load_seconds": round(load_seconds, 3),
              "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
              "split_rows": dict(zip(schema.SPLIT_LOTS, sizes["ours"], strict=True))}
    result.update({name: _stats(values) for name, values in seconds.items()})
    baseline = result["per_row_udf"]["median"]
    for name in list(seconds)[1:]:
        result[f"speedup_{name}"] = round(baseline / result[name]["median"], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows_csv", nargs="?", default=str(BUNDLED_CSV))
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.rows_csv, arguments.repeats), indent=2))
