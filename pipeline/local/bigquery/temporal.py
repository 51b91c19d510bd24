"""The verified date, datetime, time and timestamp functions (rules; see functions.py).

BigQuery's DATE is DuckDB's DATE, DATETIME is TIMESTAMP, TIME is TIME and TIMESTAMP is
TIMESTAMPTZ in a UTC session. Date parts and format elements are checked one by one: only
those the suite verified pass.
"""
from __future__ import annotations

import re

from sqlglot import exp

from pipeline.local.bigquery.functions import timestamp_text
from pipeline.local.bigquery.names import NotSupportedError
from pipeline.local.bigquery.rules import Context, call, cast, interval_count, rule, string_literal

_WEEKDAYS = ("SUNDAY", "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY")
_DUCKDB_TYPES = {"DATE": "DATE", "DATETIME": "TIMESTAMP", "TIME": "TIME",
                 "TIMESTAMP": "TIMESTAMPTZ"}
# FORMAT_* elements the suite verified, as DuckDB strftime elements; %e (a space-padded day,
# inside %c) has no strftime element and is computed.
_FORMAT_ELEMENTS = {"%Y": "%Y", "%y": "%y", "%m": "%m", "%d": "%d", "%b": "%b", "%H": "%H",
                    "%M": "%M", "%S": "%S", "%R": "%H:%M", "%c": "%a %b %e %H:%M:%S %Y"}
# Elements of a time of day have no meaning for a DATE, and dates none for a TIME.
_NOT_FOR = {"DATE": {"%H", "%M", "%S", "%R", "%c"}, "TIME": {"%Y", "%y", "%m", "%d", "%b", "%c"}}
# PARSE_* elements the suite verified, as DuckDB strptime elements.
_PARSE_ELEMENTS = {"%Y": "%Y", "%m": "%m", "%d": "%d", "%H": "%H", "%M": "%M", "%S": "%S",
                   "%I": "%I", "%p": "%p"}
# sqlglot stores BigQuery format strings in its own notation (%x as %m/%d/%y, %F as
# %Y-%m-%d: the same elements); these undo the expansions that are not plain elements.
_SQLGLOT_ELEMENTS = [("%a %b %e %H:%M:%S %Y", "%c"), ("%S.%f", "%E6S"), ("%-d", "%e")]


def format_elements(node: exp.Expression | None, what: str) -> list[str]:
    """A literal format string split into BigQuery elements (`%x`) and literal text."""
    template = string_literal(node, what)
    for sqlglot_form, element in _SQLGLOT_ELEMENTS:
        template = template.replace(sqlglot_form, element)
    return [piece for piece in re.split(r"(%E6S|%.)", template) if piece]


def part(node: exp.Expression | None, what: str, allowed: set[str]) -> str:
    """A date part argument (DAY, WEEK(MONDAY), ...) as text, refused unless verified."""
    if isinstance(node, exp.WeekStart):
        text = f"WEEK({node.this.name.upper()})"
    elif isinstance(node, exp.Var | exp.Literal | exp.Column | exp.Identifier):
        text = node.name.upper()
    else:
        text = "" if node is None else node.sql(dialect="bigquery").upper()
    if text not in allowed:
        raise NotSupportedError(f"{what} with {text or 'no part'}")
    return text


def _weekday(text: str) -> exp.Expression:
    """The weekday number (0 = Sunday) of WEEK or WEEK(<day>)."""
    day = text[5:-1] if text.startswith("WEEK(") else "SUNDAY"
    return exp.Literal.number(_WEEKDAYS.index(day))


def _as(node: exp.Expression, ctx: Context, what: str,
        kinds: set[str]) -> tuple[exp.Expression, str]:
    """The argument cast to its DuckDB type; a string literal counts as the first kind."""
    if isinstance(node, exp.Literal) and node.is_string:
        kind = next(iter(sorted(kinds)))
        return cast(node, _DUCKDB_TYPES[kind]), kind
    kind = ctx.require(what, node, kinds | {"NULL"}) or next(iter(sorted(kinds)))
    return cast(node, _DUCKDB_TYPES.get(kind, "DATE")), kind


# Constructors and conversions ------------------------------------------------------------

@rule(exp.DateFromParts, exp.TimeFromParts, exp.TimestampFromParts)
def _from_parts(node: exp.Expression, ctx: Context) -> exp.Expression:
    fields = [a for a in node.args.values() if isinstance(a, exp.Expression)]
    for argument in fields:
        ctx.require("DATE/TIME parts", argument, {"INT64"})
    name = {exp.DateFromParts: "make_date", exp.TimeFromParts: "make_time"}.get(
        type(node), "make_timestamp")
    return call(name, *(cast(a, "BIGINT") for a in fields[:-1]),
                cast(fields[-1], "DOUBLE" if name != "make_date" else "BIGINT"))


