"""Which process owns a long-running record (a run, a training job), and is it still alive.

A record stores its owner's pid and start time; a reader that finds the record "running"
while its owner is gone knows the work was interrupted (e.g. kill -9), not still going.
"""
from __future__ import annotations

import os
from pathlib import Path


def current_owner() -> dict:
    """This process, as stored in a record."""
    return {"pid": os.getpid(), "startTicks": start_ticks(os.getpid())}


def start_ticks(pid: int) -> int | None:
    """The process start time from /proc (None elsewhere): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_alive(owner: dict) -> bool:
    """Whether the recorded owner process still runs (the same process, not a reused pid)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("startTicks") in (None, start_ticks(pid))
