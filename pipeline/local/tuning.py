"""Hyperparameter search of local training jobs, over a spec validated by `pipeline.hypertune`.

`Tuner` suggests trial values with optuna through ask/tell, so several trials can be in flight
at once. The algorithms:

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
import os
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

from pipeline.hypertune import (
    HYPERTUNE_SETTINGS,
    LINEAR,
    REVERSE_LOG,
    ParameterSpec,
    TuningSpec,
    Value,
    parse_spec,
)
from pipeline.local.errors import InvalidArgument

MAX_TRIALS = 1000
# Trials are processes on this machine, so a job runs at most one per core at once; but never
# fewer than the pipeline's own default asks for, so the lab's settings run on any laptop.
PIPELINE_PARALLEL_TRIALS = parse_spec(HYPERTUNE_SETTINGS["hyperparameters"]).max_parallel_trials


def parallel_trial_limit() -> int:
    """The most trials one local job may run at once: the cores, at least the pipeline default."""
    return max(os.cpu_count() or 1, PIPELINE_PARALLEL_TRIALS)


def check_trial_limits(spec: TuningSpec, where: str = "trainingInput.hyperparameters",
                       names: tuple[str, str] = ("maxTrials", "maxParallelTrials")) -> None:
    """Refuse a tuning job that would start more trials, or more at once, than this machine
    takes; `names` are the API's field names for the two counts.

    Raises:
        InvalidArgument: one line naming the limit and the fix.
    """
    if spec.max_trials > MAX_TRIALS:
        raise InvalidArgument(f"{where}.{names[0]} is {spec.max_trials}, over the local limit "
                              f"of {MAX_TRIALS} trials per job; lower {names[0]}")
    limit = parallel_trial_limit()
    if spec.max_parallel_trials > limit:
        raise InvalidArgument(
            f"{where}.{names[1]} is {spec.max_parallel_trials}, over this machine's limit of "
            f"{limit} trials at once (one per core, {os.cpu_count()} cores, and never below the "
            f"pipeline default of {PIPELINE_PARALLEL_TRIALS}); lower {names[1]}")


@dataclass(frozen=True)
class Suggestion:
    """Values for one trial; hand it back to `Tuner.tell` with the trial's outcome."""

    number: int
    values: dict[str, Value]

    def as_strings(self) -> dict[str, str]:
        """The values as the API's `trials[].hyperparameters` map (and the flags) print them."""
        return {name: format_value(value) for name, value in self.values.items()}

    def flags(self) -> list[str]:
        """`--name=value` flags appended to the trial's args."""
        return [f"--{name}={text}" for name, text in self.as_strings().items()]


def format_value(value: Value) -> str:
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


def final_metric(path: Path, tag: str) -> tuple[float, int] | None:
    """(value, global step) of the last `tag` line of a hypertune metric file, if finite.

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
        metric = (value, step) if finite else None
    return metric
