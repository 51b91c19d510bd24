"""Google's own clients and the gsutil/gcloud stand-ins inside a real local step environment.

The emulator runs as in a pipeline run (`EmulatorServer`), the step environment is the
runner's (`step_environment`), and each client runs as `python -c` in a subprocess with it:
no credentials, no network. Every JSON answer of the BigQuery and Cloud Storage subsets that
the clients received is checked against Google's discovery documents (a recording middleware
on the app), bigquery v2 packaged, storage v1 in tests/discovery/.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import duckdb
import pytest
from discovery_schema import assert_conforms
from test_gcs_root import storage_emulator  # noqa: F401 (fixture)

from pipeline import discovery
from pipeline.local import data
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import storage_root, warehouse_path
from pipeline.local.step_env import BIN_DIR, SITE_DIR, step_environment

ROWS = 3000
STORAGE_DOCUMENT = json.loads((Path(__file__).parent / "discovery" / "storage.v1.json")
                              .read_text())
# (method, path pattern, schema) of every JSON answer the subsets give on success.
RESPONSE_SCHEMAS = [
    ("POST", r"/bigquery/v2/projects/[^/]+/jobs", "bigquery", "Job"),
    ("GET", r"/bigquery/v2/projects/[^/]+/jobs/[^/]+", "bigquery", "Job"),
    ("GET", r"/bigquery/v2/projects/[^/]+/queries/[^/]+", "bigquery", "GetQueryResultsResponse"),
    ("POST", r"/bigquery/v2/projects/[^/]+/queries", "bigquery", "QueryResponse"),
    ("GET", r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/[^/]+", "bigquery", "Table"),
    ("GET", r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/[^/]+/data", "bigquery",
     "TableDataList"),
    ("GET", r"/storage/v1/b", "storage", "Buckets"),
    ("POST", r"/storage/v1/b", "storage", "Bucket"),
    ("GET", r"/storage/v1/b/[^/]+", "storage", "Bucket"),
    ("GET", r"/storage/v1/b/[^/]+/o", "storage", "Objects"),
    ("GET", r"/storage/v1/b/[^/]+/o/[^/]+", "storage", "Object"),
    ("POST", r"/storage/v1/b/[^/]+/o/[^/]+/copyTo/b/[^/]+/o/[^/]+", "storage", "Object"),
    ("POST", r"/storage/v1/b/[^/]+/o/[^/]+/rewriteTo/b/[^/]+/o/[^/]+", "storage",
     "RewriteResponse"),
    ("POST", r"/upload/storage/v1/b/[^/]+/o", "storage", "Object"),
    ("PUT", r"/upload/storage/v1/resumable/[^/]+", "storage", "Object"),
    ("POST", r"/upload/storage/v1/resumable/[^/]+", "storage", "Object"),
]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """(server, home, recorded answers): one emulator over a home with ROWS Covertype rows."""
    home = tmp_path_factory.mktemp("step-clients") / "home"
    with mock.patch.dict(os.environ, {"COVERTYPE_HOME": str(home)}):
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        data.ensure_source_table(ROWS)
        server = EmulatorServer(home)
        answers: list[tuple[str, str, int, bytes]] = []

        @server.app.middleware("http")
        async def record(request, call_next):
            response = await call_next(request)
            if request.url.path.startswith(("/bigquery/", "/storage/", "/upload/")):
                body = b"".join([chunk async for chunk in response.body_iterator])
                answers.append((request.method, request.scope["raw_path"].decode(),
                                response.status_code, body))
                from starlette.responses import Response
                return Response(body, response.status_code, dict(response.headers))
            return response

        with server:
            yield server, home, answers
    assert {path.split("/")[1] for _, path, _, _ in answers} == {"bigquery", "storage", "upload"}
    assert len(answers) > 50
    for method, path, status, body in answers:
        _check_answer(method, path, status, body)


def _check_answer(method: str, path: str, status: int, body: bytes) -> None:
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["code"], int) and error["code"] == status, body
        assert error["message"] and "\n" not in error["message"], body
        assert [set(item) for item in error["errors"]] == [{"message", "domain", "reason"}]
        return
    if status in (204, 308) or not body or "alt=media" in path or path.startswith(
            "/download/"):
        return
    schemas = [(api, name) for verb, pattern, api, name in RESPONSE_SCHEMAS
               if verb == method and re.fullmatch(pattern, path.partition("?")[0])]
    assert schemas, f"no schema for {method} {path}"
    api, name = schemas[0]
    document = discovery.document("bigquery", "v2") if api == "bigquery" else STORAGE_DOCUMENT
    assert_conforms(document, name, json.loads(body))


def run_in_step(server: EmulatorServer, home: Path, code: str, *, script: str = "",
                parameters: dict | None = None, extra: dict | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run Python `code` (or a bash `script`) with a local step's environment."""
    base = {**os.environ, "COVERTYPE_HOME": str(home), **(extra or {})}
    if not extra or "STORAGE_EMULATOR_HOST" not in extra:
        base.pop("STORAGE_EMULATOR_HOST", None)
    env = step_environment(base, server.url, parameters or {})
    command = ["bash", "-c", script] if script else [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


# The environment --------------------------------------------------------------------------
def test_step_environment_sets_switches_paths_and_project():
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/mine", "STORAGE_EMULATOR_HOST": ""}
    env = step_environment(base, "http://127.0.0.1:9", {"project_id": "proj"})
    assert base == {"PATH": "/usr/bin", "PYTHONPATH": "/mine", "STORAGE_EMULATOR_HOST": ""}
    for name in ("AI_PLATFORM_EMULATOR_HOST", "VERTEX_AI_EMULATOR_HOST",
                 "BIGQUERY_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        assert env[name] == "http://127.0.0.1:9"
    assert env["GOOGLE_CLOUD_PROJECT"] == "proj"
    assert env["PYTHONPATH"] == f"{SITE_DIR}{os.pathsep}/mine"
    assert env["PATH"].split(os.pathsep) == [str(BIN_DIR), os.path.dirname(sys.executable),
                                             "/usr/bin"]
    assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert step_environment({}, "http://x:1", {})["GOOGLE_CLOUD_PROJECT"] == "local"
    configured = step_environment({"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"},
                                  "http://x:1", {})
    assert configured["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:4443"
    assert (BIN_DIR / "gsutil").stat().st_mode & 0o111
    assert (BIN_DIR / "gcloud").stat().st_mode & 0o111


PROBE = """
import sys, google.auth, googleapiclient.discovery as d
print(google.auth.default.__module__, d.build.__code__.co_filename.endswith('step_clients.py'),
      'sitecustomize' in sys.modules)
"""


def test_nothing_leaks_outside_a_step(stand_ins):
    server, home, _ = stand_ins
    before = dict(os.environ)
    inside = run_in_step(server, home, PROBE)
    assert inside.stdout.split() == ["pipeline.local.step_clients", "True", "True"], inside.stderr
    assert dict(os.environ) == before
    outside = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                             env={**os.environ, "COVERTYPE_HOME": str(home)})
    assert outside.stdout.split()[:2] == ["google.auth._default", "False"]


def test_sitecustomize_is_cheap_and_chains_to_the_one_it_shadows(stand_ins, tmp_path):
    server, home, _ = stand_ins
    baseline = subprocess.run([sys.executable, "-c", "import sys; print(*sorted(sys.modules))"],
                              capture_output=True, text=True).stdout.split()
    loaded = run_in_step(server, home, "import sys; print(*sorted(sys.modules))").stdout.split()
    assert set(loaded) - set(baseline) <= {"sitecustomize", "importlib.util"}
    (tmp_path / "sitecustomize.py").write_text("import builtins; builtins.CHAINED = 'yes'\n")
    chained = run_in_step(server, home, "print(CHAINED)", extra={"PYTHONPATH": str(tmp_path)})
    assert chained.stdout.strip() == "yes", chained.stderr


# googleapiclient ---------------------------------------------------------------------------
def test_discovery_build_reaches_the_emulator_without_credentials(stand_ins):
    server, home, _ = stand_ins
    result = run_in_step(server, home, f"""
        from googleapiclient import discovery, errors
        ml = discovery.build('ml', 'v1')
        model = ml.projects().models().create(parent='projects/proj',
            body={{'name': 'clients_probe', 'regions': ['us-central1']}}).execute()
        print(ml.projects().models().get(name='projects/proj/models/clients_probe')
              .execute()['name'])
        try:
            ml.projects().jobs().get(name='projects/proj/jobs/missing').execute()
        except errors.HttpError as error:
            print('job', error.resp.status)
        vertex = discovery.build('aiplatform', 'v1', client_options={{
            'api_endpoint': 'https://us-central1-aiplatform.googleapis.com'}})
        models = vertex.projects().locations().models().list(
            parent='projects/proj/locations/us-central1')
        print(models.uri, models.execute().get('models', []))
        chosen = discovery.build('ml', 'v1',
            discoveryServiceUrl='{server.url}/discovery/{{api}}/{{apiVersion}}')
        print(chosen._baseUrl)
        try:
            discovery.build('compute', 'v1')
        except errors.UnknownApiNameOrVersion as error:
            print('refused', error)
        """, parameters={"project_id": "proj"})
    lines = result.stdout.splitlines()
    assert lines[:2] == ["projects/proj/models/clients_probe", "job 404"], result.stderr
    assert lines[2].startswith(f"{server.url}/v1/projects/proj/locations/us-central1/models")
    assert lines[2].endswith(" []")  # answered by the local Vertex AI stand-in
    assert lines[3] == f"{server.url}/"
    assert lines[4].startswith("refused discovery.build('compute', 'v1'): a local step reaches "
                               "only the local stand-ins")


# google-cloud-storage, gcsfs -----------------------------------------------------------------
def test_storage_client_and_gcsfs_see_the_local_storage_folder(stand_ins):
    server, home, _ = stand_ins
    result = run_in_step(server, home, """
        import fsspec
        from google.api_core import exceptions
        from google.cloud import storage
        client = storage.Client()
        bucket = client.create_bucket('clients-probe')
        blob = bucket.blob('dir/a.txt')
        blob.upload_from_string('hello', content_type='text/plain')
        big = bucket.blob('big.bin', chunk_size=256 * 1024)
        big.upload_from_string(bytes(range(256)) * 3000)  # resumable, three chunks
        print(bucket.blob('dir/a.txt').download_as_text(),
              bucket.get_blob('dir/a.txt').content_type)
        print(bucket.blob('big.bin').download_as_bytes() == bytes(range(256)) * 3000)
        print(sorted(b.name for b in client.list_blobs('clients-probe')))
        listing = client.list_blobs('clients-probe', delimiter='/')
        print([b.name for b in listing], sorted(listing.prefixes))
        bucket.copy_blob(blob, bucket, 'copy.txt')
        bucket.blob('moved.txt').rewrite(blob)
        bucket.blob('dir/a.txt').delete()
        for name in ('dir/a.txt', '../escape'):
            try:
                bucket.blob(name).reload()
            except exceptions.GoogleAPICallError as error:
                print(type(error).__name__, error.errors[0]['message'])
        fs = fsspec.filesystem('gs')
        with fs.open('clients-probe/fs/b.csv', 'wb') as stream:
            stream.write(b'x,y\\n1,2\\n')
        print(fs.cat('clients-probe/copy.txt'), fs.ls('clients-probe/fs'))
        """)
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        "hello text/plain", "True", "['big.bin', 'dir/a.txt']", "['big.bin'] ['dir/']",
        "NotFound No such object: clients-probe/dir/a.txt",
        "BadRequest object name '../escape' has an empty, '.' or '..' segment, which local "
        "storage cannot hold as a file path; rename it"], result.stderr
    assert lines[6] == "b'hello' ['clients-probe/fs/b.csv']"
    folder = storage_root(home) / "clients-probe"
    assert (folder / "big.bin").read_bytes() == bytes(range(256)) * 3000
    assert (folder / "copy.txt").read_text() == (folder / "moved.txt").read_text() == "hello"
    assert not (folder / "dir").exists()  # its only object was deleted
    assert (folder / "fs" / "b.csv").read_text() == "x,y\n1,2\n"
    assert not list((home / "gcs-uploads").glob("sessions/*"))


def test_storage_refuses_what_a_folder_cannot_hold(stand_ins, tmp_path):
    server, home, _ = stand_ins
    root = storage_root(home)
    (root / "refusals").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("outside")
    (root / "refusals" / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "refusals" / "file").write_text("a file")
    result = run_in_step(server, home, """
        import json
        from google.api_core import exceptions
        from google.cloud import storage
        def text(error):  # an upload's error carries the API's body, not a parsed message
            return json.loads(error.response.text)['error']['message']
        bucket = storage.Client().bucket('refusals')
        for name in ('link.txt', 'file/below', 'ends/', 'a//b'):
            try:
                if name == 'link.txt':
                    bucket.blob(name).reload()
                else:
                    bucket.blob(name).upload_from_string('x')
            except exceptions.GoogleAPICallError as error:
                print(error.code, text(error))
        try:
            storage.Client().create_bucket('Bad_Name')
        except exceptions.GoogleAPICallError as error:
            print(error.code, text(error).split(';')[0])
        print(sorted(b.name for b in storage.Client().list_blobs('refusals')))
        """)
    assert result.stdout.splitlines() == [
        "400 object refusals/link.txt is a symlink out of local storage; only files inside it "
        "are served",
        "409 cannot write object refusals/file/below: refusals/file is an object and local "
        "storage cannot hold both",
        "400 object name 'ends/' ends in '/': folder placeholder objects have no file in local "
        "storage; write objects below it instead",
        "400 object name 'a//b' has an empty, '.' or '..' segment, which local storage cannot "
        "hold as a file path; rename it",
        "400 Invalid bucket name: 'Bad_Name'",
        "['file']"], result.stderr
    assert sorted(path.name for path in (root / "refusals").iterdir()) == ["file", "link.txt"]


# google-cloud-bigquery --------------------------------------------------------------------
def test_bigquery_client_queries_the_local_warehouse(stand_ins):
    server, home, _ = stand_ins
    sql = ("SELECT Cover_Type, COUNT(*) AS n, MAX(Elevation) AS top, MIN(Soil_Type) AS soil "
           "FROM covertype_dataset.covertype GROUP BY Cover_Type ORDER BY Cover_Type")
    result = run_in_step(server, home, f"""
        import json
        from google.cloud import bigquery
        client = bigquery.Client()
        job = client.query({sql!r})
        rows = [list(row.values()) for row in job.result()]
        frame = client.query('SELECT * FROM covertype_dataset.covertype').to_dataframe()
        waited = client.query_and_wait('SELECT Elevation FROM covertype_dataset.covertype '
                                       'ORDER BY Elevation DESC LIMIT 3').to_dataframe()
        table = client.get_table('covertype_dataset.covertype')
        listed = list(client.list_rows(table, max_results=2500))
        print(json.dumps({{"project": client.project, "rows": rows, "state": job.state,
                          "shape": list(frame.shape), "elevation": int(frame.Elevation.sum()),
                          "top3": waited.Elevation.tolist(), "table_rows": table.num_rows,
                          "types": [field.field_type for field in table.schema],
                          "listed": len(listed), "first": list(listed[0].values())}}))
        """, parameters={"project_id": "proj"})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    with duckdb.connect(str(warehouse_path(home)), read_only=True) as con:
        table = "covertype_dataset.covertype"
        expected = con.execute(f"SELECT Cover_Type, COUNT(*), MAX(Elevation), MIN(Soil_Type) FROM "
                           f"{table} GROUP BY 1 ORDER BY 1").fetchall()
        elevation = con.execute(f"SELECT SUM(Elevation) FROM {table}").fetchone()[0]
        top3 = [row[0] for row in con.execute(f"SELECT Elevation FROM {table} ORDER BY 1 DESC "
                                          "LIMIT 3").fetchall()]
        first = list(con.execute(f"SELECT * FROM {table} LIMIT 1").fetchone())
    assert answer["project"] == "proj" and answer["state"] == "DONE"
    assert [tuple(row) for row in answer["rows"]] == expected
    assert answer["shape"] == [ROWS, 13] and answer["elevation"] == elevation
    assert answer["top3"] == top3
    assert answer["table_rows"] == ROWS and answer["listed"] == 2500
    assert answer["types"][0] == "INTEGER" and "STRING" in answer["types"]
    assert answer["first"] == first


def test_bigquery_client_gets_refusals_as_bad_requests(stand_ins):
    server, home, _ = stand_ins
    result = run_in_step(server, home, """
        from google.api_core import exceptions
        from google.cloud import bigquery
        client = bigquery.Client()
        for run in (lambda: client.query("SELECT FORMAT('%t', 1) AS f").result(),
                    lambda: client.query_and_wait('SELECT * FROM nope.missing'),
                    lambda: client.query('SELECT 1', job_config=bigquery.QueryJobConfig(
                        use_legacy_sql=True)).result(),
                    lambda: client.get_table('covertype_dataset.missing')):
            try:
                run()
            except exceptions.GoogleAPICallError as error:
                print(type(error).__name__, '|', error.message.splitlines()[0])
        """)
    lines = result.stdout.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["BadRequest", "BadRequest", "BadRequest",
                                                        "NotFound"], result.stderr
    assert "not supported by the local BigQuery: FORMAT with %t" in lines[0]
    assert "nope.missing not found" in lines[1]
    assert "legacy SQL is not supported by the local BigQuery" in lines[2]
    assert "Not found: Table covertype_dataset.missing" in lines[3]


# gsutil and gcloud storage ----------------------------------------------------------------
GSUTIL_SCRIPT = r"""
set -u
mkdir -p d/sub && echo one > d/a.txt && echo two > d/sub/b.csv && echo three > top.txt
gsutil cp top.txt gs://$B/x/top.txt; echo "rc=$?"
gsutil -m cp -r d gs://$B/x/; echo "rc=$?"
gsutil ls gs://$B/x; echo "rc=$?"
gsutil ls -r gs://$B/x/d; echo "rc=$?"
gsutil cat gs://$B/x/d/sub/b.csv; echo "rc=$?"
gsutil cp 'gs://'$B'/x/d/*.txt' out/; echo "rc=$?"
gsutil cp gs://$B/x/d here; echo "rc=$?"
gsutil cat gs://$B/x/missing; echo "rc=$?"
gsutil ls gs://$B/missing; echo "rc=$?"
gsutil rm gs://$B/x/d; echo "rc=$?"
gsutil rm -r gs://$B/x/d; echo "rc=$?"
gcloud storage ls --recursive gs://$B; echo "rc=$?"
gcloud storage cp gs://$B/x/top.txt copied.txt; echo "rc=$?"
gcloud compute instances list; echo "rc=$?"
gsutil mb gs://other; echo "rc=$?"
cat out/a.txt copied.txt
command -v gsutil
"""


def _gsutil_lines(bucket: str) -> list[str]:
    return [
        "rc=0", "rc=0", f"gs://{bucket}/x/d/", f"gs://{bucket}/x/top.txt", "rc=0",
        f"gs://{bucket}/x/d/:", f"gs://{bucket}/x/d/a.txt", "", f"gs://{bucket}/x/d/sub/:",
        f"gs://{bucket}/x/d/sub/b.csv", "rc=0", "two", "rc=0", "rc=0", "rc=1", "rc=1", "rc=1",
        "rc=1", "rc=0", f"gs://{bucket}/x/:", f"gs://{bucket}/x/top.txt", "rc=0", "rc=0",
        "rc=1", "rc=1", "one", "three", str(BIN_DIR / "gsutil")]


def _check_gsutil_errors(stderr: str, bucket: str) -> None:
    errors = [line for line in stderr.splitlines() if "Exception" in line or "ERROR" in line]
    assert errors == [
        "CommandException: 1 file/object could not be transferred.",
        f"CommandException: No URLs matched: gs://{bucket}/x/missing",
        "CommandException: One or more URLs matched no objects.",
        f"CommandException: No URLs matched: gs://{bucket}/x/d",
        "ERROR: (gcloud) `gcloud compute instances` is not available in a local step: the local "
        "stand-in supports only `gcloud storage cp|ls|cat|rm`",
        'CommandException: Invalid command "mb": the local gsutil stand-in supports cp, ls, '
        "cat, rm"], stderr
    assert f'Omitting prefix "gs://{bucket}/x/d". (Did you mean to do cp -r?)' in stderr


def test_gsutil_and_gcloud_storage_on_the_local_storage(stand_ins, tmp_path):
    server, home, _ = stand_ins
    (storage_root(home) / "gsutil-local").mkdir(parents=True)
    result = run_in_step(server, home, "", script=GSUTIL_SCRIPT, cwd=tmp_path,
                         extra={"B": "gsutil-local"})
    assert result.stdout.splitlines() == _gsutil_lines("gsutil-local"), result.stderr
    _check_gsutil_errors(result.stderr, "gsutil-local")
    folder = storage_root(home) / "gsutil-local"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["x", "x/top.txt"]


def test_gsutil_against_the_configured_storage_emulator(stand_ins, storage_emulator,  # noqa: F811
                                                        tmp_path):
    server, home, _ = stand_ins
    client, host = storage_emulator
    result = run_in_step(server, home, "", script=GSUTIL_SCRIPT, cwd=tmp_path,
                         extra={"B": "covertype-test", "STORAGE_EMULATOR_HOST": host})
    assert result.stdout.splitlines() == _gsutil_lines("covertype-test"), result.stderr
    _check_gsutil_errors(result.stderr, "covertype-test")
    assert sorted(blob.name for blob in client.list_blobs("covertype-test")) == ["x/top.txt"]
    assert not (storage_root(home) / "covertype-test").exists()
