"""`covertype serve` as a user starts it, for tests that need the real process (its own
predict shortcut, its port, its signals): started on a free loopback port, ended after."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

COVERTYPE = str(Path(sys.executable).with_name("covertype"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    process: subprocess.Popen
    log: Path  # its stdout and stderr


@contextmanager
def covertype_serve(home: Path, startup_s: float = 60) -> Iterator[Served]:
    """`covertype serve --port P` over `home`, healthy within `startup_s` (its log in the
    assertion otherwise); terminated when the block ends."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"serve-{port}.log"
    with open(log, "wb") as stream:
        process = subprocess.Popen([COVERTYPE, "serve", "--port", str(port)], stdout=stream,
                                   stderr=stream, env={**os.environ, "COVERTYPE_HOME": str(home)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield Served(url, port, process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
