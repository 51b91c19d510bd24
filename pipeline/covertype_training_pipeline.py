"""KFP v1 DSL of the Covertype pipeline: split, tune, train, evaluate, deploy if good enough.

Compile with `make compile` (`dsl-compile --py pipeline/covertype_training_pipeline.py`).
Settings come from the lab's environment variables (see pipeline/settings.py).
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

from pipeline import helper_components, schema
from pipeline.hypertune import HYPERTUNE_SETTINGS
from pipeline.settings import COMPONENTS_DIR, Settings

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
    """Load a GCP component spec from the store, renamed so the Argo task says what it does."""
    spec = _store.load_component(name).component_spec.to_dict()
    spec["name"] = step_name
    return load_component_from_text(yaml.safe_dump(spec))


create_dataset_op = _component("bigquery/query", "Create splits dataset")
split_ops = {
    split: _component("bigquery/query", f"Create {split} split") for split in schema.SPLIT_LOTS
}
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
    tune = tune_op(
        project_id=project_id,
        region=region,
        master_image_uri=settings.trainer_image,
        job_dir=f"{gcs_root}/jobdir/hypertune/{dsl.RUN_ID_PLACEHOLDER}",
        args=tune_args,
        training_input=hypertune_settings,
    )
    best_run = retrieve_best_run_op(project_id, tune.outputs["job_id"])

    train_args = [
        "--training_dataset_path", training_path,
        "--validation_dataset_path", validation_path,
        "--alpha", best_run.outputs["alpha"],
        "--max_iter", best_run.outputs["max_iter"],
        "--hptune", "False",
    ]
    train = train_op(
        project_id=project_id,
        region=region,
        master_image_uri=settings.trainer_image,
        job_dir=f"{gcs_root}/jobdir/{dsl.RUN_ID_PLACEHOLDER}",
        args=train_args,
    )
    evaluation = evaluate_model_op(
        dataset_path=splits["testing"].outputs["output_gcs_path"],
        model_path=train.outputs["job_dir"],
        metric_name=evaluation_metric_name,
    )
    with dsl.Condition(evaluation.outputs["metric_value"] > evaluation_metric_threshold):
        deploy_op(
            model_uri=train.outputs["job_dir"],
            project_id=project_id,
            model_id=model_id,
            version_id=version_id,
            runtime_version=settings.runtime_version,
            python_version=settings.python_version,
            replace_existing_version=replace_existing_version,
        )

    if settings.use_kfp_sa:
        dsl.get_pipeline_conf().add_op_transformer(use_gcp_secret("user-gcp-sa"))
