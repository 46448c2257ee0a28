"""Which pipeline SQL is a plain projection and filter of ``input``: the fast path's gate.

A query qualifies when its parse (DuckDB's ``json_serialize_sql``, see
:func:`celeray.sql_policy.sql_tree`) is one ``SELECT <items> FROM input [WHERE <cond>]``
and nothing else: no CTE, join, subquery, set operation, DISTINCT, GROUP BY, HAVING,
QUALIFY, ORDER BY, LIMIT, SAMPLE or window, and every expression is built from

- column references (``a``, or qualified by the table's name or alias), ``*`` bare;
- integer, decimal (no exponent), string and boolean literals;
- ``+ - * /`` (and unary ``-``) over at least one non-literal;
- ``= <> < <= > >=``, ``AND``, ``OR``, ``NOT``, ``IS [NOT] NULL``, ``[NOT] BETWEEN``;
- ``[NOT] IN`` a list of non-NULL literals;
- ``[NOT] LIKE`` a string literal without a backslash (pyarrow would read it as an escape,
  DuckDB does not).

Such a query is row-local: each row's output depends on that row alone, so it may run
batch by batch. Whether the fast engine computes exactly what DuckDB would also depends on
the types, which only a bound query knows: :mod:`ray_jobs._sql_fast` checks those and
sends anything it is unsure of to DuckDB. Pure: no DuckDB, no data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMPARISONS", "Shape", "shape_of"]

Node = dict[str, Any]

# DuckDB's comparison node types -> pyarrow.compute's function names
COMPARISONS = {
    "COMPARE_EQUAL": "equal",
    "COMPARE_NOTEQUAL": "not_equal",
    "COMPARE_LESSTHAN": "less",
    "COMPARE_LESSTHANOREQUALTO": "less_equal",
    "COMPARE_GREATERTHAN": "greater",
    "COMPARE_GREATERTHANOREQUALTO": "greater_equal",
}
ARITHMETIC = frozenset({"+", "-", "*", "/"})
LIKE = frozenset({"~~", "!~~"})
LITERAL_KINDS = frozenset({"INTEGER", "NUMERIC", "STRING", "BOOLEAN"})
_PREDICATES = frozenset({"OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "OPERATOR_NOT"})
_IN = frozenset({"COMPARE_IN", "COMPARE_NOT_IN"})
_EMPTY_NODE_KEYS = ("modifiers", "group_expressions", "group_sets")


@dataclass(frozen=True)
class Shape:
    """A query that qualifies: its select items (``None`` for ``*``) and WHERE condition.

    ``qualifiers``: the lowercase names a column reference may be qualified with (the
    table's alias, else ``input``). ``nodes``: every non-literal expression node, in a
    fixed order, whose type the fast path asks DuckDB for.
    """

    items: tuple[Node | None, ...] = field(repr=False)
    where: Node | None = field(repr=False)
    qualifiers: frozenset[str]
    nodes: tuple[Node, ...] = field(repr=False)


def shape_of(tree: Node) -> Shape | str:
    """The query's :class:`Shape`, or why it does not qualify (a short reason)."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return "not one statement"
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE":
        return f"a {node.get('type')}, not a plain SELECT"
    for key in _EMPTY_NODE_KEYS:
        if node.get(key):
            return f"has {key.replace('_', ' ')}"
    if (node.get("cte_map") or {}).get("map"):
        return "has a WITH clause"
    for key in ("having", "sample", "qualify"):
        if node.get(key) is not None:
            return f"has {key}"
    if node.get("aggregate_handling") not in (None, "STANDARD_HANDLING"):
        return "has GROUP BY ALL"
    source = node.get("from_table") or {}
    if source.get("type") != "BASE_TABLE" or str(source.get("table_name", "")).lower() != "input":
        return "does not read input alone"
    if source.get("sample") or source.get("column_name_alias") or source.get("at_clause"):
        return "renames or samples input"
    if source.get("catalog_name") or source.get("schema_name") not in ("", "main", None):
        return "names input's schema"
    qualifiers = frozenset({str(source.get("alias") or "input").lower()})
    nodes: list[Node] = []
    items: list[Node | None] = []
    for item in node.get("select_list") or []:
        if item.get("class") == "STAR":
            if not _bare_star(item):
                return "a * with EXCLUDE, REPLACE, RENAME or COLUMNS"
            items.append(None)
            continue
        if item.get("class") == "CONSTANT":
            return "selects a literal"
        problem = _expression(item, qualifiers, nodes)
        if problem:
            return problem
        items.append(item)
    if not items:
        return "selects nothing"
    where = node.get("where_clause")
    if where is not None:
        if where.get("class") == "CONSTANT":
            return "WHERE a literal"
        problem = _expression(where, qualifiers, nodes)
        if problem:
            return problem
    return Shape(tuple(items), where, qualifiers, tuple(nodes))


def literal(node: Node) -> tuple[str, str] | None:
    """A literal node's ``(kind, text)``, or None when the node is not a literal."""
    if node.get("class") != "CONSTANT":
        return None
    lit = node.get("literal") or {}
    return str(lit.get("kind")), str(lit.get("text"))


def arguments(node: Node) -> list[Node]:
    """A function node's argument expressions."""
    return [a.get("expression") or {} for a in node.get("arguments") or []]


def _bare_star(item: Node) -> bool:
    return not any(
        item.get(k)
        for k in (
            "exclude_list", "replace_list", "columns", "expr", "qualified_exclude_list",
            "rename_list", "relation_name",
        )
    )  # fmt: skip


def _expression(node: Node, qualifiers: frozenset[str], nodes: list[Node]) -> str | None:
    """Why ``node`` (not a literal) is outside the fast path's grammar; None if inside.

    Every node of the tree is appended to ``nodes``, parents before children.
    """
    kind, cls = node.get("type"), node.get("class")
    if cls == "CONSTANT":
        return "a literal where an expression is needed"
    nodes.append(node)
    if cls == "COLUMN_REF":
        names = [str(n) for n in node.get("column_names") or []]
        if len(names) == 2 and names[0].lower() in qualifiers:
            return None
        return None if len(names) == 1 else f"column {'.'.join(names)!r}"
    if cls == "FUNCTION":
        return _function(node, qualifiers, nodes)
    if cls == "COMPARISON" and kind in COMPARISONS:
        return _operands([node.get("left") or {}, node.get("right") or {}], qualifiers, nodes)
    if cls == "CONJUNCTION" and kind in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
        return _all(node.get("children") or [], qualifiers, nodes)
    if cls == "OPERATOR" and kind in _PREDICATES:
        children = node.get("children") or []
        return (
            "an operator of many operands"
            if len(children) != 1
            else _all(children, qualifiers, nodes)
        )
    if cls == "OPERATOR" and kind in _IN:
        subject, *values = node.get("children") or [{}]
        for value in values:
            lit = literal(value)
            if lit is None or lit[0] not in ("INTEGER", "STRING"):
                return "IN a list that is not integer or string literals"
        return _expression(subject, qualifiers, nodes) if values else "IN nothing"
    if cls == "BETWEEN" and kind == "COMPARE_BETWEEN":
        parts = [node.get(k) or {} for k in ("input", "lower", "upper")]
        return _operands(parts, qualifiers, nodes)
    return f"{str(kind or cls).lower()} is not on the fast path"


def _function(node: Node, qualifiers: frozenset[str], nodes: list[Node]) -> str | None:
    name = str(node.get("function_name"))
    if not node.get("is_operator") or node.get("schema") or node.get("catalog"):
        return f"function {name}()"
    if node.get("filter") or node.get("distinct") or node.get("export_state"):
        return f"{name} with FILTER or DISTINCT"
    if ((node.get("order_bys") or {}).get("orders")) or node.get("is_legacy_function_call"):
        return f"{name} with ORDER BY"
    args = arguments(node)
    if name in LIKE:
        pattern = literal(args[1]) if len(args) == 2 else None
        if pattern is None or pattern[0] != "STRING" or "\\" in pattern[1]:
            return "LIKE other than against a string literal without backslashes"
        return _expression(args[0], qualifiers, nodes)
    if name not in ARITHMETIC:
        return f"operator {name}"
    if len(args) == 1 and name == "-":
        return _expression(args[0], qualifiers, nodes)
    if len(args) != 2:
        return f"operator {name} of {len(args)} operands"
    return _operands(args, qualifiers, nodes)


def _operands(parts: list[Node], qualifiers: frozenset[str], nodes: list[Node]) -> str | None:
    """Operands of which at least one is not a literal, each a literal or an expression."""
    if all(literal(p) is not None for p in parts):
        return "an operation on literals only"
    for part in parts:
        lit = literal(part)
        if lit is not None:
            if lit[0] not in LITERAL_KINDS:
                return f"a {lit[0].lower()} literal"
            continue
        problem = _expression(part, qualifiers, nodes)
        if problem:
            return problem
    return None


def _all(children: list[Node], qualifiers: frozenset[str], nodes: list[Node]) -> str | None:
    for child in children:
        problem = _expression(child, qualifiers, nodes)
        if problem:
            return problem
    return None
