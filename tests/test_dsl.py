"""The KFP v1 DSL beyond this project's pipeline, run locally with Argo's semantics.

One small pipeline per construct, written with kfp 1.8's DSL, compiled by kfp's compiler and
run by the local runner (in process, or through the real `covertype` CLI); each test checks
the values that come out. Components are lightweight Python functions, run as processes.
"""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kfp
import pytest
from kfp import dsl
from kfp.components import create_component_from_func

from pipeline.local import records
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.records import RunRecord, RunStore
from pipeline.local.run_local import resume_local, run_local

COVERTYPE = str(Path(sys.executable).with_name("covertype"))


def component(func):
    return create_component_from_func(func, base_image="python:3.11")


@component
def square(x: int) -> int:
    return x * x


@component
def total(values) -> int:
    import json
    return sum(int(value) for value in json.loads(values))


@component
def echo(text: str) -> str:
    print(text)
    return text


@component
def multiply(a: int, b: int) -> int:
    return a * b


@component
def decrement(n: int) -> int:
    return n - 1


@component
def people() -> str:
    import json
    return json.dumps([{"who": "ada/lovelace", "born": 1815}, {"who": "alan", "born": 1912}])


@component
def greet(who: str, born: int) -> str:
    return f"{who}:{born}"


@component
def maybe_fail(fail: bool) -> str:
    if fail:
        raise SystemExit(2)
    return "body ran"


@component
def flaky(marker: str) -> str:
    import pathlib
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise SystemExit(1)
    return "second try"


@component
def square_unless_marked(x: int, marker: str) -> int:
    """Square x; fail for 3 the first time (it leaves a marker)."""
    import pathlib
    if x == 3 and not pathlib.Path(marker).exists():
        pathlib.Path(marker).write_text("failed once")
        raise SystemExit(1)
    return x * x


@component
def hang(pid_file: str) -> str:
    import os
    import pathlib
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"])
    pathlib.Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(300)
    return "never"


@component
def write_text(path: str, text: str):
    import pathlib
    pathlib.Path(path).write_text(text)


@component
def read_text(path: str) -> str:
    import pathlib
    return pathlib.Path(path).read_text()


@component
def crowd(folder: str, item: int) -> int:
    """How many steps of the crowd run at once, as this step sees it (up to 30 s)."""
    import pathlib
    import time
    root = pathlib.Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    mine = root / f"running-{item}"
    mine.touch()
    seen, met, deadline = 1, None, time.time() + 30
    while time.time() < deadline:
        count = len(list(root.glob("running-*")))
        seen = max(seen, count)
        met = met or (time.time() if count > 1 else None)
        if met and time.time() - met > 0.5:
            break
        time.sleep(0.05)
    mine.unlink()
    return seen


# Pipelines ---------------------------------------------------------------------------------
@dsl.pipeline(name="fan-in")
def fan_in_pipeline():
    with dsl.ParallelFor([1, 2, 3, 4]) as number:
        squared = square(number)
        # dsl-compile keeps an output parameter only where a step consumes it as one.
        decrement(squared.output)
    total(squared.output)


@dsl.pipeline(name="fan-in-dropped")
def dropped_fan_in_pipeline():
    with dsl.ParallelFor([1, 2, 3, 4]) as number:
        squared = square(number)
    total(squared.output)


@dsl.pipeline(name="resumable")
def resumable_pipeline(marker: str):
    with dsl.ParallelFor([1, 2, 3, 4]) as number:
        squared = square_unless_marked(number, marker)
        decrement(squared.output)
    total(squared.output)


@dsl.pipeline(name="dict-items")
def dict_items_pipeline():
    with dsl.ParallelFor([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]) as entry:
        echo(f"{entry.a}-{entry.b}")
        echo(entry)
        dsl.ContainerOp(name="shout", image="alpine", command=["sh", "-c"],
                        arguments=[f"echo {entry.b} | tr a-z A-Z > /tmp/out.txt"],
                        file_outputs={"out": "/tmp/out.txt"})


@dsl.pipeline(name="with-param")
def with_param_pipeline():
    with dsl.ParallelFor(people().output) as person:
        greet(person.who, person.born)  # not .name: a PipelineParam field


@dsl.pipeline(name="nested")
def nested_pipeline():
    with dsl.ParallelFor([1, 2]) as outer:
        with dsl.ParallelFor([10, 20]) as inner:
            multiply(outer, inner)


@dsl.pipeline(name="condition-in-loop")
def condition_in_loop_pipeline():
    with dsl.ParallelFor([1, 2, 3, 4]) as number:
        with dsl.Condition(number > 2):
            echo(number)


