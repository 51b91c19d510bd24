"""The local BigQuery: translation, FARM_FINGERPRINT, TO_JSON_STRING, loads, query jobs, CLI."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import farmhash
import pytest

from pipeline import schema
from pipeline.local.actions.query import query as query_action
from pipeline.local.bigquery import CACHE_DATASET, Warehouse, WarehouseError

DATA = Path(__file__).resolve().parents[1] / "data" / "covertype.csv.gz"
SOURCE = "covertype_dataset.covertype"
SAMPLE_ROWS = 20_000
FIRST_ROW_JSON = (
    '{"Elevation":3422,"Aspect":184,"Slope":14,"Horizontal_Distance_To_Hydrology":466,'
    '"Vertical_Distance_To_Hydrology":27,"Horizontal_Distance_To_Roadways":2711,'
    '"Hillshade_9am":223,"Hillshade_Noon":249,"Hillshade_3pm":156,'
    '"Horizontal_Distance_To_Fire_Points":1752,"Wilderness_Area":"Commanche",'
    '"Soil_Type":"C7756","Cover_Type":0}'
)
FINGERPRINT_SQL = "FARM_FINGERPRINT(TO_JSON_STRING(cover))"


def split_query(lots: tuple[int, ...], source: str = f"`{SOURCE}`") -> str:
    """The pipeline's split query, word for word."""
    return (
        f"SELECT * FROM {source} AS cover WHERE "
        f"MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) IN ({', '.join(map(str, lots))})"
    )


def signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def snapshot(path: Path) -> list[tuple]:
    """Every schema and table of the warehouse file with its row count and content checksum."""
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
        ).fetchall()
        state = con.execute("SELECT schema_name FROM duckdb_schemas() ORDER BY ALL").fetchall()
        for dataset, table in tables:
            state += con.execute(
                f'SELECT ?, ?, count(*), sum(hash(*COLUMNS(*))) FROM "{dataset}"."{table}"',
                [dataset, table],
            ).fetchall()
        return state
    finally:
        con.close()


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20,000 bundled rows (the bundled file is shuffled) as a plain CSV."""
    path = tmp_path_factory.mktemp("data") / "sample.csv"
    with gzip.open(DATA, "rt") as source, open(path, "w") as target:
        for _ in range(SAMPLE_ROWS + 1):
            target.write(source.readline())
    return path


@pytest.fixture(scope="module")
def loaded_template(tmp_path_factory: pytest.TempPathFactory, sample_csv: Path) -> Path:
    path = tmp_path_factory.mktemp("template") / "warehouse.duckdb"
    with Warehouse(path) as warehouse:
        assert warehouse.load_csv(SOURCE, str(sample_csv)) == SAMPLE_ROWS
    return path


@pytest.fixture
def warehouse_file(home: Path, loaded_template: Path) -> Path:
    """The default warehouse of a fresh COVERTYPE_HOME, holding the 20,000-row sample."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "warehouse.duckdb"
    shutil.copy(loaded_template, path)
    return path


def test_farm_fingerprint_documented_examples(home: Path) -> None:
    sql = """
        WITH example AS (
          SELECT 1 AS x, "foo" AS y, true AS z UNION ALL
          SELECT 2 AS x, "apple" AS y, false AS z UNION ALL
          SELECT 3 AS x, "" AS y, true AS z
        )
        SELECT *, FARM_FINGERPRINT(CONCAT(CAST(x AS STRING), y, CAST(z AS STRING)))
          AS row_fingerprint
        FROM example ORDER BY x"""
    with Warehouse() as warehouse:
        rows = warehouse.query(sql).column("row_fingerprint").to_pylist()
    assert rows == [-1541654101129638711, 2794438866806483259, -4880158226897771312]


def test_farm_fingerprint_is_signed_fingerprint64_and_keeps_nulls(home: Path) -> None:
    values = ["", "a", "Covertype", "é", None]
    sql = ("SELECT FARM_FINGERPRINT(s) AS fp FROM UNNEST(['', 'a', 'Covertype', 'é', NULL]) "
           "AS s WITH OFFSET AS i ORDER BY i")
    with Warehouse() as warehouse:
        got = warehouse.query(sql).column("fp").to_pylist()
    assert got == [signed(farmhash.fingerprint64(v)) if v is not None else None for v in values]


