"""The verified BigQuery functions: one rule each, checked against tests/bigquery_conformance.

A rule refuses the argument types and forms the suite did not verify, and returns the DuckDB
expression that computes BigQuery's value where sqlglot's rendering does not. The `bq_`
macros it calls are created on each warehouse connection (MACROS).
"""
from __future__ import annotations

import re

from sqlglot import exp

from pipeline.local.bigquery.names import NotSupportedError, WarehouseError
from pipeline.local.bigquery.rules import (
    NUMBERS, Context, allow, call, cast, name_of, rule, string_literal,
)
from pipeline.local.bigquery.types import struct_fields

# DuckDB macros giving BigQuery's semantics where DuckDB's differ.
MACROS = (
    # A math function of finite arguments with a non-finite result is an error in BigQuery
    # (SQRT(-1), LN(0), POW(0, -1), EXP(1000)), where DuckDB returns NaN or infinity.
    "CREATE OR REPLACE MACRO bq_finite(r, name, a, b) AS CASE WHEN isfinite(a) "
    "AND isfinite(b) AND NOT isfinite(r) THEN error('Floating point error in function ' || "
    "name) ELSE r END",
    # Integer division rounding down (for UNIX_MILLIS and friends), exact on BIGINT.
    "CREATE OR REPLACE MACRO bq_floor_div(x, d) AS (x - (((x % d) + d) % d)) // d",
    # The first day of the week starting on weekday w (0 = Sunday) that contains d.
    "CREATE OR REPLACE MACRO bq_week_start(d, w) AS "
    "CAST(d AS DATE) - CAST((dayofweek(d) - w + 7) % 7 AS INTEGER)",
    # BigQuery's WEEK(<w>) number: days before the year's first <w> are in week 0.
    "CREATE OR REPLACE MACRO bq_week(d, w) AS "
    "(dayofyear(d) + 6 - (dayofweek(d) - w + 7) % 7) // 7",
    # The first day of d's ISO year: the Monday of the week holding that year's 4 January.
    "CREATE OR REPLACE MACRO bq_isoyear_start(d) AS "
    "bq_week_start(make_date(CAST(isoyear(d) AS BIGINT), 1, 4), 1)",
    # INT64 in TO_JSON_STRING: a number within +-2^53, else a string (JSON encodings).
    # CAST from STRING: decimal or 0x hex INT64; FLOAT64 literals and [+-]inf/infinity/nan;
    # 'true'/'false' in any case. Anything else is an error (SAFE_CAST: NULL).
    "CREATE OR REPLACE MACRO bq_parse_int64(s) AS CASE "
    "WHEN regexp_full_match(s, '[+-]?[0-9]+') THEN TRY_CAST(s AS BIGINT) "
    "WHEN regexp_full_match(s, '[+-]?0[xX][0-9a-fA-F]{1,16}') THEN TRY_CAST((CASE WHEN "
    "s[1] = '-' THEN -1 ELSE 1 END) * TRY_CAST(regexp_replace(s, '^[+-]', '') AS UBIGINT) "
    "AS BIGINT) END",
    "CREATE OR REPLACE MACRO bq_parse_float64(s) AS CASE "
    "WHEN regexp_full_match(s, '[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?') "
    "OR regexp_full_match(lower(s), '[+-]?(inf|infinity|nan)') THEN TRY_CAST(s AS DOUBLE) END",
    "CREATE OR REPLACE MACRO bq_parse_bool(s) AS CASE lower(s) WHEN 'true' THEN true "
    "WHEN 'false' THEN false END",
    "CREATE OR REPLACE MACRO bq_int64_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_int64(s) IS NOT NULL THEN bq_parse_int64(s) WHEN safe THEN NULL "
    "ELSE error('Bad int64 value: ' || s) END",
    "CREATE OR REPLACE MACRO bq_float64_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_float64(s) IS NOT NULL THEN bq_parse_float64(s) WHEN safe THEN NULL "
    "ELSE error('Bad double value: ' || s) END",
    "CREATE OR REPLACE MACRO bq_bool_of_string(s, safe) AS CASE WHEN s IS NULL THEN NULL "
    "WHEN bq_parse_bool(s) IS NOT NULL THEN bq_parse_bool(s) WHEN safe THEN NULL "
    "ELSE error('Bad bool value: ' || s) END",
    # BigQuery's `/` on a zero divisor is an error; DuckDB's FLOAT division gives infinity.
    "CREATE OR REPLACE MACRO bq_nonzero(y) AS CASE WHEN y = 0 THEN error('division by zero')"
    " ELSE y END",
    # arr[OFFSET(i)]: out of range is an error in BigQuery, NULL in DuckDB.
    "CREATE OR REPLACE MACRO bq_offset(a, i) AS CASE WHEN i < 0 OR i >= len(a) THEN "
    "error('Array index ' || i || ' is out of bounds') ELSE a[i + 1] END",
    "CREATE OR REPLACE MACRO bq_json_int64(x) AS CASE WHEN x BETWEEN -9007199254740992 "
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
    if target == "STRING" and kind == "BYTES" and not safe:
        return call("decode", source)
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


@rule(exp.Div)
def _divide(node: exp.Expression, ctx: Context) -> None:
    """`/` divides as FLOAT64; division by zero is an error, as DuckDB's BIGINT division is."""
    for argument in (node.this, node.expression):
        ctx.require("/", argument, NUMBERS)
    node.set("expression", call("bq_nonzero", cast(node.expression, "DOUBLE")))


# String functions ------------------------------------------------------------------------

allow(exp.Lower, exp.Upper, exp.StartsWith, exp.EndsWith, exp.Replace, exp.Trim, exp.Ascii,
      exp.Translate)


@rule(exp.Left, exp.Right, exp.Reverse, exp.Repeat)
def _string_only(node: exp.Expression, ctx: Context) -> None:
    """LEFT, RIGHT, REVERSE, REPEAT of STRING (DuckDB's BLOB forms differ or are missing)."""
    kind = ctx.require(node.key.upper(), node.this, {"STRING", "NULL"})
    if kind == "NULL":
        node.set("this", cast(node.this, "VARCHAR"))


@rule(exp.Chr)
def _chr(node: exp.Expression, ctx: Context) -> exp.Expression:
    """CHR(0) is '' (DuckDB: a NUL character)."""
    if len(node.expressions) != 1:
        raise NotSupportedError("CHR with several arguments")
    code = node.expressions[0]
    ctx.require("CHR", code, {"INT64", "NULL"})
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=code.copy(), expression=exp.Literal.number(0)),
                                true=exp.Literal.string(""))],
                    default=call("chr", cast(code, "INTEGER")))