@dsl.graph_component
def countdown(n: int):
    left = decrement(n)
    with dsl.Condition(left.output > 0):
        countdown(left.output)


@dsl.pipeline(name="recursion")
def recursion_pipeline(start: int = 3):
    countdown(start)


@dsl.pipeline(name="exit-handler")
def exit_handler_pipeline(fail: bool = True):
    with dsl.ExitHandler(echo("status {{workflow.status}}")):
        body = maybe_fail(fail)
        echo(body.output)


def retry_pipeline(policy: str):
    @dsl.pipeline(name="retry")
    def pipeline(marker: str):
        flaky(marker).set_retry(2, policy=policy)
    return pipeline


@dsl.pipeline(name="timeout")
def timeout_pipeline(pid_file: str):
    hang(pid_file).set_timeout(3)


@dsl.pipeline(name="workflow-timeout")
def workflow_timeout_pipeline(pid_file: str):
    dsl.get_pipeline_conf().set_timeout(3)
    with dsl.ExitHandler(echo("cleanup after {{workflow.status}}")):
        hang(pid_file)


@dsl.pipeline(name="parallelism")
def parallelism_pipeline(folder: str):
    dsl.get_pipeline_conf().set_parallelism(2)
    with dsl.ParallelFor([1, 2, 3, 4]) as item:
        crowd(folder, item)


@dsl.pipeline(name="sub-dag-parallelism")
def sub_dag_parallelism_pipeline(folder: str):
    with dsl.SubGraph(parallelism=2):
        with dsl.ParallelFor([1, 2, 3, 4]) as item:
            crowd(folder, item)


@dsl.pipeline(name="after")
def after_pipeline(path: str):
    first = write_text(path, "written first")
    read_text(path).after(first)


@dsl.pipeline(name="placeholders")
def placeholders_pipeline(run_id: str = dsl.RUN_ID_PLACEHOLDER):
    echo(f"{run_id}|{{{{workflow.name}}}}|{{{{workflow.namespace}}}}|"
         f"{dsl.EXECUTION_ID_PLACEHOLDER}")


@dsl.pipeline(name="volume")
def volume_pipeline():
    volume = dsl.VolumeOp(name="make-volume", resource_name="data", size="1Gi")
    dsl.ContainerOp(name="use-volume", image="alpine", command=["ls", "/data"],
                    pvolumes={"/data": volume.volume})


@dsl.pipeline(name="sidecar")
def sidecar_pipeline():
    dsl.ContainerOp(name="with-sidecar", image="alpine", command=["true"],
                    sidecars=[dsl.Sidecar(name="helper", image="alpine")])


@dsl.pipeline(name="gpu")
def gpu_pipeline():
    echo("needs a GPU").set_gpu_limit(1)


# Helpers -----------------------------------------------------------------------------------
def compiled(pipeline, folder: Path) -> Path:
    path = folder / f"{pipeline.__name__}.yaml"
    kfp.compiler.Compiler().compile(pipeline, str(path))
    return path


def run(pipeline, tmp_path: Path, **params: object) -> RunRecord:
    return run_local(compiled(pipeline, tmp_path), {k: str(v) for k, v in params.items()},
                     rows=1000, use_cache=False)


def covertype(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COVERTYPE, *args], env={**os.environ, "COVERTYPE_HOME": str(home)},
                          capture_output=True, text=True, timeout=300)


def outputs_of(record: RunRecord, template: str) -> dict[str, str]:
    """Step name -> the single output of each step that ran `template`."""
    found = {}
    for step in record.steps.values():
        if step.template == template and step.status == records.SUCCEEDED:
            values = list(step.outputs.values()) or [
                Path(path).read_text() for name, path in step.artifacts.items()
                if name != "mlpipeline-ui-metadata"]
            found[step.name] = values[0]
    return found


def alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


