"""Online prediction for the local AI Platform Prediction server: loaded models, fast path.

A deployed version answers with its scikit-learn model, or with an ONNX copy of it run by
onnxruntime (about 100x less work per request) when, and only when, the copy predicts the
same class as the model on every row of the bundled data's test split (lot 9 of
MOD(ABS(FARM_FINGERPRINT(TO_JSON_STRING(row))), 10): a superset of any run's test split) plus
a few rows with unseen categories and out-of-range numbers. The verdict and the ONNX file are
kept beside the version (`fastpath.json`, `model.onnx`, each written atomically), so the check
runs once per version and artifact, not at every server start. Request bodies are parsed by
pipeline/local/instances.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import schema
from pipeline.atomic import write_atomic
from pipeline.errors import one_line
from pipeline.local.instances import Instances, PredictionError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
VERDICT_FILE = "fastpath.json"
ONNX, SKLEARN = "onnx", "sklearn"
NUMERIC_INPUT = "numeric_columns"  # the ONNX copy's (n, 10) input; one per categorical column
_FIRST_CATEGORICAL, _SECOND_CATEGORICAL = schema.CATEGORICAL_COLUMNS
_VERDICT_FORMAT = 2  # 2: the numeric columns are one ONNX input
# Tried in order. Double first: float32 rounding flips close calls. Raw scores first: the label
# is then the argmax of the decision function as in scikit-learn, not of probabilities that
# saturate to a tie far outside the training range.
_CONVERSIONS = (("double", True), ("double", False), ("float", True), ("float", False))


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
            self._outputs = [session.get_outputs()[0].name]
            self._float32 = verdict["tensorType"] == "float"

    def predict(self, instances: Instances) -> list:
        """Class ids, one per instance; a model that fails is a 400 like the cloud's."""
        try:
            if self._session is None:
                return self.model.predict(instances.frame()).tolist()
            numbers = instances.numbers
            first, second = instances.categorical
            feeds = {NUMERIC_INPUT: numbers.astype(np.float32) if self._float32 else numbers,
                     _FIRST_CATEGORICAL: first, _SECOND_CATEGORICAL: second}
            return self._session.run(self._outputs, feeds)[0].ravel().tolist()
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
    """skl2onnx conversion (one [None, 1] input per column, as the model selects columns by
    name; no zipmap, maybe raw scores), then the numeric columns made one input."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if tensor == "double" else FloatTensorType
    inputs = ([(name, number([None, 1])) for name in schema.NUMERIC_COLUMNS]
              + [(name, StringTensorType([None, 1])) for name in schema.CATEGORICAL_COLUMNS])
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {"zipmap": False, "raw_scores": True} if raw_scores else {"zipmap": False}
    converted = convert_sklearn(model, initial_types=inputs, options={id(final): options})
    return _one_numeric_input(converted).SerializeToString()


def _one_numeric_input(model: Any) -> Any:
    """The ONNX model with the 10 numeric [None, 1] inputs replaced by one [None, 10] input,
    NUMERIC_INPUT: a run with 3 inputs costs ONNX Runtime about half the time of one with 12.
    skl2onnx's ColumnTransformer concatenates the columns first; that Concat then takes the
    input as it is, and any other graph gets a Split into the named columns."""
    from onnx import helper, numpy_helper

    graph, names = model.graph, list(schema.NUMERIC_COLUMNS)
    numeric = [item for item in graph.input if item.name in names]
    element = numeric[0].type.tensor_type.elem_type
    users = [node for node in graph.node if set(node.input) & set(names)]
    concat = users[0] if len(users) == 1 else None
    if (concat is not None and concat.op_type == "Concat" and list(concat.input) == names
            and [helper.get_attribute_value(a) for a in concat.attribute] in ([1], [-1])
            and not {item.name for item in graph.output} & set(names)):
        concat.op_type = "Identity"
        del concat.input[:], concat.attribute[:]
        concat.input.append(NUMERIC_INPUT)
    else:
        graph.initializer.append(numpy_helper.from_array(np.ones(len(names), np.int64),
                                                         f"{NUMERIC_INPUT}_split"))
        graph.node.insert(0, helper.make_node("Split", [NUMERIC_INPUT, f"{NUMERIC_INPUT}_split"],
                                              names, axis=1))
    kept = [item for item in graph.input if item.name not in names]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(NUMERIC_INPUT, element,
                                                      [None, len(names)]), *kept])
    return model


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
    return VerificationRows(Instances(np.ascontiguousarray(numeric.T),
                                      tuple(np.ascontiguousarray(c).reshape(-1, 1)
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


