"""The package compiled with PLATFORM=vertex: same parameters, DAG, gate and BigQuery steps as
the AI Platform one, with the Vertex AI components in the tuning, training and deploy steps."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compile_dsl
from hera.workflows.models import Workflow as ArgoWorkflow

from pipeline.settings import COMPONENTS_DIR, Settings, SettingsError
from pipeline.vertex import launcher

VERTEX_STEPS = ("tune-hyperparameters", "train-final-model", "deploy-model")
LAUNCHER = ["python", "-u", "-m", "pipeline.vertex.launcher"]
NODE_NAME = {"name": "KFP_NODE_NAME", "valueFrom": {"fieldRef": {
    "fieldPath": "metadata.annotations['workflows.argoproj.io/node-name']"}}}
RUN_ID = {"name": "KFP_RUN_ID", "value": "{{workflow.uid}}"}


@pytest.fixture(scope="module")
def vertex(compiled_vertex_package) -> dict:
    return yaml.safe_load(compiled_vertex_package.read_text())


@pytest.fixture(scope="module")
def caip(compiled_package) -> dict:
    return yaml.safe_load(compiled_package.read_text())


def templates(workflow: dict) -> dict[str, dict]:
    return {template["name"]: template for template in workflow["spec"]["templates"]}


def dags(workflow: dict) -> dict[str, dict[str, tuple]]:
    """Every DAG's tasks: name -> (dependencies, when)."""
    return {name: {task["name"]: (sorted(task.get("dependencies", [])), task.get("when"))
                   for task in template["dag"]["tasks"]}
            for name, template in templates(workflow).items() if "dag" in template}


def args_of(template: dict) -> dict[str, str]:
    args = template["container"]["args"]
    return {flag[2:]: value for flag, value in zip(args[3::2], args[4::2], strict=True)}


def test_loads_in_a_real_argo_model(vertex):
    parsed = ArgoWorkflow.parse_obj(vertex)
    assert parsed.spec.entrypoint == "covertype-classifier-training"


def test_same_parameters_dag_and_gate_as_the_ai_platform_package(vertex, caip):
    assert vertex["spec"]["arguments"] == caip["spec"]["arguments"]
    assert dags(vertex) == dags(caip)
    gate = dags(vertex)["covertype-classifier-training"]["condition-1"]
    assert gate == (["evaluate-model", "train-final-model"],
                    "{{tasks.evaluate-model.outputs.parameters.evaluate-model-metric_value}} > "
                    "{{inputs.parameters.evaluation_metric_threshold}}")
    assert set(dags(vertex)["condition-1"]) == {"deploy-model"}


def test_bigquery_and_lightweight_steps_are_unchanged(vertex, caip):
    for name in ("create-splits-dataset", "create-training-split", "create-validation-split",
                 "create-testing-split", "retrieve-best-run"):
        assert templates(vertex)[name]["container"] == templates(caip)[name]["container"], name
    evaluate = templates(vertex)["evaluate-model"]["container"]["args"]
    assert evaluate[evaluate.index("--model-path") + 1] == (
        "{{inputs.parameters.train-final-model-model_dir}}")


def test_vertex_steps_run_the_launcher_in_the_base_image_with_their_identity(vertex):
    for name in VERTEX_STEPS:
        container = templates(vertex)[name]["container"]
        assert container["command"] == LAUNCHER, name
        assert container["image"] == "covertype/base_image:local", name
        assert RUN_ID in container["env"] and NODE_NAME in container["env"], name
        assert container["args"][:2] == ["--ui_metadata_path",
                                         "/tmp/outputs/MLPipeline_UI_metadata/data"]


