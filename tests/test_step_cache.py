"""The step cache never reuses outputs that no longer match what the step would write now.

Every exported split is compared with an independent recount of the current source table:
its rows read with DuckDB directly, bucketed with pyfarmhash by the lab's rule
MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(row))), 10), none of it computed by the code under
test. The row-count scenario runs the whole pipeline; the edits run a package of only its
split steps (the same components and queries), as nothing after the splits matters there.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import duckdb
import farmhash
import pandas as pd
import pytest
from conftest import BUNDLED_CSV
from test_local_run import covertype

from pipeline.local.bigquery import Warehouse
from pipeline.local.cache import table_fingerprint
from pipeline.local.records import RunRecord, RunStore

# The lab's split lots (README, "The pipeline"): fingerprint bucket -> split.
SPLIT_LOTS = {"training": (1, 2, 3, 4), "validation": (8,), "testing": (9,)}
SPLIT_STEPS = {f"create-{split}-split" for split in SPLIT_LOTS}
# Two quick trials and no deployment: these tests are about the split steps.
QUICK = ["--param", "hypertune_settings=" + json.dumps({"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 2, "maxParallelTrials": 2,
    "hyperparameterMetricTag": "accuracy",
    "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500]},
               {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"}]}}),
         "--param", "evaluation_metric_threshold=1.0"]


@pytest.fixture(scope="module")
def splits_package(tmp_path_factory) -> Path:
    """The pipeline's first four steps, compiled alone: its own components and queries."""
    from kfp import compiler, dsl

    from pipeline import covertype_training_pipeline as lab
    from pipeline import schema

    @dsl.pipeline(name="Covertype splits")
    def covertype_splits(project_id: lab.GCP_PROJECT_ID, gcs_root: lab.GCS_PATH,
                         source_table_name: str = "covertype_dataset.covertype",
                         dataset_id: str = "splits", dataset_location: str = "US"):
        create_dataset = lab.create_dataset_op(
            query=lab.create_dataset_query(project_id, dataset_id, dataset_location),
            project_id=project_id, dataset_location=dataset_location)
        for split, lots in schema.SPLIT_LOTS.items():
            lab.split_ops[split](
                query=lab.split_query(source_table_name, lots), project_id=project_id,
                dataset_id=dataset_id, table_id="",
                output_gcs_path=f"{gcs_root}/datasets/{split}/data.csv",
                dataset_location=dataset_location).after(create_dataset)

    # This module's annotations are strings; the compiler needs the type names themselves.
    covertype_splits.__annotations__.update(
        project_id=lab.GCP_PROJECT_ID, gcs_root=lab.GCS_PATH, source_table_name=str,
        dataset_id=str, dataset_location=str)
    package = tmp_path_factory.mktemp("splits") / "splits.yaml"
    compiler.Compiler().compile(covertype_splits, str(package))
    return package


def _newest(home: Path) -> RunRecord:
    return RunStore(home / "runs").list()[0]


def _cached_splits(record: RunRecord) -> set[str]:
    return {name for name in SPLIT_STEPS if record.steps[name].reused == "cache"}


def _farm_fingerprint(text: str) -> int:
    """BigQuery's FARM_FINGERPRINT from pyfarmhash: FarmHash Fingerprint64 as a signed INT64."""
    unsigned = farmhash.fingerprint64(text)
    return unsigned - 2**64 if unsigned >= 2**63 else unsigned


def test_recount_fingerprints_as_bigquery_documents():
    """The documented FARM_FINGERPRINT examples (hash_functions#farm_fingerprint)."""
    assert [_farm_fingerprint(text) for text in ("1footrue", "2applefalse", "3true")] == [
        -1541654101129638711, 2794438866806483259, -4880158226897771312]


def _recount(home: Path, table: str) -> dict[str, list[tuple[str, ...]]]:
    """The rows each split must hold, in table order, from the warehouse file itself."""
    dataset, name = table.split(".")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        columns = [row[0] for row in con.execute(f'DESCRIBE "{dataset}"."{name}"').fetchall()]
        rows = con.execute(f'SELECT * FROM "{dataset}"."{name}"').fetchall()
    splits: dict[str, list[tuple[str, ...]]] = {split: [] for split in SPLIT_LOTS}
    splits["header"] = [tuple(columns)]
    for row in rows:
        text = json.dumps(dict(zip(columns, row, strict=True)), separators=(",", ":"))
        lot = abs(_farm_fingerprint(text)) % 10
        for split, lots in SPLIT_LOTS.items():
            if lot in lots:
                splits[split].append(tuple(str(value) for value in row))
    return splits


def _assert_splits_match(home: Path, table: str = "covertype_dataset.covertype",
                         staging: str = "staging") -> None:
    expected = _recount(home, table)
    for split in SPLIT_LOTS:
        with open(home / f"gcs/{staging}/datasets/{split}/data.csv", newline="") as stream:
            header, *rows = [tuple(row) for row in csv.reader(stream)]
        assert header == expected["header"][0]
        assert len(rows) == len(expected[split]), split
        assert rows == expected[split], split


