"""Helpers of the local KFP API tests: the server, the `kfp` CLI, tiny pipelines, shape checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import kfp
import kfp_server_api
from kfp import dsl

from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.kfp_runs import LaunchSettings

ROWS = 20000
BIN = Path(sys.executable).parent
FINAL = {"Succeeded", "Failed", "Error", "Skipped"}


def start_server(home: Path, parallel: int = 2) -> EmulatorServer:
    """`covertype serve`'s app on a free 127.0.0.1 port, API runs loading ROWS rows."""
    server = EmulatorServer(home)
    server.app.state.kfp_settings = LaunchSettings(rows=ROWS, parallel=parallel)
    return server.start()


def cli_env(home: Path, user_home: Path) -> dict[str, str]:
    """The environment of a user with this venv on PATH (its `argo` too), no kfp context."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(user_home),
            "COVERTYPE_HOME": str(home), "LC_ALL": "C.UTF-8"}


def kfp_cli(server: EmulatorServer, env: dict[str, str], *args: str,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `kfp` CLI (kfp 1.8.24) against the server."""
    return subprocess.run([str(BIN / "kfp"), "--endpoint", server.url, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(client: kfp.Client, run_id: str, statuses: set[str], timeout: float = 600):
    """Poll the run until its status is one of `statuses`; returns the ApiRunDetail."""
    deadline = time.monotonic() + timeout
    while True:
        detail = client.get_run(run_id)
        if detail.run.status in statuses:
            return detail
        assert time.monotonic() < deadline, f"run {run_id} still {detail.run.status}"
        time.sleep(0.3)


@dsl.pipeline(name="sleepy", description="one shell step that sleeps")
def sleepy_pipeline(project_id: str, gcs_root: str, seconds: int = 1):
    """A foreign pipeline: a ContainerOp whose shell command runs on this machine.

    It declares `project_id` and `gcs_root` because local runs pass their defaults.
    """
    dsl.ContainerOp(name="nap", image="alpine:3",
                    command=["sh", "-c", f"echo napping; sleep {seconds}; echo awake"])


def compile_sleepy(path: Path) -> Path:
    """The sleepy pipeline compiled by kfp's compiler; the suffix picks .yaml, .zip, .tar.gz."""
    kfp.compiler.Compiler().compile(sleepy_pipeline, str(path))
    return path


def running_pids(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (e.g. a unique `sleep N`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command and "pytest" not in command:
                found.append(int(entry.name))
    return found


def assert_kfp_shape(value: dict, model: str) -> None:
    """Every key is a field of kfp_server_api's model (recursively), and ApiClient reads it."""
    cls = getattr(kfp_server_api.models, model)
    fields = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        assert key in fields, f"{model} has no field {key!r}"
        kind = cls.openapi_types[fields[key]]
        inner = kind[5:-1] if kind.startswith("list[") else kind
        if hasattr(kfp_server_api.models, inner):
            for element in (item if kind.startswith("list[") else [item]):
                if isinstance(element, dict):
                    assert_kfp_shape(element, inner)
    response = SimpleNamespace(data=json.dumps(value))
    assert isinstance(kfp_server_api.ApiClient().deserialize(response, model), cls)


def assert_kfp_error(response, status: int, code: int, text: str) -> dict:
    """A KFP API error: HTTP status, grpc-gateway body with google.rpc code and message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code", "message", "details"}
    assert body["code"] == code and body["error"] == body["message"]
    assert text in body["message"], body["message"]
    assert "\n" not in body["message"]
    assert_kfp_shape({key: body[key] for key in ("error", "code")}, "ApiStatus")
    return body
