"""Helpers of the foreign-pipeline tests: `covertype serve` as a user starts it, and
`dsl-compile` of a DSL that loads its components by URL from it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
FOREIGN = Path(__file__).parent / "foreign"
# What a compile of this project's DSL reads from the environment; a foreign DSL gets its own.
_COMPILE_ENV = ("BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA", "PLATFORM",
                "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION",
                "SERVING_IMAGE")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def covertype_serve(home: Path) -> Iterator[str]:
    """`covertype serve` on a free loopback port over `home`; yields its URL."""
    port = free_port()
    log = home.parent / f"serve-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as stream:
        process = subprocess.Popen([str(BIN / "covertype"), "serve", "--port", str(port)],
                                   stdout=stream, stderr=stream,
                                   env={**os.environ, "COVERTYPE_HOME": str(home)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def dsl_compile(dsl: Path, output: Path, **env: str) -> subprocess.CompletedProcess:
    """`dsl-compile --py DSL --output OUTPUT` with the given compile-time environment only."""
    environ = {key: value for key, value in os.environ.items() if key not in _COMPILE_ENV}
    return subprocess.run([str(BIN / "dsl-compile"), "--py", str(dsl), "--output", str(output)],
                          env={**environ, **env}, capture_output=True, text=True, timeout=300)
