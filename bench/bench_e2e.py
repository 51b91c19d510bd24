"""End-to-end benchmarks: `covertype run --local` vs one plain Python process doing the same work.

The local run goes through everything the product adds: the compiled Argo YAML, the runner,
one process per step, the ml v1 emulator, the registry. The baseline (`python -m
bench.bench_e2e baseline ...`, one process) does only the work: the three FARM_FINGERPRINT
splits with DuckDB + farmhash written as CSV, the same six trials (hyperparameters taken from
the local run's tuning job record) on a ProcessPoolExecutor of maxParallelTrials workers
calling trainer_image/train.py's functions, the final fit, the evaluation on the test split.

Each repetition gets a fresh COVERTYPE_HOME (so no step cache) holding a copy of a warehouse
loaded once before the timings with the product's own loader; the load is timed once and
reported apart, and both sides start from that same loaded table. Whatever the loader already
computes (the row fingerprint cache) is in the copy; the baseline fingerprints in its timing.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType

from bench import REPO, Row, stats
from pipeline import schema

TRAINER_DIR = REPO / "trainer_image"
SOURCE_TABLE = "covertype_dataset.covertype"
_SETTINGS_ENV = ("BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA",
                 "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION",
                 "AI_PLATFORM_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "COVERTYPE_HOME")
MB = 1024 * 1024


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without compile settings or emulator switches, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key not in _SETTINGS_ENV}
    return {**env, **extra}


def compile_package(folder: Path) -> Path:
    """Compile the DSL once with local image names, as tests/conftest.py's compile_dsl does."""
    from pipeline.local.run_local import compile_package as compile_dsl

    return compile_dsl(folder / "covertype_training_pipeline.yaml", clean_env())


def prepare_warehouse(folder: Path, rows: int) -> tuple[Path, float]:
    """Load the first `rows` bundled rows into a new warehouse; returns it and the seconds."""
    from pipeline.local.data import ensure_source_table

    path = folder / f"warehouse-{rows}.duckdb"
    start = time.perf_counter()
    ensure_source_table(rows, warehouse=path)
    return path, time.perf_counter() - start


class TreeMemory:
    """Samples the summed VmRSS of a process and all its descendants (from /proc); keeps the max.

    The sum counts shared pages (libraries, copy-on-write) once per process, so it overstates.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="tree-memory")

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss(self.pid))
            self._stop.wait(self.interval)


def tree_rss(root: int) -> int:
    """VmRSS bytes of `root` plus every descendant alive now."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
        stack.extend(children.get(pid, ()))
    return total


def timed_process(command: list[str], log: Path, env: dict[str, str]) -> tuple[float, int]:
    """Run a command with its output in `log`; returns (wall seconds, peak tree RSS bytes)."""
    start = time.perf_counter()
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
    seconds = time.perf_counter() - start
    if code:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"{command[0]} ... exited with {code}: {tail[-800:]}")
    return seconds, memory.peak_bytes


def _csv_rows(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b"")) - 1


def run_pipeline(package: Path, warehouse: Path, rows: int | str, folder: Path) -> dict:
    """`covertype run --local` in a fresh home holding a copy of `warehouse`."""
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copyfile(warehouse, home / "warehouse.duckdb")
    command = [str(Path(sys.executable).with_name("covertype")), "run", "--local",
               "--package", str(package), "--rows", str(rows)]
    wall, peak = timed_process(command, folder / "covertype-run.log",
                               clean_env(COVERTYPE_HOME=str(home)))
    (run_folder,) = (home / "runs").iterdir()
    record = json.loads((run_folder / "run.json").read_text())
    reused = [name for name, step in record["steps"].items() if step.get("reused")]
    if reused:
        raise AssertionError(f"steps {reused} were reused, not run, in a fresh home")
    outputs = {key: value for step in record["steps"].values()
               for key, value in step["outputs"].items()}
    job = json.loads((home / "jobs" / outputs["tune-hyperparameters-job_id"] / "job.json")
                     .read_text())["job"]
    trials = sorted(job["trainingOutput"]["trials"], key=lambda trial: int(trial["trialId"]))
    datasets = home / "gcs" / "staging" / "datasets"
    return {
        "wall_s": wall, "peak_rss_mb": peak / MB, "record_duration_s": record["duration_s"],
        "status": record["status"],
        "steps": {name: step["duration_s"] for name, step in record["steps"].items()},
        "accuracy": float(outputs["evaluate-model-metric_value"]),
        "threshold": float(record["parameters"]["evaluation_metric_threshold"]),
        "trials": [trial["hyperparameters"] for trial in trials],
        "max_parallel_trials": job["trainingInput"]["hyperparameters"]["maxParallelTrials"],
        "split_rows": {split: _csv_rows(datasets / split / "data.csv")
                       for split in schema.SPLIT_LOTS},
    }


