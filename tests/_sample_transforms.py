"""Transform callables for the ray_jobs tests (``"tests._sample_transforms:name"``)."""

from __future__ import annotations

import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NOT_CALLABLE",
    "boom",
    "crash",
    "crash_on_k3",
    "double_v",
    "not_a_table",
    "probe",
    "sleep_long",
    "tag_chunk",
]

NOT_CALLABLE = 42
PROBE_DIR_ENV = "CELERAY_TEST_PROBE_DIR"


def double_v(table: pa.Table) -> pa.Table:
    """Add ``v2 = v * 2``."""
    return table.append_column("v2", pc.multiply(table["v"], 2))


def tag_chunk(table: pa.Table) -> pa.Table:
    """Add ``chunk_rows``: the number of rows of the chunk the callable was given."""
    return table.append_column("chunk_rows", pa.array([table.num_rows] * table.num_rows))


def boom(table: pa.Table) -> pa.Table:
    """Fail like a buggy transform."""
    raise ValueError("boom from the transform")


def not_a_table(table: pa.Table) -> dict[str, int]:
    """Return the wrong type."""
    return {"rows": table.num_rows}


def probe(table: pa.Table) -> pa.Table:
    """Sleep 0.4 s and log (start, end, pid) into a file in ``$CELERAY_TEST_PROBE_DIR``."""
    start = time.time()
    time.sleep(0.4)
    end = time.time()
    folder = os.environ[PROBE_DIR_ENV]
    with open(os.path.join(folder, f"{uuid.uuid4().hex}.txt"), "w") as f:
        f.write(f"{start} {end} {os.getpid()}\n")
    return table


def crash(table: pa.Table) -> pa.Table:
    """Kill the worker process, as a segfault or the OOM killer would."""
    os._exit(1)


def crash_on_k3(table: pa.Table) -> pa.Table:
    """Kill the worker when the chunk holds a row with ``k == 3`` (a poison file)."""
    if pc.any(pc.equal(table["k"], 3)).as_py():
        os._exit(1)
    return table


def sleep_long(table: pa.Table) -> pa.Table:
    """Log this worker's pid into ``$CELERAY_TEST_PROBE_DIR``, then hang for 10 minutes."""
    with open(os.path.join(os.environ[PROBE_DIR_ENV], f"{os.getpid()}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
    return table
