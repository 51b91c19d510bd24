"""The lab's ml v1 tuning settings as a Vertex AI HyperparameterTuningJob, and what is refused."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from discovery_schema import assert_conforms

from pipeline import discovery
from pipeline.covertype_training_pipeline import HYPERTUNE_SETTINGS
from pipeline.hypertune import HypertuneSpecError
from pipeline.parameters import ParameterError, validate
from pipeline.vertex.study import tuning_job_fields

DOC = discovery.document("aiplatform", "v1")


def settings(**hyperparameters) -> dict:
    """The lab's default settings with some hyperparameters fields replaced."""
    value = copy.deepcopy(HYPERTUNE_SETTINGS)
    value["hyperparameters"].update(hyperparameters)
    return value


def test_the_labs_default_translates_with_early_stopping():
    fields = tuning_job_fields(copy.deepcopy(HYPERTUNE_SETTINGS))

    assert fields == {
        "studySpec": {
            "metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
            "parameters": [
                {"parameterId": "max_iter", "discreteValueSpec": {"values": [500, 1000]},
                 "scaleType": "UNIT_LINEAR_SCALE"},
                {"parameterId": "alpha",
                 "doubleValueSpec": {"minValue": 0.0001, "maxValue": 0.001},
                 "scaleType": "UNIT_LINEAR_SCALE"},
            ],
            "algorithm": "ALGORITHM_UNSPECIFIED",
            "decayCurveStoppingSpec": {"useElapsedDuration": False},
        },
        "maxTrialCount": 6,
        "parallelTrialCount": 3,
        "maxFailedTrialCount": 0,
    }
    assert_conforms(DOC, "GoogleCloudAiplatformV1HyperparameterTuningJob", fields)


def test_every_parameter_type_scale_and_count_translates():
    fields = tuning_job_fields({"hyperparameters": {
        "goal": "MINIMIZE", "hyperparameterMetricTag": "loss", "maxTrials": 20,
        "maxParallelTrials": 4, "maxFailedTrials": 2, "algorithm": "RANDOM_SEARCH",
        "enableTrialEarlyStopping": False,
        "params": [
            {"parameterName": "layers", "type": "INTEGER", "minValue": 1, "maxValue": 8},
            {"parameterName": "rate", "type": "DOUBLE", "minValue": 1e-5, "maxValue": 0.1,
             "scaleType": "UNIT_LOG_SCALE"},
            {"parameterName": "momentum", "type": "DOUBLE", "minValue": 0.5, "maxValue": 0.99,
             "scaleType": "UNIT_REVERSE_LOG_SCALE"},
            {"parameterName": "batch", "type": "DISCRETE", "discreteValues": [16, 32.5, 64],
             "scaleType": "NONE"},
            {"parameterName": "loss", "type": "CATEGORICAL",
             "categoricalValues": ["hinge", "log_loss"]},
        ]}})

    assert fields == {
        "studySpec": {
            "metrics": [{"metricId": "loss", "goal": "MINIMIZE"}],
            "parameters": [
                {"parameterId": "layers", "integerValueSpec": {"minValue": "1", "maxValue": "8"},
                 "scaleType": "UNIT_LINEAR_SCALE"},
                {"parameterId": "rate", "doubleValueSpec": {"minValue": 1e-5, "maxValue": 0.1},
                 "scaleType": "UNIT_LOG_SCALE"},
                {"parameterId": "momentum",
                 "doubleValueSpec": {"minValue": 0.5, "maxValue": 0.99},
                 "scaleType": "UNIT_REVERSE_LOG_SCALE"},
                {"parameterId": "batch", "discreteValueSpec": {"values": [16, 32.5, 64]},
                 "scaleType": "UNIT_LINEAR_SCALE"},
                {"parameterId": "loss", "categoricalValueSpec": {"values": ["hinge", "log_loss"]}},
            ],
            "algorithm": "RANDOM_SEARCH",
        },
        "maxTrialCount": 20, "parallelTrialCount": 4, "maxFailedTrialCount": 2,
    }
    assert_conforms(DOC, "GoogleCloudAiplatformV1HyperparameterTuningJob", fields)


