"""The lean `:predict` path: orjson's reading of a body agrees with json's, answers are the
bytes json and Starlette write, the ONNX copy takes the numeric columns as one input, a client
gone before its body gets no answer, and the request log's lines.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import time
from datetime import datetime
from pathlib import Path

import onnx
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler
from starlette.responses import JSONResponse, Response

from pipeline import schema
from pipeline.cli.serve import RequestLog
from pipeline.local import instances as parsing
from pipeline.local.emulator.asgi import error_json, read_body, send_json
from pipeline.local.emulator.predict import (
    ServedModels,
    _answer_headers,
    _predictions_body,
    answer_predict,
)
from pipeline.local.instances import PredictionError, parse_instances
from pipeline.local.prediction import (
    NUMERIC_INPUT,
    build_fast_path,
    verification_rows,
)
from pipeline.local.registry import Registry
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "covertype.csv.gz"
FEATURES = list(schema.FEATURE_COLUMNS)
GOOD = [3422, 184, 14, 466, 27, 2711, 223, 249, 156, 1752, "Commanche", "C7756"]


def _outcome(parse, raw: bytes) -> tuple:
    """What a parse gives, exactly: the arrays' bytes, or the error's message and status."""
    try:
        instances = parse(raw)
    except PredictionError as error:
        return "error", str(error), error.status
    numbers = instances.numbers
    return ("instances", numbers.dtype.str, numbers.shape, numbers.tobytes(),
            [column.ravel().tolist() for column in instances.categorical])


def _json_reading(raw: bytes) -> parsing.Instances:
    """The parse as it was before orjson: json reads every body."""
    return parsing._instances(parsing._read_json(raw))


# orjson's reading agrees with json's --------------------------------------------------------

EDGE_NUMBERS = st.sampled_from([2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 2 ** 64, 2 ** 64 + 1,
                                -2 ** 63 - 1, 10 ** 300, 10 ** 400, -10 ** 309, 1e308,
                                1.7976931348623157e308, 5e-324, -0.0, 0.1])
NUMBERS = (st.integers(-2 ** 70, 2 ** 70) | st.floats() | EDGE_NUMBERS
           | st.integers(-10 ** 6, 10 ** 6))
STRINGS = (st.sampled_from(schema.SOIL_TYPES + schema.WILDERNESS_AREAS) | st.text(max_size=5)
           | st.sampled_from(["\ud800", "a\udfff", "é", "\x00", "\u2028"]))
SCALARS = st.none() | st.booleans() | NUMBERS | STRINGS
ROW = st.tuples(*[NUMBERS | SCALARS] * 10, STRINGS | SCALARS, STRINGS | SCALARS).map(list)
INSTANCE = (ROW | ROW.map(lambda row: dict(zip(FEATURES, row, strict=True)))
            | st.lists(SCALARS, min_size=10, max_size=13)
            | st.dictionaries(st.sampled_from([*schema.COLUMNS, "extra"]), SCALARS)
            | SCALARS)
VALID_ROW = st.tuples(*[st.integers(-2 ** 70, 2 ** 70) | st.floats(-1e300, 1e300)
                        | EDGE_NUMBERS] * 10, STRINGS, STRINGS).map(list)
BODIES = (st.fixed_dictionaries({"instances": st.lists(INSTANCE, max_size=3)})
          | st.fixed_dictionaries({"instances": st.lists(VALID_ROW, min_size=1, max_size=3)})
          | st.fixed_dictionaries({"instances": st.lists(VALID_ROW, min_size=1, max_size=2)},
                                  optional={"parameters": SCALARS})
          | SCALARS | st.lists(SCALARS, max_size=2))


def _encodings(body: object) -> list[bytes]:
    """The body as clients may send it: ASCII JSON, UTF-8 (with lone surrogates as json.loads
    reads them), with a BOM, and UTF-16."""
    text = json.dumps(body)
    return [text.encode(), json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"),
            b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")]


@settings(max_examples=1500, deadline=None, database=None)
@given(body=BODIES)
def test_orjson_reads_bodies_as_json_does(body) -> None:
    for raw in _encodings(body):
        assert _outcome(parse_instances, raw) == _outcome(_json_reading, raw), raw[:300]


NUMBER_TEXT = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
                            fullmatch=True)


@settings(max_examples=400, deadline=None, database=None)
@given(numbers=st.lists(NUMBER_TEXT | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400",
                                                       "-0", "-0.0", "1E+2"]),
                        min_size=10, max_size=10),
       spaces=st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_orjson_reads_number_literals_as_json_does(numbers, spaces) -> None:
    """Every number literal gives the very same float64 bits, or the same error."""
    raw = (f'{spaces}{{"instances":{spaces}[[{f",{spaces}".join(numbers)},"Rawah","C7744"]]}}'
           f'{spaces}').encode()
    assert _outcome(parse_instances, raw) == _outcome(_json_reading, raw), raw


def test_bad_bodies_get_json_s_errors() -> None:
    """What orjson refuses or reads otherwise is worded from json's reading."""
    good = ',"Rawah","C7744"'
    cases = {
        b'{"instances": [[NaN, 1, 2, 3, 4, 5, 6, 7, 8, 9' + good.encode() + b"]]}":
            "instances[0] Elevation is nan; expected a finite number",
        b'{"instances": [[1e400, 1, 2, 3, 4, 5, 6, 7, 8, 9' + good.encode() + b"]]}":
            "instances[0] Elevation is inf; expected a finite number",
        b'{"instances": [[1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 123456789012345678901234567890, "C"]]}':
            "instances[0] Wilderness_Area is 12345678901234567890... (a 30-digit number); "
            "expected a string",
        b"123456789012345678901234567890":
            "the request body is 12345678901234567890... (a 30-digit number); send a JSON "
            'object {"instances": [...]}',
        b"\xff": "the request body is not valid JSON ('utf-8' codec can't decode byte 0xff in "
                 "position 0: invalid start byte); send {\"instances\": [...]}",
    }
    for raw, message in cases.items():
        with pytest.raises(PredictionError) as raised:
            parse_instances(raw)
        assert str(raised.value) == message


