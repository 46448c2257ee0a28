"""A Delta commit that celeray writes into the table's log itself: a batch's files, and its
new columns in the same version.

A batch that brings new columns must change the table's schema in the same commit that adds
its files, or readers could see a version with the columns and none of the batch's rows.
delta-rs cannot make that commit from files written elsewhere (checked on the pinned 1.6.6):

- ``DeltaTable.create_write_transaction(..., "append", schema)`` drops a wider schema
  silently (delta-rs#3934): the commit has the adds and no ``metaData``;
- ``"overwrite"`` does write the new schema, but also removes every file its partition
  filters select: with no filter, the whole table. A filter that selects nothing exists only
  for partition columns (an unpartitioned table's filter on a data column is decided on file
  statistics, and a file without min/max for it is removed: rows lost), and the commit is
  recorded as an overwrite, which it is not;
- ``alter.add_columns`` is a commit of its own; ``write_deltalake(schema_mode="merge")``
  writes its own data files.

So celeray writes version ``N + 1`` itself, as the Delta protocol lays it down (a batch
without new columns too: one file, where delta-rs's append loads the table again; and
version 0, :func:`create_bytes`, with the protocol and settings delta-rs would give it):
``commitInfo`` (a ``WRITE`` in ``Append`` mode), ``protocol`` when a new column needs a
table feature (``timestamp_ntz`` needs ``timestampNtz``), ``metaData`` with the merged
schema when there are new columns, the batch's app transaction ``txn`` and its ``add``
actions, in one JSON file created
with put-if-absent (:func:`celeray.storage.create_file`: ``link`` on a local disk,
``If-None-Match: *`` on S3, the same primitives delta-rs commits with). Of two committers of
version ``N + 1`` exactly one gets it; the other reads the table again and retries on the new
version with the schema merged afresh, so two batches adding different columns at once both
end in the schema. delta-rs's own commits meet ours the same way: one that loses to a
``metaData`` commit fails as a conflict and is retried by the caller.

The table's version, protocol and metadata are read through deltalake (checkpoints
included); this module only writes. It refuses (:func:`unsupported`) a table whose protocol
asks a writer for something this commit does not do: column mapping (new columns would need
ids and physical names), identity columns, row tracking, in-commit timestamps, clustering,
Iceberg compatibility, and any feature it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celeray import storage

__all__ = [
    "TableState",
    "commit_bytes",
    "create_bytes",
    "encode_path",
    "merged_schema",
    "protocol_for",
    "unsupported",
    "write_version",
]

# Writer features whose duties an append of files and nullable columns meets, or which
# give it none (the Delta protocol's table features; delta-rs's own append checks no more).
WRITER_FEATURES = frozenset({
    "appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
    "timestampNtz", "deletionVectors", "domainMetadata", "vacuumProtocolCheck",
})  # fmt: skip
# The features a legacy writer version implies (the protocol's table of legacy versions);
# versions 5 (columnMapping) and 6 (identityColumns) are refused before this is read.
LEGACY_WRITER = {
    1: (),
    2: ("appendOnly", "invariants"),
    3: ("appendOnly", "invariants", "checkConstraints"),
    4: ("appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns"),
}
TABLE_FEATURES_READER, TABLE_FEATURES_WRITER = 3, 7  # the versions that list features
NEW_TABLE_WRITER = 2  # a new table's writer version without table features, as delta-rs's
NTZ = "timestampNtz"
ENGINE = "celeray"  # commitInfo.engineInfo: which writer made the version
# Bytes Delta paths carry percent-encoded besides controls and non-ASCII: delta-rs's set
# (its kernel ``serde_path``), so a path reads back the same whoever wrote it.
_ENCODED = frozenset(b" \\{^}%`]\">[<#|\r\n*?")


@dataclass(frozen=True)
class TableState:
    """What a commit starts from: the table's version and, as its log has them, its
    protocol and metadata (``schema`` is the Delta schema as parsed JSON)."""

    version: int
    min_reader: int
    min_writer: int
    reader_features: tuple[str, ...]
    writer_features: tuple[str, ...]
    table_id: str
    name: str | None
    description: str | None
    partition_columns: tuple[str, ...]
    created_time: int | None
    configuration: Mapping[str, str | None]
    schema: Mapping[str, Any]

    @classmethod
    def of(cls, table: Any) -> TableState:
        """The state of a loaded ``deltalake.DeltaTable``."""
        protocol, meta = table.protocol(), table.metadata()
        return cls(
            version=int(table.version()),
            min_reader=int(protocol.min_reader_version),
            min_writer=int(protocol.min_writer_version),
            reader_features=tuple(protocol.reader_features or ()),
            writer_features=tuple(protocol.writer_features or ()),
            table_id=str(meta.id), name=meta.name, description=meta.description,
            partition_columns=tuple(meta.partition_columns or ()),
            created_time=meta.created_time, configuration=dict(meta.configuration or {}),
            schema=json.loads(table.schema().to_json()),
        )  # fmt: skip


def unsupported(state: TableState) -> list[str]:
    """What in the table's protocol this module's commit cannot honour (empty: it can)."""
    bad: list[str] = []
    if state.min_reader not in (1, TABLE_FEATURES_READER):
        bad.append(f"reader version {state.min_reader}")
    if state.min_writer == TABLE_FEATURES_WRITER:
        mapping = state.configuration.get("delta.columnMapping.mode") or "none"
        for feature in state.writer_features:
            if feature == "columnMapping" and mapping == "none":
                continue
            if feature not in WRITER_FEATURES:
                bad.append(f"writer feature {feature}")
    elif state.min_writer not in LEGACY_WRITER:
        bad.append(f"writer version {state.min_writer}")
    return bad


def merged_schema(schema: Mapping[str, Any], new_fields: Sequence[Mapping[str, Any]]
                  ) -> dict[str, Any]:  # fmt: skip
    """The table's Delta schema with ``new_fields`` (Delta JSON fields) appended, those it
    already has by name left out."""
    have = {f["name"] for f in schema["fields"]}
    return {**schema, "fields": [*schema["fields"],
                                 *(f for f in new_fields if f["name"] not in have)]}  # fmt: skip


def _uses_ntz(dtype: Any) -> bool:
    """Whether a Delta type (JSON: a name, or a struct, array or map) holds timestamp_ntz."""
    if isinstance(dtype, str):
        return dtype == "timestamp_ntz"
    if not isinstance(dtype, dict):
        return False
    if dtype.get("type") == "struct":
        return any(_uses_ntz(f.get("type")) for f in dtype.get("fields", []))
    return any(_uses_ntz(dtype.get(k)) for k in ("elementType", "keyType", "valueType"))


def protocol_for(state: TableState, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``protocol`` action the table needs for ``schema``, or None when its own will
    do: a ``timestamp_ntz`` column needs the ``timestampNtz`` feature, which moves a legacy
    protocol to table features (reader 3, writer 7) listing what its versions implied."""
    if not _uses_ntz(dict(schema)) or NTZ in state.writer_features:
        return None
    if state.min_writer == TABLE_FEATURES_WRITER:
        writer = list(state.writer_features)
    else:
        writer = list(LEGACY_WRITER.get(state.min_writer, ()))
    reader = list(state.reader_features) if state.min_reader == TABLE_FEATURES_READER else []
    return {
        "minReaderVersion": TABLE_FEATURES_READER,
        "minWriterVersion": TABLE_FEATURES_WRITER,
        "readerFeatures": sorted({*reader, NTZ}),
        "writerFeatures": sorted({*writer, NTZ}),
    }


