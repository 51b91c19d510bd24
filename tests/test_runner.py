"""The local runner's Argo semantics, on small workflows of real `sh` steps."""
from __future__ import annotations

import time

import pytest
import yaml

from pipeline.local import records
from pipeline.local.argo import evaluate_condition, substitute
from pipeline.local.records import RunRecord, RunStore
from pipeline.local.runner import LocalRunner
from pipeline.local.workflow import Workflow, WorkflowError


def _container(name: str, script: str, outputs: tuple[str, ...] = (), inputs=(), retries=0,
               artifacts_in=()) -> dict:
    template = {
        "name": name,
        "container": {"image": "alpine", "command": ["sh", "-ec", script]},
        "inputs": {"parameters": [{"name": n} for n in inputs],
                   "artifacts": [{"name": a, "path": f"/tmp/inputs/{a}/data"}
                                 for a in artifacts_in]},
        "outputs": {
            "parameters": [{"name": f"{name}-{o}", "valueFrom": {"path": f"/tmp/outputs/{o}/data"}}
                           for o in outputs],
            "artifacts": [{"name": f"{name}-{o}", "path": f"/tmp/outputs/{o}/data"}
                          for o in outputs],
        },
    }
    if retries:
        template["retryStrategy"] = {"limit": str(retries)}
    return template


def _workflow(tmp_path, templates: list[dict], tasks: list[dict], params=None) -> Workflow:
    document = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"generateName": "demo-"},
        "spec": {"entrypoint": "main", "arguments": {"parameters": params or []},
                 "templates": [{"name": "main", "dag": {"tasks": tasks},
                                "inputs": {"parameters": [{"name": item["name"]}
                                                          for item in params or []]}},
                               *templates]},
    }
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return Workflow.load(path)


def _run(tmp_path, workflow: Workflow, **params) -> RunRecord:
    store = RunStore(tmp_path / "runs")
    record = RunRecord(run_id="r1", pipeline=workflow.name, package="",
                       parameters=workflow.resolve_parameters(params))
    return LocalRunner(workflow, record, store, "http://127.0.0.1:9").run()


def test_outputs_conditions_and_parallel_steps(tmp_path):
    templates = [
        _container("a", "mkdir -p /tmp/outputs/x; printf %s \"$0\" > /tmp/outputs/x/data".replace(
            "\"$0\"", "{{inputs.parameters.n}}"), outputs=("x",), inputs=("n",)),
        _container("b", "sleep 0.6; date +%s.%N > /tmp/outputs/t/data", outputs=("t",)),
        _container("c", "sleep 0.6; date +%s.%N > /tmp/outputs/t/data", outputs=("t",)),
        _container("d", "cat /tmp/inputs/x/data > /tmp/outputs/y/data", outputs=("y",),
                   artifacts_in=("x",)),
        _container("e", "true"),
        {"name": "cond", "inputs": {"parameters": [{"name": "v"}]},
         "dag": {"tasks": [{"name": "e", "template": "e"}]}},
    ]
    tasks = [
        {"name": "a", "template": "a",
         "arguments": {"parameters": [{"name": "n", "value": "{{inputs.parameters.n}}"}]}},
        {"name": "b", "template": "b", "dependencies": ["a"]},
        {"name": "c", "template": "c", "dependencies": ["a"]},
        {"name": "d", "template": "d", "dependencies": ["a"],
         "when": "{{tasks.a.outputs.parameters.a-x}} > 2.5",
         "arguments": {"artifacts": [{"name": "x", "from": "{{tasks.a.outputs.artifacts.a-x}}"}]}},
        {"name": "cond", "template": "cond", "dependencies": ["a"],
         "when": "{{tasks.a.outputs.parameters.a-x}} < 2.5",
         "arguments": {"parameters": [{"name": "v", "value": "1"}]}},
    ]
    workflow = _workflow(tmp_path, templates, tasks, [{"name": "n", "value": "1"}])
    started = time.monotonic()
    record = _run(tmp_path, workflow, n="3")
    assert record.status == records.SUCCEEDED, record.message
    assert record.steps["a"].outputs == {"a-x": "3"}
    assert record.steps["d"].outputs == {"d-y": "3"}  # artifact passed
    assert record.steps["cond"].status == records.SKIPPED
    assert record.steps["cond"].message == "when '3 < 2.5' is false"
    assert record.steps["e"].status == records.SKIPPED
    b, c = float(record.steps["b"].outputs["b-t"]), float(record.steps["c"].outputs["c-t"])
    assert abs(b - c) < 0.4  # b and c ran side by side
    assert time.monotonic() - started < 3
    saved = RunStore(tmp_path / "runs").load("r1")
    assert saved.steps["a"].duration_s is not None and saved.status == records.SUCCEEDED


