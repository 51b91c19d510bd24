"""The server's security layer over real HTTP: Host, Origin, Content-Type, size, token, exposure.

The in-process emulator (`EmulatorServer`, what every local run starts) and `covertype serve`
(a subprocess) run the same layer; requests are sent with http.client (to control every header
byte), httpx, and the real clients: googleapiclient (ml v1, aiplatform v1), kfp-server-api,
google-cloud-bigquery and google-cloud-storage.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from googleapiclient.errors import HttpError

from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import registry_dir
from pipeline.ml_client import EMULATOR_HOST_ENV, VERTEX_EMULATOR_HOST_ENV, ml_service

COVERTYPE = Path(sys.executable).with_name("covertype")
MODELS = "/v1/projects/local/models"
PREDICT = MODELS + "/m:predict"
JSON_TYPE = {"Content-Type": "application/json"}
TOKEN = "test-token-0123456789abcdef"
REFUSED = "x-refused-by"


# fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security") / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> EmulatorServer:
    with EmulatorServer(home=home) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(port: int, method: str, path: str, headers: list[tuple[str, str]] = (),
             body: bytes | None = None, host: str | None = "default") -> http.client.HTTPResponse:
    """One request with exactly these headers (Host too: "default" is 127.0.0.1:port, None
    sends none)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        connection.putheader("Host", f"127.0.0.1:{port}" if host == "default" else host)
    for name, value in headers:
        connection.putheader(name, value)
    if body is not None and not any(name.lower() == "content-length" for name, _ in headers):
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def _refusal(response: http.client.HTTPResponse | httpx.Response, status: int) -> str:
    """The one-line message of a refusal by the security layer (checked to be one)."""
    status_code = getattr(response, "status", None) or response.status_code
    body = response.body if hasattr(response, "body") else response.content
    headers = {name.lower(): value for name, value in response.headers.items()}
    assert status_code == status, body
    assert headers.get(REFUSED) == "covertype-security", headers
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    message = error["message"] if isinstance(error, dict) else error
    if isinstance(error, dict):
        assert error["code"] == status and error["status"]
    assert message and "\n" not in message
    return message


def _models(home: Path) -> list[str]:
    root = registry_dir(home)
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() \
        else []


# Host ----------------------------------------------------------------------------------------

def test_own_host_names_are_answered(server: EmulatorServer) -> None:
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}",
                 f"LOCALHOST:{server.port}"):
        response = _request(server.port, "GET", "/healthz", host=host)
        assert (response.status, json.loads(response.body)) == (200, {"status": "ok"}), host


@pytest.mark.parametrize("host", [
    "evil.example:{port}",  # any other name
    "127.0.0.1.nip.io:{port}",  # DNS rebinding: a name that resolves to 127.0.0.1
    "rebind.attacker.example",  # ... reached on port 80 through a forward
    "localhost:1",  # our name, another port
    "127.0.0.1",  # no port: port 80, not ours
    "localhost.:{port}",
    "127.0.0.1:{port}@evil.example",
])
def test_other_host_names_are_refused_before_any_route(server: EmulatorServer, home: Path,
                                                       host: str) -> None:
    host = host.format(port=server.port)
    for method, path, body in (("GET", "/healthz", None), ("GET", MODELS, None), ("GET", "/", None),
                               ("POST", MODELS, b'{"name": "rebound"}')):
        response = _request(server.port, method, path, [("Content-Type", "application/json")],
                            body, host=host)
        message = _refusal(response, 403)
        assert "is not one of this server's names" in message and "--allow-host" in message
        assert repr(host.lower()) in message
    assert "rebound" not in _models(home)


def test_missing_or_repeated_host_is_refused(server: EmulatorServer) -> None:
    assert "Host (none)" in _refusal(_request(server.port, "GET", "/healthz", host=None), 403)
    repeated = _request(server.port, "GET", "/healthz", [("Host", "evil.example")])
    assert "is not one of this server's names" in _refusal(repeated, 403)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0 without Host
    assert raw.recv(4096).startswith(b"HTTP/1.1 403 ")
    raw.close()


# Origin --------------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://localhost", "http://localhost:{port}.evil.example",
                                    "file://", "not an origin"])
