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
The two alternate within one invocation (ours, baseline, ours, baseline, ...), and each is
measured as a whole process tree (bench/proctree.py): wall time, CPU time of every process,
peak PSS. With `vertex`, a package compiled with PLATFORM=vertex runs in the same alternation
(ours caip, baseline, ours vertex, ...), when pipeline/settings.py accepts that platform.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType

from bench import REPO, Row, proctree, stats
from bench.profile import run_profile, summarise
from pipeline import schema
from pipeline.errors import one_line

TRAINER_DIR = REPO / "trainer_image"
SOURCE_TABLE = "covertype_dataset.covertype"
_SETTINGS_ENV = ("BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA", "PLATFORM",
                 "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION",
                 "AI_PLATFORM_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "COVERTYPE_HOME")
PSS_LIMIT_MB = 1536  # the process tree's peak PSS, < 1.5 GB
VERTEX_TOLERANCE = 1.10  # a local Vertex run within 10% of a local caip run


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without compile settings or emulator switches, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key not in _SETTINGS_ENV}
    return {**env, **extra}


def compile_package(folder: Path, platform: str = "") -> Path:
    """Compile the DSL once with local image names, as tests/conftest.py's compile_dsl does."""
    from pipeline.local.run_local import compile_package as compile_dsl

    name = f"covertype_training_pipeline{'-' + platform if platform else ''}.yaml"
    return compile_dsl(folder / name, clean_env(**({"PLATFORM": platform} if platform else {})))


def vertex_unavailable() -> str | None:
    """Why a PLATFORM=vertex package cannot be compiled yet, or None when it can."""
    from pipeline.settings import Settings, SettingsError

    try:
        Settings.from_env(clean_env(PLATFORM="vertex"))
    except SettingsError as error:
        return f"PLATFORM=vertex is refused: {error}"
    try:  # a setting that is read refuses a value it does not know
        Settings.from_env(clean_env(PLATFORM="no-such-platform"))
    except SettingsError:
        return None
    return "pipeline/settings.py does not read PLATFORM yet (issue 10)"


def prepare_warehouse(folder: Path, rows: int) -> tuple[Path, float]:
    """Load the first `rows` bundled rows into a new warehouse; returns it and the seconds."""
    from pipeline.local.data import ensure_source_table

    path = folder / f"warehouse-{rows}.duckdb"
    start = time.perf_counter()
    ensure_source_table(rows, warehouse=path)
    return path, time.perf_counter() - start


def timed_process(command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run a command from the repo with its output in `log`; its whole tree's cost."""
    return proctree.measure(command, log, env, REPO).as_dict()


def _csv_rows(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b"")) - 1


def run_pipeline(package: Path, warehouse: Path, rows: int | str, folder: Path) -> dict:
    """`covertype run --local` in a fresh home holding a copy of `warehouse`.

    The run must succeed with every step run (none reused) and deploy; for a caip package the
    tuning job's trials are read back for the baseline.
    """
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copyfile(warehouse, home / "warehouse.duckdb")
    command = [str(Path(sys.executable).with_name("covertype")), "run", "--local",
               "--package", str(package), "--rows", str(rows)]
    cost = timed_process(command, folder / "covertype-run.log",
                         clean_env(COVERTYPE_HOME=str(home)))
    (run_folder,) = (home / "runs").iterdir()
    record = json.loads((run_folder / "run.json").read_text())
    reused = [name for name, step in record["steps"].items() if step.get("reused")]
    if reused:
        raise AssertionError(f"steps {reused} were reused, not run, in a fresh home")
    deployed = [name for name, step in record["steps"].items()
                if name.startswith("deploy") and step["status"] == "Succeeded"]
    if record["status"] != "Succeeded" or not deployed:
        raise AssertionError(f"run {record['run_id']} is {record['status']} and deployed "
                             f"{'nothing' if not deployed else deployed}; see {run_folder}")
    outputs = {key: value for step in record["steps"].values()
               for key, value in step["outputs"].items()}
    datasets = home / "gcs" / "staging" / "datasets"
    result = {
        **cost, "record_duration_s": record["duration_s"], "status": record["status"],
        "steps": {name: step["duration_s"] for name, step in record["steps"].items()},
        "profile": run_profile(record, cost["start_unix"], cost["end_unix"]),
        "accuracy": float(outputs.get("evaluate-model-metric_value", "nan")),
        "threshold": float(record["parameters"]["evaluation_metric_threshold"]),
        "split_rows": {split: _csv_rows(datasets / split / "data.csv")
                       for split in schema.SPLIT_LOTS},
    }
    if "/" not in outputs.get("tune-hyperparameters-job_id", "/"):  # an ml v1 (caip) job id;
        # a Vertex AI one is a resource name (its trials are not what the baseline replays)
        from pipeline.local.tuning import format_value

        job = json.loads((home / "jobs" / outputs["tune-hyperparameters-job_id"] / "job.json")
                         .read_text())  # the training core's record (training_core.py)
        trials = sorted(job["trials"], key=lambda trial: int(trial["id"]))
        result["trials"] = [{name: format_value(value) for name, value in trial["values"].items()}
                            for trial in trials]  # as the trial's flags printed them
        result["max_parallel_trials"] = job["request"]["trainingInput"]["hyperparameters"][
            "maxParallelTrials"]
    return result


