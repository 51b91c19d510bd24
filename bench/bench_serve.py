"""Benchmark: `covertype serve` (ONNX fast path) against MLflow's scoring server, same model.

Both servers run one worker on 127.0.0.1 and serve the trainer's Pipeline fitted on 10,000
bundled rows; Debian's `wrk` drives both with the same bodies (AI Platform `instances` for
ours, MLflow's `dataframe_split`), one- and 100-instance requests at concurrency 1 and 8.
MLflow lives in its own virtualenv (bench/.venv-mlflow, made on first use), so its pins never
touch the project's. Run `python bench/bench_serve.py [--repeats N] [--seconds S]`.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import socket
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

from bench import stats  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.trainer import load_trainer  # noqa: E402

MLFLOW_VENV = REPO / "bench" / ".venv-mlflow"
MLFLOW_PIN = "mlflow==3.17.2"
SHARED_PINS = ("scikit-learn", "pandas", "numpy")  # same versions as the project's
TRAIN_ROWS = 10_000
CELLS = ((1, 1), (1, 8), (100, 1), (100, 8))  # (instances per request, concurrency)
SERVERS = ("covertype", "mlflow")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
_SAVE_MODEL = ("import pickle, sys, mlflow.sklearn\n"
               "with open(sys.argv[1], 'rb') as f: model = pickle.load(f)\n"
               "mlflow.sklearn.save_model(model, sys.argv[2])\n")


def run(repeats: int = 3, seconds: int = 5) -> dict:
    """Measure every cell `repeats` times (`seconds` each); medians with min/max.

    Returns:
        {"<n> instance(s), c=<c>": {"covertype"|"mlflow": {"requests_per_s", "p50_ms",
        "p99_ms"}}, "setup": {...}, "targets": {...}}; each number a stats dict.
    """
    wrk = _ensure_wrk()
    mlflow = _ensure_mlflow_venv()
    load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder, ExitStack() as stack:
        work = Path(folder)
        setup, bodies, urls = _prepare(work, mlflow, stack)
        samples: dict = {cell: {server: [] for server in SERVERS} for cell in CELLS}
        for server in SERVERS:  # warm-up: first requests load models and fill caches
            _wrk(wrk, urls[server], bodies[server][1], work, 8, 2)
        for _ in range(repeats):
            for cell in CELLS:
                for server in SERVERS:
                    samples[cell][server].append(
                        _wrk(wrk, urls[server], bodies[server][cell[0]], work, cell[1], seconds))
    result: dict = {}
    failures = []
    for (instances, concurrency), by_server in samples.items():
        name = f"{instances} instance{'s' if instances > 1 else ''}, c={concurrency}"
        result[name] = {server: {metric: stats([s[metric] for s in runs], 2)
                                 for metric in ("requests_per_s", "p50_ms", "p99_ms")}
                        for server, runs in by_server.items()}
        failures += [f"{server} {name}: {s['failed']}" for server, runs in by_server.items()
                     for s in runs if s["failed"]]
    single = result["1 instance, c=8"]
    ratio = single["covertype"]["requests_per_s"]["median"] / max(
        single["mlflow"]["requests_per_s"]["median"], 1e-9)
    result["setup"] = {**setup, "seconds per cell": seconds, "repeats": repeats,
                       "failed requests": "; ".join(failures) or "none",
                       "load average before / after (shared machine)":
                           f"{load_before} / {' '.join(f'{v:.2f}' for v in os.getloadavg())}"}
    result["targets"] = {"throughput ratio, 1 instance c=8 (>= 20)": round(ratio, 1),
                         "p99 ms, 1 instance c=8 (<= 10)": single["covertype"]["p99_ms"]["median"],
                         "met": ratio >= 20 and single["covertype"]["p99_ms"]["median"] <= 10}
    return result


def _prepare(work: Path, mlflow: Path, stack: ExitStack) -> tuple[dict, dict, dict]:
    """Fit and deploy the model to both servers, start them, check they agree."""
    import pandas as pd

    from pipeline.local.data import BUNDLED_CSV
    from pipeline.local.home import registry_dir, storage_root
    from pipeline.local.registry import Registry

    trainer = _trainer()
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
    subprocess.run([str(mlflow / "bin" / "python"), "-c", _SAVE_MODEL,
                    str(artifact / "model.pkl"), str(work / "mlflow-model")],
                   check=True, capture_output=True)

    values = [[*map(int, row[:10]), *row[10:]] for row in
              request_rows[list(schema.FEATURE_COLUMNS)].itertuples(index=False)]
    bodies = {"covertype": {n: {"instances": values[:n]} for n in (1, 100)},
              "mlflow": {n: {"dataframe_split": {"columns": list(schema.FEATURE_COLUMNS),
                                                 "data": values[:n]}} for n in (1, 100)}}
    ports = {server: _free_port() for server in SERVERS}
    covertype = Path(sys.executable).with_name("covertype")
    stack.enter_context(_process(
        [str(covertype), "serve", "--port", str(ports["covertype"])], work / "covertype.log",
        {**os.environ, "COVERTYPE_HOME": str(home)}, f"http://127.0.0.1:{ports['covertype']}"
        "/healthz"))
    stack.enter_context(_process(
        [str(mlflow / "bin" / "mlflow"), "models", "serve", "-m", str(work / "mlflow-model"),
         "--env-manager", "local", "-p", str(ports["mlflow"]), "-h", "127.0.0.1", "-w", "1"],
        work / "mlflow.log", {**os.environ, "MLFLOW_TRACKING_URI": str(work / "mlruns"),
                              "PATH": f"{mlflow / 'bin'}{os.pathsep}{os.environ['PATH']}"},
        f"http://127.0.0.1:{ports['mlflow']}/ping"))
    urls = {"covertype": f"http://127.0.0.1:{ports['covertype']}/v1/projects/local/models/"
                         "covertype:predict",
            "mlflow": f"http://127.0.0.1:{ports['mlflow']}/invocations"}
    answers, headers = {}, {}
    for server in SERVERS:
        answers[server], headers[server] = _post(urls[server], bodies[server][100])
    expected = model.predict(trainer.model_input(request_rows)).tolist()
    if not answers["covertype"]["predictions"] == answers["mlflow"]["predictions"] == expected:
        raise RuntimeError("the two servers disagree with the model; not benchmarking")
    if headers["covertype"].get("x-prediction-path") != "onnx":
        raise RuntimeError("covertype serve did not take the ONNX fast path; see its verdict")
    verdict = json.loads((registry.root / "covertype" / "versions" / "v1" /
                          "fastpath.json").read_text())
    body_files = {server: {n: work / f"{server}-{n}.json" for n in (1, 100)} for server in SERVERS}
    for server, files in body_files.items():
        for n, path in files.items():
            path.write_text(json.dumps(bodies[server][n]))
    setup = {"model": f"trainer Pipeline (StandardScaler + OneHotEncoder -> SGD) fitted on "
                      f"{TRAIN_ROWS:,} bundled rows",
             "fast path": verdict["reason"], "workers": "1 each, 127.0.0.1, wrk -t1",
             "MLflow": MLFLOW_PIN}
    return setup, body_files, urls


def _wrk(wrk: str, url: str, body: Path, work: Path, connections: int, seconds: int) -> dict:
    """One wrk run: requests/s, p50 and p99 in ms, and failed requests (non-2xx, errors)."""
    script = work / f"{body.stem}.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    output = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                             "--latency", "-s", str(script), url],
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
def _process(command: list[str], log: Path, env: dict, ready_url: str):
    """Start a server, wait until `ready_url` answers, stop it at the end."""
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start: "
                                       f"{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post(url: str, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
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


def _ensure_mlflow_venv() -> Path:
    """bench/.venv-mlflow with MLflow and the project's scikit-learn/pandas/numpy pins."""
    marker = MLFLOW_VENV / ".installed"
    if not marker.exists() and (MLFLOW_VENV / "bin" / "mlflow").exists():
        probe = subprocess.run([str(MLFLOW_VENV / "bin" / "python"), "-c", "import importlib."
                                "metadata as m; print(m.version('mlflow'))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == MLFLOW_PIN.split("==")[1]:
            marker.touch()
    if marker.exists():
        return MLFLOW_VENV
    shutil.rmtree(MLFLOW_VENV, ignore_errors=True)  # an interrupted earlier attempt
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.split("==")[0].strip() in SHARED_PINS]
    print(f"creating {MLFLOW_VENV.relative_to(REPO)} ({MLFLOW_PIN}, {', '.join(pins)})",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
    install = subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q",
                              "--disable-pip-version-check", MLFLOW_PIN, *pins],
                             capture_output=True, text=True)
    if install.returncode:
        raise RuntimeError(f"pip install {MLFLOW_PIN} failed: {install.stderr[-1500:]}")
    marker.touch()
    return MLFLOW_VENV


def _trainer():
    return load_trainer()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def format_table(result: dict) -> str:
    """The cells as a plain text table: median [min-max] per server and the ratio."""
    lines = [f"{'cell':<22}{'metric':<16}{'covertype serve':>28}{'MLflow serve':>28}{'ratio':>9}"]
    for cell, by_server in result.items():
        if "covertype" not in by_server:
            continue
        for metric in ("requests_per_s", "p50_ms", "p99_ms"):
            ours, theirs = by_server["covertype"][metric], by_server["mlflow"][metric]
            lines.append(f"{cell:<22}{metric:<16}{_stat(ours):>28}{_stat(theirs):>28}"
                         f"{ours['median'] / max(theirs['median'], 1e-9):>8.1f}x")
    lines += [f"{key}: {value}" for key, value in {**result["setup"],
                                                   **result["targets"]}.items()]
    return "\n".join(lines)


def _stat(value: dict) -> str:
    return f"{value['median']:.1f} [{value['min']:.1f}-{value['max']:.1f}]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per cell")
    arguments = parser.parse_args()
    measured = run(arguments.repeats, arguments.seconds)
    print(format_table(measured))
    print(json.dumps(measured, indent=1))