def test_to_json_string_of_a_row_is_bigquery_text(warehouse_file: Path) -> None:
    sql = f"SELECT TO_JSON_STRING(cover) AS j, {FINGERPRINT_SQL} AS fp FROM `{SOURCE}` AS cover"
    with Warehouse() as warehouse:
        first = warehouse.query(sql + " LIMIT 1").to_pylist()[0]
    assert first["j"] == FIRST_ROW_JSON
    assert first["fp"] == signed(farmhash.fingerprint64(FIRST_ROW_JSON))


def test_load_sample_casts_to_the_lab_schema(warehouse_file: Path) -> None:
    con = duckdb.connect(str(warehouse_file), read_only=True)
    columns = con.execute(f"DESCRIBE {SOURCE}").fetchall()
    con.close()
    expected = {"INTEGER": "BIGINT", "STRING": "VARCHAR"}
    assert [(c[0], c[1]) for c in columns] == [
        (name, expected[schema.BIGQUERY_TYPES[name]]) for name in schema.COLUMNS
    ]
    names = [f"`{SOURCE}`", SOURCE, f"`local.{SOURCE}`", f"`my-project`.{SOURCE}"]
    with Warehouse() as warehouse:
        counts = [warehouse.query(f"SELECT COUNT(*) AS n FROM {n}")["n"][0].as_py() for n in names]
    assert counts == [SAMPLE_ROWS] * 4


def test_all_rows_split_disjoint_stable_and_sized(home: Path) -> None:
    with Warehouse() as warehouse:
        total = warehouse.load_csv(SOURCE, str(DATA))
    runs = []
    for _ in range(2):  # same rows in the same order every time
        splits = {}
        for split, lots in schema.SPLIT_LOTS.items():
            with Warehouse() as warehouse:  # one open per query, as in the pipeline's steps
                splits[split] = warehouse.query(split_query(lots))
        runs.append(splits)
    with Warehouse() as warehouse:  # a subquery source skips the cache: the vectorised UDF
        uncached = warehouse.query(split_query((8,), f"(SELECT * FROM `{SOURCE}`)"))
    assert total == 426_599
    first, second = runs
    assert all(first[split].equals(second[split]) for split in first)
    assert uncached.equals(first["validation"])
    sizes = {split: table.num_rows for split, table in first.items()}
    assert abs(sizes["training"] / total - 0.4) < 0.01
    assert abs(sizes["validation"] / total - 0.1) < 0.005
    assert abs(sizes["testing"] / total - 0.1) < 0.005
    con = duckdb.connect()
    for name, table in first.items():
        con.register(name, table)
    for a, b in [("training", "validation"), ("training", "testing"), ("validation", "testing")]:
        sql = f"SELECT count(*) FROM (FROM {a} INTERSECT ALL FROM {b})"
        assert con.execute(sql).fetchone() == (0,)


def test_split_queries_read_the_fingerprint_cache_built_by_the_load(warehouse_file: Path) -> None:
    con = duckdb.connect(str(warehouse_file))
    con.execute(f'UPDATE "{CACHE_DATASET}"."{SOURCE}" SET fp = 10')  # tamper: every row in lot 0
    con.close()
    with Warehouse() as warehouse:
        assert warehouse.query(split_query((0,))).num_rows == SAMPLE_ROWS
        warehouse.query(f"UPDATE `{SOURCE}` SET Slope = Slope + 1 WHERE Cover_Type = 3")
        assert 0.08 < warehouse.query(split_query((0,))).num_rows / SAMPLE_ROWS < 0.12


def test_fingerprint_cache_follows_table_changes(warehouse_file: Path) -> None:
    cached = f"SELECT {FINGERPRINT_SQL} AS fp FROM `{SOURCE}` AS cover"
    uncached = f"SELECT {FINGERPRINT_SQL} AS fp FROM (SELECT * FROM `{SOURCE}`) AS cover"
    changes = [
        f"UPDATE `{SOURCE}` SET Elevation = Elevation + 1 WHERE Aspect = 184 AND Slope = 14",
        f"DELETE FROM `{SOURCE}` WHERE Cover_Type = 3",
        f"ALTER TABLE `{SOURCE}` RENAME COLUMN Slope TO Gradient",
    ]
    with Warehouse() as warehouse:
        before = warehouse.query(cached)
        assert before.equals(warehouse.query(uncached))
        for change in changes:
            warehouse.query(change)
            after = warehouse.query(cached)
            assert after.equals(warehouse.query(uncached)), change
            assert not after.equals(before), change
            before = after