def run_baseline(warehouse: Path, trials: list[dict], parallel: int, folder: Path) -> dict:
    """The plain baseline as its own Python process, timed from start to exit."""
    out = folder / "baseline"
    out.mkdir(parents=True)
    work_copy = folder / "baseline.duckdb"
    shutil.copyfile(warehouse, work_copy)
    command = [sys.executable, "-m", "bench.bench_e2e", "baseline", "--warehouse",
               str(work_copy), "--out", str(out), "--parallel", str(parallel),
               "--trials", json.dumps(trials)]
    wall, peak = timed_process(command, folder / "baseline.log", clean_env())
    return {"wall_s": wall, "peak_rss_mb": peak / MB,
            **json.loads((out / "baseline.json").read_text())}


# The baseline process ----------------------------------------------------------------------

def write_splits(warehouse: Path, folder: Path) -> dict[str, Path]:
    """The three splits as CSV: lot = MOD(ABS(FarmHash Fingerprint64 of the row's JSON)), 10)."""
    import duckdb
    import farmhash
    import numpy as np
    import pyarrow as pa

    def fingerprint(texts):  # no annotations: DuckDB evaluates them in this module's globals
        unsigned = np.fromiter(map(farmhash.fingerprint64, texts.to_pylist()), dtype=np.uint64)
        return pa.array(unsigned.view(np.int64))

    paths = {}
    with duckdb.connect(str(warehouse)) as con:
        con.create_function("fingerprint", fingerprint, ["VARCHAR"], "BIGINT", type="arrow")
        con.execute("CREATE TEMP TABLE lotted AS SELECT *, abs(fingerprint(to_json(cover)"
                    f"::VARCHAR)) % 10 AS lot FROM {SOURCE_TABLE} AS cover")
        for split, lots in schema.SPLIT_LOTS.items():
            paths[split] = folder / split / "data.csv"
            paths[split].parent.mkdir(parents=True)
            con.execute(f"COPY (SELECT * EXCLUDE (lot) FROM lotted WHERE lot IN "
                        f"({', '.join(map(str, lots))})) TO '{paths[split]}' (HEADER true)")
    return paths


def _train_module() -> ModuleType:
    """trainer_image/train.py (a script folder in the image, not a package)."""
    if str(TRAINER_DIR) not in sys.path:
        sys.path.insert(0, str(TRAINER_DIR))
    import train

    return train


def _trial(job: tuple[dict[str, str], Path, dict[str, str]]) -> float:
    """One tuning trial in a pool worker: train.train_evaluate(hptune=True) as a trial runs it."""
    paths, folder, hyperparameters = job
    train = _train_module()
    os.environ[train.METRIC_FILE_ENV] = str(folder / "trial.metrics")
    train.train_evaluate(str(folder), paths["training"], paths["validation"],
                         hyperparameters["alpha"], hyperparameters["max_iter"], hptune=True)
    last = (folder / "trial.metrics").read_text().strip().splitlines()[-1]
    return float(json.loads(last)[train.HPTUNE_METRIC_TAG])


def evaluate(test_csv: Path, model_file: Path) -> dict[str, float]:
    """The evaluation step's work: predict the test split, accuracy, macro p/r/f1, matrix."""
    from sklearn import metrics

    with open(model_file, "rb") as stream:
        model = pickle.load(stream)
    frame = schema.read_dataset(str(test_csv))
    labels = frame[schema.LABEL_COLUMN].to_numpy()
    predicted = model.predict(frame[list(schema.FEATURE_COLUMNS)])
    macro = {"average": "macro", "zero_division": 0}
    metrics.confusion_matrix(labels, predicted, labels=list(schema.CLASSES))  # as the step does
    return {"accuracy": float(metrics.accuracy_score(labels, predicted)),
            "precision": float(metrics.precision_score(labels, predicted, **macro)),
            "recall": float(metrics.recall_score(labels, predicted, **macro)),
            "f1": float(metrics.f1_score(labels, predicted, **macro))}


def baseline(warehouse: Path, out: Path, trials: list[dict[str, str]], parallel: int) -> dict:
    """Splits, trials `parallel` at a time, final fit, evaluation; returns phase seconds."""
    import pandas  # noqa: F401 - imported once, before the pool forks, as a plain script would

    train = _train_module()
    train.build_model()  # imports scikit-learn once, before the pool forks
    phases, start = {}, time.perf_counter()
    paths = {split: str(path) for split, path in write_splits(warehouse, out / "datasets").items()}
    phases["splits"], start = time.perf_counter() - start, time.perf_counter()
    jobs = [(paths, out / f"trial-{number}", hp) for number, hp in enumerate(trials, 1)]
    with ProcessPoolExecutor(parallel, mp_context=get_context("fork")) as pool:
        objectives = list(pool.map(_trial, jobs))
    phases["trials"], start = time.perf_counter() - start, time.perf_counter()
    best = trials[objectives.index(max(objectives))]
    train.train_evaluate(str(out / "model"), paths["training"], paths["validation"],
                         best["alpha"], best["max_iter"], hptune=False)
    phases["final_fit"], start = time.perf_counter() - start, time.perf_counter()
    scores = evaluate(Path(paths["testing"]), out / "model" / train.MODEL_FILENAME)
    phases["evaluate"] = time.perf_counter() - start
    return {"phases": phases, "objectives": objectives, "best": best,
            "accuracy": scores["accuracy"], "scores": scores,
            "split_rows": {split: _csv_rows(Path(path)) for split, path in paths.items()}}


