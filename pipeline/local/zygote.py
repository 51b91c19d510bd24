"""A zygote: a Python interpreter that imports a library set once, then forks one process per
program it is asked to run (the local runner's steps, the training service's trials).

A cold `python -u program` of a step spends most of its life importing pandas, scikit-learn,
DuckDB or googleapiclient; a child forked from a zygote that holds them starts in a few
milliseconds. The child still is the process the command would have started:

- its own pid, and its own process group (or session), so the runner's stop and timeouts reach
  it and everything it starts as before; SIGKILL when the zygote dies (PR_SET_PDEATHSIG; the
  zygote itself dies with the thread that started it);
- stdin /dev/null, stdout and stderr on the file descriptor the parent passed (a pipe or a log);
- exactly the requested environment (`os.environ` is replaced), working folder, `sys.argv`,
  `sys.orig_argv`, `sys.executable` and `sys.path[0]`, and PYTHONPATH folders the zygote lacks
  (their `sitecustomize` runs, as at a start); numpy's global generator is reseeded, as
  `random` is at every fork;
- the program itself: a script run as `__main__`, or a module run as `python -m` runs it;
  for kfp's `sh -ec` wrapper the child plays the shell (dash): it exports PWD, writes the
  program text to a `mktemp` file and runs `python3 -u` on it as its own child, then ends as
  dash does (a signal N: its name on stderr, status 128+N);
- its exit status: `sys.exit`, an uncaught exception (the traceback starts where a cold
  interpreter's would), KeyboardInterrupt (death by SIGINT), after non-daemon threads, atexit
  and the flush of stdout and stderr, as at an interpreter's end;
- when the child finds it cannot be that process (a PYTHONPATH `sitecustomize` hooks a module
  the zygote had already imported), it replaces itself with the python command (execve):
  same pid, group and descriptors, cold.

Protocol over a socketpair (fd given as `--channel`): the parent sends each request as a
4-byte length and a JSON object, with the output descriptor attached (SCM_RIGHTS); the zygote
answers JSON lines: `{"ready": true, "modules": [...], "failed": {...}}` once, then per
request `{"id", "pid"}` (or `{"id", "error"}`) and `{"id", "exit"}` when that child ends (a
Popen returncode: negative for a signal). EOF on the channel makes the zygote kill its
children and exit. The parent side is `pipeline.local.warm`.

Run as `python -u -m pipeline.local.zygote --channel FD MODULE...`.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
import types

# Forking is only safe from a single-threaded process: keep native thread pools from starting.
THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _name in THREAD_LIMITS:
    os.environ.setdefault(_name, "1")

HEADER = struct.Struct("!I")  # the length of a request's JSON
MAX_FDS = 2
PR_SET_PDEATHSIG = 1
# Python ignores SIGPIPE and SIGXFSZ and handles SIGINT; a shell leaves them at their default.
_SHELL_DEFAULTS = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)
MKTEMP_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HERE = os.path.abspath(__file__).removesuffix("c")  # .py, also when run from a .pyc


def preload(modules: list[str]) -> dict[str, str]:
    """Import each module; those that fail (the child will import them itself) -> why."""
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a library that is missing or broken
            failed[name] = f"{type(error).__name__}: {error}"
    return failed


def serve(channel: socket.socket, modules: list[str]) -> None:
    """Preload `modules`, then fork a child per request until the channel closes."""
    failed = preload(modules)
    zygote = os.getpid()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: dict[int, object] = {}  # pid -> request id
    _send(channel, {"ready": True, "modules": sorted(sys.modules), "failed": failed})
    while True:
        readable, _, _ = select.select([channel, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
        if channel in readable:
            received = _receive(channel)
            if received is None:
                break
            request, fds = received
            grouped_read, grouped_write = os.pipe()
            try:
                pid = os.fork()
            except OSError as error:
                _send(channel, {"id": request["id"], "error": str(error)})
            else:
                if pid == 0:
                    _child(request, fds, zygote, grouped_write,
                           (channel.fileno(), wake_read, wake_write, grouped_read))
                children[pid] = request["id"]
                # The pid goes out only once the child leads its own group (or session): a
                # stop that signals the group at once must reach it.
                os.close(grouped_write)
                grouped_write = -1
                os.read(grouped_read, 1)  # a byte, or EOF if the child died first
                _send(channel, {"id": request["id"], "pid": pid})
            finally:
                for fd in (*fds, grouped_read, grouped_write):
                    if fd >= 0:
                        os.close(fd)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                _send(channel, {"id": children.pop(pid),
                                "exit": os.waitstatus_to_exitcode(status)})
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _send(channel: socket.socket, message: dict) -> None:
    channel.sendall((json.dumps(message) + "\n").encode())


def _receive(channel: socket.socket) -> tuple[dict, list[int]] | None:
    """One request and its descriptors; None when the parent closed the channel."""
    header, fds, _, _ = socket.recv_fds(channel, HEADER.size, MAX_FDS)
    if not header:
        return None
    while len(header) < HEADER.size:
        header += channel.recv(HEADER.size - len(header))
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = channel.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body), fds


def _child(request: dict, fds: list[int], zygote: int, grouped: int,
           inherited: tuple[int, ...]) -> None:
    """In the forked child: become the requested process; never returns. `grouped` is the
    pipe the zygote waits on: written (and closed) once the child leads its group."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        if request["session"]:
            os.setsid()
        else:
            os.setpgid(0, 0)
        os.write(grouped, b"g")
        os.close(grouped)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote:  # the zygote died before prctl took effect
            os._exit(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[0], 2)
        for fd in {null, *fds}:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = _shell(request) if request["kind"] == "source" else _run(request)
    finally:
        os._exit(code)


