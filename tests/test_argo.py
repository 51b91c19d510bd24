"""Argo's small languages as the local runner evaluates them, and the load-time refusals."""
from __future__ import annotations

import pytest
import yaml

from pipeline.local.argo import (
    RetryStrategy,
    WorkflowError,
    aggregate,
    evaluate_condition,
    item_label,
    item_scope,
    parse_duration,
    substitute_item,
)
from pipeline.local.workflow import Workflow


@pytest.mark.parametrize("expression, expected", [
    ('"heads" == "heads"', True),
    ('"heads" != "tails"', True),
    ('"1.0" == "1"', False),  # quoted operands are strings
    ("1.0 == 1", True),  # bare ones numbers
    ('"1" == 1', False),  # a string never equals a number
    ('"b" > "a"', True),  # strings compare lexically
    ("10 > 9", True),
    ("-0.5 < 0", True),
    ("0.69 >= 0.69", True),
    ("true == true", True),
])
def test_when_expressions_as_govaluate(expression, expected):
    assert evaluate_condition(expression) is expected


@pytest.mark.parametrize("expression, message", [
    ("heads == heads", "'heads' is neither a number nor a quoted string"),
    ('"10" > 9', "compares two numbers or two strings"),
    ("1 > 0 && 2 > 1", "unsupported when expression"),
    ("true", "unsupported when expression"),
])
def test_when_expressions_argo_cannot_evaluate(expression, message):
    with pytest.raises(WorkflowError, match=message):
        evaluate_condition(expression)


def test_loop_items_as_argo_substitutes_and_names_them():
    item = {"b": "x<y", "a": 1, "c": [1, 2]}
    scope = item_scope(item)
    assert scope == {"item": '{"a":1,"b":"x\\u003cy","c":[1,2]}', "item.a": "1",
                     "item.b": "x<y", "item.c": "[1,2]"}
    assert item_label(3, item) == "(3:a:1,b:x<y,c:[1,2])"
    assert item_scope(2.5) == {"item": "2.5"} and item_scope(True) == {"item": "true"}
    assert item_label(0, "hello") == "(0:hello)"
    assert substitute_item("{{item.a}}-{{ item.b }} {{inputs.parameters.x}}", scope) == (
        "1-x<y {{inputs.parameters.x}}")
    with pytest.raises(WorkflowError, match=r"cannot resolve \{\{item.z\}\}"):
        substitute_item("{{item.z}}", scope)


def test_loop_outputs_aggregate_into_a_json_list():
    assert aggregate(["1", "4", "9"]) == '["1","4","9"]'  # scalars stay strings, as in Argo
    assert aggregate(['{"b": 1, "a": 2}', "[3]"]) == '[{"a":2,"b":1},[3]]'
    assert aggregate(['{"a": 1}', "2"]) == '["{\\"a\\": 1}","2"]'


def test_retry_strategy_policies_and_backoff():
    strategy = RetryStrategy.of({"retryStrategy": {
        "limit": "3", "retryPolicy": "Always",
        "backoff": {"duration": "2s", "factor": 3, "cap": "10s", "maxDuration": "1m"}}})
    assert [strategy.pause(failures, False, 0) for failures in (1, 2, 3, 4)] == [
        2, 6, 10, None]
    assert strategy.pause(1, True, 59) is None  # the pause would pass maxDuration
    on_failure = RetryStrategy.of({"retryStrategy": {"limit": 1}})
    assert on_failure.pause(1, False, 0) == 0 and on_failure.pause(1, True, 0) is None
    on_error = RetryStrategy.of({"retryStrategy": {"limit": 1, "retryPolicy": "OnError"}})
    assert on_error.pause(1, False, 0) is None and on_error.pause(1, True, 0) == 0
    assert RetryStrategy.of({}).pause(1, False, 0) is None
    assert parse_duration("1m30s") == 90 and parse_duration(5) == 5
    with pytest.raises(WorkflowError, match="is not a duration"):
        parse_duration("soon")


