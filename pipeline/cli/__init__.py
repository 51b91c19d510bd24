"""The `covertype` command: one subcommand module per area, each with `register(subparsers)`."""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
from typing import NoReturn


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `covertype` console script."""
    from pipeline.cli import bq, run, serve

    parser = argparse.ArgumentParser(prog="covertype", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (bq, run, serve):
        module.register(subparsers)
    args = parser.parse_args(argv)
    from pipeline.local.processes import RunInterrupted  # after --help, which needs none of it
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"covertype: error: {error}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(f"covertype: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"covertype: {RunInterrupted(signal.SIGINT)}", file=sys.stderr)
        return 128 + signal.SIGINT


def entry() -> NoReturn:
    """The `covertype` console script: `main()`, then the end of an interpreter without its
    teardown.

    A local run leaves pandas, scikit-learn, onnxruntime, DuckDB and FastAPI loaded, and
    Python's own teardown of them takes ~0.8 s after the work is done. Everything a normal
    exit does first still happens, in its order: non-daemon threads are waited for, the atexit
    handlers run, stdout and stderr are flushed (a failed flush exits 120, as Python does).
    """
    code = main()
    threading._shutdown()  # type: ignore[attr-defined] - the interpreter's own exit steps
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    entry()
