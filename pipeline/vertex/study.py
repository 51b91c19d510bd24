"""The lab's `hypertune_settings` (an ml v1 TrainingInput) as a Vertex AI HyperparameterTuningJob.

`hypertune_settings` stays one pipeline parameter for both platforms, so a user's AI Platform
settings keep working on Vertex AI: `trainingInput.hyperparameters` is validated by
`pipeline.hypertune` (the one definition of the ml v1 HyperparameterSpec) and translated field
by field. A setting Vertex AI has no place for is refused with one line, never dropped.

| ml v1 (trainingInput.hyperparameters) | Vertex AI (HyperparameterTuningJob) |
|---|---|
| goal, hyperparameterMetricTag | studySpec.metrics[0] {goal, metricId} |
| params[] DOUBLE / INTEGER | studySpec.parameters[] doubleValueSpec / integerValueSpec |
| params[] DISCRETE / CATEGORICAL | discreteValueSpec / categoricalValueSpec {values} |
| params[].scaleType (NONE or unset: linear) | scaleType (numeric parameters only) |
| algorithm | studySpec.algorithm (same enum) |
| enableTrialEarlyStopping: true | studySpec.decayCurveStoppingSpec (step_count as x-axis) |
| maxTrials, maxParallelTrials | maxTrialCount, parallelTrialCount |
| maxFailedTrials (0: the service decides) | maxFailedTrialCount (same meaning) |
| resumePreviousJobId, other TrainingInput fields | refused |

Early stopping acts on intermediate measurements only; like AI Platform's, Vertex AI's decay
curve rule predicts a trial's final objective from them. The settings arrive as the 0.2.5
launcher reads them (pipeline.launcher_values: JSON's true may be the text 'true', which
Google's JSON parser takes for a boolean too).
"""
from __future__ import annotations

from typing import Any

from pipeline.hypertune import HypertuneSpecError, ParameterSpec, parse_spec
from pipeline.launcher_values import google_boolean

# Fields of the ml v1 schemas (ml.v1.json: HyperparameterSpec, ParameterSpec).
SPEC_FIELDS = frozenset({"algorithm", "enableTrialEarlyStopping", "goal", "hyperparameterMetricTag",
                         "maxFailedTrials", "maxParallelTrials", "maxTrials", "params",
                         "resumePreviousJobId"})
PARAM_FIELDS = frozenset({"categoricalValues", "discreteValues", "maxValue", "minValue",
                          "parameterName", "scaleType", "type"})
MAX_DISCRETE_VALUES = 1000  # Vertex AI's limit on discreteValueSpec.values
_WHERE = "hypertune_settings"
# TrainingInput fields the Vertex components take as their own inputs instead.
_COMPONENT_INPUTS = {"masterType": "machine_type", "masterConfig": "worker_image_uri",
                     "args": "args", "jobDir": "base_output_directory", "region": "region",
                     "scaleTier": "machine_type"}


def tuning_job_fields(training_input: Any) -> dict[str, Any]:
    """Translate an ml v1 TrainingInput holding `hyperparameters` into HyperparameterTuningJob
    fields: `studySpec`, `maxTrialCount`, `parallelTrialCount`, `maxFailedTrialCount`.

    Raises:
        HypertuneSpecError: one line naming the first setting that is invalid or has no
            Vertex AI equivalent, and the fix.
    """
    if not isinstance(training_input, dict) or not isinstance(
            training_input.get("hyperparameters"), dict):
        raise HypertuneSpecError(f'{_WHERE} must be a JSON object with a "hyperparameters" '
                                 "object (AI Platform TrainingInput)")
    for field in sorted(set(training_input) - {"hyperparameters"}):
        instead = _COMPONENT_INPUTS.get(field)
        fix = (f"set the component's {instead} input instead" if instead
               else "remove it")
        raise HypertuneSpecError(f"{_WHERE}.{field} has no Vertex AI equivalent in the tuning "
                                 f"job component; {fix}")
    raw = training_input["hyperparameters"]
    _refuse_unknown(raw, SPEC_FIELDS, f"{_WHERE}.hyperparameters")
    if raw.get("resumePreviousJobId"):
        raise HypertuneSpecError(f"{_WHERE}.hyperparameters.resumePreviousJobId has no Vertex AI "
                                 "equivalent (a Vertex AI study cannot resume an AI Platform "
                                 "job); remove it")
    for index, param in enumerate(raw.get("params") or []):
        if isinstance(param, dict):
            _refuse_unknown(param, PARAM_FIELDS, f"{_WHERE}.hyperparameters.params[{index}]")
    spec = parse_spec(raw)
    early_stopping = google_boolean(raw.get("enableTrialEarlyStopping", False))
    study: dict[str, Any] = {
        "metrics": [{"metricId": spec.metric_tag, "goal": spec.goal}],
        "parameters": [_parameter(param, raw["params"][index])
                       for index, param in enumerate(spec.params)],
        "algorithm": spec.algorithm,
    }
    if early_stopping:
        study["decayCurveStoppingSpec"] = {"useElapsedDuration": False}
    return {"studySpec": study, "maxTrialCount": spec.max_trials,
            "parallelTrialCount": spec.max_parallel_trials,
            "maxFailedTrialCount": spec.max_failed_trials}


def _refuse_unknown(raw: dict, known: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HypertuneSpecError(f"{where}.{unknown[0]} is not an AI Platform field; use "
                                 f"{', '.join(sorted(known))}")


def _parameter(param: ParameterSpec, raw: dict) -> dict[str, Any]:
    """One StudySpec.ParameterSpec from a validated ml v1 ParameterSpec."""
    where = f"{_WHERE} parameter {param.name!r}"
    spec: dict[str, Any] = {"parameterId": param.name}
    if param.type == "CATEGORICAL":
        if raw.get("scaleType") not in (None, "", "NONE"):
            raise HypertuneSpecError(f"{where} is CATEGORICAL with scaleType {raw['scaleType']}; "
                                     "Vertex AI scales numeric parameters only: remove scaleType")
        spec["categoricalValueSpec"] = {"values": list(param.values)}
        return spec
    if param.type == "DISCRETE":
        if len(param.values) > MAX_DISCRETE_VALUES:
            raise HypertuneSpecError(f"{where} has {len(param.values)} discreteValues; Vertex AI "
                                     f"takes at most {MAX_DISCRETE_VALUES}: use fewer values")
        spec["discreteValueSpec"] = {"values": list(param.values)}
    elif param.type == "INTEGER":  # int64 fields are JSON strings
        spec["integerValueSpec"] = {"minValue": str(int(param.min_value)),
                                    "maxValue": str(int(param.max_value))}
    else:
        spec["doubleValueSpec"] = {"minValue": param.min_value, "maxValue": param.max_value}
    spec["scaleType"] = param.scale  # parse_spec: unset or NONE is linear
    return spec