def run_baseline(warehouse: Path, trials: list[dict], parallel: int, folder: Path) -> dict:
    """The plain baseline as its own Python process, timed from start to exit."""
    out = folder / "baseline"
    out.mkdir(parents=True)
    work_copy = folder / "baseline.duckdb"
    shutil.copyfile(warehouse, work_copy)
    command = [sys.executable, "-m", "bench.bench_e2e", "baseline", "--warehouse",
               str(work_copy), "--out", str(out), "--parallel", str(parallel),
               "--trials", json.dumps(trials)]
    cost = timed_process(command, folder / "baseline.log", clean_env())
    result = {**cost, **json.loads((out / "baseline.json").read_text())}
    result["phases"]["start-up and exit (imports, pool)"] = max(
        0.0, cost["wall_s"] - sum(result["phases"].values()))
    return result


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
    train.train_evaluate(paths["training"], paths["validation"], hyperparameters["alpha"],
                         hyperparameters["max_iter"], hptune=True, job_dir=str(folder))
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
    train.train_evaluate(paths["training"], paths["validation"], best["alpha"],
                         best["max_iter"], hptune=False, job_dir=str(out / "model"))
    phases["final_fit"], start = time.perf_counter() - start, time.perf_counter()
    scores = evaluate(Path(paths["testing"]), out / "model" / train.MODEL_FILENAME)
    phases["evaluate"] = time.perf_counter() - start
    return {"phases": phases, "objectives": objectives, "best": best,
            "accuracy": scores["accuracy"], "scores": scores,
            "split_rows": {split: _csv_rows(Path(path)) for split, path in paths.items()}}


# Benchmarks --------------------------------------------------------------------------------

def run_lab(workdir: Path, repeats: int, packages: dict[str, Path],
            warehouse: tuple[Path, float] | None = None) -> dict:
    """e2e-lab: 100,000 rows, the lab's tuning; local runs and the baseline alternate.

    `packages` maps a platform ("caip", and "vertex" when measured) to its compiled package;
    `warehouse` is an already loaded one and its load seconds (else one is loaded).
    Keeps the last baseline's split CSVs in `workdir/lab-splits` for the quality benchmark.
    """
    from pipeline.local.data import LAB_ROWS

    return _compare(workdir, repeats, packages, LAB_ROWS, str(LAB_ROWS), workdir / "lab-splits",
                    warehouse)


def run_full(workdir: Path, repeats: int, package: Path) -> dict:
    """e2e-full: all bundled rows through `covertype run --local --rows all`, and the baseline."""
    from pipeline.local.data import BUNDLED_ROWS

    return _compare(workdir, repeats, {"caip": package}, BUNDLED_ROWS, "all")


def _compare(workdir: Path, repeats: int, packages: dict[str, Path], rows: int, rows_flag: str,
             keep_splits: Path | None = None,
             loaded: tuple[Path, float] | None = None) -> dict:
    warehouse, load_s = loaded or prepare_warehouse(workdir, rows)
    runs, baselines, vertex, vertex_error = [], [], [], ""
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(dir=workdir) as folder:
            scratch = Path(folder)
            runs.append(run_pipeline(packages["caip"], warehouse, rows_flag, scratch / "caip"))
            baselines.append(run_baseline(warehouse, runs[-1]["trials"],
                                          runs[-1]["max_parallel_trials"], scratch))
            if runs[-1]["split_rows"] != baselines[-1]["split_rows"]:
                raise AssertionError(f"baseline splits {baselines[-1]['split_rows']} differ from "
                                     f"the pipeline's {runs[-1]['split_rows']}")
            if "vertex" in packages and not vertex_error:
                try:  # a failing vertex run fails its own row, not e2e-lab's
                    vertex.append(run_pipeline(packages["vertex"], warehouse, rows_flag,
                                               scratch / "vertex"))
                    if vertex[-1]["split_rows"] != runs[-1]["split_rows"]:
                        raise AssertionError(f"the vertex run's splits "
                                             f"{vertex[-1]['split_rows']} differ from caip's "
                                             f"{runs[-1]['split_rows']}")
                except Exception as error:
                    vertex_error = f"{type(error).__name__}: {one_line(error)}"
            if keep_splits and repeat == repeats - 1:
                shutil.copytree(scratch / "baseline" / "datasets", keep_splits)
    steps = [step for step, seconds in runs[0]["steps"].items() if seconds is not None]
    result = {"rows": rows, "repeats": repeats, "warehouse_load_s": round(load_s, 3),
              "ours": _summary(runs), "baseline": _summary(baselines),
              "steps_s": {step: stats([run["steps"][step] for run in runs]) for step in steps},
              "profile_s": summarise([run["profile"] for run in runs]),
              "baseline_phases_s": summarise([b["phases"] for b in baselines]),
              "lingering": [name for r in [*runs, *baselines, *vertex] for name in r["lingering"]],
              "runs": runs, "baselines": baselines}
    if vertex_error:
        result["vertex_error"] = vertex_error[:300]
    elif vertex:
        result.update(vertex=_summary(vertex), vertex_runs=vertex,
                      vertex_profile_s=summarise([run["profile"] for run in vertex]))
    return result