def test_cross_site_mutations_are_refused(server: EmulatorServer, home: Path,
                                          origin: str) -> None:
    origin = origin.format(port=server.port)
    headers = [("Origin", origin), ("Content-Type", "application/json")]
    assert httpx.post(server.url + MODELS, json={"name": "victim"}).status_code == 200
    for method, path, body in (("POST", MODELS, b'{"name": "csrf"}'),
                               ("DELETE", MODELS + "/victim", None),
                               ("PUT", MODELS + "/victim", b"{}"),
                               ("PATCH", MODELS + "/victim", b"{}"),
                               ("POST", PREDICT, b'{"instances": [[1]]}')):
        message = _refusal(_request(server.port, method, path, headers, body), 403)
        assert message.startswith("cross-site request refused: Origin") and "web page" in message
    assert "csrf" not in _models(home) and "victim" in _models(home)
    assert httpx.delete(server.url + MODELS + "/victim").status_code == 200


def test_own_origin_and_safe_methods_pass(server: EmulatorServer, home: Path) -> None:
    for origin in (server.url, f"http://localhost:{server.port}"):
        response = httpx.post(server.url + MODELS, json={"name": "same_origin"},
                              headers={"Origin": origin})
        assert response.status_code == 200, response.text
        assert httpx.delete(server.url + MODELS + "/same_origin",
                            headers={"Origin": origin}).status_code == 200
    cross_get = httpx.get(server.url + MODELS, headers={"Origin": "http://evil.example"})
    assert cross_get.status_code == 200  # readable only by a client: no CORS grant
    preflight = httpx.options(server.url + MODELS, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    for response in (cross_get, preflight):
        assert not [name for name in response.headers if name.startswith("access-control-")]
    assert preflight.status_code >= 400


# Content-Type --------------------------------------------------------------------------------

@pytest.mark.parametrize(("content_type", "body"), [
    ("text/plain", b'{"name": "simple"}'),  # what a cross-site fetch can send unpreflighted
    ("application/x-www-form-urlencoded", b"name=simple"),  # an HTML form
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="name"'
                                        b'\r\n\r\nsimple\r\n--x--\r\n'),
    (None, b'{"name": "simple"}'),  # a body without a type
    ("application/jsonp", b'{"name": "simple"}'),
])
def test_mutating_bodies_must_be_json(server: EmulatorServer, home: Path, content_type: str | None,
                                      body: bytes) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    for path in (MODELS, PREDICT, MODELS + "/m/versions/v1:setDefault"):
        message = _refusal(_request(server.port, "POST", path, headers, body), 415)
        assert f"is not accepted by POST {path}" in message
        assert message.endswith("send the body as application/json with Content-Type: "
                                "application/json")
    assert "simple" not in _models(home)


def test_json_and_body_less_requests_pass(server: EmulatorServer, home: Path) -> None:
    created = _request(server.port, "POST", MODELS,
                       [("Content-Type", "application/json; charset=utf-8")], b'{"name": "typed"}')
    assert created.status == 200 and "typed" in _models(home)
    # Google's client sends no Content-Type without a body (DELETE, POST :cancel, :setDefault)
    deleted = _request(server.port, "DELETE", MODELS + "/typed")
    assert deleted.status == 200 and REFUSED not in {n.lower() for n in deleted.headers}
    bare_post = _request(server.port, "POST", MODELS + "/absent/versions/v1:setDefault", body=b"")
    assert bare_post.status == 404 and REFUSED not in {n.lower() for n in bare_post.headers}
    # the multipart protocol is accepted on KFP's upload routes only: the KFP API itself
    # answers (400, in its own error shape: "a: 1" is not a pipeline), not this layer
    multipart = httpx.post(server.url + "/apis/v1beta1/pipelines/upload",
                           files={"uploadfile": ("p.yaml", b"a: 1")})
    assert multipart.status_code == 400 and REFUSED not in multipart.headers
    assert multipart.json()["code"] == 3
    as_json = httpx.post(server.url + "/apis/v1beta1/pipelines/upload", json={})
    assert "send the body as multipart/form-data" in _refusal(as_json, 415)


