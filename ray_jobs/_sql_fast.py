"""Run a plain projection-and-filter query with ``pyarrow.compute``, exactly as DuckDB would.

For a query :mod:`ray_jobs._sql_shape` lets through, :func:`fast_sql` compiles, for one
input schema, a function from a table to the query's result table: the WHERE
first (rows it leaves NULL or false are dropped), then the select items. DuckDB stays the
judge of types: the query and each of its expressions are bound once against an empty
``input`` of the schema (on the process's confined database), and the fast path computes
each expression in the type DuckDB gives it and returns DuckDB's result schema. Where
pyarrow's semantics would differ from DuckDB's the compile refuses (None: run DuckDB):

- types: integers (signed), DOUBLE, VARCHAR and BOOLEAN only (no FLOAT, DECIMAL,
  unsigned, temporal or nested values in an expression; ``IS NULL`` takes any column); a
  passed-through column must come out of DuckDB in its own type, or as VARCHAR from a
  large, view or dictionary string, or as a zoned timestamp in microseconds (DuckDB's
  TIMESTAMPTZ) from one in seconds, milliseconds or microseconds;
- integer arithmetic checks overflow in DuckDB's type of the node, as DuckDB does, and is
  refused in WHERE (DuckDB may skip rows an earlier condition dropped; pyarrow computes
  every row); DOUBLE arithmetic is IEEE in both (``1/0`` is ``inf``, ``0/0`` NaN);
- comparisons follow DuckDB's NaN order (NaN equals NaN and is above every number);
  integers meet a DOUBLE as DOUBLE; decimal literals only beside a DOUBLE and only when
  they convert exactly as DuckDB does (fewer than 16 significant digits);
- string comparison is by bytes in both (DuckDB's default collation); LIKE's ``%`` and
  ``_`` match any characters, newlines and multi-byte characters included, in both.

Runtime failures (an integer overflow) raise ``pyarrow.ArrowInvalid``, where DuckDB would
fail the query too.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from celeray.sql_policy import TABLE_NAME, sql_tree
from ray_jobs._duckdb_conn import cursor
from ray_jobs._sql_shape import COMPARISONS, LIKE, Node, Shape, arguments, literal, shape_of

__all__ = ["FastSql", "fast_sql"]

Value = Any  # a pyarrow ChunkedArray or Scalar
Fn = Callable[[pa.Table], Value]
_CACHE_SIZE = 64  # (sql, schema) pairs a process keeps compiled: a pipeline has one or two
_EXACT_DIGITS = 15  # a decimal of at most this many digits converts to DOUBLE exactly
_INT_TO_DOUBLE = 2**53  # integers up to this convert to DOUBLE exactly
_CHECKED = {"+": "add_checked", "-": "subtract_checked", "*": "multiply_checked"}
_IEEE = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_SWAPPED = {"less": "greater", "greater": "less", "less_equal": "greater_equal",
            "greater_equal": "less_equal", "equal": "equal", "not_equal": "not_equal"}  # fmt: skip
# what a comparison is when its left side is NaN, its right is NaN (DuckDB: NaN = NaN and
# NaN is greater than any other value); used where either is NaN
_NAN: dict[str, Callable[[Value, Value], Value]] = {
    "equal": lambda a, b: pc.and_kleene(a, b),
    "not_equal": lambda a, b: pc.invert(pc.and_kleene(a, b)),
    "less": lambda a, b: pc.and_kleene(pc.invert(a), b),
    "less_equal": lambda a, b: b,
    "greater": lambda a, b: pc.and_kleene(a, pc.invert(b)),
    "greater_equal": lambda a, b: a,
}
_DECIMAL = re.compile(r"^[+-]?(\d*)\.?(\d*)$")
_STRINGS = (pa.string(), pa.large_string(), pa.string_view())
_LOCK = threading.Lock()
_COMPILED: dict[tuple[str, pa.Schema], FastSql | None] = {}


class _Refused(Exception):
    """The query is not one the fast path computes exactly like DuckDB."""


@dataclass(frozen=True)
class _Expr:
    fn: Fn
    family: str  # "int", "double", "string", "bool" or "other" (only IS NULL takes it)
    type: pa.DataType


@dataclass(frozen=True)
class FastSql:
    """A compiled query: ``run(table)`` is DuckDB's result for the table's rows."""

    where: Fn | None
    items: tuple[Fn, ...]
    schema: pa.Schema

    def run(self, table: pa.Table) -> pa.Table:
        """The result rows of ``table`` (possibly none) in the query's result schema.

        The table may have any number of chunks: pyarrow's kernels run over all of them in
        one call, so many small batches cost one set of calls, without being joined first.
        """
        if self.where is not None:
            table = table.filter(self.where(table))  # NULL drops the row, as in SQL
        arrays = [fn(table) for fn in self.items]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def fast_sql(sql: str, schema: pa.Schema, threads: int) -> FastSql | None:
    """The compiled query for inputs of ``schema``, or None when DuckDB must run it.

    Cached per process by ``(sql, schema)``. ``sql`` must have passed
    :func:`celeray.sql_policy.sql_problems`; a query DuckDB cannot bind is None too (DuckDB
    then says why).
    """
    key = (sql, schema)
    with _LOCK:
        if key in _COMPILED:
            return _COMPILED[key]
    shape = shape_of(sql_tree(sql))
    compiled = None
    if isinstance(shape, Shape):
        try:
            compiled = _compile(sql, shape, schema, threads)
        except (_Refused, duckdb.Error, pa.ArrowException, OverflowError, ValueError):
            compiled = None
    with _LOCK:
        if len(_COMPILED) >= _CACHE_SIZE:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    return compiled


def _compile(sql: str, shape: Shape, schema: pa.Schema, threads: int) -> FastSql:
    out, types = _bind(sql, shape, schema, threads)
    return _Compiler(shape, schema, types).build(out)


def _bind(
    sql: str, shape: Shape, schema: pa.Schema, threads: int
) -> tuple[pa.Schema, dict[int, pa.DataType]]:
    """DuckDB's result schema of ``sql`` and the type of each of ``shape.nodes``
    (by ``id``), over an empty ``input`` of ``schema``."""
    empty = pa.RecordBatchReader.from_batches(schema, [])
    with cursor(threads) as con:
        con.register(TABLE_NAME, empty)
        out = con.sql(sql).to_arrow_table().schema
    if not shape.nodes:
        return out, {}
    tree = sql_tree(sql)
    node = tree["statements"][0]["node"]
    node["select_list"] = [{**n, "alias": ""} for n in shape.nodes]
    node["where_clause"] = None
    empty = pa.RecordBatchReader.from_batches(schema, [])
    with cursor(threads) as con:
        rows = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()
        probe = rows[0][0] if rows else None
        if not probe:
            raise _Refused("the probe did not deserialize")
        con.register(TABLE_NAME, empty)
        probed = con.sql(str(probe)).to_arrow_table().schema
    if len(probed) != len(shape.nodes):
        raise _Refused("the probe's columns do not match")
    return out, {id(n): probed.field(i).type for i, n in enumerate(shape.nodes)}


class _Compiler:
    def __init__(self, shape: Shape, schema: pa.Schema, types: dict[int, pa.DataType]) -> None:
        self.shape = shape
        self.schema = schema
        self.types = types

    def build(self, out: pa.Schema) -> FastSql:
        items: list[Fn] = []
        for item in self.shape.items:
            if item is None:
                for i in range(len(self.schema)):
                    items.append(self._column_out(i, out.field(len(items)).type))
                continue
            if item.get("class") == "COLUMN_REF":
                index = self._column_index(item)
                items.append(self._column_out(index, out.field(len(items)).type))
                continue
            expr = self._expr(item, where=False)
            if expr.type != out.field(len(items)).type:
                raise _Refused(f"{expr.type} where DuckDB gives {out.field(len(items)).type}")
            items.append(expr.fn)
        if len(items) != len(out):
            raise _Refused("the result's columns do not match")
        where = None
        if self.shape.where is not None:
            cond = self._expr(self.shape.where, where=True)
            if cond.family != "bool":
                raise _Refused("WHERE is not a boolean")
            where = cond.fn
        return FastSql(where, tuple(items), out)

    def _column_out(self, index: int, target: pa.DataType) -> Fn:
        source = self.schema.field(index).type
        if source == target and not pa.types.is_nested(source):
            return lambda b: b.column(index)
        stringy = source in _STRINGS or (
            pa.types.is_dictionary(source) and source.value_type in _STRINGS
        )
        # DuckDB's TIMESTAMPTZ is in microseconds: s and ms widen to it exactly, ns would not
        zoned = (
            pa.types.is_timestamp(source) and pa.types.is_timestamp(target)
            and source.tz is not None and target.tz is not None
            and (source.unit == target.unit or (source.unit in ("s", "ms")
                                                and target.unit == "us"))
        )  # fmt: skip
        if (stringy and target == pa.string()) or zoned:
            return lambda b: b.column(index).cast(target)
        raise _Refused(f"column {self.schema.field(index).name}: {source} comes out as {target}")

    def _expr(self, node: Node, where: bool) -> _Expr:
        cls, kind = node.get("class"), node.get("type")
        duck = self.types[id(node)]
        if cls == "COLUMN_REF":
            return self._column(node, duck)
        if cls == "FUNCTION":
            name = str(node.get("function_name"))
            if name in LIKE:
                return self._like(node, where, negate=name == "!~~")
            return self._arithmetic(node, name, duck, where)
        if cls == "COMPARISON":
            op = COMPARISONS[str(kind)]
            return self._compare(node["left"], node["right"], op, where)
        if cls == "CONJUNCTION":
            parts = [self._predicate(c, where) for c in node["children"]]
            join = pc.and_kleene if kind == "CONJUNCTION_AND" else pc.or_kleene
            return _bool(lambda b: _reduce(join, [p(b) for p in parts]))
        if kind == "OPERATOR_NOT":
            inner = self._predicate(node["children"][0], where)
            return _bool(lambda b: pc.invert(inner(b)))
        if kind in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
            subject = self._expr(node["children"][0], where).fn
            test = pc.is_null if kind == "OPERATOR_IS_NULL" else pc.is_valid
            return _bool(lambda b: test(subject(b)))
        if kind in ("COMPARE_IN", "COMPARE_NOT_IN"):
            return self._in(node, where, negate=kind == "COMPARE_NOT_IN")
        if kind == "COMPARE_BETWEEN":
            low = self._compare(node["input"], node["lower"], "greater_equal", where).fn
            high = self._compare(node["input"], node["upper"], "less_equal", where).fn
            return _bool(lambda b: pc.and_kleene(low(b), high(b)))
        raise _Refused(f"{kind}")

    def _predicate(self, node: Node, where: bool) -> Fn:
        expr = self._expr(node, where)
        if expr.family != "bool":
            raise _Refused("a condition that is not boolean")
        return expr.fn

    def _column_index(self, node: Node) -> int:
        """The input column a reference names: DuckDB matches names case-insensitively."""
        name = str(node["column_names"][-1]).lower()
        matches = [i for i, n in enumerate(self.schema.names) if n.lower() == name]
        if len(matches) != 1:
            raise _Refused(f"column {name!r} matches {len(matches)} columns")
        return matches[0]

    def _column(self, node: Node, duck: pa.DataType) -> _Expr:
        index = self._column_index(node)
        source = self.schema.field(index).type
        family = _family(duck)

        def fn(b: pa.Table) -> Value:
            return b.column(index)

        if family in ("int", "double", "bool") and source != duck:
            family = "other"
        if family == "string" and source not in (pa.string(), pa.large_string()):
            family = "other"
        return _Expr(fn, family, source)

    def _operand(self, node: Node, where: bool) -> _Expr | tuple[str, str]:
        lit = literal(node)
        return lit if lit is not None else self._expr(node, where)

    def _arithmetic(self, node: Node, name: str, duck: pa.DataType, where: bool) -> _Expr:
        family = _family(duck)
        if family not in ("int", "double") or (family == "int" and where):
            raise _Refused(f"{name} giving {duck}{' in WHERE' if where else ''}")
        fns = [self._cast_operand(self._operand(a, where), duck) for a in arguments(node)]
        if len(fns) == 1:
            negate = pc.negate_checked if family == "int" else pc.negate
            (arg,) = fns
            return _Expr(lambda b: negate(arg(b)), family, duck)
        if name == "/" and family != "double":
            raise _Refused("/ not giving DOUBLE")
        func = pc.get_function(_CHECKED[name] if family == "int" else _IEEE[name])
        left, right = fns
        return _Expr(lambda b: func.call([left(b), right(b)]), family, duck)

    def _cast_operand(self, operand: _Expr | tuple[str, str], target: pa.DataType) -> Fn:
        """An arithmetic operand in ``target``, DuckDB's type of the operation."""
        family = _family(target)
        if isinstance(operand, tuple):
            value = _number(operand, family)
            scalar = pa.scalar(value).cast(target)  # safe: a literal that does not fit refuses
            return lambda b: scalar
        if operand.family not in ("int", "double") or (
            family == "int" and (operand.family != "int" or operand.type.bit_width
                                 > target.bit_width)
        ):  # fmt: skip
            raise _Refused(f"{operand.type} operand of a {target} operation")
        fn = operand.fn
        if operand.type == target:
            return fn
        return lambda b: pc.cast(fn(b), target, safe=False)  # int -> wider int, or DOUBLE

    def _compare(self, left_node: Node, right_node: Node, op: str, where: bool) -> _Expr:
        left, right = self._operand(left_node, where), self._operand(right_node, where)
        if isinstance(left, tuple):
            left, right, op = right, left, _SWAPPED[op]
        if isinstance(left, tuple):
            raise _Refused("a comparison of literals")
        func = pc.get_function(op)
        families = {left.family, right.family if isinstance(right, _Expr) else None}
        if isinstance(right, tuple):
            rvalue = _literal_for(right, left.family)
            lfn = left.fn
            if left.family != "double":
                return _bool(lambda b: func.call([lfn(b), rvalue]))
            return _bool(lambda b: _nan_compare(op, lfn(b), rvalue))
        lfn, rfn = left.fn, right.fn
        if left.family == right.family and left.family in ("int", "string", "bool"):
            return _bool(lambda b: func.call([lfn(b), rfn(b)]))
        if families <= {"int", "double"}:
            ld, rd = _as_double(left), _as_double(right)
            return _bool(lambda b: _nan_compare(op, ld(b), rd(b)))
        raise _Refused(f"comparison of {left.type} and {right.type}")

    def _like(self, node: Node, where: bool, negate: bool) -> _Expr:
        subject_node, pattern_node = arguments(node)
        subject = self._expr(subject_node, where)
        if subject.family != "string":
            raise _Refused("LIKE on a non-string")
        pattern = (literal(pattern_node) or ("", ""))[1]
        fn = subject.fn
        if negate:
            return _bool(lambda b: pc.invert(pc.match_like(fn(b), pattern)))
        return _bool(lambda b: pc.match_like(fn(b), pattern))

    def _in(self, node: Node, where: bool, negate: bool) -> _Expr:
        subject_node, *values = node["children"]
        subject = self._expr(subject_node, where)
        lits = [literal(v) or ("", "") for v in values]
        if subject.family == "int" and all(k == "INTEGER" for k, _ in lits):
            value_set: pa.Array = pa.array([int(t) for _, t in lits], pa.int64())
            target: pa.DataType = pa.int64()
        elif subject.family == "string" and all(k == "STRING" for k, _ in lits):
            value_set, target = pa.array([t for _, t in lits], subject.type), subject.type
        else:
            raise _Refused(f"IN on {subject.type}")
        fn = subject.fn

        def test(b: pa.Table) -> Value:
            x = fn(b).cast(target)
            found = pc.is_in(x, value_set=value_set)
            found = pc.if_else(pc.is_valid(x), found, pa.scalar(None, pa.bool_()))
            return pc.invert(found) if negate else found

        return _bool(test)


