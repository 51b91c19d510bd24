"""The verified aggregate, window, array and JSON functions (see functions.py)."""
from __future__ import annotations

from sqlglot import exp

from pipeline.local.bigquery.names import NotSupportedError
from pipeline.local.bigquery.rules import Context, allow, call, cast, name_of, rule
from pipeline.local.bigquery.types import struct_fields

# Aggregate functions ---------------------------------------------------------------------

allow(exp.Min, exp.Max, exp.LogicalAnd, exp.LogicalOr, exp.BitwiseAndAgg, exp.BitwiseOrAgg,
      exp.BitwiseXorAgg, exp.CountIf, exp.ArgMax, exp.ArgMin)


@rule(exp.Sum)
def _sum(node: exp.Expression, ctx: Context) -> None:
    ctx.require("SUM", _distinct_operand(node.this), {"INT64", "FLOAT64"})


@rule(exp.Avg)
def _avg(node: exp.Expression, ctx: Context) -> None:
    ctx.require("AVG", _distinct_operand(node.this), {"INT64", "FLOAT64"})


def _distinct_operand(node: exp.Expression) -> exp.Expression:
    return node.expressions[0] if isinstance(node, exp.Distinct) else node


@rule(exp.ArrayAgg, exp.GroupConcat)
def _ordered_aggregate(node: exp.Expression, ctx: Context) -> None:
    """ARRAY_AGG and STRING_AGG with ORDER BY: without it BigQuery leaves the order open and
    DuckDB's parallel aggregation may pick another, so the stand-in refuses."""
    what = "ARRAY_AGG" if isinstance(node, exp.ArrayAgg) else "STRING_AGG"
    if node.find(exp.Distinct):
        raise NotSupportedError(f"{what} with DISTINCT")
    if node.find(exp.Limit):
        raise NotSupportedError(f"{what} with LIMIT")
    if not node.find(exp.Order):
        raise NotSupportedError(f"{what} without ORDER BY")


@rule(exp.AnyValue)
def _any_value(node: exp.Expression, ctx: Context) -> None:
    if isinstance(node.this, exp.HavingMax):
        raise NotSupportedError("ANY_VALUE with HAVING")


_WINDOW_AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.CountIf)


@rule(exp.Window)
def _window(node: exp.Expression, ctx: Context) -> None:
    """Aggregates OVER (PARTITION BY ... ORDER BY ... frame): DuckDB's window semantics and
    default frames are BigQuery's; other window functions are refused by name."""
    if not isinstance(node.this, _WINDOW_AGGREGATES):
        raise NotSupportedError(f"{name_of(node.this)} OVER")
    if node.this.find(exp.Distinct):
        raise NotSupportedError(f"{name_of(node.this)}(DISTINCT) OVER")


# Arrays ----------------------------------------------------------------------------------

allow(exp.Unnest)


@rule(exp.ArraySize)
def _array_length(node: exp.Expression, ctx: Context) -> None:
    ctx.require("ARRAY_LENGTH", node.this, {"ARRAY<", "NULL"})


@rule(exp.Struct)
def _struct(node: exp.Expression, ctx: Context) -> None:
    """STRUCT(x AS a, ...): every field named (DuckDB names unnamed fields _0, _1, ...)."""
    if not all(isinstance(field, exp.PropertyEQ | exp.Alias) for field in node.expressions):
        raise NotSupportedError("STRUCT with unnamed fields")


@rule(exp.Array)
def _array(node: exp.Expression, ctx: Context) -> None:
    """Array literals and ARRAY(subquery); elements of one type, no NULL elements checked by
    BigQuery only in results."""


@rule(exp.GenerateSeries)
def _generate_array(node: exp.Expression, ctx: Context) -> exp.Expression:
    for argument in (node.args.get("start"), node.args.get("end"), node.args.get("step")):
        if argument is not None:
            ctx.require("GENERATE_ARRAY", argument, {"INT64", "NULL"})
    step = node.args.get("step") or exp.Literal.number(1)
    return call("generate_series", node.args["start"], node.args["end"], step)


@rule(exp.Bracket)
def _subscript(node: exp.Expression, ctx: Context) -> exp.Expression:
    """array[OFFSET(i)] and array[ORDINAL(i)]; out of range is an error, as in BigQuery."""
    if node.args.get("safe") or len(node.expressions) != 1:
        raise NotSupportedError("SAFE_OFFSET and SAFE_ORDINAL")
    ctx.require("array subscript", node.this, {"ARRAY<"})
    index = cast(node.expressions[0], "BIGINT")
    if node.args.get("offset") != 0:
        index = exp.Sub(this=index, expression=exp.Literal.number(1))
    return call("bq_offset", node.this, index)


