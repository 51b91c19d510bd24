"""BigQuery Standard SQL -> DuckDB: parse, refuse what is not verified, rewrite the rest.

Translation is the allowlist's gate: every node of the parsed statement must be a verified
structural form (STRUCTURE) or have a rule (pipeline.local.bigquery.functions); anything else
is refused with a one-line NotSupportedError before DuckDB sees the query. Rules read the
BigQuery types of their arguments, which sqlglot's annotator infers from the tables' columns.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from pipeline.local.bigquery import (  # noqa: F401  (importing registers the rules)
    aggregates,
    functions,
    strings,
    temporal,
)
from pipeline.local.bigquery.names import (
    NotSupportedError,
    WarehouseError,
    first_line,
    validate_identifier,
)
from pipeline.local.bigquery.rules import ID_KEY, RULES, Context, name_of

# (dataset, table) -> [(column, BigQuery type)] of an existing table, or None.
Catalog = Callable[[str, str], "list[tuple[str, str]] | None"]

# Query structure the suite and the pipeline's own queries exercise; DuckDB gives BigQuery's
# meaning for each as sqlglot renders it. Function-like nodes are governed by RULES instead.
STRUCTURE: tuple[type[exp.Expression], ...] = (
    exp.Select, exp.From, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered, exp.Limit,
    exp.Offset, exp.Alias, exp.Column, exp.Identifier, exp.Table, exp.TableAlias, exp.Star,
    exp.Paren, exp.Literal, exp.Null, exp.Boolean, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ,
    exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Neg, exp.With,
    exp.CTE, exp.Subquery, exp.Union, exp.Join, exp.Distinct, exp.Tuple, exp.ByteString,
    exp.RawString, exp.HexString, exp.Schema, exp.ColumnDef, exp.Values, exp.Set,
    exp.SetItem, exp.PropertyEQ,
)
STATEMENTS = (exp.Query, exp.Create, exp.Drop, exp.Insert, exp.Update, exp.Delete, exp.Alter)
# Arguments their parent's rule checks as a whole (a date part, an interval, a type).
_CHECKED_BY_RULE = (exp.Var, exp.Interval, exp.WeekStart, exp.DataType, exp.Lambda,
                    exp.WindowSpec, exp.TsOrDsToDate, exp.TsOrDsToDatetime,
                    exp.TsOrDsToTimestamp)
# Parts of DDL statements, checked with the statement.
_DDL = (exp.ColumnConstraint, exp.NotNullColumnConstraint, exp.RenameColumn, exp.Properties,
        exp.LocationProperty, exp.Property, exp.DataType)
_FLOAT_CHARS = set(".eE")


def parse(sql: str) -> exp.Expression:
    """Parse exactly one BigQuery statement."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except sqlglot.errors.SqlglotError as error:
        raise WarehouseError(f"invalid BigQuery SQL: {first_line(error)}") from None
    if len(statements) != 1:
        raise WarehouseError(
            f"expected one SQL statement, got {len(statements)}; run statements one at a time"
        )
    return statements[0]


def translate(sql: str | exp.Expression, catalog: Catalog | None = None) -> exp.Expression:
    """The DuckDB form of one verified BigQuery statement (a sqlglot tree to render).

    Without a catalog (validating a job before the warehouse is open) column types are
    unknown, so type-dependent checks are deferred to the run.

    Raises:
        NotSupportedError: a function or form the conformance suite has not verified.
        WarehouseError: SQL that does not parse, or more than one statement.
    """
    statement = parse(sql) if isinstance(sql, str) else sql
    if not isinstance(statement, STATEMENTS):
        raise NotSupportedError(f"{type(statement).key.upper()} statements")
    _drop_projects(statement)
    if isinstance(statement, exp.Create | exp.Drop) and statement.kind == "SCHEMA":
        return _schema_statement(statement)
    _check_statement(statement)
    context = Context(types=_annotate(statement, catalog), strict=catalog is not None)
    _rewrite(statement, context)
    if isinstance(statement, exp.Query):
        _name_anonymous_columns(statement)
    return statement


