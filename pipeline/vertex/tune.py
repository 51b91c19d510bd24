"""Action `hyperparameter_tuning_job`: a Vertex AI HyperparameterTuningJob of the trainer image.

Each trial is a CustomJob running the worker image with `args` plus `--<parameter>=<value>`
flags, as on AI Platform; the trainer reports the metric with cloudml-hypertune.
"""
from __future__ import annotations

from typing import Any

from pipeline.hypertune import HypertuneSpecError
from pipeline.launcher_values import launcher_dict
from pipeline.vertex import inputs, jobs
from pipeline.vertex.client import TUNING_JOBS, VertexClient
from pipeline.vertex.study import tuning_job_fields

OUTPUTS = ("job_id",)


def hyperparameter_tuning_job(project_id: str, region: str, worker_image_uri: str, args: str,
                              hypertune_settings: str, base_output_directory: str,
                              machine_type: str = "n1-standard-4", wait_interval: str = "30",
                              wait_timeout: str = "604800") -> dict[str, str]:
    """Run the tuning job (or find this step's earlier one) to the end.

    Args are the component's inputs as KFP passes them: `args` a JSON list,
    `hypertune_settings` an ml v1 TrainingInput with `hyperparameters`, read as the 0.2.5
    launcher reads the AI Platform tuning step's (JSON or a Python literal), so the one
    pipeline parameter means the same on both platforms.

    Returns:
        {'job_id': the job's resource name, projects/P/locations/R/hyperparameterTuningJobs/N}.

    Raises:
        ValueError: a bad input or a tuning setting with no Vertex AI equivalent (before any
            call).
        VertexError: the job failed, was cancelled, or the wait expired.
    """
    project = inputs.resource_id("project_id", project_id, "my-project")
    location = inputs.resource_id("region", region, "us-central1")
    try:
        study = tuning_job_fields(launcher_dict(hypertune_settings, "hypertune_settings",
                                                '{"hyperparameters": {...}}'))
    except HypertuneSpecError as error:
        raise ValueError(str(error)) from None
    identity = jobs.StepIdentity.from_env()
    body = tuning_job_request(
        identity, study,
        inputs.required("worker_image_uri", worker_image_uri, "gcr.io/my-project/trainer_image"),
        inputs.json_list_of_strings("args", args),
        inputs.folder_uri("base_output_directory", base_output_directory),
        inputs.machine_type("machine_type", machine_type))
    waiting = jobs.Waiting.start(inputs.integer("wait_interval", wait_interval, 0, 3600),
                                 inputs.integer("wait_timeout", wait_timeout, 1, 30 * 86400))
    job = jobs.run_job(VertexClient(project, location), TUNING_JOBS, body, identity, waiting)
    return {"job_id": job["name"]}


def tuning_job_request(identity: jobs.StepIdentity, study: dict[str, Any], image_uri: str,
                       args: list[str], base_output_directory: str,
                       machine_type: str) -> dict[str, Any]:
    """The HyperparameterTuningJob body: the translated study and one worker per trial."""
    return {
        "displayName": identity.display_name,
        "labels": identity.labels,
        **study,
        "trialJobSpec": jobs.job_spec(image_uri, args, base_output_directory, machine_type),
    }