# body size -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "limit", "content_type"), [
    (MODELS, 10 << 20, "application/json"),
    (PREDICT, 1_572_864, "application/json"),
    ("/v1/projects/p/locations/us-central1/endpoints/e:predict", 1_572_864, "application/json"),
    ("/apis/v1beta1/pipelines/upload", 32 << 20, "multipart/form-data; boundary=x"),
])
def test_declared_oversize_bodies_are_refused_before_reading(server: EmulatorServer, path: str,
                                                             limit: int,
                                                             content_type: str) -> None:
    """Only the headers are sent: the 413 comes from Content-Length, before any body byte."""
    headers = [("Content-Type", content_type), ("Content-Length", str(limit + 1))]
    message = _refusal(_request(server.port, "POST", path, headers), 413)
    assert message.startswith(f"Request payload size exceeds the limit: {limit} bytes (")
    under = [("Content-Type", content_type)]
    assert _request(server.port, "POST", path, under, b"{}").status != 413


def test_streamed_oversize_bodies_are_refused(server: EmulatorServer, home: Path) -> None:
    body = json.dumps({"name": "streamed", "description": " " * (10 << 20)}).encode()
    chunks = (body[start:start + (1 << 20)] for start in range(0, len(body), 1 << 20))
    response = httpx.post(server.url + MODELS, content=chunks, headers=JSON_TYPE)  # chunked
    assert "10485760 bytes" in _refusal(response, 413)
    assert "streamed" not in _models(home)
    small = json.dumps({"name": "streamed_ok"}).encode()
    response = httpx.post(server.url + MODELS, content=iter([small[:5], small[5:]]),
                          headers=JSON_TYPE)
    assert response.status_code == 200 and "streamed_ok" in _models(home)


# `covertype serve`: token, memory, exposure ----------------------------------------------------