@rule(exp.ArrayFirst, exp.ArrayLast)
def _array_end(node: exp.Expression, ctx: Context) -> exp.Expression:
    """ARRAY_FIRST/ARRAY_LAST: an empty array is an error."""
    ctx.require("ARRAY_FIRST", node.this, {"ARRAY<"})
    last = isinstance(node, exp.ArrayLast)
    index = exp.Sub(this=call("len", node.this.copy()), expression=exp.Literal.number(1)) \
        if last else exp.Literal.number(0)
    return call("bq_offset", node.this, index)


@rule(exp.ArrayToString)
def _array_to_string(node: exp.Expression, ctx: Context) -> None:
    ctx.require("ARRAY_TO_STRING", node.this, {"ARRAY<STRING>"})


@rule(exp.ArrayReverse)
def _array_reverse(node: exp.Expression, ctx: Context) -> exp.Expression:
    ctx.require("ARRAY_REVERSE", node.this, {"ARRAY<"})
    return call("list_reverse", node.this)


@rule(exp.ArrayConcat)
def _array_concat(node: exp.Expression, ctx: Context) -> exp.Expression:
    """ARRAY_CONCAT is NULL if any argument is (DuckDB's list_concat skips NULLs)."""
    arrays = [node.this, *node.expressions]
    for array in arrays:
        ctx.require("ARRAY_CONCAT", array, {"ARRAY<"})
    joined = arrays[0]
    for array in arrays[1:]:
        joined = call("list_concat", joined, array)
    any_null = exp.or_(*(exp.Is(this=a.copy(), expression=exp.Null()) for a in arrays))
    return exp.Case(ifs=[exp.If(this=any_null, true=exp.Null())], default=joined)


# JSON ------------------------------------------------------------------------------------

_JSON_SCALARS = {"INT64", "STRING", "BOOL", "DATE", "NULL"}
_BEYOND_2_53 = exp.Literal.number(9007199254740992)


@rule(exp.JSONFormat)
def _to_json_string(node: exp.Expression, ctx: Context) -> exp.Expression:
    """TO_JSON_STRING of scalars, arrays and rows/structs of the JSON encodings the suite
    verified. An INT64 beyond +-2^53 is encoded as a string when it is the value itself;
    inside a row or struct the stand-in refuses it when it meets one."""
    if node.args.get("options") is not None:
        raise NotSupportedError("TO_JSON_STRING with pretty_print")
    value = node.this
    kind = ctx.type_of(value)
    if kind is None:
        if ctx.strict:
            raise NotSupportedError("TO_JSON_STRING of a value of unknown type")
        return node
    if isinstance(value, exp.Null):
        return exp.Literal.string("null")
    text = _json_text(value, kind)
    if "bq_row_json" in text.meta:
        return text  # a row is never NULL
    return exp.Coalesce(this=text, expressions=[exp.Literal.string("null")])


def _json_text(value: exp.Expression, kind: str) -> exp.Expression:
    if kind == "INT64":
        return cast(call("bq_json_int64", value), "VARCHAR")
    if kind in _JSON_SCALARS or kind in ("ARRAY<STRING>", "ARRAY<BOOL>"):
        return cast(call("to_json", value), "VARCHAR")
    if kind == "ARRAY<INT64>":
        return cast(call("to_json", call("list_transform", value, _json_int64_lambda())),
                    "VARCHAR")
    if kind.startswith("STRUCT<") and isinstance(value, exp.Column | exp.Struct):
        result = row_json(value, struct_fields(kind))
        if isinstance(value, exp.Column) and not value.table:
            result.meta["bq_row_json"] = value.name
        return result
    raise NotSupportedError(f"TO_JSON_STRING of {kind}")


def row_json(value: exp.Expression, fields: list[tuple[str, str]]) -> exp.Expression:
    """TO_JSON_STRING of a row (a table alias) or STRUCT with scalar and array fields."""
    largest = []
    for name, kind in fields:
        if kind not in _JSON_SCALARS and kind not in ("ARRAY<INT64>", "ARRAY<STRING>"):
            raise NotSupportedError(f"TO_JSON_STRING of a STRUCT with {kind}")
        field = (exp.column(name, table=value.name, quoted=True)
                 if isinstance(value, exp.Column)
                 else call("struct_extract", value.copy(), exp.Literal.string(name)))
        if kind == "INT64":
            largest.append(call("abs", field))
        elif kind == "ARRAY<INT64>":
            largest.append(call("list_max", call("list_transform", field, exp.Lambda(
                this=call("abs", exp.column("v")), expressions=[exp.to_identifier("v")]))))
    text = cast(call("to_json", value), "VARCHAR")
    if not largest:
        return text
    too_large = exp.GT(this=call("greatest", *largest), expression=_BEYOND_2_53.copy())
    refusal = call("error", exp.Literal.string(str(NotSupportedError(
        "TO_JSON_STRING of a row or STRUCT with an INT64 beyond +-2^53"))))
    return exp.Case(ifs=[exp.If(this=too_large, true=refusal)], default=text)


def _json_int64_lambda() -> exp.Expression:
    return exp.Lambda(this=call("bq_json_int64", exp.column("v")),
                      expressions=[exp.to_identifier("v")])
