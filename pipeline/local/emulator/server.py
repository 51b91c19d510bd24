"""Runs the emulator app on 127.0.0.1 in a background thread, as a context manager.

The app runs behind the same security layer as `covertype serve` (emulator/security.py).
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from pipeline.local.emulator.app import create_app, secure
from pipeline.local.emulator.security import AccessPolicy

KEEP_ALIVE_SECONDS = 600


class EmulatorServer:
    """`with EmulatorServer(home) as server:` serves on `server.url` until the block ends."""

    def __init__(self, home: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 policy: AccessPolicy | None = None,
                 images: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.policy = policy or AccessPolicy.for_server(host)
        self.port = port or _free_port(host)
        self.app = create_app(home, images)
        self.app.state.url = self.url  # trials reach this server as steps do (step_env)
        # Google's front ends keep an idle connection for minutes; Google's clients (httplib2)
        # do not retry a request whose connection the server closed meanwhile, so a client
        # polling a job or an operation every 30 s needs more than uvicorn's 5 s default.
        config = uvicorn.Config(secure(self.app, self.policy), host=host, port=self.port,
                                log_level="warning", access_log=False, proxy_headers=False,
                                timeout_keep_alive=KEEP_ALIVE_SECONDS)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="emulator")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local AI Platform emulator did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