@rule(exp.Date)
def _date(node: exp.Expression, ctx: Context) -> exp.Expression:
    zone = node.args.get("zone")
    value, kind = _as(node.this, ctx, "DATE", {"DATE", "DATETIME", "TIMESTAMP"})
    if kind == "TIMESTAMP":
        return cast(call("timezone", _zone(zone), value), "DATE")
    if zone is not None:
        raise NotSupportedError("DATE with a time zone and no TIMESTAMP")
    return cast(value, "DATE")


@rule(exp.Datetime)
def _datetime(node: exp.Expression, ctx: Context) -> exp.Expression:
    value, kind = _as(node.this, ctx, "DATETIME", {"TIMESTAMP"})
    return call("timezone", _zone(node.expression), value)


@rule(exp.Time)
def _time(node: exp.Expression, ctx: Context) -> exp.Expression:
    value, _ = _as(node.this, ctx, "TIME", {"TIMESTAMP"})
    return cast(call("timezone", _zone(node.args.get("zone")), value), "TIME")


@rule(exp.TsOrDsToTime)
def _time_of_datetime(node: exp.Expression, ctx: Context) -> exp.Expression | None:
    if isinstance(node.parent, exp.TimeToStr):
        return None  # FORMAT_TIME's argument, checked by its rule
    value, _ = _as(node.this, ctx, "TIME", {"DATETIME"})
    return cast(value, "TIME")


@rule(exp.Timestamp)
def _timestamp(node: exp.Expression, ctx: Context) -> exp.Expression:
    zone = node.args.get("zone")
    if isinstance(node.this, exp.Literal) and node.this.is_string:
        text = node.this.this
        if zone is None:
            return cast(exp.Literal.string(timestamp_text(text)), "TIMESTAMPTZ")
        if re.search(r"(UTC|Z|[+-]\d{1,2}(:\d{2})?)\s*$", text):
            raise NotSupportedError("TIMESTAMP of a string with a zone and a time zone")
        return call("timezone", _zone(zone), cast(node.this, "TIMESTAMP"))
    value, kind = _as(node.this, ctx, "TIMESTAMP", {"DATE", "DATETIME"})
    return call("timezone", _zone(zone), cast(value, "TIMESTAMP"))


@rule(exp.String)
def _string_of_timestamp(node: exp.Expression, ctx: Context) -> exp.Expression:
    if _zone(node.args.get("zone")).this != "UTC":
        raise NotSupportedError("STRING with a time zone other than UTC")
    value, _ = _as(node.this, ctx, "STRING", {"TIMESTAMP"})
    return cast(value, "VARCHAR")


def _zone(node: exp.Expression | None) -> exp.Literal:
    """A time zone argument: a string literal, UTC by default."""
    if node is None:
        return exp.Literal.string("UTC")
    return exp.Literal.string(string_literal(node, "a time zone"))


@rule(exp.UnixDate)
def _unix_date(node: exp.Expression, ctx: Context) -> exp.Expression:
    value, _ = _as(node.this, ctx, "UNIX_DATE", {"DATE"})
    return exp.Sub(this=value, expression=cast(exp.Literal.string("1970-01-01"), "DATE"))


@rule(exp.DateFromUnixDate)
def _date_from_unix_date(node: exp.Expression, ctx: Context) -> exp.Expression:
    ctx.require("DATE_FROM_UNIX_DATE", node.this, {"INT64"})
    return exp.Add(this=cast(exp.Literal.string("1970-01-01"), "DATE"),
                   expression=cast(node.this, "INTEGER"))


_SCALES = {"UnixSeconds": 1_000_000, "UnixMillis": 1000, "UnixMicros": 1}


@rule(exp.UnixSeconds, exp.UnixMillis, exp.UnixMicros)
def _unix_time(node: exp.Expression, ctx: Context) -> exp.Expression:
    value, _ = _as(node.this, ctx, type(node).__name__, {"TIMESTAMP"})
    return call("bq_floor_div", call("epoch_us", value),
                exp.Literal.number(_SCALES[type(node).__name__]))


