"""The real `kfp` CLI and `kfp.Client` (kfp 1.8.24) against the local KFP API of `covertype serve`.

One server per module (127.0.0.1, a free port, 2 runs at a time); runs execute with the local
runner and write the run records the run browser shows.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import time
import zipfile
from pathlib import Path

import httpx
import kfp
import kfp_server_api
import pytest
from kfp_local import (
    assert_kfp_error,
    assert_kfp_shape,
    cli_env,
    compile_sleepy,
    kfp_cli,
    running_pids,
    start_server,
    wait_for,
)

from pipeline.local.records import RunStore

API = "/apis/v1beta1"
REPO = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp-home")


@pytest.fixture(scope="module")
def server(home):
    running = start_server(home)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def env(home, tmp_path_factory) -> dict[str, str]:
    return cli_env(home, tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def client(server) -> kfp.Client:
    return kfp.Client(host=server.url)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


def test_kfp_cli_uploads_versions_submits_watches_gets_and_lists(server, env, client, home,
                                                                 http, tmp_path):
    package = compile_sleepy(tmp_path / "sleepy.yaml")
    first = kfp_cli(server, env, "pipeline", "upload", "-p", "sleepy", str(package))
    assert first.returncode == 0, first.stderr
    pipeline_id = client.get_pipeline_id("sleepy")
    assert pipeline_id and pipeline_id in first.stdout

    again = kfp_cli(server, env, "pipeline", "upload", "-p", "sleepy", str(package))
    assert again.returncode == 1
    assert "(409)" in again.stderr and '"code":6' in again.stderr
    assert "The name sleepy already exist" in again.stderr

    zipped = compile_sleepy(tmp_path / "sleepy.zip")
    version = kfp_cli(server, env, "pipeline", "upload-version", "-n", "sleepy", "-v", "v2",
                      str(zipped))
    assert version.returncode == 0, version.stderr
    versions = client.list_pipeline_versions(pipeline_id).versions
    assert [item.name for item in versions] == ["sleepy", "v2"]
    assert client.get_pipeline(pipeline_id).default_version.id == versions[1].id

    submitted = kfp_cli(server, env, "run", "submit", "-e", "nightly", "-r", "nap-1",
                        "-n", "sleepy", "-w", "seconds=1")
    assert submitted.returncode == 0, submitted.stderr
    (run_id,) = set(RUN_ID.findall(submitted.stdout))
    # `-w` ran `argo watch`: the venv's stand-in followed the run to its end.
    assert "nap: Succeeded" in submitted.stdout
    assert f"Name: {run_id}\nStatus: Succeeded" in submitted.stdout

    got = kfp_cli(server, env, "run", "get", run_id)
    assert got.returncode == 0 and re.search(rf"{run_id}\s*\|\s*nap-1\s*\|\s*Succeeded",
                                              got.stdout), got.stdout
    listed = kfp_cli(server, env, "run", "list")
    assert run_id in listed.stdout

    record = RunStore(home / "runs").load(run_id)  # the same record as a terminal run's
    assert record.status == "Succeeded" and record.parameters["seconds"] == "1"
    assert record.steps["nap"].status == "Succeeded"
    page = http.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "nap" in page.text

    detail = client.get_run(run_id)
    assert detail.run.pipeline_spec.pipeline_id == pipeline_id
    assert [ref.key.type for ref in detail.run.resource_references] == ["EXPERIMENT"]
    manifest = json.loads(detail.pipeline_runtime.workflow_manifest)
    assert manifest["metadata"]["name"] == run_id
    assert manifest["status"]["phase"] == "Succeeded"
    nap = [node for node in manifest["status"]["nodes"].values()
           if node["displayName"] == "nap"]
    assert [(node["type"], node["phase"]) for node in nap] == [("Pod", "Succeeded")]


def test_kfp_client_runs_packages_and_terminate_stops_them(client, home, tmp_path):
    package = compile_sleepy(tmp_path / "sleepy.tar.gz")
    experiment = client.create_experiment("terminations")
    seconds = random.randint(3000, 3999)
    runs = [client.run_pipeline(experiment.id, f"long-{index}", str(package),
                                params={"seconds": seconds}) for index in range(3)]
    for run in runs[:2]:
        detail = wait_for(client, run.id, {"Running"}, timeout=120)
        _wait_for_node(client, run.id, "nap", "Running")
    assert client.get_run(runs[2].id).run.status == "Pending"  # 2 run at once: queued

    client.runs.terminate_run(runs[2].id)
    queued = client.get_run(runs[2].id)
    assert queued.run.status == "Failed"
    assert json.loads(queued.pipeline_runtime.workflow_manifest)["status"]["message"] == (
        "terminated")
    for run in runs[:2]:
        client.runs.terminate_run(run.id)
        assert client.get_run(run.id).run.status in ("Terminating", "Failed")
    for run in runs[:2]:
        detail = wait_for(client, run.id, {"Failed", "Error", "Succeeded"}, timeout=60)
        assert detail.run.status == "Failed"
        manifest = json.loads(detail.pipeline_runtime.workflow_manifest)
        assert manifest["status"]["message"] == "terminated"
        nap = [node for node in manifest["status"]["nodes"].values()
               if node["displayName"] == "nap"]
        assert [(node["phase"], node["message"]) for node in nap] == [("Failed", "terminated")]
        assert RunStore(home / "runs").load(run.id).status in ("Failed", "Interrupted")
    assert running_pids(f"sleep {seconds}") == []
    assert not (home / "runs" / runs[2].id).exists()  # a queued run never starts

    with pytest.raises(kfp_server_api.ApiException) as refused:
        client.runs.terminate_run(runs[0].id)
    assert refused.value.status == 400 and "already ended (Failed)" in refused.value.body


def _wait_for_node(client: kfp.Client, run_id: str, name: str, phase: str) -> None:
    for _ in range(600):
        manifest = json.loads(client.get_run(run_id).pipeline_runtime.workflow_manifest)
        if any(node["displayName"] == name and node["phase"] == phase
               for node in manifest["status"]["nodes"].values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"step {name} of run {run_id} never reached {phase}")


def _upload(http: httpx.Client, filename: str, data: bytes, name: str = "broken"):
    return http.post(f"{API}/pipelines/upload", params={"name": name},
                     files={"uploadfile": (filename, data, "application/octet-stream")})


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return buffer.getvalue()


def test_a_malformed_package_gets_kfp_error_shape_and_stores_nothing(server, env, client,
                                                                     http, tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not an archive")
    cli = kfp_cli(server, env, "pipeline", "upload", "-p", "broken", str(bad))
    assert cli.returncode == 1
    assert "(400)" in cli.stderr and '"code":3' in cli.stderr
    assert "bad.zip: not a pipeline package" in cli.stderr

    cases = [
        ("pod.yaml", b"kind: Pod\n", "not an Argo Workflow"),
        ("notes.zip", _zip(**{"notes.txt": b"hello"}), "holds no pipeline.yaml"),
        ("broken.tar.gz", b"\x1f\x8b\x08garbage", "not a readable tar.gz archive"),
        ("latin.yaml", "kind: Workflow # é".encode("latin-1"), "is not UTF-8 text"),
        ("bad.yaml", b"kind: [Workflow\n", "not YAML"),
    ]
    for filename, data, message in cases:
        assert_kfp_error(_upload(http, filename, data), 400, 3, message)
    no_file = http.post(f"{API}/pipelines/upload", params={"name": "broken"},
                        files={"other": ("x.yaml", b"", "text/plain")})
    assert_kfp_error(no_file, 400, 3, "no multipart/form-data field uploadfile")
    assert_kfp_error(_upload(http, "x.yaml", b"", name="n" * 101), 400, 3, "name too long")
    assert client.get_pipeline_id("broken") is None
    assert not list((Path(env["COVERTYPE_HOME"]) / "kfp" / "uploads").glob("*"))


def test_errors_have_kfp_shape_and_change_nothing(server, client, http, tmp_path):
    package = compile_sleepy(tmp_path / "sleepy.yaml")
    pipeline = client.upload_pipeline(str(package), "errors")
    assert_kfp_error(http.get(f"{API}/pipelines/nope"), 404, 5, "Pipeline nope not found")
    assert_kfp_error(http.get(f"{API}/runs/nope"), 404, 5, "Run nope not found")
    assert_kfp_error(http.post(f"{API}/runs/x:archive", json={}), 501, 12, "does not serve")
    by_date = json.dumps({"predicates": [{"op": 1, "key": "created_at", "stringValue": "x"}]})
    assert_kfp_error(http.get(f"{API}/pipelines", params={"filter": by_date}), 400, 3,
                     "filters on name")
    greater = json.dumps({"predicates": [{"op": "GREATER_THAN", "key": "name",
                                          "string_value": "a"}]})
    assert_kfp_error(http.get(f"{API}/runs", params={"filter": greater}), 400, 3,
                     "filters on name")
    assert_kfp_error(http.get(f"{API}/experiments", params={"sort_by": "color"}), 400, 3,
                     "Invalid sorting field")
    assert_kfp_error(http.get(f"{API}/pipelines", params={"page_token": "x"}), 400, 3,
                     "Invalid page token")
    experiment = client.create_experiment("errors")
    assert_kfp_error(http.post(f"{API}/experiments", json={"name": "errors"}), 409, 6,
                     "already exists")
    namespaced = {"name": "ns", "resource_references": [
        {"key": {"type": "NAMESPACE", "id": "team"}, "relationship": "OWNER"}]}
    assert_kfp_error(http.post(f"{API}/experiments", json=namespaced), 400, 3, "single-user")

    def run_body(parameters: dict, **spec) -> dict:
        return {"name": "bad", "pipeline_spec": {
            "parameters": [{"name": key, "value": value} for key, value in parameters.items()],
            **spec}, "resource_references": [
            {"key": {"type": "EXPERIMENT", "id": experiment.id}, "relationship": "OWNER"}]}

    runs_before = client.list_runs(page_size=200).total_size or 0
    for body, status, code, message in [
        (run_body({"nope": "1"}, pipeline_id=pipeline.id), 400, 3,
         "Unrecognized input parameter: nope"),
        (run_body({"gcs_root": "relative/dir"}, pipeline_id=pipeline.id), 400, 3,
         "gcs_root 'relative/dir'"),
        (run_body({}, pipeline_id=pipeline.id, workflow_manifest="{}"), 400, 3,
         "Please don't specify a pipeline version or pipeline ID"),
        (run_body({}, workflow_manifest="not json"), 400, 3, "workflow_manifest is not JSON"),
        (run_body({}, workflow_manifest='{"kind": "Pod"}'), 400, 3, "not an Argo Workflow"),
        (run_body({}), 400, 3, "needs a workflow_manifest or a pipeline_id"),
        (run_body({}, pipeline_id="missing"), 404, 5, "Pipeline missing not found"),
    ]:
        assert_kfp_error(http.post(f"{API}/runs", json=body), status, code, message)
    assert (client.list_runs(page_size=200).total_size or 0) == runs_before


def test_responses_are_kfp_server_api_models_with_paging_and_filters(client, http, tmp_path):
    package = compile_sleepy(tmp_path / "sleepy.yaml")
    for name in ("page-a", "page-b", "page-c"):
        client.upload_pipeline(str(package), name)
    experiment = client.create_experiment("shapes")
    run = client.run_pipeline(experiment.id, "shape-run", str(package), params={"seconds": 0})
    version_id = client.get_pipeline(client.get_pipeline_id("page-a")).default_version.id
    by_version = client.run_pipeline(experiment.id, "by-version", version_id=version_id,
                                     params={"seconds": 0})
    for submitted in (run, by_version):
        wait_for(client, submitted.id, {"Succeeded"}, timeout=300)
    references = client.get_run(by_version.id).run.resource_references
    assert [(ref.key.type, ref.key.id, ref.relationship) for ref in references] == [
        ("EXPERIMENT", experiment.id, "OWNER"), ("PIPELINE_VERSION", version_id, "CREATOR")]

    substring = json.dumps({"predicates": [{"op": 9, "key": "name", "stringValue": "page-"}]})
    first = http.get(f"{API}/pipelines", params={"filter": substring, "page_size": 2,
                                                 "sort_by": "name desc"}).json()
    assert [item["name"] for item in first["pipelines"]] == ["page-c", "page-b"]
    assert first["total_size"] == 3
    second = http.get(f"{API}/pipelines", params={
        "filter": substring, "page_size": 2, "sort_by": "name desc",
        "page_token": first["next_page_token"]}).json()
    assert [item["name"] for item in second["pipelines"]] == ["page-a"]
    assert "next_page_token" not in second
    pipeline_id = first["pipelines"][0]["id"]
    checks = [
        ("/healthz", {}, "ApiGetHealthzResponse"),
        ("/pipelines", {"filter": substring}, "ApiListPipelinesResponse"),
        (f"/pipelines/{pipeline_id}", {}, "ApiPipeline"),
        (f"/pipelines/{pipeline_id}/templates", {}, "ApiGetTemplateResponse"),
        ("/pipeline_versions", {"resource_key.type": "PIPELINE",
                                "resource_key.id": pipeline_id}, "ApiListPipelineVersionsResponse"),
        (f"/pipeline_versions/{pipeline_id}", {}, "ApiPipelineVersion"),
        ("/experiments", {}, "ApiListExperimentsResponse"),
        (f"/experiments/{experiment.id}", {}, "ApiExperiment"),
        ("/runs", {"resource_reference_key.type": "EXPERIMENT",
                   "resource_reference_key.id": experiment.id}, "ApiListRunsResponse"),
        (f"/runs/{run.id}", {}, "ApiRunDetail"),
    ]
    for path, params, model in checks:
        response = http.get(API + path, params=params)
        assert response.status_code == 200, (path, response.text)
        assert_kfp_shape(response.json(), model)
    runs = http.get(f"{API}/runs", params={"resource_reference_key.type": "EXPERIMENT",
                                           "resource_reference_key.id": experiment.id}).json()
    assert [item["id"] for item in runs["runs"]] == [run.id, by_version.id]
    assert http.delete(f"{API}/pipelines/{pipeline_id}").json() == {}
    assert client.get_pipeline_id("page-c") is None


def make(target: str, home: Path, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
               "COVERTYPE_HOME": str(home)}
    arguments = [f"{key}={value}" for key, value in variables.items()]
    return subprocess.run(["make", target, f"PACKAGE={tmp_path / 'pipeline.yaml'}",
                           *arguments], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=600)


def test_make_upload_twice_and_make_run_against_the_local_endpoint(server, client, home, env,
                                                                   tmp_path):
    endpoint = {"INVERSE_PROXY_HOSTNAME": server.url, "PIPELINE_NAME": "covertype-local"}
    first = make("upload", home, tmp_path, **endpoint)
    assert first.returncode == 0, first.stderr  # local images are fine on the local endpoint
    assert "covertype/trainer_image:local" in (tmp_path / "pipeline.yaml").read_text()
    pipeline_id = client.get_pipeline_id("covertype-local")
    assert f"Uploaded pipeline covertype-local: pipeline id {pipeline_id}" in first.stdout
    second = make("upload", home, tmp_path, PIPELINE_VERSION="second", **endpoint)
    assert second.returncode == 0, second.stderr
    assert "Uploaded version second of pipeline covertype-local" in second.stdout
    assert client.get_pipeline(pipeline_id).default_version.name == "second"

    submitted = make("run", home, tmp_path, RUN_NAME="local-make-run", **endpoint)
    assert submitted.returncode == 0, submitted.stderr
    (run_id,) = set(RUN_ID.findall(submitted.stdout))
    detail = wait_for(client, run_id, {"Succeeded", "Failed", "Error"})
    assert detail.run.status == "Succeeded", detail.pipeline_runtime.workflow_manifest[-2000:]
    got = kfp_cli(server, env, "run", "get", run_id)
    assert re.search(rf"{run_id}\s*\|\s*local-make-run\s*\|\s*Succeeded", got.stdout)
    record = RunStore(home / "runs").load(run_id)
    assert record.parameters["project_id"] == "local"
    assert record.parameters["gcs_root"] == str(home / "gcs" / "staging")
    assert record.steps["deploy-model"].status == "Succeeded"
