"""The allowlist's machinery: a rule per sqlglot node class, the context rules read types from.

A rule checks one parsed BigQuery node (its argument types and literal forms) and returns the
DuckDB expression that computes BigQuery's result, or None when sqlglot's own DuckDB rendering
of the node already does. A node with no rule is refused: the allowlist lists what the
conformance suite verified, nothing else (see docs/bigquery.md).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from pipeline.local.bigquery.names import NotSupportedError

ID_KEY = "bq_id"
Handler = Callable[[exp.Expression, "Context"], "exp.Expression | None"]
NUMBERS = {"INT64", "FLOAT64", "NULL"}


@dataclass
class Context:
    """What the rules know about the statement: BigQuery types of its nodes (by stamped id).

    `strict` is False while a query job's inputs are validated before the warehouse is open:
    column types are unknown then, and a rule that needs them lets the query through to the
    full check at run time.
    """

    types: dict[int, str] = field(default_factory=dict)
    strict: bool = True

    def type_of(self, node: exp.Expression | None) -> str | None:
        """BigQuery type of a node as sqlglot's annotator inferred it, or None if unknown."""
        if node is None:
            return None
        if isinstance(node, exp.Null):
            return "NULL"  # sqlglot types a NULL literal as INT64; BigQuery coerces it
        return self.types.get(node.meta.get(ID_KEY, -1))

    def require(self, what: str, node: exp.Expression | None, allowed: Iterable[str]) -> str:
        """The node's BigQuery type, which must be one of `allowed` (prefixes ending in `<`
        match parameterised types); refuse anything else, an unknown type included."""
        kind = self.type_of(node)
        if kind is None:
            if self.strict:
                raise NotSupportedError(f"{what} with an argument of unknown type")
            return ""
        if kind in allowed or any(a.endswith("<") and kind.startswith(a) for a in allowed):
            return kind
        raise NotSupportedError(f"{what} with {kind}")


RULES: dict[type[exp.Expression], Handler] = {}


def rule(*classes: type[exp.Expression]) -> Callable[[Handler], Handler]:
    """Register a handler for parsed node classes."""
    def register(handler: Handler) -> Handler:
        for cls in classes:
            RULES[cls] = handler
        return handler
    return register


def allow(*classes: type[exp.Expression]) -> None:
    """Register classes whose sqlglot DuckDB rendering the suite verified as is."""
    for cls in classes:
        RULES[cls] = lambda node, ctx: None


def call(name: str, *args: exp.Expression) -> exp.Expression:
    """A DuckDB function call (or one of the warehouse's `bq_` macros)."""
    return exp.Anonymous(this=name, expressions=list(args))


def cast(node: exp.Expression, duckdb_type: str) -> exp.Expression:
    """CAST(node AS duckdb_type)."""
    return exp.Cast(this=node, to=exp.DataType.build(duckdb_type, dialect="duckdb"))


def string_literal(node: exp.Expression | None, what: str) -> str:
    """The text of an argument that must be a string literal (a format, a part name...)."""
    if isinstance(node, exp.Literal) and node.is_string:
        return node.this
    raise NotSupportedError(f"{what} with a non-literal argument")


def interval_count(node: exp.Expression, ctx: Context, what: str) -> exp.Expression:
    """The count of `INTERVAL n unit` (sqlglot keeps a literal n as the string 'n')."""
    if isinstance(node, exp.Literal) and node.is_string and node.this.lstrip("-").isdigit():
        return exp.Literal.number(int(node.this))
    ctx.require(what, node, {"INT64"})
    return cast(node, "BIGINT")


def name_of(node: exp.Expression) -> str:
    """The BigQuery spelling of a node's function or form, for refusals."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    if node.meta.get("bigquery_name"):
        return str(node.meta["bigquery_name"]).upper()
    try:
        text = node.sql(dialect="bigquery")
    except sqlglot.errors.SqlglotError:
        text = ""
    head = text.split("(", 1)[0].strip().upper()
    if head and len(head) <= 40 and " " not in head:
        return head
    return type(node).key.upper()