def test_vertex_steps_wiring(vertex):
    tune = args_of(templates(vertex)["tune-hyperparameters"])
    assert tune["hypertune_settings"] == "{{inputs.parameters.hypertune_settings}}"
    assert tune["worker_image_uri"] == "covertype/trainer_image:local"
    assert tune["base_output_directory"] == (
        "{{inputs.parameters.gcs_root}}/jobdir/hypertune/{{workflow.uid}}")
    assert json.loads(tune["args"])[-2:] == ["--hptune", "True"]
    assert tune["job_id_path"] == "/tmp/outputs/job_id/data"
    best = templates(vertex)["retrieve-best-run"]["container"]["args"]
    assert best[best.index("--job-id") + 1] == "{{inputs.parameters.tune-hyperparameters-job_id}}"

    train = args_of(templates(vertex)["train-final-model"])
    final = json.loads(train["args"])
    assert final[final.index("--alpha") + 1] == "{{inputs.parameters.retrieve-best-run-alpha}}"
    assert final[-2:] == ["--hptune", "False"]
    assert train["base_output_directory"] == (
        "{{inputs.parameters.gcs_root}}/jobdir/{{workflow.uid}}")

    deploy = args_of(templates(vertex)["deploy-model"])
    assert deploy["model_uri"] == "{{inputs.parameters.train-final-model-model_dir}}"
    assert deploy["serving_image_uri"] == "covertype/serving_image:local"
    assert (deploy["model_id"], deploy["version_id"], deploy["replace_existing_version"]) == (
        "{{inputs.parameters.model_id}}", "{{inputs.parameters.version_id}}",
        "{{inputs.parameters.replace_existing_version}}")
    assert (deploy["machine_type"], deploy["min_replica_count"], deploy["max_replica_count"]) == (
        "n1-standard-2", "1", "1")


def test_images_come_from_the_project(tmp_path):
    output = tmp_path / "p.yaml"
    result = compile_dsl(output, PROJECT_ID="demo", PLATFORM="vertex")
    assert result.returncode == 0, result.stderr
    found = templates(yaml.safe_load(output.read_text()))
    for name in VERTEX_STEPS:
        assert found[name]["container"]["image"] == "gcr.io/demo/base_image:latest"
    assert args_of(found["deploy-model"])["serving_image_uri"] == (
        "gcr.io/demo/serving_image:latest")
    assert args_of(found["train-final-model"])["worker_image_uri"] == (
        "gcr.io/demo/trainer_image:latest")


def test_a_bad_platform_is_a_one_line_error(tmp_path):
    with pytest.raises(SettingsError, match="^PLATFORM='Vertex' is not a platform; set it to "
                                            "caip"):
        Settings.from_env({"PLATFORM": "Vertex"})
    assert Settings.from_env({}).platform == "caip"
    result = compile_dsl(tmp_path / "p.yaml", PLATFORM="vertex-ai")
    assert result.returncode != 0 and "PLATFORM='vertex-ai' is not a platform" in result.stderr
    check = subprocess.run([sys.executable, "-m", "pipeline.settings"],
                           env={"PLATFORM": "aws", "PATH": ""}, capture_output=True, text=True)
    assert check.returncode == 2 and check.stderr.count("\n") == 1


@pytest.mark.parametrize("spec_path", sorted(COMPONENTS_DIR.glob("vertex/*/component.yaml")),
                         ids=lambda path: path.parent.name)
def test_each_spec_matches_its_launcher_action(spec_path: Path):
    spec = yaml.safe_load(spec_path.read_text())
    container = spec["implementation"]["container"]
    assert container["command"] == LAUNCHER
    assert container["env"] == {"KFP_RUN_ID": "{{workflow.uid}}"}
    action = container["args"][2]
    inputs = {item["name"] for item in spec["inputs"]}
    outputs = {item["name"] for item in spec["outputs"]} - {"MLPipeline UI metadata"}
    # Fill the placeholders as KFP would; the launcher must accept exactly this command line.
    argv = [value if isinstance(value, str) else
            (value.get("inputValue") or value.get("outputPath")) for value in container["args"]]
    _, module, given, paths = launcher.parse_command_line(argv)
    assert set(given) == inputs and set(paths) == outputs == set(module.OUTPUTS)
    assert spec_path.parent.name == action


def test_the_local_launcher_still_knows_only_the_gcp_specs():
    from pipeline.local.launcher import _file_outputs

    assert sorted(_file_outputs()) == [("kfp_component.google.bigquery", "query"),
                                       ("kfp_component.google.ml_engine", "deploy"),
                                       ("kfp_component.google.ml_engine", "train")]