# Benchmarks --------------------------------------------------------------------------------

def run_lab(workdir: Path, repeats: int, package: Path) -> dict:
    """e2e-lab: 100,000 rows, the lab's tuning; local run and baseline alternate per repeat.

    Keeps the last baseline's split CSVs in `workdir/lab-splits` for the quality benchmark.
    """
    from pipeline.local.data import LAB_ROWS

    return _compare(workdir, repeats, package, LAB_ROWS, str(LAB_ROWS), workdir / "lab-splits")


def run_full(workdir: Path, repeats: int, package: Path) -> dict:
    """e2e-full: all bundled rows through `covertype run --local --rows all`, and the baseline."""
    from pipeline.local.data import BUNDLED_ROWS

    return _compare(workdir, repeats, package, BUNDLED_ROWS, "all")


def _compare(workdir: Path, repeats: int, package: Path, rows: int, rows_flag: str,
             keep_splits: Path | None = None) -> dict:
    warehouse, load_s = prepare_warehouse(workdir, rows)
    runs, baselines = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(dir=workdir) as folder:
            runs.append(run_pipeline(package, warehouse, rows_flag, Path(folder)))
            baselines.append(run_baseline(warehouse, runs[-1]["trials"],
                                          runs[-1]["max_parallel_trials"], Path(folder)))
            if runs[-1]["split_rows"] != baselines[-1]["split_rows"]:
                raise AssertionError(f"baseline splits {baselines[-1]['split_rows']} differ from "
                                     f"the pipeline's {runs[-1]['split_rows']}")
            if keep_splits and repeat == repeats - 1:
                shutil.copytree(Path(folder) / "baseline" / "datasets", keep_splits)
    steps = [step for step, seconds in runs[0]["steps"].items() if seconds is not None]
    return {"rows": rows, "repeats": repeats, "warehouse_load_s": round(load_s, 3),
            "ours": _summary(runs), "baseline": _summary(baselines),
            "steps_s": {step: stats([run["steps"][step] for run in runs]) for step in steps},
            "baseline_phases_s": {phase: stats([b["phases"][phase] for b in baselines])
                                  for phase in baselines[0]["phases"]},
            "runs": runs, "baselines": baselines}


def _summary(results: list[dict]) -> dict:
    return {"wall_s": stats([r["wall_s"] for r in results]),
            "peak_rss_mb": stats([r["peak_rss_mb"] for r in results], 1),
            "accuracy": stats([r["accuracy"] for r in results], 4)}


def lab_rows(result: dict) -> list[Row]:
    """e2e-lab rows: wall time against the baseline (targets <= 30 s, <= 1.5x), memory, load."""
    ours, base = result["ours"], result["baseline"]
    wall = Row("e2e-lab", f"wall s, {result['rows']:,} rows, 6 trials / 3 parallel",
               ours["wall_s"], base["wall_s"], "<= 30 s and <= 1.5x")
    wall.met = ours["wall_s"]["median"] <= 30 and wall.ratio is not None and wall.ratio <= 1.5
    return [wall,
            Row("e2e-lab", "peak RSS MB, process tree", ours["peak_rss_mb"], base["peak_rss_mb"],
                digits=0),
            Row("e2e-lab", "warehouse load s (once, not in wall)", result["warehouse_load_s"])]


def full_rows(result: dict) -> list[Row]:
    """e2e-full rows: wall time (<= 90 s), peak memory of the process tree (< 2 GB), load."""
    ours, base = result["ours"], result["baseline"]
    return [Row("e2e-full", f"wall s, {result['rows']:,} rows", ours["wall_s"], base["wall_s"],
                "<= 90 s", ours["wall_s"]["median"] <= 90),
            Row("e2e-full", "peak RSS MB, process tree", ours["peak_rss_mb"],
                base["peak_rss_mb"], "< 2048 MB", ours["peak_rss_mb"]["max"] < 2048, digits=0),
            Row("e2e-full", "warehouse load s (once, not in wall)", result["warehouse_load_s"])]


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.bench_e2e baseline ...`: the baseline process; writes baseline.json."""
    parser = argparse.ArgumentParser(description="plain-Python baseline of the local run")
    parser.add_argument("command", choices=["baseline"])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=json.loads, required=True,
                        help='JSON list of {"alpha": "...", "max_iter": "..."}')
    parser.add_argument("--parallel", type=int, required=True)
    args = parser.parse_args(argv)
    result = baseline(args.warehouse, args.out, args.trials, args.parallel)
    (args.out / "baseline.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
