"""A batch published into a Delta Lake table: one atomic, idempotent Delta commit.

For a Delta sink the Ray tasks write a batch's data files straight into the table's
partition folders, under names derived from the batch and the transform's attempt
(``<sink>/year=2013/part-<batch>-a<attempt>-u00000-....parquet``, see
:func:`ray_jobs.process.unit_prefix`): readers never see them until a Delta commit adds
them, and nothing is copied or moved. A batch is then committed in these steps:

1. its schema changes in the schema log (:mod:`celeray.schema_log`), as for any sink;
   before that, :func:`check_schema` refuses a batch that would change a Delta column's
   type (delta-rs has no type widening) or bring a type Delta cannot hold;
2. its ledger entry (:meth:`celeray.ledger.Ledger.commit_entry`): the inputs' truth, which
   records the batch's add actions (path, size, partition values, row count);
3. :func:`publish`: the entry's files checked (each must exist with its recorded size,
   since delta-rs commits a path without looking), new columns added to the Delta schema
   (their own commit, see below), then one Delta commit that adds every file of the batch
   and carries the app transaction ``celeray-<batch_id>`` version 1;
4. the Delta version, published beside the entry (``_celeray/delta/<batch_id>.json``).

Why no crash between two steps loses or doubles a row:

- Before step 2 nothing is committed: the inputs are not in the ledger, so the next run
  (or the watchdog's resend) transforms them again under a new attempt's names. The files
  of the dead attempt are no table's files: no reader sees them (a ``full`` vacuum removes
  them; the default ``lite`` one leaves them).
  A retry never rewrites a file a committed version references: each attempt has its own
  names, and only the attempt whose entry won is ever published.
- Between 2 and 3 the inputs are done but their rows not yet visible. Every start of a run
  (:func:`republish`, from :func:`celeray.runs.begin_run`) and every redelivered commit
  publishes each entry that has no published version. The entry names exactly the files
  to add, so the rows that become visible are those the ledger counted, once.
- Between the Delta commit and step 4, republishing finds the app transaction in the table
  (``DeltaTable.transaction_version``) and only writes the version down: no second commit.
  Two publishers of one batch at once (a redelivered commit racing recovery) both carry
  the same app transaction; Delta lets only one of them commit ("Concurrent transaction
  failed" for the other, checked here on this pinned deltalake version), and the loser
  finds the transaction on reload. A sequential second commit with the same app id is
  *not* refused by delta-rs (seen on 1.6.6), which is why the table's transaction
  version is always read from the same snapshot the commit starts from.
- Adding columns is a commit of its own, right before the batch's (delta-rs's
  ``create_write_transaction`` silently ignores a wider schema in append mode,
  delta-rs#3934, and offers no way to change the schema in the same commit as added
  files). A crash between the two leaves new nullable columns that no row has yet:
  readers see nulls in them, which is what they would see for rows of earlier batches
  anyway, and the batch's own commit adds its rows later. Adding a column twice (two
  batches bringing it) is harmless: only the missing ones are added, on a fresh snapshot.

A Delta sink keeps celeray's ledger, quarantine, schema log and rejects under
``<sink>/_celeray/``, which Delta readers ignore and vacuum skips (names starting with
``_``).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from celeray import fsoptions, kill_points, storage
from celeray.errors import LedgerError, TableFormatError, TransientIOError
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog

__all__ = [
    "APP_VERSION",
    "DeltaCommit",
    "add_actions",
    "app_id",
    "check_schema",
    "delta_schema",
    "delta_uri",
    "drop_files",
    "open_table",
    "partition_values",
    "publish",
    "republish",
    "storage_options",
]

log = logging.getLogger(__name__)

APP_VERSION = 1  # each batch is its own app: one version, committed at most once
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's folder name for a null partition value
# How far back recovery looks in the log for a batch's commit whose version it lost (a
# crash right after the commit): further back than any crash-to-restart gap of commits.
FIND_BACK = 10_000
BATCH_KEY = "celeray.batch_id"  # in the commit's commitInfo, for people reading the history


def app_id(batch_id: str) -> str:
    """The Delta app transaction id of a batch: one app per batch, so that batches may
    commit in any order (Delta skips only versions <= the app's stored one)."""
    return f"celeray-{batch_id}"


def delta_uri(sink: str) -> str:
    """The location deltalake takes for ``sink``: a local path, or an ``s3://`` URL."""
    if storage.is_local_url(sink):
        _fs, path = storage.open_fs(sink)
        return str(path)
    if sink.startswith("s3a://"):
        return "s3://" + sink[len("s3a://"):]
    return sink


def storage_options(sink: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """deltalake's storage options for ``sink`` (:func:`celeray.fsoptions.delta_options`):
    the same endpoint and region settings as fsspec's, credentials from the environment.
    Commits on S3 use conditional puts, deltalake's default since 1.6: no DynamoDB, no lock.
    """
    return fsoptions.delta_options(sink, environ)


def partition_values(path: str, partition_by: list[str]) -> dict[str, str | None]:
    """The partition values a data file's hive folders name (``year=2013/month=1/x``).

    Folder values are URL-decoded (pyarrow encodes ``/``, spaces...); pyarrow's null folder
    is None. ``LedgerError`` when the folders do not name exactly ``partition_by``, in order.
    """
    folders = path.split("/")[:-1]
    if len(folders) != len(partition_by):
        raise LedgerError(f"data file {path!r} does not lie in the partition folders "
                          f"{partition_by}")  # fmt: skip
    out: dict[str, str | None] = {}
    for folder, column in zip(folders, partition_by, strict=True):
        key, sep, value = folder.partition("=")
        if not sep or unquote(key) != column:
            raise LedgerError(f"data file {path!r}: folder {folder!r} is not {column}=...")
        value = unquote(value)
        out[column] = None if value == HIVE_NULL else value
    return out


def add_actions(outputs: list[dict[str, Any]], partition_by: list[str]) -> list[dict[str, Any]]:
    """The add actions (as the ledger entry keeps them) of a batch's data files.

    ``outputs`` are the writer's (``path`` relative to the sink, ``rows``, ``bytes``, and
    ``stats``: the file's column statistics, which the Ray task took from the footer it
    wrote, :mod:`ray_jobs._file_stats`). The add action's stats are the row count plus
    those min/max/null counts, so engines skip files by value; an output without
    ``stats`` (a result from before they were collected) gets the row count alone.
    """
    return [
        {
            "path": o["path"],
            "size": int(o["bytes"]),
            "partition_values": partition_values(str(o["path"]), partition_by),
            "rows": int(o["rows"] or 0),
            **({"stats": _stats_of(o["stats"])} if o.get("stats") else {}),
        }
        for o in sorted(outputs, key=lambda o: str(o["path"]))
    ]


_STATS_KEYS = ("minValues", "maxValues", "nullCount")


def _stats_of(stats: Any) -> dict[str, Any]:
    """The statistics an output carries, kept to Delta's three maps (a result is data from
    a worker: nothing else of it reaches the Delta log)."""
    if not isinstance(stats, dict):
        return {}
    return {k: dict(stats[k]) for k in _STATS_KEYS if isinstance(stats.get(k), dict)}


def delta_schema(schema: pa.Schema) -> Any:
    """``schema`` as a Delta schema: every column nullable; timestamps of any unit as
    microseconds (the files keep their own unit, which readers cast), a time zone as UTC
    (Delta's ``timestamp`` is an instant in UTC, as Arrow's values with any zone are)."""
    from deltalake import Schema as DeltaSchema

    def fit(t: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(t):
            return pa.timestamp("us", tz="UTC" if t.tz else None)
        if pa.types.is_date64(t):
            return pa.date32()
        return t

    return DeltaSchema.from_arrow(pa.schema([pa.field(f.name, fit(f.type)) for f in schema]))


def _unsupported(schema: pa.Schema) -> list[str]:
    """Columns whose Arrow type a Delta table cannot hold as it is."""
    bad = []
    for f in schema:
        t = f.type
        if pa.types.is_unsigned_integer(t) or pa.types.is_float16(t):
            bad.append(f"{f.name} ({t})")
    return bad


def type_changes(current: pa.Schema, seen: pa.Schema) -> list[str]:
    """Columns of ``seen`` whose Delta type differs from ``current``'s (both as Delta
    types: ``string`` and ``large_string`` are one type, as are timestamp units)."""
    have = {f.name: f.type for f in delta_schema(current).fields}
    changed = []
    for f in delta_schema(seen).fields:
        before = have.get(f.name)
        if before is not None and str(before) != str(f.type):
            changed.append(f"{f.name}: {_type_name(before)} -> {_type_name(f.type)}")
    return changed


def _type_name(t: Any) -> str:
    return str(getattr(t, "type", t))


def open_table(sink: str) -> Any:
    """The sink's ``DeltaTable`` (its newest version), or None when it has none yet."""
    from deltalake import DeltaTable

    uri, options = delta_uri(sink), storage_options(sink)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def check_schema(sink: str, table_seen: pa.Schema | None) -> None:
    """Refuse, before its ledger entry, a batch whose rows a Delta table cannot take.

    A column type Delta lacks (unsigned integers, float16), or a column whose type would
    change: Delta's type widening is a table feature delta-rs does not support, so for a
    Delta sink a widening is a mismatch (see docs/schema.md). ``TableFormatError`` names
    the columns; the batch fails and its files stay uncommitted.
    """
    if table_seen is None:
        return
    bad = _unsupported(table_seen)
    if not bad:
        try:
            delta_schema(table_seen)
        except Exception as exc:  # deltalake's own refusal of a type, named
            bad = [str(exc)]
    if bad:
        raise TableFormatError(
            f"Delta tables have no type for {', '.join(bad)}: cast the column in the "
            "pipeline's SQL (e.g. CAST(x AS BIGINT)) or declare its type in [schema]"
        )
    table = open_table(sink)
    if table is None:
        return
    changed = type_changes(_arrow(table.schema()), table_seen)
    if changed:
        raise TableFormatError(
            f"the batch would change column types of the Delta table {sink}: "
            f"{'; '.join(changed)}. Delta type widening is not supported (delta-rs): cast "
            "the column to the table's type in the pipeline's SQL or [schema], or choose "
            'schema_evolution = "rescue" to keep such values in _rescued_data'
        )


def _arrow(delta_schema: Any) -> pa.Schema:
    """A Delta schema as a pyarrow schema (deltalake 1.x returns an arro3 schema)."""
    return pa.schema(delta_schema.to_arrow())


@dataclass(frozen=True)
class DeltaCommit:
    """What publishing a batch did: its Delta version (None: no rows, nothing to add;
    or a commit too old to find), and whether this call made the commit."""

    version: int | None
    fresh: bool


def _check_files(sink: str, actions: list[dict[str, Any]]) -> None:
    """Each file to add exists with the size the entry records (delta-rs does not look)."""
    fs, root = storage.open_fs(sink)
    root = root.rstrip("/")
    for a in actions:
        path = f"{root}/{a['path']}"
        try:
            size = int(fs.size(path))
        except FileNotFoundError:
            raise LedgerError(
                f"data file {a['path']} of a committed batch is missing from {sink}; the "
                "batch cannot be published (was it deleted by hand, or vacuumed with a "
                "retention shorter than the task time limit?)"
            ) from None
        if size != int(a["size"]):
            raise LedgerError(f"data file {a['path']} in {sink} is {size} bytes, its ledger "
                              f"entry says {a['size']}; not published")  # fmt: skip


def _delta_actions(actions: list[dict[str, Any]], now_ms: int) -> list[Any]:
    from deltalake.transaction import AddAction

    return [
        AddAction(
            a["path"], int(a["size"]), dict(a["partition_values"]), now_ms, True,
            json.dumps({"numRecords": int(a["rows"]), **(a.get("stats") or {})}),
        )
        for a in actions
    ]


def _commit_properties(entry: dict[str, Any]) -> Any:
    from deltalake.transaction import CommitProperties, Transaction

    return CommitProperties(
        app_transactions=[Transaction(app_id(entry["batch_id"]), APP_VERSION)],
        custom_metadata={BATCH_KEY: entry["batch_id"], "celeray.run_id": entry.get("run_id")},
    )


def _committed(table: Any, batch_id: str) -> bool:
    return (table.transaction_version(app_id(batch_id)) or -1) >= APP_VERSION


def _find_version(sink: str, batch_id: str, start: int, stop: int) -> int | None:
    """The version in ``[start, stop]`` (searched from ``stop`` down) whose commit carries
    the batch's app transaction; None when it is not there (a log cleaned up by then)."""
    fs, root = storage.open_fs(sink)
    folder = posixpath.join(root.rstrip("/"), "_delta_log")
    want = app_id(batch_id)
    for version in range(stop, max(start, 0) - 1, -1):
        try:
            with fs.open(f"{folder}/{version:020d}.json", "rb") as f:
                text = f.read().decode()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if want in line and json.loads(line).get("txn", {}).get("appId") == want:
                return version
    return None


def _add_columns(sink: str, table: Any, schema: pa.Schema) -> Any:
    """Add the columns of ``schema`` the table lacks (nullable); the table, reloaded."""
    missing = [f.with_nullable(True) for f in schema if f.name not in _columns(table)]
    if not missing:
        return table
    try:
        table.alter.add_columns(delta_schema(pa.schema(missing)).fields)
    except Exception as exc:  # another batch added them first: fine if they are there now
        fresh = open_table(sink)
        if fresh is None or not {f.name for f in missing} <= _columns(fresh):
            raise TransientIOError(f"adding columns to the Delta table failed: {exc}") from exc
        return fresh
    log.info("Delta table %s: added column(s) %s", sink, ", ".join(f.name for f in missing))
    return open_table(sink)


def _columns(table: Any) -> set[str]:
    return set(_arrow(table.schema()).names)


def _create(sink: str, schema: pa.Schema, entry: dict[str, Any], partition_by: list[str],
            actions: list[Any]) -> bool:  # fmt: skip
    """Create the table with the batch's files as version 0; False when another batch
    created it first (the caller then appends)."""
    from deltalake.transaction import create_table_with_add_actions

    try:
        create_table_with_add_actions(
            delta_uri(sink), delta_schema(schema), actions, mode="error",
            partition_by=partition_by or None,
            storage_options=storage_options(sink) or None,
            commit_properties=_commit_properties(entry),
        )  # fmt: skip
    except Exception as exc:
        if open_table(sink) is not None:
            return False
        raise TransientIOError(f"creating the Delta table {sink} failed: {exc}") from exc
    return True


def commit_entry(sink: str, entry: dict[str, Any], schema: pa.Schema) -> DeltaCommit:
    """Publish the files of a committed ledger ``entry`` in one Delta commit (at most once).

    ``schema`` is the table schema of the entry's schema version. See the module
    docstring for the steps and why each is safe to repeat.
    """
    actions = entry.get("delta_actions") or []
    if not actions:
        return DeltaCommit(None, False)
    partition_by = list((entry.get("delta") or {}).get("partition_by") or [])
    _check_files(sink, actions)
    batch_id = entry["batch_id"]
    now_ms = int(time.time() * 1000)
    table = open_table(sink)
    if table is None:
        if _create(sink, schema, entry, partition_by, _delta_actions(actions, now_ms)):
            return DeltaCommit(0, True)
        table = open_table(sink)
    if _committed(table, batch_id):
        return DeltaCommit(_find_version(sink, batch_id, table.version() - FIND_BACK,
                                         table.version()), False)  # fmt: skip
    table = _add_columns(sink, table, schema)
    if _committed(table, batch_id):  # committed meanwhile, by a concurrent publisher
        return DeltaCommit(_find_version(sink, batch_id, table.version() - FIND_BACK,
                                         table.version()), False)  # fmt: skip
    before = table.version()
    try:
        table.create_write_transaction(
            _delta_actions(actions, now_ms), "append", _arrow(table.schema()),
            partition_by or None, commit_properties=_commit_properties(entry),
        )  # fmt: skip
    except Exception as exc:
        again = open_table(sink)
        if again is not None and _committed(again, batch_id):  # another publisher won
            return DeltaCommit(_find_version(sink, batch_id, before + 1, again.version()),
                               False)  # fmt: skip
        raise TransientIOError(f"Delta commit of batch {batch_id} to {sink} failed: "
                               f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    latest = open_table(sink)
    stop = latest.version() if latest is not None else before + 1
    return DeltaCommit(_find_version(sink, batch_id, before + 1, stop), True)


def drop_files(sink: str, outputs: list[dict[str, Any]]) -> None:
    """Delete files an attempt wrote into the table folder that will never be committed
    (a read superseded by a second read of the batch); their names are that read's own, so
    no committed version references them. Missing ones are skipped."""
    for out in outputs:
        path = str(out.get("path") or "")
        if path and not path.startswith("/") and ".." not in path.split("/"):
            storage.remove_file(storage.join(sink, path))


def publish(ledger: Ledger, entry: dict[str, Any]) -> DeltaCommit:
    """Make a committed Delta batch visible, once, and write its version beside its entry.

    A batch already published (its version written down) is not looked at again.
    """
    known = ledger.delta_marker(entry["batch_id"])
    if known is not None:
        return DeltaCommit(known.get("delta_version"), False)
    schema = _schema_of(ledger.sink, entry)
    done = commit_entry(ledger.sink, entry, schema) if schema is not None else DeltaCommit(
        None, False)
    if done.fresh:  # the fault suite's kill between the Delta commit and its record
        kill_points.reach(kill_points.AFTER_DELTA_COMMIT, entry["batch_id"])
    ledger.record_delta(entry["batch_id"], done.version)
    return done


def _schema_of(sink: str, entry: dict[str, Any]) -> pa.Schema | None:
    version = entry.get("schema_version")
    if version is None:
        return None
    found = SchemaLog(sink).at(int(version))
    if found is None:
        raise LedgerError(f"schema version {version} of batch {entry['batch_id']} is missing "
                          f"from {sink}")  # fmt: skip
    return found.table


def republish(ledger: Ledger) -> int:
    """Publish every committed Delta batch of the sink whose version is not written down
    (a crash after its ledger entry); return how many were looked at. Called at a run's
    start with the pipeline's run lock held (:func:`celeray.runs.begin_run`), and before
    each compaction or vacuum with the table's maintenance lock held
    (:func:`celeray.maintenance.publish_pending`): a batch's own publish racing it is
    harmless (one app transaction, one Delta commit; the first version record stays)."""
    pending = [e for e in ledger.entries()
               if e.get("table_format") == "delta" and "delta_version" not in e]
    for entry in pending:
        done = publish(ledger, entry)
        log.warning("batch %s of %s: its Delta commit was %s (version %s)", entry["batch_id"],
                    ledger.sink, "made now" if done.fresh else "there already", done.version)
    return len(pending)