@rule(exp.Unicode)
def _unicode(node: exp.Expression, ctx: Context) -> exp.Expression:
    """UNICODE('') is 0 (DuckDB: -1)."""
    ctx.require("UNICODE", node.this, {"STRING", "NULL"})
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=node.this.copy(),
                                            expression=exp.Literal.string("")),
                                true=exp.Literal.number(0))],
                    default=call("unicode", node.this))


@rule(exp.Concat, exp.DPipe)
def _concat(node: exp.Expression, ctx: Context) -> exp.Expression:
    """CONCAT and ||: NULL if any argument is NULL; INT64 arguments become their digits."""
    arguments = node.expressions if isinstance(node, exp.Concat) else [node.this,
                                                                        node.expression]
    parts = []
    for argument in arguments:
        kind = ctx.require("CONCAT", argument, {"STRING", "INT64", "NULL"})
        parts.append(cast(argument, "VARCHAR") if kind == "INT64" else argument)
    result: exp.Expression = parts[0]
    for part in parts[1:]:
        result = exp.DPipe(this=result, expression=part, safe=False)
    return result


@rule(exp.Length)
def _length(node: exp.Expression, ctx: Context) -> exp.Expression:
    kind = ctx.require("LENGTH", node.this, {"STRING", "BYTES", "NULL"})
    return call("octet_length" if kind == "BYTES" else "length", node.this)


@rule(exp.ByteLength)
def _byte_length(node: exp.Expression, ctx: Context) -> exp.Expression:
    kind = ctx.require("BYTE_LENGTH", node.this, {"STRING", "BYTES", "NULL"})
    return call("octet_length", node.this if kind == "BYTES" else call("encode", node.this))