def test_create_dataset_ddl_like_the_pipeline(home: Path) -> None:
    ddl = 'CREATE SCHEMA IF NOT EXISTS `local.splits` OPTIONS(location="US")'
    with Warehouse() as warehouse:
        for _ in range(2):
            assert warehouse.run_query_job(ddl, "local")["output_gcs_path"] == ""
    assert query_action(ddl, "local") == {"output_gcs_path": ""}
    assert ("splits",) in snapshot(home / "warehouse.duckdb")


def test_run_query_job_writes_table_and_csv(warehouse_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "gcs" / "datasets" / "training" / "data.csv"
    with Warehouse() as warehouse:
        for _ in range(2):  # WRITE_TRUNCATE: a rerun replaces, never appends
            result = warehouse.run_query_job(
                split_query((1, 2, 3, 4)), "local", dataset_id="splits",
                output_gcs_path=str(output), job_id="abc",
            )
        tmp_only = warehouse.run_query_job(
            split_query((9,)), "local", output_gcs_path=str(tmp_path / "t.csv"), job_id="t1"
        )
        table = warehouse.query("SELECT COUNT(*) AS n FROM splits.query_abc")["n"][0].as_py()
    frame = schema.read_dataset(str(output))
    assert result == {"output_gcs_path": str(output), "table": "splits.query_abc",
                      "rows": table, "job_id": "abc"}
    assert len(frame) == table and 0.38 < table / SAMPLE_ROWS < 0.42
    assert output.read_text().splitlines()[0] == ",".join(schema.COLUMNS)
    assert os.listdir(output.parent) == ["data.csv"]
    assert tmp_only["table"] == "kfp_tmp_dataset.query_t1"
    assert len(schema.read_dataset(str(tmp_path / "t.csv"))) == tmp_only["rows"]


def test_query_action_retry_reuses_its_table(
    warehouse_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFP_POD_NAME", "covertype-classifier-training-x7k2q-1234")
    output = str(tmp_path / "validation" / "data.csv")
    for _ in range(2):
        outputs = query_action(split_query((8,)), "local", "splits", "", output, "US", "")
    assert outputs == {"output_gcs_path": output}
    tables = [row[1] for row in snapshot(warehouse_file)
              if len(row) == 4 and row[0] == "splits"]
    assert len(tables) == 1 and tables[0].startswith("query_")


def test_parallel_jobs_from_three_processes(warehouse_file: Path, tmp_path: Path) -> None:
    code = ("import sys; from pipeline.local.actions.query import query; "
            "print(query(sys.argv[1], 'local', 'splits', '', sys.argv[2]))")
    processes = []
    for split, lots in schema.SPLIT_LOTS.items():
        env = {**os.environ, "KFP_POD_NAME": f"run-{split}"}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", code, split_query(lots), str(tmp_path / f"{split}.csv")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    results = [process.communicate(timeout=60) + (process.returncode,) for process in processes]
    assert [r[2] for r in results] == [0, 0, 0], [r[1] for r in results]
    rows = sum(len(schema.read_dataset(str(tmp_path / f"{s}.csv"))) for s in schema.SPLIT_LOTS)
    assert 0.58 < rows / SAMPLE_ROWS < 0.62


def test_cli_load_and_query(home: Path, sample_csv: Path) -> None:
    covertype = Path(sys.executable).with_name("covertype")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(covertype), "bq", *args], capture_output=True, text=True)

    load = run("load", SOURCE, str(sample_csv))
    query = run("query", f'SELECT Elevation, Soil_Type, "a,b" AS s, true AS t FROM `{SOURCE}` '
                         "LIMIT 2")
    missing = run("query", "SELECT * FROM `nope.covertype`")
    assert load.returncode == 0 and load.stdout == f"{SAMPLE_ROWS} rows loaded into {SOURCE}\n"
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines() == [
        "Elevation,Soil_Type,s,t", '3422,C7756,"a,b",true', '3304,C8772,"a,b",true'
    ]
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == ("covertype: error: table nope.covertype not found; load it with "
                              "`covertype bq load nope.covertype <csv>`\n")


