"""Predict request bodies: `{"instances": [...]}` parsed and checked straight into numpy arrays.

An instance is a list of the 12 feature values in `schema.FEATURE_COLUMNS` order, or an object
keyed by exactly those names (`Cover_Type` may be present, so labelled rows can be sent as they
are, and is ignored). Every problem is a one-line PredictionError naming the instance, the
column and what was expected.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from pipeline import schema
from pipeline.errors import one_line

if TYPE_CHECKING:
    import pandas as pd

_NUMERIC = len(schema.NUMERIC_COLUMNS)
_FEATURES = len(schema.FEATURE_COLUMNS)
_OBJECT_KEYS = frozenset(schema.COLUMNS)
_NUMBER_TYPES, _STRING = frozenset({int, float}), frozenset({str})  # bool is no number
_ORDER = ", ".join(schema.FEATURE_COLUMNS)


class PredictionError(Exception):
    """A predict request that cannot be answered: a one-line message, a 4xx HTTP status and
    the Google status name (INVALID_ARGUMENT for bad input, FAILED_PRECONDITION when the model
    fails, NOT_FOUND) that Vertex AI's error shape carries."""

    def __init__(self, message: str, status: int = 400, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")


@dataclass(frozen=True)
class Instances:
    """Parsed instances: `numbers` (n, 10) float64, one row per instance (the ONNX copy's
    numeric input); `categorical` one (n, 1) object array of str per categorical column."""

    numbers: np.ndarray
    categorical: tuple[np.ndarray, ...]

    @property
    def numeric(self) -> np.ndarray:
        """(10, n): one row per numeric column (a view)."""
        return self.numbers.T

    def __len__(self) -> int:
        return self.numbers.shape[0]

    def frame(self) -> pd.DataFrame:
        """The model's input frame (trainer's `model_input` types), for the scikit-learn path."""
        import pandas as pd

        data: dict[str, Any] = dict(zip(schema.NUMERIC_COLUMNS, self.numeric, strict=True))
        data.update(zip(schema.CATEGORICAL_COLUMNS, (c.ravel() for c in self.categorical),
                        strict=True))
        return pd.DataFrame(data, columns=list(schema.FEATURE_COLUMNS))


def parse_instances(raw: bytes) -> Instances:
    """Parse and check a predict body `{"instances": [...]}`; the first problem is the error.

    orjson reads a body 3-6x faster than json. It refuses what json reads otherwise (NaN,
    Infinity, numbers beyond float range, a BOM, UTF-16, lone surrogates) and reads integers
    past 64 bits as floats, so a body it refuses, or one found wrong, is read again by json,
    whose reading is the contract: the answer and every error are json's.

    Raises:
        PredictionError: naming the instance, the column and what was expected.
    """
    try:
        # every number orjson reads is finite: it refuses NaN, Infinity and 1e400
        return _instances(orjson.loads(raw), finite=True)
    except (orjson.JSONDecodeError, PredictionError):
        pass
    return _instances(_read_json(raw))


def _read_json(raw: bytes) -> Any:
    """json's reading of a body, which words the errors."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise PredictionError(f"the request body is not valid JSON ({one_line(error)}); send "
                              '{"instances": [...]}') from None


def _instances(body: Any, finite: bool = False) -> Instances:
    """Check a parsed predict body and build its arrays; `finite`: the parser read no NaN,
    infinite or too large number, so the check for them is skipped."""
    if type(body) is not dict:
        raise PredictionError(f"the request body is {_describe(body)}; send a JSON object "
                              '{"instances": [...]}')
    if "instances" not in body:
        raise PredictionError('the request body has no "instances"; send {"instances": [...]}')
    instances = body["instances"]
    if type(instances) is not list:
        raise PredictionError(f'"instances" is {_describe(instances)}; send a list of instances')
    if not instances:
        raise PredictionError('"instances" is empty; send at least one instance')
    numbers, first, second = [], [], []
    for index, instance in enumerate(instances):
        if type(instance) is not list or len(instance) != _FEATURES:
            instance = _values(index, instance)
        row = instance[:_NUMERIC]
        if (not _NUMBER_TYPES.issuperset(map(type, row)) or type(instance[-2]) is not str
                or type(instance[-1]) is not str):
            raise _type_error(index, instance)
        numbers.append(row)
        first.append(instance[-2])
        second.append(instance[-1])
    try:
        table = np.array(numbers, dtype=np.float64)
    except OverflowError:
        table = None
    if table is None or not (finite or np.isfinite(table).all()):
        raise _non_finite(numbers)
    return Instances(table, (np.array(first, dtype=object).reshape(-1, 1),
                             np.array(second, dtype=object).reshape(-1, 1)))


def _values(index: int, instance: Any) -> list:
    """The 12 feature values of one instance, in schema order."""
    if type(instance) is list:
        if len(instance) != _FEATURES:
            raise PredictionError(f"instances[{index}] has {len(instance)} values; expected "
                                  f"{_FEATURES}, in this order: {_ORDER}")
        return instance
    if type(instance) is dict:
        try:
            values = [instance[name] for name in schema.FEATURE_COLUMNS]
        except KeyError as missing:
            raise PredictionError(f"instances[{index}] has no {missing.args[0]!r}; an object "
                                  f"instance needs all {_FEATURES} features: {_ORDER}") from None
        if len(instance) > _FEATURES + (schema.LABEL_COLUMN in instance):
            extra = next(key for key in instance if key not in _OBJECT_KEYS)
            raise PredictionError(f"instances[{index}] has the unknown key {extra!r}; use the "
                                  f"{_FEATURES} feature names (and optionally "
                                  f"{schema.LABEL_COLUMN}, which is ignored)")
        return values
    raise PredictionError(f"instances[{index}] is {_describe(instance)}; send a list of the "
                          f"{_FEATURES} feature values or an object keyed by feature name")


def _type_error(index: int, values: list) -> PredictionError:
    """The error naming the instance's first value of a wrong type (the caller found one)."""
    position = next(position for position, value in enumerate(values)
                    if type(value) not in (_NUMBER_TYPES if position < _NUMERIC else _STRING))
    expected = "a number" if position < _NUMERIC else "a string"
    return PredictionError(f"instances[{index}] {schema.FEATURE_COLUMNS[position]} is "
                           f"{_describe(values[position])}; expected {expected}")


def _non_finite(numbers: list[list]) -> PredictionError:
    """The error naming the first NaN, infinite or too large number."""
    for index, values in enumerate(numbers):
        for position, value in enumerate(values):
            try:
                finite = math.isfinite(float(value))
            except OverflowError:
                finite = False
            if not finite:
                return PredictionError(f"instances[{index}] {schema.FEATURE_COLUMNS[position]} "
                                       f"is {_describe(value)}; expected a finite number")
    return PredictionError("a number is not finite; send finite numbers")  # not reached


def _describe(value: Any) -> str:
    """A JSON value as a message shows it: its text (shortened) and JSON type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        text = repr(value) if isinstance(value, float) else str(value)
        return text if len(text) <= 24 else f"{text[:20]}... (a {len(text)}-digit number)"
    if isinstance(value, str):
        text = json.dumps(value)
        return f"{text if len(text) <= 42 else text[:38] + '...'} (a string)"
    return "a list" if isinstance(value, list) else "an object"