def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def _start_serve(home: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    environ = {name: value for name, value in os.environ.items() if name != "COVERTYPE_TOKEN"}
    environ.update(COVERTYPE_HOME=str(home), **(env or {}))
    process = subprocess.Popen([str(COVERTYPE), "serve", "--port", str(port), *args],
                               env=environ, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "covertype serve did not start"
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    return process.communicate(timeout=20)[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """`covertype serve` on loopback with COVERTYPE_TOKEN set and an extra Host name."""
    home = tmp_path_factory.mktemp("served") / "home"
    process, port = _start_serve(home, "--allow-host", "covertype.test",
                                 env={"COVERTYPE_TOKEN": TOKEN})
    yield process, port, home
    _stop(process)


def test_token_is_required_everywhere_but_healthz(served) -> None:
    _, port, home = served
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/healthz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (("GET", MODELS), ("GET", "/"), ("GET", "/openapi.json"),
                             ("POST", PREDICT)):
            response = httpx.request(method, url + path, headers=headers, json={})
            message = _refusal(response, 401)
            assert TOKEN not in message and "COVERTYPE_TOKEN" in message
            assert response.headers["www-authenticate"].startswith("Bearer")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + MODELS, headers=good).status_code == 200
    assert httpx.get(url + "/", headers=good).status_code == 200
    assert httpx.get(url + "/healthz", headers={"Host": "evil.example"}).status_code == 403
    allowed = httpx.get(url + MODELS, headers={**good, "Host": f"covertype.test:{port}"})
    assert allowed.status_code == 200
    assert _refusal(httpx.get(url + MODELS, headers={**good, "Host": "covertype.test:1"}), 403)


def test_google_clients_send_the_token_as_bearer(served, monkeypatch) -> None:
    import google_auth_httplib2
    import httplib2
    from google.api_core import exceptions
    from google.cloud import bigquery
    from google.oauth2.credentials import Credentials

    _, port, _ = served
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv(EMULATOR_HOST_ENV, url)
    http = google_auth_httplib2.AuthorizedHttp(Credentials(TOKEN), http=httplib2.Http())
    assert ml_service(http=http).projects().models().list(parent="projects/local").execute() == {}
    with pytest.raises(HttpError) as error:
        ml_service()  # anonymous: even the discovery document needs the token
    assert error.value.resp.status == 401
    signed = bigquery.Client(project="local", credentials=Credentials(TOKEN),
                             client_options={"api_endpoint": url})
    with pytest.raises(exceptions.NotFound):  # past the layer: the BigQuery subset answers
        signed.get_table("local.splits.missing")
    # a refusal in the Google error shape, which google-api-core turns into its exception
    with pytest.raises(exceptions.GoogleAPICallError) as error:
        signed.query("SELECT '" + "x" * (10 << 20) + "'")
    assert error.value.code == 413
    assert "Request payload size exceeds the limit: 10485760 bytes" in error.value.message


def test_oversize_posts_leave_the_server_memory_flat(served) -> None:
    """300 MB to the models route, declared and streamed: 413, and the RSS does not grow."""
    process, port, _ = served
    auth = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")]
    block, total = b" " * (1 << 20), 300
    before = _rss_kib(process.pid)
    for chunked in (False, True):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest("POST", MODELS)
        for name, value in auth:
            connection.putheader(name, value)
        connection.putheader(*(("Transfer-Encoding", "chunked") if chunked
                               else ("Content-Length", str(total * len(block)))))
        connection.endheaders()
        try:
            for _ in range(total):
                connection.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close once it has answered
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        assert "10485760 bytes" in _refusal(response, 413)
    grown_mib = (_rss_kib(process.pid) - before) / 1024
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"


def test_non_loopback_host_needs_a_token(tmp_path: Path) -> None:
    environ = {**os.environ, "COVERTYPE_HOME": str(tmp_path / "home")}
    environ.pop("COVERTYPE_TOKEN", None)
    port = _free_port()
    for args, message in (
            (["--host", "0.0.0.0"], "--host 0.0.0.0 accepts connections from other machines, "
                                    "so the server needs a token: pass --token or set "
                                    "COVERTYPE_TOKEN"),
            (["--host", "0.0.0.0", "--token", "short"], "the token must be at least 16"),
            (["--allow-host", "http://evil.example/"], "--allow-host 'http://evil.example/' is "
                                                      "not a host name"),
            (["--allow-host", "a.test:99999"], "--allow-host 'a.test:99999' is not a host name")):
        result = subprocess.run([str(COVERTYPE), "serve", "--port", str(port), *args],
                                env=environ, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"covertype: error: {message}")
        assert result.stderr.count("\n") == 1 and result.stdout == ""
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_exposed_server_warns_and_enforces_its_token(tmp_path: Path) -> None:
    process, port = _start_serve(tmp_path / "home", "--host", "0.0.0.0", "--token", TOKEN)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz").status_code == 200
        _refusal(httpx.get(url + MODELS), 401)
        assert httpx.get(url + MODELS, headers={"Authorization": f"Bearer {TOKEN}"}
                         ).status_code == 200
    finally:
        log = _stop(process)
    assert "WARNING: --host 0.0.0.0 accepts connections from other machines" in log
    assert TOKEN not in log


# the real clients pass the layer -------------------------------------------------------------

def test_real_clients_pass(server: EmulatorServer, home: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each client's own requests reach the routes: answered by the app (2xx, or 404 where a
    route is not there yet), never refused by the layer."""
    import kfp_server_api
    from google.api_core import exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    from pipeline.ml_client import aiplatform_service

    monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
    monkeypatch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
    models = ml_service().projects().models()
    models.create(parent="projects/local", body={"name": "clients"}).execute()
    with pytest.raises(HttpError) as error:  # POST with a JSON body, past the layer
        models.versions().create(parent="projects/local/models/clients",
                                 body={"name": "v1", "deploymentUri": "/nowhere"}).execute()
    assert error.value.resp.status == 400 and "outside the project's storage" in str(error.value)
    assert models.delete(name="projects/local/models/clients").execute()["done"] is True
    jobs = ml_service().projects().jobs()
    with pytest.raises(HttpError) as error:  # a POST without a body
        jobs.cancel(name="projects/local/jobs/absent").execute()
    assert error.value.resp.status == 404

    endpoints = aiplatform_service("us-central1").projects().locations().endpoints()
    created = endpoints.create(parent="projects/p/locations/us-central1",
                               body={"displayName": "e"}).execute()  # a JSON POST
    assert created["name"].startswith("projects/p/locations/us-central1/")
    with pytest.raises(HttpError) as error:  # a DELETE without a body: the stand-in's answer
        endpoints.delete(name="projects/p/locations/us-central1/endpoints/1").execute()
    assert error.value.resp.status in (404, 405) and REFUSED not in error.value.resp

    bq = bigquery.Client(project="local", credentials=AnonymousCredentials(),
                         client_options={"api_endpoint": server.url})
    assert [tuple(row) for row in bq.query("SELECT 1").result()] == [(1,)]
    with pytest.raises(exceptions.MethodNotImplemented):  # not in the BigQuery subset
        bq.delete_table("local.d.t")
    gcs = storage.Client(project="local", credentials=AnonymousCredentials(),
                         client_options={"api_endpoint": server.url})
    for call in (lambda: gcs.bucket("absent-bucket").blob("x.csv").upload_from_string(b"a,b\n"),
                 lambda: gcs.bucket("absent-bucket").blob("x.csv").delete()):
        with pytest.raises(exceptions.NotFound):
            call()

    configuration = kfp_server_api.Configuration(host=server.url)
    api = kfp_server_api.ApiClient(configuration)
    package = tmp_path / "pipeline.yaml"
    package.write_text("apiVersion: argoproj.io/v1alpha1\n")
    # Each gets the KFP API's own answer, not this layer's: a bad package (400), no such
    # pipeline (404), a method the local KFP does not serve (501).
    calls = ((400, lambda: kfp_server_api.PipelineUploadServiceApi(api).upload_pipeline(
                 str(package), name="p")),  # multipart/form-data
             (404, lambda: kfp_server_api.PipelineServiceApi(api).delete_pipeline("1")),
             (501, lambda: kfp_server_api.ExperimentServiceApi(api).archive_experiment("1")))
    for status, call in calls:
        with pytest.raises(kfp_server_api.ApiException) as error:
            call()
        assert error.value.status == status, error.value.body
        assert REFUSED not in {name.lower() for name in error.value.headers}


def test_refusals_are_never_server_errors(server: EmulatorServer) -> None:
    odd = [("Origin", "http://[::1"), ("Origin", "http://a:99999"), ("Origin", ""),
           ("Authorization", "Bearer"), ("Content-Type", ";;;"), ("Content-Length", "0"),
           ("Transfer-Encoding", "chunked")]
    for header in odd:
        for method in ("GET", "POST", "DELETE"):
            body = b"0\r\n\r\n" if header[0] == "Transfer-Encoding" else None
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.putrequest(method, MODELS)
            connection.putheader(*header)
            connection.endheaders(body)
            status = connection.getresponse().status
            connection.close()
            assert 200 <= status < 500, (header, method, status)


def test_websocket_handshakes_are_refused() -> None:
    """No route speaks WebSocket (which browsers open cross-site unchecked): the layer closes
    any handshake before the app sees it. Driven as ASGI, as uvicorn here has no WebSocket
    library to pass one on."""
    import asyncio

    from pipeline.local.emulator.security import Guard

    seen, sent = [], []

    async def app(scope, receive, send) -> None:
        seen.append(scope)

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/", "headers": [(b"host", b"127.0.0.1:8080")],
             "server": ("127.0.0.1", 8080)}
    asyncio.run(Guard(app)(scope, receive, send))
    assert (seen, sent) == ([], [{"type": "websocket.close", "code": 1008}])


def test_curl_as_the_readme_shows_it(server: EmulatorServer, home: Path) -> None:
    """With -H 'Content-Type: application/json' curl passes; without it, curl -d sends a form."""
    command = ["curl", "-s", "-X", "POST", server.url + MODELS, "-d", '{"name": "curled"}']
    typed = subprocess.run([*command, "-H", "Content-Type: application/json"],
                           capture_output=True, text=True, timeout=30)
    assert json.loads(typed.stdout)["name"] == "projects/local/models/curled"
    untyped = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert json.loads(untyped.stdout)["error"]["code"] == 415


def test_the_bound_address_is_one_of_the_servers_names(tmp_path: Path) -> None:
    with EmulatorServer(home=tmp_path / "home", host="127.0.0.2") as other:
        assert httpx.get(other.url + "/healthz").status_code == 200  # Host: 127.0.0.2:port
        refused = httpx.get(other.url + "/healthz", headers={"Host": f"127.0.0.3:{other.port}"})
        assert "--allow-host 127.0.0.3" in _refusal(refused, 403)
