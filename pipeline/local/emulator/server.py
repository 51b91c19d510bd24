"""Runs the emulator app on 127.0.0.1 in a background thread, as a context manager.

The listening socket is bound at once, so the URL is good before the app exists. With
`lazy=True` the app (FastAPI, the route modules) is built and served only when the first
connection arrives (it waits in the socket's backlog meanwhile) or `serve_soon()` is called:
a run whose steps never call the emulator never pays for it. The app runs behind the same
security layer as `covertype serve` (emulator/security.py).
"""
from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEEP_ALIVE_SECONDS = 600
BACKLOG = 128


class EmulatorServer:
    """`with EmulatorServer(home) as server:` serves on `server.url` until the block ends.

    Args:
        home: the local home the app serves (default: `local_home()`).
        host, port: where to listen (port 0: a free one).
        policy: the security layer's policy (default: the server's own host).
        lazy: build and serve the app on the first connection or `serve_soon()` only.
        state: attributes set on `app.state` when the app is built.
        images: training image -> local program (`--image`, see `program_for_image`).
    """

    def __init__(self, home: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 policy: Any = None, lazy: bool = False,
                 state: Mapping[str, Any] | None = None,
                 images: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.lazy = lazy
        self._home = home
        self._policy = policy
        self._state = dict(state or {})
        self._images = dict(images or {})
        self._socket = socket.create_server((host, port), backlog=BACKLOG)
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._app: Any = None
        self._server: Any = None
        self._stopping = False
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True, name="emulator")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> Any:
        """The FastAPI app (built now if it is not yet)."""
        with self._lock:
            if self._app is None:
                from pipeline.local.emulator.app import create_app

                self._app = create_app(self._home, self._images)
                self._app.state.url = self.url  # trials reach this server as steps do
                for name, value in self._state.items():
                    setattr(self._app.state, name, value)
            return self._app

    @property
    def app_if_built(self) -> Any:
        """The app, or None if nothing has needed it yet."""
        return self._app

    def start(self) -> EmulatorServer:
        """Start serving (lazy: start waiting for the first connection); returns when ready."""
        self._thread.start()
        if self.lazy:
            return self
        deadline = time.monotonic() + 30
        while self._server is None or not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local AI Platform emulator did not start on {self.url}")
            time.sleep(0.01)
        return self

    def serve_soon(self) -> None:
        """Build and serve the app now, in the background (a lazy server's first step will
        need it)."""
        self._wake_write.send(b"s")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            if self._server is not None:
                self._server.should_exit = True
        self._wake_write.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
        self._wake_read.close()
        self._wake_write.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        if self.lazy:
            readable, _, _ = select.select([self._socket, self._wake_read], [], [])
            if self._wake_read in readable and self._wake_read.recv(1) == b"x":
                return
        import uvicorn

        from pipeline.local.emulator.app import secure
        from pipeline.local.emulator.security import AccessPolicy

        policy = self._policy or AccessPolicy.for_server(self.host)
        # Google's front ends keep an idle connection for minutes; Google's clients (httplib2)
        # do not retry a request whose connection the server closed meanwhile, so a client
        # polling a job or an operation every 30 s needs more than uvicorn's 5 s default.
        config = uvicorn.Config(secure(self.app, policy), host=self.host, port=self.port,
                                log_level="warning", access_log=False, proxy_headers=False,
                                timeout_keep_alive=KEEP_ALIVE_SECONDS)
        with self._lock:
            if self._stopping:
                return
            self._server = uvicorn.Server(config)
        self._server.run(sockets=[self._socket])
