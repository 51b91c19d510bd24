"""Each step's own view of the fixed paths it writes: parallel ContainerOps writing the same
`/tmp/output`, named in their command (`tee /tmp/output`) or not, never read each other's.

Steps run as real processes through the real runner; the system's /tmp is checked to be left
alone. Where no private /tmp can be had (here: the probe made to say so), such steps run one
at a time and their logs say so.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import kfp
import pytest
from kfp import dsl

from pipeline.local import fixed_paths, records
from pipeline.local.records import RunRecord
from pipeline.local.run_local import run_local

VALUES = ("alpha", "beta", "gamma")


def _compile(pipeline, folder: Path) -> Path:
    path = folder / "pipeline.yaml"
    kfp.compiler.Compiler().compile(pipeline, str(path))
    return path


def _writers(path: str, named: bool) -> object:
    """Three parallel steps writing `path`, then a step joining what each wrote."""
    head, tail = path[:-3], path[-3:]  # the program builds the path: it is not in its command
    script = (f'echo "$0" | tee {path}' if named else
              f'echo "began $(date +%s%N)"; sleep 0.3; p={head}; echo "$0" > "${{p}}{tail}"; '
              'sleep 0.3; echo "ended $(date +%s%N)"')

    @dsl.pipeline(name="fixed paths")
    def writers():
        ops = [dsl.ContainerOp(name=f"write-{value}", image="alpine",
                               command=["sh", "-c", script, value],
                               file_outputs={"out": path}) for value in VALUES]
        dsl.ContainerOp(name="join", image="alpine",
                        command=["sh", "-c", 'echo "$0 $1 $2" | tee /tmp/output',
                                 *[op.outputs["out"] for op in ops]],
                        file_outputs={"out": "/tmp/output"})
    return writers


def _run(pipeline, tmp_path: Path) -> RunRecord:
    return run_local(_compile(pipeline, tmp_path), {}, rows=1000, use_cache=False)


def _check_outputs(record: RunRecord) -> None:
    assert record.status == records.SUCCEEDED, record.message
    for value in VALUES:
        assert record.steps[f"write-{value}"].outputs == {f"write-{value}-out": value}
    joined = Path(record.steps["join"].artifacts["join-out"]).read_text()  # consumed by none
    assert joined == "alpha beta gamma\n"


def _span(record: RunRecord, step: str) -> tuple[int, int]:
    """When the step's process began and ended (nanoseconds, as it printed them)."""
    times = dict(line.split() for line in _log(record, step).splitlines()
                 if line.startswith(("began ", "ended ")))
    return int(times["began"]), int(times["ended"])


def _log(record: RunRecord, step: str) -> str:
    from pipeline.local.records import RunStore

    return (RunStore().folder(record.run_id) / record.steps[step].log).read_text()


def test_paths_named_in_the_command_are_the_steps_own(home, tmp_path):
    _check_outputs(_run(_writers("/tmp/output", named=True), tmp_path))


@pytest.mark.skipif(not fixed_paths.private_tmp_available(),
                    reason="this system gives processes no private /tmp")
def test_paths_a_program_writes_unnamed_get_a_private_tmp(home, tmp_path):
    path = f"/tmp/covertype-test-{uuid.uuid4().hex[:8]}/output"
    record = _run(_writers(path, named=False), tmp_path)
    _check_outputs(record)
    assert not Path(path).parent.exists()  # the system's /tmp was never written
    assert "runs alone" not in _log(record, "write-alpha")  # not serialised


def test_without_a_private_tmp_such_steps_run_one_at_a_time(home, tmp_path, monkeypatch):
    monkeypatch.setattr(fixed_paths, "private_tmp_available", lambda: False)
    path = f"/tmp/covertype-test-{uuid.uuid4().hex[:8]}/output"
    record = _run(_writers(path, named=False), tmp_path)
    _check_outputs(record)
    assert not Path(path).parent.exists()  # moved into the steps' folders, nothing left
    spans = sorted(_span(record, f"write-{value}") for value in VALUES)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False))
    assert _log(record, "write-beta").startswith(
        f"note: this step uses {path} without naming it in its command, and this system gives "
        "steps no private /tmp, so it runs alone")
    assert "runs alone" not in _log(record, "join")  # it names its path: no need


def test_one_at_a_time_refuses_a_path_left_by_something_else(home, tmp_path, monkeypatch):
    monkeypatch.setattr(fixed_paths, "private_tmp_available", lambda: False)
    folder = Path(f"/tmp/covertype-test-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    try:
        (folder / "output").write_text("someone else's")
        record = _run(_writers(str(folder / "output"), named=False), tmp_path)
        assert record.status == records.FAILED
        assert f"{folder / 'output'} already exists on this machine" in record.message
        assert (folder / "output").read_text() == "someone else's"
    finally:
        (folder / "output").unlink()
        folder.rmdir()
