"""The SQL fast path: which queries take it (a table), and that it gives DuckDB's answer.

Every query here runs both ways on the same batches, through ``ray_jobs.transforms.apply``
(the fast path when the classifier and the compile let it) and through a plain confined
DuckDB connection, and the two results must be equal: rows, order, values (NaN, NULL,
signed zero) and the schema, names and types.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest

import bench.jobs
from celeray.errors import TransformError
from celeray.sql_policy import sql_tree
from ray_jobs._sql_fast import fast_sql
from ray_jobs._sql_shape import Shape, shape_of
from ray_jobs.transforms import apply, connect

NAN, INF = float("nan"), float("inf")


def table() -> pa.Table:
    return pa.table(
        {
            "i8": pa.array([1, -128, 127, None, 0, 5, 100, -3], pa.int8()),
            "i32": pa.array([10, 0, -7, 2**31 - 1, None, 3, 0, 8], pa.int32()),
            "i64": pa.array([2**53 + 1, 0, None, -5, 7, 2**62, 1, 1], pa.int64()),
            "d": pa.array([1.5, NAN, -0.0, INF, None, -INF, 0.1, 2.0], pa.float64()),
            "s": pa.array(["a", "B", "é", "a\nb", None, "a_b", "ab%", "z"], pa.string()),
            "ls": pa.array(["x", None, "Y", "xy", "", "x%y", "é", "x"], pa.large_string()),
            "b": pa.array([True, False, None, True, False, True, None, False]),
            "dt": pa.array([1, 2, None, 4, 5, 6, 7, 8], pa.date32()),
            "ts": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.timestamp("us", "Europe/Paris")),
            "dict": pa.array(["p", "q", None, "p", "q", "p", "r", "p"]).dictionary_encode(),
            "Mixed": pa.array([1, 2, 3, 4, 5, 6, 7, 8], pa.int16()),
            "ts_s": pa.array([1, None, 3, 4, 5, 6, 7, 2**33], pa.timestamp("s", "UTC")),
            "ts_ms": pa.array([1, None, 3, 4, 5, 6, 7, 8], pa.timestamp("ms", "UTC")),
            "naive": pa.array([1, None, 3, 4, 5, 6, 7, 8], pa.timestamp("s")),
        }
    )


def flights() -> pa.Table:
    return pa.table(
        {
            "dep_delay": pa.array([3, -2, None, 0, 15, 1], pa.int64()),
            "distance": pa.array([1000, 200, 300, None, 500, 10], pa.int64()),
            "air_time": pa.array([100, 0, 20, 30, None, 0], pa.int64()),
            "carrier": pa.array(["UA", "AA", "B6", None, "UA", "DL"]),
        }
    )


FAST = [
    bench.jobs.SQL,
    "SELECT * FROM input",
    "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL",
    "SELECT carrier, distance - air_time AS x, -distance AS n FROM flights_input",
    "SELECT i.carrier FROM input AS i WHERE i.dep_delay >= 1 OR NOT (air_time <> 0)",
    "SELECT CARRIER, Distance FROM input WHERE carrier IN ('UA', 'DL')",
    "SELECT * FROM input WHERE carrier NOT IN ('UA') AND dep_delay BETWEEN -2 AND 3",
    "SELECT * FROM input WHERE carrier LIKE 'U%' OR carrier NOT LIKE '_6'",
    "SELECT distance * 2 + 1 AS y, dep_delay > 0 AS late FROM input",
    "SELECT * FROM input WHERE distance / air_time > 2.5",
    "SELECT * FROM input WHERE carrier > 'B' AND carrier <= 'UA'",
]
FAST_MIXED = [
    "SELECT * FROM input WHERE d > 0",
    "SELECT * FROM input WHERE d = d",
    "SELECT * FROM input WHERE d <= 1.5 OR d < -1",
    "SELECT * FROM input WHERE d >= 0.1 AND d <> 2",
    "SELECT d, d / 0 AS q, d * i8 AS r, i8 / i32 AS t, d + 1.25 AS u FROM input",
    "SELECT * FROM input WHERE i64 > 9007199254740992 OR i64 = 1",
    "SELECT * FROM input WHERE i64 > d",
    "SELECT ts_s, ts_ms, naive, ts FROM input WHERE ts_s IS NOT NULL",
    "SELECT * FROM input WHERE i8 BETWEEN -128 AND 1 OR i32 IN (0, 3, 2147483647)",
    "SELECT * FROM input WHERE i8 NOT IN (1, 1000)",
    "SELECT i8 * 2 AS a, i8 + i32 AS b, i32 - i8 AS c, mixed * 60 AS m FROM input WHERE i32 > 0",
    "SELECT * FROM input WHERE s LIKE 'a%' OR s LIKE '_' OR s = 'z'",
    "SELECT * FROM input WHERE s NOT LIKE 'a_b' AND s < 'b'",
    "SELECT * FROM input WHERE ls LIKE 'x%' OR ls IN ('Y', '')",
    "SELECT s, ls, dict, ts, dt FROM input WHERE b",
    "SELECT * FROM input WHERE b = true OR b IS NULL",
    "SELECT * FROM input WHERE NOT b",
    "SELECT * FROM input WHERE dt IS NULL OR ts IS NOT NULL AND d IS NOT NULL",
    'SELECT MIXED, "mixed", input.i8 FROM input WHERE "Mixed" > 2',
    "SELECT *, i8 AS i8 FROM input",
]
# queries the classifier sends to DuckDB: name -> a word of the reason
NOT_FAST = {
    "SELECT count(*) FROM input": "function",
    "SELECT * FROM input ORDER BY a": "modifiers",
    "SELECT * FROM input LIMIT 3": "modifiers",
    "SELECT DISTINCT a FROM input": "modifiers",
    "SELECT a FROM input GROUP BY a": "group",
    "WITH t AS (SELECT * FROM input) SELECT * FROM t": "WITH",
    "SELECT * FROM input WHERE a IN (SELECT 1)": "subquery",
    "SELECT * EXCLUDE (a) FROM input": "EXCLUDE",
    "SELECT upper(s) FROM input": "function",
    "SELECT CAST(a AS INTEGER) FROM input": "cast",
    "SELECT a % 2 FROM input": "operator %",
    "SELECT a // 2 FROM input": "operator //",
    "SELECT * FROM input WHERE s ILIKE 'a%'": "~~*",
    "SELECT * FROM input WHERE s LIKE 'a\\%'": "backslash",
    "SELECT * FROM input WHERE s LIKE t": "LIKE",
    "SELECT * FROM input WHERE a IN (1, NULL)": "IN",
    "SELECT * FROM input WHERE a IS DISTINCT FROM 1": "distinct",
    "SELECT 1 AS one, * FROM input": "literal",
    "SELECT * FROM input WHERE 1 = 1": "literals only",
    "SELECT * FROM input WHERE a = NULL": "null",
    "SELECT * FROM input, input AS j": "input alone",
    "SELECT a FROM input UNION ALL SELECT a FROM input": "SET_OPERATION",
    "SELECT x.a FROM input": "column 'x.a'",
    "SELECT * FROM input WHERE s ~~ 'a' ESCAPE '!'": "LIKE",
    "SELECT CASE WHEN a > 0 THEN 1 END FROM input": "case",
}
# shapes the classifier takes but whose types make the compile send them to DuckDB
NOT_FAST_TYPES = [
    "SELECT i8 * 1.5 AS x FROM input",  # DECIMAL arithmetic
    "SELECT * FROM input WHERE i32 = 1.5",  # integer against a decimal
    "SELECT * FROM input WHERE i32 = '3'",  # string literal cast to an integer
    "SELECT * FROM input WHERE i32 + 1 > 0",  # integer arithmetic in WHERE
    "SELECT * FROM input WHERE dt > '2020-01-01'",  # dates
    "SELECT * FROM input WHERE d IN (1, 2)",  # DOUBLE IN (NaN order)
    "SELECT * FROM input WHERE d > 0.12345678901234567",  # decimal not exact as DOUBLE
    "SELECT d + 1e0 AS u FROM input",  # a literal with an exponent
]


def duckdb_result(data: pa.Table, sql: str) -> pa.Table:
    con = connect(1)
    try:
        con.register("input", data)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def fast_result(data: pa.Table, sql: str) -> pa.Table:
    out = list(apply(iter(data.to_batches(max_chunksize=3)), sql=sql, transform=None, threads=1))
    if not out:
        return duckdb_result(data, sql).slice(0, 0)
    return pa.Table.from_batches(out)


def same(a: pa.Table, b: pa.Table) -> None:
    assert a.schema == b.schema, (a.schema, b.schema)
    assert _rows(a) == _rows(b)


def _rows(t: pa.Table) -> list[Any]:
    def norm(v: Any) -> Any:
        if isinstance(v, float):
            return ("nan",) if math.isnan(v) else (v, math.copysign(1, v))
        return v

    return [tuple(norm(v) for v in row.values()) for row in t.to_pylist()]


@pytest.mark.parametrize("sql", FAST)
def test_flights_queries_are_fast_and_as_duckdb(sql: str) -> None:
    sql = sql.replace("flights_input", "input")
    data = flights()
    assert fast_sql(sql, data.schema, 1) is not None
    same(fast_result(data, sql), duckdb_result(data, sql))


@pytest.mark.parametrize("sql", FAST_MIXED)
def test_edge_cases_are_fast_and_as_duckdb(sql: str) -> None:
    data = table()
    assert fast_sql(sql, data.schema, 1) is not None
    same(fast_result(data, sql), duckdb_result(data, sql))


@pytest.mark.parametrize("sql", NOT_FAST_TYPES)
def test_types_send_to_duckdb_and_the_answer_holds(sql: str) -> None:
    data = table()
    assert isinstance(shape_of(sql_tree(sql)), Shape)
    assert fast_sql(sql, data.schema, 1) is None
    same(fast_result(data, sql), duckdb_result(data, sql))


@pytest.mark.parametrize("sql", sorted(NOT_FAST))
def test_classifier_refuses(sql: str) -> None:
    reason = shape_of(sql_tree(sql))
    assert isinstance(reason, str) and NOT_FAST[sql].lower() in reason.lower(), reason


def test_classifier_takes_the_bench_query() -> None:
    shape = shape_of(sql_tree(bench.jobs.SQL))
    assert isinstance(shape, Shape) and shape.qualifiers == {"input"}
    assert shape.items[0] is None and shape.where is not None


def test_overflow_fails_as_in_duckdb() -> None:
    sql = "SELECT i32 + i32 AS x FROM input"
    data = table()
    assert fast_sql(sql, data.schema, 1) is not None
    with pytest.raises(TransformError, match="sql failed"):
        list(apply(iter(data.to_batches()), sql=sql, transform=None, threads=1))
    with pytest.raises(Exception, match="Overflow"):
        duckdb_result(data, sql)
    # rows the WHERE drops are never computed, in either
    sql = "SELECT i32 + i32 AS x FROM input WHERE i32 < 100"
    same(fast_result(data, sql), duckdb_result(data, sql))


def test_unknown_column_is_duckdbs_error() -> None:
    data = flights()
    assert fast_sql("SELECT nope FROM input", data.schema, 1) is None
    with pytest.raises(TransformError, match="sql failed"):
        list(apply(iter(data.to_batches()), sql="SELECT nope FROM input", transform=None,
                   threads=1))  # fmt: skip


def test_zoned_timestamps_come_out_as_from_duckdb() -> None:
    sql = "SELECT * FROM input WHERE a > 1"
    for unit in ("s", "ms", "us", "ns"):
        data = pa.table({"t": pa.array([1, 1001, None], pa.timestamp(unit, "UTC")),
                         "a": [1, 2, 3]})  # fmt: skip
        assert fast_sql(sql, data.schema, 1) is not None
        fast, duck = fast_result(data, sql), duckdb_result(data, sql)
        assert fast.equals(duck) and fast.schema == duck.schema


def test_ambiguous_case_goes_to_duckdb() -> None:
    data = pa.table({"a": [1, 2], "A": [3, 4]})
    assert fast_sql("SELECT * FROM input WHERE a > 1", data.schema, 1) is None
