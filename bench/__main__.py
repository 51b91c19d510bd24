"""`python -m bench [--only e2e-lab,splits] [--repeats N]`: run, print one table, save JSON.

Results go to bench/results/<timestamp>.json and bench/results/latest.json with the machine's
description. Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import REPO, Row

BENCHMARKS = ("e2e-lab", "e2e-full", "splits", "serve", "quality")
PACKAGES = ("kfp", "scikit-learn", "duckdb", "onnxruntime", "fastapi", "uvicorn")
RESULTS = REPO / "bench" / "results"
COLUMNS = ("benchmark", "metric", "ours (median [min-max])", "baseline (median [min-max])",
           "ratio", "target", "met?")
BUDGET_S = 15 * 60


def machine() -> dict:
    """What the numbers were measured on (load average: the machine may be shared)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_start": [round(value, 2) for value in os.getloadavg()]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per benchmark")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown or not args.only:
        parser.error(f"--only {','.join(unknown) or '(empty)'}: not a benchmark; "
                     f"use names from {','.join(BENCHMARKS)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    if "quality" in args.only and "e2e-lab" not in args.only:
        args.only.insert(0, "e2e-lab")  # the default model's accuracy comes from those runs
    return args


SPLIT_VARIANTS = {
    "ours": "ours, as after a load (cache filled by load_csv)",
    "ours_cache_rebuild": "ours, table changed since load (cache rebuilt)",
    "vectorised_udf": "vectorised UDF, no cache",
}


def splits_rows(result: dict) -> list[Row]:
    """bench_splits.run: each variant of the three split queries vs a per-row Python UDF."""
    baseline = result["per_row_udf"]
    return [Row("splits", f"3 splits s, {result['rows']:,} rows, {SPLIT_VARIANTS.get(name, name)}",
                value, baseline, digits=3)
            for name, value in result.items()
            if isinstance(value, dict) and "median" in value and name != "per_row_udf"]


SERVE_METRICS = {"requests_per_s": "requests/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms"}
_TARGET = re.compile(r"^(?P<name>.*?)\s*\((?P<op>>=|<=|>|<)\s*(?P<bound>[\d.]+)\)$")
_COMPARE = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}


def serve_rows(result: dict) -> list[Row]:
    """bench_serve.run: each cell's covertype vs MLflow numbers, then that module's targets."""
    rows = [Row("serve", f"{cell}, {label}", servers["covertype"][metric],
                servers["mlflow"][metric], digits=2)
            for cell, servers in result.items()
            if isinstance(servers, dict) and {"covertype", "mlflow"} <= servers.keys()
            for metric, label in SERVE_METRICS.items()]
    for name, value in result.get("targets", {}).items():
        match = _TARGET.match(name)
        if match and isinstance(value, int | float):
            met = _COMPARE[match["op"]](float(value), float(match["bound"]))
            rows.append(Row("serve", f"target: {match['name']}", float(value),
                            target=f"{match['op']} {match['bound']}", met=met))
    failed = result.get("setup", {}).get("failed requests", "none")
    if failed != "none":
        rows.append(Row("serve", f"FAILED requests: {failed}"))
    return rows


def run_benchmarks(args: argparse.Namespace, workdir: Path,
                   progress: Callable[[str], None]) -> tuple[dict, list[Row], bool]:
    """Run the selected benchmarks; a failing one becomes a row, the others still run."""
    from bench import bench_e2e, bench_quality

    results: dict = {}
    rows: list[Row] = []
    failed = False
    package = None
    for name in args.only:
        progress(f"{name}: running ({args.repeats} repeats)")
        start = time.perf_counter()
        try:
            if name in ("e2e-lab", "e2e-full") and package is None:
                package = bench_e2e.compile_package(workdir)
            if name == "e2e-lab":
                results[name] = bench_e2e.run_lab(workdir, args.repeats, package)
                rows += bench_e2e.lab_rows(results[name])
            elif name == "e2e-full":
                results[name] = bench_e2e.run_full(workdir, args.repeats, package)
                rows += bench_e2e.full_rows(results[name])
            elif name == "splits":
                from bench import bench_splits
                from pipeline.local.data import BUNDLED_CSV

                results[name] = bench_splits.run(str(BUNDLED_CSV), repeats=args.repeats)
                rows += splits_rows(results[name])
            elif name == "serve":
                rows += _serve(args.repeats, results)
            elif name == "quality":
                if "e2e-lab" not in results:
                    raise RuntimeError("needs the e2e-lab results, which failed")
                results[name] = bench_quality.run(workdir / "lab-splits", results["e2e-lab"],
                                                  results.get("e2e-full"))
                rows += bench_quality.rows(results[name])
        except Exception as error:  # one broken benchmark must not lose the others' numbers
            failed = True
            message = " ".join(str(error).split())[:300]
            results[name] = {"error": message, "traceback": traceback.format_exc()}
            rows.append(Row(name, f"FAILED: {type(error).__name__}: {message}"))
        progress(f"{name}: done in {time.perf_counter() - start:.0f} s")
    return results, rows, failed


def _serve(repeats: int, results: dict) -> list[Row]:
    try:
        from bench import bench_serve
    except ImportError as error:
        results["serve"] = {"error": f"not available yet: {error}"}
        return [Row("serve", "not available yet (bench/bench_serve.py missing)")]
    results["serve"] = bench_serve.run(repeats=repeats)
    return serve_rows(results["serve"])


def print_table(rows: list[Row], title: str) -> None:
    """The one results table, wide enough not to wrap in a pipe or a CI log."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=220)
    table = Table(*map(escape, COLUMNS), title=escape(title))
    for row in rows:
        cells = row.cells()
        style = "red" if cells[-1] == "NO" or row.metric.startswith("FAILED") else None
        table.add_row(*map(escape, cells), style=style)
    console.print(table)


def save(report: dict) -> Path:
    """Write <timestamp>.json and latest.json atomically (temp file, then os.replace)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=1, default=str)
    target = RESULTS / f"{stamp}.json"
    for path in (target, RESULTS / "latest.json"):
        handle, temp = tempfile.mkstemp(dir=RESULTS, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    description = machine()
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[bench {time.perf_counter() - began:6.0f} s] {message}", file=sys.stderr,
              flush=True)

    with tempfile.TemporaryDirectory(prefix="covertype-bench-") as folder:
        results, rows, failed = run_benchmarks(args, Path(folder), progress)
    elapsed = time.perf_counter() - began
    description["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    title = (f"covertype bench — {description['cpu_count']} CPUs {description['cpu_model']}, "
             f"Python {description['python']}, {args.repeats} repeats, {elapsed:.0f} s")
    print_table(rows, title)
    path = save({"machine": description, "options": {"only": args.only, "repeats": args.repeats},
                 "elapsed_s": round(elapsed, 1),
                 "table": [dict(zip(COLUMNS, row.cells(), strict=True)) | row.as_dict()
                           for row in rows],
                 "results": results})
    note = f" (over the {BUDGET_S // 60}-minute budget)" if elapsed > BUDGET_S else ""
    print(f"saved {path.relative_to(REPO)} and latest.json; {elapsed:.0f} s{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
