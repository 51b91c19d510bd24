"""The servers `covertype serve` is measured against, each answering the same model (or nothing).

- **floor**: bench/floor_app.py, a constant answer on uvicorn with covertype serve's settings;
  the fastest anything can answer over HTTP here.
- **MLServer** 1.7.1 with its scikit-learn runtime (`mlserver_sklearn.SKLearnModel`), the V2
  inference protocol (`POST /v2/models/covertype/infer`, one input per column, decoded to a
  pandas DataFrame), its default settings (one inference worker process) but the ports.
- **MLflow** 3.17.2 `mlflow models serve` (one worker), `dataframe_split` bodies.

Each lives in its own venv (bench/sidevenv.py) with the project's numpy, pandas and
scikit-learn pins, so the pickled model loads as it was fitted.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import REPO
from bench.sidevenv import ensure_venv, project_pins
from pipeline import schema

MLFLOW_PINS = ["mlflow==3.17.2"]
# uvloop >= 0.22 refuses asyncio.get_event_loop() in a new process, which MLServer 1.7.1's
# inference workers call at start: with it, the model never loads.
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"]
LABELS = {"covertype": "covertype serve", "floor": "HTTP floor (constant ASGI app)",
          "mlserver": "MLServer 1.7.1 sklearn (V2)", "mlflow": "MLflow 3.17.2"}
_SAVE_MLFLOW_MODEL = ("import pickle, sys, mlflow.sklearn\n"
                      "with open(sys.argv[1], 'rb') as f: model = pickle.load(f)\n"
                      "mlflow.sklearn.save_model(model, sys.argv[2])\n")


@dataclass
class Server:
    """How to start one server and talk to it."""

    name: str
    command: list[str]
    ready_url: str
    predict_url: str
    bodies: dict[int, dict]  # instances per request -> request body
    predictions: Callable[[dict], list]  # the predictions in a response body
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    headers: dict[str, str] = field(default_factory=dict)  # besides Host and Content-Type


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def covertype(home: Path, values: list[list]) -> Server:
    """`covertype serve` on the registry in `home`; sends COVERTYPE_TOKEN when it is set."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token = os.environ.get("COVERTYPE_TOKEN", "")
    return Server("covertype", [str(Path(sys.executable).with_name("covertype")), "serve",
                                "--port", str(port)],
                  f"{base}/healthz", f"{base}/v1/projects/local/models/covertype:predict",
                  {n: {"instances": values[:n]} for n in (1, 100)},
                  lambda body: body["predictions"], {**os.environ, "COVERTYPE_HOME": str(home)},
                  {"Authorization": f"Bearer {token}"} if token else {})


def floor() -> Server:
    """The constant app (answers `[1]` whatever the body)."""
    port = free_port()
    return Server("floor", [sys.executable, str(REPO / "bench" / "floor_app.py"), str(port)],
                  f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/predict",
                  {1: {"instances": [[0] * len(schema.FEATURE_COLUMNS)]}},
                  lambda body: body["predictions"])


def mlserver(work: Path, model_pkl: Path, values: list[list], progress=None) -> Server:
    """MLServer's sklearn runtime on a copy of the pickled model."""
    venv = ensure_venv("mlserver", [*MLSERVER_PINS, *project_pins()], progress)
    folder = work / "mlserver"
    (folder / "covertype").mkdir(parents=True)
    (folder / "covertype" / "model.pkl").write_bytes(model_pkl.read_bytes())
    (folder / "covertype" / "model-settings.json").write_text(json.dumps({
        "name": "covertype", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.pkl"}}))
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port()}))
    base = f"http://127.0.0.1:{port}/v2/models/covertype"
    return Server("mlserver", [str(venv / "bin" / "mlserver"), "start", str(folder)],
                  f"{base}/ready", f"{base}/infer",
                  {n: _v2_body(values[:n]) for n in (1, 100)},
                  lambda body: body["outputs"][0]["data"],
                  {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"})


def _v2_body(values: list[list]) -> dict:
    """V2 inference request: one input per column, decoded by MLServer as a DataFrame."""
    inputs = []
    for index, name in enumerate(schema.FEATURE_COLUMNS):
        column = [row[index] for row in values]
        if name in schema.CATEGORICAL_COLUMNS:
            inputs.append({"name": name, "shape": [len(column)], "datatype": "BYTES",
                           "data": column, "parameters": {"content_type": "str"}})
        else:
            inputs.append({"name": name, "shape": [len(column)], "datatype": "FP64",
                           "data": [float(value) for value in column]})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def mlflow(work: Path, model_pkl: Path, values: list[list], progress=None) -> Server:
    """`mlflow models serve` (one worker) on the model saved with mlflow.sklearn."""
    venv = ensure_venv("mlflow", [*MLFLOW_PINS, *project_pins()], progress)
    subprocess.run([str(venv / "bin" / "python"), "-c", _SAVE_MLFLOW_MODEL, str(model_pkl),
                    str(work / "mlflow-model")], check=True, capture_output=True)
    port = free_port()
    columns = list(schema.FEATURE_COLUMNS)
    return Server("mlflow", [str(venv / "bin" / "mlflow"), "models", "serve", "-m",
                             str(work / "mlflow-model"), "--env-manager", "local", "-p",
                             str(port), "-h", "127.0.0.1", "-w", "1"],
                  f"http://127.0.0.1:{port}/ping", f"http://127.0.0.1:{port}/invocations",
                  {n: {"dataframe_split": {"columns": columns, "data": values[:n]}}
                   for n in (1, 100)},
                  lambda body: body["predictions"],
                  {**os.environ, "MLFLOW_TRACKING_URI": str(work / "mlruns"),
                   "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"})
