"""Recording stand-in of the KFP v1beta1 REST API, for tests of `make upload` and `make run`.

The real KFP cluster is unreachable from tests, so this fake sits at the HTTP boundary: the real
`kfp` CLI (kfp 1.8.24, kfp_server_api 1.8.5) talks to it on 127.0.0.1 and every request is
recorded. It answers only the calls the CLI makes for `pipeline upload` and `run submit`, with
the JSON shapes kfp_server_api deserializes; any other route answers 501, so a new call shows up.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v1beta1"
# google.rpc codes the KFP API server puts in its error JSON (grpc-gateway shape).
NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED = 5, 3, 12
EQUALS = 1  # filter.proto Predicate.Op


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The JSON body (run and experiment creates)."""
        return json.loads(self.body)

    def form_file(self, name: str) -> tuple[str, bytes]:
        """(filename, content) of the multipart/form-data file field `name` (pipeline upload)."""
        head = f"Content-Type: {self.content_type}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + self.body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == name:
                return part.get_filename(), part.get_payload(decode=True)
        raise KeyError(f"no form field {name!r} in the request body")


class ApiError(Exception):
    """A request the real API server would refuse; answered as its error JSON."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class KfpApiStub:
    """`with KfpApiStub() as api:` serves on `api.url`; `api.requests` lists what was sent."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05}, name="kfp-api-stub")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KfpApiStub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def add_pipeline(self, name: str, workflow: dict) -> str:
        """Register an uploaded pipeline (as `pipeline upload` would) and return its id."""
        pipeline_id = str(uuid.uuid4())
        parameters = workflow["spec"].get("arguments", {}).get("parameters", [])
        self.pipelines[pipeline_id] = {
            "id": pipeline_id, "created_at": _now(), "name": name, "parameters": parameters,
            "default_version": {
                "id": pipeline_id, "name": name, "created_at": _now(), "parameters": parameters,
                "resource_references": [{"key": {"type": "PIPELINE", "id": pipeline_id},
                                         "relationship": "OWNER"}],
            },
        }
        return pipeline_id

    def add_experiment(self, name: str) -> str:
        """Register an experiment (as `run submit` creates one) and return its id."""
        experiment_id = str(uuid.uuid4())
        self.experiments[experiment_id] = {
            "id": experiment_id, "name": name, "created_at": _now(),
            "storage_state": "STORAGESTATE_AVAILABLE",
        }
        return experiment_id

    def handle(self, request: RecordedRequest) -> tuple[int, dict]:
        """Record the request and route it: (HTTP status, JSON payload)."""
        with self._lock:
            self.requests.append(request)
            try:
                for pattern, methods in ROUTES:
                    match = re.fullmatch(pattern, request.path)
                    if match and request.method in methods:
                        return 200, methods[request.method](self, request, **match.groupdict())
                raise ApiError(501, UNIMPLEMENTED, f"the KFP API stub does not serve "
                                                   f"{request.method} {request.path}")
            except ApiError as error:
                message = str(error)
                return error.status, {"error": message, "code": error.code, "message": message}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _named(items: dict[str, dict], request: RecordedRequest) -> list[dict]:
    """The items matching the request's `filter` (name EQUALS predicates, as the client sends)."""
    text = request.query.get("filter", [""])[0]
    predicates = json.loads(text)["predicates"] if text else []
    for predicate in predicates:
        if predicate.get("key") != "name" or predicate.get("op") != EQUALS:
            raise ApiError(400, INVALID_ARGUMENT, f"the stub filters only on name: {predicate}")
    return [item for item in items.values()
            if all(item["name"] == predicate["stringValue"] for predicate in predicates)]


def _healthz(stub: KfpApiStub, request: RecordedRequest) -> dict:
    return {"commit_sha": "stub", "tag_name": "1.8.5", "multi_user": False}


def _upload_pipeline(stub: KfpApiStub, request: RecordedRequest) -> dict:
    filename, content = request.form_file("uploadfile")
    name = request.query.get("name", [filename.split(".")[0]])[0]
    return stub.pipelines[stub.add_pipeline(name, yaml.safe_load(content))]


def _list_pipelines(stub: KfpApiStub, request: RecordedRequest) -> dict:
    found = _named(stub.pipelines, request)
    return {"pipelines": found, "total_size": len(found)} if found else {}


def _list_experiments(stub: KfpApiStub, request: RecordedRequest) -> dict:
    found = _named(stub.experiments, request)
    return {"experiments": found, "total_size": len(found)} if found else {}


def _create_experiment(stub: KfpApiStub, request: RecordedRequest) -> dict:
    return stub.experiments[stub.add_experiment(request.json()["name"])]


def _create_run(stub: KfpApiStub, request: RecordedRequest) -> dict:
    """Checks what the API server checks: the experiment, the pipeline, the parameter names."""
    body = request.json()
    spec = body.get("pipeline_spec", {})
    owners = [ref["key"]["id"] for ref in body.get("resource_references", [])
              if ref["key"]["type"] == "EXPERIMENT"]
    if not owners or owners[0] not in stub.experiments:
        raise ApiError(404, NOT_FOUND, f"experiment not found: {owners}")
    pipeline = stub.pipelines.get(spec.get("pipeline_id", ""))
    if pipeline is None:
        raise ApiError(404, NOT_FOUND, f"pipeline not found: {spec.get('pipeline_id')!r}")
    known = {parameter["name"] for parameter in pipeline["parameters"]}
    for parameter in spec.get("parameters", []):
        if parameter["name"] not in known:
            raise ApiError(400, INVALID_ARGUMENT,
                           f"Unrecognized input parameter: {parameter['name']}")
    run_id = str(uuid.uuid4())
    stub.runs[run_id] = {
        "run": {
            "id": run_id, "name": body["name"], "storage_state": "STORAGESTATE_AVAILABLE",
            "pipeline_spec": {**spec, "pipeline_name": pipeline["name"]},
            "resource_references": body["resource_references"], "created_at": _now(),
            "scheduled_at": _now(), "finished_at": "1970-01-01T00:00:00Z", "status": "Pending",
        },
        "pipeline_runtime": {},
    }
    return stub.runs[run_id]


def _get_run(stub: KfpApiStub, request: RecordedRequest, run_id: str) -> dict:
    if run_id not in stub.runs:
        raise ApiError(404, NOT_FOUND, f"run not found: {run_id}")
    return stub.runs[run_id]


Route = Callable[..., dict]
ROUTES: list[tuple[str, dict[str, Route]]] = [
    (f"{API}/healthz", {"GET": _healthz}),
    (f"{API}/pipelines/upload", {"POST": _upload_pipeline}),
    (f"{API}/pipelines", {"GET": _list_pipelines}),
    (f"{API}/experiments", {"GET": _list_experiments, "POST": _create_experiment}),
    (f"{API}/runs", {"POST": _create_run}),
    (f"{API}/runs/(?P<run_id>[^/:]+)", {"GET": _get_run}),
]


class _Handler(BaseHTTPRequestHandler):
    """Turns each HTTP request into a RecordedRequest for the stub and writes its JSON answer."""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(
            method=self.command, path=url.path, query=parse_qs(url.query, keep_blank_values=True),
            content_type=self.headers.get("Content-Type", ""), body=self.rfile.read(length),
        )
        status, payload = self.server.stub.handle(request)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        """Quiet: the recorded requests are the log."""
