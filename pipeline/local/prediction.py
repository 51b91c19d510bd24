"""Online prediction for the local AI Platform Prediction server: instances, models, fast path.

A deployed version answers with its scikit-learn model, or with an ONNX copy of it run by
onnxruntime (about 100x less work per request) when, and only when, the copy predicts the
same class as the model on every row of the bundled data's test split (lot 9 of
MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(row))), 10): a superset of any run's test split) plus
a few rows with unseen categories and out-of-range numbers. The verdict and the ONNX file are
kept beside the version (`fastpath.json`, `model.onnx`, each written atomically), so the check
runs once per version and artifact, not at every server start.

Instances are parsed straight into numpy arrays: a list of the 12 feature values in
`schema.FEATURE_COLUMNS` order, or an object keyed by exactly those names (`Cover_Type` may be
present, so labelled rows can be sent as they are, and is ignored).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import pickle
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import schema
from pipeline.atomic import write_atomic
from pipeline.errors import one_line

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
VERDICT_FILE = "fastpath.json"
ONNX, SKLEARN = "onnx", "sklearn"
_NUMERIC = len(schema.NUMERIC_COLUMNS)
_FEATURES = len(schema.FEATURE_COLUMNS)
_OBJECT_KEYS = frozenset(schema.COLUMNS)
_ORDER = ", ".join(schema.FEATURE_COLUMNS)
_VERDICT_FORMAT = 1
# Tried in order. Double first: float32 rounding flips close calls. Raw scores first: the label
# is then the argmax of the decision function as in scikit-learn, not of probabilities that
# saturate to a tie far outside the training range.
_CONVERSIONS = (("double", True), ("double", False), ("float", True), ("float", False))


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
    """Parsed instances: `numeric` (10, n) float64, one row per numeric column; `categorical`
    one (n, 1) object array of str per categorical column (the ONNX inputs' shapes)."""

    numeric: np.ndarray
    categorical: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return self.numeric.shape[1]

    def frame(self) -> pd.DataFrame:
        """The model's input frame (trainer's `model_input` types), for the scikit-learn path."""
        import pandas as pd

        data: dict[str, Any] = dict(zip(schema.NUMERIC_COLUMNS, self.numeric, strict=True))
        data.update(zip(schema.CATEGORICAL_COLUMNS, (c.ravel() for c in self.categorical),
                        strict=True))
        return pd.DataFrame(data, columns=list(schema.FEATURE_COLUMNS))


def parse_instances(raw: bytes) -> Instances:
    """Parse and check a predict body `{"instances": [...]}`; the first problem is the error.

    Raises:
        PredictionError: naming the instance, the column and what was expected.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise PredictionError(f"the request body is not valid JSON ({one_line(error)}); send "
                              '{"instances": [...]}') from None
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
        values = _values(index, instance)
        for position in range(_NUMERIC):
            kind = type(values[position])
            if kind is not int and kind is not float:  # bool is not a number here
                raise _type_error(index, position, values[position], "a number")
        if type(values[-2]) is not str:
            raise _type_error(index, _FEATURES - 2, values[-2], "a string")
        if type(values[-1]) is not str:
            raise _type_error(index, _FEATURES - 1, values[-1], "a string")
        numbers.append(values[:_NUMERIC])
        first.append(values[-2])
        second.append(values[-1])
    try:
        numeric = np.array(numbers, dtype=np.float64)
    except OverflowError:
        numeric = None
    if numeric is None or not np.isfinite(numeric).all():
        raise _non_finite(numbers)
    return Instances(np.ascontiguousarray(numeric.T),
                     (np.array(first, dtype=object).reshape(-1, 1),
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


def _type_error(index: int, position: int, value: Any, expected: str) -> PredictionError:
    name = schema.FEATURE_COLUMNS[position]
    return PredictionError(f"instances[{index}] {name} is {_describe(value)}; expected {expected}")


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


# loaded versions ----------------------------------------------------------------------------

class Predictor:
    """One loaded version: its scikit-learn model and, when verified, its ONNX session."""

    def __init__(self, name: str, etag: str, artifact: Path, model: Any, session: Any,
                 verdict: dict) -> None:
        self.name = name
        self.version = name.rsplit("/", 1)[-1]
        self.etag = etag
        self.artifact = artifact
        self.model = model
        self.verdict = verdict
        self.path = ONNX if session is not None else SKLEARN
        self._session = session
        if session is not None:
            self._output = session.get_outputs()[0].name
            self._dtype = np.float64 if verdict["tensorType"] == "double" else np.float32

    def predict(self, instances: Instances) -> list:
        """Class ids, one per instance; a model that fails is a 400 like the cloud's."""
        try:
            if self._session is None:
                return self.model.predict(instances.frame()).tolist()
            columns = instances.numeric.astype(self._dtype, copy=False)
            feeds = {name: column.reshape(-1, 1) for name, column in
                     zip(schema.NUMERIC_COLUMNS, columns, strict=True)}
            feeds.update(zip(schema.CATEGORICAL_COLUMNS, instances.categorical, strict=True))
            return self._session.run([self._output], feeds)[0].ravel().tolist()
        except Exception as error:  # whatever the model raises on this input
            raise PredictionError(f"Prediction failed: {type(error).__name__}: "
                                  f"{one_line(error)}", reason="FAILED_PRECONDITION") from None


def load_predictor(record: dict, artifact: Path, cache_dir: Path) -> Predictor:
    """Load a version (its Version record and artifact) with its fast path, verified once.

    Raises:
        PredictionError: the artifact does not load.
    """
    model = _load_model(artifact, f"version {record['name']}")
    session, verdict = _fast_path(model, artifact, cache_dir)
    predictor = Predictor(record["name"], record.get("etag", ""), artifact, model, session,
                          verdict)
    log.log(logging.INFO if session is not None else logging.WARNING, "%s: serving with %s (%s)",
            record["name"], predictor.path, verdict["reason"])
    return predictor


def prepare_fast_path(artifact: Path, cache_dir: Path | None = None) -> dict:
    """Verify (or re-use) the fast path of an artifact and store it beside it; the verdict.

    For a deploy step: called on a staged version folder, before it becomes visible, it saves
    the first request the conversion and check (~0.3 s). `cache_dir` keeps the verification
    rows (default `<home>/cache`).

    Raises:
        PredictionError: the artifact does not load.
    """
    from pipeline.local.home import local_home

    model = _load_model(artifact, str(artifact))
    return _fast_path(model, artifact, cache_dir or local_home() / "cache")[1]


def _load_model(artifact: Path, what: str) -> Any:
    try:
        if artifact.name.endswith(".joblib"):
            import joblib

            return joblib.load(artifact)
        with open(artifact, "rb") as stream:
            return pickle.load(stream)
    except Exception as error:  # anything a broken or hand-replaced pickle raises
        raise PredictionError(f"{what} cannot be loaded ({type(error).__name__}: "
                              f"{one_line(error)}); deploy the model again",
                              reason="FAILED_PRECONDITION") from None


def read_verdict(version_dir: Path) -> dict | None:
    """The fast path verdict stored beside a version, or None."""
    try:
        verdict = json.loads((version_dir / VERDICT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) else None


def _fast_path(model: Any, artifact: Path, cache_dir: Path) -> tuple[Any, dict]:
    """(ONNX session or None, verdict): the stored verdict if still valid, else a new check."""
    key = {"format": _VERDICT_FORMAT, "artifactSha256": _sha256(artifact.read_bytes()),
           "libraries": _libraries(), "verificationData": _data_key()}
    verdict = read_verdict(artifact.parent)
    if verdict and verdict.get("key") == key:
        if verdict.get("path") != ONNX:
            return None, verdict
        try:
            onnx_bytes = (artifact.parent / ONNX_FILE).read_bytes()
            if _sha256(onnx_bytes) == verdict.get("onnxSha256"):
                return _session(onnx_bytes), verdict
        except Exception as error:  # a missing or damaged model.onnx: check again
            log.warning("%s: %s unusable (%s); verifying again", artifact.parent, ONNX_FILE,
                        one_line(error))
    verdict, onnx_bytes = build_fast_path(model, verification_rows(cache_dir))
    verdict = {**verdict, "key": key}
    try:
        if onnx_bytes is not None:
            write_atomic(artifact.parent / ONNX_FILE, onnx_bytes)
        else:
            (artifact.parent / ONNX_FILE).unlink(missing_ok=True)
        write_atomic(artifact.parent / VERDICT_FILE,
                      json.dumps(verdict, indent=1, sort_keys=True).encode())
    except OSError as error:  # the version was deleted meanwhile: serve from memory
        log.warning("%s: cannot keep the fast path verdict (%s)", artifact.parent,
                    one_line(error))
    return (_session(onnx_bytes) if onnx_bytes is not None else None), verdict


def build_fast_path(model: Any, rows: VerificationRows) -> tuple[dict, bytes | None]:
    """Convert the model to ONNX and compare its predictions with the model's on `rows`.

    Returns:
        (verdict, ONNX bytes): the verdict says `path` onnx or sklearn and why; the bytes are
        None unless every row agrees.
    """
    started = time.perf_counter()
    verdict: dict[str, Any] = {"path": SKLEARN, "testSplitRows": rows.test_rows,
                               "rowsChecked": len(rows.instances)}
    try:
        reference = np.asarray(model.predict(rows.instances.frame()))
    except Exception as error:  # a model that cannot take the schema's frame
        return {**verdict, "reason": f"the model fails on the verification rows "
                f"({type(error).__name__}: {one_line(error)})"}, None
    failures = []
    for tensor, raw_scores in _CONVERSIONS:
        try:
            onnx_bytes = _convert(model, tensor, raw_scores)
            labels = Predictor("check", "", Path(), model, _session(onnx_bytes),
                               {"tensorType": tensor}).predict(rows.instances)
        except Exception as error:  # skl2onnx refuses many estimators; that is a fallback
            failures.append(f"{tensor} tensors{' raw' if raw_scores else ''}: "
                            f"{type(error).__name__}: {one_line(error)[:200]}")
            continue
        agreeing = int(np.sum(np.asarray(labels) == reference))
        if agreeing == len(reference):
            return {**verdict, "path": ONNX, "tensorType": tensor, "rawScores": raw_scores,
                    "rowsAgreeing": agreeing,
                    "onnxSha256": _sha256(onnx_bytes),
                    "seconds": round(time.perf_counter() - started, 3),
                    "reason": f"ONNX ({tensor} tensors{', raw scores' if raw_scores else ''}) "
                              f"agrees on all {agreeing:,} verification rows ({rows.test_rows:,} "
                              f"test split + {agreeing - rows.test_rows} edge rows)"}, onnx_bytes
        failures.append(f"{tensor} tensors{' raw' if raw_scores else ''}: ONNX disagrees on "
                        f"{len(reference) - agreeing:,} of {len(reference):,} rows")
    return {**verdict, "seconds": round(time.perf_counter() - started, 3),
            "reason": "no verified ONNX copy: " + "; ".join(failures)}, None


def _convert(model: Any, tensor: str, raw_scores: bool) -> bytes:
    """skl2onnx conversion: one [None, 1] input per column, no zipmap, maybe raw scores."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if tensor == "double" else FloatTensorType
    inputs = ([(name, number([None, 1])) for name in schema.NUMERIC_COLUMNS]
              + [(name, StringTensorType([None, 1])) for name in schema.CATEGORICAL_COLUMNS])
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {"zipmap": False, "raw_scores": True} if raw_scores else {"zipmap": False}
    return convert_sklearn(model, initial_types=inputs,
                           options={id(final): options}).SerializeToString()


def _session(onnx_bytes: bytes) -> Any:
    """An onnxruntime session tuned for small requests: one thread, no thread handoff."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


# the verification rows ----------------------------------------------------------------------

@dataclass(frozen=True)
class VerificationRows:
    """The test split of the bundled data (`test_rows` rows) followed by a few edge rows."""

    instances: Instances
    test_rows: int


@lru_cache(maxsize=2)
def verification_rows(cache_dir: Path) -> VerificationRows:
    """The verification rows, from `cache_dir` or computed once from the bundled CSV (~1 s)."""
    path = cache_dir / f"verification-{_data_key()}.npz"
    try:
        with np.load(path) as stored:
            numeric, categorical = stored["numeric"], stored["categorical"].astype(object)
    except (OSError, ValueError, KeyError):
        numeric, categorical = _test_split()
        cache_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, numeric=numeric, categorical=categorical.astype(str))
        write_atomic(path, buffer.getvalue())
    test_rows = numeric.shape[1]
    edge_numeric, edge_categorical = _edge_rows(numeric[:, :100], categorical[:, :100])
    numeric = np.concatenate([numeric, edge_numeric], axis=1)
    categorical = np.concatenate([categorical, edge_categorical], axis=1)
    return VerificationRows(Instances(numeric, tuple(np.ascontiguousarray(c).reshape(-1, 1)
                                                     for c in categorical)), test_rows)


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    """(numeric (10, n), categorical (2, n)) of the bundled rows in the testing lots."""
    import farmhash
    import pandas as pd

    from pipeline.local.data import BUNDLED_CSV

    frame = schema.validate_frame(pd.read_csv(BUNDLED_CSV, dtype={
        name: str for name in schema.CATEGORICAL_COLUMNS}), str(BUNDLED_CSV))
    integers = set(schema.NUMERIC_COLUMNS) | {schema.LABEL_COLUMN}
    # BigQuery's TO_JSON_STRING(row): compact JSON, columns in table order.
    template = "{" + ",".join(f'"{name}":%d' if name in integers else f'"{name}":%s'
                              for name in schema.COLUMNS) + "}"
    columns = []
    for name in schema.COLUMNS:
        if name in integers:
            columns.append(frame[name].tolist())
        else:
            codes = frame[name].astype("category")
            quoted = np.array([json.dumps(value) for value in codes.cat.categories], dtype=object)
            columns.append(quoted[codes.cat.codes.to_numpy()].tolist())
    texts = [template % row for row in zip(*columns, strict=True)]
    fingerprints = np.fromiter(map(farmhash.fingerprint64, texts), dtype=np.uint64,
                               count=len(texts)).view(np.int64)
    chosen = np.isin(np.abs(fingerprints) % 10, schema.SPLIT_LOTS["testing"])
    test = frame[chosen]
    return (test[list(schema.NUMERIC_COLUMNS)].to_numpy(np.float64).T.copy(),
            test[list(schema.CATEGORICAL_COLUMNS)].to_numpy(object).T.copy())


def _edge_rows(numeric: np.ndarray, categorical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows no split holds: unseen and empty categories, fractional and out-of-range numbers."""
    unseen, empty = categorical.copy(), categorical.copy()
    unseen[0], empty[1] = "Unseen", ""
    return (np.concatenate([numeric, numeric, numeric * 3.7 - 1234.5], axis=1),
            np.concatenate([unseen, empty, categorical], axis=1))


def _data_key() -> str:
    """Changes when the bundled data file changes."""
    from pipeline.local.data import BUNDLED_CSV

    stat = BUNDLED_CSV.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


# helpers ------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _libraries() -> dict[str, str]:
    """Versions the verdict depends on: a new converter or runtime is checked again."""
    from importlib.metadata import version

    return {name: version(name) for name in ("scikit-learn", "skl2onnx", "onnxruntime")}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