def encode_path(path: str) -> str:
    """A data file's path as a Delta log holds it: percent-encoded like delta-rs does."""
    out = []
    for byte in path.encode():
        out.append(f"%{byte:02X}" if byte < 0x20 or byte >= 0x7F or byte in _ENCODED
                   else chr(byte))  # fmt: skip
    return "".join(out)


def commit_bytes(state: TableState, *, schema: Mapping[str, Any] | None,
                 adds: Sequence[Mapping[str, Any]], app_id: str, app_version: int, now_ms: int,
                 info: Mapping[str, Any]) -> bytes:  # fmt: skip
    """The JSON lines of version ``state.version + 1``: commitInfo, protocol (if needed),
    metaData with ``schema`` (none when ``schema`` is None: a plain append), the app
    transaction and one add action per file.

    ``adds`` are as :func:`celeray.delta_actions.add_actions` makes them (path relative to
    the table, size, partition values, rows, stats); ``info`` goes into commitInfo as
    custom keys (the batch id for people reading the history).
    """
    lines: list[dict[str, Any]] = [_commit_info(
        "WRITE", "Append", state.partition_columns, adds, now_ms, info,
        readVersion=state.version, isBlindAppend=schema is None,
    )]  # fmt: skip
    protocol = protocol_for(state, schema) if schema is not None else None
    if protocol is not None:
        lines.append({"protocol": protocol})
    if schema is not None:
        lines.append(_metadata(
            table_id=state.table_id, name=state.name, description=state.description,
            schema=schema, partition_columns=state.partition_columns,
            created_time=state.created_time, configuration=state.configuration,
        ))  # fmt: skip
    return _encoded([*lines, *_data_lines(adds, app_id, app_version, now_ms)])


