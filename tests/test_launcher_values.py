"""Component inputs parse as the 0.2.5 launcher parses them (fire), then go through our checks.

The real `kfp_component.launcher` hands each flag to the action with fire, so the lab's default
`hypertune_settings` (a Python literal with `True`) must pass everywhere: the run parameter
checks (`make run`, local runs), the local launcher and the ml v1 stand-in, and the Vertex AI
translation. Expected values are fire's documented parse, written out here.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import discovery
from pipeline.launcher_values import google_boolean, launcher_dict, launcher_value
from pipeline.local.actions import inputs
from pipeline.local.api_schema import parse_request
from pipeline.local.errors import InvalidArgument
from pipeline.local.launcher import parse_inputs
from pipeline.parameters import ParameterError, validate
from pipeline.vertex.study import tuning_job_fields

LAB_DSL = Path(__file__).parent / "foreign" / "lab" / "covertype_training_pipeline.py"


def lab_hypertune_settings() -> str:
    """The default `hypertune_settings` of the lab-style pipeline, read from its source."""
    for node in ast.parse(LAB_DSL.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "HYPERTUNE_SETTINGS":
            return ast.literal_eval(node.value)
    raise AssertionError("no HYPERTUNE_SETTINGS in the lab-style pipeline")


LAB = lab_hypertune_settings()


@pytest.mark.parametrize(("text", "value"), [
    ("True", True), ("None", None), ("true", "true"), ("1.15", 1.15), ("2.11", 2.11),
    ("30", 30), ("01", "01"), ("v01", "v01"), ("", ""), ("gs://bucket/a", "gs://bucket/a"),
    ('["--alpha", "0.1"]', ["--alpha", "0.1"]),
    ('{"a": true, "b": null, "c": None}', {"a": "true", "b": "null", "c": None}),
    ("SELECT * FROM `a.b` WHERE x IN (1, 2)", "SELECT * FROM `a.b` WHERE x IN (1, 2)"),
])
def test_values_parse_as_fire_parses_them(text, value):
    assert launcher_value(text) == value
    assert type(launcher_value(text)) is type(value)


def test_the_lab_default_is_a_python_literal_that_fire_reads():
    assert "True" in LAB
    settings = launcher_dict(LAB, "hypertune_settings", "{}")
    assert settings["hyperparameters"]["enableTrialEarlyStopping"] is True
    assert settings["hyperparameters"]["params"][0]["discreteValues"] == [500, 1000]


@pytest.mark.parametrize("platform", ["caip", "vertex"])
def test_run_parameter_check_accepts_the_lab_default(platform):
    validate({"hypertune_settings": LAB}, platform)
    validate({"hypertune_settings": LAB.replace("True", "true")}, platform)  # JSON too


@pytest.mark.parametrize("platform", ["caip", "vertex"])
def test_make_run_check_accepts_the_lab_default(platform):
    """`make run` calls `python -m pipeline.parameters NAME=VALUE ...` before submitting."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.parameters", f"hypertune_settings={LAB}",
         "replace_existing_version=True", "dataset_id=splits"],
        env={**os.environ, "PLATFORM": platform}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_vertex_translation_of_the_lab_default():
    fields = tuning_job_fields(launcher_dict(LAB, "hypertune_settings", "{}"))
    assert fields["studySpec"]["decayCurveStoppingSpec"] == {"useElapsedDuration": False}
    assert fields["studySpec"]["metrics"] == [{"metricId": "accuracy", "goal": "MAXIMIZE"}]
    assert (fields["maxTrialCount"], fields["parallelTrialCount"]) == (2, 2)
    json_text = fields == tuning_job_fields(launcher_dict(LAB.replace("True", "true"), "h", "{}"))
    assert json_text  # JSON's true (the text 'true' after fire) means the same


@pytest.mark.parametrize(("params", "message"), [
    ({"hypertune_settings": "{'hyperparameters': {"}, "is neither JSON nor a Python literal"),
    ({"hypertune_settings": "[1, 2]"}, "hypertune_settings is list [1, 2], not an object"),
    ({"hypertune_settings": "{'hyperparameters': {1, 2}}"}, "JSON cannot carry"),
    ({"hypertune_settings": LAB.replace("True", "'yes'")},
     "enableTrialEarlyStopping is 'yes'; use true or false"),
    ({"version_id": "None"}, "version_id 'None' would reach the components as None"),
    ({"model_id": "True"}, "model_id 'True' would reach the components as the boolean True"),
    ({"dataset_id": "2024"}, "dataset_id '2024' would reach the components as the number 2024"),
    ({"replace_existing_version": "false"}, "replace_existing_version 'false' is not a boolean"),
])
@pytest.mark.parametrize("platform", ["caip", "vertex"])
def test_bad_values_are_one_line_errors(params, message, platform):
    with pytest.raises(ParameterError, match=re.escape(message)) as error:
        validate(params, platform)
    assert "\n" not in str(error.value)


def test_local_launcher_hands_over_what_fire_would():
    parsed = parse_inputs({"replace_existing_version": "True", "set_default": "False",
                           "wait_interval": "30", "python_version": "3.7", "model_id": "m",
                           "training_input": LAB, "args": '["--hptune", "True"]'})
    assert parsed["replace_existing_version"] is True and parsed["set_default"] is False
    assert parsed["wait_interval"] == 30 and parsed["python_version"] == 3.7
    assert parsed["training_input"]["hyperparameters"]["enableTrialEarlyStopping"] is True
    assert parsed["args"] == ["--hptune", "True"]
    # the actions' checks take them: a number in a field sent as text is sent as its text
    assert inputs.text("python_version", 3.7, "3.7", number_ok=True) == "3.7"
    assert inputs.text("version_id", None, "v01") == ""  # upstream: no value, a generated id
    assert inputs.flag("set_default", "true") is True
    with pytest.raises(ValueError, match="version_id is a number once the launcher"):
        inputs.text("version_id", 1, "v01")
    with pytest.raises(ValueError, match="set_default='false' is not a boolean"):
        inputs.flag("set_default", "false")  # the real 0.2.5 deploy would read it as true


def test_ml_v1_stand_in_reads_the_text_true_as_google_does():
    document = discovery.document("ml", "v1")
    body = {"jobId": "j", "trainingInput": {"hyperparameters": {
        "goal": "MAXIMIZE", "enableTrialEarlyStopping": "true"}}}
    parsed = parse_request(document, "GoogleCloudMlV1__Job", body, "job")
    assert parsed["trainingInput"]["hyperparameters"]["enableTrialEarlyStopping"] is True
    body["trainingInput"]["hyperparameters"]["enableTrialEarlyStopping"] = "yes"
    with pytest.raises(InvalidArgument, match="enableTrialEarlyStopping must be true or false"):
        parse_request(document, "GoogleCloudMlV1__Job", body, "job")
    assert [google_boolean(value) for value in (True, "false", "True", 1, None)] == [
        True, False, None, None, None]