def _shell(request: dict) -> int:
    """kfp's `sh -ec` wrapper, as dash runs it: PWD exported, the program written to a
    `mktemp` file, `python3 -u` on it as a child, whose end is reported as dash does (a signal
    N: its name on stderr, but for SIGINT and SIGPIPE, and status 128+N)."""
    python = {signum: signal.getsignal(signum) for signum in _SHELL_DEFAULTS}
    for signum in _SHELL_DEFAULTS:  # a shell leaves them at their defaults
        signal.signal(signum, signal.SIG_DFL)
    _shell_pwd()
    try:
        path = _mktemp(request["target"])
    except OSError as error:
        template = os.path.join(os.environ.get("TMPDIR") or "/tmp", "tmp.XXXXXXXXXX")
        os.write(2, f"mktemp: failed to create file via template \u2018{template}\u2019: "
                    f"{error.strerror}\n".encode())
        return 1
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for signum, handler in python.items():
                signal.signal(signum, handler)
            code = _run({**request, "kind": "script", "target": path})
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    signum = os.WTERMSIG(status)
    if signum not in (signal.SIGINT, signal.SIGPIPE):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        os.write(2, f"{signal.strsignal(signum)}{core}\n".encode())
    return 128 + signum


def _run(request: dict) -> int:
    """Run the program (a script or a module) as the interpreter would; its exit status."""
    kind, target, argv = request["kind"], request["target"], request["argv"]
    sys.executable = request["executable"]
    sys.orig_argv = [*request["invoked_as"], *(["-m"] if kind == "module" else []), target,
                     *argv]
    if _extend_path(request["path"]):  # the command itself, started cold, in this process
        os.execve(sys.executable, sys.orig_argv, request["env"])
    if "numpy.random" in sys.modules:  # `random` reseeds itself at fork; numpy does not
        sys.modules["numpy.random"].seed()
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    interrupted = False
    try:
        try:
            if kind == "module":
                _run_module(target, argv)
            else:
                _run_script(main, target, argv)
            code = 0
        except SystemExit as done:
            code = _exit_code(done.code)
        except BaseException as error:  # noqa: BLE001 - what the interpreter does: report, 1
            error.with_traceback(_program_frames(error.__traceback__))  # what is printed
            sys.excepthook(type(error), error, error.__traceback__)
            code, interrupted = 1, isinstance(error, KeyboardInterrupt)
        threading._shutdown()  # type: ignore[attr-defined] - the interpreter's own exit steps
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not change the status
                pass
    if interrupted:  # an uncaught KeyboardInterrupt ends a Python process by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _extend_path(folders: list[str]) -> bool:
    """Put the command's own PYTHONPATH folders (those the zygote lacks) where a start puts
    them and run a `sitecustomize` among them, as a start would. True when a hook it installed
    would have changed a module the zygote had already imported: the child must start cold."""
    importlib.invalidate_caches()
    if not folders:
        return False
    sys.path[1:1] = folders
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", folders)
    if spec is None or spec.loader is None:
        return False
    finders = list(sys.meta_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)
    added = [finder for finder in sys.meta_path
             if finder not in finders and hasattr(finder, "find_spec")]
    for name in list(sys.modules) if added else ():
        parent = sys.modules.get(name.rpartition(".")[0])
        path = getattr(parent, "__path__", None) if "." in name else None
        if any(finder.find_spec(name, path) is not None for finder in added):
            return True
    return False


