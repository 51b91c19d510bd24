"""The verified BigQuery functions: one rule each, checked against tests/bigquery_conformance.

This module holds the conditional, conversion and mathematical rules and the DuckDB macros
(MACROS) the rules call, created on each warehouse connection; strings.py, aggregates.py
and temporal.py hold the other families. A rule refuses the argument types and forms the
suite did not verify, and returns the DuckDB expression that computes BigQuery's value where
sqlglot's rendering does not.
"""
from __future__ import annotations

import re

from sqlglot import exp

from pipeline.local.bigquery.names import NotSupportedError
from pipeline.local.bigquery.rules import NUMBERS, Context, allow, call, cast, rule

# DuckDB macros giving BigQuery's semantics where DuckDB's differ.
MACROS = (
    # A math function of finite arguments with a non-finite result is an error in BigQuery
    # (SQRT(-1), LN(0), POW(0, -1), EXP(1000)), where DuckDB returns NaN or infinity.
    "CREATE OR REPLACE TEMP MACRO bq_finite(r, name, a, b) AS CASE WHEN isfinite(a) "
    "AND isfinite(b) AND NOT isfinite(r) THEN error('Floating point error in function ' || "
    "name) ELSE r END",
    # Integer division rounding down (for UNIX_MILLIS and friends), exact on BIGINT.
    "CREATE OR REPLACE TEMP MACRO bq_floor_div(x, d) AS (x - (((x % d) + d) % d)) // d",
    # The first day of the week starting on weekday w (0 = Sunday) that contains d.
    "CREATE OR REPLACE TEMP MACRO bq_week_start(d, w) AS "
    "CAST(d AS DATE) - CAST((dayofweek(d) - w + 7) % 7 AS INTEGER)",
    # BigQuery's WEEK(<w>) number: days before the year's first <w> are in week 0.
    "CREATE OR REPLACE TEMP MACRO bq_week(d, w) AS "
    "(dayofyear(d) + 6 - (dayofweek(d) - w + 7) % 7) // 7",
    # The first day of d's ISO year: the Monday of the week holding that year's 4 January.
    "CREATE OR REPLACE TEMP MACRO bq_isoyear_start(d) AS "
    "bq_week_start(make_date(CAST(isoyear(d) AS BIGINT), 1, 4), 1)",
    # INT64 in TO_JSON_STRING: a number within +-2^53, else a string (JSON encodings).
    # CAST from STRING: decimal or 0x hex INT64; FLOAT64 literals and [+-]inf/infinity/nan;
    # 'true'/'false' in any case. Anything else is an error (SAFE_CAST: NULL).
    "CREATE OR REPLACE TEMP MACRO bq_parse_int64(s) AS CASE "
    "WHEN regexp_full_match(s, '[+-]?[0-9]+') THEN TRY_CAST(s AS BIGINT) "
    "WHEN regexp_full_match(s, '[+-]?0[xX][0-9a-fA-F]{1,16}') THEN TRY_CAST((CASE WHEN "
    "s[1] = '-' THEN -1 ELSE 1 END) * TRY_CAST(regexp_replace(s, '^[+-]', '') AS UBIGINT) "
    "AS BIGINT) END",
    "CREATE OR REPLACE TEMP MACRO bq_parse_float64(s) AS CASE "
    "WHEN regexp_full_match(s, '[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?') "
    "OR regexp_full_match(lower(s), '[+-]?(inf|infinity|nan)') THEN TRY_CAST(s AS DOUBLE) END",
    "CREATE OR REPLACE TEMP MACRO bq_parse_bool(s) AS CASE lower(s) WHEN 'true' THEN true "
    "WHEN 'false' THEN false END",
    "CREATE OR REPLACE TEMP MACRO bq_int64_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_int64(s) IS NOT NULL THEN bq_parse_int64(s) WHEN safe THEN NULL "
    "ELSE error('Bad int64 value: ' || s) END",
    "CREATE OR REPLACE TEMP MACRO bq_float64_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_float64(s) IS NOT NULL THEN bq_parse_float64(s) WHEN safe THEN NULL "
    "ELSE error('Bad double value: ' || s) END",
    "CREATE OR REPLACE TEMP MACRO bq_bool_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_bool(s) IS NOT NULL THEN bq_parse_bool(s) WHEN safe THEN NULL "
    "ELSE error('Bad bool value: ' || s) END",
    # BigQuery's `/` on a zero divisor is an error; DuckDB's FLOAT division gives infinity.
    "CREATE OR REPLACE TEMP MACRO bq_nonzero(y) AS CASE WHEN y = 0 THEN error('division by zero')"
    " ELSE y END",
    # arr[OFFSET(i)]: out of range is an error in BigQuery, NULL in DuckDB.
    "CREATE OR REPLACE TEMP MACRO bq_offset(a, i) AS CASE WHEN i < 0 OR i >= len(a) THEN "
    "error('Array index ' || i || ' is out of bounds') ELSE a[i + 1] END",
    "CREATE OR REPLACE TEMP MACRO bq_json_int64(x) AS CASE WHEN x BETWEEN -9007199254740992 "
    "AND 9007199254740992 THEN CAST(x AS JSON) ELSE to_json(CAST(x AS VARCHAR)) END",
)


