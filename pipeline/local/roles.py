"""What a step does, recognised by the component it runs, never by its name.

The summary, `covertype runs list` and the run browser find a run's tuning job, evaluation and
deployment through the `component` and `role` of its step records, so a pipeline written by
someone else, with its own step names, reads like this project's. The DAG engine records
both when it declares a step (from its template); the runner refines `training` to `tuning`
when the arguments it resolves ask for hyperparameter tuning.
"""
from __future__ import annotations

from typing import Any

from pipeline.launcher_values import launcher_value

TUNING, TRAINING, DEPLOY, QUERY, EVALUATION = (
    "tuning", "training", "deploy", "query", "evaluation")
GCP_LAUNCHER, GCP_MODULES = "kfp_component.launcher", "kfp_component.google."
VERTEX_LAUNCHER = "pipeline.vertex.launcher"
ML_ENGINE_TRAIN = "gcp/ml_engine/train"
# The components whose role is known from what they are (the 0.2.5 GCP components and this
# project's Vertex AI ones).
ROLES = {"gcp/bigquery/query": QUERY, ML_ENGINE_TRAIN: TRAINING, "gcp/ml_engine/deploy": DEPLOY,
         "vertex/hyperparameter_tuning_job": TUNING, "vertex/custom_job": TRAINING,
         "vertex/deploy_model": DEPLOY}
# KFP v1's metrics output: a step that writes it is an evaluation (the KFP UI shows its metrics).
METRICS_ARTIFACT = "mlpipeline-metrics"


def component_of(template: dict[str, Any]) -> str:
    """`gcp/<service>/<action>` for the 0.2.5 launcher, `vertex/<action>` for this project's
    Vertex AI launcher, '' for any other program."""
    container = template.get("container") or {}
    parts = [str(part) for part in container.get("command", []) + container.get("args", [])]
    if GCP_LAUNCHER in parts:
        for index, part in enumerate(parts[:-1]):
            if part.startswith(GCP_MODULES):
                return f"gcp/{part[len(GCP_MODULES):]}/{parts[index + 1]}"
    if VERTEX_LAUNCHER in parts and "--ui_metadata_path" in parts:
        index = parts.index("--ui_metadata_path") + 2
        if index < len(parts) and f"vertex/{parts[index]}" in ROLES:
            return f"vertex/{parts[index]}"
    return ""


def role_of(template: dict[str, Any], component: str) -> str:
    """The step's role from its component, or `evaluation` for a program that declares the
    metrics output; '' for anything else."""
    if component:
        return ROLES.get(component, "")
    artifacts = (template.get("outputs") or {}).get("artifacts") or []
    return EVALUATION if any(item.get("name") == METRICS_ARTIFACT for item in artifacts) else ""


def tunes(arguments: list[str]) -> bool:
    """Whether resolved 0.2.5 train arguments ask for tuning: a `--training_input` that the
    launcher reads as a dict with `hyperparameters`."""
    if "--training_input" not in arguments[:-1]:
        return False
    value = launcher_value(arguments[arguments.index("--training_input") + 1])
    return isinstance(value, dict) and bool(value.get("hyperparameters"))