@rule(exp.UnixToTime)
def _timestamp_from_unix(node: exp.Expression, ctx: Context) -> exp.Expression:
    ctx.require("TIMESTAMP_SECONDS", node.this, {"INT64"})
    scale = node.args.get("scale")
    factor = {None: 1_000_000, "3": 1000, "6": 1}.get(scale.name if scale else None)
    if factor is None:
        raise NotSupportedError("TIMESTAMP_* of this unit")
    micros = exp.Mul(this=cast(node.this, "BIGINT"), expression=exp.Literal.number(factor))
    return call("make_timestamptz", micros)


# Arithmetic, differences, truncation ------------------------------------------------------

_ADD = {exp.DateAdd: ("DATE_ADD", "DATE", {"DAY"}), exp.DateSub: ("DATE_SUB", "DATE", {"DAY"}),
        exp.DatetimeAdd: ("DATETIME_ADD", "DATETIME", {"MINUTE"}),
        exp.DatetimeSub: ("DATETIME_SUB", "DATETIME", {"MINUTE"}),
        exp.TimeAdd: ("TIME_ADD", "TIME", {"MINUTE"}),
        exp.TimeSub: ("TIME_SUB", "TIME", {"MINUTE"}),
        exp.TimestampAdd: ("TIMESTAMP_ADD", "TIMESTAMP", {"MINUTE"}),
        exp.TimestampSub: ("TIMESTAMP_SUB", "TIMESTAMP", {"MINUTE"})}


@rule(*_ADD)
def _add(node: exp.Expression, ctx: Context) -> exp.Expression:
    what, kind, units = _ADD[type(node)]
    unit = part(node.args.get("unit"), what, units)
    value, _ = _as(node.this, ctx, what, {kind})
    step = exp.Interval(this=interval_count(node.expression, ctx, what), unit=exp.var(unit))
    operator = exp.Add if what.endswith("_ADD") else exp.Sub
    return cast(operator(this=value, expression=step), _DUCKDB_TYPES[kind])


_DIFF = {exp.DateDiff: ("DATE_DIFF", "DATE"), exp.DatetimeDiff: ("DATETIME_DIFF", "DATETIME"),
         exp.TimeDiff: ("TIME_DIFF", "TIME")}
_CALENDAR_PARTS = {"DAY", "WEEK", "WEEK(SUNDAY)", "WEEK(MONDAY)", "ISOWEEK", "YEAR", "ISOYEAR"}


@rule(*_DIFF)
def _diff(node: exp.Expression, ctx: Context) -> exp.Expression:
    """*_DIFF of DATE, DATETIME, TIME: the number of part boundaries between the values."""
    what, kind = _DIFF[type(node)]
    allowed = {"MINUTE", "HOUR"} if kind == "TIME" else _CALENDAR_PARTS | (
        {"HOUR"} if kind == "DATETIME" else set())
    unit = part(node.args.get("unit"), what, allowed)
    end, _ = _as(node.this, ctx, what, {kind})
    start, _ = _as(node.expression, ctx, what, {kind})
    if unit in ("DAY", "HOUR", "MINUTE", "YEAR"):
        return call("date_diff", exp.Literal.string(unit.lower()), start, end)
    if unit == "ISOYEAR":
        return exp.Sub(this=call("isoyear", end), expression=call("isoyear", start))
    weekday = _weekday("WEEK(MONDAY)" if unit == "ISOWEEK" else unit)
    days = exp.Sub(this=call("bq_week_start", end, weekday),
                   expression=call("bq_week_start", start, weekday.copy()))
    return exp.IntDiv(this=exp.Paren(this=days), expression=exp.Literal.number(7))


@rule(exp.TimestampDiff)
def _timestamp_diff(node: exp.Expression, ctx: Context) -> exp.Expression:
    """TIMESTAMP_DIFF counts whole units of elapsed time (DAY is 24 hours), truncated."""
    unit = part(node.args.get("unit"), "TIMESTAMP_DIFF", {"HOUR", "DAY"})
    end, _ = _as(node.this, ctx, "TIMESTAMP_DIFF", {"TIMESTAMP"})
    start, _ = _as(node.expression, ctx, "TIMESTAMP_DIFF", {"TIMESTAMP"})
    micros = exp.Sub(this=call("epoch_us", end), expression=call("epoch_us", start))
    size = 3_600_000_000 * (24 if unit == "DAY" else 1)
    return exp.IntDiv(this=exp.Paren(this=micros), expression=exp.Literal.number(size))


