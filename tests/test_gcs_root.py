"""`gcs_root` as a gs:// URI, against gcp-storage-emulator started by the test."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from test_local_run import covertype, only_run

from pipeline.local.records import RunStore
from pipeline.local.registry import Registry

BUCKET = "covertype-test"


@pytest.fixture
def storage_emulator(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host",
         "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    client = storage.Client(project="local", credentials=AnonymousCredentials())
    deadline = time.monotonic() + 20
    while True:
        try:
            client.create_bucket(BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.2)
    yield client, host
    server.kill()
    server.wait()


def test_pipeline_with_gs_root(tmp_path, compiled_package, storage_emulator):
    client, host = storage_emulator
    home = tmp_path / "home"
    args = ["run", "--local", "--package", str(compiled_package), "--rows", "20000", "--param",
            f"gcs_root=gs://{BUCKET}/staging"]
    result = covertype(home, *args, env={"STORAGE_EMULATOR_HOST": host})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Could not determine bucket type" not in result.stderr
    record = only_run(home)
    blobs = {blob.name for blob in client.list_blobs(BUCKET)}
    assert {f"staging/datasets/{split}/data.csv" for split in
            ("training", "validation", "testing")} <= blobs
    model_blob = f"staging/jobdir/{record.run_id}/model.pkl"
    assert model_blob in blobs
    version, artifact = Registry(home / "registry").resolve("covertype_classifier")
    assert version["deploymentUri"] == f"gs://{BUCKET}/staging/jobdir/{record.run_id}"
    assert artifact.read_bytes() == client.bucket(BUCKET).blob(model_blob).download_as_bytes()
    assert not (home / "gcs").exists() or not any((home / "gcs").rglob("*.csv"))

    # The step cache keeps gs:// outputs by content: an object rewritten since is put back.
    testing = client.bucket(BUCKET).blob("staging/datasets/testing/data.csv")
    original = testing.download_as_bytes()
    testing.upload_from_string(b"Elevation\n1\n")
    again = covertype(home, *args, env={"STORAGE_EMULATOR_HOST": host})
    assert again.returncode == 0, again.stdout + again.stderr
    steps = RunStore(home / "runs").list()[0].steps
    assert {name for name, step in steps.items() if step.reused == "cache"} == {
        "create-training-split", "create-validation-split", "create-testing-split"}
    assert testing.download_as_bytes() == original
