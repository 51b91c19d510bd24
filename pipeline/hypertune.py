"""The ml v1 HyperparameterSpec (`trainingInput.hyperparameters`), validated as the service does.

One definition for every place that reads a user's tuning settings: the run parameter checks
(`make run`, local runs), the local training service, and the translation to Vertex AI's
StudySpec; and the pipeline's default settings (HYPERTUNE_SETTINGS), which the DSL and the local
training limits read. Standard library only, so the cloud path can import it without the local
tuner. Values are read as Google's JSON parser reads them (a boolean may be the text "true",
as the 0.2.5 launcher's fire hands JSON's true over: pipeline/launcher_values.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pipeline.launcher_values import google_boolean


class HypertuneSpecError(ValueError):
    """A HyperparameterSpec the service would refuse; the message is one line with the fix."""


DEFAULT_METRIC_TAG = "training/hptuning/metric"
GOALS = ("MAXIMIZE", "MINIMIZE")
ALGORITHMS = ("ALGORITHM_UNSPECIFIED", "GRID_SEARCH", "RANDOM_SEARCH")
TYPES = ("DOUBLE", "INTEGER", "CATEGORICAL", "DISCRETE")
LINEAR, LOG, REVERSE_LOG = "UNIT_LINEAR_SCALE", "UNIT_LOG_SCALE", "UNIT_REVERSE_LOG_SCALE"
SCALES = ("NONE", LINEAR, LOG, REVERSE_LOG)  # NONE: Google's "no scaling", i.e. linear
MAX_GRID_POINTS = 100_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_WHERE = "trainingInput.hyperparameters"

# The pipeline's default `hypertune_settings` (the lab's), an AI Platform TrainingInput.
HYPERTUNE_SETTINGS: dict = {
    "hyperparameters": {
        "goal": "MAXIMIZE",
        "maxTrials": 6,
        "maxParallelTrials": 3,
        "hyperparameterMetricTag": "accuracy",
        "enableTrialEarlyStopping": True,
        "params": [
            {"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [500, 1000]},
            {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001, "maxValue": 0.001,
             "scaleType": "UNIT_LINEAR_SCALE"},
        ],
    }
}

Value = int | float | str


@dataclass(frozen=True)
class ParameterSpec:
    """One validated `params[]` entry; `values` holds DISCRETE/CATEGORICAL choices."""

    name: str
    type: str
    min_value: float = 0.0
    max_value: float = 0.0
    scale: str = LINEAR
    values: tuple[Value, ...] = ()


@dataclass(frozen=True)
class TuningSpec:
    """A validated HyperparameterSpec with the service defaults applied."""

    goal: str
    max_trials: int
    max_parallel_trials: int
    max_failed_trials: int  # 0: the job fails only when every trial fails
    metric_tag: str
    algorithm: str
    params: tuple[ParameterSpec, ...]


def parse_spec(hyperparameters: Any) -> TuningSpec:
    """Validate `trainingInput.hyperparameters` and apply the ml v1 defaults.

    Raises:
        HypertuneSpecError: one line naming the first bad field and the fix.
    """
    if not isinstance(hyperparameters, dict):
        raise HypertuneSpecError(f"{_WHERE} must be a JSON object (HyperparameterSpec)")
    goal = hyperparameters.get("goal")
    if goal not in GOALS:
        raise HypertuneSpecError(f"{_WHERE}.goal is {goal!r}; set it to MAXIMIZE or MINIMIZE")
    algorithm = hyperparameters.get("algorithm") or "ALGORITHM_UNSPECIFIED"
    if algorithm not in ALGORITHMS:
        raise HypertuneSpecError(
            f"{_WHERE}.algorithm {algorithm!r} is unknown; use one of {', '.join(ALGORITHMS)}"
        )
    early_stopping = hyperparameters.get("enableTrialEarlyStopping", False)
    if google_boolean(early_stopping) is None:
        raise HypertuneSpecError(f"{_WHERE}.enableTrialEarlyStopping is {early_stopping!r}; use "
                                 "true or false")
    max_trials = _count(hyperparameters, "maxTrials", 1, minimum=1)
    max_parallel = _count(hyperparameters, "maxParallelTrials", 1, minimum=1)
    max_failed = _count(hyperparameters, "maxFailedTrials", 0, minimum=0)
    if max_parallel > max_trials:
        raise HypertuneSpecError(
            f"{_WHERE}.maxParallelTrials ({max_parallel}) exceeds maxTrials ({max_trials}); "
            "lower maxParallelTrials or raise maxTrials"
        )
    tag = hyperparameters.get("hyperparameterMetricTag") or DEFAULT_METRIC_TAG
    if not isinstance(tag, str):
        raise HypertuneSpecError(f"{_WHERE}.hyperparameterMetricTag must be a string")
    raw_params = hyperparameters.get("params")
    if not isinstance(raw_params, list) or not raw_params:
        raise HypertuneSpecError(f"{_WHERE}.params is missing or empty; add at least one parameter")
    params = tuple(_parse_param(index, raw) for index, raw in enumerate(raw_params))
    names = [param.name for param in params]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise HypertuneSpecError(
            f"{_WHERE}.params names {duplicates[0]!r} twice; parameter names must be unique"
        )
    if algorithm == "GRID_SEARCH":
        doubles = [param.name for param in params if param.type == "DOUBLE"]
        if doubles:
            raise HypertuneSpecError(
                f"GRID_SEARCH cannot search DOUBLE parameter {doubles[0]!r}; make it DISCRETE "
                "with discreteValues or use another algorithm"
            )
        points = math.prod(len(p.values) or int(p.max_value - p.min_value) + 1 for p in params)
        if points > MAX_GRID_POINTS:
            raise HypertuneSpecError(
                f"GRID_SEARCH over {points} points exceeds {MAX_GRID_POINTS}; narrow the ranges "
                "or use RANDOM_SEARCH"
            )
    return TuningSpec(goal, max_trials, max_parallel, max_failed, tag, algorithm, params)


def _count(spec: dict, field: str, default: int, minimum: int) -> int:
    value = spec.get(field)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # int32 fields may arrive as JSON strings
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HypertuneSpecError(f"{_WHERE}.{field} is {value!r}; use an integer >= {minimum}")
    return value


def _parse_param(index: int, raw: Any) -> ParameterSpec:
    where = f"{_WHERE}.params[{index}]"
    if not isinstance(raw, dict):
        raise HypertuneSpecError(f"{where} must be a JSON object (ParameterSpec)")
    name = raw.get("parameterName")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise HypertuneSpecError(
            f"{where}.parameterName is {name!r}; use a flag name like learning_rate"
        )
    where = f"{_WHERE} parameter {name!r}"
    kind = raw.get("type")
    if kind not in TYPES:
        raise HypertuneSpecError(f"{where} has type {kind!r}; use one of {', '.join(TYPES)}")
    scale = raw.get("scaleType") or LINEAR
    if scale not in SCALES:
        raise HypertuneSpecError(f"{where} has scaleType {scale!r}; use one of {', '.join(SCALES)}")
    scale = LINEAR if scale == "NONE" else scale
    if kind == "CATEGORICAL":
        values = raw.get("categoricalValues")
        if not isinstance(values, list) or not values or not all(
            isinstance(value, str) for value in values
        ):
            raise HypertuneSpecError(
                f"{where} needs categoricalValues, a non-empty list of strings")
        if len(set(values)) != len(values):
            raise HypertuneSpecError(f"{where} repeats a categoricalValues entry; list each once")
        return ParameterSpec(name, kind, scale=scale, values=tuple(values))
    if kind == "DISCRETE":
        values = raw.get("discreteValues")
        if not isinstance(values, list) or not values or not all(map(_is_number, values)):
            raise HypertuneSpecError(f"{where} needs discreteValues, a non-empty list of numbers")
        if any(later <= earlier for earlier, later in zip(values, values[1:], strict=False)):
            raise HypertuneSpecError(f"{where} discreteValues must be in strictly increasing order")
        return ParameterSpec(name, kind, scale=scale, values=tuple(values))
    low, high = raw.get("minValue"), raw.get("maxValue")
    if not _is_number(low) or not _is_number(high):
        raise HypertuneSpecError(f"{where} needs numeric minValue and maxValue")
    if kind == "INTEGER" and not (float(low).is_integer() and float(high).is_integer()):
        raise HypertuneSpecError(f"{where} is INTEGER; minValue and maxValue must be whole numbers")
    if low > high:
        raise HypertuneSpecError(f"{where} has minValue {low} > maxValue {high}; swap them")
    if scale != LINEAR and low <= 0:
        raise HypertuneSpecError(
            f"{where} uses {scale} with minValue {low}; log scales need minValue > 0"
        )
    return ParameterSpec(name, kind, float(low), float(high), scale)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
