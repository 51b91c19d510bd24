"""The verified string, regular expression, FORMAT, bytes and hash functions (see functions.py)."""
from __future__ import annotations

import re

from sqlglot import exp

from pipeline.local.bigquery.names import NotSupportedError, WarehouseError
from pipeline.local.bigquery.rules import Context, allow, call, cast, rule, string_literal

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


@rule(exp.Like)
def _like(node: exp.Expression, ctx: Context) -> None:
    """LIKE with a literal pattern without backslashes (BigQuery escapes with one, DuckDB
    does not)."""
    if node.args.get("escape") is not None or "\\" in string_literal(node.expression, "LIKE"):
        raise NotSupportedError("LIKE with an escape")
    ctx.require("LIKE", node.this, {"STRING", "NULL"})


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

