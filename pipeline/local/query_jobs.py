"""BigQuery query jobs over the local warehouse, as the REST API reports them.

The domain layer of the BigQuery REST subset (`emulator/bigquery_api.py`): a job runs its
query on `Warehouse.query` at once, and is kept under `<home>/bigquery/jobs/<project>/` as
its Job resource (`job.json`) and its result (`result.arrow`, Arrow IPC), so jobs.get,
getQueryResults and later pages work after the server restarts. A query the warehouse
refuses makes a DONE job whose `errorResult` says why in one line, as BigQuery's does.
Shapes follow `pipeline/discovery/bigquery.v2.json` (int64 as strings, rows as
`{"f": [{"v": ...}]}`, legacy type names in schemas); types and values come from the
warehouse's one mapping (`bigquery.types`).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.atomic import write_atomic
from pipeline.errors import one_line
from pipeline.local.bigquery import Warehouse, WarehouseError
from pipeline.local.bigquery.types import api_value, column_types, struct_fields
from pipeline.local.errors import AlreadyExists, InvalidArgument, NotFound

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,1024}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,127}")
DEFAULT_LOCATION = "US"
MAX_PAGE_ROWS = 10_000
# configuration.query keys this subset honours; others are refused by name.
QUERY_KEYS = {"query", "useLegacySql", "priority", "useQueryCache", "maximumBytesBilled"}
_REST_TYPES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}


def check_project(project: str) -> str:
    if not _PROJECT.fullmatch(project):
        raise InvalidArgument(f"Invalid project ID {project!r}", reason="invalid")
    return project


class QueryJobs:
    """Query jobs of every project, kept under `folder`, run on the warehouse at `warehouse`."""

    def __init__(self, folder: Path, warehouse: Path) -> None:
        self.folder = folder
        self.warehouse = warehouse

    def insert(self, project: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """jobs.insert of a query job: run it now; the Job resource, DONE (maybe with errors)."""
        reference = dict(body.get("jobReference") or {})
        job_id = str(reference.get("jobId") or uuid.uuid4().hex)
        if not _JOB_ID.fullmatch(job_id):
            raise InvalidArgument(f"Invalid job ID {job_id!r}: use letters, digits, '_' or '-'",
                                  reason="invalid")
        location = str(reference.get("location") or DEFAULT_LOCATION)
        configuration = dict(body.get("configuration") or {})
        query = check_query_configuration(configuration)
        folder = self._job_folder(check_project(project), job_id)
        if (folder / "job.json").exists():
            raise AlreadyExists(f"Already Exists: Job {project}:{location}.{job_id}",
                                reason="duplicate")
        created = _millis()
        job: dict[str, Any] = {
            "kind": "bigquery#job", "id": f"{project}:{location}.{job_id}",
            "selfLink": f"/bigquery/v2/projects/{project}/jobs/{job_id}?location={location}",
            "jobReference": {"projectId": project, "jobId": job_id, "location": location},
            "configuration": {**configuration, "jobType": "QUERY"},
            "statistics": {"creationTime": created, "startTime": created},
            "user_email": "local@localhost",
        }
        try:
            result = self._run(query["query"])
        except WarehouseError as error:
            message = one_line(error)
            failure = {"reason": "invalidQuery", "location": "query", "message": message}
            job["status"] = {"state": "DONE", "errorResult": failure, "errors": [failure]}
        else:
            write_atomic(folder / "result.arrow", _ipc_bytes(result))
            job["status"] = {"state": "DONE"}
            job["statistics"]["query"] = {
                "statementType": _statement_type(query["query"]), "totalBytesProcessed": "0",
                "totalBytesBilled": "0", "cacheHit": False}
            job["statistics"]["totalBytesProcessed"] = "0"
        job["statistics"]["endTime"] = _millis()
        write_atomic(folder / "job.json", json.dumps(job))
        return job

    def get(self, project: str, job_id: str) -> dict[str, Any]:
        """jobs.get: the Job resource."""
        try:
            return json.loads((self._job_folder(check_project(project), job_id)
                               / "job.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"Not found: Job {project}:{job_id}", reason="notFound") from None

    def results(self, project: str, job_id: str, start: int, page_size: int | None,
                int64_timestamps: bool) -> dict[str, Any]:
        """jobs.getQueryResults: schema, totalRows and one page of rows (a failed job: 400)."""
        job = self.get(project, job_id)
        failure = job["status"].get("errorResult")
        if failure:
            raise InvalidArgument(failure["message"], reason=failure["reason"])
        result = self._result(project, job_id)
        response = {"kind": "bigquery#getQueryResultsResponse", "etag": job["id"],
                    "jobReference": job["jobReference"], "jobComplete": True,
                    "cacheHit": False, "totalBytesProcessed": "0"}
        response.update(page(result, start, page_size, int64_timestamps))
        return response

    def _run(self, sql: str) -> pa.Table:
        with Warehouse(self.warehouse) as warehouse:
            return warehouse.query(sql)

    def _result(self, project: str, job_id: str) -> pa.Table:
        with pa.memory_map(str(self._job_folder(project, job_id) / "result.arrow")) as source:
            return pa.ipc.open_file(source).read_all()

    def _job_folder(self, project: str, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise NotFound(f"Not found: Job {project}:{job_id}", reason="notFound")
        return self.folder / project / job_id


def check_query_configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The job's `configuration.query`, refused in one line where this subset cannot honour it."""
    other = sorted(set(configuration) - {"query", "labels", "jobType"})
    if other or "query" not in configuration:
        kinds = ", ".join(other) or "no query"
        raise InvalidArgument(f"only query jobs are supported by the local BigQuery REST subset "
                              f"(got {kinds}); load tables with `covertype bq load`",
                              reason="invalid")
    query = dict(configuration["query"] or {})
    check_query_request(query, QUERY_KEYS)
    return query


