"""The warm executor: local steps and training trials forked from preloaded interpreters.

Each library set (`warm_programs.LIBRARY_SETS`) gets a zygote (`pipeline/local/zygote.py`),
started on first use or ahead of time (`prestart`, in the order the run needs them), one per
interpreter configuration. A command the executor recognises (`warm_programs.recognise`) is
forked from its set's zygote and runs the very same program, as the process the command would
have started (see zygote.py); everything else, a zygote that failed, or `COVERTYPE_COLD=1`
starts a new interpreter instead, as before.

Interpreter configuration: what a Python start reads from the environment (the PYTHON*
variables but PYTHONUNBUFFERED, which every recognised command sets with -u, and the locale).
A zygote serves a command whose configuration is its own, or its own with more PYTHONPATH
folders in front (a step's `sitecustomize`), when those folders shadow none of the modules
it has imported.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from pipeline.local.processes import die_with_parent
from pipeline.local.warm_programs import LIBRARY_SETS, Program, library_set, recognise
from pipeline.local.zygote import HEADER

COLD_ENV = "COVERTYPE_COLD"  # "1": every step and trial starts a new interpreter
READY_SECONDS = 120.0
FORK_SECONDS = 30.0
_LOCALE = ("LANG", "LC_ALL", "LC_CTYPE")
_REPO = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)


def started_as(process: object) -> str:
    """How a step's or trial's process started: "forked:<library set>" or "new"."""
    return f"forked:{process.zygote}" if isinstance(process, ForkedProcess) else "new"


class ForkedProcess:
    """A process forked by a zygote, with the `subprocess.Popen` calls the runner and the
    training service use (pid, returncode, poll, wait, stdout); the zygote reaps it and sends
    its exit status."""

    def __init__(self, args: list[str], zygote: str) -> None:
        self.args = args
        self.zygote = zygote  # the library set it was forked from
        self.pid = 0
        self.returncode: int | None = None
        self.stdout: IO[str] | None = None
        self._error = ""
        self._started = threading.Event()
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def _forked(self, pid: int) -> None:
        self.pid = pid
        self._started.set()

    def _failed(self, error: str) -> None:
        self._error = error
        self._started.set()

    def _end(self, code: int) -> None:
        self.returncode = code
        self._started.set()
        self._ended.set()


class Zygote:
    """The parent's handle on one zygote process: started from its own reader thread (so its
    PR_SET_PDEATHSIG, which follows the thread that forked it, lasts as long as it runs)."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.env = dict(env)
        self.config = interpreter_config(self.env)
        self.top_modules: frozenset[str] = frozenset()
        self.alive = False
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._children: dict[int, ForkedProcess] = {}
        self._next = 0
        self._channel: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._closed = False
        self._error = ""
        threading.Thread(target=self._read, name=f"zygote-{name}", daemon=True).start()

    def wait_ready(self, stop: threading.Event | None = None,
                   timeout: float = READY_SECONDS) -> bool:
        """Whether the zygote has preloaded its set and forks (False: it failed, is slow, or
        `stop` was set meanwhile)."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05 if stop else timeout):
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                return False
        return self.alive

    def spawn(self, program: Program, command: list[str], env: Mapping[str, str], cwd: str,
              path: list[str], output: int, session: bool) -> ForkedProcess:
        """Fork the process for `program`, stdout and stderr on `output`; returns once forked.

        Raises:
            OSError: the zygote has stopped or could not fork (start the command cold).
        """
        process = ForkedProcess(command, self.name)
        request = {"kind": program.kind, "target": program.target, "argv": list(program.argv),
                   "executable": program.executable, "invoked_as": list(program.invoked_as),
                   "command": command, "env": dict(env), "cwd": str(cwd), "path": path,
                   "session": session}
        with self._lock:
            if not self.alive or self._channel is None:
                raise OSError(f"the {self.name} zygote has stopped")
            self._next += 1
            request["id"] = self._next
            self._children[self._next] = process
            body = json.dumps(request).encode()
            message = HEADER.pack(len(body)) + body
            sent = socket.send_fds(self._channel, [message], [output])
            self._channel.sendall(message[sent:])
        if not process._started.wait(FORK_SECONDS) or not process.pid:
            raise OSError(f"the {self.name} zygote did not fork: "
                          f"{process._error or 'no answer'}")
        return process

    def close(self) -> None:
        """Close the channel: the zygote kills its children and exits (one still importing
        its set is killed at once: it has nothing to finish)."""
        with self._lock:
            self.alive = False
            self._closed = True
            if self._channel is not None:
                try:
                    self._channel.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if self._process is not None and not self.ready.is_set():
                self._process.kill()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the closed zygote to exit (killed after `timeout` seconds)."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _read(self) -> None:
        """Start the zygote, then dispatch its lines until it ends."""
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-u", "-m", "pipeline.local.zygote", "--channel",
                 str(theirs.fileno()), *LIBRARY_SETS[self.name]],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, cwd=_REPO,
                start_new_session=True, preexec_fn=die_with_parent)
        except OSError as error:
            self._error = str(error)
            ours.close()
            self.ready.set()
            return
        finally:
            theirs.close()
        with self._lock:
            self._channel = ours
            if self._closed:  # closed while it was being started
                self._process.kill()
        with ours.makefile("rb") as lines:
            for line in lines:
                self._dispatch(json.loads(line))
        with self._lock:
            self.alive = False
            for process in self._children.values():  # died with the zygote (PDEATHSIG)
                process._end(-signal.SIGKILL)
            self._children.clear()
        ours.close()
        self._process.wait()
        self.ready.set()

    def _dispatch(self, message: dict) -> None:
        if message.get("ready"):
            self.top_modules = frozenset(name.partition(".")[0] for name in message["modules"])
            if message["failed"]:
                logger.info("the %s zygote could not preload %s", self.name, message["failed"])
            self.alive = True
            self.ready.set()
        elif "crashed" in message:
            self._error = message["crashed"].strip().splitlines()[-1]
            logger.warning("the %s zygote crashed: %s", self.name, self._error)
        else:
            with self._lock:
                process = self._children.get(message["id"])
                if process is None:
                    return
                if "pid" in message:
                    process._forked(message["pid"])
                elif "error" in message:
                    self._children.pop(message["id"])._failed(message["error"])
                else:
                    self._children.pop(message["id"])._end(message["exit"])


class WarmStart:
    """A command the executor will fork: its zygote is ready (see `WarmExecutor.prepare`)."""

    def __init__(self, zygote: Zygote, program: Program, command: list[str],
                 env: Mapping[str, str], path: list[str]) -> None:
        self.zygote = zygote
        self.program = program
        self.command = command
        self.env = env
        self.path = path

    def start(self, cwd: str | os.PathLike, session: bool,
              output: int | None = None) -> ForkedProcess | None:
        """Fork it with stdout+stderr on `output`, or on a pipe read as `process.stdout` (text,
        undecodable bytes replaced, as `Popen(text=True, errors="replace")`); None when the
        zygote fails (the caller starts the command cold)."""
        read = None
        if output is None:
            read, output = os.pipe()
        try:
            process = self.zygote.spawn(self.program, self.command, self.env, os.fspath(cwd),
                                        self.path, output, session)
        except OSError as error:
            logger.warning("%s; starting %s cold", error, self.command[0])
            if read is not None:
                os.close(read)
            return None
        finally:
            if read is not None:
                os.close(output)
        if read is not None:
            process.stdout = open(read, errors="replace")  # noqa: SIM115 - the caller reads it
        return process


class WarmExecutor:
    """The zygotes of one run (or one training service); `with` closes them at the end.

    Args:
        enabled: False: every command starts cold. Default: unless `COVERTYPE_COLD=1`.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = os.environ.get(COLD_ENV) != "1" if enabled is None else enabled
        self._lock = threading.Lock()
        self._zygotes: list[Zygote] = []
        self._closed = False

    def prepare(self, command: list[str], env: Mapping[str, str],
                stop: threading.Event | None = None) -> WarmStart | None:
        """The warm start of `command` in `env`, once its zygote is ready (started now if it
        is not running); None: start it cold (or `stop` was set while waiting)."""
        if not self.enabled:
            return None
        program = recognise(list(command), dict(env))
        if program is None:
            return None
        zygote, path = self._zygote(library_set(program), env)
        if zygote is None or not zygote.wait_ready(stop):
            return None
        if _shadowed(path, zygote.top_modules):
            return None
        return WarmStart(zygote, program, list(command), env, path)

    def prestart(self, commands: Iterable[tuple[list[str], Mapping[str, str]]]) -> None:
        """Start, one after the other in a background thread, the zygotes these commands
        need, in this order."""
        if not self.enabled:
            return
        wanted = []
        for command, env in commands:
            program = recognise(list(command), dict(env))
            if program is not None:
                wanted.append((library_set(program), env))

        def start_all() -> None:
            for name, env in wanted:
                zygote, _ = self._zygote(name, env)
                if zygote is not None:
                    zygote.wait_ready()

        threading.Thread(target=start_all, name="zygote-prestart", daemon=True).start()

    def close(self) -> None:
        """Stop every zygote (their remaining children are killed) and wait for them."""
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = self._zygotes, []
        for zygote in zygotes:
            zygote.close()
        for zygote in zygotes:
            zygote.join()

    def __enter__(self) -> WarmExecutor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _zygote(self, name: str, env: Mapping[str, str]) -> tuple[Zygote | None, list[str]]:
        """The zygote of set `name` that serves `env` (started now if none does; one that
        failed or died is not started again), and the PYTHONPATH folders the child adds;
        (None, []) when the executor is closed."""
        config = interpreter_config(env)
        with self._lock:
            if self._closed:
                return None, []
            for zygote in self._zygotes:
                path = _extra_path(zygote.config, config)
                if zygote.name == name and path is not None:
                    return zygote, path
            zygote = Zygote(name, env)
            self._zygotes.append(zygote)
            return zygote, []


