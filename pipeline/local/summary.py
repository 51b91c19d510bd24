"""What a finished run means: each step's outputs and, for a pipeline with such steps, the
best trial, the metric against the threshold and what was deployed (an AI Platform model
version, or a Vertex AI endpoint and deployed model).

Read from the run record's step outputs (the pipeline's own task names), shared by the CLI
and the run browser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.local import records
from pipeline.local.records import RunRecord, StepRecord
from pipeline.vertex.deploy import DEPLOYED_MODEL_OUTPUT, ENDPOINT_OUTPUT

BEST_RUN_STEP, EVALUATE_STEP, DEPLOY_STEP = "retrieve-best-run", "evaluate-model", "deploy-model"
# Artifacts that describe how to draw a step, not what it computed.
_NOT_OUTPUTS = {"mlpipeline-ui-metadata"}
_TEXT_LIMIT = 64 * 1024


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


@dataclass(frozen=True)
class RunSummary:
    """The few facts a user wants first.

    `has_evaluation` and `has_deploy` say whether the pipeline has this project's evaluate
    and deploy steps; `not_evaluated_reason` and `not_deployed_reason` are set only for a
    pipeline that has them (or a run that failed before recording any step).
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

    @classmethod
    def of(cls, record: RunRecord) -> RunSummary:
        best = {name: value for name in ("metric_value", "alpha", "max_iter")
                if (value := step_output(record, BEST_RUN_STEP, name)) is not None}
        metric = step_output(record, EVALUATE_STEP, "metric_value")
        threshold = record.parameters.get("evaluation_metric_threshold")
        has_evaluation = EVALUATE_STEP in record.steps
        has_deploy = DEPLOY_STEP in record.steps
        deployed = step_output(record, DEPLOY_STEP, "version_name")
        endpoint = step_output(record, DEPLOY_STEP, ENDPOINT_OUTPUT)
        not_evaluated = None
        if metric is None and (has_evaluation or not record.steps):
            not_evaluated = f"the run {record.status.lower()} before evaluation"
            if record.message:
                not_evaluated += f": {record.message}"
        reason = None
        if has_deploy and not deployed and not endpoint:
            if metric is None:
                reason = not_evaluated
            elif threshold is not None and float(metric) <= float(threshold):
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
            deployed_model_id=(step_output(record, DEPLOY_STEP, DEPLOYED_MODEL_OUTPUT) or ""
                               ).strip() or None,
            not_evaluated_reason=not_evaluated,
            has_evaluation=has_evaluation,
            has_deploy=has_deploy,
            outputs=step_outputs(record),
        )
