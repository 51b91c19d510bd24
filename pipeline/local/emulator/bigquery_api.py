"""BigQuery v2 REST subset over the local warehouse: what google-cloud-bigquery calls to run a
query and read its rows.

jobs.insert (query jobs), jobs.get, jobs.query, jobs.getQueryResults, and tables.get and
tabledata.list over warehouse tables. Paths are the discovery document's
(`pipeline/discovery/bigquery.v2.json`, servicePath `bigquery/v2/`); the work is done by
`pipeline/local/query_jobs.py`. A query the warehouse refuses is BigQuery's 400
`invalidQuery` error (or, for jobs.insert, a DONE job carrying it), so the client raises
`BadRequest` with the warehouse's one-line message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.errors import one_line
from pipeline.local import query_jobs
from pipeline.local.bigquery import Warehouse, WarehouseError, parse_table_name
from pipeline.local.emulator.bodies import json_object
from pipeline.local.errors import InvalidArgument, NotFound, Unimplemented
from pipeline.local.home import warehouse_path
from pipeline.local.query_jobs import QueryJobs, check_project, check_query_request, page

router = APIRouter(prefix="/bigquery/v2/projects/{project}")
# jobs.query request fields this subset honours (others are refused by name).
QUERY_REQUEST_KEYS = query_jobs.QUERY_KEYS | {"kind", "timeoutMs", "maxResults", "location",
                                              "requestId", "formatOptions", "labels",
                                              "jobCreationMode"}


def jobs(request: Request) -> QueryJobs:
    home = Path(request.app.state.home)
    return QueryJobs(home / "bigquery" / "jobs", warehouse_path(home))


@router.post("/jobs")
async def insert_job(project: str, request: Request) -> dict:
    """jobs.insert: a query job, run to completion before the answer."""
    return await run_in_threadpool(jobs(request).insert, project, await json_object(request))


@router.get("/jobs/{job_id}")
async def get_job(project: str, job_id: str, request: Request) -> dict:
    """jobs.get: the Job resource."""
    return await run_in_threadpool(jobs(request).get, project, job_id)


@router.get("/queries/{job_id}")
async def get_query_results(project: str, job_id: str, request: Request) -> dict:
    """jobs.getQueryResults: schema, totalRows and a page of rows."""
    start, size = _paging(request)
    return await run_in_threadpool(jobs(request).results, project, job_id, start, size,
                                   _int64_timestamps(request))


@router.post("/queries")
async def query(project: str, request: Request) -> dict:
    """jobs.query: run a query as a job and answer with its first page."""
    body = await json_object(request)
    check_query_request(body, QUERY_REQUEST_KEYS)
    configuration = {"query": {key: body[key] for key in query_jobs.QUERY_KEYS if key in body}}
    reference = {"location": body["location"]} if body.get("location") else {}
    store = jobs(request)
    job = await run_in_threadpool(store.insert, project, {"jobReference": reference,
                                                         "configuration": configuration})
    size = body.get("maxResults")
    if size is not None and (not str(size).isdigit()):
        raise InvalidArgument(f"Invalid maxResults {size!r}", reason="invalid")
    results = await run_in_threadpool(
        store.results, project, job["jobReference"]["jobId"], 0,
        None if size is None else int(size),
        bool((body.get("formatOptions") or {}).get("useInt64Timestamp")))
    results["kind"] = "bigquery#queryResponse"
    results.pop("etag", None)
    return results


@router.get("/datasets/{dataset}/tables/{table}")
async def get_table(project: str, dataset: str, table: str, request: Request) -> dict:
    """tables.get: schema and numRows of a warehouse table."""
    check_project(project)
    total, rows = await run_in_threadpool(_table, request, dataset, table)
    return {"kind": "bigquery#table", "id": f"{project}:{dataset}.{table}", "type": "TABLE",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": page(rows, 0, 0, False).get("schema", {"fields": []}),
            "numRows": str(total), "location": query_jobs.DEFAULT_LOCATION,
            "selfLink": f"/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}"}


@router.get("/datasets/{dataset}/tables/{table}/data")
async def list_table_data(project: str, dataset: str, table: str, request: Request) -> dict:
    """tabledata.list: a page of a warehouse table's rows."""
    check_project(project)
    start, size = _paging(request)
    total, rows = await run_in_threadpool(_table, request, dataset, table, start, size)
    body = page(rows, 0, size, _int64_timestamps(request))
    body.pop("schema", None)
    body["totalRows"] = str(total)
    if start + rows.num_rows < total:
        body["pageToken"] = str(start + rows.num_rows)
    else:
        body.pop("pageToken", None)
    return {"kind": "bigquery#tableDataList", "etag": f"{dataset}.{table}", **body}


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def unimplemented(project: str, rest: str, request: Request) -> dict:
    """Every other method of the API: 501, named (registered last, so it never shadows)."""
    raise Unimplemented(f"{request.method} {request.url.path} is not in the local BigQuery "
                        "REST subset", reason="notImplemented")


def _table(request: Request, dataset: str, table: str, start: int = 0,
           size: int | None = 0) -> tuple[int, Any]:
    """The row count of `dataset.table` and its rows from `start` (at most `size`)."""
    try:
        parse_table_name(f"{dataset}.{table}")
    except WarehouseError as error:
        raise InvalidArgument(str(error), reason="invalid") from None
    size = query_jobs.MAX_PAGE_ROWS if size is None else min(size, query_jobs.MAX_PAGE_ROWS)
    with Warehouse(warehouse_path(Path(request.app.state.home))) as warehouse:
        try:
            count = warehouse.query(f"SELECT COUNT(*) FROM `{dataset}.{table}`")
            rows = warehouse.query(f"SELECT * FROM `{dataset}.{table}` LIMIT {size} "
                                   f"OFFSET {start}")
        except WarehouseError as error:
            if "not found" in str(error):
                raise NotFound(f"Not found: Table {dataset}.{table}", reason="notFound") from None
            raise InvalidArgument(one_line(error), reason="invalid") from None
    return count.column(0)[0].as_py(), rows


def _paging(request: Request) -> tuple[int, int | None]:
    query = request.query_params
    token, start, size = (query.get(key) for key in ("pageToken", "startIndex", "maxResults"))
    for name, value in (("pageToken", token), ("startIndex", start), ("maxResults", size)):
        if value is not None and not value.isdigit():
            raise InvalidArgument(f"Invalid {name} {value!r}", reason="invalid")
    return int(token or start or 0), None if size is None else int(size)


def _int64_timestamps(request: Request) -> bool:
    return request.query_params.get("formatOptions.useInt64Timestamp") == "true"