def _family(t: pa.DataType) -> str:
    if pa.types.is_signed_integer(t):
        return "int"
    if t == pa.float64():
        return "double"
    if t == pa.string():
        return "string"
    if t == pa.bool_():
        return "bool"
    return "other"


def _bool(fn: Fn) -> _Expr:
    return _Expr(fn, "bool", pa.bool_())


def _reduce(join: Callable[[Value, Value], Value], values: list[Value]) -> Value:
    result = values[0]
    for value in values[1:]:
        result = join(result, value)
    return result


def _as_double(expr: _Expr) -> Fn:
    fn = expr.fn
    if expr.family == "double":
        return fn
    return lambda b: pc.cast(fn(b), pa.float64(), safe=False)  # as DuckDB: int to DOUBLE


def _nan_compare(op: str, left: Value, right: Value) -> Value:
    """``left op right`` over DOUBLEs in DuckDB's order, where NaN = NaN > everything."""
    ieee = pc.get_function(op).call([left, right])
    left_nan, right_nan = pc.is_nan(left), pc.is_nan(right)
    either = pc.or_kleene(left_nan, right_nan)
    if isinstance(either, pa.Scalar) or pc.any(either).as_py():
        return pc.if_else(either, _NAN[op](left_nan, right_nan), ieee)
    return ieee


