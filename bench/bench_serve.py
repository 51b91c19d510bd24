"""Benchmark: `covertype serve` (ONNX fast path) against the HTTP floor, MLServer and MLflow.

Every server runs on 127.0.0.1 and serves the trainer's Pipeline fitted on 10,000 bundled rows
(the floor serves a constant); Debian's `wrk` drives them all with the same rows in each
server's own request format, one- and 100-instance requests at concurrency 1 and 8 (the floor
only in the one-instance cells, its answer being the one-instance answer). Requests carry what
a legitimate client sends: `Host: 127.0.0.1:PORT`, `Content-Type: application/json`, and
`Authorization: Bearer $COVERTYPE_TOKEN` to covertype serve when that variable is set. Before
timing, each server's answer is checked against the model's own predictions; any non-2xx
answer or socket error during a timing fails the benchmark. The servers take turns within
each repetition. `python bench/bench_serve.py [--repeats N] [--seconds S] [--quick]`.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `python bench/bench_serve.py`
    sys.path.insert(0, str(REPO))

from bench import Row, serve_anchors, stats  # noqa: E402
from bench.serve_anchors import LABELS, Server  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.trainer import load_trainer  # noqa: E402

TRAIN_ROWS = 10_000
CELLS = ((1, 1), (1, 8), (100, 1), (100, 8))  # (instances per request, concurrency)
QUICK_CELLS = ((1, 8),)
SERVERS = ("covertype", "floor", "mlserver", "mlflow")
QUICK_SERVERS = ("covertype", "floor")
METRICS = ("requests_per_s", "p50_ms", "p99_ms")
TARGET_CELL = "1 instance, c=8"
TARGET_SHARE, TARGET_P99_MS, TARGET_VS_MLFLOW = 0.60, 3.0, 20.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def cell_name(instances: int, concurrency: int) -> str:
    return f"{instances} instance{'s' if instances > 1 else ''}, c={concurrency}"


def run(repeats: int = 3, seconds: int = 5, cells=CELLS, servers=SERVERS,
        progress=None) -> dict:
    """Measure every (cell, server) `repeats` times for `seconds`; median [min-max].

    Returns:
        {"cells": {"<n> instance(s), c=<c>": {server: {metric: stats}}}, "setup": {...},
        "targets": {...}}.
    """
    wrk = _ensure_wrk()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder, ExitStack() as stack:
        work = Path(folder)
        setup, started = _start(work, servers, stack, progress)
        warm = max(1, min(2, seconds))
        for server in started.values():  # first requests load models and fill caches
            _wrk(wrk, server, min(server.bodies), work, 8, warm)
        samples: dict = {}
        for _ in range(repeats):
            for instances, concurrency in cells:
                for server in started.values():
                    if instances not in server.bodies:
                        continue
                    samples.setdefault(cell_name(instances, concurrency), {}).setdefault(
                        server.name, []).append(
                        _wrk(wrk, server, instances, work, concurrency, seconds))
    failures = [f"{server} {cell}: {sample['failed']}" for cell, by_server in samples.items()
                for server, runs in by_server.items() for sample in runs if sample["failed"]]
    if failures:
        raise RuntimeError(f"non-2xx answers or socket errors while timing ({'; '.join(failures)})"
                           ": the numbers would not be of served predictions")
    result = {"cells": {cell: {server: {metric: stats([s[metric] for s in runs], 2)
                                        for metric in METRICS}
                               for server, runs in by_server.items()}
                        for cell, by_server in samples.items()}}
    result["setup"] = {**setup, "seconds per cell": seconds, "repeats": repeats,
                       "load average before / after": [
                           [round(v, 2) for v in load_before],
                           [round(v, 2) for v in os.getloadavg()]]}
    result["targets"] = _targets(result["cells"].get(TARGET_CELL, {}))
    return result


def _targets(cell: dict) -> dict:
    if "covertype" not in cell:
        return {}
    ours = cell["covertype"]
    targets = {"p99_ms": ours["p99_ms"]["median"]}
    if "floor" in cell:
        targets["share_of_floor"] = round(ours["requests_per_s"]["median"] /
                                          cell["floor"]["requests_per_s"]["median"], 3)
    if "mlflow" in cell:
        targets["times_mlflow"] = round(ours["requests_per_s"]["median"] /
                                        cell["mlflow"]["requests_per_s"]["median"], 1)
    return targets


def _start(work: Path, names: tuple[str, ...], stack: ExitStack,
           progress=None) -> tuple[dict, dict[str, Server]]:
    """Fit the model, deploy it to each server, start them, check their answers."""
    import pandas as pd

    from pipeline.local.data import BUNDLED_CSV
    from pipeline.local.home import registry_dir, storage_root
    from pipeline.local.registry import Registry

    trainer = load_trainer()
    frame = schema.validate_frame(pd.read_csv(BUNDLED_CSV, nrows=TRAIN_ROWS + 100, dtype={
        name: str for name in schema.CATEGORICAL_COLUMNS}), str(BUNDLED_CSV))
    train, request_rows = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:]
    model = trainer.build_model().fit(trainer.model_input(train), train[schema.LABEL_COLUMN])
    home = work / "home"
    artifact = storage_root(home) / "artifact"  # the registry deploys only from the storage
    artifact.mkdir(parents=True)
    (artifact / "model.pkl").write_bytes(pickle.dumps(model))
    registry = Registry(registry_dir(home))
    registry.create_model({"name": "covertype"})
    registry.create_version("covertype", {"name": "v1", "deploymentUri": str(artifact)})
    model_pkl = artifact / "model.pkl"
    values = [[*map(int, row[:10]), *row[10:]] for row in
              request_rows[list(schema.FEATURE_COLUMNS)].itertuples(index=False)]
    expected = model.predict(trainer.model_input(request_rows)).tolist()
    makers = {"covertype": lambda: serve_anchors.covertype(home, values),
              "floor": serve_anchors.floor,
              "mlserver": lambda: serve_anchors.mlserver(work, model_pkl, values, progress),
              "mlflow": lambda: serve_anchors.mlflow(work, model_pkl, values, progress)}
    servers = {}
    for name in names:
        server = makers[name]()
        stack.enter_context(_process(server, work / f"{name}.log"))
        instances = max(server.bodies)
        answer, headers = _post(server, server.bodies[instances])
        wanted = [1] if name == "floor" else expected[:instances]
        if server.predictions(answer) != wanted:
            raise RuntimeError(f"{LABELS[name]} answered {server.predictions(answer)[:5]}..., "
                               f"not the model's {wanted[:5]}...; not benchmarking")
        if name == "covertype":
            if headers.get("x-prediction-path") != "onnx":
                raise RuntimeError("covertype serve did not take the ONNX fast path; see its "
                                   "fastpath.json verdict")
            if headers.get("x-model-version") != "v1":
                raise RuntimeError(f"covertype serve answered with X-Model-Version "
                                   f"{headers.get('x-model-version')!r}, not 'v1'")
        servers[name] = server
    verdict = json.loads((registry.root / "covertype" / "versions" / "v1" /
                          "fastpath.json").read_text())
    setup = {"model": f"trainer Pipeline (StandardScaler + OneHotEncoder -> SGD) fitted on "
                      f"{TRAIN_ROWS:,} bundled rows",
             "fast path": verdict["reason"], "servers": [LABELS[name] for name in names],
             "load generator": "wrk -t1, 127.0.0.1", "pins": {
                 "mlserver": serve_anchors.MLSERVER_PINS, "mlflow": serve_anchors.MLFLOW_PINS}}
    return setup, servers


def _wrk(wrk: str, server: Server, instances: int, work: Path, connections: int,
         seconds: int) -> dict:
    """One wrk run: requests/s, p50 and p99 in ms, and failed requests (non-2xx, errors)."""
    body = work / f"{server.name}-{instances}.json"
    if not body.exists():
        body.write_text(json.dumps(server.bodies[instances]))
    script = work / f"{server.name}-{instances}.lua"
    host = server.predict_url.split("/")[2]
    headers = {"Host": host, "Content-Type": "application/json", **server.headers}
    script.write_text('wrk.method = "POST"\n' + "".join(
        f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items()) +
        f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    output = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                             "--latency", "-s", str(script), server.predict_url],
                            check=True, capture_output=True, text=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)\s*$", output, re.MULTILINE))
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    if errors := re.search(r"Socket errors: (.*)", output):
        failed += sum(int(n) for n in re.findall(r"\d+", errors.group(1)))
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50_ms": _milliseconds(latency["50"]), "p99_ms": _milliseconds(latency["99"]),
            "failed": failed}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


@contextmanager
def _process(server: Server, log: Path):
    """Start a server in its own process group, wait until it is ready, stop the group."""
    with open(log, "wb") as stream:
        process = subprocess.Popen(server.command, stdout=stream, stderr=subprocess.STDOUT,
                                   env=server.env, cwd=log.parent, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(server.ready_url, headers=server.headers)
                with urllib.request.urlopen(request, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{LABELS[server.name]} did not start: "
                                       f"{log.read_text()[-1500:]}") from None
                time.sleep(0.2)
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (workers included), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                process.poll()  # reaps the server itself; its children go to init
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            return


def _post(server: Server, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(server.predict_url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json", **server.headers})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


def _ensure_wrk() -> str:
    """Debian's wrk, installed with apt-get when missing."""
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       capture_output=True)
    if not (wrk := shutil.which("wrk")):
        raise RuntimeError("wrk is not installed and `apt-get install -y wrk` failed; install "
                           "it (Debian package wrk) and run again")
    return wrk