def test_bodies_orjson_refuses_that_json_reads_still_predict() -> None:
    values = [2596, 51, 3, 258, 0, 510, 221, 232, 148, 18446744073709551617]
    for raw in (b'\xef\xbb\xbf{"instances": [[2596, 51, 3, 258, 0, 510, 221, 232, 148, 6279, '
                b'"Rawah", "C7744"]]}',
                json.dumps({"instances": [[*values, "Rawah", "\ud800"]]}).encode()):
        assert _outcome(parse_instances, raw)[0] == "instances"
    parsed = parse_instances(json.dumps({"instances": [[*values, "Rawah", "C"]]}).encode())
    assert parsed.numbers[0, -1] == float(18446744073709551617)


# the answers are json's and Starlette's bytes -----------------------------------------------

@settings(max_examples=500, deadline=None, database=None)
@given(predictions=st.lists(st.integers(-2 ** 70, 2 ** 70) | st.integers(0, 6) | st.booleans()
                            | st.floats() | st.text(max_size=4) | st.none(), min_size=1))
def test_predictions_are_written_as_json_dumps_writes_them(predictions) -> None:
    expected = json.dumps({"predictions": predictions}, separators=(",", ":")).encode()
    assert _predictions_body(predictions) == expected


def _messages(app_call) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    asyncio.run(app_call({"type": "http"}, receive, send))
    return sent


@pytest.mark.parametrize("content", [
    {"error": "model absent not found in project local; deploy it first"},
    {"error": "instances[0] Soil_Type is \"é\\u2028\" (a string); expected a number"},
    {"error": {"code": 404, "message": "endpoint 7 not found ✓", "status": "NOT_FOUND"}},
])
def test_errors_are_starlettes_json_responses(content) -> None:
    for status in (400, 404):
        starlette = _messages(JSONResponse(content, status_code=status))

        async def ours(_: dict, __, send, status=status) -> None:
            await send_json(send, status, error_json(content))

        assert _messages(ours) == starlette


def test_predictions_are_starlettes_responses() -> None:
    starlette = _messages(Response(json.dumps({"predictions": [3, 1]}, separators=(",", ":")),
                                   media_type="application/json",
                                   headers={"X-Model-Version": "v1",
                                            "X-Prediction-Path": "onnx"}))

    async def ours(_: dict, __, send) -> None:
        await send_json(send, 200, _predictions_body([3, 1]), _answer_headers("v1", "onnx"))

    assert _messages(ours) == starlette


def test_a_client_gone_before_its_body_gets_no_answer(tmp_path: Path) -> None:
    served = ServedModels(Registry(tmp_path / "registry"), tmp_path / "cache")

    async def gone(_: dict, receive, send) -> None:
        await answer_predict(served, "local", "absent", None, receive, send)

    assert _messages(gone) == []


