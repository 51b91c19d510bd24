"""The `covertype` command: one subcommand module per area, each with `register(subparsers)`."""
from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `covertype` console script."""
    from pipeline.cli import bq, run, serve
    from pipeline.local.processes import RunInterrupted

    parser = argparse.ArgumentParser(prog="covertype", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (bq, run, serve):
        module.register(subparsers)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
