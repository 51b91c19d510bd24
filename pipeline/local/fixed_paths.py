"""Each step's own view of the fixed paths it writes (`/tmp/outputs/...`, `/tmp/output`).

On Argo every step is a pod with its own file system, so parallel or later steps never read
each other's `/tmp/output`. Locally the runner rewrites the paths a step's command names into
the step's folder (`runner.localise`). A path the program writes (or reads) without naming it
in its command needs more:

- **A private /tmp** where the OS allows it (Linux with unprivileged user and mount
  namespaces): the step runs under `python -m pipeline.local.fixed_paths`, which unshares a
  user and a mount namespace, mounts the step's own `root/tmp` folder over `/tmp`, with the
  folders of the real /tmp the step needs (the local home, this checkout, the interpreter,
  any path in its environment) mounted back in place, and then execs the step's command.
  `/tmp/X` in the step is `root/tmp/X` in its folder, which is where the runner already
  places inputs and collects outputs.
- **One at a time** elsewhere, or for a path outside /tmp: such steps hold a lock (across
  runs of this user) and use the real paths, which must not exist before; inputs are copied
  there first and outputs moved into the step's folder after. The step's log says so.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

TMP = Path("/tmp")
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
ALONE_NOTE = ("note: this step uses {paths} without naming it in its command, and this system "
              "gives steps no private /tmp, so it runs alone: no other such step runs meanwhile")
_THREAD_LOCK = threading.Lock()


class FixedPathBusy(OSError):
    """A fixed path a step writes already exists outside any step (one-at-a-time mode)."""


def unnamed(paths: Iterable[str], named: str) -> list[str]:
    """The container paths that do not occur in `named` (the step's command and env)."""
    return sorted({path for path in paths if path not in named})


def env_paths(env: Mapping[str, str]) -> list[Path]:
    """The absolute paths an environment names (`*PATH` variables split at os.pathsep)."""
    found = []
    for name, value in env.items():
        for part in value.split(os.pathsep) if name.endswith("PATH") else [value]:
            if part.startswith("/") and "\n" not in part:
                found.append(Path(part))
    return found


def under_tmp(path: str | Path) -> bool:
    """Whether an absolute path lies strictly inside /tmp."""
    return Path(path).is_relative_to(TMP) and Path(path) != TMP


@lru_cache(maxsize=1)
def private_tmp_available() -> bool:
    """Whether this machine lets a step have a private /tmp (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run([sys.executable, "-m", __name__, "--tmp", folder, "--", "true"],
                               capture_output=True, timeout=30)
    return probe.returncode == 0


def private_tmp_command(command: list[str], private: Path, needed: Iterable[Path],
                        optional: Iterable[Path]) -> list[str] | None:
    """The command run with `private` as its /tmp, or None if that would hide what it needs.

    Args:
        private: the step's folder that becomes its /tmp.
        needed: folders the step cannot run without (home, checkout, interpreter, its cwd);
            if one of them is /tmp itself, a private /tmp is impossible.
        optional: other paths it may use (from its environment), kept when they lie in /tmp.
    """
    keep: set[Path] = set()
    for path in needed:
        forms = _forms(path)
        if TMP in forms:
            return None
        keep |= {form for form in forms if under_tmp(form)}
    for path in optional:
        keep |= {form for form in _forms(path) if under_tmp(form) and form.exists()}
    outermost = sorted(path for path in keep
                       if not any(path != other and path.is_relative_to(other) for other in keep))
    flags = [part for path in outermost for part in ("--keep", str(path))]
    return [sys.executable, "-m", __name__, "--tmp", str(private), *flags, "--", *command]


def _forms(path: Path) -> set[Path]:
    """A path as named (made absolute) and with its symlinks resolved: a step may use either."""
    return {Path(os.path.abspath(path)), Path(path).resolve()}


@contextmanager
def one_at_a_time(paths: list[str], mapping: Mapping[str, str],
                  inputs: Iterable[str]) -> Iterator[None]:
    """Run a step on the real `paths`, alone: inputs copied there first, everything moved into
    the step's folder (`mapping`) after, the paths removed.

    Raises:
        FixedPathBusy: a path already exists (left by something else); nothing is touched.
    """
    lock_file = Path(tempfile.gettempdir()) / f"covertype-fixed-paths-{os.getuid()}.lock"
    with _THREAD_LOCK, open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = [path for path in paths if os.path.lexists(path)]
        if busy:
            raise FixedPathBusy(f"{busy[0]} already exists on this machine, and this step must "
                                "use it alone (no private /tmp here); remove it and run again")
        created = _make_parents(paths)
        try:
            for path in set(inputs) & set(paths):
                _copy(Path(mapping[path]), Path(path))
            yield
        finally:
            for path in paths:
                if os.path.lexists(path):
                    target = Path(mapping[path])
                    _remove(target)
                    shutil.move(path, target)
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    pass


def _make_parents(paths: list[str]) -> list[Path]:
    """Create the missing parent folders of `paths`; return them, outermost first."""
    created: list[Path] = []
    for path in paths:
        missing = [parent for parent in Path(path).parents if not parent.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    return created


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# The step side: `python -m pipeline.local.fixed_paths --tmp DIR [--keep PATH]... -- COMMAND`
def _enter_private_tmp(private: Path, keep: list[Path]) -> None:
    """Unshare a user and mount namespace, keep `keep`, mount `private` over /tmp."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        Path(f"/proc/self/{name}").write_text(text)
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for path in keep:
        target = private / path.relative_to(TMP)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        check(libc.mount(str(path).encode(), str(target).encode(), None, MS_BIND | MS_REC, None),
              f"mount --bind {path}")
    check(libc.mount(str(private).encode(), b"/tmp", None, MS_BIND | MS_REC, None),
          "mount --bind /tmp")


def main(argv: list[str]) -> int:
    """Enter the private /tmp, then exec the command (exit 126 if that is impossible)."""
    separator = argv.index("--")
    options, command = argv[:separator], argv[separator + 1:]
    private = Path(options[options.index("--tmp") + 1])
    keep = [Path(value) for flag, value in zip(options, options[1:], strict=False)
            if flag == "--keep"]
    try:
        _enter_private_tmp(private, keep)
    except OSError as error:
        print(f"error: cannot give this step a private /tmp: {error}", file=sys.stderr)
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"error: cannot run {command[0]!r}: {error.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
