"""`python -m bench [--quick] [--only e2e-lab,chain] [--repeats N]`: run, one table, JSON.

Results go to bench/results/<timestamp>.json and bench/results/latest.json with the machine's
description. Progress goes to stderr; the table and, under it, where the time goes in each row
that missed its target, to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
from bench.profile import top_items
from pipeline.atomic import write_atomic
from pipeline.errors import one_line

BENCHMARKS = ("e2e-lab", "e2e-vertex", "e2e-full", "chain", "splits", "serve", "quality",
              "first-run")
# `--quick` (`make bench QUICK=1`): the day-to-day subset, under 3 minutes on 2 cores.
QUICK = {"only": ("e2e-lab", "chain", "serve"), "repeats": 2, "serve_seconds": 3}
PACKAGES = ("kfp", "scikit-learn", "duckdb", "onnxruntime", "fastapi", "uvicorn", "uv")
RESULTS = REPO / "bench" / "results"
COLUMNS = ("benchmark", "metric", "ours (median [min-max])", "baseline (median [min-max])",
           "ratio", "target", "met?")
BUDGET_S = {"full": 20 * 60, "quick": 3 * 60}
PROFILE_ITEMS = 6
SPLIT_VARIANTS = {
    "ours": "ours, as after a load (cache filled by load_csv)",
    "ours_cache_rebuild": "ours, table changed since load (cache rebuilt)",
    "vectorised_udf": "vectorised UDF, no cache",
}


def machine() -> dict:
    """What the numbers were measured on (load average: the machine may be shared)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = next((int(line.split()[1]) // 1024 for line in meminfo.splitlines()
                   if line.startswith("MemTotal:")), None)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_mb": memory,
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_start": [round(value, 2) for value in os.getloadavg()]}


