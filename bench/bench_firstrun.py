"""first-run: from `git clone` to a deployed model, as a new user does it, with empty caches.

Each repetition clones this checkout's HEAD into a scratch folder (`git clone`, then a checkout
of the same commit: uncommitted changes are not in it, and the result says so), points
PIP_CACHE_DIR and UV_CACHE_DIR at empty folders, and runs `make run-local` there: setup (venv,
uv, every package downloaded), data load, compile, run, deploy. The clone and `make run-local`
are timed; `make run-local`'s output lines are time-stamped as they arrive, which splits its
time into phases at the lines each phase prints:

- setup: make's start to `setup: done` (.ci/setup's last line);
- compile: to the echo of `covertype run --local` (the settings check and `dsl-compile`);
- load: to `Run ... started` (the runner's imports, the data load of 100,000 rows, the checks);
- pipeline: to the run's final `Run ... Succeeded` line;
- summary and exit: to the process's end.

The run must succeed and deploy (its run.json's deploy step Succeeded), else the repetition
fails: a run that did less is not faster.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import REPO, Row, proctree, stats

TARGET_S = 60.0
PHASES = ("clone", "setup", "compile", "load", "pipeline", "summary and exit")
# Markers: the phase that ends at the first line matching it.
_MARKERS = (("setup", re.compile(r"^setup: done")),
            ("compile", re.compile(r"covertype run --local")),
            ("load", re.compile(r"^Run \S+ started")),
            ("pipeline", re.compile(r"^Run \S+: (Succeeded|Failed|Error)")))
# Variables of an outer `make` or of this checkout's environment that must not leak in.
_DROP = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "COVERTYPE_HOME",
         "PYTHONPATH", "BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA", "PLATFORM",
         "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION", "QUICK",
         "AI_PLATFORM_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "PIP_CACHE_DIR", "UV_CACHE_DIR")


def _clean_env(caches: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _DROP}
    # A venv's bin first on PATH would hand the clone this checkout's python3.11.
    env["PATH"] = os.pathsep.join(part for part in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(part) / "activate").exists())
    for name in ("PIP_CACHE_DIR", "UV_CACHE_DIR"):
        env[name] = str(caches / name.lower())
        Path(env[name]).mkdir(parents=True)
    return env


def _phases(log: Path, start: float, end: float) -> dict[str, float]:
    """Seconds per phase from the time-stamped output lines."""
    ends: dict[str, float] = {}
    pending = list(_MARKERS)
    for line in log.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        if pending and pending[0][1].search(text.strip()):
            ends[pending.pop(0)[0]] = float(stamp)
    if pending:
        raise RuntimeError(f"`make run-local` printed no line for the end of {pending[0][0]} "
                           f"(expected /{pending[0][1].pattern}/); see its output")
    phases, previous = {}, start
    for phase, _ in _MARKERS:
        phases[phase], previous = ends[phase] - previous, ends[phase]
    phases["summary and exit"] = end - previous
    return phases


def _check_deployed(clone: Path) -> str:
    """The run succeeded and its deploy step ran; returns the run id."""
    runs = sorted((clone / ".covertype" / "runs").glob("*/run.json"))
    if len(runs) != 1:
        raise RuntimeError(f"expected one run in the clone, found {len(runs)}")
    record = json.loads(runs[0].read_text())
    deploy = [step for name, step in record["steps"].items() if name.startswith("deploy")]
    if record["status"] != "Succeeded" or not deploy or deploy[0]["status"] != "Succeeded":
        state = deploy[0]["status"] if deploy else "missing"
        raise RuntimeError(f"run {record['run_id']} is {record['status']} with its deploy step "
                           f"{state}: the first run must end with a deployed model")
    return record["run_id"]


def run_once(folder: Path) -> dict:
    """One clone and `make run-local` with empty caches; seconds per phase."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    clone = folder / "covertype"
    start = time.perf_counter()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
    clone_s = time.perf_counter() - start
    cost = proctree.measure(["make", "run-local"], folder / "make-run-local.log",
                            _clean_env(folder / "caches"), clone, stamp=True)
    phases = {"clone": clone_s, **_phases(folder / "make-run-local.log", cost.start_unix,
                                          cost.end_unix)}
    return {"commit": head, "run_id": _check_deployed(clone), "total_s": clone_s + cost.wall_s,
            **cost.as_dict(), "phases_s": {name: round(value, 3) for name, value in
                                           phases.items()}}


def run(workdir: Path, repeats: int) -> dict:
    """`repeats` first runs, each in its own scratch clone with empty caches."""
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=workdir, prefix="first-run-") as folder:
            runs.append(run_once(Path(folder)))
    return {"repeats": repeats, "commit": runs[0]["commit"],
            "uncommitted_changes_not_measured": bool(dirty.strip()),
            "total_s": stats([r["total_s"] for r in runs]),
            "cpu_s": stats([r["cpu_s"] for r in runs]),
            "phases_s": {phase: stats([r["phases_s"][phase] for r in runs]) for phase in PHASES},
            "runs": runs}


def rows(result: dict) -> list[Row]:
    """The total against the target, then one row per phase."""
    total = Row("first-run", "git clone + make run-local, empty caches, wall s",
                result["total_s"], target=f"<= {TARGET_S:.0f} s",
                met=result["total_s"]["median"] <= TARGET_S)
    total.notes["profile_s"] = result["phases_s"]
    table = [total]
    table += [Row("first-run", f"  phase: {phase}", value)
              for phase, value in result["phases_s"].items()]
    return table
