"""The processes of a local run, and how a run stops on Ctrl-C, SIGTERM or a killed runner.

Each step runs in its own process group, so a terminal's Ctrl-C reaches the runner only, and
the runner stops the run in order: no new step starts, every step's group gets SIGTERM (and
SIGKILL after a grace period, or at once on a second signal), and the stop callbacks end the
training service's trials and trainer zygote. Each step process also has PR_SET_PDEATHSIG,
so a runner killed with SIGKILL takes its steps with it, as the training service's trials go
with it; `covertype run --local --resume` then continues from the finished steps.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

GRACE_SECONDS = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
# Resolved now, in the parent: the forked child must not load libraries (the loader's lock
# may be held by another thread at fork time).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def signal_text(signum: int) -> str:
    """How a user knows the signal: Ctrl-C for SIGINT, else its name."""
    name = signal.Signals(signum).name
    return f"Ctrl-C ({name})" if signum == signal.SIGINT else name


class RunInterrupted(Exception):
    """A stop signal ended the run; `record` is the run as recorded (None before it started).

    The exit status of an interrupted command is 128 + the signal number, as a shell's.
    """

    def __init__(self, signum: int, record: Any = None) -> None:
        super().__init__(f"interrupted by {signal_text(signum)}")
        self.signum = signum
        self.record = record

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_on_parent_death(signum: int, parent: int | None = None) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `signum` when the thread that started it dies (Linux:
    PR_SET_PDEATHSIG). With `parent` (that process's pid), a child whose parent died before
    the signal was armed exits at once."""

    def arm() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signum))
            if parent is not None and os.getppid() != parent:
                os._exit(1)

    return arm


# In a child before exec: SIGKILL it when the thread that started it dies, so a runner or
# service killed with SIGKILL leaves no orphan processes.
die_with_parent = signal_on_parent_death(signal.SIGKILL)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Make SIGINT and SIGTERM raise RunInterrupted in the main thread (before a run starts)."""
    def handler(signum: int, frame: object) -> None:
        raise RunInterrupted(signum)

    with _handlers(handler):
        yield


class RunProcesses:
    """The step processes of one run, and the orderly stop that ends them all."""

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._on_stop: list[Callable[[], None]] = []

    def popen(self, command: list[str], **options: Any) -> subprocess.Popen:
        """Start a step process in its own group, tied to this process.

        Raises:
            RunInterrupted: the run is stopping; nothing was started.
        """
        with self._lock:
            if self.stop_signal is not None:
                raise RunInterrupted(self.stop_signal)
            process = subprocess.Popen(command, process_group=0, preexec_fn=die_with_parent,
                                       **options)
            self._running.add(process)
        return process

    def release(self, process: subprocess.Popen) -> None:
        """Forget an ended process (killing it first if it still runs)."""
        if process.poll() is None:
            _kill_group(process, signal.SIGKILL)
            process.wait()
        with self._lock:
            self._running.discard(process)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once, from a stop thread) when the run stops."""
        self._on_stop.append(callback)

    def stop(self, signum: int) -> None:
        """Stop the run: SIGTERM every step group, SIGKILL after GRACE_SECONDS; a second stop
        kills at once."""
        with self._lock:
            first = self.stop_signal is None
            if first:
                self.stop_signal = signum
            running = list(self._running)
        for process in running:
            _kill_group(process, signal.SIGTERM if first else signal.SIGKILL)
        if not first:
            return
        killer = threading.Timer(GRACE_SECONDS, self._kill_remaining)
        killer.daemon = True
        killer.start()
        for callback in self._on_stop:
            callback()

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[RunProcesses]:
        """While the block runs, SIGINT and SIGTERM stop the run instead of raising."""
        def handler(signum: int, frame: object) -> None:
            # Not here: the main thread may hold locks the stop needs.
            threading.Thread(target=self.stop, args=(signum,), name="stop-run",
                             daemon=True).start()

        with _handlers(handler):
            yield self

    def _kill_remaining(self) -> None:
        with self._lock:
            running = list(self._running)
        for process in running:
            _kill_group(process, signal.SIGKILL)


def _kill_group(process: subprocess.Popen, signum: int) -> None:
    if process.returncode is not None:  # reaped: its pid may belong to someone else now
        return
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Install `handler` for the stop signals (main thread only; elsewhere, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