def _summary(results: list[dict]) -> dict:
    return {"wall_s": stats([r["wall_s"] for r in results]),
            "cpu_s": stats([r["cpu_s"] for r in results]),
            "peak_pss_mb": stats([r["peak_pss_mb"] for r in results], 1),
            "peak_rss_mb": stats([r["peak_rss_mb"] for r in results], 1),
            "accuracy": stats([r["accuracy"] for r in results], 4)}  # nan when not reported


def _rows(name: str, label: str, result: dict, wall_s: float, wall_x: float,
          cpu_x: float | None) -> list[Row]:
    """Wall, CPU and PSS rows of one e2e benchmark, each with its target."""
    ours, base = result["ours"], result["baseline"]
    wall = Row(name, f"wall s, {label}", ours["wall_s"], base["wall_s"],
               f"<= {wall_s:.0f} s and <= {wall_x}x")
    wall.met = ours["wall_s"]["median"] <= wall_s and wall.ratio is not None and \
        wall.ratio <= wall_x
    cpu = Row(name, "CPU s (user+sys of the process tree)", ours["cpu_s"], base["cpu_s"],
              f"<= {cpu_x}x" if cpu_x else "—")
    if cpu_x:
        cpu.met = cpu.ratio is not None and cpu.ratio <= cpu_x
    pss = Row(name, "peak PSS MB of the process tree", ours["peak_pss_mb"], base["peak_pss_mb"],
              f"< {PSS_LIMIT_MB} MB", ours["peak_pss_mb"]["max"] < PSS_LIMIT_MB, digits=0)
    wall.notes.update(profile_s=result["profile_s"], baseline_phases_s=result["baseline_phases_s"])
    table = [wall, cpu, pss,
             Row(name, "warehouse load s (once, not in wall)", result["warehouse_load_s"])]
    if result["lingering"]:
        table.append(Row(name, "processes left running 10 s after exit (killed)",
                         "; ".join(result["lingering"])[:120], target="none", met=False))
    return table


def lab_rows(result: dict) -> list[Row]:
    """e2e-lab: wall <= 30 s and <= 1.5x, CPU <= 1.3x, peak PSS < 1.5 GB."""
    return _rows("e2e-lab", f"{result['rows']:,} rows, 6 trials / 3 parallel", result,
                 30, 1.5, 1.3)


def vertex_rows(result: dict | None, unavailable: str | None,
                failure: str | None = None) -> list[Row]:
    """e2e-vertex: the PLATFORM=vertex package's wall time within 10% of caip's."""
    if unavailable or not result:
        return [Row("e2e-vertex", f"not available: {unavailable or 'e2e-lab did not run'}")]
    if failure or "vertex" not in result:
        return [Row("e2e-vertex", f"FAILED: {failure or result.get('vertex_error')}")]
    row = Row("e2e-vertex", f"wall s, PLATFORM=vertex vs caip, {result['rows']:,} rows",
              result["vertex"]["wall_s"], result["ours"]["wall_s"],
              f"<= {VERTEX_TOLERANCE:.2f}x")
    row.met = row.ratio is not None and row.ratio <= VERTEX_TOLERANCE
    row.notes["profile_s"] = result["vertex_profile_s"]
    return [row, Row("e2e-vertex", "CPU s, PLATFORM=vertex vs caip", result["vertex"]["cpu_s"],
                     result["ours"]["cpu_s"])]


def full_rows(result: dict) -> list[Row]:
    """e2e-full: wall <= 90 s and <= 1.3x, peak PSS < 1.5 GB."""
    return _rows("e2e-full", f"{result['rows']:,} rows", result, 90, 1.3, None)


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