# Structure with a function's shape ------------------------------------------------------

allow(exp.Case, exp.If, exp.Coalesce, exp.Nullif)


@rule(exp.Count)
def _count(node: exp.Expression, ctx: Context) -> None:
    """COUNT(*), COUNT(x), COUNT(DISTINCT x): DuckDB's BIGINT count is BigQuery's."""


@rule(exp.Cast, exp.TryCast)
def _cast(node: exp.Expression, ctx: Context) -> exp.Expression | None:
    """CAST and SAFE_CAST between the types whose conversion rules the suite verified."""
    safe = isinstance(node, exp.TryCast)
    what = "SAFE_CAST" if safe else "CAST"
    if node.args.get("format"):
        raise NotSupportedError(f"{what} with FORMAT")
    target = node.to.sql(dialect="bigquery")
    source = node.this
    if node.meta.get("bq_literal"):
        return None
    literal = isinstance(source, exp.Literal) and source.is_string
    if literal and target == "TIMESTAMP":
        return cast(exp.Literal.string(timestamp_text(source.this)), "TIMESTAMPTZ")
    kind = "STRING" if literal else ctx.type_of(source)
    allowed = _CASTS.get(target, set()) | ({"STRING"} if literal and target in (
        "DATE", "DATETIME", "TIME") else set())
    if kind is None and ctx.strict:
        raise NotSupportedError(f"{what} from a value of unknown type")
    if kind is not None and kind not in allowed:
        raise NotSupportedError(f"{what} from {kind} to {target}")
    if target == "INT64" and kind == "FLOAT64":
        # BigQuery rounds halfway cases away from zero; DuckDB's cast rounds them to even.
        node.set("this", call("round", source))
    converter = _FROM_STRING.get(target) if kind == "STRING" else None
    if converter:
        return call(converter, source, exp.Boolean(this=safe))
    if target == "BYTES" and kind == "STRING":
        return call("encode", source)
    if target == "STRING" and kind == "BYTES":  # DuckDB's cast escapes the bytes instead
        if not safe:
            return call("decode", source)
        if not isinstance(source, exp.Column | exp.Literal | exp.ByteString):
            raise NotSupportedError("SAFE_CAST from BYTES to STRING of an expression")
        return call("TRY", call("decode", source))
    return None


_CASTS = {
    "BOOL": {"INT64", "BOOL", "STRING", "NULL"},
    "INT64": {"INT64", "FLOAT64", "BOOL", "STRING", "NULL"},
    "FLOAT64": {"INT64", "FLOAT64", "STRING", "NULL"},
    "STRING": {"INT64", "STRING", "BOOL", "BYTES", "DATE", "NULL"},
    "BYTES": {"STRING", "BYTES", "NULL"},
    "DATE": {"DATE", "DATETIME", "NULL"},
    "DATETIME": {"DATETIME", "DATE", "NULL"},
    "TIMESTAMP": {"TIMESTAMP", "NULL"},
}
# STRING to these types follows BigQuery's literal grammar, not DuckDB's laxer one.
_FROM_STRING = {"INT64": "bq_int64_of_string", "FLOAT64": "bq_float64_of_string",
                "BOOL": "bq_bool_of_string"}


