"""Hyperparameter tuning of local training jobs: the ml v1 HyperparameterSpec and its search.

`parse_spec` validates `trainingInput.hyperparameters` with one-line `InvalidArgument` errors
(the emulator answers HTTP 400 and creates nothing); `Tuner` suggests trial values with optuna
through ask/tell, so several trials can be in flight at once. The algorithms:

- ALGORITHM_UNSPECIFIED: Bayesian optimisation. Google's service uses a Gaussian-process
  bandit (Vizier); locally it is optuna's TPESampler (constant liar for parallel trials), with
  the first half of the budget (at most 10 trials) sampled at random before the model kicks in.
- GRID_SEARCH: every combination of INTEGER/CATEGORICAL/DISCRETE values in a seeded random
  order; `maxTrials` caps how many of them run.
- RANDOM_SEARCH: optuna's RandomSampler.

`enableTrialEarlyStopping` and `resumePreviousJobId` are accepted and ignored: local trials
always run to the end and every job starts a fresh study. `scaleType` of DISCRETE/CATEGORICAL
parameters is validated and ignored, as their values are sampled as categories.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from pipeline.local.errors import InvalidArgument

DEFAULT_METRIC_TAG = "training/hptuning/metric"
GOALS = ("MAXIMIZE", "MINIMIZE")
ALGORITHMS = ("ALGORITHM_UNSPECIFIED", "GRID_SEARCH", "RANDOM_SEARCH")
TYPES = ("DOUBLE", "INTEGER", "CATEGORICAL", "DISCRETE")
LINEAR, LOG, REVERSE_LOG = "UNIT_LINEAR_SCALE", "UNIT_LOG_SCALE", "UNIT_REVERSE_LOG_SCALE"
SCALES = ("NONE", LINEAR, LOG, REVERSE_LOG)  # NONE: Google's "no scaling", i.e. linear
MAX_GRID_POINTS = 100_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_WHERE = "trainingInput.hyperparameters"

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


@dataclass(frozen=True)
class Suggestion:
    """Values for one trial; hand it back to `Tuner.tell` with the trial's outcome."""

    number: int
    values: dict[str, Value]

    def as_strings(self) -> dict[str, str]:
        """The values as the API's `trials[].hyperparameters` map (and the flags) print them."""
        return {name: _format(value) for name, value in self.values.items()}

    def flags(self) -> list[str]:
        """`--name=value` flags appended to the trial's args."""
        return [f"--{name}={text}" for name, text in self.as_strings().items()]