def _drop_projects(statement: exp.Expression) -> None:
    """`project.dataset.table` names the table `dataset.table`: one local project."""
    for table in statement.find_all(exp.Table):
        if table.args.get("db"):
            table.set("catalog", None)


def _schema_statement(statement: exp.Create | exp.Drop) -> exp.Expression:
    """CREATE/DROP SCHEMA: the dataset becomes a DuckDB schema; OPTIONS(location) is moot."""
    parts = ".".join(part.name for part in statement.this.parts).split(".")
    dataset = validate_identifier("dataset", parts[-1])
    statement.set("this", exp.Table(db=exp.to_identifier(dataset, quoted=True)))
    properties = statement.args.get("properties")
    for prop in properties.expressions if properties else []:
        if not isinstance(prop, exp.LocationProperty | exp.Property):
            raise NotSupportedError(f"CREATE SCHEMA with {name_of(prop)}")
    statement.set("properties", None)
    return statement


def _check_statement(statement: exp.Expression) -> None:
    """Refuse statement forms beyond the verified ones (the tests' and pipeline's)."""
    if isinstance(statement, exp.Create) and statement.kind != "TABLE":
        raise NotSupportedError(f"CREATE {statement.kind}")
    if isinstance(statement, exp.Drop) and statement.kind != "TABLE":
        raise NotSupportedError(f"DROP {statement.kind}")
    if isinstance(statement, exp.Alter):
        actions = statement.args.get("actions") or []
        if not all(isinstance(action, exp.RenameColumn) for action in actions):
            raise NotSupportedError("ALTER TABLE other than RENAME COLUMN")


def _annotate(statement: exp.Expression, catalog: Catalog | None) -> dict[int, str]:
    """BigQuery types of the statement's nodes by stamped id (sqlglot's inference).

    Qualification works on a copy (it renames and lowercases), so each original node gets
    an id the copy keeps. Statements sqlglot cannot qualify get no types: the rules that need
    them then refuse.
    """
    for index, node in enumerate(statement.walk()):
        node.meta[ID_KEY] = index
    schema: dict[str, dict[str, dict[str, str]]] = {}
    for table in statement.find_all(exp.Table):
        columns = catalog(table.db, table.name) if catalog and table.db else None
        if columns:
            schema.setdefault(table.db, {})[table.name] = dict(columns)
    try:
        annotated = annotate_types(
            qualify(_typing_query(statement), schema=schema, dialect="bigquery",
                    quote_identifiers=False, validate_qualify_columns=False),
            schema=schema, dialect="bigquery",
        )
    except (sqlglot.errors.SqlglotError, KeyError, ValueError, AttributeError):
        return {}
    types, rows = {}, {}
    for node in annotated.walk():
        kind = node.type
        if kind is None or kind.is_type(exp.DataType.Type.UNKNOWN):
            continue
        if ID_KEY in node.meta:
            types[node.meta[ID_KEY]] = kind.sql(dialect="bigquery")
        elif isinstance(node, exp.TableColumn) and ID_KEY in node.this.meta:
            rows[node.this.meta[ID_KEY]] = kind.sql(dialect="bigquery")  # a whole row
    for column in statement.find_all(exp.Column):
        identifier = column.args.get("this")
        if identifier is not None and identifier.meta.get(ID_KEY) in rows:
            types.setdefault(column.meta[ID_KEY], rows[identifier.meta[ID_KEY]])
    return types