@rule(exp.Substring)
def _substring(node: exp.Expression, ctx: Context) -> exp.Expression:
    """SUBSTR with BigQuery's positions: 0 and values below -LENGTH mean 1, negative
    positions count from the end; a negative length is an error."""
    ctx.require("SUBSTR", node.this, {"STRING", "NULL"})
    start, length = node.args.get("start"), node.args.get("length")
    if length is not None:
        ctx.require("SUBSTR length", length, {"INT64", "NULL"})
    ctx.require("SUBSTR position", start, {"INT64", "NULL"})
    text = node.this
    position = exp.Case(
        ifs=[exp.If(this=exp.GT(this=start.copy(), expression=exp.Literal.number(0)),
                    true=start.copy()),
             exp.If(this=exp.GTE(this=exp.Add(this=start.copy(),
                                              expression=call("length", text.copy())),
                                 expression=exp.Literal.number(0)),
                    true=exp.Add(this=exp.Add(this=start.copy(),
                                              expression=call("length", text.copy())),
                                 expression=exp.Literal.number(1)))],
        default=exp.Literal.number(1))
    if length is None:
        return call("substring", text, position)
    checked = exp.Case(ifs=[exp.If(this=exp.LT(this=length.copy(),
                                               expression=exp.Literal.number(0)),
                                   true=call("error", exp.Literal.string(
                                       "SUBSTR: negative length")))],
                       default=length.copy())
    return call("substring", text, position, checked)


@rule(exp.StrPosition)
def _strpos(node: exp.Expression, ctx: Context) -> None:
    if node.args.get("position") is not None or node.args.get("occurrence") is not None:
        raise NotSupportedError("INSTR")
    ctx.require("STRPOS", node.this, {"STRING", "NULL"})


@rule(exp.Pad)
def _pad(node: exp.Expression, ctx: Context) -> None:
    what = "LPAD" if node.args.get("is_left") else "RPAD"
    ctx.require(what, node.this, {"STRING", "NULL"})


@rule(exp.Split)
def _split(node: exp.Expression, ctx: Context) -> None:
    ctx.require("SPLIT", node.this, {"STRING", "NULL"})
    if node.expression is None or string_literal(node.expression, "SPLIT") == "":
        raise NotSupportedError("SPLIT without a delimiter")


@rule(exp.RegexpLike)
def _regexp_contains(node: exp.Expression, ctx: Context) -> None:
    ctx.require("REGEXP_CONTAINS", node.this, {"STRING", "NULL"})
    _pattern(node.expression, "REGEXP_CONTAINS")


@rule(exp.RegexpExtract)
def _regexp_extract(node: exp.Expression, ctx: Context) -> exp.Expression:
    """REGEXP_EXTRACT(value, regexp): the first match, or its one capturing group; NULL when
    nothing matches (DuckDB: '')."""
    if node.args.get("position") is not None or node.args.get("occurrence") is not None:
        raise NotSupportedError("REGEXP_EXTRACT with a position or occurrence")
    ctx.require("REGEXP_EXTRACT", node.this, {"STRING", "NULL"})
    groups = _extract_pattern(node.expression, "REGEXP_EXTRACT")
    found = call("regexp_extract", node.this.copy(), node.expression.copy(),
                 exp.Literal.number(groups))
    return exp.Case(ifs=[exp.If(this=call("regexp_matches", node.this, node.expression),
                                true=found)], default=exp.Null())


@rule(exp.RegexpExtractAll)
def _regexp_extract_all(node: exp.Expression, ctx: Context) -> exp.Expression:
    ctx.require("REGEXP_EXTRACT_ALL", node.this, {"STRING", "NULL"})
    groups = _extract_pattern(node.expression, "REGEXP_EXTRACT_ALL")
    return call("regexp_extract_all", node.this, node.expression, exp.Literal.number(groups))


@rule(exp.RegexpReplace)
def _regexp_replace(node: exp.Expression, ctx: Context) -> None:
    ctx.require("REGEXP_REPLACE", node.this, {"STRING", "NULL"})
    _pattern(node.expression, "REGEXP_REPLACE")
    replacement = string_literal(node.args.get("replacement"), "REGEXP_REPLACE") \
        if not isinstance(node.args.get("replacement"), exp.RawString) \
        else node.args["replacement"].this
    if re.search(r"\\[^0-9\\]", replacement):
        raise NotSupportedError("REGEXP_REPLACE with escapes other than \\0-\\9")


def _pattern(node: exp.Expression | None, what: str) -> str:
    """A literal RE2 pattern (DuckDB's regexp engine is RE2 too)."""
    return node.this if isinstance(node, exp.RawString) else string_literal(node, what)