def test_the_service_defaults_fill_what_the_settings_leave_out():
    fields = tuning_job_fields({"hyperparameters": {"goal": "MAXIMIZE", "params": [
        {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.1, "maxValue": 0.2}]}})

    assert fields["studySpec"]["metrics"] == [
        {"metricId": "training/hptuning/metric", "goal": "MAXIMIZE"}]
    assert "decayCurveStoppingSpec" not in fields["studySpec"]
    assert (fields["maxTrialCount"], fields["parallelTrialCount"],
            fields["maxFailedTrialCount"]) == (1, 1, 0)


@pytest.mark.parametrize(("training_input", "message"), [
    (settings(resumePreviousJobId="hptune_1"),
     "hypertune_settings.hyperparameters.resumePreviousJobId has no Vertex AI equivalent "
     "(a Vertex AI study cannot resume an AI Platform job); remove it"),
    ({**settings(), "masterType": "n1-highmem-8"},
     "hypertune_settings.masterType has no Vertex AI equivalent in the tuning job component; "
     "set the component's machine_type input instead"),
    ({**settings(), "scheduling": {"maxRunningTime": "3600s"}},
     "hypertune_settings.scheduling has no Vertex AI equivalent in the tuning job component; "
     "remove it"),
    (settings(maxTrails=6),
     "hypertune_settings.hyperparameters.maxTrails is not an AI Platform field; use algorithm, "),
    (settings(params=[{"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.1,
                       "maxValue": 0.2, "scale": "UNIT_LOG_SCALE"}]),
     "hypertune_settings.hyperparameters.params[0].scale is not an AI Platform field"),
    (settings(params=[{"parameterName": "loss", "type": "CATEGORICAL",
                       "categoricalValues": ["a", "b"], "scaleType": "UNIT_LOG_SCALE"}]),
     "hypertune_settings parameter 'loss' is CATEGORICAL with scaleType UNIT_LOG_SCALE; Vertex "
     "AI scales numeric parameters only: remove scaleType"),
    (settings(params=[{"parameterName": "k", "type": "DISCRETE",
                       "discreteValues": list(range(1001))}]),
     "hypertune_settings parameter 'k' has 1001 discreteValues; Vertex AI takes at most 1000"),
    (settings(enableTrialEarlyStopping="yes"),
     "trainingInput.hyperparameters.enableTrialEarlyStopping is 'yes'; use true or false"),
    (settings(goal="BEST"), "trainingInput.hyperparameters.goal is 'BEST'; set it to MAXIMIZE"),
    ({"trainingInput": settings()}, 'hypertune_settings must be a JSON object with a '
                                    '"hyperparameters" object'),
], ids=["resume", "masterType", "scheduling", "unknown-field", "unknown-param-field",
        "categorical-scale", "too-many-values", "early-stopping-type", "bad-goal", "wrapped"])
def test_settings_without_a_vertex_equivalent_are_refused(training_input, message):
    with pytest.raises(HypertuneSpecError) as error:
        tuning_job_fields(training_input)

    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_run_parameters_are_checked_for_the_platform():
    text = json.dumps(settings(resumePreviousJobId="hptune_1"))

    validate({"hypertune_settings": text})  # AI Platform accepts it
    with pytest.raises(ParameterError, match=r"^hypertune_settings\.hyperparameters\."
                                             r"resumePreviousJobId has no Vertex AI equivalent"):
        validate({"hypertune_settings": text}, "vertex")
    validate({"hypertune_settings": json.dumps(HYPERTUNE_SETTINGS)}, "vertex")


def test_make_run_checks_use_the_platform_from_the_environment():
    text = json.dumps(settings(resumePreviousJobId="hptune_1"))
    command = [sys.executable, "-m", "pipeline.parameters", f"hypertune_settings={text}"]

    caip = subprocess.run(command, capture_output=True, text=True, env={"PLATFORM": "caip"})
    vertex = subprocess.run(command, capture_output=True, text=True, env={"PLATFORM": "vertex"})
    typo = subprocess.run(command, capture_output=True, text=True, env={"PLATFORM": "gcp"})

    assert (caip.returncode, caip.stderr) == (0, "")
    assert vertex.returncode == 2 and vertex.stderr.count("\n") == 1
    assert vertex.stderr.startswith("error: hypertune_settings.hyperparameters.resumePreviousJobId")
    assert typo.returncode == 2
    assert typo.stderr == ("error: PLATFORM='gcp' is not a platform; set it to caip (AI Platform, "
                           "the lab's form) or vertex (Vertex AI)\n")
