"""The one exception root of celeray and the specific failures under it.

Every error a user can meet derives from :class:`CelerayError`, so callers can catch the
project's failures without catching programming errors. Input errors carry enough to write
a quarantine record: which file, where in it (line or row, when known) and what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BatchBusyError",
    "CelerayError",
    "ChangedInputError",
    "ConfigError",
    "DecompressionError",
    "EmptyInputError",
    "EncodingError",
    "InputError",
    "InputTooLargeError",
    "LedgerError",
    "LockLostError",
    "MaintenanceBusyError",
    "MessageRefusedError",
    "NoRedisServerError",
    "OutsideRootsError",
    "ParseError",
    "PipelineFileError",
    "PipelineIssue",
    "PoisonInputError",
    "QuarantineError",
    "RayUnavailableError",
    "RunActiveError",
    "RunFailedError",
    "SchemaConflictError",
    "SchemaError",
    "StorageError",
    "TableFormatError",
    "TimeLimitError",
    "TransformError",
    "TransientIOError",
    "UncheckableURLError",
    "UnknownPipelineError",
]


class CelerayError(Exception):
    """Root of every error celeray raises on purpose."""


class ConfigError(CelerayError):
    """A setting from the environment is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class PipelineIssue:
    """One problem in the pipeline file: which pipeline, which key, what is wrong."""

    pipeline: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = ".".join(p for p in ("pipelines", self.pipeline, self.key) if p)
        return f"{where}: {self.message}" if self.pipeline or self.key else self.message


class PipelineFileError(CelerayError):
    """The pipeline file cannot be used; ``issues`` lists every problem found."""

    def __init__(self, path: str, issues: list[PipelineIssue]) -> None:
        self.path = path
        self.issues = issues
        lines = "\n".join(f"  {i}" for i in issues)
        super().__init__(f"{path}: {len(issues)} problem(s)\n{lines}")


class UnknownPipelineError(CelerayError):
    """A run was asked for a pipeline the pipeline file does not define."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown pipeline {name!r}; known: {', '.join(known) or '(none)'}")


class RunActiveError(CelerayError):
    """Another run of the same pipeline holds the run lock."""

    def __init__(self, pipeline: str, run_id: str) -> None:
        self.pipeline = pipeline
        self.run_id = run_id
        super().__init__(f"pipeline {pipeline!r} is already running as run {run_id}")


class QuarantineError(CelerayError):
    """A triage decision that cannot be made: the input is not quarantined (``missing``),
    or was replayed and committed since."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        self.missing = missing
        super().__init__(message)


class RunFailedError(CelerayError):
    """A run ended with failed batches; their inputs stay uncommitted for the next run."""


class LockLostError(CelerayError):
    """This run no longer holds its pipeline's lock: a newer run superseded it."""


class MessageRefusedError(CelerayError):
    """A task message that the worker will not act on: malformed, or naming work that its
    own pipeline file does not define (an unknown pipeline, inputs outside the pipeline's
    source or roots, a batch id its inputs do not give).

    Nothing is read, written or counted for such a message; the reason is logged.
    """


class UncheckableURLError(CelerayError):
    """A URL whose local reads cannot be told from the URL alone, so roots cannot confine it.

    E.g. a ``reference://`` file (its content names what is read) or an archive without its
    own location; wherever local roots apply, such a URL is refused.
    """


class StorageError(CelerayError):
    """Reading or writing through fsspec failed for a reason that retrying will not fix."""


class TransientIOError(StorageError):
    """A network or storage hiccup that is worth retrying with backoff."""


class LedgerError(StorageError):
    """The ledger under ``<sink>/_celeray/`` is unreadable or inconsistent."""


class BatchBusyError(CelerayError):
    """Another start of the same batch is transforming it now; this one waits its turn.

    Two starts of one batch (Redis giving back a dead worker's message and the run's
    watchdog resending it) must not run at once: they write the same output names, and one
    clearing its unit's earlier files could delete the other's before its commit.
    """