def check_query_request(request: Mapping[str, Any], supported: set[str]) -> None:
    """Refuse options the local warehouse cannot honour (legacy SQL, parameters, ...)."""
    unsupported = sorted(set(request) - supported)
    if unsupported:
        raise InvalidArgument(f"{', '.join(unsupported)} not supported by the local BigQuery "
                              "REST subset; send the query alone (Standard SQL, no parameters)",
                              reason="invalid")
    if not isinstance(request.get("query"), str) or not request["query"].strip():
        raise InvalidArgument("the query is empty; send a Standard SQL statement",
                              reason="invalid")
    legacy = request.get("useLegacySql", True)  # the API's default is legacy SQL
    if legacy and not request["query"].lstrip().lower().startswith("#standardsql"):
        raise InvalidArgument("legacy SQL is not supported by the local BigQuery; set "
                              "useLegacySql to false (Standard SQL)", reason="invalid")


def page(table: pa.Table, start: int, page_size: int | None,
         int64_timestamps: bool) -> dict[str, Any]:
    """schema, totalRows, rows from `start` and a pageToken when more remain."""
    size = min(page_size if page_size is not None else MAX_PAGE_ROWS, MAX_PAGE_ROWS)
    kinds = column_types(table)
    body: dict[str, Any] = {"totalRows": str(table.num_rows)}
    if table.num_columns:
        body["schema"] = {"fields": [field_schema(name, kind)
                                     for name, kind in zip(table.column_names, kinds, strict=True)]}
    chunk = table.slice(start, size)
    if chunk.num_rows:
        columns = [column.to_pylist() for column in chunk.columns]
        body["rows"] = [{"f": [{"v": cell(value, kind, int64_timestamps)}
                               for value, kind in zip(row, kinds, strict=True)]}
                        for row in zip(*columns, strict=True)]
    if start + chunk.num_rows < table.num_rows:
        body["pageToken"] = str(start + chunk.num_rows)
    return body


def field_schema(name: str, kind: str) -> dict[str, Any]:
    """A TableFieldSchema: legacy type names, ARRAY as mode REPEATED, STRUCT as RECORD."""
    mode = "NULLABLE"
    if kind.startswith("ARRAY<"):
        kind, mode = kind[6:-1], "REPEATED"
    if kind.startswith("STRUCT<"):
        return {"name": name, "type": "RECORD", "mode": mode,
                "fields": [field_schema(field, inner) for field, inner in struct_fields(kind)]}
    return {"name": name, "type": _REST_TYPES.get(kind, kind), "mode": mode}


def cell(value: Any, kind: str, int64_timestamps: bool) -> Any:
    """A value in a row's `v`: scalars as strings, ARRAY as [{"v"}], STRUCT as {"f": [...]}."""
    if value is None:
        return None
    if kind.startswith("ARRAY<"):
        return [{"v": cell(item, kind[6:-1], int64_timestamps)} for item in value]
    if kind.startswith("STRUCT<"):
        return {"f": [{"v": cell(value.get(name), inner, int64_timestamps)}
                      for name, inner in struct_fields(kind)]}
    if kind == "TIMESTAMP" and int64_timestamps:
        return str((value - _EPOCH) // dt.timedelta(microseconds=1))
    return api_value(value, kind)


def _statement_type(sql: str) -> str:
    words = sql.lstrip().split(None, 2)
    first = words[0].upper() if words else ""
    if first in ("SELECT", "WITH", "(") or first.startswith("("):
        return "SELECT"
    if first in ("CREATE", "DROP") and len(words) > 1:
        kind = "SCHEMA" if words[1].upper() == "SCHEMA" else "TABLE"
        return f"{first}_{kind}"
    return first


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _millis() -> str:
    return str(int(time.time() * 1000))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