def rows(result: dict) -> list[Row]:
    """Per cell, ours against each anchor (requests/s, p99); then the targets."""
    table = []
    for cell, by_server in result["cells"].items():
        ours = by_server["covertype"]
        for anchor in ("floor", "mlserver", "mlflow"):
            if anchor in by_server:
                table.append(Row("serve", f"{cell}, requests/s, ours vs {LABELS[anchor]}",
                                 ours["requests_per_s"], by_server[anchor]["requests_per_s"],
                                 digits=0))
                table.append(Row("serve", f"{cell}, p99 ms, ours vs {LABELS[anchor]}",
                                 ours["p99_ms"], by_server[anchor]["p99_ms"]))
    targets = result["targets"]
    if "share_of_floor" in targets:
        share = Row("serve", f"target: requests/s share of the HTTP floor, {TARGET_CELL}",
                    targets["share_of_floor"], target=f">= {TARGET_SHARE:.2f}",
                    met=targets["share_of_floor"] >= TARGET_SHARE)
        table.append(share)
    if "p99_ms" in targets:
        table.append(Row("serve", f"target: p99 ms, {TARGET_CELL}", targets["p99_ms"],
                         target=f"<= {TARGET_P99_MS:.0f} ms",
                         met=targets["p99_ms"] <= TARGET_P99_MS))
    if "times_mlflow" in targets:
        table.append(Row("serve", f"target: requests/s vs MLflow, {TARGET_CELL}",
                         targets["times_mlflow"], target=f">= {TARGET_VS_MLFLOW:.0f}x",
                         met=targets["times_mlflow"] >= TARGET_VS_MLFLOW, digits=1))
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per cell")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {TARGET_CELL}, covertype serve and the floor")
    arguments = parser.parse_args()
    measured = run(arguments.repeats, arguments.seconds,
                   QUICK_CELLS if arguments.quick else CELLS,
                   QUICK_SERVERS if arguments.quick else SERVERS)
    for row in rows(measured):
        print(" | ".join(row.cells()))
    print(json.dumps(measured, indent=1))