def parse_spec(hyperparameters: Any) -> TuningSpec:
    """Validate `trainingInput.hyperparameters` and apply the ml v1 defaults.

    Raises:
        InvalidArgument: one line naming the first bad field and the fix.
    """
    if not isinstance(hyperparameters, dict):
        raise InvalidArgument(f"{_WHERE} must be a JSON object (HyperparameterSpec)")
    goal = hyperparameters.get("goal")
    if goal not in GOALS:
        raise InvalidArgument(f"{_WHERE}.goal is {goal!r}; set it to MAXIMIZE or MINIMIZE")
    algorithm = hyperparameters.get("algorithm") or "ALGORITHM_UNSPECIFIED"
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(
            f"{_WHERE}.algorithm {algorithm!r} is unknown; use one of {', '.join(ALGORITHMS)}"
        )
    max_trials = _count(hyperparameters, "maxTrials", 1, minimum=1)
    max_parallel = _count(hyperparameters, "maxParallelTrials", 1, minimum=1)
    max_failed = _count(hyperparameters, "maxFailedTrials", 0, minimum=0)
    if max_parallel > max_trials:
        raise InvalidArgument(
            f"{_WHERE}.maxParallelTrials ({max_parallel}) exceeds maxTrials ({max_trials}); "
            "lower maxParallelTrials or raise maxTrials"
        )
    tag = hyperparameters.get("hyperparameterMetricTag") or DEFAULT_METRIC_TAG
    if not isinstance(tag, str):
        raise InvalidArgument(f"{_WHERE}.hyperparameterMetricTag must be a string")
    raw_params = hyperparameters.get("params")
    if not isinstance(raw_params, list) or not raw_params:
        raise InvalidArgument(f"{_WHERE}.params is missing or empty; add at least one parameter")
    params = tuple(_parse_param(index, raw) for index, raw in enumerate(raw_params))
    names = [param.name for param in params]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(
            f"{_WHERE}.params names {duplicates[0]!r} twice; parameter names must be unique"
        )
    if algorithm == "GRID_SEARCH":
        doubles = [param.name for param in params if param.type == "DOUBLE"]
        if doubles:
            raise InvalidArgument(
                f"GRID_SEARCH cannot search DOUBLE parameter {doubles[0]!r}; make it DISCRETE "
                "with discreteValues or use another algorithm"
            )
        points = math.prod(len(p.values) or int(p.max_value - p.min_value) + 1 for p in params)
        if points > MAX_GRID_POINTS:
            raise InvalidArgument(
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
        raise InvalidArgument(f"{_WHERE}.{field} is {value!r}; use an integer >= {minimum}")
    return value


def _parse_param(index: int, raw: Any) -> ParameterSpec:
    where = f"{_WHERE}.params[{index}]"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be a JSON object (ParameterSpec)")
    name = raw.get("parameterName")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{where}.parameterName is {name!r}; use a flag name like learning_rate"
        )
    where = f"{_WHERE} parameter {name!r}"
    kind = raw.get("type")
    if kind not in TYPES:
        raise InvalidArgument(f"{where} has type {kind!r}; use one of {', '.join(TYPES)}")
    scale = raw.get("scaleType") or LINEAR
    if scale not in SCALES:
        raise InvalidArgument(f"{where} has scaleType {scale!r}; use one of {', '.join(SCALES)}")
    scale = LINEAR if scale == "NONE" else scale
    if kind == "CATEGORICAL":
        values = raw.get("categoricalValues")
        if not isinstance(values, list) or not values or not all(
            isinstance(value, str) for value in values
        ):
            raise InvalidArgument(f"{where} needs categoricalValues, a non-empty list of strings")
        if len(set(values)) != len(values):
            raise InvalidArgument(f"{where} repeats a categoricalValues entry; list each once")
        return ParameterSpec(name, kind, scale=scale, values=tuple(values))
    if kind == "DISCRETE":
        values = raw.get("discreteValues")
        if not isinstance(values, list) or not values or not all(map(_is_number, values)):
            raise InvalidArgument(f"{where} needs discreteValues, a non-empty list of numbers")
        if any(later <= earlier for earlier, later in zip(values, values[1:], strict=False)):
            raise InvalidArgument(f"{where} discreteValues must be in strictly increasing order")
        return ParameterSpec(name, kind, scale=scale, values=tuple(values))
    low, high = raw.get("minValue"), raw.get("maxValue")
    if not _is_number(low) or not _is_number(high):
        raise InvalidArgument(f"{where} needs numeric minValue and maxValue")
    if kind == "INTEGER" and not (float(low).is_integer() and float(high).is_integer()):
        raise InvalidArgument(f"{where} is INTEGER; minValue and maxValue must be whole numbers")
    if low > high:
        raise InvalidArgument(f"{where} has minValue {low} > maxValue {high}; swap them")
    if scale != LINEAR and low <= 0:
        raise InvalidArgument(
            f"{where} uses {scale} with minValue {low}; log scales need minValue > 0"
        )
    return ParameterSpec(name, kind, float(low), float(high), scale)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _format(value: Value) -> str:
    """Whole numbers print as ints (max_iter=500, not 500.0): trainers parse them as int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def seed_for(key: str) -> int:
    """A reproducible sampler seed: the same key (job dir or id) suggests the same values."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose after_trial does not call `study.stop()`, legal only in optimize()."""

    def after_trial(self, *_: Any) -> None:
        return None