CLI_QUERY = ("SELECT 7 AS n, 'a,b' AS s, 2.5, NULL AS missing, [1, 2] AS arr, "
             "TIMESTAMP '2020-01-02 03:04:05.678+00' AS t, true AS ok "
             "UNION ALL SELECT 12, 'c', 1e20, 3, [3], NULL, false")


def covertype_bq(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    covertype = Path(sys.executable).with_name("covertype")
    return subprocess.run([str(covertype), "bq", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True)


def test_cli_output_formats_are_bq_s(home: Path) -> None:
    csv_text = covertype_bq("query", "--format=csv", CLI_QUERY).stdout
    json_text = covertype_bq("query", "--format=json", CLI_QUERY).stdout
    pretty_json = covertype_bq("query", "--format=prettyjson", CLI_QUERY).stdout
    pretty = covertype_bq("query", "--format=pretty", CLI_QUERY).stdout
    assert csv_text.splitlines() == [
        "n,s,f0_,missing,arr,t,ok",
        '7,"a,b",2.5,,"[""1"",""2""]",2020-01-02 03:04:05,true',
        "12,c,1.0E20,3,\"[\"\"3\"\"]\",,false",
    ]
    rows = [{"arr": ["1", "2"], "f0_": "2.5", "missing": None, "n": "7", "ok": "true",
             "s": "a,b", "t": "2020-01-02 03:04:05"},
            {"arr": ["3"], "f0_": "1.0E20", "missing": "3", "n": "12", "ok": "false", "s": "c",
             "t": None}]
    assert json_text == json.dumps(rows, separators=(",", ":")) + "\n"
    assert json.loads(pretty_json) == rows and pretty_json.startswith("[\n  {\n    \"arr\": [")
    assert pretty.splitlines()[:4] == [
        "+----+-----+--------+---------+-----------+---------------------+-------+",
        "| n  |  s  |  f0_   | missing |    arr    |          t          |  ok   |",
        "+----+-----+--------+---------+-----------+---------------------+-------+",
        "|  7 | a,b |    2.5 |    NULL | [\"1\",\"2\"] | 2020-01-02 03:04:05 |  true |",
    ]


def test_cli_names_unnamed_columns_like_bigquery(home: Path) -> None:
    result = covertype_bq("query", "--format=json", "SELECT 1, 'a', 2 AS two, 3")
    assert json.loads(result.stdout) == [{"f0_": "1", "f1_": "a", "two": "2", "f2_": "3"}]


def test_cli_appends_to_a_redirected_file(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("kept\n")
    for value in (1, 2):
        with open(target, "a") as stream:
            result = covertype_bq("query", f"SELECT {value} AS x", stdout=stream)
        assert result.returncode == 0, result.stderr
    assert target.read_text() == "kept\nx\n1\nx\n2\n"


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT FORMAT('%t', 1)", "not supported by the local BigQuery: FORMAT with %t "
                               "(see docs/bigquery.md)"),
    ("SELECT 1 AS a, 2 AS a", "Duplicate column names in the result are not supported. "
                              "Found duplicate(s): a"),
    ("SELECT [1, NULL] AS a", "Array cannot have a null element; error in writing field a"),
    ("SELEC 1", "invalid BigQuery SQL: "),
])
def test_cli_errors_are_one_line_with_a_nonzero_status(home: Path, sql: str, message: str) -> None:
    result = covertype_bq("query", sql)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"covertype: error: {message}")
    assert result.stderr.count("\n") == 1


def _bad_csv(folder: Path, sample_csv: Path, kind: str) -> Path:
    lines = sample_csv.read_text().splitlines()[:6]
    if kind == "wrong type":
        lines[3] = "abc" + lines[3][lines[3].index(","):]
    elif kind == "fraction":
        lines[2] = lines[2].replace(",", ".5,", 1)
    elif kind == "missing column":
        lines = [line.rsplit(",", 1)[0] for line in lines]
    elif kind == "ragged":
        lines[4] = lines[4].rsplit(",", 1)[0]
    elif kind == "empty":
        lines = []
    path = folder / f"{kind.replace(' ', '_')}.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


LOAD_ERRORS = [
    ("wrong type", "row 3 column 'Elevation' has 'abc'; expected an INTEGER"),
    ("fraction", "row 2 column 'Elevation' has '3304.5'; expected an INTEGER"),
    ("missing column", "column 'Cover_Type' is missing; expected Elevation, "),
    ("ragged", "not a well-formed CSV ("),
    ("empty", "the file is empty"),
]


