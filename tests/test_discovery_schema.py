"""The schema helper the stand-in tests rely on: it must pass Google's shapes and fail others."""
from __future__ import annotations

import pytest
from discovery_schema import SchemaMismatch, assert_conforms, schema_of_type

from pipeline import discovery

AIPLATFORM = discovery.document("aiplatform", "v1")
ML = discovery.document("ml", "v1")
BIGQUERY = discovery.document("bigquery", "v2")

TRIAL = {"id": "1", "state": "SUCCEEDED", "startTime": "2026-12-01T10:00:00.123456Z",
         "parameters": [{"parameterId": "alpha", "value": 0.001},
                        {"parameterId": "loss", "value": "log_loss"}],
         "finalMeasurement": {"stepCount": "12", "metrics": [{"metricId": "accuracy",
                                                              "value": 0.71}]}}
JOB = {"name": "projects/p/locations/us-central1/hyperparameterTuningJobs/1",
       "displayName": "tune", "state": "JOB_STATE_SUCCEEDED", "maxTrialCount": 2,
       "labels": {"run": "a"}, "trials": [TRIAL],
       "trialJobSpec": {"workerPoolSpecs": [{"replicaCount": "1",
                                             "machineSpec": {"machineType": "n1-standard-4"}}]},
       "error": {"code": 3, "message": "boom"}}
OPERATION = {"name": "projects/p/locations/l/endpoints/1/operations/2", "done": True,
             "metadata": {"@type": "type.googleapis.com/google.cloud.aiplatform.v1."
                                   "DeployModelOperationMetadata",
                          "genericMetadata": {"createTime": "2026-12-01T10:00:00Z"},
                          "deploymentStage": "SUCCESSFULLY_DEPLOYED"},
             "response": {"@type": "type.googleapis.com/google.cloud.aiplatform.v1."
                                   "DeployModelResponse",
                          "deployedModel": {"id": "7", "model": "projects/p/locations/l/models/1"}}}


def _with(value: dict, path: tuple, new: object) -> dict:
    """A deep copy of value with the item at path replaced by new."""
    import copy

    changed = copy.deepcopy(value)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return changed


def test_google_shapes_pass() -> None:
    assert_conforms(AIPLATFORM, "GoogleCloudAiplatformV1HyperparameterTuningJob", JOB)
    assert_conforms(AIPLATFORM, "GoogleLongrunningOperation", OPERATION)
    assert_conforms(AIPLATFORM, "GoogleCloudAiplatformV1Endpoint",
                    {"name": "e", "trafficSplit": {"7": 100}, "deployedModels": []})
    assert_conforms(ML, "GoogleCloudMlV1__Job",
                    {"jobId": "a", "state": "SUCCEEDED", "trainingOutput": {
                        "completedTrialCount": "1", "consumedMLUnits": 0.01, "trials": [
                            {"trialId": "1", "hyperparameters": {"alpha": "0.1"},
                             "finalMetric": {"trainingStep": "3", "objectiveValue": 0.7}}]}})
    assert_conforms(BIGQUERY, "Dataset", {"id": "p:d", "creationTime": "1700000000000",
                                          "datasetReference": {"projectId": "p",
                                                               "datasetId": "d"}})


@pytest.mark.parametrize(("schema", "value", "message"), [
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", {**JOB, "bestTrial": "1"},
     "$: unknown field 'bestTrial'"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob",
     _with(JOB, ("trials", 0, "finalMeasurement", "stepCount"), 12),
     "$.trials[0].finalMeasurement.stepCount: expected a JSON string"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob",
     _with(JOB, ("trials", 0, "finalMeasurement", "stepCount"), "12.0"),
     "expected an int64 as a decimal string"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("state",), "SUCCEEDED"),
     "$.state: expected one of JOB_STATE_UNSPECIFIED"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("trials", 0, "state"),
                                                             "FAILED"),
     "$.trials[0].state: expected one of STATE_UNSPECIFIED"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("maxTrialCount",), "2"),
     "$.maxTrialCount: expected a JSON integer"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("maxTrialCount",), True),
     "$.maxTrialCount: expected a JSON integer"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob",
     _with(JOB, ("trials", 0, "startTime"), "2026-12-01 10:00:00"),
     "expected an RFC 3339 timestamp"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("labels", "run"), 1),
     "$.labels['run']: expected a JSON string"),
    ("GoogleCloudAiplatformV1HyperparameterTuningJob", _with(JOB, ("trials",), {}),
     "$.trials: expected a JSON array"),
    ("GoogleLongrunningOperation", _with(OPERATION, ("response", "deployedModel", "extra"), 1),
     "unknown field 'extra'"),
    ("GoogleLongrunningOperation",
     _with(OPERATION, ("response", "@type"), "type.googleapis.com/google.cloud.Nope"),
     "names no schema of the document"),
    ("GoogleLongrunningOperation", _with(OPERATION, ("metadata", "deploymentStage"), "DONE"),
     "deploymentStage: expected one of"),
    ("GoogleCloudAiplatformV1Endpoint", {"trafficSplit": {"7": "100"}},
     "$.trafficSplit['7']: expected a JSON integer"),
])
def test_other_shapes_fail_with_the_path(schema: str, value: object, message: str) -> None:
    with pytest.raises(SchemaMismatch) as raised:
        assert_conforms(AIPLATFORM, schema, value)
    assert message in str(raised.value)


def test_type_urls_map_to_schemas() -> None:
    assert schema_of_type(AIPLATFORM, "google.cloud.aiplatform.v1.Endpoint") == (
        "GoogleCloudAiplatformV1Endpoint")
    assert schema_of_type(AIPLATFORM, "google.protobuf.Empty") == "GoogleProtobufEmpty"
    assert schema_of_type(ML, "google.cloud.ml.v1.Version") == "GoogleCloudMlV1__Version"
    assert schema_of_type(ML, "google.cloud.ml.v1.Nothing") is None
