"""The local BigQuery against BigQuery's documented examples: right, or refused on one line."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from bigquery_conformance import Case, Outcome, load_cases, outcome
from bigquery_conformance.report import DOC, FAMILIES, render

from pipeline.local.bigquery import Warehouse

CASES = load_cases()
REFUSAL = re.compile(r"not supported by the local BigQuery: [^\n]+ \(see docs/bigquery\.md\)")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case run once on a fresh warehouse."""
    path = tmp_path_factory.mktemp("conformance") / "warehouse.duckdb"
    with Warehouse(path) as warehouse:
        return {case.id: outcome(warehouse, case) for case in CASES}


def test_the_suite_covers_every_family_with_enough_cases() -> None:
    families = Counter(case.family for case in CASES)
    assert set(families) == set(FAMILIES)
    assert len(CASES) >= 200
    assert all(case.source.startswith(
        "https://cloud.google.com/bigquery/docs/reference/standard-sql/") for case in CASES)
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_documented_result_or_one_line_refusal(case: Case, results: dict[str, Outcome]) -> None:
    result = results[case.id]
    assert result.status in ("pass", "refused"), f"{case.source}: {result.detail}"


def test_refusals_are_one_line_and_point_to_the_docs(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        for query, what in [("SELECT FORMAT('%t', 1)", "FORMAT with %t"),
                            ("SELECT SOUNDEX('Ashcraft')", "SOUNDEX"),
                            ("SELECT NUMERIC '1.5'", "CAST from STRING to NUMERIC")]:
            with pytest.raises(ValueError) as error:
                warehouse.query(query)
            assert REFUSAL.fullmatch(str(error.value)), str(error.value)
            assert f": {what} (" in str(error.value)


def test_the_documented_table_is_the_suite_s_outcome(results: dict[str, Outcome]) -> None:
    generated = render([(case, results[case.id]) for case in CASES])
    assert DOC.read_text() == generated, (
        "docs/bigquery.md is out of date: run python -m tests.bigquery_conformance.report")
    passed = sum(result.status == "pass" for result in results.values())
    assert passed >= 200


# BigQuery rules the reference states in prose, which DuckDB alone would get wrong.
STATED_RULES = [
    ("SELECT CAST(2.5 AS INT64) AS a, CAST(-2.5 AS INT64) AS b", [(3, -3)]),  # half away
    ("SELECT 7 / 2 AS a, DIV(7, 2) AS b, MOD(-7, 2) AS c", [(3.5, 3, -1)]),
    ("SELECT 2147483647 + 1 AS a", [(2147483648,)]),  # INT64, not DuckDB's INT32 literal
    ("SELECT TO_JSON_STRING(NULL) AS a, TO_JSON_STRING(CAST(NULL AS STRING)) AS b",
     [("null", "null")]),
    ("SELECT SAFE_CAST(b'\\xc2\\xa9' AS STRING) AS a, SAFE_CAST('x' AS INT64) AS b",
     [("©", None)]),
    ("SELECT [1, 2, 3][OFFSET(1)] AS a, [1, 2, 3][ORDINAL(1)] AS b", [(2, 1)]),
]
STATED_ERRORS = [
    ("SELECT 1 / 0", "division by zero"),
    ("SELECT SQRT(-1)", "Floating point error in function SQRT"),
    ("SELECT [1, 2][OFFSET(5)]", "Array index 5 is out of bounds"),
    ("SELECT CAST('1.5' AS INT64)", "Bad int64 value: 1.5"),
    ("SELECT CAST('yes' AS BOOL)", "Bad bool value: yes"),
    ("SELECT DATE '2020-01-02' - DATE '2020-01-01'", "not supported by the local BigQuery: "
                                                     "- with DATE"),
    ("SELECT ARRAY_AGG(x) FROM UNNEST([2, 1]) AS x", "not supported by the local BigQuery: "
                                                      "ARRAY_AGG without ORDER BY"),
    ("SELECT TO_JSON_STRING(t) FROM (SELECT 9007199254740993 AS id) AS t",
     "not supported by the local BigQuery: TO_JSON_STRING of a row or STRUCT with an INT64 "
     "beyond +-2^53"),
]


@pytest.mark.parametrize(("query", "rows"), STATED_RULES)
def test_stated_rules_beyond_the_examples(tmp_path: Path, query: str, rows: list) -> None:
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        table = warehouse.query(query)
    assert [tuple(row.values()) for row in table.to_pylist()] == rows


@pytest.mark.parametrize(("query", "message"), STATED_ERRORS)
def test_stated_errors_beyond_the_examples(tmp_path: Path, query: str, message: str) -> None:
    with Warehouse(tmp_path / "w.duckdb") as warehouse, pytest.raises(ValueError) as error:
        warehouse.query(query)
    assert message in str(error.value) and "\n" not in str(error.value)