_TRUNC = {exp.DateTrunc: ("DATE_TRUNC", "DATE", {"MONTH", "WEEK(MONDAY)", "ISOYEAR"}),
          exp.DatetimeTrunc: ("DATETIME_TRUNC", "DATETIME", {"DAY", "WEEK(MONDAY)",
                                                              "ISOYEAR"}),
          exp.TimeTrunc: ("TIME_TRUNC", "TIME", {"HOUR"}),
          exp.TimestampTrunc: ("TIMESTAMP_TRUNC", "TIMESTAMP", {"DAY", "WEEK(MONDAY)",
                                                                 "ISOYEAR"})}


@rule(*_TRUNC)
def _trunc(node: exp.Expression, ctx: Context) -> exp.Expression:
    what, kind, units = _TRUNC[type(node)]
    unit = part(node.args.get("unit"), what, units)
    value, _ = _as(node.this, ctx, what, {kind})
    zone = node.args.get("zone")
    if zone is not None and kind != "TIMESTAMP":
        raise NotSupportedError(f"{what} with a time zone")
    local = call("timezone", _zone(zone), value) if kind == "TIMESTAMP" else value
    if unit == "WEEK(MONDAY)":
        day: exp.Expression = call("bq_week_start", local, exp.Literal.number(1))
    elif unit == "ISOYEAR":
        day = call("bq_isoyear_start", local)
    elif kind == "TIME":
        return call("make_time", call("hour", value), exp.Literal.number(0),
                    exp.Literal.number(0.0))
    else:
        day = call("date_trunc", exp.Literal.string(unit.lower()), local)
    if kind == "DATE":
        return cast(day, "DATE")
    truncated = cast(day, "TIMESTAMP")
    return call("timezone", _zone(zone), truncated) if kind == "TIMESTAMP" else truncated


@rule(exp.Extract)
def _extract(node: exp.Expression, ctx: Context) -> exp.Expression:
    unit = part(node.this, "EXTRACT", {"DAY", "YEAR", "HOUR", "ISOYEAR", "ISOWEEK", "WEEK",
                                       "WEEK(SUNDAY)", "WEEK(MONDAY)"})
    if isinstance(node.expression, exp.AtTimeZone):
        raise NotSupportedError("EXTRACT with AT TIME ZONE")
    value, kind = _as(node.expression, ctx, "EXTRACT",
                      {"DATE", "DATETIME", "TIMESTAMP"} | ({"TIME"} if unit == "HOUR" else set()))
    if kind != "TIME" and unit == "HOUR" and kind == "DATE":
        raise NotSupportedError("EXTRACT HOUR from a DATE")
    if unit.startswith("WEEK"):
        if kind == "TIMESTAMP":
            # The page's one example of this form does not match BigQuery's UTC default.
            raise NotSupportedError(f"EXTRACT {unit} from a TIMESTAMP")
        return call("bq_week", value, _weekday(unit))
    name = {"ISOWEEK": "week"}.get(unit, unit.lower())
    return cast(call(name, value), "BIGINT")


@rule(exp.LastDay)
def _last_day(node: exp.Expression, ctx: Context) -> exp.Expression:
    unit = part(node.args.get("unit") or exp.var("MONTH"), "LAST_DAY",
                {"MONTH", "YEAR", "WEEK(SUNDAY)", "WEEK(MONDAY)"})
    value, _ = _as(node.this, ctx, "LAST_DAY", {"DATE", "DATETIME"})
    day = cast(value, "DATE")
    if unit == "MONTH":
        return call("last_day", day)
    if unit == "YEAR":
        return call("make_date", call("year", day), exp.Literal.number(12),
                    exp.Literal.number(31))
    return exp.Add(this=call("bq_week_start", day, _weekday(unit)),
                   expression=exp.Literal.number(6))


# Formatting and parsing ------------------------------------------------------------------

