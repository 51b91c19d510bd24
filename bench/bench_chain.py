"""Orchestration overhead: a chain of ten trivial lightweight components on three local runners.

Each link adds 1 to its input, so the chain's answer is 10; a runner that gets another answer
fails the benchmark (a wrong answer is not a number). The runners, each timed as a whole
process from start to exit (imports included, as a user starting it feels it), with wall and
CPU time of its process tree (bench/proctree.py):

- `covertype run --local` on bench/chain_kfp1.py compiled with `dsl-compile`, in a fresh
  COVERTYPE_HOME holding a copy of a loaded warehouse (as on any run after the first);
- kfp 1.8's `kfp.run_pipeline_func_locally` (LocalClient, local-process mode) on the same
  pipeline function, in the project's venv (`python -m bench.bench_chain kfp1-local ...`);
- KFP v2's `kfp.local` with `SubprocessRunner` on bench/chain_kfp2.py, in bench/.venv-kfp2.

Every runner gets its venv's bin folder first on PATH, so `python3` in a step is that venv's.
The repeats alternate the runners (ours, kfp 1.8, KFP v2, ours, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import REPO, Row, proctree, stats
from bench.bench_e2e import clean_env
from bench.profile import run_profile, summarise
from bench.sidevenv import ensure_venv

KFP2_PIN = "kfp==2.17.3"
EXPECTED = list(range(1, 11))  # the outputs of the ten links, in order
RUNNERS = {"covertype": "covertype run --local", "kfp1": "kfp 1.8 LocalClient",
           "kfp2": "KFP v2 kfp.local SubprocessRunner"}
TARGET_S, TARGET_SPEEDUP = 1.5, 5.0
HELP_TARGET_S = 0.3  # `covertype --help`


def _env(bin_folder: Path, **extra: str) -> dict[str, str]:
    """The benchmark environment with `bin_folder` first on PATH."""
    env = clean_env(**extra)
    env["PATH"] = f"{bin_folder}{os.pathsep}{env.get('PATH', '')}"
    return env


def compile_chain(folder: Path) -> Path:
    """bench/chain_kfp1.py through `dsl-compile`, as `make compile` compiles the DSL."""
    output = folder / "chain.yaml"
    dsl_compile = Path(sys.executable).with_name("dsl-compile")
    result = subprocess.run([str(dsl_compile), "--py", str(REPO / "bench" / "chain_kfp1.py"),
                             "--output", str(output)], env=_env(Path(sys.executable).parent),
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"dsl-compile of the chain failed: {result.stderr.strip()[-400:]}")
    return output


def run_ours(package: Path, warehouse: Path, folder: Path) -> dict:
    """`covertype run --local` on the chain; checks the ten outputs are 1..10."""
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copyfile(warehouse, home / "warehouse.duckdb")
    venv_bin = Path(sys.executable).parent
    cost = proctree.measure([str(venv_bin / "covertype"), "run", "--local", "--package",
                             str(package)], folder / "covertype.log",
                            _env(venv_bin, COVERTYPE_HOME=str(home)), REPO)
    (run_folder,) = (home / "runs").iterdir()
    record = json.loads((run_folder / "run.json").read_text())
    values = [int(Path(path).read_text()) for step in record["steps"].values()  # output files
              for name, path in step["artifacts"].items() if name.endswith("-Output")]
    _check("covertype run --local", sorted(values), record["status"] == "Succeeded")
    return {**cost.as_dict(), "run_s": record["duration_s"],
            "profile": run_profile(record, cost.start_unix, cost.end_unix)}


def run_kfp1(folder: Path) -> dict:
    """kfp 1.8's run_pipeline_func_locally in a process of its own (this module's CLI)."""
    out = folder / "kfp1.json"
    venv_bin = Path(sys.executable).parent
    cost = proctree.measure([sys.executable, "-m", "bench.bench_chain", "kfp1-local",
                             "--root", str(folder / "kfp1-root"), "--out", str(out)],
                            folder / "kfp1.log", _env(venv_bin), REPO)
    result = json.loads(out.read_text())
    _check("kfp 1.8 LocalClient", result["values"], True)
    return {**cost.as_dict(), "run_s": result["run_s"]}


def run_kfp2(venv: Path, folder: Path) -> dict:
    """bench/chain_kfp2.py with KFP v2's SubprocessRunner, in its own venv."""
    out = folder / "kfp2.json"
    cost = proctree.measure([str(venv / "bin" / "python"), str(REPO / "bench" / "chain_kfp2.py"),
                             "--root", str(folder / "kfp2-root"), "--out", str(out)],
                            folder / "kfp2.log", _env(venv / "bin"), folder)
    result = json.loads(out.read_text())
    _check("KFP v2 kfp.local", [result["value"]], True, expected=[EXPECTED[-1]])
    return {**cost.as_dict(), "run_s": result["run_s"]}


