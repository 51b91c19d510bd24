"""The local KFP API with a recorder in front: what a client sent to "the cluster".

The real KFP cluster is unreachable from tests; the API that answers is the local one of
`covertype serve` (one implementation of KFP's v1beta1 API, not a second fake), with every
run held in its queue (`LaunchSettings(parallel=0)`), so nothing executes. Each request is
recorded before the app sees it.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
import yaml

from pipeline.local.emulator.app import create_app
from pipeline.local.kfp_runs import LaunchSettings
from pipeline.local.kfp_store import Experiment, KfpStore, Pipeline, Run

API = "/apis/v1beta1"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: bytes
    host: str

    def json(self) -> Any:
        """The JSON body (run and experiment creates)."""
        return json.loads(self.body)

    def form_file(self, name: str) -> tuple[str, bytes]:
        """(filename, content) of the multipart/form-data file field `name` (uploads)."""
        head = f"Content-Type: {self.content_type}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + self.body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == name:
                return part.get_filename(), part.get_payload(decode=True)
        raise KeyError(f"no form field {name!r} in the request body")


class RecordingKfpApi:
    """`with RecordingKfpApi(home) as api:` serves on `api.url`; `api.requests` lists calls."""

    def __init__(self, home: Path) -> None:
        self.requests: list[RecordedRequest] = []
        app = create_app(home)
        app.state.kfp_settings = LaunchSettings(parallel=0)
        self.store = KfpStore(home)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(self._record(app), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingKfpApi:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "no server"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def add_pipeline(self, name: str, workflow: dict) -> str:
        """Upload a pipeline as `kfp pipeline upload` would; returns its id."""
        data = yaml.safe_dump(workflow, sort_keys=False).encode()
        return self.store.create_pipeline(name, "", "pipeline.yaml", data)[0].id

    def add_experiment(self, name: str) -> str:
        return self.store.create_experiment(name, "").id

    @property
    def pipelines(self) -> list[str]:
        return [item.id for item in self.store.list(Pipeline)]

    @property
    def experiments(self) -> list[str]:
        return [item.id for item in self.store.list(Experiment)]

    @property
    def runs(self) -> list[str]:
        return [item.id for item in self.store.list(Run)]

    def _record(self, app: Any) -> Any:
        async def recorder(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
            self.requests.append(RecordedRequest(
                scope["method"], scope["path"],
                parse_qs(scope["query_string"].decode(), keep_blank_values=True),
                headers.get("content-type", ""), body, headers.get("host", "")))
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await app(scope, replay, send)

        return recorder
