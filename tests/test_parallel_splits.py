"""Split steps that create the same dataset in parallel, as the lab's do (no separate create
step: each 0.2.5 bigquery query step with `dataset_id` creates the dataset if it is missing),
never fail locally. Each split's rows are counted independently: DuckDB's to_json of each
source row (the same text as BigQuery's TO_JSON_STRING for these integer and string columns)
hashed with pyfarmhash."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import duckdb
import farmhash
import kfp
from kfp.components import load_component_from_file

from pipeline.local import records
from pipeline.local.home import storage_root
from pipeline.local.run_local import run_local
from pipeline.settings import COMPONENTS_DIR

LOTS = {"training": (1, 2, 3, 4), "validation": (8,), "testing": (9,)}


def _package(folder: Path) -> Path:
    query_op = load_component_from_file(str(COMPONENTS_DIR / "bigquery/query/component.yaml"))

    @kfp.dsl.pipeline(name="parallel splits")
    def splits(project_id, gcs_root, source_table_name, dataset_id):
        for name, lots in LOTS.items():
            query_op(query=f"SELECT * FROM `{source_table_name}` AS cover WHERE "
                           "MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) IN "
                           f"({', '.join(map(str, lots))})",
                     project_id=project_id, dataset_id=dataset_id, table_id=name,
                     output_gcs_path=f"{gcs_root}/{name}.csv")

    path = folder / "splits.yaml"
    kfp.compiler.Compiler().compile(splits, str(path))
    return path


def test_three_parallel_splits_create_one_dataset(home, tmp_path):
    dataset = "fresh_splits"
    package = _package(tmp_path)
    params = {"source_table_name": "covertype_dataset.covertype", "dataset_id": dataset}
    for _ in range(2):  # first the dataset is missing, then it exists
        record = run_local(package, params, rows=3000, use_cache=False)
        assert record.status == records.SUCCEEDED, record.message
        assert {step.status for step in record.steps.values()} == {records.SUCCEEDED}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as warehouse:
        tables = {row[0] for row in warehouse.sql(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = ?",
            params=[dataset]).fetchall()}
        source = warehouse.sql("SELECT to_json(cover) FROM covertype_dataset.covertype AS cover"
                               ).fetchall()
    assert tables == set(LOTS) and len(source) == 3000
    lots = Counter(_lot(text) for (text,) in source)  # TO_JSON_STRING, FARM_FINGERPRINT
    for name, wanted in LOTS.items():
        with open(storage_root(home) / "staging" / f"{name}.csv") as stream:
            assert sum(1 for _ in csv.reader(stream)) - 1 == sum(lots[lot] for lot in wanted)


def _lot(row_json: str) -> int:
    """MOD(ABS(FARM_FINGERPRINT(json)), 10): FarmHash Fingerprint64 as BigQuery's signed INT64."""
    value = farmhash.fingerprint64(row_json)
    return abs(value - (1 << 64) if value >= 1 << 63 else value) % 10
