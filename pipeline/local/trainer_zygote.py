"""Trainer zygote: imports the trainer's heavy libraries once, then forks one process per trial.

A cold `python -u train.py` spends ~1.8 s importing pandas and scikit-learn before a ~0.2 s
fit; forking a parent that already holds them starts a trial in milliseconds. Each forked child
still behaves like `python -u <script> <argv>` run by the local training service: its own pid
and process group (setsid), stdout+stderr to its log, the requested environment and folder,
SIGKILL when the zygote dies (PR_SET_PDEATHSIG), and the script run as `__main__`.

Protocol (JSON lines): the service writes `{"id", "argv", "env", "cwd", "log"}` to stdin; the
zygote answers `{"ready": true}` once, then `{"id", "pid"}` per fork and `{"id", "exit"}` when
that child ends (exit as a Popen returncode: negative for a signal). EOF on stdin (the service
closed it or died) makes the zygote kill its children and exit.

The service side is `TrainerZygote`: it starts the zygote from its own reader thread (so the
zygote's PR_SET_PDEATHSIG, which follows the thread that forked it, lasts as long as the zygote
is in use) and hands out `ForkedChild` handles that look like `subprocess.Popen` to a waiter.
Run as `python -u -m pipeline.local.trainer_zygote <script.py>`.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence

# Forking is only safe from a single-threaded process: keep native thread pools from starting.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

PRELOAD = ("pandas", "numpy", "scipy.sparse", "sklearn.compose", "sklearn.linear_model",
           "sklearn.pipeline", "sklearn.preprocessing", "fsspec",
           "fsspec.implementations.local", "fire", "hypertune", "pickle", "pipeline.schema")
PR_SET_PDEATHSIG = 1
POLL_MS = 20
READY_SECONDS = 120.0


def _send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _run_child(script: str, request: dict, zygote: int) -> None:
    """In the forked child: become the trial process described by request; never returns."""
    code = 1
    try:
        os.setsid()
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote:  # the zygote died before prctl took effect
            os._exit(1)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [script, *request["argv"]]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as done:
            code = _exit_code(done.code)
        except BaseException:  # noqa: BLE001 - as the interpreter does: traceback, status 1
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not change the status
                pass
        os._exit(code)


def _exit_code(value: object) -> int:
    """The status `sys.exit(value)` gives a Python process."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def serve(script: str) -> None:
    """Preload, then fork a child per request until stdin closes."""
    for name in PRELOAD:
        importlib.import_module(name)
    zygote = os.getpid()
    children: dict[int, object] = {}  # pid -> request id
    buffer = b""
    _send({"ready": True})
    while True:
        readable, _, _ = select.select([0], [], [], POLL_MS / 1000)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _run_child(script, request, zygote)
                children[pid] = request["id"]
                _send({"id": request["id"], "pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _send({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ForkedChild:
    """A trial forked by the zygote: the Popen calls the training service uses (pid, poll,
    wait, returncode); its exit status arrives from the zygote, which reaps it."""

    def __init__(self) -> None:
        self.pid = 0
        self.returncode: int | None = None
        self.started = threading.Event()
        self.ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired("trainer", timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def _end(self, code: int) -> None:
        self.returncode = code
        self.started.set()
        self.ended.set()


class TrainerZygote:
    """The service's handle on one zygote process for `script`.

    Raises:
        OSError: the zygote did not start (the caller falls back to a cold interpreter).
    """

    def __init__(self, script: str, die_with_parent: object = None) -> None:
        self.script = script
        self._die_with_parent = die_with_parent
        self._lock = threading.Lock()
        self._children: dict[int, ForkedChild] = {}
        self._next = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.process: subprocess.Popen | None = None
        self.alive = False
        threading.Thread(target=self._read, name="trainer-zygote", daemon=True).start()
        if not self._ready.wait(READY_SECONDS) or not self.alive:
            self.close()
            raise OSError(f"the trainer zygote did not start: {self._error or 'no ready line'}")

    def spawn(self, argv: Sequence[str], env: dict[str, str], log: str) -> ForkedChild:
        """Fork a child that runs `script argv` with env, logging to log; returns once it runs."""
        child = ForkedChild()
        with self._lock:
            if not self.alive or self.process is None:
                raise OSError("the trainer zygote has stopped")
            self._next += 1
            self._children[self._next] = child
            request = {"id": self._next, "argv": list(argv), "env": env, "cwd": os.getcwd(),
                       "log": log}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        if not child.started.wait(30) or not child.pid:
            raise OSError("the trainer zygote did not fork the trial")
        return child

    def close(self, timeout: float = 5.0) -> None:
        """Close the zygote's stdin: it kills its children and exits."""
        process, self.alive = self.process, False
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def _read(self) -> None:
        """Start the zygote, then dispatch its pid/exit lines until it ends."""
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-m", "pipeline.local.trainer_zygote", self.script],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                start_new_session=True, preexec_fn=self._die_with_parent)
        except OSError as error:
            self._error = error
            self._ready.set()
            return
        for line in self.process.stdout:
            message = json.loads(line)
            if message.get("ready"):
                self.alive = True
                self._ready.set()
            elif "pid" in message:
                child = self._children[message["id"]]
                child.pid = message["pid"]
                child.started.set()
            else:
                self._children.pop(message["id"])._end(message["exit"])
        with self._lock:
            self.alive = False
            for child in self._children.values():  # died with the zygote (PDEATHSIG)
                child._end(-signal.SIGKILL)
            self._children.clear()
        self.process.wait()
        self._ready.set()


if __name__ == "__main__":
    serve(sys.argv[1])