@rule(exp.TimeToStr)
def _format(node: exp.Expression, ctx: Context) -> exp.Expression:
    """FORMAT_DATE, FORMAT_DATETIME, FORMAT_TIME, FORMAT_TIMESTAMP (UTC only)."""
    inner = node.this
    kind = {exp.TsOrDsToDate: "DATE", exp.TsOrDsToDatetime: "DATETIME",
            exp.TsOrDsToTime: "TIME", exp.TsOrDsToTimestamp: "TIMESTAMP"}.get(type(inner))
    what = f"FORMAT_{kind or 'TIMESTAMP'}"
    value, kind = _as(inner.this if kind else inner, ctx, what, {kind or "TIMESTAMP"})
    zone = node.args.get("zone")
    if zone is not None and _zone(zone).this != "UTC":
        raise NotSupportedError(f"{what} with a time zone other than UTC")
    local = cast(value, "TIMESTAMP") if kind == "TIMESTAMP" else value
    if kind == "TIME":  # DuckDB formats times as timestamps
        local = exp.Add(this=cast(exp.Literal.string("1970-01-01"), "DATE"), expression=value)
    text = ""
    for piece in format_elements(node.args.get("format"), what):
        if piece == "%Z" and kind == "TIMESTAMP":
            text += "UTC"
        elif piece.startswith("%") and piece != "%%":
            if piece not in _FORMAT_ELEMENTS or piece in _NOT_FOR.get(kind, ()):
                raise NotSupportedError(f"{what} with {piece}")
            text += _FORMAT_ELEMENTS[piece]
        else:
            text += piece.replace("%", "%%")
    parts = [call("strftime", local.copy(), exp.Literal.string(chunk)) if chunk else None
             for chunk in text.split("%e")]
    day = call("lpad", cast(call("day", local.copy()), "VARCHAR"), exp.Literal.number(2),
               exp.Literal.string(" "))
    result: exp.Expression | None = None
    for index, part_node in enumerate(parts):
        pieces = ([day.copy()] if index else []) + ([part_node] if part_node else [])
        for piece_node in pieces:
            result = piece_node if result is None else exp.DPipe(
                this=result, expression=piece_node, safe=False)
    return result if result is not None else exp.Literal.string("")


@rule(exp.StrToDate, exp.ParseDatetime, exp.ParseTime, exp.StrToTime)
def _parse(node: exp.Expression, ctx: Context) -> exp.Expression:
    """PARSE_DATE/DATETIME/TIME/TIMESTAMP with numeric elements and literal separators;
    fields the format leaves out start from 1970-01-01 00:00:00, as in BigQuery."""
    what, kind = {exp.StrToDate: ("PARSE_DATE", "DATE"),
                  exp.ParseDatetime: ("PARSE_DATETIME", "DATETIME"),
                  exp.ParseTime: ("PARSE_TIME", "TIME")}.get(type(node),
                                                              ("PARSE_TIMESTAMP", "TIMESTAMP"))
    if node.args.get("zone") is not None:
        raise NotSupportedError(f"{what} with a time zone")
    pieces = format_elements(node.args.get("format"), what)
    ctx.require(what, node.this, {"STRING", "NULL"})
    for piece in pieces:
        if piece.startswith("%") and piece not in _PARSE_ELEMENTS:
            raise NotSupportedError(f"{what} with {piece}")
        if not piece.startswith("%") and not re.fullmatch(r"[-/:. ]*", piece):
            raise NotSupportedError(f"{what} with the literal text {piece!r}")
    if "%p" in pieces and "%I" not in pieces:
        raise NotSupportedError(f"{what} with %p and no %I")
    template = "".join(pieces)
    defaults = [("%Y", "1970"), ("%m", "01"), ("%d", "01")]
    missing = [(element, value) for element, value in defaults if element not in pieces]
    text = node.this
    duckdb_format = template
    if missing:
        text = exp.DPipe(this=exp.Literal.string(" ".join(v for _, v in missing) + " "),
                         expression=text, safe=False)
        duckdb_format = " ".join(e for e, _ in missing) + " " + template
    parsed = call("strptime", text, exp.Literal.string(duckdb_format))
    if kind == "TIMESTAMP":
        return call("timezone", exp.Literal.string("UTC"), parsed)
    return cast(parsed, _DUCKDB_TYPES[kind])


@rule(exp.GenerateDateArray)
def _generate_date_array(node: exp.Expression, ctx: Context) -> exp.Expression:
    start, _ = _as(node.args["start"], ctx, "GENERATE_DATE_ARRAY", {"DATE"})
    end, _ = _as(node.args["end"], ctx, "GENERATE_DATE_ARRAY", {"DATE"})
    step = node.args.get("step")
    if step is None:
        step = exp.Interval(this=exp.Literal.number(1), unit=exp.var("DAY"))
    elif not isinstance(step, exp.Interval):
        raise NotSupportedError("GENERATE_DATE_ARRAY with this step")
    unit = part(step.args.get("unit"), "GENERATE_DATE_ARRAY", {"DAY", "WEEK", "MONTH"})
    interval = exp.Interval(this=interval_count(step.this, ctx, "GENERATE_DATE_ARRAY"),
                            unit=exp.var(unit))
    series = call("generate_series", cast(start, "TIMESTAMP"), cast(end, "TIMESTAMP"), interval)
    return cast(series, "DATE[]")
