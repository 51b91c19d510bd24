"""`argo watch NAME`: a stand-in of the Argo CLI for runs of the local KFP API.

`kfp run submit -w` and `kfp run get -w` (kfp 1.8) need an `argo` program on PATH and run
`argo watch <workflow name> -n <namespace>` to wait for the run. Locally the workflow name
is the run id, so this program follows the run's local record until it ends, printing each
step's phase as it changes, then the run's status. It serves nothing else: any other
command, or a name that is not a local run, is refused with a pointer to the real Argo CLI.
"""
from __future__ import annotations

import argparse
import sys
import time

from pipeline.local import records
from pipeline.local.errors import NotFound
from pipeline.local.kfp_runs import FINAL, view_run
from pipeline.local.kfp_store import KfpStore
from pipeline.local.records import RUN_ID, RunRecord, RunStore

POLL_S = 1.0
REAL_ARGO = ("this `argo` is covertype's stand-in for `argo watch` on local runs (what "
             "`kfp run submit -w` calls); for a cluster, put the real Argo CLI first on PATH")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `argo` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "watch":
        print(f"argo: {REAL_ARGO}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="argo watch", description=__doc__)
    parser.add_argument("name", help="the workflow name: the local run id")
    parser.add_argument("-n", "--namespace", default="", help="ignored: one local namespace")
    return _watch(parser.parse_args(argv[1:]).name)


def _watch(name: str) -> int:
    store = KfpStore()
    if not RUN_ID.fullmatch(name):
        print(f"argo: {name!r} is not a run id; {REAL_ARGO}", file=sys.stderr)
        return 2
    printed: dict[str, str] = {}
    while True:
        status, message, record = _state(store, name)
        if status is None:
            print(f"argo: {name} is not a local run under {store.home}; {REAL_ARGO}",
                  file=sys.stderr)
            return 2
        for step in (record.steps.values() if record else []):
            if step.status != records.PENDING and printed.get(step.name) != step.status:
                printed[step.name] = step.status
                print(f"{step.name}: {step.status}", flush=True)
        if status in FINAL:
            print(f"Name: {name}\nStatus: {status}" + (f"\nMessage: {message}" if message
                                                       else ""), flush=True)
            return 0 if status == "Succeeded" else 1
        time.sleep(POLL_S)


def _state(store: KfpStore, name: str) -> tuple[str | None, str, RunRecord | None]:
    """(KFP status, message, record) of an API run, or of a `covertype run --local` run."""
    try:
        view = view_run(store, name)
        return view.status, view.message, view.record
    except NotFound:
        pass
    try:
        record = RunStore().load(name)
    except (FileNotFoundError, ValueError, TypeError):
        return None, "", None
    status = {records.INTERRUPTED: "Error"}.get(record.status, record.status)
    return status, record.message, record


if __name__ == "__main__":
    sys.exit(main())
