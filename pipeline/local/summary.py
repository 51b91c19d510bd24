"""What a finished run means: best trial, metric against threshold, what was deployed
(an AI Platform model version, or a Vertex AI endpoint and deployed model).

Read from the run record's step outputs (the pipeline's own task names), shared by the CLI
and the run browser.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.local import records
from pipeline.local.records import RunRecord

BEST_RUN_STEP, EVALUATE_STEP, DEPLOY_STEP = "retrieve-best-run", "evaluate-model", "deploy-model"
# The Vertex AI deploy step's output naming the endpoint resource, by the names it may carry.
ENDPOINT_OUTPUTS = ("endpoint_name", "endpoint")


def step_output(record: RunRecord, step: str, name: str) -> str | None:
    """Output `name` of a step: a passed parameter, else its artifact file.

    KFP prefixes outputs with the task name and passes only the consumed ones as parameters;
    the others exist as artifacts.
    """
    if step not in record.steps:
        return None
    found = record.steps[step]
    for key, value in found.outputs.items():
        if key == name or key.endswith(f"-{name}"):
            return value
    path = found.artifacts.get(f"{step}-{name}")
    if path and Path(path).is_file():
        return Path(path).read_text()
    return None


@dataclass(frozen=True)
class RunSummary:
    """The few facts a user wants first."""

    best_trial: dict[str, str]
    metric_name: str | None
    metric_value: float | None
    threshold: float | None
    deployed_version: str | None  # AI Platform: projects/P/models/M/versions/V
    not_deployed_reason: str | None
    deployed_endpoint: str | None = None  # Vertex AI: projects/P/locations/L/endpoints/E
    deployed_model_id: str | None = None  # Vertex AI: the DeployedModel's id on that endpoint

    @classmethod
    def of(cls, record: RunRecord) -> RunSummary:
        best = {name: value for name in ("metric_value", "alpha", "max_iter")
                if (value := step_output(record, BEST_RUN_STEP, name)) is not None}
        metric = step_output(record, EVALUATE_STEP, "metric_value")
        threshold = record.parameters.get("evaluation_metric_threshold")
        deployed = step_output(record, DEPLOY_STEP, "version_name")
        endpoint = next((value for name in ENDPOINT_OUTPUTS
                         if (value := step_output(record, DEPLOY_STEP, name))), None)
        reason = None
        if not deployed and not endpoint:
            if metric is None:
                reason = f"the run {record.status.lower()} before evaluation"
                if record.message:
                    reason += f": {record.message}"
            elif float(metric) <= float(threshold):
                reason = f"metric {float(metric):.4f} is not above the threshold {threshold}"
            else:
                deploy = record.steps.get(DEPLOY_STEP)
                reason = (deploy.message if deploy and deploy.status == records.FAILED
                          else f"the run {record.status.lower()}: {record.message}")
        return cls(
            best_trial=best,
            metric_name=step_output(record, EVALUATE_STEP, "metric_name"),
            metric_value=float(metric) if metric is not None else None,
            threshold=float(threshold) if threshold is not None else None,
            deployed_version=deployed,
            not_deployed_reason=reason,
            deployed_endpoint=endpoint.strip() if endpoint else None,
            deployed_model_id=(step_output(record, DEPLOY_STEP, "deployed_model_id") or "").strip()
            or None,
        )
