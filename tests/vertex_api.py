"""What the Vertex AI component tests share: the local stand-in they run against, and the few
recorded answers for what that stand-in cannot produce.

`serve_stand_in` starts the local Vertex AI stand-in (the emulator every local run starts) over
a fresh local home and points Google's client at it with VERTEX_AI_EMULATOR_HOST, as the local
runner does for each step. `StandIn` reads its state back through Google's aiplatform v1 client
(built from the packaged discovery document); every answer it reads is checked against the
document (tests/discovery_schema.py).

`Recorded` answers Google's client in order with googleapiclient's HttpMockSequence and records
the requests; bodies are checked against the same document. It is used only where the stand-in
cannot produce the case (an expired job, an API error status it never sends, an operation still
running...); each such test says why in its docstring.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from discovery_schema import assert_conforms
from googleapiclient.http import HttpMockSequence
from sklearn.exceptions import ConvergenceWarning

from pipeline import discovery, ml_client, schema
from pipeline.local.emulator.server import EmulatorServer
from pipeline.trainer import load_trainer
from pipeline.vertex import jobs

DOC = discovery.document("aiplatform", "v1")
PROJECT, REGION = "my-project", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
HOST = f"https://{REGION}-aiplatform.googleapis.com"
RUN, NODE = "6f1c2d3e-0000-4000-8000-000000000001", "covertype-classifier-training-x7k2p.tune"
NODE_LABEL = hashlib.md5(NODE.encode()).hexdigest()  # 0.2.5's context id: md5 of the node name
LABELS = {"kfp_run": RUN, "kfp_node": NODE_LABEL}
FILTER = f'labels.kfp_run="{RUN}" AND labels.kfp_node="{NODE_LABEL}"'
TRAINER = "gcr.io/my-project/trainer_image:latest"
SERVING = "gcr.io/my-project/serving_image:latest"
TUNING_JOB = f"{PARENT}/hyperparameterTuningJobs/1234"
CUSTOM_JOB = f"{PARENT}/customJobs/5678"
MODEL, ENDPOINT = f"{PARENT}/models/42", f"{PARENT}/endpoints/77"
REPO = Path(__file__).resolve().parents[1]
_LISTED = {"hyperparameterTuningJobs": "HyperparameterTuningJob", "customJobs": "CustomJob",
           "models": "Model", "endpoints": "Endpoint"}


def conforms(schema_name: str, value: object) -> None:
    """Assert `value` has the shape of aiplatform v1 schema `schema_name` (short name)."""
    assert_conforms(DOC, f"GoogleCloudAiplatformV1{schema_name}"
                    if not schema_name.startswith("Google") else schema_name, value)


def step_identity(monkeypatch: pytest.MonkeyPatch, run: str, node: str = NODE) -> dict:
    """Make this process a step of KFP run `run`, Argo node `node`; return the step's labels."""
    monkeypatch.setenv(jobs.RUN_ENV, run)
    monkeypatch.setenv(jobs.NODE_ENV, node)
    return {"kfp_run": run, "kfp_node": hashlib.md5(node.split("(")[0].encode()).hexdigest()}


def label_filter(labels: dict) -> str:
    return " AND ".join(f'labels.{key}="{value}"' for key, value in labels.items())


class StandIn:
    """The running stand-in: its home, URL, and its resources read through Google's client."""

    def __init__(self, home: Path, url: str) -> None:
        self.home, self.url = home, url
        self.storage = home / "gcs"
        self._locations = ml_client.aiplatform_service(REGION).projects().locations()

    def list(self, collection: str, where: str = "") -> list[dict]:
        """Every resource of `collection` (hyperparameterTuningJobs, customJobs, models,
        endpoints) in PARENT matching the list filter `where`."""
        query = {"filter": where} if where else {}
        answer = getattr(self._locations, collection)().list(parent=PARENT, **query).execute()
        conforms(f"List{_LISTED[collection]}sResponse", answer)
        assert "nextPageToken" not in answer
        return answer.get(collection, [])

    def get(self, name: str) -> dict:
        """One job, model or endpoint by its resource name."""
        collection = name.split("/")[4]
        answer = getattr(self._locations, collection)().get(name=name).execute()
        conforms(_LISTED[collection], answer)
        return answer

    def create(self, collection: str, body: dict) -> dict:
        """Create a job (its answer) or an endpoint (its finished operation's response)."""
        answer = getattr(self._locations, collection)().create(parent=PARENT, body=body).execute()
        if collection == "endpoints":
            conforms("GoogleLongrunningOperation", answer)
            return answer["response"]
        conforms(_LISTED[collection], answer)
        return answer

    def endpoint_named(self, display_name: str) -> dict | None:
        found = [item for item in self.list("endpoints") if item["displayName"] == display_name]
        assert len(found) <= 1, found
        return found[0] if found else None


@contextmanager
def serve_stand_in(home: Path) -> Iterator[StandIn]:
    """Start the stand-in over `home` and switch Google's client to it for the block."""
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(ml_client.VERTEX_EMULATOR_HOST_ENV, server.url)
        yield StandIn(home, server.url)


def write_datasets(folder: Path, train_rows: int = 2000,
                   validation_rows: int = 500) -> tuple[str, str]:
    """Training and validation CSVs of the bundled data (the split steps' format)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=train_rows + validation_rows)
    training, validation = folder / "training.csv", folder / "validation.csv"
    rows.iloc[:train_rows].to_csv(training, index=False)
    rows.iloc[train_rows:].to_csv(validation, index=False)
    return str(training), str(validation)


def fitted_model_bytes(rows: int = 2000) -> bytes:
    """A pickled model of the trainer's pipeline, fitted on bundled rows."""
    frame = pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=rows,
                        dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    trainer = load_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations are enough here
        model = trainer.build_model(max_iter=20).fit(trainer.model_input(frame),
                                                     frame[schema.LABEL_COLUMN])
    return pickle.dumps(model)


class Recorded:
    """Answers aiplatform v1 calls in order through Google's client; records the requests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list) -> None:
        monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV, raising=False)
        self.http = HttpMockSequence([
            ({"status": str(status)}, json.dumps(body))
            for status, body in (a if isinstance(a, tuple) else (200, a) for a in answers)])
        build = ml_client.aiplatform_service
        monkeypatch.setattr(ml_client, "aiplatform_service",
                            lambda region, http=None: build(region, http=self.http))

    @property
    def calls(self) -> list[tuple[str, str, dict, dict | None]]:
        """(method, path, query without alt, JSON body) of every request."""
        found = []
        for uri, method, body, _ in self.http.request_sequence:
            parts = urlsplit(uri)
            assert f"{parts.scheme}://{parts.netloc}" == HOST
            query = {key: value[0] for key, value in parse_qs(parts.query).items()}
            assert query.pop("alt") == "json"
            found.append((method, parts.path, query, json.loads(body) if body else None))
        return found


def job(name: str, state: str, **extra) -> dict:
    """A recorded job answer, checked against the document."""
    body = {"name": name, "displayName": NODE, "state": state, "labels": LABELS,
            "createTime": "2026-12-01T10:00:00Z", **extra}
    conforms("HyperparameterTuningJob" if "hyperparameterTuning" in name else "CustomJob", body)
    return body


def operation(name: str, done: bool, response: dict | None = None, error: dict | None = None):
    """A recorded long-running operation answer, checked against the document."""
    body = {"name": name, "done": done}
    if response is not None:
        body["response"] = response
    if error is not None:
        body["error"] = error
    conforms("GoogleLongrunningOperation", body)
    return body