@pytest.mark.parametrize(("kind", "message"), LOAD_ERRORS)
def test_bad_csv_is_one_line_error_and_changes_nothing(
    warehouse_file: Path, sample_csv: Path, tmp_path: Path, kind: str, message: str
) -> None:
    path = _bad_csv(tmp_path, sample_csv, kind)
    before = snapshot(warehouse_file)
    for table in (SOURCE, "new_dataset.covertype"):
        with Warehouse() as warehouse, pytest.raises(WarehouseError) as error:
            warehouse.load_csv(table, str(path))
        assert message in str(error.value) and "\n" not in str(error.value)
    assert snapshot(warehouse_file) == before


BAD_NAMES = ["cov'er.t", 'a".t', "a;b.t", "a..t", "a/b.t", "a b.t", "nodot", "a.b.c",
             "_covertype_cache.t", ""]
BAD_IDS = [
    (field, value)
    for field in ("dataset_id", "table_id")
    for value in ("spl'its", 'a"b', "a;b", "a..b", "a/b", "a b", "a.b", "-")
] + [("dataset_id", "_covertype_cache")]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_load_rejects_bad_table_names(warehouse_file: Path, sample_csv: Path, name: str) -> None:
    before = snapshot(warehouse_file)
    with Warehouse() as warehouse, pytest.raises(WarehouseError, match="invalid table name"):
        warehouse.load_csv(name, str(sample_csv))
    assert snapshot(warehouse_file) == before


@pytest.mark.parametrize(("field", "value"), BAD_IDS)
def test_query_job_rejects_bad_ids(
    warehouse_file: Path, tmp_path: Path, field: str, value: str
) -> None:
    before = snapshot(warehouse_file)
    args = {"dataset_id": "splits", "table_id": "t", field: value}
    with pytest.raises(ValueError, match=f"invalid {field} ") as error:
        query_action(split_query((9,)), "local", output_gcs_path=str(tmp_path / "o.csv"), **args)
    assert repr(value) in str(error.value)
    assert snapshot(warehouse_file) == before and not (tmp_path / "o.csv").exists()


JOB_ERRORS = [
    (split_query((9,), "`covertype_dataset.nope`"), {},
     "table covertype_dataset.nope not found; load it with "
     "`covertype bq load covertype_dataset.nope <csv>`"),
    ("SELECT * FROM `covertype_dataset.covertype` WHERE", {}, "invalid BigQuery SQL: "),
    ("SELECT nope FROM `covertype_dataset.covertype`", {}, "query failed: Binder Error"),
    ("SELECT 1; SELECT 2", {}, "expected one SQL statement, got 2"),
    ("CREATE SCHEMA `local.other`", {}, "only a SELECT query can write a destination table"),
    (split_query((9,)), {"job_config": "{nope"}, "job_config is neither JSON nor a Python literal"),
    (split_query((9,)), {"job_config": '{"query": {"destinationTable": {}}}'},
     "job_config: unsupported query keys ['destinationTable']"),
    (split_query((9,)), {"job_config": '{"query": {"useLegacySql": true}}'},
     "job_config: legacy SQL is not supported"),
    (split_query((9,)), {"project_id": ""}, "invalid project_id ''"),
]


@pytest.mark.parametrize(("sql", "inputs", "message"), JOB_ERRORS)
def test_query_job_errors_are_one_line_and_change_nothing(
    warehouse_file: Path, tmp_path: Path, sql: str, inputs: dict, message: str
) -> None:
    output = tmp_path / "out" / "data.csv"
    before = snapshot(warehouse_file)
    args = {"project_id": "local", "dataset_id": "splits", "output_gcs_path": str(output)}
    with pytest.raises(ValueError) as error:
        query_action(sql, **{**args, **inputs})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert snapshot(warehouse_file) == before and not output.exists()


