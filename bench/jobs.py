"""The two jobs every engine runs, and the pyarrow-compute form of the SQL one.

``convert`` turns the input into zstd Parquet unchanged. ``sql`` runs :data:`SQL` on the way.
celeray, DuckDB and Polars run the SQL text itself (the input is the table ``input``); the
pyarrow peers and Ray Data run :func:`sql_with_pyarrow`, the same computation written with
``pyarrow.compute`` (what a plain pyarrow script would do; DuckDB is not involved there).
"""

from __future__ import annotations

from typing import Any

__all__ = ["JOBS", "SQL", "sql_with_pyarrow"]

SQL = "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay > 0"
JOBS = ("convert", "sql")


def sql_with_pyarrow(data: Any) -> Any:
    """:data:`SQL` over a pyarrow Table or RecordBatch with ``pyarrow.compute``.

    ``dep_delay > 0`` drops nulls as SQL does; ``distance / air_time`` divides as doubles
    (DuckDB's ``/`` on integers is a double division too).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    kept = data.filter(pc.fill_null(pc.greater(data["dep_delay"], 0), False))
    distance = pc.cast(kept["distance"], pa.float64())
    air_time = pc.cast(kept["air_time"], pa.float64())
    mph = pc.multiply(pc.divide(distance, air_time), 60.0)
    return kept.append_column("mph", mph)