# Tests -------------------------------------------------------------------------------------
def test_fan_in_squares_and_sums_through_the_cli(home, tmp_path):
    result = covertype(home, "run", "--local", "--package",
                       str(compiled(fan_in_pipeline, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    record = RunStore(home / "runs").list()[0]
    assert sorted(outputs_of(record, "square").values(), key=int) == ["1", "4", "9", "16"]
    assert record.steps["for-loop-2"].outputs == {"square-Output": '["1","4","9","16"]'}
    assert outputs_of(record, "total") == {"total": "30"}
    assert record.parameters == {}  # no project_id/gcs_root forced on a foreign pipeline
    shown = covertype(home, "runs", "show", record.run_id)
    for text in (result.stdout, shown.stdout):
        lines = [line.split() for line in text.splitlines()]
        assert ["total", "total-Output", "30"] in lines
        assert ["for-loop-2", "square-Output", '["1","4","9","16"]'] in lines
        assert "deploy" not in text.lower() and "Evaluation" not in text


def test_resume_reruns_only_what_failed_in_a_loop(home, tmp_path):
    first = run(resumable_pipeline, tmp_path, marker=tmp_path / "marker")
    assert first.status == records.FAILED
    assert first.message.startswith("step for-loop-2(2:3).square-unless-marked failed (exit 1)")
    done_before = {name for name, step in first.steps.items()
                   if step.status == records.SUCCEEDED}
    resumed = resume_local(first.run_id, use_cache=False)
    assert resumed.status == records.SUCCEEDED, resumed.message
    assert outputs_of(resumed, "total") == {"total": "30"}
    assert {name for name, step in resumed.steps.items() if step.reused == "resume"} == (
        done_before)
    assert resumed.steps["for-loop-2(2:3).square-unless-marked"].reused == ""


def test_loop_over_dicts_with_item_fields(home, tmp_path):
    record = run(dict_items_pipeline, tmp_path)
    assert record.status == records.SUCCEEDED, record.message
    assert sorted(outputs_of(record, "echo").values()) == ["1-x", "2-y"]
    assert sorted(outputs_of(record, "echo-2").values()) == [
        '{"a":1,"b":"x"}', '{"a":2,"b":"y"}']
    assert sorted(value.strip() for value in outputs_of(record, "shout").values()) == ["X", "Y"]
    assert {"for-loop-2(0:a:1,b:x)", "for-loop-2(1:a:2,b:y)"} <= set(record.steps)


def test_loop_over_a_step_output(home, tmp_path):
    record = run(with_param_pipeline, tmp_path)
    assert record.status == records.SUCCEEDED, record.message
    assert sorted(outputs_of(record, "greet").values()) == ["ada/lovelace:1815", "alan:1912"]
    with EmulatorServer(home=home) as server:  # the run browser links each step's log
        page = httpx.get(f"{server.url}/runs/{record.run_id}", timeout=10)
        links = re.findall(r'href="(/runs/[^"]+/log)"', page.text)
        assert len(links) == 3  # people and the two greet iterations
        assert all(httpx.get(server.url + html.unescape(link), timeout=10).status_code == 200
                   for link in links)


def test_nested_loops(home, tmp_path):
    record = run(nested_pipeline, tmp_path)
    assert record.status == records.SUCCEEDED, record.message
    products = outputs_of(record, "multiply")
    assert sorted(products.values(), key=int) == ["10", "20", "20", "40"]
    assert products["for-loop-2(1:2).for-loop-4(1:20).multiply"] == "40"


def test_condition_inside_a_loop(home, tmp_path):
    record = run(condition_in_loop_pipeline, tmp_path)
    assert record.status == records.SUCCEEDED, record.message
    assert sorted(outputs_of(record, "echo").values()) == ["3", "4"]
    skipped = {step.name: step.message for step in record.steps.values()
               if step.status == records.SKIPPED}
    assert skipped == {"for-loop-2(0:1).condition-3": "when '1 > 2' is false",
                       "for-loop-2(1:2).condition-3": "when '2 > 2' is false"}


def test_recursion_counts_down(home, tmp_path):
    record = run(recursion_pipeline, tmp_path, start=3)
    assert record.status == records.SUCCEEDED, record.message
    counts = outputs_of(record, "decrement")
    assert sorted(counts.values(), key=int) == ["0", "1", "2"]
    deepest = max(counts, key=len)
    assert counts[deepest] == "0"
    assert deepest == "condition-2.graph-countdown-1.condition-2.graph-countdown-1.decrement"


@pytest.mark.parametrize("fail", [True, False])
def test_exit_handler_runs_after_the_body(home, tmp_path, fail):
    record = run(exit_handler_pipeline, tmp_path, fail=fail)
    exit_step = record.steps["echo"]
    assert exit_step.status == records.SUCCEEDED
    if fail:
        assert record.status == records.FAILED
        assert record.message.startswith("step maybe-fail failed (exit 2)")
        assert record.steps["echo-2"].status == records.OMITTED
        assert outputs_of(record, "echo") == {"echo": "status Failed"}
        again = resume_local(record.run_id, use_cache=False)  # the exit handler runs again
        assert again.status == records.FAILED and "onExit" not in again.steps
        assert again.steps["echo"].attempts == 2 and again.steps["echo"].reused == ""
    else:
        assert record.status == records.SUCCEEDED, record.message
        assert outputs_of(record, "echo") == {"echo": "status Succeeded"}
        assert outputs_of(record, "echo-2") == {"echo-2": "body ran"}
    assert exit_step.start > record.steps["maybe-fail"].end


@pytest.mark.parametrize("policy, retried", [("OnFailure", True), ("OnError", False)])
def test_retry_succeeds_on_the_second_attempt(home, tmp_path, policy, retried):
    marker = tmp_path / "marker"
    record = run(retry_pipeline(policy), tmp_path, marker=marker)
    step = record.steps["flaky"]
    assert marker.read_text() == "failed once"
    if retried:
        assert record.status == records.SUCCEEDED, record.message
        assert step.attempts == 2 and step.outputs == {} and outputs_of(record, "flaky") == {
            "flaky": "second try"}
    else:  # OnError retries only steps that could not run, not a non-zero exit
        assert record.status == records.FAILED and step.attempts == 1
        assert record.message == "step flaky failed (exit 1)"


def test_timeout_fails_the_step_and_kills_its_processes(home, tmp_path):
    pid_file = tmp_path / "pids"
    started = time.monotonic()
    record = run(timeout_pipeline, tmp_path, pid_file=pid_file)
    assert time.monotonic() - started < 120  # not the 300 s the step sleeps
    assert record.status == records.FAILED
    assert record.message == ("step hang exceeded its deadline of 3 s (activeDeadlineSeconds) "
                              "and was killed")
    assert record.steps["hang"].status == records.FAILED
    pids = [int(pid) for pid in pid_file.read_text().split()]
    for _ in range(100):
        if not any(alive(pid) for pid in pids):
            break
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_workflow_timeout_still_runs_the_exit_handler(home, tmp_path):
    record = run(workflow_timeout_pipeline, tmp_path, pid_file=tmp_path / "pids")
    assert record.status == records.FAILED
    assert record.message == ("step hang exceeded the workflow's deadline "
                              "(activeDeadlineSeconds) and was killed")
    assert outputs_of(record, "echo") == {"echo": "cleanup after Failed"}


@pytest.mark.parametrize("pipeline", [parallelism_pipeline, sub_dag_parallelism_pipeline])
def test_parallelism_limit_is_observed(home, tmp_path, pipeline):
    record = run(pipeline, tmp_path, folder=tmp_path / "crowd")
    assert record.status == records.SUCCEEDED, record.message
    seen = [int(value) for value in outputs_of(record, "crowd").values()]
    assert len(seen) == 4 and max(seen) == 2


def test_after_orders_steps_without_data(home, tmp_path):
    record = run(after_pipeline, tmp_path, path=tmp_path / "shared.txt")
    assert record.status == records.SUCCEEDED, record.message
    assert record.steps["read-text"].dependencies == ["write-text"]
    assert outputs_of(record, "read-text") == {"read-text": "written first"}


def test_workflow_placeholders(home, tmp_path):
    record = run(placeholders_pipeline, tmp_path)
    assert record.status == records.SUCCEEDED, record.message
    rid = record.run_id
    assert outputs_of(record, "echo") == {"echo": f"{rid}|{rid}|local|{rid}-{rid}-echo"}


@pytest.mark.parametrize("pipeline, message", [
    (volume_pipeline, "a Kubernetes resource step (dsl.ResourceOp, dsl.VolumeOp or "
                      "dsl.VolumeSnapshotOp) in step 'make-volume' is not supported by the "
                      "local runner; run this pipeline on a KFP cluster"),
    (sidecar_pipeline, "sidecars (dsl.Sidecar, add_sidecar) in step 'with-sidecar' is not "
                       "supported by the local runner; run this pipeline on a KFP cluster"),
    (gpu_pipeline, "the resource 'nvidia.com/gpu' (e.g. a GPU or TPU limit) in step 'echo' "
                   "is not supported by the local runner; run this pipeline on a KFP cluster"),
    (dropped_fan_in_pipeline, "{{tasks.square.outputs.parameters.square-Output}} in step "
                              "'for-loop-2' cannot be resolved: task 'square' declares no such "
                              "output; Argo refuses this workflow too"),
])
def test_unsupported_constructs_are_refused_before_anything_runs(home, tmp_path, pipeline,
                                                                 message):
    result = covertype(home, "run", "--local", "--package", str(compiled(pipeline, tmp_path)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"covertype: error: {message}"]
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