def create_bytes(*, table_id: str, schema: Mapping[str, Any], partition_columns: Sequence[str],
                 configuration: Mapping[str, str], adds: Sequence[Mapping[str, Any]],
                 app_id: str, app_version: int, now_ms: int,
                 info: Mapping[str, Any]) -> bytes:  # fmt: skip
    """The JSON lines of version 0, a new table holding a batch's files: commitInfo (a
    ``CREATE TABLE``), protocol, metaData, the app transaction and the add actions.

    The protocol is the least one the schema needs, as delta-rs (1.6.6) creates a table:
    reader 1 / writer 2, or reader 3 / writer 7 with the ``timestampNtz`` feature alone
    when a column is ``timestamp_ntz``.
    """
    if _uses_ntz(dict(schema)):
        protocol: dict[str, Any] = {
            "minReaderVersion": TABLE_FEATURES_READER, "minWriterVersion": TABLE_FEATURES_WRITER,
            "readerFeatures": [NTZ], "writerFeatures": [NTZ],
        }  # fmt: skip
    else:
        protocol = {"minReaderVersion": 1, "minWriterVersion": NEW_TABLE_WRITER}
    lines = [
        _commit_info("CREATE TABLE", "ErrorIfExists", partition_columns, adds, now_ms, info,
                     isBlindAppend=False),
        {"protocol": protocol},
        _metadata(table_id=table_id, name=None, description=None, schema=schema,
                  partition_columns=partition_columns, created_time=now_ms,
                  configuration=configuration),
    ]  # fmt: skip
    return _encoded([*lines, *_data_lines(adds, app_id, app_version, now_ms)])


def _commit_info(operation: str, mode: str, partition_columns: Sequence[str],
                 adds: Sequence[Mapping[str, Any]], now_ms: int, info: Mapping[str, Any],
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
    rows = sum(int(a["rows"]) for a in adds)
    return {"commitInfo": {
        "timestamp": now_ms, "operation": operation,
        "operationParameters": {"mode": mode, "partitionBy": json.dumps(list(partition_columns))},
        **extra, "engineInfo": ENGINE,
        "operationMetrics": {"num_added_files": len(adds), "num_added_rows": rows},
        **info,
    }}  # fmt: skip


def _metadata(*, table_id: str, name: str | None, description: str | None,
              schema: Mapping[str, Any], partition_columns: Sequence[str],
              created_time: int | None, configuration: Mapping[str, str | None],
              ) -> dict[str, Any]:  # fmt: skip
    return {"metaData": {
        "id": table_id, "name": name, "description": description,
        "format": {"provider": "parquet", "options": {}},
        "schemaString": json.dumps(schema, separators=(",", ":")),
        "partitionColumns": list(partition_columns),
        "createdTime": created_time, "configuration": dict(configuration),
    }}  # fmt: skip


def _data_lines(adds: Sequence[Mapping[str, Any]], app_id: str, app_version: int,
                now_ms: int) -> list[dict[str, Any]]:  # fmt: skip
    lines: list[dict[str, Any]] = [
        {"txn": {"appId": app_id, "version": app_version, "lastUpdated": now_ms}}
    ]
    for a in adds:
        lines.append({"add": {
            "path": encode_path(str(a["path"])), "partitionValues": dict(a["partition_values"]),
            "size": int(a["size"]), "modificationTime": now_ms, "dataChange": True,
            "stats": json.dumps({"numRecords": int(a["rows"]), **(a.get("stats") or {})}),
        }})  # fmt: skip
    return lines


def _encoded(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def write_version(log_url: str, version: int, data: bytes) -> bool:
    """Create the log file of ``version`` under ``log_url`` (the table's ``_delta_log``)
    unless it exists; True when this call made the version. A store without conditional
    writes raises ``StorageError``: there a Delta commit could replace another."""
    return storage.create_file(storage.join(log_url, f"{version:020d}.json"), data)