def _typing_query(statement: exp.Expression) -> exp.Expression:
    """A copy of the statement's expressions in a query sqlglot can type: the statement
    itself, INSERT's SELECT, or UPDATE's and DELETE's expressions over their table."""
    if isinstance(statement, exp.Query):
        return statement.copy()
    if isinstance(statement.args.get("expression"), exp.Query):
        return statement.args["expression"].copy()
    if isinstance(statement, exp.Update | exp.Delete) and isinstance(statement.this, exp.Table):
        values = [item.expression.copy() for item in statement.expressions] or [exp.Star()]
        query = exp.select(*values).from_(statement.this.copy())
        where = statement.args.get("where")
        return query.where(where.this.copy()) if where is not None else query
    return statement.copy()


def _rewrite(statement: exp.Expression, context: Context) -> None:
    """Check every node against the allowlist, children first, and apply its rule.

    When several nodes are refused, the outermost refusal is the one reported: it names
    what the user wrote (CAST with FORMAT rather than the FORMAT clause's parts).
    """
    refusals: list[tuple[int, NotSupportedError]] = []
    for node in reversed(list(statement.walk())):
        rule = RULES.get(type(node))
        try:
            if rule is not None:
                parent, key, index = node.parent, node.arg_key, node.index
                replacement = rule(node, context)
                if replacement is not None and replacement is not node:
                    # set, not node.replace: the replacement may hold the node itself
                    replacement.meta[ID_KEY] = node.meta.get(ID_KEY)
                    parent.set(key, replacement, index)
            elif not _accepted(node):
                raise NotSupportedError(name_of(node))
            elif isinstance(node, exp.Literal) and not node.is_string:
                _type_number(node)
        except NotSupportedError as refusal:
            refusals.append((node.meta.get(ID_KEY, 0), refusal))
    if refusals:
        raise min(refusals, key=lambda item: item[0])[1]


def _accepted(node: exp.Expression) -> bool:
    """A node without a rule: verified structure, or an argument its parent's rule checks."""
    if isinstance(node, exp.Anonymous):
        return False
    if isinstance(node, STRUCTURE + STATEMENTS) and not isinstance(node, exp.DataType | exp.Var):
        return True
    parent = node.parent
    if isinstance(node, exp.DataType) and isinstance(parent, exp.DataType):
        return True  # ARRAY<INT64>: the outer type is checked as a whole
    if parent is not None and type(parent) not in RULES and not isinstance(
            parent, STRUCTURE + STATEMENTS + _DDL):
        return True  # the parent has no rule either: its refusal names the function
    if isinstance(node, _CHECKED_BY_RULE) and parent is not None and type(parent) in RULES:
        return True
    return isinstance(node, _DDL) and node.find_ancestor(exp.Create, exp.Alter) is not None


def _type_number(literal: exp.Literal) -> None:
    """Give numeric literals BigQuery's types: 2.5 is FLOAT64 (DuckDB: DECIMAL), integers are
    INT64 (DuckDB: INTEGER, which overflows at 2^31) where they take part in arithmetic."""
    parent = literal.parent
    if _FLOAT_CHARS & set(literal.this):
        literal.replace(_literal_cast(literal, "DOUBLE"))
    elif isinstance(parent, exp.Add | exp.Sub | exp.Mul | exp.Neg | exp.Div | exp.Mod
                    | exp.IntDiv):
        literal.replace(_literal_cast(literal, "BIGINT"))


def _literal_cast(literal: exp.Literal, kind: str) -> exp.Expression:
    node = exp.Cast(this=literal.copy(), to=exp.DataType.build(kind))
    node.meta.update(literal.meta, bq_literal=True)
    return node


def _name_anonymous_columns(query: exp.Query) -> None:
    """BigQuery names the result's unnamed columns f0_, f1_, ... (DuckDB: their SQL text)."""
    select = query
    while isinstance(select, exp.SetOperation):
        select = select.this
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if not isinstance(select, exp.Select):
        return
    counter = itertools.count()
    for column in list(select.expressions):
        if not isinstance(column, exp.Alias | exp.Column | exp.Star | exp.Dot):
            column.replace(exp.alias_(column.copy(), f"f{next(counter)}_"))