def timestamp_text(text: str) -> str:
    """A TIMESTAMP literal for DuckDB: no zone means UTC (DuckDB's session is UTC too)."""
    zone = re.search(r"(\s*(UTC|Z|[+-]\d{1,2}(:\d{2})?))$", text.strip())
    if zone and zone.group(2) not in ("UTC", "Z"):
        return text
    if zone:
        return text.strip()[: zone.start()] + "+00"
    return text.strip() + "+00"


# Mathematical functions ------------------------------------------------------------------

@rule(exp.Abs, exp.Sign)
def _same_numeric(node: exp.Expression, ctx: Context) -> exp.Expression:
    kind = ctx.require(node.key.upper(), node.this, NUMBERS)
    return cast(node, "DOUBLE" if kind == "FLOAT64" else "BIGINT")


@rule(exp.Mod, exp.IntDiv)
def _integer_pair(node: exp.Expression, ctx: Context) -> None:
    what = "MOD" if isinstance(node, exp.Mod) else "DIV"
    ctx.require(what, node.this, {"INT64", "NULL"})
    ctx.require(what, node.expression, {"INT64", "NULL"})


@rule(exp.Ceil, exp.Floor)
def _to_float(node: exp.Expression, ctx: Context) -> None:
    what = node.key.upper()
    if node.args.get("decimals") is not None:
        raise NotSupportedError(f"{what} with digits")
    ctx.require(what, node.this, NUMBERS)
    node.set("this", cast(node.this, "DOUBLE"))


@rule(exp.Round)
def _round(node: exp.Expression, ctx: Context) -> None:
    if node.args.get("truncate") or len([a for a in node.args.values() if a is not None]) > 2:
        raise NotSupportedError("ROUND with a rounding mode")
    ctx.require("ROUND", node.this, NUMBERS)
    digits = node.args.get("decimals")
    if digits is not None:
        ctx.require("ROUND digits", digits, {"INT64"})
        node.set("decimals", cast(digits, "INTEGER"))
    node.set("this", cast(node.this, "DOUBLE"))


@rule(exp.Trunc)
def _trunc(node: exp.Expression, ctx: Context) -> exp.Expression:
    if node.args.get("decimals") is not None:
        raise NotSupportedError("TRUNC with digits")
    ctx.require("TRUNC", node.this, NUMBERS)
    return call("trunc", cast(node.this, "DOUBLE"))


@rule(exp.Sqrt, exp.Exp, exp.Ln, exp.Cbrt)
def _float_function(node: exp.Expression, ctx: Context) -> exp.Expression:
    what = {exp.Ln: "LN"}.get(type(node), node.key.upper())
    ctx.require(what, node.this, NUMBERS)
    argument = cast(node.this, "DOUBLE")
    name = {exp.Ln: "ln", exp.Exp: "exp", exp.Sqrt: "sqrt", exp.Cbrt: "cbrt"}[type(node)]
    return call("bq_finite", call(name, argument), exp.Literal.string(what), argument,
                exp.Literal.number(0))


@rule(exp.Log)
def _log(node: exp.Expression, ctx: Context) -> exp.Expression:
    base, value = node.this, node.expression  # sqlglot keeps the base first
    for argument in (value, base):
        ctx.require("LOG", argument, NUMBERS)
    x, b = cast(value, "DOUBLE"), cast(base, "DOUBLE")
    return call("bq_finite", exp.Div(this=call("ln", x), expression=call("ln", b)),
                exp.Literal.string("LOG"), x, b)


@rule(exp.Pow)
def _pow(node: exp.Expression, ctx: Context) -> exp.Expression:
    for argument in (node.this, node.expression):
        ctx.require("POW", argument, NUMBERS)
    x, y = cast(node.this, "DOUBLE"), cast(node.expression, "DOUBLE")
    return call("bq_finite", call("pow", x, y), exp.Literal.string("POW"), x, y)


