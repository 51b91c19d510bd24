"""Runs created through the local KFP API, executed in the background by the local runner.

Each run is a child process `covertype run --local --package <its package> --run-id <id>`,
so it writes the very run record a terminal run writes (the run browser and `covertype runs`
show it) and the KFP run id is the local run id. At most `parallel` run at once; the rest
wait in a queue, oldest first. Each child leads its own session (process group): terminate
sends the group SIGINT, as Ctrl-C would, then SIGKILL if it has not ended after a grace
period. A run terminated while queued never starts.

When the server stops, queued runs never start and running ones are stopped the same way
(they read as Interrupted; `covertype run --local --resume ID` continues them). On Linux a
child also gets SIGINT if the server process dies without stopping it (kill -9), so no run
outlives its server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass

from pipeline.errors import one_line
from pipeline.local import records
from pipeline.local.data import LAB_ROWS
from pipeline.local.errors import InvalidArgument
from pipeline.local.home import HOME_ENV, runs_dir
from pipeline.local.kfp_store import KfpStore, Run, now
from pipeline.local.owner import owner_alive
from pipeline.local.processes import signal_on_parent_death
from pipeline.local.records import RunRecord, RunStore

DEFAULT_PARALLEL = max(1, min(4, os.cpu_count() or 1))
TERMINATE_GRACE_S = 10.0
# KFP v1 run states (Argo workflow phases, plus KFP's own Terminating).
PENDING, RUNNING, SUCCEEDED, FAILED, ERROR, TERMINATING = (
    "Pending", "Running", "Succeeded", "Failed", "Error", "Terminating")
FINAL = {SUCCEEDED, FAILED, ERROR, "Skipped"}
TERMINATED_MESSAGE = "terminated"  # Argo's message on a terminated node; the KFP UI keys on it
_MAIN = "import sys; from pipeline.cli import main; sys.exit(main())"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchSettings:
    """How API runs execute: source-table rows to load, how many run at once.

    `parallel=0` holds every run in the queue: a server that only records what clients
    ask (the Makefile's tests of what `make run` sends to a cluster use it).
    """

    rows: int = LAB_ROWS
    parallel: int = DEFAULT_PARALLEL


@dataclass(frozen=True)
class RunView:
    """A KFP run as the API reports it: its status, a message, the local record if any."""

    run: Run
    status: str
    message: str
    record: RunRecord | None


def view_run(store: KfpStore, run_id: str) -> RunView:
    """The run's KFP status, from its run record when the runner has written one."""
    run = store.get(Run, run_id)
    try:
        record = RunStore(runs_dir(store.home)).load(run_id)
    except (FileNotFoundError, ValueError, TypeError):
        record = None
    if record is None:
        if run.ended:
            return RunView(run, run.ended["status"], run.ended["message"], None)
        if not owner_alive(run.server):
            return RunView(run, ERROR, "the server stopped before the run started; submit it "
                                       "again", None)
        return RunView(run, TERMINATING if run.terminated else PENDING, "", None)
    if record.status == records.RUNNING:
        return RunView(run, TERMINATING if run.terminated else RUNNING, "", record)
    if record.status == records.SUCCEEDED:
        return RunView(run, SUCCEEDED, "", record)
    if run.terminated:
        return RunView(run, FAILED, TERMINATED_MESSAGE, record)
    return RunView(run, ERROR if record.status == records.INTERRUPTED else FAILED,
                   record.message, record)


class RunLauncher:
    """Queue and processes of the API's runs; `close()` stops them (server shutdown)."""

    def __init__(self, store: KfpStore, settings: LaunchSettings) -> None:
        self.store = store
        self.settings = settings
        self._queue: deque[str] = deque()
        self._running: dict[str, subprocess.Popen] = {}
        self._changed = threading.Condition()
        self._closed = False
        # One long-lived thread starts every child: Linux sends PR_SET_PDEATHSIG when the
        # thread that forked a child ends, so it must not be a short-lived worker.
        self._starter = threading.Thread(target=self._start_loop, daemon=True,
                                         name="kfp-run-starter")
        self._starter.start()

    def submit(self, run_id: str) -> None:
        """Queue a saved run; it starts when fewer than `parallel` runs are running."""
        with self._changed:
            if self._closed:
                raise InvalidArgument("the server is stopping; submit the run again later")
            self._queue.append(run_id)
            self._changed.notify_all()

    def terminate(self, run_id: str) -> None:
        """Stop a run like Ctrl-C (SIGINT to its processes, SIGKILL after a grace period)."""
        with self._changed:
            view = view_run(self.store, run_id)
            if view.status in FINAL:
                raise InvalidArgument(f"Failed to terminate run {run_id}: it has already "
                                      f"ended ({view.status})")
            if run_id in self._queue:
                self._queue.remove(run_id)
                self.store.update_run(run_id, terminated_at=now(), ended={
                    "status": FAILED, "message": TERMINATED_MESSAGE, "at": now()})
                return
            self.store.update_run(run_id, terminated_at=now())
            process = self._running.get(run_id)
        if process is not None:
            _signal_group(process, signal.SIGINT)
            threading.Timer(TERMINATE_GRACE_S, _signal_group,
                            (process, signal.SIGKILL)).start()

    def close(self) -> None:
        """Server shutdown: queued runs never start; running ones are stopped and waited for."""
        with self._changed:
            self._closed = True
            queued, self._queue = list(self._queue), deque()
            running = dict(self._running)
            self._changed.notify_all()
        for run_id in queued:
            self.store.update_run(run_id, ended={
                "status": ERROR, "message": "the server stopped before the run started; "
                                            "submit it again", "at": now()})
        for process in running.values():
            _signal_group(process, signal.SIGINT)
        for process in running.values():
            try:
                process.wait(timeout=TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()

    # Internals ---------------------------------------------------------------------------
    def _start_loop(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (
                        not self._queue or len(self._running) >= self.settings.parallel):
                    self._changed.wait()
                if self._closed:
                    return
                run_id = self._queue.popleft()
                try:
                    process = self._spawn(run_id)
                except (OSError, ValueError) as error:
                    self.store.update_run(run_id, ended={
                        "status": ERROR, "message": f"the run could not start: "
                                                    f"{one_line(error)}", "at": now()})
                    continue
                self._running[run_id] = process
            threading.Thread(target=self._reap, args=(run_id, process), daemon=True,
                             name=f"kfp-run-{run_id}").start()

    def _spawn(self, run_id: str) -> subprocess.Popen:
        run = self.store.get(Run, run_id)
        command = [sys.executable, "-c", _MAIN, "run", "--local",
                   "--package", str(self.store.run_package(run_id)),
                   "--rows", str(self.settings.rows), "--run-id", run_id]
        for parameter in run.parameters:
            command += ["--param", f"{parameter['name']}={parameter.get('value', '')}"]
        env = {**os.environ, HOME_ENV: str(self.store.home)}
        with open(self.store.run_log(run_id), "wb") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=signal_on_parent_death(signal.SIGINT, os.getpid()))

    def _reap(self, run_id: str, process: subprocess.Popen) -> None:
        code = process.wait()
        with self._changed:
            self._running.pop(run_id, None)
            self._changed.notify_all()
        if view_run(self.store, run_id).record is None:
            self.store.update_run(run_id, ended=_ended_without_record(
                self.store, run_id, code))


def _ended_without_record(store: KfpStore, run_id: str, code: int) -> dict:
    """A child that stopped before its runner wrote a record: its last error line says why."""
    run = store.get(Run, run_id)
    if run.terminated:
        return {"status": FAILED, "message": TERMINATED_MESSAGE, "at": now()}
    lines = [line for line in store.run_log(run_id).read_text(errors="replace").splitlines()
             if line.strip()]
    reason = lines[-1] if lines else f"exit status {code}"
    return {"status": ERROR, "message": one_line(reason), "at": now()}


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the child's whole process group (the child leads it), steps and trials too."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group has ended