def time_help() -> tuple[float, float]:
    """Wall seconds of `covertype --help` and, side by side, of a bare `python -c pass` (the
    interpreter's own start, the floor); the help must be the real one."""
    venv_bin = Path(sys.executable).parent
    env = _env(venv_bin)
    seconds = []
    for command in ([str(venv_bin / "covertype"), "--help"], [sys.executable, "-c", "pass"]):
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if result.returncode or (command[-1] == "--help"
                                 and "usage: covertype" not in result.stdout):
            raise AssertionError(f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}")
    return seconds[0], seconds[1]


def _check(runner: str, values: list[int], succeeded: bool,
           expected: list[int] = EXPECTED) -> None:
    if not succeeded or values != expected:
        raise AssertionError(f"{runner} computed {values} for the chain, expected {expected}: "
                             "a wrong answer is a failed benchmark")


def run(workdir: Path, repeats: int, warehouse: Path, progress=None) -> dict:
    """All three runners, alternating, `repeats` times each."""
    folder = workdir / "chain"
    folder.mkdir()
    package = compile_chain(folder)
    venv = ensure_venv("kfp2", [KFP2_PIN], progress)
    samples: dict[str, list[dict]] = {runner: [] for runner in RUNNERS}
    helps: list[tuple[float, float]] = []
    for _ in range(repeats):
        helps += [time_help() for _ in range(5)]
        for runner in RUNNERS:
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                scratch_path = Path(scratch)
                if runner == "covertype":
                    samples[runner].append(run_ours(package, warehouse, scratch_path))
                elif runner == "kfp1":
                    samples[runner].append(run_kfp1(scratch_path))
                else:
                    samples[runner].append(run_kfp2(venv, scratch_path))
    result: dict = {"length": len(EXPECTED), "repeats": repeats, "kfp2": KFP2_PIN}
    for runner, runs in samples.items():
        result[runner] = {"wall_s": stats([r["wall_s"] for r in runs]),
                          "cpu_s": stats([r["cpu_s"] for r in runs]),
                          "run_s": stats([r["run_s"] for r in runs]), "runs": runs}
    result["covertype"]["profile_s"] = summarise([r["profile"] for r in samples["covertype"]])
    result["help"] = {"covertype": stats([ours for ours, _ in helps]),
                      "python": stats([bare for _, bare in helps])}
    return result


def rows(result: dict) -> list[Row]:
    """Wall time of ours against each KFP runner; the targets; CPU time."""
    ours = result["covertype"]["wall_s"]
    table = []
    for runner in ("kfp1", "kfp2"):
        row = Row("chain", f"10 trivial steps, process wall s, ours vs {RUNNERS[runner]}",
                  ours, result[runner]["wall_s"],
                  f"<= {TARGET_S} s and >= {TARGET_SPEEDUP:.0f}x faster (ratio <= "
                  f"{1 / TARGET_SPEEDUP:.1f}x)")
        row.met = ours["median"] <= TARGET_S and row.ratio is not None and \
            row.ratio <= 1 / TARGET_SPEEDUP
        table.append(row)
    table.append(Row("chain", "10 trivial steps, CPU s of the process tree, ours vs kfp 1.8",
                     result["covertype"]["cpu_s"], result["kfp1"]["cpu_s"]))
    table.append(Row("chain", "10 trivial steps, run only s (inside the process), ours vs kfp 1.8",
                     result["covertype"]["run_s"], result["kfp1"]["run_s"]))
    for row in table[:2]:
        row.notes["profile_s"] = result["covertype"]["profile_s"]
    if "help" in result:
        helped = result["help"]["covertype"]
        table.append(Row("chain", "`covertype --help`, process wall s, vs `python -c pass`",
                         helped, result["help"]["python"], f"<= {HELP_TARGET_S} s",
                         helped["median"] <= HELP_TARGET_S, digits=3))
    return table


def _kfp1_local(root: Path, out: Path) -> None:
    """Run the chain with kfp 1.8's LocalClient; write each link's output and the seconds."""
    import warnings

    import kfp
    from kfp._local_client import LocalClient

    from bench import chain_kfp1

    warnings.filterwarnings("ignore", category=FutureWarning)  # "LocalClient is Alpha"
    start = time.perf_counter()
    result = kfp.run_pipeline_func_locally(
        chain_kfp1.add_one_chain, {"start": 0}, pipeline_root=str(root),
        execution_mode=LocalClient.ExecutionMode(LocalClient.ExecutionMode.LOCAL))
    seconds = time.perf_counter() - start
    values = []  # each link's output, in the order the links were made
    for op in result._pipeline.ops:  # its result object has no public list of the steps
        path = Path(result.get_output_file(op))
        values.append(int(path.read_text()) if path.exists() else None)
    out.write_text(json.dumps({"values": values, "run_s": seconds}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="kfp 1.8 LocalClient side of the chain bench")
    parser.add_argument("command", choices=["kfp1-local"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    _kfp1_local(arguments.root, arguments.out)
