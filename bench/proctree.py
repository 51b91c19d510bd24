"""What a command costs as a whole process tree: wall time, CPU time and peak memory (PSS).

`measure(command, ...)` runs `python bench/proctree.py --report R -- command...`, a small
wrapper that makes itself the child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every
descendant, daemonised or orphaned ones included, ends up as its child. It times the command
from start to exit (wall), then reaps every descendant and reads RUSAGE_CHILDREN: the user +
system CPU seconds of the whole tree, the wrapper itself excluded. While the command runs a
thread samples the tree's memory every `interval` seconds: the sum of `Pss` from
/proc/PID/smaps_rollup (each shared page divided among the processes that map it, so the sum
is the tree's real share of RAM) and, for comparison, the sum of VmRSS (which counts shared
pages once per process and so overstates). Descendants still alive `linger` seconds after the
command exited are killed and named in the report: a clean command leaves none.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
KB = 1024
MB = 1024 * 1024


@dataclass
class TreeCost:
    """One measured run of a command."""

    exit_code: int
    wall_s: float
    cpu_s: float
    user_s: float
    system_s: float
    peak_pss_mb: float
    peak_rss_mb: float
    samples: int
    start_unix: float
    end_unix: float
    lingering: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Rounded, for the JSON results."""
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in asdict(self).items()}


def measure(command: list[str], log: Path, env: dict[str, str], cwd: Path,
            interval: float = 0.1, linger: float = 10.0, stamp: bool = False) -> TreeCost:
    """Run `command` under the wrapper; its output goes to `log`.

    With `stamp`, each output line is prefixed with the Unix time it arrived at (`%.3f `).

    Raises:
        RuntimeError: the command exited non-zero (with the last lines of its log).
    """
    with tempfile.TemporaryDirectory(prefix="proctree-") as folder:
        report = Path(folder) / "report.json"
        # Run as a script (standard library only), so the command's environment stays as is.
        wrapper = [sys.executable, str(Path(__file__).resolve()), "--report", str(report),
                   "--interval", str(interval), "--linger", str(linger),
                   *(["--stamp"] if stamp else []), "--", *command]
        with open(log, "wb") as stream:
            code = subprocess.run(wrapper, cwd=cwd, env=env, stdout=stream,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if not report.exists():
            raise RuntimeError(f"the measuring wrapper exited with {code} and no report: "
                               f"{_tail(log)}")
        cost = TreeCost(**json.loads(report.read_text()))
    if cost.exit_code:
        raise RuntimeError(f"{Path(command[0]).name} {' '.join(command[1:3])} ... exited with "
                           f"{cost.exit_code}: {_tail(log)}")
    return cost


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(text)[-800:]


# The wrapper process ------------------------------------------------------------------------

def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (from /proc/PID/task/TID/children), root excluded."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in kB of one process; (0, 0) once it is gone."""
    pss = rss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


class _Sampler(threading.Thread):
    """Peak summed PSS and RSS of our descendants, every `interval` seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="tree-memory")
        self.interval = interval
        self.peak_pss_kb = self.peak_rss_kb = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            pss = rss = 0
            for pid in descendants(me):
                process_pss, process_rss = _memory_kb(pid)
                pss, rss = pss + process_pss, rss + process_rss
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.samples += 1
            self.stop.wait(self.interval)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return str(pid)


def _reap_all(linger: float) -> list[str]:
    """Wait for every remaining descendant; kill (and name) those alive after `linger` s."""
    deadline = time.monotonic() + linger
    lingering: list[str] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return lingering
        if pid:
            continue
        if time.monotonic() > deadline and not lingering:
            alive = descendants(os.getpid())
            lingering = [_name(pid) for pid in alive]
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)


def _stamp_lines(stream, out) -> None:
    """Copy `stream` to `out` line by line, each prefixed with its arrival time."""
    for line in iter(stream.readline, b""):
        out.write(b"%.3f " % time.time() + line)
        out.flush()


def wrap(command: list[str], report: Path, interval: float, linger: float,
         stamp: bool = False) -> int:
    """Run `command` as the subreaper of its tree and write the TreeCost to `report`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    sampler = _Sampler(interval)
    start_unix, start = time.time(), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE if stamp else None,
                               stderr=subprocess.STDOUT if stamp else None)
    sampler.start()
    copier = None
    if stamp:
        copier = threading.Thread(target=_stamp_lines, args=(process.stdout, sys.stdout.buffer))
        copier.start()
    code = process.wait()
    wall, end_unix = time.perf_counter() - start, time.time()
    sampler.stop.set()
    sampler.join()
    lingering = _reap_all(linger)
    if copier:
        copier.join()  # the output ends once every writer has closed it
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cost = TreeCost(exit_code=code, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
                    user_s=usage.ru_utime, system_s=usage.ru_stime,
                    peak_pss_mb=sampler.peak_pss_kb * KB / MB,
                    peak_rss_mb=sampler.peak_rss_kb * KB / MB, samples=sampler.samples,
                    start_unix=start_unix, end_unix=end_unix, lingering=lingering)
    report.write_text(json.dumps(asdict(cost)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/proctree.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--linger", type=float, default=10.0)
    parser.add_argument("--stamp", action="store_true", help="prefix output lines with the time")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    return wrap(command, args.report, args.interval, args.linger, args.stamp)


if __name__ == "__main__":
    sys.exit(main())