def test_a_body_in_chunks_is_read_whole() -> None:
    def receiver(messages: list[dict]):
        async def receive() -> dict:
            return messages.pop(0)
        return receive

    chunks = [{"type": "http.request", "body": part, "more_body": more}
              for part, more in ((b'{"inst', True), (b"", True), (b'ances": []}', False))]
    assert asyncio.run(read_body(receiver(chunks))) == b'{"instances": []}'
    gone = [{"type": "http.request", "body": b"{", "more_body": True},
            {"type": "http.disconnect"}]
    assert asyncio.run(read_body(receiver(gone))) is None


# the ONNX copy takes the numeric columns as one input ---------------------------------------

@pytest.fixture(scope="module")
def fitted() -> dict:
    """The trainer's model, and one whose numeric columns go to two transformers."""
    frame = schema.validate_frame(pd.read_csv(DATA, nrows=3000, dtype={
        name: str for name in schema.CATEGORICAL_COLUMNS}), str(DATA))
    trainer = load_trainer()
    features, labels = trainer.model_input(frame), frame[schema.LABEL_COLUMN]
    numeric = list(schema.NUMERIC_COLUMNS)
    split = Pipeline([("preprocessor", ColumnTransformer([
        ("first", StandardScaler(), numeric[:4]), ("rest", MinMaxScaler(), numeric[4:]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), list(schema.CATEGORICAL_COLUMNS))])),
        ("classifier", SGDClassifier(loss="log_loss", random_state=0))])
    return {"trainer": trainer.build_model().fit(features, labels),
            "split": split.fit(features, labels)}


@pytest.mark.parametrize(("model", "takes_input"), [("trainer", "Identity"), ("split", "Split")])
def test_onnx_copy_takes_one_numeric_input(fitted, tmp_path_factory, model, takes_input) -> None:
    """skl2onnx's Concat of the numeric columns takes the input as it is; any other graph gets
    a Split into the named columns. Either is verified on every row."""
    rows = verification_rows(tmp_path_factory.getbasetemp() / "verification-cache")
    verdict, onnx_bytes = build_fast_path(fitted[model], rows)
    assert verdict["path"] == "onnx", verdict["reason"]
    assert verdict["rowsAgreeing"] == verdict["rowsChecked"] == len(rows.instances)
    graph = onnx.load_from_string(onnx_bytes).graph
    inputs = {item.name: [dim.dim_value or dim.dim_param or None
                          for dim in item.type.tensor_type.shape.dim] for item in graph.input}
    assert list(inputs) == [NUMERIC_INPUT, *schema.CATEGORICAL_COLUMNS]
    assert inputs[NUMERIC_INPUT][1] == len(schema.NUMERIC_COLUMNS)
    users = [node.op_type for node in graph.node if NUMERIC_INPUT in node.input]
    assert users == [takes_input]
    assert not set(schema.NUMERIC_COLUMNS) & {item.name for item in graph.input}


def test_instances_keep_both_layouts() -> None:
    parsed = parse_instances(json.dumps({"instances": [GOOD, GOOD[:3] + [1] * 7 + GOOD[10:]]})
                             .encode())
    assert parsed.numbers.shape == (2, 10) and parsed.numbers.flags.c_contiguous
    assert parsed.numeric.shape == (10, 2)
    assert parsed.numeric[:, 1].tolist() == [3422, 184, 14] + [1] * 7
    assert list(parsed.frame().columns) == FEATURES and len(parsed) == 2


# the request log --------------------------------------------------------------------------------

LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) covertype\.serve POST /x (\d+) "
                  r"\d+\.\d ms")


def test_request_log_lines_carry_their_own_time() -> None:
    """One line a request; the time of day, formatted once a second, is each request's own."""
    async def app(scope: dict, receive, send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(_: dict) -> None:
        pass

    stream = io.StringIO()
    log = RequestLog(app, stream=stream, interval=0.01)
    windows = []

    async def requests() -> None:
        for pause in (0, 0, 1.1):
            await asyncio.sleep(pause)
            before = time.time()
            await log({"type": "http", "method": "POST", "path": "/x"}, None, send)
            windows.append((before, time.time()))
        await asyncio.sleep(0.05)

    asyncio.run(requests())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    for line, (before, after) in zip(lines, windows, strict=True):
        stamp, milliseconds, status = LINE.fullmatch(line).groups()
        logged = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(
            milliseconds) / 1000
        assert status == "201" and before - 0.001 <= logged <= after + 0.001, (line, before)
    assert windows[2][0] - windows[1][1] > 1  # the last line is a later second's
