"""What a finished run means: each step's outputs and, for a pipeline with such steps, the
best trial of its tuning job, the metric against the threshold and what was deployed (an AI
Platform model version, or a Vertex AI endpoint and deployed model).

Steps are found by their role (pipeline/local/roles.py: the component they ran, or the
metrics they write), never by their names, so any pipeline reads alike. Shared by the CLI and
the run browser.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.local import records, roles
from pipeline.local.records import RunRecord, StepRecord
from pipeline.vertex.deploy import DEPLOYED_MODEL_OUTPUT, ENDPOINT_OUTPUT

if TYPE_CHECKING:
    from pipeline.local.tuning_jobs import TuningJob

# Artifacts that describe how to draw a step, not what it computed.
_NOT_OUTPUTS = {"mlpipeline-ui-metadata"}
_TEXT_LIMIT = 64 * 1024
THRESHOLD_PARAMETER, METRIC_PARAMETER = "evaluation_metric_threshold", "evaluation_metric_name"


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


def steps_in_order(record: RunRecord) -> list[StepRecord]:
    """The steps, each sub-DAG's or loop's steps right after it (in the order recorded)."""
    children: dict[str, list[StepRecord]] = {}
    for step in list(record.steps.values()):  # a snapshot: the runner may be adding steps
        parent = step.parent if step.parent in record.steps else ""
        children.setdefault(parent, []).append(step)
    ordered: list[StepRecord] = []
    pending = list(reversed(children.get("", [])))
    while pending:
        step = pending.pop()
        ordered.append(step)
        pending += reversed(children.get(step.name, []))
    return ordered


def step_outputs(record: RunRecord) -> dict[str, dict[str, str]]:
    """Each step's outputs: its output parameters and the small text files it output.

    KFP passes a step's outputs as parameters only where a later step consumes them as
    parameters; the others are its output artifacts (`<task>-<output>` files).
    """
    found: dict[str, dict[str, str]] = {}
    for step in steps_in_order(record):
        values = dict(step.outputs)
        for name, path in step.artifacts.items():
            if name not in values and name not in _NOT_OUTPUTS:
                text = _small_text(Path(path))
                if text is not None:
                    values[name] = text
        if values:
            found[step.name] = values
    return found


def _small_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > _TEXT_LIMIT:
            return None
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def steps_with_role(record: RunRecord, role: str) -> list[StepRecord]:
    """The steps that do `role` (pipeline/local/roles.py), in order."""
    return [step for step in steps_in_order(record) if step.role == role]


def evaluation_metric(record: RunRecord, step: StepRecord) -> tuple[str | None, float | None]:
    """(name, value) of the metric an evaluation step reports: its `metric_name` and
    `metric_value` outputs when it has them, else from its `mlpipeline-metrics` (the metric
    named by those or by the `evaluation_metric_name` parameter, else the first one)."""
    name = step_output(record, step.name, "metric_name")
    value = step_output(record, step.name, "metric_value")
    if value is not None:
        return name, _number(value)
    path = step.artifacts.get(roles.METRICS_ARTIFACT)
    text = _small_text(Path(path)) if path else None
    try:
        metrics = json.loads(text).get("metrics") if text else None
    except (ValueError, AttributeError):
        metrics = None
    entries = [item for item in metrics if isinstance(item, dict)] if isinstance(
        metrics, list) else []
    wanted = name or record.parameters.get(METRIC_PARAMETER)
    entry = next((item for item in entries if item.get("name") == wanted),
                 entries[0] if entries else None)
    if entry is None:
        return name, None
    return str(entry.get("name", name or "metric")), _number(entry.get("numberValue"))


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RunSummary:
    """The few facts a user wants first.

    `has_evaluation` and `has_deploy` say whether the pipeline has an evaluation step and a
    deploy step (found by role); `not_evaluated_reason` and `not_deployed_reason` are set only
    for a pipeline that has them (or a run that failed before recording any step).
    """

    best_trial: dict[str, str]
    metric_name: str | None
    metric_value: float | None
    threshold: float | None
    deployed_version: str | None  # AI Platform: projects/P/models/M/versions/V
    not_deployed_reason: str | None
    deployed_endpoint: str | None = None  # Vertex AI: projects/P/locations/L/endpoints/E
    deployed_model_id: str | None = None  # Vertex AI: the DeployedModel's id on that endpoint
    not_evaluated_reason: str | None = None
    has_evaluation: bool = False
    has_deploy: bool = False
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    tuning_step: str | None = None
    evaluation_step: str | None = None
    deploy_step: str | None = None

    @classmethod
    def of(cls, record: RunRecord, tuning: TuningJob | None = None) -> RunSummary:
        """The summary of a run; `tuning` is its tuning job (tuning_jobs.tuning_job), whose
        best trial it reports."""
        tuning_steps = steps_with_role(record, roles.TUNING)
        evaluations = steps_with_role(record, roles.EVALUATION)
        deploys = steps_with_role(record, roles.DEPLOY)
        best = tuning.best() if tuning else None
        best_trial = ({"metric_value": str(best.objective), **best.parameters}
                      if best and best.objective is not None else {})
        evaluation = next((step for step in evaluations
                           if evaluation_metric(record, step)[1] is not None),
                          evaluations[0] if evaluations else None)
        metric_name, metric = (evaluation_metric(record, evaluation) if evaluation
                               else (None, None))
        threshold = record.parameters.get(THRESHOLD_PARAMETER)
        deployed = endpoint = model_id = None
        deploy = deploys[0] if deploys else None
        for step in deploys:
            deployed = step_output(record, step.name, "version_name")
            endpoint = step_output(record, step.name, ENDPOINT_OUTPUT)
            if deployed or endpoint:
                deploy = step
                model_id = (step_output(record, step.name, DEPLOYED_MODEL_OUTPUT) or "").strip()
                break
        not_evaluated = None
        if metric is None and (evaluations or not record.steps):
            not_evaluated = f"the run {record.status.lower()} before evaluation"
            if record.message:
                not_evaluated += f": {record.message}"
        reason = None
        if deploys and not deployed and not endpoint:
            failed = next((step for step in deploys if step.status == records.FAILED), None)
            if failed:
                reason = failed.message
            elif metric is None and evaluations:
                reason = not_evaluated
            elif metric is not None and threshold is not None and metric <= float(threshold):
                reason = f"metric {metric:.4f} is not above the threshold {threshold}"
            elif all(step.status == records.SKIPPED for step in deploys):
                reason = f"the condition of {deploys[0].name} was false"
            else:
                reason = f"the run {record.status.lower()}: {record.message}"
        return cls(
            best_trial=best_trial,
            metric_name=metric_name,
            metric_value=metric,
            threshold=float(threshold) if threshold is not None else None,
            deployed_version=deployed,
            not_deployed_reason=reason,
            deployed_endpoint=endpoint.strip() if endpoint else None,
            deployed_model_id=model_id or None,
            not_evaluated_reason=not_evaluated,
            has_evaluation=bool(evaluations),
            has_deploy=bool(deploys),
            outputs=step_outputs(record),
            tuning_step=tuning_steps[0].name if tuning_steps else None,
            evaluation_step=evaluation.name if evaluation else None,
            deploy_step=deploy.name if deploy else None,
        )
