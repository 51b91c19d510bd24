"""KFP v1 DSL of the Covertype pipeline: split, tune, train, evaluate, deploy if good enough.

Compile with `make compile` (`dsl-compile --py pipeline/covertype_training_pipeline.py`).
Settings come from the lab's environment variables (see pipeline/settings.py). `PLATFORM`
picks the components of the tuning, training and deploy steps: `caip` the lab's AI Platform
ones (0.2.5 interface), `vertex` this project's Vertex AI ones (pipeline/components/vertex);
the parameters, the DAG, the gate and the BigQuery steps are the same.
"""
import json

import yaml
from kfp import dsl
from kfp.components import (
    ComponentStore,
    func_to_container_op,
    load_component_from_text,
)
from kfp.gcp import use_gcp_secret
from kubernetes.client import V1EnvVar, V1EnvVarSource, V1ObjectFieldSelector

from pipeline import helper_components, schema
from pipeline.hypertune import HYPERTUNE_SETTINGS
from pipeline.settings import COMPONENTS_DIR, Settings
from pipeline.vertex.jobs import NODE_ENV, NODE_NAME_FIELD

PIPELINE_NAME = "Covertype Classifier Training"
# kfp type names of the component inputs the parameters feed: the compiler checks them.
GCP_PROJECT_ID, GCS_PATH, GCP_REGION, DICT, BOOL = (
    "GCPProjectID", "GCSPath", "GCPRegion", "Dict", "Bool")

DEFAULT_HYPERTUNE_SETTINGS = json.dumps(HYPERTUNE_SETTINGS)


def split_query(source_table_name: str, lots: tuple[int, ...]) -> str:
    """The lab's BigQuery split: rows whose fingerprint bucket is in `lots`."""
    return (
        f"SELECT * FROM `{source_table_name}` AS cover WHERE "
        f"MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(cover))), 10) IN ({', '.join(map(str, lots))})"
    )


def create_dataset_query(project_id: str, dataset_id: str, dataset_location: str) -> str:
    """DDL run once before the splits, so the three parallel split steps never race to create it."""
    return (
        f"CREATE SCHEMA IF NOT EXISTS `{project_id}.{dataset_id}` "
        f'OPTIONS(location="{dataset_location}")'
    )


settings = Settings.from_env()
_store = ComponentStore(
    local_search_paths=[str(COMPONENTS_DIR)],
    url_search_prefixes=[settings.component_url_search_prefix]
    if settings.component_url_search_prefix
    else [],
)


def _component(name: str, step_name: str):
    """Load a component spec from the store, renamed so the Argo task says what it does.

    The Vertex AI specs run this project's code, so their image is the base image.
    """
    spec = _store.load_component(name).component_spec.to_dict()
    spec["name"] = step_name
    if name.startswith("vertex/"):
        spec["implementation"]["container"]["image"] = settings.base_image
    return load_component_from_text(yaml.safe_dump(spec))


def _node_identity(op: dsl.ContainerOp) -> dsl.ContainerOp:
    """Give a Vertex AI step its Argo node name, so a retried attempt finds its own job."""
    return op.add_env_variable(V1EnvVar(name=NODE_ENV, value_from=V1EnvVarSource(
        field_ref=V1ObjectFieldSelector(field_path=NODE_NAME_FIELD))))


VERTEX = settings.platform == "vertex"
create_dataset_op = _component("bigquery/query", "Create splits dataset")
split_ops = {
    split: _component("bigquery/query", f"Create {split} split") for split in schema.SPLIT_LOTS
}
if VERTEX:
    tune_op = _component("vertex/hyperparameter_tuning_job", "Tune hyperparameters")
    train_op = _component("vertex/custom_job", "Train final model")
    deploy_op = _component("vertex/deploy_model", "Deploy model")
else:
    tune_op = _component("ml_engine/train", "Tune hyperparameters")
    train_op = _component("ml_engine/train", "Train final model")
    deploy_op = _component("ml_engine/deploy", "Deploy model")