def _load(tmp_path, templates: list[dict], spec: dict | None = None) -> Workflow:
    document = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                "metadata": {"generateName": "x-"},
                "spec": {"entrypoint": "main", "templates": templates, **(spec or {})}}
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return Workflow.load(path)


def _dag(*tasks: dict, **extra) -> dict:
    return {"name": "main", "dag": {"tasks": list(tasks)}, **extra}


def _container(name: str, script: str = "true", **extra) -> dict:
    return {"name": name, "container": {"image": "alpine", "command": ["sh", "-c", script]},
            **extra}


@pytest.mark.parametrize("templates, spec, message", [
    ([_dag({"name": "a", "template": "a"}), {"name": "a", "script": {"image": "x"}}], None,
     "a script template in step 'a' is not supported by the local runner"),
    ([_dag({"name": "a", "template": "a"}), {"name": "a", "steps": [[]]}], None,
     "a steps template in step 'a'"),
    ([_dag({"name": "a", "template": "a", "withSequence": {"count": "2"}}), _container("a")],
     None, "withSequence loops in step 'a'"),
    ([_dag({"name": "a", "template": "a", "depends": "b"}), _container("a")], None,
     "depends expressions in step 'a'"),
    ([_dag({"name": "a", "template": "a"}), _container("a", initContainers=[{}])], None,
     "init containers (add_init_container) in step 'a'"),
    ([_dag({"name": "a", "template": "a"}),
      _container("a", podSpecPatch='{"containers": []}')], None,
     "a pod spec patch (podSpecPatch) in step 'a'"),
    ([_dag({"name": "a", "template": "a"}), _container("a")], {"volumes": [{"name": "v"}]},
     "volumes (dsl.VolumeOp, pvolumes, add_volume) in the pipeline"),
    ([_dag({"name": "a", "template": "a"}), _container("a", "echo {{workflow.status}}")],
     None, "{{workflow.status}} outside the exit handler in step 'a'"),
    ([_dag({"name": "a", "template": "a",
            "arguments": {"parameters": [{"name": "p", "value": "{{item}}"}]}}),
      _container("a", inputs={"parameters": [{"name": "p"}]})], None,
     "{{item}} in step 'a' is outside a loop"),
    ([_dag({"name": "a", "template": "a", "dependencies": ["b"]},
           {"name": "b", "template": "a", "dependencies": ["a"]}), _container("a")], None,
     "dependency cycle in 'main'"),
    ([_dag({"name": "a", "template": "a"},
           {"name": "b", "template": "b",
            "arguments": {"parameters": [{"name": "p",
                                          "value": "{{tasks.a.outputs.parameters.x}}"}]}}),
      _container("a", outputs={"parameters": [{"name": "x", "valueFrom": {"path": "/x"}}]}),
      _container("b", inputs={"parameters": [{"name": "p"}]})], None,
     "{{tasks.a.outputs.parameters.x}} in step 'b' refers to task 'a', which it does not "
     "depend on"),
    ([_dag({"name": "a", "template": "a", "when": "{{workflow.name}} in (1, 2)"}),
      _container("a")], None, "the when expression"),
    ([_dag({"name": "a", "template": "a"}), _container("a", "echo {{retries}}")], None,
     "the placeholder {{retries}} in step 'a'"),
])
def test_load_refuses_what_it_cannot_run(tmp_path, templates, spec, message):
    with pytest.raises(WorkflowError) as error:
        _load(tmp_path, templates, spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_accepts_placement_only_fields(tmp_path):
    workflow = _load(tmp_path, [
        _dag({"name": "a", "template": "a"}),
        _container("a", nodeSelector={"pool": "big"}, tolerations=[{"key": "x"}]) | {
            "container": {"image": "alpine", "command": ["true"],
                          "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}},
    ], {"serviceAccountName": "pipeline-runner", "parallelism": 3,
        "imagePullSecrets": [{"name": "s"}]})
    assert workflow.parallelism == 3 and workflow.on_exit is None
