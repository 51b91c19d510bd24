"""The benchmark harness measures what it says: whole process trees, profiles, first-run phases.

No timing assertions: CPU and memory are checked against lower bounds the test itself burns or
allocates, so a busy machine cannot make them fail.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package
from bench import bench_firstrun, proctree  # noqa: E402
from bench.profile import IDLE, SHUTDOWN, STARTUP, run_profile, summarise, top_items  # noqa: E402

# A parent forks a child that forks a grandchild and exits at once: the grandchild is an orphan
# (reparented to the subreaper). It touches 150 MB and tells the parent, which waits 1 s
# (the sampler sees the tree) and exits; the orphan then burns 0.4 s of CPU on its own.
ORPHAN_TREE = textwrap.dedent("""
    import os, time
    ready, told = os.pipe()
    if os.fork() == 0:
        if os.fork() == 0:
            block = bytearray(150 * 1024 * 1024)
            for index in range(0, len(block), 4096):
                block[index] = 1
            os.write(told, b"x")
            end = time.process_time() + 0.4
            while time.process_time() < end:
                pass
            os._exit(0)
        os._exit(0)
    os.wait()
    os.read(ready, 1)
    time.sleep(1.0)
    print("parent done", flush=True)
""")


def test_tree_cost_counts_orphaned_descendants(tmp_path: Path) -> None:
    cost = proctree.measure([sys.executable, "-c", ORPHAN_TREE], tmp_path / "log",
                            dict(os.environ), tmp_path, interval=0.02)
    assert cost.exit_code == 0
    assert cost.cpu_s >= 0.4  # the orphan's CPU, reaped by the subreaper, is in the tree's
    assert cost.peak_pss_mb >= 150  # its touched pages are private: all in its PSS
    assert cost.peak_rss_mb >= cost.peak_pss_mb
    assert cost.lingering == []
    assert "parent done" in (tmp_path / "log").read_text()


def test_lingering_descendants_are_killed_and_named(tmp_path: Path) -> None:
    daemon = ("import os, time\n"
              "if os.fork() == 0:\n"
              "    os.setsid(); time.sleep(60); os._exit(0)\n")
    cost = proctree.measure([sys.executable, "-c", daemon], tmp_path / "log",
                            dict(os.environ), tmp_path, linger=0.3)
    assert len(cost.lingering) == 1 and "time.sleep(60)" in cost.lingering[0]


def test_a_failing_command_is_an_error_with_its_last_lines(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"exited with 3: .*boom"):
        proctree.measure([sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                         tmp_path / "log", dict(os.environ), tmp_path)


def test_stamped_output_lines_carry_their_arrival_time(tmp_path: Path) -> None:
    cost = proctree.measure([sys.executable, "-c", "print('one'); print('two')"],
                            tmp_path / "log", dict(os.environ), tmp_path, stamp=True)
    lines = (tmp_path / "log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["one", "two"]
    stamps = [float(line.split(" ", 1)[0]) for line in lines]
    assert cost.start_unix <= stamps[0] <= stamps[1] <= cost.end_unix + 1


def _step(start: str, end: str, parent: str = "") -> dict:
    return {"start": f"2026-12-03T10:00:{start}Z", "end": f"2026-12-03T10:00:{end}Z",
            "parent": parent, "reused": ""}


def test_run_profile_splits_start_up_steps_idle_and_shut_down() -> None:
    start = run_profile({"steps": {}}, 0, 0)  # no step ran: the whole run is one item
    assert list(start) == ["whole run (no step ran)"]
    record = {"steps": {"a": _step("02.000", "05.000"), "b": _step("03.000", "04.000"),
                        "gate": _step("06.000", "09.000"),
                        "c": _step("06.500", "08.000", parent="gate")}}
    origin = 1796292000.0  # 2026-12-03T10:00:00Z
    late = run_profile({"steps": {"a": _step("00.000", "00.000")}}, origin + 5, origin + 5)
    assert late[STARTUP] == 0  # never negative, whatever the clocks say
    profile = run_profile(record, origin + 1.0, origin + 10.0)
    assert profile == {STARTUP: 1.0, IDLE: 1.5, SHUTDOWN: 2.0, "step a": 3.0, "step b": 1.0,
                       "step c": 1.5}  # the sub-DAG "gate" is not a step of its own


def test_profile_summary_lists_the_runners_items_first() -> None:
    summary = summarise([{STARTUP: 1.0, "step x": 5.0}, {STARTUP: 3.0, "step x": 7.0}])
    assert summary["step x"] == {"median": 6.0, "min": 5.0, "max": 7.0, "values": [5.0, 7.0]}
    lines = top_items(summary)
    assert lines[0].endswith(STARTUP) and "2.00 s" in lines[0]
    assert lines[1].endswith("step x")


def test_first_run_phases_come_from_the_stamped_make_output(tmp_path: Path) -> None:
    log = tmp_path / "make.log"
    log.write_text("\n".join([
        "100.5 setup: creating .venv with python3.11",
        "120.0 setup: done with uv in 19.5 s: 122 packages",
        "121.0 .venv/bin/dsl-compile --py pipeline/covertype_training_pipeline.py",
        "123.0 .venv/bin/covertype run --local --package covertype_training_pipeline.yaml",
        "126.5 Run 20261203-072828-e13c8c started",
        "140.0 Run 20261203-072828-e13c8c: Succeeded in 13.4 s"]) + "\n")
    assert bench_firstrun._phases(log, 100.0, 141.0) == {
        "setup": 20.0, "compile": 3.0, "load": 3.5, "pipeline": 13.5, "summary and exit": 1.0}
    log.write_text("120.0 setup: done with uv in 19.5 s\n")
    with pytest.raises(RuntimeError, match="no line for the end of compile"):
        bench_firstrun._phases(log, 100.0, 141.0)


def test_first_run_refuses_a_run_that_did_not_deploy(tmp_path: Path) -> None:
    run = tmp_path / ".covertype" / "runs" / "r1"
    run.mkdir(parents=True)
    record = {"run_id": "r1", "status": "Succeeded",
              "steps": {"evaluate-model": {"status": "Succeeded"},
                        "deploy-model": {"status": "Skipped"}}}
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="deploy step Skipped"):
        bench_firstrun._check_deployed(tmp_path)
    record["steps"]["deploy-model"]["status"] = "Succeeded"
    (run / "run.json").write_text(json.dumps(record))
    assert bench_firstrun._check_deployed(tmp_path) == "r1"
