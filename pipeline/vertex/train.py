"""Action `custom_job`: a Vertex AI CustomJob of the trainer image (the final training).

Vertex AI sets `AIP_MODEL_DIR` in the container to `<baseOutputDirectory>/model/`; the trainer
saves `model.pkl` there, so the step's `model_dir` output is that folder: evaluate-model reads
`<model_dir>/model.pkl` and the deploy step uploads the folder.
"""
from __future__ import annotations

from typing import Any

from pipeline.vertex import inputs, jobs
from pipeline.vertex.client import CUSTOM_JOBS, VertexClient

OUTPUTS = ("job_id", "model_dir")
MODEL_FOLDER = "model"  # AIP_MODEL_DIR = <baseOutputDirectory>/model/ for a CustomJob


def custom_job(project_id: str, region: str, worker_image_uri: str, args: str,
               base_output_directory: str, machine_type: str = "n1-standard-4",
               wait_interval: str = "30", wait_timeout: str = "604800") -> dict[str, str]:
    """Run the custom job (or find this step's earlier one) to the end.

    Returns:
        {'job_id': projects/P/locations/R/customJobs/N, 'model_dir': <base>/model}.

    Raises:
        ValueError: a bad input (before any call).
        VertexError: the job failed, was cancelled, or the wait expired.
    """
    project = inputs.resource_id("project_id", project_id, "my-project")
    location = inputs.resource_id("region", region, "us-central1")
    base = inputs.folder_uri("base_output_directory", base_output_directory)
    identity = jobs.StepIdentity.from_env()
    body = custom_job_request(
        identity,
        inputs.required("worker_image_uri", worker_image_uri, "gcr.io/my-project/trainer_image"),
        inputs.json_list_of_strings("args", args), base,
        inputs.machine_type("machine_type", machine_type))
    waiting = jobs.Waiting.start(inputs.integer("wait_interval", wait_interval, 0, 3600),
                                 inputs.integer("wait_timeout", wait_timeout, 1, 30 * 86400))
    job = jobs.run_job(VertexClient(project, location), CUSTOM_JOBS, body, identity, waiting)
    return {"job_id": job["name"], "model_dir": model_dir(base)}


def model_dir(base_output_directory: str) -> str:
    """The folder Vertex AI gives the trainer as AIP_MODEL_DIR, without the trailing slash."""
    return f"{base_output_directory.rstrip('/')}/{MODEL_FOLDER}"


def custom_job_request(identity: jobs.StepIdentity, image_uri: str, args: list[str],
                       base_output_directory: str, machine_type: str) -> dict[str, Any]:
    """The CustomJob body: one worker running the image with the args."""
    return {
        "displayName": identity.display_name,
        "labels": identity.labels,
        "jobSpec": jobs.job_spec(image_uri, args, base_output_directory, machine_type),
    }
