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
