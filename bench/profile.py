"""Where a local run's wall time goes, from its run.json and the measured process times.

The profile splits the process's life into start-up (process start to the first step), each
step's own duration, idle time between the first and the last step when no step was running
(orchestration: scheduling, output passing, the runner's own work), and shut-down (the last
step's end to process exit). Steps that run in parallel overlap, so the items can add up to
more than the wall time; the start-up, idle and shut-down items are what the runner adds.
"""
from __future__ import annotations

from datetime import datetime

from bench import stats

STARTUP = "start-up (process start to first step: imports, checks, data)"
IDLE = "idle between steps (no step running: the runner's own work)"
SHUTDOWN = "shut-down (last step end to process exit)"


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_profile(record: dict, start_unix: float, end_unix: float) -> dict[str, float]:
    """Seconds per item for one run; container steps only (sub-DAG groups left out)."""
    parents = {step.get("parent") for step in record["steps"].values()}
    steps = [(name, _unix(step["start"]), _unix(step["end"]))
             for name, step in record["steps"].items()
             if name not in parents and step.get("start") and step.get("end")
             and not step.get("reused")]
    if not steps:
        return {"whole run (no step ran)": end_unix - start_unix}
    steps.sort(key=lambda item: item[1])
    busy_until, idle = steps[0][1], 0.0
    for _, begin, end in steps:
        idle += max(0.0, begin - busy_until)
        busy_until = max(busy_until, end)
    profile = {STARTUP: steps[0][1] - start_unix, IDLE: idle,
               SHUTDOWN: end_unix - busy_until}
    profile.update({f"step {name}": end - begin for name, begin, end in steps})
    return {item: round(max(0.0, seconds), 3) for item, seconds in profile.items()}


def summarise(profiles: list[dict[str, float]]) -> dict[str, dict]:
    """Median [min-max] of each item over the repeats, largest median first."""
    items = {item for profile in profiles for item in profile}
    summary = {item: stats([profile.get(item, 0.0) for profile in profiles]) for item in items}
    return dict(sorted(summary.items(), key=lambda pair: -pair[1]["median"]))


def top_items(summary: dict[str, dict], count: int = 6) -> list[str]:
    """The runner's own items (start-up, idle, shut-down) and the largest others, as lines."""
    own = [item for item in (STARTUP, IDLE, SHUTDOWN) if item in summary]
    others = [item for item in summary if item not in own][:count]
    return [f"{summary[item]['median']:6.2f} s  {item}" for item in own + others]