def _run_script(main: types.ModuleType, path: str, argv: list[str]) -> None:
    """`python -u path argv...`: the file compiled and run as `__main__`."""
    sys.argv = [path, *argv]
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    try:
        with open(path, "rb") as stream:
            source = stream.read()
    except OSError as error:
        print(f"{sys.orig_argv[0]}: can't open file {os.path.abspath(path)!r}: "
              f"[Errno {error.errno}] {error.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    main.__dict__.update(__file__=path, __cached__=None, __package__=None, __spec__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path),
                         __builtins__=__builtins__)
    exec(compile(source, path, "exec"), main.__dict__)


def _run_module(name: str, argv: list[str]) -> None:
    """`python -u -m name argv...`: what the interpreter itself calls for `-m`."""
    import runpy

    sys.argv = ["-m", *argv]
    sys.path[0] = os.getcwd()
    sys.modules.pop(name, None)  # preloaded: run a fresh copy as __main__, as a cold start does
    runpy._run_module_as_main(name, alter_argv=True)  # type: ignore[attr-defined]


def _shell_pwd() -> None:
    """PWD as kfp's `sh` (dash) exports it to the program: the inherited value when it names
    the working folder, else the folder's physical path."""
    pwd = os.environ.get("PWD", "")
    try:
        kept = os.path.isabs(pwd) and os.path.samestat(os.stat(pwd), os.stat("."))
    except OSError:
        kept = False
    os.environ["PWD"] = pwd if kept else os.getcwd()


def _mktemp(program: str) -> str:
    """What kfp's `program_path=$(mktemp); printf "%s" "$0" > "$program_path"` leaves: the
    program in a new `$TMPDIR/tmp.XXXXXXXXXX` (mode 0600); its path."""
    folder = os.environ.get("TMPDIR") or "/tmp"
    while True:
        letters = "".join(MKTEMP_LETTERS[byte % len(MKTEMP_LETTERS)] for byte in os.urandom(10))
        path = os.path.join(folder, f"tmp.{letters}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as stream:
            stream.write(os.fsencode(program))
        return path


def _program_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback without this module's frames: where a cold interpreter's starts."""
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == _HERE:
        tb = tb.tb_next
    return tb


def _exit_code(value: object) -> int:
    """The status `sys.exit(value)` gives a Python process."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def main(argv: list[str]) -> None:
    """`--channel FD MODULE...`: serve on the socket FD; stdin and stdout become /dev/null."""
    if len(argv) < 2 or argv[0] != "--channel":
        raise SystemExit("usage: python -u -m pipeline.local.zygote --channel FD MODULE...")
    channel = socket.socket(fileno=int(argv[1]))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    try:
        serve(channel, argv[2:])
    except BaseException:
        try:
            _send(channel, {"crashed": traceback.format_exc()})
        except OSError:
            pass
        raise
    os._exit(0)  # nothing to flush or finalise: tearing the preloaded libraries down takes long


if __name__ == "__main__":
    main(sys.argv[1:])