class MaintenanceBusyError(CelerayError):
    """Another compaction or vacuum of the same table holds its maintenance lock."""

    def __init__(self, sink: str, holder: str) -> None:
        self.sink = sink
        self.holder = holder
        super().__init__(f"maintenance of {sink} is already running ({holder})")


class NoRedisServerError(CelerayError):
    """A Redis must be started here and there is no ``redis-server`` to start: none on the
    PATH and no ``local-redis`` extra installed (see :mod:`celeray.local_redis`)."""


class RayUnavailableError(CelerayError):
    """The Ray cluster cannot be reached at the configured address."""


class TimeLimitError(CelerayError):
    """A batch ran past its time limit; its Ray tasks were cancelled and it failed.

    The threads pool that drives Ray does not enforce Celery's time limits (celery#9203),
    so the dispatcher keeps its own deadline, under the visibility timeout: a batch is
    stopped before Redis could deliver it a second time.
    """


class SchemaConflictError(CelerayError):
    """A batch's columns do not fit the table schema as it is now.

    Raised when another batch changed the schema after this one was read (the batch is
    read again against the current schema), or when the files of a first batch disagree
    in a way no common type settles. ``column`` names the column.
    """

    def __init__(self, message: str, *, column: str | None = None) -> None:
        self.column = column
        super().__init__(message)


class TableFormatError(CelerayError):
    """A sink's table format does not fit what the pipeline asks, or what a batch brings.

    A pipeline that names ``table_format = "delta"`` for a sink that already holds a Parquet
    table (or the other way round), or a batch that would widen a Delta column's type
    (delta-rs has no type widening). It fails the batch before its ledger entry, so its
    files stay uncommitted until the pipeline file (or its SQL) is fixed; the message names
    the fix.
    """


class TransformError(CelerayError):
    """The pipeline's SQL or Python transform failed: a pipeline bug, not bad input.

    Such a failure fails the batch instead of quarantining its files, so the files are
    picked up again once the pipeline is fixed.
    """


class InputError(CelerayError):
    """An input file is unusable; the file is quarantined with this reason.

    ``line`` is 1-based in the decompressed text, ``row`` is 1-based among data rows;
    either is ``None`` where the reader cannot tell.
    """

    kind = "input"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        line: int | None = None,
        row: int | None = None,
    ) -> None:
        self.message = message
        self.url = url
        self.line = line
        self.row = row
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.url:
            where.append(self.url)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def record(self) -> dict[str, Any]:
        """The JSON-able reason written to quarantine and into the run summary."""
        return {
            "url": self.url,
            "kind": self.kind,
            "error": self.message,
            "line": self.line,
            "row": self.row,
        }


class DecompressionError(InputError):
    """The file is not valid zstd/gzip data, or is truncated."""

    kind = "decompression"


class InputTooLargeError(InputError):
    """The file, its decompressed stream or one of its rows exceeds a configured cap."""

    kind = "too_large"


class ParseError(InputError):
    """Malformed CSV, JSON lines or Parquet content."""

    kind = "parse"


class SchemaError(InputError):
    """A value does not cast to the declared type, or the columns do not fit.

    ``column`` names the column where one is to blame; ``converting`` says the parser
    failed to convert one of its values (the file may be read again with it as text).
    """

    kind = "schema"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
        converting: bool = False,
    ) -> None:
        super().__init__(message, url=url, line=line, row=row)
        self.column = column
        self.converting = converting


class EmptyInputError(InputError):
    """The file holds no data at all (zero bytes or no rows)."""

    kind = "empty"


class PoisonInputError(InputError):
    """The file's Ray worker died every time it was read (a crash, not an exception)."""

    kind = "poison"


class OutsideRootsError(InputError):
    """A local file resolves (symlinks followed) outside the allowed local roots."""

    kind = "outside_roots"


class ChangedInputError(InputError):
    """A local input changed between its listing (or its check) and its open: size, mtime,
    kind, or a symlink swapped in; it is not read."""

    kind = "changed"


class EncodingError(InputError):
    """The text is not UTF-8 (e.g. Latin-1, or UTF-16 with its byte-order mark)."""

    kind = "encoding"
