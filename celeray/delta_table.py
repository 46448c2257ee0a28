"""A batch published into a Delta Lake table: one atomic, idempotent Delta commit.

For a Delta sink the Ray tasks write a batch's data files straight into the table's
partition folders, under names derived from the batch and the transform's attempt
(``<sink>/year=2013/part-<batch>-a<attempt>-u00000-....parquet``, see
:func:`ray_jobs.process.unit_prefix`): readers never see them until a Delta commit adds
them, and nothing is copied or moved. A batch is then committed in these steps:

1. its schema changes in the schema log (:mod:`celeray.schema_log`), as for any sink;
   before that, :func:`check_schema` refuses a batch that would change a Delta column's
   type (delta-rs has no type widening), bring a type Delta cannot hold, or add a column
   to a table whose protocol celeray's column-adding commit cannot honour;
2. its ledger entry (:meth:`celeray.ledger.Ledger.commit_entry`): the inputs' truth, which
   records the batch's add actions (path, size, partition values, row count, statistics;
   :mod:`celeray.delta_actions`);
3. :func:`publish`: the entry's files checked (each must exist with its recorded size,
   since a Delta commit names a path without looking), then ONE Delta commit that adds
   every file of the batch, carries the app transaction ``celeray-<batch_id>`` version 1,
   and, when the batch brings new columns, the new schema too. :mod:`celeray.delta_log`
   writes the version's log file itself (delta-rs drops a wider schema from an append,
   delta-rs#3934, and its append reloads what celeray has already loaded), version 0 of a
   new table too; delta-rs (``create_write_transaction``) commits only plain appends to a
   table whose protocol celeray's commit does not write;
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
- Step 3 is one log file, created only if its version is free (put-if-absent): it is in
  the table whole or not at all, schema and rows together.
- Between the Delta commit and step 4, republishing finds the app transaction in the table
  (``DeltaTable.transaction_version``) and only writes the version down: no second commit.
  Two publishers of one batch at once (a redelivered commit racing recovery) both carry
  the same app transaction; only one gets a given version, and the other, reading the
  table again before each try, finds the transaction there. A sequential second commit
  with the same app id is *not* refused by delta-rs (seen on 1.6.6), which is why the
  table's transaction version is always read from the same snapshot the commit starts
  from.
- A commit that loses its version to another batch's (two batches adding columns at
  once, or an append meeting a column-adding commit) reads the table again and tries the
  next version, with the schema merged afresh: both batches' columns end in the schema.

A Delta sink keeps celeray's ledger, quarantine, schema log and rejects under
``<sink>/_celeray/``, which Delta readers ignore and vacuum skips (names starting with
``_``).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from celeray import delta_log, kill_points, storage
from celeray.delta_location import delta_uri, open_table, storage_options
from celeray.delta_schema import arrow_schema, check_protocol, delta_schema, new_fields
from celeray.delta_snapshot import Snapshot, keep, newest
from celeray.errors import LedgerError, TransientIOError
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from celeray.table_format import DELTA_LOG

__all__ = [
    "APP_VERSION",
    "COMMIT_TRIES",
    "DeltaCommit",
    "app_id",
    "commit_entry",
    "delta_uri",
    "drop_files",
    "open_table",
    "publish",
    "republish",
    "storage_options",
]

log = logging.getLogger(__name__)

APP_VERSION = 1  # each batch is its own app: one version, committed at most once
# How far back recovery looks in the log for a batch's commit whose version it lost (a
# crash right after the commit): further back than any crash-to-restart gap of commits.
FIND_BACK = 10_000
BATCH_KEY = "celeray.batch_id"  # in the commit's commitInfo, for people reading the history
# Tries of one batch's commit when other commits take the version first: each lost try
# means another commit landed, so this bounds how many batches of one table may commit at
# the same moment before this one fails (transiently: the task retries it).
COMMIT_TRIES = 16
CHECKPOINT_KEY = "delta.checkpointInterval"
LOG_CLEANUP_KEY = "delta.enableExpiredLogCleanup"
# delta-rs's checkpoint interval when the table sets none (``delta.checkpointInterval``):
# a version celeray writes itself gets the checkpoint delta-rs would have made there.
CHECKPOINT_INTERVAL = 100
# The interval a table celeray creates gets (the Delta protocol's reference default; a
# table's own setting, changed by any engine, wins): a table is loaded from its last
# checkpoint plus the commits after it, and every batch's commit loads it, so at most ten
# commits to replay instead of delta-rs's hundred (load and commit costs: bench/RESULTS.md).
NEW_TABLE_CHECKPOINT_INTERVAL = 10


def app_id(batch_id: str) -> str:
    """The Delta app transaction id of a batch: one app per batch, so that batches may
    commit in any order (Delta skips only versions <= the app's stored one)."""
    return f"celeray-{batch_id}"


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


def _custom_metadata(entry: dict[str, Any]) -> dict[str, Any]:
    return {BATCH_KEY: entry["batch_id"], "celeray.run_id": entry.get("run_id")}


def _commit_properties(entry: dict[str, Any]) -> Any:
    from deltalake.transaction import CommitProperties, Transaction

    return CommitProperties(
        app_transactions=[Transaction(app_id(entry["batch_id"]), APP_VERSION)],
        custom_metadata=_custom_metadata(entry),
    )


def _committed(table: Any, batch_id: str) -> bool:
    return (table.transaction_version(app_id(batch_id)) or -1) >= APP_VERSION


def _find_version(sink: str, batch_id: str, start: int, stop: int) -> int | None:
    """The version in ``[start, stop]`` (searched from ``stop`` down) whose commit carries
    the batch's app transaction; None when it is not there (a log cleaned up by then)."""
    carries = _log_reader(sink, batch_id)
    for version in range(stop, max(start, 0) - 1, -1):
        found = carries(version)
        if found is None:
            return None
        if found:
            return version
    return None


def _find_from(sink: str, batch_id: str, start: int) -> int | None:
    """The first version from ``start`` on whose commit carries the batch's app transaction
    (the log read forward to its end): the version a commit just made, without loading
    the table again."""
    carries = _log_reader(sink, batch_id)
    version = max(start, 0)
    while (found := carries(version)) is not None:
        if found:
            return version
        version += 1
    return None


def _log_reader(sink: str, batch_id: str) -> Callable[[int], bool | None]:
    """A reader of the table's log: whether a version's commit carries the batch's app
    transaction, None when that version's log file is not there."""
    fs, root = storage.open_fs(sink)
    folder = posixpath.join(root.rstrip("/"), DELTA_LOG)
    want = app_id(batch_id)

    def carries(version: int) -> bool | None:
        try:
            with fs.open(f"{folder}/{version:020d}.json", "rb") as f:
                text = f.read().decode()
        except FileNotFoundError:
            return None
        return any(want in line and json.loads(line).get("txn", {}).get("appId") == want
                   for line in text.splitlines())

    return carries


def _create(sink: str, schema: pa.Schema, entry: dict[str, Any], partition_by: list[str],
            actions: list[dict[str, Any]], now_ms: int) -> bool:  # fmt: skip
    """Create the table with the batch's files as version 0, written by celeray
    (:func:`celeray.delta_log.create_bytes`); False when another batch created it first
    (the caller then commits on top of that one's version)."""
    data = delta_log.create_bytes(
        table_id=str(uuid.uuid4()), schema=json.loads(delta_schema(schema).to_json()),
        partition_columns=partition_by,
        configuration={CHECKPOINT_KEY: str(NEW_TABLE_CHECKPOINT_INTERVAL)},
        adds=actions, app_id=app_id(entry["batch_id"]), app_version=APP_VERSION,
        now_ms=now_ms, info=_custom_metadata(entry),
    )  # fmt: skip
    try:
        return delta_log.write_version(storage.join(sink, DELTA_LOG), 0, data)
    except TransientIOError as exc:  # S3's 409: another batch's create under way
        log.info("Delta version 0 of %s: %s", sink, exc)
        return False


def _append(sink: str, table: Any, entry: dict[str, Any], actions: list[dict[str, Any]],
            partition_by: list[str], now_ms: int) -> bool:  # fmt: skip
    """Commit the batch's files (no new columns) through delta-rs, for a table whose
    protocol celeray's own commit does not write (:func:`celeray.delta_log.unsupported`);
    False when another commit won in a way delta-rs does not retry over (one that changed
    the metadata, or made this batch's commit)."""
    from deltalake.exceptions import CommitFailedError

    try:
        table.create_write_transaction(
            _delta_actions(actions, now_ms), "append", arrow_schema(table.schema()),
            partition_by or None, commit_properties=_commit_properties(entry),
        )  # fmt: skip
    except Exception as exc:
        if isinstance(exc, CommitFailedError):
            log.info("Delta commit of batch %s lost to another: %s", entry["batch_id"], exc)
            return False
        again = open_table(sink)
        if again is not None and _committed(again, entry["batch_id"]):
            return False  # another publisher won: the caller finds its version
        raise TransientIOError(f"Delta commit of batch {entry['batch_id']} to {sink} failed: "
                               f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    return True


def _write_commit(sink: str, state: delta_log.TableState, entry: dict[str, Any],
                  actions: list[dict[str, Any]], fields: list[dict[str, Any]],
                  now_ms: int) -> bool:  # fmt: skip
    """Commit the batch's files, and its new columns if any, as one version that celeray
    writes (:mod:`celeray.delta_log`); False when another commit took that version first."""
    names = [str(f["name"]) for f in fields]
    data = delta_log.commit_bytes(
        state, schema=delta_log.merged_schema(state.schema, fields) if fields else None,
        adds=actions, app_id=app_id(entry["batch_id"]), app_version=APP_VERSION,
        now_ms=now_ms,
        info={**_custom_metadata(entry), **({"celeray.added_columns": names} if names else {})},
    )  # fmt: skip
    version = state.version + 1
    try:
        made = delta_log.write_version(storage.join(sink, DELTA_LOG), version, data)
    except TransientIOError as exc:  # S3's 409: a conditional write of it under way
        log.info("Delta version %s of %s: %s", version, sink, exc)
        return False
    if made and names:
        log.info("Delta table %s: batch %s added column(s) %s in version %s", sink,
                 entry["batch_id"], ", ".join(names), version)  # fmt: skip
    return made


def _checkpoint(sink: str, version: int, configuration: Mapping[str, str | None],
                kept: Any) -> None:  # fmt: skip
    """What delta-rs does after its own commits, when ``version`` is due a checkpoint: the
    checkpoint, then the log files older than the table's log retention (30 days unless
    ``delta.logRetentionDuration`` says otherwise) deleted, unless the table turns that off
    (``delta.enableExpiredLogCleanup``). A failure is only logged: a table without them is
    slower to load, not wrong, and the next due version tries again.

    ``kept``: the snapshot the commit started from; it takes the table loaded here for the
    checkpoint (:meth:`~celeray.delta_snapshot.Snapshot.adopt`).
    """
    interval = int(configuration.get(CHECKPOINT_KEY) or CHECKPOINT_INTERVAL)
    if (version + 1) % interval:  # after every interval-th commit, as delta-rs: 9, 19, ...
        return
    try:
        table = open_table(sink, version)
        if isinstance(kept, Snapshot):
            kept.adopt(sink, table)
        table.create_checkpoint()
        if str(configuration.get(LOG_CLEANUP_KEY) or "true").lower() != "false":
            table.cleanup_metadata()
    except Exception as exc:
        log.warning("checkpoint of %s at version %s failed: %s", sink, version, exc)


def commit_entry(sink: str, entry: dict[str, Any], schema: pa.Schema,
                 start: Any = None, *, unseen: bool = False) -> DeltaCommit:  # fmt: skip
    """Publish the files of a committed ledger ``entry`` in one Delta commit (at most once).

    ``schema`` is the table schema of the entry's schema version: its columns the Delta
    table lacks join the table's schema in the same commit. ``start``: the table as loaded
    moments ago for this batch (its schema check), to begin from instead of loading it
    again; it stays the caller's to give back (:func:`celeray.delta_snapshot.keep`), while
    a snapshot this call takes itself is given back here. A commit that meets a newer
    version loads the table afresh, as it does when another commit lands between any load
    and the commit. See the module docstring for the steps and why each is safe to repeat.

    ``unseen``: ``start`` was read before the entry was written, so it cannot hold the
    batch's commit: the first try does not look its app transaction up (delta-rs reads
    the log's commits since the last checkpoint again for each look-up). A try after a
    lost version always looks.
    """
    actions = entry.get("delta_actions") or []
    if not actions:
        return DeltaCommit(None, False)
    partition_by = list((entry.get("delta") or {}).get("partition_by") or [])
    _check_files(sink, actions)
    batch_id = entry["batch_id"]
    now_ms = int(time.time() * 1000)
    table: Any = start if start is not None else newest(sink)
    if table is None:
        if _create(sink, schema, entry, partition_by, actions, now_ms):
            return DeltaCommit(0, True)
        table = _existing(sink)
    for attempt in range(COMMIT_TRIES):
        if not (unseen and attempt == 0 and table is start) and _committed(table, batch_id):
            _give_back(sink, table, start)
            return DeltaCommit(_find_version(sink, batch_id, table.version() - FIND_BACK,
                                             table.version()), False)  # fmt: skip
        before = table.version()
        fields = new_fields(arrow_schema(table.schema()), schema)
        state = delta_log.TableState.of(table)
        if fields:
            check_protocol(sink, state)
        if fields or not delta_log.unsupported(state):
            if _write_commit(sink, state, entry, actions, fields, now_ms):
                if not fields and isinstance(table, Snapshot):
                    table.appended(before + 1, app_id(batch_id), APP_VERSION)
                _checkpoint(sink, before + 1, state.configuration, table)
                _give_back(sink, table, start)
                return DeltaCommit(before + 1, True)
        elif _append(sink, table, entry, actions, partition_by, now_ms):
            _give_back(sink, table, start)
            return DeltaCommit(_find_from(sink, batch_id, before + 1), True)
        table = _existing(sink)  # another commit took the version: start from the newest
    raise TransientIOError(f"Delta commit of batch {batch_id} to {sink} lost its version to "
                           f"other commits {COMMIT_TRIES} times")  # fmt: skip


def _give_back(sink: str, table: Any, start: Any) -> None:
    """Keep the snapshot a commit took itself (:func:`newest`); ``start`` is the caller's
    to give back."""
    if table is not start:
        keep(sink, table)


def _existing(sink: str) -> Snapshot:
    """The newest snapshot of a table another writer has just committed to."""
    table = newest(sink)
    if table is None:
        raise TransientIOError(f"the Delta table {sink} vanished while a batch committed to it")
    return table


def drop_files(sink: str, outputs: list[dict[str, Any]]) -> None:
    """Delete files an attempt wrote into the table folder that will never be committed
    (a read superseded by a second read of the batch); their names are that read's own, so
    no committed version references them. Missing ones are skipped."""
    for out in outputs:
        path = str(out.get("path") or "")
        if path and not path.startswith("/") and ".." not in path.split("/"):
            storage.remove_file(storage.join(sink, path))


def publish(ledger: Ledger, entry: dict[str, Any], start: Any = None, *,
            new_entry: bool = False) -> DeltaCommit:  # fmt: skip
    """Make a committed Delta batch visible, once, and write its version beside its entry.

    A batch already published (its version written down) is not looked at again.
    ``start``: as for :func:`commit_entry`. ``new_entry``: the caller wrote ``entry`` just
    now, after it read ``start`` (a first delivery): the batch cannot have been published
    yet, so neither its version record nor its app transaction in ``start`` is looked up.
    """
    if not new_entry:
        known = ledger.delta_marker(entry["batch_id"])
        if known is not None:
            return DeltaCommit(known.get("delta_version"), False)
    schema = _schema_of(ledger.sink, entry)
    done = commit_entry(ledger.sink, entry, schema, start, unseen=new_entry) \
        if schema is not None else DeltaCommit(None, False)
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