def _entries_in_place(home: Path) -> dict[str, Path]:
    """Split step -> its cache entry whose output files are the ones in place now."""
    entries = {}
    for path in (home / "cache").glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        files = manifest["files"].items()
        if files and all(hashlib.sha256(Path(uri).read_bytes()).hexdigest() == digest
                         for uri, digest in files):
            entries[manifest["step"]] = path.parent
    return entries


def _run(home: Path, package: Path, *args: str, env: dict | None = None) -> RunRecord:
    options = QUICK if "tune-hyperparameters" in package.read_text() else []
    result = covertype(home, "run", "--local", "--package", str(package), *options, *args,
                       env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = _newest(home)
    assert record.status == "Succeeded"
    return record


# The table fingerprint -----------------------------------------------------------------------

@pytest.fixture
def warehouse(tmp_path):
    with Warehouse(tmp_path / "warehouse.duckdb") as opened:
        opened.con.execute("CREATE SCHEMA t")
        yield opened.con


def _table(con, name: str, rows: list[tuple[int, int]]) -> str:
    con.execute(f"CREATE TABLE t.{name} (a BIGINT, b BIGINT)")
    if rows:
        con.executemany(f"INSERT INTO t.{name} VALUES (?, ?)", rows)
    return f"t.{name}"


def test_duplicate_rows_do_not_cancel_out(warehouse):
    first = _table(warehouse, "first", [(1, 2), (1, 2), (5, 6)])
    second = _table(warehouse, "second", [(3, 4), (3, 4), (5, 6)])
    xor = "SELECT count(*), bit_xor(hash(r)) FROM {} r"
    # The old digest (count and XOR of row hashes) could not tell these tables apart.
    assert (warehouse.execute(xor.format(first)).fetchall()
            == warehouse.execute(xor.format(second)).fetchall())
    assert table_fingerprint(warehouse, first) != table_fingerprint(warehouse, second)


def test_fingerprint_follows_contents_order_and_schema_only(warehouse):
    rows = [(1, 2), (3, 4), (5, 6)]
    same = [_table(warehouse, name, rows) for name in ("one", "two")]
    assert table_fingerprint(warehouse, same[0]) == table_fingerprint(warehouse, same[1])
    reordered = _table(warehouse, "reordered", [rows[1], rows[0], rows[2]])
    duplicated = _table(warehouse, "duplicated", [*rows, rows[0]])
    edited = _table(warehouse, "edited", [(1, 2), (3, 5), (5, 6)])
    empty = _table(warehouse, "empty", [])
    warehouse.execute("CREATE TABLE t.typed (a INTEGER, b BIGINT)")
    warehouse.executemany("INSERT INTO t.typed VALUES (?, ?)", rows)
    warehouse.execute("CREATE VIEW t.view AS SELECT * FROM t.one")
    fingerprints = [table_fingerprint(warehouse, name) for name in
                    (same[0], reordered, duplicated, edited, empty, "t.typed", "t.missing")]
    assert len(set(fingerprints)) == len(fingerprints)
    assert table_fingerprint(warehouse, "t.missing") == "missing"
    assert table_fingerprint(warehouse, "t.view").split(":")[0] == "3"


# Over the CLI ----------------------------------------------------------------------------------

def test_rows_back_and_forth_reuse_only_matching_outputs(tmp_path, compiled_package):
    home = tmp_path / "home"
    for rows, cached in (("20000", set()), ("30000", set()), ("20000", SPLIT_STEPS)):
        if cached:  # a lost output is put back from the cache
            (home / "gcs/staging/datasets/testing/data.csv").unlink()
        record = _run(home, compiled_package, "--rows", rows)
        assert _cached_splits(record) == cached, rows
        assert record.steps["create-splits-dataset"].reused == ""  # DDL always runs
        _assert_splits_match(home)

    # Broken entries are misses, each reported in one line; the steps run again.
    entries = _entries_in_place(home)
    assert set(entries) == SPLIT_STEPS
    training_blob = next((entries["create-training-split"] / "blobs").iterdir())
    training_blob.write_bytes(training_blob.read_bytes()[:-10] + b"9,9,9,9,9\n")
    next((entries["create-validation-split"] / "blobs").iterdir()).unlink()
    (entries["create-testing-split"] / "manifest.json").write_text("{not json")
    result = covertype(home, "run", "--local", "--package", str(compiled_package), *QUICK,
                       "--rows", "20000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _cached_splits(_newest(home)) == set()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("step cache:")]
    assert len(warnings) == 3, result.stderr
    for step, reason in (("create-training-split", "does not match its sha256"),
                         ("create-validation-split", "is missing"),
                         ("create-testing-split", "manifest.json is not JSON")):
        assert any(f"of {step} unusable" in line and reason in line for line in warnings)
    _assert_splits_match(home)
    entries = _entries_in_place(home)  # the broken entries were replaced
    assert set(entries) == SPLIT_STEPS
    for folder in entries.values():
        for blob in (folder / "blobs").iterdir():
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_editing_or_duplicating_a_row_invalidates(tmp_path, splits_package):
    home = tmp_path / "home"
    sample = tmp_path / "sample.csv"
    rows = pd.read_csv(BUNDLED_CSV, nrows=3000)
    rows.to_csv(sample, index=False)
    elevation = int(rows["Elevation"].drop_duplicates(keep=False).iloc[0])  # a unique row
    table = "mine.covertype"
    source = ["--param", f"source_table_name={table}"]

    def change(sql: str) -> None:
        result = covertype(home, "bq", "query", sql)
        assert result.returncode == 0, result.stderr

    def xor_digest() -> list[tuple]:
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            return con.execute('SELECT count(*), bit_xor(hash(r)) FROM mine.covertype r'
                               ).fetchall()

    assert covertype(home, "bq", "load", table, str(sample)).returncode == 0
    _run(home, splits_package, *source)
    _assert_splits_match(home, table)
    assert _cached_splits(_run(home, splits_package, *source)) == SPLIT_STEPS

    change(f"UPDATE {table} SET Elevation = 1001 WHERE Elevation = {elevation}")  # edit one
    assert _cached_splits(_run(home, splits_package, *source)) == set()
    _assert_splits_match(home, table)

    change(f"INSERT INTO {table} SELECT * FROM {table} WHERE Elevation = 1001")  # duplicate one
    assert _cached_splits(_run(home, splits_package, *source)) == set()
    _assert_splits_match(home, table)

    before = xor_digest()
    change(f"UPDATE {table} SET Elevation = 1002 WHERE Elevation = 1001")  # swap the pair
    assert xor_digest() == before  # the duplicate pairs cancel out in an XOR digest
    assert _cached_splits(_run(home, splits_package, *source)) == set()
    _assert_splits_match(home, table)


def test_gs_outputs_without_an_emulator_are_cached_from_the_local_storage(tmp_path,
                                                                         splits_package):
    """gs://BUCKET/PATH is <storage>/BUCKET/PATH; the runner digests it there (it once asked
    real Cloud Storage, waited over a minute per step and cached nothing)."""
    home = tmp_path / "home"
    options = ["--rows", "3000", "--param", "gcs_root=gs://lab-bucket/staging"]
    no_emulator = {"STORAGE_EMULATOR_HOST": ""}
    assert _cached_splits(_run(home, splits_package, *options, env=no_emulator)) == set()
    _assert_splits_match(home, staging="lab-bucket/staging")
    (home / "gcs/lab-bucket/staging/datasets/testing/data.csv").unlink()
    assert _cached_splits(_run(home, splits_package, *options, env=no_emulator)) == SPLIT_STEPS
    _assert_splits_match(home, staging="lab-bucket/staging")


# Files outside the local home ------------------------------------------------------------------

def _write_text(path: str, text: str) -> str:
    """Write `text` to `path`; its output names the file."""
    with open(path, "w") as stream:
        stream.write(text)
    return path


@pytest.fixture(scope="module")
def writer_package(tmp_path_factory) -> Path:
    """One lightweight step that writes a file where its parameter says and outputs its path."""
    from kfp import compiler, dsl
    from kfp.components import create_component_from_func

    write = create_component_from_func(_write_text, base_image="python:3.11")

    @dsl.pipeline(name="writer")
    def writer(path: str, text: str):
        write(path, text)

    package = tmp_path_factory.mktemp("writer") / "writer.yaml"
    compiler.Compiler().compile(writer, str(package))
    return package


def test_only_files_in_the_local_home_are_kept_or_put_back(home, tmp_path, writer_package):
    from pipeline.local.run_local import run_local

    inside, outside = home / "gcs" / "notes.txt", tmp_path / "outside.txt"

    def reused(path: Path, text: str = "hello") -> str:
        record = run_local(writer_package, {"path": str(path), "text": text}, 1000)
        assert record.status == "Succeeded", record.message
        return next(iter(record.steps.values())).reused

    home.joinpath("gcs").mkdir(parents=True)
    assert (reused(inside), reused(inside)) == ("", "cache")
    assert (reused(outside), reused(outside)) == ("", "")  # never kept: never put back
    assert outside.read_text() == "hello"

    # An entry that names a file outside the home (edited by hand) is unusable: a miss.
    manifests = [path for path in (home / "cache").glob("*/manifest.json")
                 if str(inside) in path.read_text()]
    assert len(manifests) == 1
    manifests[0].write_text(manifests[0].read_text().replace(str(inside), str(outside)))
    outside.write_text("not the step's")
    assert reused(inside) == ""
    assert outside.read_text() == "not the step's"