class Tuner:
    """Suggests trial values per the spec's algorithm; one instance per tuning job."""

    def __init__(self, spec: TuningSpec, seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._spec = spec
        grid = spec.algorithm == "GRID_SEARCH"
        self._distributions = {param.name: _distribution(param, grid) for param in spec.params}
        self._reversed = {param.name for param in spec.params
                          if param.scale == REVERSE_LOG and not param.values and not grid}
        self._budget = spec.max_trials
        if grid:
            choices = {name: list(dist.choices) for name, dist in self._distributions.items()}
            self._budget = min(self._budget, math.prod(map(len, choices.values())))
            sampler: optuna.samplers.BaseSampler = _AskTellGridSampler(choices, seed=seed)
        elif spec.algorithm == "RANDOM_SEARCH":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            startup = max(1, min(10, spec.max_trials // 2))
            sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed)
        direction = "maximize" if spec.goal == "MAXIMIZE" else "minimize"
        self._study = optuna.create_study(sampler=sampler, direction=direction)
        self._asked = 0

    @property
    def budget(self) -> int:
        """How many trials the job runs: maxTrials, or the grid size if smaller."""
        return self._budget

    def ask(self) -> Suggestion | None:
        """Values for the next trial, or None once the budget is spent."""
        if self._asked >= self._budget:
            return None
        self._asked += 1
        trial = self._study.ask(self._distributions)
        values = {param.name: self._value(param, trial.params[param.name])
                  for param in self._spec.params}
        return Suggestion(trial.number, values)

    def tell(self, suggestion: Suggestion, objective: float | None) -> None:
        """Report a trial's final objective, or None when the trial failed or was stopped."""
        if objective is None:
            self._study.tell(suggestion.number, state=TrialState.FAIL)
        else:
            self._study.tell(suggestion.number, objective)

    def _value(self, param: ParameterSpec, sampled: Any) -> Value:
        """Map a sampled point to the parameter's value.

        UNIT_REVERSE_LOG_SCALE samples `z` log-uniformly and uses `min + max - z`, so values
        are dense near maxValue, as Google defines the reverse log scale.
        """
        if param.name in self._reversed:
            sampled = param.min_value + param.max_value - sampled
        return int(round(sampled)) if param.type == "INTEGER" else sampled


def _distribution(param: ParameterSpec, grid: bool) -> Any:
    """The optuna distribution of a parameter; every grid dimension is categorical."""
    if param.values:
        return CategoricalDistribution(param.values)
    if param.type == "INTEGER":
        low, high = int(param.min_value), int(param.max_value)
        if grid:
            return CategoricalDistribution(tuple(range(low, high + 1)))
        return IntDistribution(low, high, log=param.scale != LINEAR)
    return FloatDistribution(param.min_value, param.max_value, log=param.scale != LINEAR)


def best_first(trials: list[dict], goal: str) -> list[dict]:
    """Succeeded trials best first by goal (as the service lists them), then the rest by id.

    Clients should still choose by `finalMetric.objectiveValue`: no document promises order.
    """
    sign = -1 if goal == "MAXIMIZE" else 1

    def key(trial: dict) -> tuple:
        if "finalMetric" in trial:
            return (0, sign * trial["finalMetric"]["objectiveValue"], int(trial["trialId"]))
        return (1, 0.0, int(trial["trialId"]))

    return sorted(trials, key=key)


def final_metric(path: Path, tag: str) -> dict | None:
    """The last `tag` line of a hypertune metric file as a ml v1 HyperparameterMetric.

    cloudml-hypertune writes JSON lines with string values, e.g.
    `{"accuracy": "0.71", "global_step": "500", "timestamp": ..., "trial": "1"}`.
    """
    if not path.exists():
        return None
    metric = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            value = float(entry[tag])
            step = int(float(entry.get("global_step", 0)))
        except (ValueError, KeyError, TypeError):
            continue
        finite = math.isfinite(value)  # NaN/inf cannot be an objective (nor plain JSON)
        metric = {"trainingStep": str(step), "objectiveValue": value} if finite else None
    return metric