def test_job_config_dispositions(warehouse_file: Path) -> None:
    def job(**config: str) -> dict[str, str]:
        return query_action(split_query((9,)), "local", "splits", "t", "", "US",
                            json.dumps({"query": config}))

    def rows() -> int:
        with Warehouse() as warehouse:
            return warehouse.query("SELECT COUNT(*) AS n FROM splits.t")["n"][0].as_py()

    with pytest.raises(ValueError, match=r"table splits\.t not found \(CREATE_NEVER\)"):
        job(createDisposition="CREATE_NEVER")
    job(writeDisposition="WRITE_EMPTY")
    first = rows()
    before = snapshot(warehouse_file)
    with pytest.raises(ValueError, match=r"table splits\.t is not empty \(WRITE_EMPTY\)"):
        job()  # BigQuery's default for a given config is WRITE_EMPTY
    assert snapshot(warehouse_file) == before
    job(writeDisposition="WRITE_APPEND")
    assert rows() == 2 * first
    job(writeDisposition="WRITE_TRUNCATE")
    assert rows() == first


def test_unwritable_output_rolls_back_the_table_and_cache(
    warehouse_file: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = snapshot(warehouse_file)
    with pytest.raises(ValueError, match=r"^cannot write .*file/data\.csv: "):
        query_action(split_query((9,)), "local", "splits", "", str(blocker / "data.csv"))
    assert snapshot(warehouse_file) == before


GS_SCRIPT = """
import json, sys, fsspec
from pipeline.local.bigquery import Warehouse
fs = fsspec.filesystem("gs", project="local")
fs.mkdir("bucket")
fs.put_file(sys.argv[1], "bucket/in/sample.csv.gz")
with Warehouse() as warehouse:
    loaded = warehouse.load_csv("covertype_dataset.covertype", "gs://bucket/in/sample.csv.gz")
    job = warehouse.run_query_job(sys.argv[2], "local", "splits", "", "gs://bucket/out/data.csv")
    missing = ""
    try:
        warehouse.load_csv("covertype_dataset.covertype", "gs://bucket/in/nope.csv")
    except ValueError as error:
        missing = str(error)
print(json.dumps([loaded, job["rows"], fs.cat("bucket/out/data.csv").decode(), missing]))
"""


def test_gs_paths_through_the_storage_emulator(
    home: Path, sample_csv: Path, tmp_path: Path
) -> None:
    sample_gz = tmp_path / "sample.csv.gz"
    sample_gz.write_bytes(gzip.compress(sample_csv.read_bytes()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = subprocess.Popen(
        [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--port",
         str(port), "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        # The extended gcsfs file system asks a gRPC API for the bucket type: 60 s timeouts.
        env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        result = subprocess.run(
            [sys.executable, "-c", GS_SCRIPT, str(sample_gz), split_query((9,))],
            env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        emulator.terminate()
        emulator.wait()
    assert result.returncode == 0, result.stderr
    loaded, rows, csv_text, missing = json.loads(result.stdout.splitlines()[-1])
    assert loaded == SAMPLE_ROWS
    assert csv_text.splitlines()[0] == ",".join(schema.COLUMNS)
    assert len(csv_text.splitlines()) == rows + 1 and 0.08 < rows / SAMPLE_ROWS < 0.12
    assert missing == "gs://bucket/in/nope.csv: no such file; check the path"


def test_bad_action_inputs_do_not_even_create_the_warehouse(home: Path) -> None:
    bad_inputs = [{"dataset_id": "a;b"}, {"job_config": "[]"}, {"project_id": "a b"},
                  {"query": "SELEC 1"}, {"query": " "}]
    for bad in bad_inputs:
        args = {"query": split_query((9,)), "project_id": "local", "dataset_id": "splits", **bad}
        with pytest.raises(ValueError):
            query_action(**args)
    assert not (home / "warehouse.duckdb").exists()


def test_the_pipeline_s_own_queries_are_verified_forms(warehouse_file: Path) -> None:
    """The DSL's DDL and split queries and the source-table checks run, none refused, with
    the documented row JSON and fingerprints (test_farm_fingerprint_documented_examples)."""
    from pipeline.covertype_training_pipeline import create_dataset_query, split_query
    from pipeline.local.data import check_source_table

    with Warehouse() as warehouse:
        warehouse.query(create_dataset_query("local", "splits", "US"))
        counts = {split: warehouse.query(split_query(SOURCE, lots)).num_rows
                  for split, lots in schema.SPLIT_LOTS.items()}
    assert check_source_table(SOURCE) == counts
    assert 0.38 < counts["training"] / SAMPLE_ROWS < 0.42
