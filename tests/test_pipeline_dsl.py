"""The compiled package: a valid Argo Workflow with the lab's DAG, parameters and fixes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import compile_dsl
from hera.workflows.models import Workflow as ArgoWorkflow

from pipeline.settings import Settings, SettingsError

SPLITS = ("create-training-split", "create-validation-split", "create-testing-split")


@pytest.fixture(scope="module")
def workflow(compiled_package) -> dict:
    return yaml.safe_load(compiled_package.read_text())


def _dag(workflow: dict, name: str) -> dict[str, dict]:
    template = next(t for t in workflow["spec"]["templates"] if t["name"] == name)
    return {task["name"]: task for task in template["dag"]["tasks"]}


def _template(workflow: dict, name: str) -> dict:
    return next(t for t in workflow["spec"]["templates"] if t["name"] == name)


def test_loads_in_a_real_argo_model(workflow):
    parsed = ArgoWorkflow.parse_obj(workflow)
    assert parsed.spec.entrypoint == "covertype-classifier-training"
    assert workflow["metadata"]["generateName"] == "covertype-classifier-training-"


def test_dag_order(workflow):
    tasks = _dag(workflow, "covertype-classifier-training")
    deps = {name: set(task.get("dependencies", [])) for name, task in tasks.items()}
    assert deps["create-splits-dataset"] == set()
    for split in SPLITS:  # the dataset exists before any split runs: no creation race
        assert deps[split] == {"create-splits-dataset"}
    assert deps["tune-hyperparameters"] == {"create-training-split", "create-validation-split"}
    assert deps["retrieve-best-run"] == {"tune-hyperparameters"}
    assert deps["train-final-model"] == {"retrieve-best-run", "create-training-split",
                                         "create-validation-split"}
    assert deps["evaluate-model"] == {"train-final-model", "create-testing-split"}
    assert "deploy-model" not in tasks
    assert tasks["condition-1"]["when"] == (
        "{{tasks.evaluate-model.outputs.parameters.evaluate-model-metric_value}} > "
        "{{inputs.parameters.evaluation_metric_threshold}}")
    assert set(_dag(workflow, "condition-1")) == {"deploy-model"}


# The lab's tuning job (README, "Parameters"): 6 trials, 3 in parallel, max_iter {500, 1000},
# alpha 1e-4..1e-3 on a linear scale, maximising accuracy, with early stopping.
LAB_HYPERTUNE_SETTINGS = {"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 6, "maxParallelTrials": 3,
    "hyperparameterMetricTag": "accuracy", "enableTrialEarlyStopping": True,
    "params": [
        {"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500, 1000]},
        {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001, "maxValue": 0.001,
         "scaleType": "UNIT_LINEAR_SCALE"}]}}


def test_parameters_and_defaults(workflow):
    params = {p["name"]: p.get("value") for p in workflow["spec"]["arguments"]["parameters"]}
    settings = params.pop("hypertune_settings")
    assert params == {
        "project_id": None, "gcs_root": None, "region": "us-central1",
        "source_table_name": "covertype_dataset.covertype", "dataset_id": "splits",
        "evaluation_metric_name": "accuracy", "evaluation_metric_threshold": "0.69",
        "model_id": "covertype_classifier", "version_id": "v01",
        "replace_existing_version": "True", "dataset_location": "US",
    }
    assert json.loads(settings) == LAB_HYPERTUNE_SETTINGS  # JSON (true), not Python (True)


def test_split_queries_and_paths(workflow):
    lots = {"create-training-split": "(1, 2, 3, 4)", "create-validation-split": "(8)",
            "create-testing-split": "(9)"}
    for name, lot in lots.items():
        args = _template(workflow, name)["container"]["args"]
        query = args[args.index("--query") + 1]
        assert query == ("SELECT * FROM `{{inputs.parameters.source_table_name}}` AS cover WHERE "
                         f"MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) IN {lot}")
        split = name.split("-")[1]
        assert args[args.index("--output_gcs_path") + 1] == (
            f"{{{{inputs.parameters.gcs_root}}}}/datasets/{split}/data.csv")
    args = _template(workflow, "create-splits-dataset")["container"]["args"]
    assert args[args.index("--query") + 1].startswith(
        "CREATE SCHEMA IF NOT EXISTS `{{inputs.parameters.project_id}}."
        "{{inputs.parameters.dataset_id}}`")


def test_gcp_templates_carry_an_explicit_command(workflow):
    for name in ("create-splits-dataset", *SPLITS, "tune-hyperparameters", "train-final-model",
                 "deploy-model"):
        container = _template(workflow, name)["container"]
        assert container["command"] == ["python", "-u", "-m", "kfp_component.launcher"]
        assert container["image"].startswith("gcr.io/ml-pipeline/ml-pipeline-gcp:")


def test_training_steps_wiring(workflow):
    tune = _template(workflow, "tune-hyperparameters")["container"]["args"]
    assert tune[tune.index("--training_input") + 1] == "{{inputs.parameters.hypertune_settings}}"
    assert tune[tune.index("--job_dir") + 1] == (
        "{{inputs.parameters.gcs_root}}/jobdir/hypertune/{{workflow.uid}}")
    assert json.loads(tune[tune.index("--args") + 1])[-2:] == ["--hptune", "True"]
    final = json.loads(_template(workflow, "train-final-model")["container"]["args"][
        _template(workflow, "train-final-model")["container"]["args"].index("--args") + 1])
    assert final[final.index("--alpha") + 1] == "{{inputs.parameters.retrieve-best-run-alpha}}"
    assert final[-2:] == ["--hptune", "False"]
    for name in ("tune-hyperparameters", "train-final-model"):
        args = _template(workflow, name)["container"]["args"]
        assert args[args.index("--master_image_uri") + 1] == "covertype/trainer_image:local"


def test_images_from_project_and_service_account(tmp_path):
    output = tmp_path / "p.yaml"
    result = compile_dsl(output, PROJECT_ID="demo", USE_KFP_SA="True", RUNTIME_VERSION="2.11")
    assert result.returncode == 0, result.stderr
    workflow = yaml.safe_load(output.read_text())
    assert _template(workflow, "evaluate-model")["container"]["image"] == (
        "gcr.io/demo/base_image:latest")
    for template in workflow["spec"]["templates"]:
        if "container" in template:
            env = {item["name"] for item in template["container"].get("env", [])}
            assert "GOOGLE_APPLICATION_CREDENTIALS" in env, template["name"]


@pytest.mark.parametrize("env, message", [
    ({"COMPONENT_URL_SEARCH_PREFIX": "raw.githubusercontent.com/x"},
     "COMPONENT_URL_SEARCH_PREFIX='raw.githubusercontent.com/x' is not a URL prefix ending in '/'"),
    ({"COMPONENT_URL_SEARCH_PREFIX": "https://example.org/components"},
     "is not a URL prefix ending in '/'"),
    ({"USE_KFP_SA": "maybe"}, "USE_KFP_SA='maybe' is not a boolean"),
    ({"RUNTIME_VERSION": "latest"}, "RUNTIME_VERSION='latest' is not a MAJOR.MINOR version"),
    ({"BASE_IMAGE": "bad image"}, "BASE_IMAGE='bad image' is not an image URI"),
])
def test_bad_settings_are_one_line_errors(env, message, tmp_path):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)
    result = subprocess.run([sys.executable, "-m", "pipeline.settings"], env={**env, "PATH": ""},
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message.split("=")[0] in result.stderr


def test_settings_defaults():
    settings = Settings.from_env({})
    assert settings == Settings("covertype/base_image:local", "covertype/trainer_image:local",
                                "2.11", "3.7", "", False)
    assert Settings.from_env({"PROJECT_ID": "p", "TRAINER_IMAGE": "gcr.io/p/t:1"}).trainer_image \
        == "gcr.io/p/t:1"