def describe(description: dict) -> str:
    """One line: CPUs, memory, Python, OS, load average at the start."""
    memory = f", {description['memory_mb'] / 1024:.1f} GB RAM" if description["memory_mb"] else ""
    load = " ".join(f"{value:.2f}" for value in description["load_average_start"])
    return (f"{description['cpu_count']} CPUs {description['cpu_model']}{memory}, "
            f"Python {description['python']}, {description['platform']}; "
            f"load average at start {load} (1, 5, 15 min)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all; "
                             f"with --quick: {','.join(QUICK['only'])})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"repetitions per benchmark (default 3; with --quick "
                             f"{QUICK['repeats']})")
    parser.add_argument("--quick", action="store_true",
                        help="the day-to-day subset: fewer benchmarks, repeats and serve cells")
    args = parser.parse_args(argv)
    default_only = QUICK["only"] if args.quick else BENCHMARKS
    args.only = [name.strip() for name in (args.only or ",".join(default_only)).split(",")
                 if name.strip()]
    args.repeats = QUICK["repeats"] if args.quick and args.repeats is None else \
        (3 if args.repeats is None else args.repeats)
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown or not args.only:
        parser.error(f"--only {','.join(unknown) or '(empty)'}: not a benchmark; "
                     f"use names from {','.join(BENCHMARKS)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    if "quality" in args.only and "e2e-lab" not in args.only:
        args.only.insert(0, "e2e-lab")  # the default model's accuracy comes from those runs
    args.vertex = "e2e-vertex" in args.only  # measured inside e2e-lab's alternation
    if args.vertex:
        args.only.remove("e2e-vertex")
        if "e2e-lab" not in args.only:
            args.only.insert(0, "e2e-lab")
    return args


def splits_rows(result: dict) -> list[Row]:
    """bench_splits.run: each variant of the three split queries vs a per-row Python UDF."""
    baseline = result["per_row_udf"]
    return [Row("splits", f"3 splits s, {result['rows']:,} rows, {SPLIT_VARIANTS.get(name, name)}",
                value, baseline, digits=3)
            for name, value in result.items()
            if isinstance(value, dict) and "median" in value and name != "per_row_udf"]


class Session:
    """One `make bench`: the selected benchmarks, sharing the compiled packages and warehouse."""

    def __init__(self, args: argparse.Namespace, workdir: Path,
                 progress: Callable[[str], None]) -> None:
        self.args, self.workdir, self.progress = args, workdir, progress
        self.results: dict = {}
        self.packages: dict[str, Path] = {}
        self._lab_warehouse: tuple[Path, float] | None = None

    def run(self) -> tuple[list[Row], bool]:
        """Each benchmark in turn; a failing one becomes a row, the others still run."""
        rows: list[Row] = []
        failed = False
        for name in self.args.only:
            self.progress(f"{name}: running ({self.args.repeats} repeats)")
            start = time.perf_counter()
            try:
                rows += getattr(self, "_" + name.replace("-", "_"))()
            except Exception as error:  # one broken benchmark must not lose the others' numbers
                failed = True
                message = one_line(error)[:300]
                self.results[name] = {"error": message, "traceback": traceback.format_exc()}
                rows.append(Row(name, f"FAILED: {type(error).__name__}: {message}"))
            self.progress(f"{name}: done in {time.perf_counter() - start:.0f} s")
        return rows, failed or any(row.metric.startswith("FAILED") for row in rows)

    def _package(self, platform_name: str = "caip") -> Path:
        from bench import bench_e2e

        if platform_name not in self.packages:
            self.packages[platform_name] = bench_e2e.compile_package(
                self.workdir, "" if platform_name == "caip" else platform_name)
        return self.packages[platform_name]

    def lab_warehouse(self) -> tuple[Path, float]:
        """The 100,000-row warehouse, loaded once for e2e-lab and the chain; load seconds."""
        from bench import bench_e2e
        from pipeline.local.data import LAB_ROWS

        if self._lab_warehouse is None:
            self._lab_warehouse = bench_e2e.prepare_warehouse(self.workdir, LAB_ROWS)
        return self._lab_warehouse

    def _e2e_lab(self) -> list[Row]:
        from bench import bench_e2e

        packages = {"caip": self._package()}
        unavailable = bench_e2e.vertex_unavailable() if self.args.vertex else None
        compile_error = None
        if self.args.vertex and not unavailable:
            try:  # a broken vertex package fails the e2e-vertex row, not e2e-lab
                packages["vertex"] = self._package("vertex")
            except Exception as error:
                compile_error = f"compiling with PLATFORM=vertex: {one_line(error)}"[:300]
        self.results["e2e-lab"] = bench_e2e.run_lab(self.workdir, self.args.repeats, packages,
                                                     self.lab_warehouse())
        rows = bench_e2e.lab_rows(self.results["e2e-lab"])
        if self.args.vertex:
            rows += bench_e2e.vertex_rows(self.results["e2e-lab"], unavailable, compile_error)
        return rows

    def _e2e_full(self) -> list[Row]:
        from bench import bench_e2e

        self.results["e2e-full"] = bench_e2e.run_full(self.workdir, self.args.repeats,
                                                      self._package())
        return bench_e2e.full_rows(self.results["e2e-full"])

    def _chain(self) -> list[Row]:
        from bench import bench_chain

        self.results["chain"] = bench_chain.run(self.workdir, self.args.repeats,
                                                self.lab_warehouse()[0], self.progress)
        return bench_chain.rows(self.results["chain"])

    def _splits(self) -> list[Row]:
        from bench import bench_splits
        from pipeline.local.data import BUNDLED_CSV

        self.results["splits"] = bench_splits.run(str(BUNDLED_CSV), repeats=self.args.repeats)
        return splits_rows(self.results["splits"])

    def _serve(self) -> list[Row]:
        from bench import bench_serve

        quick = self.args.quick
        self.results["serve"] = bench_serve.run(
            self.args.repeats, QUICK["serve_seconds"] if quick else 5,
            bench_serve.QUICK_CELLS if quick else bench_serve.CELLS,
            bench_serve.QUICK_SERVERS if quick else bench_serve.SERVERS, self.progress)
        return bench_serve.rows(self.results["serve"])

    def _quality(self) -> list[Row]:
        from bench import bench_quality

        if "error" in self.results.get("e2e-lab", {"error": "missing"}):
            raise RuntimeError("needs the e2e-lab results, which failed")
        self.results["quality"] = bench_quality.run(self.workdir / "lab-splits",
                                                    self.results["e2e-lab"],
                                                    self.results.get("e2e-full"))
        return bench_quality.rows(self.results["quality"])

    def _first_run(self) -> list[Row]:
        from bench import bench_firstrun

        self.results["first-run"] = bench_firstrun.run(self.workdir, self.args.repeats)
        return bench_firstrun.rows(self.results["first-run"])


def print_table(rows: list[Row], title: str, caption: str) -> None:
    """The one results table, wide enough not to wrap in a pipe or a CI log; then the misses."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=220)
    console.print(escape(caption))
    table = Table(*map(escape, COLUMNS), title=escape(title))
    for row in rows:
        cells = row.cells()
        style = "red" if cells[-1] == "NO" or row.metric.startswith("FAILED") else None
        table.add_row(*map(escape, cells), style=style)
    console.print(table)
    for line in missed_targets(rows):
        console.print(escape(line))


def missed_targets(rows: list[Row]) -> list[str]:
    """For each row that missed its target and carries a profile: its largest items."""
    lines, shown = [], []
    for row in rows:
        if row.met is not False or "profile_s" not in row.notes or \
                any(row.notes["profile_s"] is profile for profile in shown):
            continue  # a profile shared by two rows (chain) is printed once
        shown.append(row.notes["profile_s"])
        lines.append(f"{row.benchmark} {row.metric.strip()}: target {row.target} not met; where "
                     "the time goes (median s over the repeats, largest first):")
        lines += [f"    {item}" for item in top_items(row.notes["profile_s"], PROFILE_ITEMS)]
        if "baseline_phases_s" in row.notes:
            lines.append("  the baseline's phases, for comparison:")
            lines += [f"    {item}" for item in top_items(row.notes["baseline_phases_s"],
                                                          PROFILE_ITEMS)]
    return lines


def save(report: dict) -> Path:
    """Write <timestamp>.json and latest.json, each atomically."""
    text = json.dumps(report, indent=1, default=str)
    target = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    for path in (target, RESULTS / "latest.json"):
        write_atomic(path, text)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    description = machine()
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[bench {time.perf_counter() - began:6.0f} s] {message}", file=sys.stderr,
              flush=True)

    progress(f"on {describe(description)}")
    with tempfile.TemporaryDirectory(prefix="covertype-bench-") as folder:
        session = Session(args, Path(folder), progress)
        rows, failed = session.run()
    elapsed = time.perf_counter() - began
    description["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    mode = "quick" if args.quick else "full"
    title = (f"covertype bench, {mode}: {', '.join(args.only)}"
             f"{' (+ e2e-vertex)' if args.vertex else ''}; {args.repeats} repeats; "
             f"{elapsed:.0f} s")
    print_table(rows, title, f"Machine: {describe(description)}")
    path = save({"machine": description,
                 "options": {"only": args.only, "repeats": args.repeats, "quick": args.quick,
                             "vertex": args.vertex},
                 "elapsed_s": round(elapsed, 1),
                 "table": [dict(zip(COLUMNS, row.cells(), strict=True)) | row.as_dict()
                           for row in rows],
                 "missed_targets": missed_targets(rows),
                 "results": session.results})
    budget = BUDGET_S[mode]
    note = f" (over the {budget // 60}-minute budget of a {mode} run)" if elapsed > budget else ""
    print(f"saved {path.relative_to(REPO)} and latest.json; {elapsed:.0f} s{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