def _number(lit: tuple[str, str], family: str) -> int | float:
    kind, text = lit
    if kind == "INTEGER":
        value = int(text)
        if family == "double" and abs(value) > _INT_TO_DOUBLE:
            raise _Refused(f"integer literal {text} as DOUBLE")
        return value if family == "int" else float(value)
    if kind == "NUMERIC" and family == "double":
        match = _DECIMAL.match(text)
        digits = (match.group(1) + match.group(2)).lstrip("0") if match else None
        if digits is None or len(digits) > _EXACT_DIGITS or not text.strip("+-."):
            raise _Refused(f"decimal literal {text}")
        return float(text)
    raise _Refused(f"{kind.lower()} literal {text} in {family} arithmetic")


def _literal_for(lit: tuple[str, str], family: str) -> Any:
    """A literal compared with an expression of ``family``, as DuckDB converts it."""
    kind, text = lit
    if family in ("int", "double") and kind in ("INTEGER", "NUMERIC"):
        if family == "int" and kind != "INTEGER":
            raise _Refused(f"decimal literal {text} against an integer")
        value = _number(lit, family)
        return pa.scalar(value, pa.int64() if family == "int" else pa.float64())
    if family == "string" and kind == "STRING":
        return pa.scalar(text, pa.string())
    if family == "bool" and kind == "BOOLEAN":
        return pa.scalar(text.lower() == "true", pa.bool_())
    raise _Refused(f"{kind.lower()} literal against {family}")