retrieve_best_run_op = func_to_container_op(
    helper_components.retrieve_best_run, base_image=settings.base_image
)
evaluate_model_op = func_to_container_op(
    helper_components.evaluate_model, base_image=settings.base_image
)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Tunes, trains, evaluates and (if good enough) deploys the Covertype classifier",
)
def covertype_train(
    project_id: GCP_PROJECT_ID,
    gcs_root: GCS_PATH,
    region: GCP_REGION = "us-central1",
    source_table_name: str = "covertype_dataset.covertype",
    dataset_id: str = "splits",
    evaluation_metric_name: str = "accuracy",
    evaluation_metric_threshold: float = 0.69,
    model_id: str = "covertype_classifier",
    version_id: str = "v01",
    replace_existing_version: BOOL = True,
    hypertune_settings: DICT = DEFAULT_HYPERTUNE_SETTINGS,
    dataset_location: str = "US",
):
    """Orchestrates the steps; every cloud call goes through a pre-built GCP component."""
    create_dataset = create_dataset_op(
        query=create_dataset_query(project_id, dataset_id, dataset_location),
        project_id=project_id,
        dataset_location=dataset_location,
    )
    splits = {}
    for split, lots in schema.SPLIT_LOTS.items():
        splits[split] = split_ops[split](
            query=split_query(source_table_name, lots),
            project_id=project_id,
            dataset_id=dataset_id,
            table_id="",
            output_gcs_path=f"{gcs_root}/datasets/{split}/data.csv",
            dataset_location=dataset_location,
        ).after(create_dataset)
    training_path = splits["training"].outputs["output_gcs_path"]
    validation_path = splits["validation"].outputs["output_gcs_path"]

    tune_args = [
        "--training_dataset_path", training_path,
        "--validation_dataset_path", validation_path,
        "--hptune", "True",
    ]
    tune = _tune(project_id, region, f"{gcs_root}/jobdir/hypertune/{dsl.RUN_ID_PLACEHOLDER}",
                 tune_args, hypertune_settings)
    best_run = retrieve_best_run_op(project_id, tune.outputs["job_id"])

    train_args = [
        "--training_dataset_path", training_path,
        "--validation_dataset_path", validation_path,
        "--alpha", best_run.outputs["alpha"],
        "--max_iter", best_run.outputs["max_iter"],
        "--hptune", "False",
    ]
    model_folder = _train(project_id, region, f"{gcs_root}/jobdir/{dsl.RUN_ID_PLACEHOLDER}",
                          train_args)
    evaluation = evaluate_model_op(
        dataset_path=splits["testing"].outputs["output_gcs_path"],
        model_path=model_folder,
        metric_name=evaluation_metric_name,
    )
    with dsl.Condition(evaluation.outputs["metric_value"] > evaluation_metric_threshold):
        _deploy(model_folder, project_id, region, model_id, version_id, replace_existing_version)

    if settings.use_kfp_sa:
        dsl.get_pipeline_conf().add_op_transformer(use_gcp_secret("user-gcp-sa"))


def _tune(project_id, region, folder: str, args: list, hypertune_settings) -> dsl.ContainerOp:
    """The tuning step of the platform; its `job_id` output names the tuning job."""
    if VERTEX:
        return _node_identity(tune_op(
            project_id=project_id, region=region, worker_image_uri=settings.trainer_image,
            args=args, hypertune_settings=hypertune_settings, base_output_directory=folder))
    return tune_op(project_id=project_id, region=region,
                   master_image_uri=settings.trainer_image, job_dir=folder, args=args,
                   training_input=hypertune_settings)


def _train(project_id, region, folder: str, args: list) -> dsl.PipelineParam:
    """The final training step of the platform; returns the folder holding model.pkl."""
    if VERTEX:
        return _node_identity(train_op(
            project_id=project_id, region=region, worker_image_uri=settings.trainer_image,
            args=args, base_output_directory=folder)).outputs["model_dir"]
    return train_op(project_id=project_id, region=region,
                    master_image_uri=settings.trainer_image, job_dir=folder,
                    args=args).outputs["job_dir"]


def _deploy(model_folder, project_id, region, model_id, version_id,
            replace_existing_version) -> dsl.ContainerOp:
    """The deploy step of the platform: a Vertex AI endpoint, or an AI Platform version."""
    if VERTEX:
        return _node_identity(deploy_op(
            model_uri=model_folder, project_id=project_id, region=region, model_id=model_id,
            version_id=version_id, serving_image_uri=settings.serving_image,
            replace_existing_version=replace_existing_version))
    return deploy_op(model_uri=model_folder, project_id=project_id, model_id=model_id,
                     version_id=version_id, runtime_version=settings.runtime_version,
                     python_version=settings.python_version,
                     replace_existing_version=replace_existing_version)
