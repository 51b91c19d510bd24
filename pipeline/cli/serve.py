"""`covertype serve`: the local AI Platform API (prediction, models, jobs) and run browser.

One uvicorn worker: a second process would double the model memory, and uvicorn 0.54 with
`--workers` >= 2 never sets TCP_NODELAY (Kludex/uvicorn#3149), so every keep-alive response
would wait ~40 ms on a delayed ACK. One line per request is logged (see RequestLog).
Every request first passes the security layer (pipeline/local/emulator/security.py): Host
allowlist, token, Origin, Content-Type and body-size rules.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import socket
import sys
import time
from typing import Any, TextIO

from pipeline.local.data import LAB_ROWS, parse_rows
from pipeline.local.kfp_runs import DEFAULT_PARALLEL, LaunchSettings

log = logging.getLogger("covertype.serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve deployed models with the AI Platform Prediction REST API",
        description="Serve the local registry's models at /v1/projects/local/models/M:predict "
                    "(and the ml v1 models, versions and jobs routes, the KFP v1beta1 API at "
                    "/apis/v1beta1 for the kfp CLI, and the run browser at /) "
                    "until Ctrl-C. With AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and "
                    "AIP_STORAGE_URI set (a Vertex AI custom container), it serves only the "
                    "model at AIP_STORAGE_URI on those routes, on 0.0.0.0.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1); any other address needs a "
                            "token")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                       help="also answer requests whose Host is NAME (with the server's port, "
                            "or PORT); repeatable. Default: 127.0.0.1, localhost, [::1] and "
                            "the --host address")
    serve.add_argument("--token", default=None,
                       help="require 'Authorization: Bearer TOKEN' on every route but /healthz "
                            "(default: $COVERTYPE_TOKEN; required when --host is not loopback; "
                            "prefer the variable, a flag shows in ps)")
    serve.add_argument("--rows", default=str(LAB_ROWS),
                       help="bundled rows a run of the KFP API loads as the source table "
                            f"(default {LAB_ROWS}; 'all')")
    serve.add_argument("--parallel-runs", type=int, default=DEFAULT_PARALLEL,
                       help="runs of the KFP API executed at once; more wait in a queue "
                            f"(default {DEFAULT_PARALLEL})")
    serve.set_defaults(func=_serve)


class RequestLog:
    """ASGI middleware: one line per HTTP request (time, method, path, status, ms) on `stream`.

    Lines are buffered and written together at most `interval` seconds later (and at exit):
    a `logging` call and a write per request cost ~35 us, a fifth of a one-instance predict;
    the time of day is formatted once a second.
    """

    def __init__(self, app: Any, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.app = app
        self.stream = stream or sys.stderr
        self.interval = interval
        self._lines: list[str] = []
        self._scheduled = False
        self._second, self._second_text = -1, ""
        atexit.register(self.flush)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed, now = time.perf_counter() - started, time.time()
            if (second := int(now)) != self._second:
                self._second, self._second_text = second, time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._lines.append(f"{self._second_text},{int(now % 1 * 1000):03d} {log.name} "
                               f"{scope['method']} {scope['path']} {status} "
                               f"{elapsed * 1000:.1f} ms\n")
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Write the buffered lines."""
        self._scheduled = False
        lines, self._lines = self._lines, []
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()


def check_address(host: str, port: int) -> None:
    """Fail with a one-line error before start-up when the address cannot be bound."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port} is out of range; use 1..65535")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        reason = os.strerror(error.errno) if (error.errno or 0) > 0 else str(error)
        raise ValueError(f"cannot listen on {host}:{port} ({reason}); stop the other server "
                         "or pass another --port") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.cli import serve_vertex

    container = serve_vertex.ContainerSettings.from_env()
    if container is not None:  # the serving image on Vertex AI: AIP_* say what to serve
        return serve_vertex.serve(container)
    from pipeline.local.emulator.app import create_app, secure
    from pipeline.local.emulator.security import TOKEN_ENV, AccessPolicy
    from pipeline.local.emulator.server import KEEP_ALIVE_SECONDS
    from pipeline.local.home import local_home

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    policy = AccessPolicy.for_server(args.host, args.allow_host, token)
    check_address(args.host, args.port)
    if args.parallel_runs < 1:
        raise ValueError(f"--parallel-runs {args.parallel_runs} must be 1 or more")
    settings = LaunchSettings(rows=parse_rows(args.rows), parallel=args.parallel_runs)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    if warning := policy.exposure_warning():
        log.warning("WARNING: %s", warning)
    home = local_home()
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("serving %s on http://%s:%d%s (predict: POST /v1/projects/local/models/MODEL:predict)",
             home, host, args.port, ", bearer token required" if policy.token else "")
    app = create_app(home)
    app.state.kfp_settings = settings  # how runs of the KFP API execute
    own = "127.0.0.1" if args.host in ("0.0.0.0", "::") else host
    app.state.url = f"http://{own}:{args.port}"  # how its own trainer processes reach it
    uvicorn.run(RequestLog(secure(app, policy)), host=args.host, port=args.port,
                workers=1, access_log=False, log_level="warning", proxy_headers=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS)
    return 0