@rule(exp.Greatest, exp.Least)
def _extreme(node: exp.Expression, ctx: Context) -> exp.Expression:
    """GREATEST/LEAST are NULL when any argument is (DuckDB skips NULLs)."""
    what = node.key.upper()
    arguments = [node.this, *node.expressions]
    for argument in arguments:
        ctx.require(what, argument, {"INT64", "STRING", "DATE", "NULL"})
    any_null = exp.or_(*(exp.Is(this=a.copy(), expression=exp.Null()) for a in arguments))
    return exp.Case(ifs=[exp.If(this=any_null, true=exp.Null())], default=node.copy())


@rule(exp.SafeDivide)
def _safe_divide(node: exp.Expression, ctx: Context) -> exp.Expression:
    for argument in (node.this, node.expression):
        ctx.require("SAFE_DIVIDE", argument, NUMBERS)
    divisor = cast(node.expression, "DOUBLE")
    return exp.Case(
        ifs=[exp.If(this=exp.EQ(this=divisor, expression=exp.Literal.number(0)),
                    true=exp.Null())],
        default=exp.Div(this=cast(node.this, "DOUBLE"), expression=divisor.copy()),
    )


@rule(exp.SafeAdd, exp.SafeSubtract, exp.SafeMultiply)
def _safe_arithmetic(node: exp.Expression, ctx: Context) -> exp.Expression:
    """INT64 arithmetic that gives NULL instead of an overflow error."""
    what = {exp.SafeAdd: "SAFE_ADD", exp.SafeSubtract: "SAFE_SUBTRACT"}.get(
        type(node), "SAFE_MULTIPLY")
    for argument in (node.this, node.expression):
        ctx.require(what, argument, {"INT64"})
    operator = {exp.SafeAdd: exp.Add, exp.SafeSubtract: exp.Sub}.get(type(node), exp.Mul)
    return call("TRY", operator(this=cast(node.this, "BIGINT"),
                                expression=cast(node.expression, "BIGINT")))


@rule(exp.SafeNegate)
def _safe_negate(node: exp.Expression, ctx: Context) -> exp.Expression:
    ctx.require("SAFE_NEGATE", node.this, {"INT64"})
    return call("TRY", exp.Neg(this=cast(node.this, "BIGINT")))


@rule(exp.IsInf, exp.IsNan)
def _float_test(node: exp.Expression, ctx: Context) -> exp.Expression:
    what = "IS_INF" if isinstance(node, exp.IsInf) else "IS_NAN"
    ctx.require(what, node.this, NUMBERS)
    return call("isinf" if what == "IS_INF" else "isnan", cast(node.this, "DOUBLE"))


@rule(exp.Anonymous)
def _named(node: exp.Expression, ctx: Context) -> exp.Expression:
    """Functions sqlglot does not know: only IEEE_DIVIDE is verified."""
    if str(node.name).upper() != "IEEE_DIVIDE" or len(node.expressions) != 2:
        raise NotSupportedError(str(node.name).upper())
    for argument in node.expressions:
        ctx.require("IEEE_DIVIDE", argument, NUMBERS)
    x, y = (cast(argument, "DOUBLE") for argument in node.expressions)
    return exp.Div(this=x, expression=y)


@rule(exp.Add, exp.Sub, exp.Mul)
def _arithmetic(node: exp.Expression, ctx: Context) -> None:
    """+, -, * of INT64 and FLOAT64 (DuckDB's date and interval arithmetic gives other types
    than BigQuery's). Overflow is an error in both."""
    what = {exp.Add: "+", exp.Sub: "-"}.get(type(node), "*")
    for argument in (node.this, node.expression):
        ctx.require(what, argument, NUMBERS)


@rule(exp.Div)
def _divide(node: exp.Expression, ctx: Context) -> None:
    """`/` divides as FLOAT64; division by zero is an error, as DuckDB's BIGINT division is."""
    for argument in (node.this, node.expression):
        ctx.require("/", argument, NUMBERS)
    node.set("expression", call("bq_nonzero", cast(node.expression, "DOUBLE")))
