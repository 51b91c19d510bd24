"""Shared by the Vertex AI component tests: the client boundary and aiplatform v1 bodies.

`Api` answers the calls of Google's client (built from the packaged discovery document) in
order with HttpMockSequence and records the requests; it stands for the Vertex AI service until
the local stand-in is merged. `job` and `operation` build bodies and check their shape against
the document.
"""
from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlsplit

from googleapiclient.http import HttpMockSequence
from vertex_shapes import problems

from pipeline import ml_client

PROJECT, REGION = "my-project", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
HOST = f"https://{REGION}-aiplatform.googleapis.com"
RUN, NODE = "6f1c2d3e-0000-4000-8000-000000000001", "covertype-classifier-training-x7k2p.tune"
NODE_LABEL = hashlib.md5(NODE.encode()).hexdigest()  # 0.2.5's context id: md5 of the node name
LABELS = {"kfp_run": RUN, "kfp_node": NODE_LABEL}
FILTER = f'labels.kfp_run="{RUN}" AND labels.kfp_node="{NODE_LABEL}"'
TRAINER = "gcr.io/my-project/trainer_image:latest"
SERVING = "gcr.io/my-project/serving_image:latest"
ARGS = ["--training_dataset_path", "gs://b/datasets/training/data.csv",
        "--validation_dataset_path", "gs://b/datasets/validation/data.csv", "--hptune", "True"]
TUNING = {"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 6, "maxParallelTrials": 3,
    "hyperparameterMetricTag": "accuracy", "enableTrialEarlyStopping": True,
    "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500, 1000]},
               {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"}]}}
STUDY = {
    "metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
    "parameters": [
        {"parameterId": "max_iter", "discreteValueSpec": {"values": [500, 1000]},
         "scaleType": "UNIT_LINEAR_SCALE"},
        {"parameterId": "alpha", "doubleValueSpec": {"minValue": 0.0001, "maxValue": 0.001},
         "scaleType": "UNIT_LINEAR_SCALE"}],
    "algorithm": "ALGORITHM_UNSPECIFIED",
    "decayCurveStoppingSpec": {"useElapsedDuration": False},
}
TUNING_JOB = f"{PARENT}/hyperparameterTuningJobs/1234"
CUSTOM_JOB = f"{PARENT}/customJobs/5678"
MODEL, ENDPOINT = f"{PARENT}/models/42", f"{PARENT}/endpoints/77"


class Api:
    """Answers aiplatform v1 calls in order through Google's client; records the requests."""

    def __init__(self, monkeypatch, answers: list) -> None:
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
    body = {"name": name, "displayName": NODE, "state": state, "labels": LABELS,
            "createTime": "2026-12-01T10:00:00Z", **extra}
    kind = "HyperparameterTuningJob" if "hyperparameterTuning" in name else "CustomJob"
    assert problems(kind, body) == []
    return body


def operation(name: str, done: bool, response: dict | None = None, error: dict | None = None):
    body = {"name": name, "done": done}
    if response is not None:
        body["response"] = response
    if error is not None:
        body["error"] = error
    assert problems("GoogleLongrunningOperation", body) == []
    return body