def test_retry_strategy_and_failure_tail(tmp_path):
    counter = tmp_path / "count"
    flaky = _container("flaky", f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3",
                       retries=2)
    broken = _container("broken", "echo first; echo 'the reason'; exit 3")
    after = _container("after", "true")
    tasks = [{"name": "flaky", "template": "flaky"},
             {"name": "broken", "template": "broken", "dependencies": ["flaky"]},
             {"name": "after", "template": "after", "dependencies": ["broken"]}]
    record = _run(tmp_path, _workflow(tmp_path, [flaky, broken, after], tasks))
    assert record.steps["flaky"].status == records.SUCCEEDED
    assert record.steps["flaky"].attempts == 3
    assert record.status == records.FAILED
    assert record.message == "step broken failed (exit 3): first | the reason"
    assert record.steps["after"].status == records.OMITTED
    log = (tmp_path / "runs" / "r1" / record.steps["broken"].log).read_text()
    assert log == "first\nthe reason\n"


def test_parameters_are_checked(tmp_path):
    workflow = _workflow(tmp_path, [_container("a", "true")], [{"name": "a", "template": "a"}],
                         [{"name": "required"}, {"name": "optional", "value": "x"}])
    with pytest.raises(WorkflowError, match="unknown pipeline parameter 'nope'"):
        workflow.resolve_parameters({"required": "1", "nope": "2"})
    with pytest.raises(WorkflowError, match="'required' has no default; pass it with --param"):
        workflow.resolve_parameters({})
    assert workflow.resolve_parameters({"required": "1"}) == {"required": "1", "optional": "x"}


def test_placeholders_and_conditions():
    scope = {"inputs.parameters.a": "1"}
    assert substitute("x{{inputs.parameters.a}}y {{item}} {{ notaprefix }}", scope) == (
        "x1y {{item}} {{ notaprefix }}")
    with pytest.raises(WorkflowError, match="cannot resolve"):
        substitute("{{inputs.parameters.missing}}", scope)
    assert evaluate_condition("0.71 > 0.69") and not evaluate_condition("0.69 > 0.69")
    assert evaluate_condition('"abc" == "abc"') and evaluate_condition("10 > 9")
    assert not evaluate_condition('"1.0" == "1"')  # quoted: strings, as govaluate compares
    with pytest.raises(WorkflowError, match="unsupported when expression"):
        evaluate_condition("true")


def test_not_a_workflow(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: Pod\n")
    with pytest.raises(WorkflowError, match="not an Argo Workflow"):
        Workflow.load(path)
    with pytest.raises(WorkflowError, match="no such pipeline package"):
        Workflow.load(tmp_path / "missing.yaml")


def test_steps_reach_both_ml_apis_through_their_switches(tmp_path):
    step = _container("env", 'mkdir -p /tmp/outputs/v; printf "%s %s" '
                             '"$AI_PLATFORM_EMULATOR_HOST" "$VERTEX_AI_EMULATOR_HOST" '
                             "> /tmp/outputs/v/data", outputs=("v",))
    record = _run(tmp_path, _workflow(tmp_path, [step], [{"name": "env", "template": "env"}]))
    assert record.status == records.SUCCEEDED, record.message
    assert record.steps["env"].outputs == {"env-v": "http://127.0.0.1:9 http://127.0.0.1:9"}
