"""What a pipeline's ``sql`` may do: one SELECT over ``input``, nothing that leaves DuckDB.

Two layers keep pipeline SQL from files, the network and the environment. At run time the
Ray side runs it in a DuckDB connection with ``enable_external_access = false`` and the
configuration locked (:mod:`ray_jobs.transforms`): whatever the text says, DuckDB itself
refuses to open a file, a URL or an extension, and the SQL cannot turn that back on. Here,
:func:`check_sql` reads the parsed statement (``json_serialize_sql``; nothing is bound or
run) so that ``celeray validate`` names the problem before any run, and the Ray side repeats
the check before it executes anything. The whole tree is walked: a ``read_text`` in a
scalar subquery of the SELECT list, a WHERE, a CTE or a join is found like one in FROM.

The rules:

- exactly one statement, a SELECT (CTEs, set operations and subqueries are fine);
- the only base table is ``input`` (``main.input`` too) or a CTE of the query;
- table functions only from :data:`TABLE_FUNCTIONS`, which compute from their arguments
  alone; every other one (``read_csv``, ``read_text``, ``glob``, ``query``, the
  ``duckdb_*`` and ``pragma_*`` catalogues...) is refused;
- no function of :data:`REFUSED_FUNCTIONS` anywhere (settings, variables, secrets,
  embedded SQL, sleeping, DuckDB's log);
- no ``SHOW``/``DESCRIBE``/``SUMMARIZE``.

The lists were drawn from ``SELECT function_name, function_type FROM duckdb_functions()``
of duckdb 2.0: of its 109 table functions, those that read files (``read_*``,
``parquet_*``, ``glob``, ``sniff_csv``), run SQL held in a string (``query``,
``query_table``, ``json_execute_serialized_sql``), show the catalogue, settings, secrets or
logs (``duckdb_*``, ``pragma_*``, ``which_secret``) or change state (``checkpoint``,
``enable_logging``...) are all outside the allow list. A function an extension would add
(``st_read``, ``read_xlsx``...) is unknown to the allow list, and at run time the extension
could not be loaded anyway.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

__all__ = [
    "REFUSED_FUNCTIONS",
    "TABLE_FUNCTIONS",
    "TABLE_NAME",
    "check_sql",
    "sql_problems",
    "sql_tree",
]

TABLE_NAME = "input"  # the one relation pipeline SQL reads: the batch's rows
# Table functions that compute rows from their arguments only, never from outside state.
TABLE_FUNCTIONS = frozenset({"unnest", "range", "generate_series", "json_each", "json_tree"})
_FILE_READERS = (
    *("read_text", "read_blob", "read_csv", "read_csv_auto", "read_json", "read_json_auto"),
    *("read_ndjson", "read_ndjson_auto", "read_json_objects", "read_ndjson_objects"),
    *("read_parquet", "parquet_scan", "read_duckdb", "glob", "sniff_csv"),
)
# Scalar, aggregate and table functions refused wherever they appear, with the reason.
REFUSED_FUNCTIONS = {
    **dict.fromkeys(_FILE_READERS, "reads files"),
    **dict.fromkeys(("getenv",), "reads the environment"),
    **dict.fromkeys(
        ("current_setting", "getvariable", "duckdb_settings", "duckdb_secrets", "which_secret"),
        "reads DuckDB's settings, variables or secrets",
    ),
    **dict.fromkeys(
        ("query", "query_table", "json_execute_serialized_sql"),
        "runs SQL held in a string, which this check cannot see",
    ),
    **dict.fromkeys(("pg_sleep", "sleep_ms"), "stalls the worker"),
    **dict.fromkeys(("write_log",), "writes DuckDB's log"),
}
_REFUSED_REFS = {"SHOW_REF": "SHOW, DESCRIBE and SUMMARIZE are not row transformations"}
_LOCAL_SCHEMAS = ("", "main")


def check_sql(sql: str) -> None:
    """Raise ``ValueError`` naming every problem of ``sql`` (see the module's rules).

    Also refused: SQL that does not read ``input`` at all, and SQL that does not parse
    (the message keeps DuckDB's line number). The message is what users see after
    ``pipelines.NAME.sql:``.
    """
    problems = sql_problems(sql)
    if problems:
        raise ValueError("; ".join(problems))


@lru_cache(maxsize=64)
def sql_problems(sql: str) -> tuple[str, ...]:
    """The problems :func:`check_sql` reports, in order, each once; empty when allowed.

    Cached: each Ray task checks the same few pipeline queries again and again.
    """
    tree = _parse(sql)
    problems: list[str] = []
    reads_input = False

    def add(problem: str) -> None:
        if problem not in problems:
            problems.append(problem)

    def walk(node: Any, ctes: frozenset[str]) -> None:
        nonlocal reads_input
        if isinstance(node, list):
            for item in node:
                walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        entries = (node.get("cte_map") or {}).get("map") or []
        ctes = ctes | {str(e.get("key", "")).lower() for e in entries}
        kind = node.get("type")
        if kind == "BASE_TABLE":
            reads_input |= _base_table(node, ctes, add)
        elif kind == "TABLE_FUNCTION":
            name = _function_name(node.get("function"))
            if name not in TABLE_FUNCTIONS and name not in REFUSED_FUNCTIONS:
                add(
                    f"table function {name}() is not allowed: pipeline SQL reads only the "
                    f"table `{TABLE_NAME}` (table functions allowed: "
                    f"{', '.join(sorted(TABLE_FUNCTIONS))})"
                )
        elif kind in _REFUSED_REFS:
            add(_REFUSED_REFS[str(kind)])
        name = str(node.get("function_name") or "").lower()
        if name in REFUSED_FUNCTIONS:
            add(f"{name}() is not allowed: it {REFUSED_FUNCTIONS[name]}")
        for value in node.values():
            walk(value, ctes)

    walk(tree.get("statements"), frozenset())
    if not problems and not reads_input:
        problems.append(
            f"sql does not read the table `{TABLE_NAME}` (each batch's rows); "
            f"write e.g. SELECT * FROM {TABLE_NAME}"
        )
    return tuple(problems)


def sql_tree(sql: str) -> dict[str, Any]:
    """DuckDB's parse of ``sql`` (``json_serialize_sql``), a fresh copy the caller may change.

    Raises ``ValueError`` as :func:`check_sql` does for SQL that is not one SELECT. Cached
    like :func:`sql_problems`.
    """
    tree: dict[str, Any] = json.loads(_tree_text(sql))
    return tree


@lru_cache(maxsize=64)
def _tree_text(sql: str) -> str:
    return json.dumps(_parse(sql))


def _base_table(node: dict[str, Any], ctes: frozenset[str], add: Any) -> bool:
    """Whether the table is ``input``; a table that is neither it nor a CTE is a problem."""
    name = str(node.get("table_name", "")).lower()
    local = not node.get("catalog_name") and node.get("schema_name") in _LOCAL_SCHEMAS
    if local and name in ctes:
        return False
    if local and name == TABLE_NAME:
        return True
    shown = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), name) if p)
    add(
        f"table {shown!r} is not allowed: pipeline SQL reads only the table `{TABLE_NAME}` "
        "and its own CTEs (a quoted file name is a file read)"
    )
    return False


def _function_name(node: Any) -> str:
    return str(node.get("function_name") or "").lower() if isinstance(node, dict) else ""


def _parse(sql: str) -> dict[str, Any]:
    """The serialized statement; ``ValueError`` unless ``sql`` is one SELECT that parses."""
    import duckdb  # here, not at the top: the API imports pipeline checks without needing it

    with duckdb.connect(":memory:") as con:
        try:
            kinds = [s.type.name for s in con.extract_statements(sql)]
        except duckdb.ParserException as exc:
            first, _, rest = str(exc).removeprefix("Parser Error: ").partition("\n")
            line = re.search(r"LINE (\d+):", rest)
            where = f" (line {line.group(1)})" if line else ""
            raise ValueError(f"SQL {first.removeprefix('SQL ')}{where}") from None
        if kinds != ["SELECT"]:
            raise ValueError(
                f"sql must be exactly one SELECT query, found {len(kinds)} statement(s): "
                f"{', '.join(kinds) or 'none'}"
            )
        row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree: dict[str, Any] = json.loads(row[0]) if row else {}
    if tree.get("error"):
        raise ValueError(f"sql cannot be parsed: {tree.get('error_message')}")
    return tree