def interpreter_config(env: Mapping[str, str]) -> dict[str, str]:
    """What a Python start reads from the environment (but PYTHONUNBUFFERED)."""
    return {key: value for key, value in env.items()
            if key in _LOCALE or (key.startswith("PYTHON") and key != "PYTHONUNBUFFERED")}


def _extra_path(zygote: Mapping[str, str], wanted: Mapping[str, str]) -> list[str] | None:
    """The PYTHONPATH folders `wanted` has in front of the zygote's, when the rest of the two
    configurations is the same; None when the zygote cannot serve it."""
    if {k: v for k, v in zygote.items() if k != "PYTHONPATH"} != {
            k: v for k, v in wanted.items() if k != "PYTHONPATH"}:
        return None
    own = [entry for entry in zygote.get("PYTHONPATH", "").split(os.pathsep) if entry]
    folders = [entry for entry in wanted.get("PYTHONPATH", "").split(os.pathsep) if entry]
    extra = len(folders) - len(own)
    if extra < 0 or folders[extra:] != own:
        return None
    return folders[:extra]


def _shadowed(folders: list[str], modules: frozenset[str]) -> bool:
    """Whether a folder holds a module or package named like one the zygote has imported (or
    a second `sitecustomize`), which a cold start would import from there instead."""
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for entry in names:
            name = entry.split(".", 1)[0]
            if name in modules:
                return True
    return False
