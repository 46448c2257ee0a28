"""One pipeline of the pipeline file: the validated, frozen :class:`Pipeline` model.

Validation never touches the data: URLs are checked by their syntax, SQL by DuckDB's parser
only (nothing is bound or read; :mod:`celeray.sql_policy` says what it may do) and
transforms by their form (``celeray validate`` imports them in a child process,
:mod:`celeray.transform_probe`). Plain paths in ``source``/``sink`` become
``file://`` URLs of absolute paths, resolved against the pipeline file's folder. The
checks of single fields live in :mod:`celeray._pipeline_checks`; column type names are read
by :mod:`celeray.arrow_types`, which the Ray side shares. Import these names from
:mod:`celeray.pipelines`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from celeray._pipeline_checks import (
    canonical_type,
    check_roots,
    glob_start,
    root_of,
    schedule_value,
    split_url,
    strip_slash,
    to_url,
)
from celeray.archive_spec import ARCHIVE_PROTOCOLS, AfterCommit, parse_after_commit
from celeray.maintenance_spec import Maintenance, maintenance_value
from celeray.ray_env import RayEnv
from celeray.sizes import parse_size
from celeray.sql_policy import check_sql
from celeray.table_schema import METADATA_COLUMNS
from celeray.transform_ref import TransformLoadError, parts

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "Compression",
    "Format",
    "Pipeline",
    "ScheduleSpec",
]

Format = Literal["csv", "jsonl", "parquet"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
SchemaEvolution = Literal["add_columns", "rescue", "fail", "none"]  # celeray.table_schema.MODES
BadRows = Literal["quarantine_file", "rescue", "skip"]  # celeray.table_schema.BAD_ROW_POLICIES
TableFormat = Literal["delta", "parquet"]  # celeray.table_format
DEFAULT_MAX_BAD_ROWS = 0.1  # a file with more bad rows than this share is likely the wrong file
ScheduleSpec = tuple[Literal["cron"], str] | tuple[Literal["interval"], float]
DEFAULT_BATCH_BYTES = 256 * 1024**2  # one Ray task's worth of input: seconds of real work
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _inside(url: str, folder: str) -> bool:
    """Whether ``url`` is ``folder`` or below it, on the same file system."""
    (up, upath), (fp, fpath) = split_url(url), split_url(folder)
    fpath = fpath.rstrip("/")
    return up == fp and (upath.rstrip("/") == fpath or upath.startswith(fpath + "/"))


class Pipeline(BaseModel):
    """One ``[pipelines.NAME]`` table, validated and normalised; docs/pipelines.md says each key.

    Build it with ``Pipeline.model_validate(table | {"name": key}, context=...)``; the context
    may hold ``base_dir`` (for relative paths), ``allow_chained_urls`` and
    ``local_roots`` (resolved folders local sources and sinks must stay in; absent: any).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    source: str
    format: Format | None = None  # None: each file's format from its name
    schedule: str | float | None = None
    sink: str
    # None: Delta for a new sink, Parquet kept for a sink that already holds a Parquet
    # table (celeray.table_format.resolve decides, where the sink can be looked at).
    table_format: TableFormat | None = None
    sql: str | None = None
    transform: str | None = None
    partition_by: tuple[str, ...] = ()
    batch_bytes: Annotated[int, BeforeValidator(parse_size)] = DEFAULT_BATCH_BYTES
    compression: Compression = "zstd"
    compression_level: StrictInt | None = None
    # Plain csv/jsonl files of 2 x CELERAY_UNIT_BYTES or more are read as newline-aligned
    # byte ranges by several Ray tasks; turn off for CSV with newlines inside quoted values.
    split_large_files: StrictBool = True
    columns: dict[str, Annotated[str, AfterValidator(canonical_type)]] | None = Field(
        default=None, alias="schema"
    )
    # [pipelines.NAME.ray_env]: pip requirements and env_vars (never secrets) of its Ray tasks.
    ray_env: RayEnv = Field(default_factory=RayEnv)
    # What a column the table lacks, or a value that does not fit, does (ray_jobs._conform).
    schema_evolution: SchemaEvolution = "add_columns"
    on_bad_rows: BadRows = "quarantine_file"
    max_bad_rows: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_MAX_BAD_ROWS
    metadata_columns: tuple[str, ...] = ()
    # Compaction and vacuum of the sink: when (schedule), to what size, keeping what.
    maintenance: Annotated[Maintenance, BeforeValidator(maintenance_value)] = Field(
        default_factory=Maintenance
    )
    # Bounds of one run (celeray.run_bounds): None, unbounded, because a bound is a choice
    # about the operator's backlog (how long one run may take, how soon the first rows of a
    # backlog show) that no default can make; batches already bound each Ray task's work.
    max_files_per_run: Annotated[StrictInt, Field(ge=1)] | None = None
    max_bytes_per_run: Annotated[int, BeforeValidator(parse_size)] | None = None
    # What becomes of an input once committed (celeray.archive_spec): "keep" by default,
    # since deleting or moving landed files is the operator's decision, never ours.
    after_commit: str = "keep"
    after_commit_quarantined: StrictBool = False  # quarantined files stay for a replay

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"bad pipeline name {value!r}: use 1-64 of a-z, 0-9, '_' and '-', starting "
                "with a letter or digit (the name goes into Redis keys and URLs)"
            )
        return value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str, info: ValidationInfo) -> str:
        url = to_url(value, info, "source")
        check_roots(url, info, "source")
        if "::" not in url and glob_start(url) is None and url.endswith("/"):
            return url + "*"  # a folder: the files directly inside it
        return url

    @field_validator("format", "compression", mode="before")
    @classmethod
    def _lower(cls, value: Any, info: ValidationInfo) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("schedule", mode="before")
    @classmethod
    def _check_schedule(cls, value: Any) -> Any:
        return schedule_value(value)

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, value: str, info: ValidationInfo) -> str:
        url = to_url(value, info, "sink")
        check_roots(url, info, "sink")
        if "::" in url:
            return url
        if glob_start(url) is not None:
            raise ValueError(f"sink {value!r} must be a folder URL without glob characters")
        url = strip_slash(url)
        source = info.data.get("source")
        if source and "::" not in source:
            root = root_of(source)
            (sp, spath), (rp, rpath) = split_url(url), split_url(root)
            if sp == rp and (spath == rpath or spath.startswith(rpath.rstrip("/") + "/")):
                raise ValueError(
                    f"sink {url!r} is inside the source folder {root!r}: outputs would be "
                    "listed as inputs; put the sink outside it"
                )
        return url

    @field_validator("sql")
    @classmethod
    def _check_sql(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("sql is empty; leave the key out to keep the rows as they are")
        check_sql(value)  # one SELECT of `input`, nothing that reaches files or settings
        return value

    @field_validator("transform")
    @classmethod
    def _check_transform(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            parts(value)
        except TransformLoadError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("partition_by")
    @classmethod
    def _check_partition_by(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not c.strip() or "/" in c for c in value):
            raise ValueError(
                f"partition_by {list(value)!r}: column names must be non-empty, no '/'"
            )
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"partition_by names {', '.join(map(repr, dupes))} more than once")
        return value

    @field_validator("compression_level")
    @classmethod
    def _check_level(cls, value: int | None, info: ValidationInfo) -> int | None:
        codec = info.data.get("compression")
        if value is None or codec is None:
            return value
        import pyarrow as pa

        if codec == "none" or not pa.Codec.supports_compression_level(codec):
            raise ValueError(f"compression {codec!r} takes no compression_level")
        low = pa.Codec.minimum_compression_level(codec)
        high = pa.Codec.maximum_compression_level(codec)
        if not low <= value <= high:
            raise ValueError(f"{codec} compression_level {value} is outside {low}..{high}")
        return value

    @field_validator("metadata_columns")
    @classmethod
    def _check_metadata_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in METADATA_COLUMNS]
        if unknown:
            raise ValueError(
                f"metadata_columns: unknown {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(METADATA_COLUMNS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError("metadata_columns names a column more than once")
        return value

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: dict[str, str] | None, info: ValidationInfo) -> Any:
        if value and info.data.get("format") == "parquet":
            raise ValueError("schema applies to csv and jsonl only; parquet files carry types")
        if value and any(not c.strip() for c in value):
            raise ValueError("schema has an empty column name")
        return value

    @field_validator("after_commit", mode="before")
    @classmethod
    def _check_after_commit(cls, value: Any, info: ValidationInfo) -> str:
        spec = parse_after_commit(value)
        if spec.action == "keep":
            return "keep"
        source = info.data.get("source")
        if source is None:
            return spec.action  # the source's own error is reported
        protocol = split_url(source)[0]
        if "::" in source or protocol not in ARCHIVE_PROTOCOLS:
            raise ValueError(
                f"after_commit {spec.action!r} needs a source on the local disk or S3; "
                f"{source!r} is read-only to celeray"
            )
        if spec.target is None:
            return spec.action
        url = strip_slash(to_url(spec.target, info, "after_commit"))
        if "::" in url or glob_start(url) is not None:
            raise ValueError(f"after_commit move target {url!r} must be a plain folder URL")
        if split_url(url)[0] != protocol:
            raise ValueError(
                f"after_commit move target {url!r} must be on the source's file system "
                f"({protocol}://): a move is a copy and a delete there"
            )
        check_roots(url, info, "after_commit")
        for key, root in (("source folder", root_of(source)), ("sink", info.data.get("sink"))):
            if root and _inside(url, root):
                raise ValueError(
                    f"after_commit move target {url!r} is inside the {key} {root!r}"
                    + (": moved files would be listed as new inputs" if key != "sink" else "")
                    + "; put it outside"
                )
        return f"move:{url}"

    @field_validator("after_commit_quarantined")
    @classmethod
    def _check_quarantined(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("after_commit") == "keep":
            raise ValueError('after_commit_quarantined applies with after_commit = "delete" or '
                             '"move:<url>"; the files are kept')  # fmt: skip
        return value

    @property
    def archive(self) -> AfterCommit:
        """``after_commit`` parsed: keep, delete, or move to a folder URL."""
        return parse_after_commit(self.after_commit)

    @property
    def schedule_spec(self) -> ScheduleSpec | None:
        """``("cron", "*/5 * * * *")``, ``("interval", 300.0)``, or None (on demand only)."""
        if isinstance(self.schedule, str):
            return ("cron", self.schedule)
        if self.schedule is not None:
            return ("interval", float(self.schedule))
        return None

    @property
    def source_root(self) -> str:
        """The folder URL of the source before its first glob char (no trailing ``/``).

        A source without glob chars whose name ends like a data file (``.csv``, ``.jsonl.gz``,
        ``.parquet``...) is one file, and its folder is the root; any other is taken as a
        folder (``celeray.storage.list_source`` lists it so), and is its own root.
        """
        return root_of(self.source)

    def to_plan(self) -> dict[str, Any]:
        """The JSON-able dict the Ray side gets; schema types are canonical pyarrow names."""
        return {
            "pipeline": self.name,
            "format": self.format,
            "schema": dict(self.columns) if self.columns else None,
            "sql": self.sql,
            "transform": self.transform,
            "partition_by": list(self.partition_by),
            "compression": self.compression,
            "compression_level": self.compression_level,
            "split_large_files": self.split_large_files,
            "ray_env": self.ray_env.to_plan(),
            "schema_evolution": self.schema_evolution,
            "on_bad_rows": self.on_bad_rows,
            "max_bad_rows": self.max_bad_rows,
            "metadata_columns": list(self.metadata_columns),
        }