def _extract_pattern(node: exp.Expression | None, what: str) -> int:
    """The capturing groups (0 or 1) of an extraction pattern. A group that may not take
    part in a match (optional, or in an alternation) is refused: DuckDB gives '' where
    BigQuery gives NULL."""
    pattern = _pattern(node, what)
    groups = re.findall(r"(?<!\\)\((?!\?)", pattern)
    if len(groups) > 1:
        raise WarehouseError(f"{what}: regular expressions cannot have more than one "
                             "capturing group")
    if groups and (re.search(r"\)[?*]|\)\{0", pattern) or "|" in pattern):
        raise NotSupportedError(f"{what} with an optional capturing group")
    return len(groups)


_FORMAT_SPEC = re.compile(r"%([-+ 0#']*)(\d*|\*)(?:\.(\d+|\*))?([a-zA-Z%]?)")
_FORMAT_TYPES = {"d": {"INT64"}, "i": {"INT64"}, "s": {"STRING"},
                 "f": {"FLOAT64"}, "e": {"FLOAT64"}, "E": {"FLOAT64"}}


@rule(exp.Format)
def _format(node: exp.Expression, ctx: Context) -> exp.Expression:
    """FORMAT with the specifiers the suite verified (%d %i %s %f %e %E %%), DuckDB's printf
    (the same C printf semantics); others, such as %t or %'d, are refused by name."""
    template = string_literal(node.this, "FORMAT")
    arguments = list(node.expressions)
    specs = [m for m in _FORMAT_SPEC.finditer(template) if m.group(0) != "%%"]
    for match in specs:
        flags, width, precision, kind = match.groups()
        if not kind:
            raise WarehouseError(f"FORMAT: invalid format specifier {match.group(0)!r}")
        if (kind not in _FORMAT_TYPES or (precision and kind in "dis") or set(flags) & set("#'")
                or "*" in (width or "") + (precision or "")):
            raise NotSupportedError(f"FORMAT with {match.group(0)}")
    if len(specs) != len(arguments):
        raise WarehouseError(f"FORMAT: {len(specs)} format specifiers but {len(arguments)} "
                             "arguments")
    for match, argument in zip(specs, arguments, strict=True):
        ctx.require(f"FORMAT %{match.group(4)}", argument,
                    _FORMAT_TYPES[match.group(4)] | {"NULL"})
    return call("printf", node.this, *arguments)


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


# Hash functions --------------------------------------------------------------------------

@rule(exp.FarmFingerprint)
def _farm_fingerprint(node: exp.Expression, ctx: Context) -> None:
    """FARM_FINGERPRINT of a STRING; marks a fingerprint of a row for the cache."""
    if len(node.expressions) != 1:
        raise NotSupportedError("FARM_FINGERPRINT with several arguments")
    argument = node.expressions[0]
    ctx.require("FARM_FINGERPRINT", argument, {"STRING", "NULL"})
    if "bq_row_json" in argument.meta:
        node.meta["bq_row_json"] = argument.meta["bq_row_json"]


@rule(exp.LowerHex, exp.ToBase64)
def _bytes_to_text(node: exp.Expression, ctx: Context) -> exp.Expression:
    what = "TO_HEX" if isinstance(node, exp.LowerHex) else "TO_BASE64"
    ctx.require(what, node.this, {"BYTES", "NULL"})
    if what == "TO_HEX":
        return call("lower", call("hex", node.this))
    return call("to_base64", node.this)


@rule(exp.Unhex, exp.FromBase64)
def _text_to_bytes(node: exp.Expression, ctx: Context) -> exp.Expression:
    """FROM_HEX (an odd number of digits reads as if led by a 0) and FROM_BASE64."""
    what = "FROM_HEX" if isinstance(node, exp.Unhex) else "FROM_BASE64"
    ctx.require(what, node.this, {"STRING", "NULL"})
    if what == "FROM_BASE64":
        return call("from_base64", node.this)
    odd = exp.EQ(this=exp.Mod(this=call("length", node.this.copy()),
                              expression=exp.Literal.number(2)),
                 expression=exp.Literal.number(1))
    padded = exp.Case(ifs=[exp.If(this=odd, true=exp.DPipe(
        this=exp.Literal.string("0"), expression=node.this.copy(), safe=False))],
        default=node.this)
    return call("unhex", padded)


@rule(exp.MD5Digest, exp.SHA1Digest)
def _digest(node: exp.Expression, ctx: Context) -> exp.Expression:
    what = "MD5" if isinstance(node, exp.MD5Digest) else "SHA1"
    ctx.require(what, node.this, {"STRING", "NULL"})
    return call("unhex", call(what.lower(), node.this))


# Arrays ----------------------------------------------------------------------------------

allow(exp.ArraySize, exp.ArrayConcat, exp.Unnest)


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
