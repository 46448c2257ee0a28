"""Which table format a sink is written in: a Delta Lake table or plain Parquet.

A pipeline says ``table_format = "delta" | "parquet"``; left out, a new sink becomes a Delta
table. A sink that already holds a Parquet table (ledger entries and no ``_delta_log``)
is never switched silently:

==================  ========================  ========================  =====================
``table_format``    new (empty) sink          sink holds Parquet         sink holds Delta
==================  ========================  ========================  =====================
left out            delta                     parquet (kept as it is)   delta
``"delta"``         delta                     refused: names the fix    delta
``"parquet"``       parquet                   parquet                   refused: names the fix
==================  ========================  ========================  =====================

"Holds Delta" is a ``_delta_log`` folder, or a ledger entry written for a Delta commit (a
first batch whose entry is written and whose Delta commit is not yet: recovery finishes
it). The refusal is a :class:`~celeray.errors.TableFormatError`: the batch fails before
anything is written, its files stay for the next run. Converting a Parquet sink into a
Delta table is not done in place: point the pipeline at a new sink (the ledger of the old
one still knows which inputs it holds, so move the landing files or start from a copy).

A sink's format, once it holds data, never changes, so the answer is kept per process; an
empty sink is looked at again on each call (two small listings).
"""

from __future__ import annotations

import threading
from typing import Literal

from celeray import storage
from celeray.errors import TableFormatError
from celeray.ledger import Ledger

__all__ = ["DELTA", "DELTA_LOG", "PARQUET", "decide", "resolve"]

DELTA: Literal["delta"] = "delta"
PARQUET: Literal["parquet"] = "parquet"
DELTA_LOG = "_delta_log"
_LOCK = threading.Lock()
_KNOWN: dict[str, str] = {}  # sink -> the format it holds (only sinks that hold data)


def decide(declared: str | None, *, holds_delta: bool, holds_parquet: bool, sink: str) -> str:
    """The format of ``sink`` from what the pipeline declares and what the sink holds (the
    table in the module docstring); ``TableFormatError`` for a declared format the sink's
    data contradicts."""
    if holds_delta:
        if declared == PARQUET:
            raise TableFormatError(
                f"sink {sink} holds a Delta table (_delta_log) but the pipeline says "
                'table_format = "parquet": remove the key (or set "delta"), or use a new sink'
            )
        return DELTA
    if holds_parquet:
        if declared == DELTA:
            raise TableFormatError(
                f"sink {sink} holds a plain Parquet table (a ledger, no _delta_log) but the "
                'pipeline says table_format = "delta": a sink is not converted in place. Set '
                'table_format = "parquet" (or leave it out) to keep it, or point the pipeline '
                "at a new sink for a Delta table"
            )
        return PARQUET
    return declared or DELTA


def _holds(sink: str) -> tuple[bool, bool]:
    """(holds Delta, holds Parquet) for ``sink``: its ``_delta_log``, its ledger entries."""
    if storage.exists(storage.join(sink, DELTA_LOG)):
        return True, False
    entries = Ledger(sink).entries()
    delta = any(e.get("table_format") == DELTA for e in entries)
    return delta, bool(entries) and not delta


def resolve(declared: str | None, sink: str) -> str:
    """The format batches of ``sink`` are written in (see :func:`decide`)."""
    with _LOCK:
        known = _KNOWN.get(sink)
    if known is None:
        holds_delta, holds_parquet = _holds(sink)
        known = decide(declared, holds_delta=holds_delta, holds_parquet=holds_parquet,
                       sink=sink)  # fmt: skip
        if holds_delta or holds_parquet:
            with _LOCK:
                _KNOWN[sink] = known
        return known
    return decide(declared, holds_delta=known == DELTA, holds_parquet=known == PARQUET,
                  sink=sink)  # fmt: skip
