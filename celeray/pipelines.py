"""The pipeline file (``pipelines.toml``): one validated, frozen :class:`Pipeline` per table.

Loading reports every problem of every pipeline at once, each as a :class:`PipelineIssue`
with its pipeline and key. Validation never touches the data: URLs are checked by their
syntax, SQL by DuckDB's parser only (nothing is bound or read) and transforms by their form
(imported only with ``check_imports=True``). Plain paths in ``source``/``sink`` become
``file://`` URLs of absolute paths, resolved against the pipeline file's folder.
Celery and DuckDB are imported only by the checks that use them. Column type names are
read by :mod:`celeray.arrow_types`, which the Ray side shares.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import fsspec
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from celeray.arrow_types import arrow_type
from celeray.errors import PipelineFileError, PipelineIssue, UnknownPipelineError
from celeray.ray_env import RayEnv
from celeray.roots import local_path, outside
from celeray.sizes import parse_size

if TYPE_CHECKING:
    pass

__all__ = [
    "Pipeline",
    "ScheduleSpec",
    "current_pipelines",
    "format_issues",
    "get_pipeline",
    "load_pipelines",
    "resolve_transform",
    "validate_file",
]

Format = Literal["csv", "jsonl", "parquet"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
ScheduleSpec = tuple[Literal["cron"], str] | tuple[Literal["interval"], float]

# The five cron fields in order, with celery's crontab_parser (max_, min_) bounds.
_CRON = (("minute", 60, 0), ("hour", 24, 0), ("day-of-month", 31, 1), ("month", 12, 1),
         ("day-of-week", 7, 0))  # fmt: skip
DEFAULT_BATCH_BYTES = 256 * 1024**2  # one Ray task's worth of input: seconds of real work
GLOB_CHARS = "*?["  # what fsspec's glob expands (the same set celeray.storage uses)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SAME_FS = {"local": "file", "s3a": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
_INPUT_EXT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
              ".pq": "parquet"}  # fmt: skip
_COMPRESSED_EXT = (".zst", ".zstd", ".gz", ".gzip")


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


def _split_url(url: str) -> tuple[str, str]:
    """``(protocol, rest)`` with fsspec's aliases of one file system folded together."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    return _SAME_FS.get(scheme, scheme), rest


def _to_url(value: str, info: ValidationInfo, key: str) -> str:
    """``value`` as a URL: plain paths become ``file://`` URLs of absolute paths."""
    if not value.strip():
        raise ValueError(f"{key} must not be empty")
    if "::" in value:
        if not _context(info).get("allow_chained_urls"):
            raise ValueError(
                f"chained fsspec URL {value!r} ('::') is not allowed: chains can cache remote "
                "data on local disk and reach other file systems; CELERAY_ALLOW_CHAINED_URLS=true "
                "permits them"
            )
        return value
    if _SCHEME.match(value) is None:
        trailing = "/" if value.endswith(("/", os.sep)) else ""
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = Path(_context(info).get("base_dir") or Path.cwd()) / path
        return "file://" + os.path.normpath(path).rstrip("/") + trailing
    protocol, rest = _split_url(value)
    if protocol == "file" and not rest.startswith("/"):
        raise ValueError(
            f"{value!r}: a file URL needs an absolute path (file:///srv/data, three slashes); "
            "a plain path without file:// is taken relative to the pipeline file"
        )
    return value


def _check_roots(url: str, info: ValidationInfo, key: str) -> None:
    """Refuse a local ``url`` (or local part of a chain) outside the context's local roots.

    For a source, the folder before the first glob char must resolve inside a root and the
    glob itself may not climb out with ``..``; what the glob finds is checked again, file by
    file, when the source is listed.
    """
    roots = _context(info).get("local_roots")
    if roots is None:
        return
    parts = url.split("::")
    for part in parts:
        if len(parts) > 1 and part in fsspec.available_protocols():
            continue  # a bare protocol name of the chain, such as simplecache
        path = local_path(part)
        if path is None:
            continue
        start = _glob_start(part)
        if start is not None and ".." in part[start:].split("/"):
            raise ValueError(f"{key} {url!r}: '..' after a glob character is not allowed")
        resolved = outside(_root_of(part) if key == "source" else part, roots)
        if resolved is not None:
            raise ValueError(
                f"{key} {url!r} resolves to {resolved}, outside the allowed local roots "
                f"({', '.join(roots) or 'none'}); CELERAY_LOCAL_ROOTS lists the folders "
                "local sources and sinks may use"
            )


def _strip_slash(url: str) -> str:
    stripped = url.rstrip("/")
    return url if stripped.endswith(":") else stripped


def _glob_start(url: str) -> int | None:
    found = [i for i in (url.find(c, url.find("://") + 3) for c in GLOB_CHARS) if i >= 0]
    return min(found) if found else None


def _format_of_name(url: str) -> str | None:
    name = url.rstrip("/").rpartition("/")[2].lower()
    for ext in _COMPRESSED_EXT:
        name = name.removesuffix(ext)
    return _INPUT_EXT.get(os.path.splitext(name)[1])


def _root_of(url: str) -> str:
    """The folder URL before the first glob char; see :attr:`Pipeline.source_root`."""
    start = _glob_start(url)
    if start is None and _format_of_name(url) is None:
        return _strip_slash(url)  # no glob, no data file name: a folder
    scheme, sep, rest = url.partition("://")
    head = rest[: start - len(scheme) - len(sep)] if start is not None else rest
    folder = head.rpartition("/")[0]
    return f"{scheme}{sep}{folder or ('/' if head.startswith('/') else '')}"


def _parse_cron(spec: str) -> str:
    """``spec`` with whitespace normalised; ``ValueError`` names the first bad field.

    Celery is imported here, not at the top: Ray nodes import this module without Celery.
    """
    from celery.schedules import ParseException, crontab_parser

    parts = spec.split()
    if len(parts) != 5:
        hint = "; for an interval write a number of seconds without quotes, e.g. 300"
        raise ValueError(
            f"bad cron {spec!r}: expected 5 fields (minute hour day-of-month month day-of-week)"
            + (hint if spec.strip().replace(".", "", 1).isdigit() else "")
        )
    for (label, max_, min_), part in zip(_CRON, parts, strict=True):
        try:
            crontab_parser(max_, min_).parse(part)
        except (ValueError, ParseException) as exc:
            reason = str(exc).rstrip(".")
            if reason.startswith("Invalid weekday literal") and label != "day-of-week":
                reason = "not a number, range, list or step"
            raise ValueError(f"bad cron {spec!r}: {label} field {part!r}: {reason}") from None
    return " ".join(parts)


def _schedule_value(value: Any) -> str | float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_cron(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"schedule of {value!r} seconds: must be a number greater than 0")
        return float(value)
    raise ValueError(f"schedule must be a cron string or a number of seconds, got {_show(value)}")


def _canonical_type(name: str) -> str:
    return str(arrow_type(name))


def _sql_tables(sql: str) -> set[str]:
    """Names of the base tables ``sql`` reads, CTE names excluded; parse errors raise."""
    import duckdb

    with duckdb.connect(":memory:") as con:
        try:
            kinds = [s.type.name for s in con.extract_statements(sql)]
        except duckdb.ParserException as exc:
            first, _, rest = str(exc).removeprefix("Parser Error: ").partition("\n")
            line = re.search(r"LINE (\d+):", rest)
            where = f" (line {line.group(1)})" if line else ""
            raise ValueError(f"SQL {first.removeprefix('SQL ')}{where}") from None
        if kinds != ["SELECT"]:
            raise ValueError(f"sql must be one SELECT query, found: {', '.join(kinds) or 'none'}")
        row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error"):
        raise ValueError(f"sql cannot be parsed: {tree.get('error_message')}")
    found: set[str] = set()

    def walk(node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, dict):
            entries = (node.get("cte_map") or {}).get("map") or []
            ctes = ctes | {str(e.get("key", "")).lower() for e in entries}
            name = str(node.get("table_name", "")).lower()
            local = not node.get("catalog_name") and node.get("schema_name") in ("", "main")
            if node.get("type") == "BASE_TABLE" and local and name not in ctes:
                found.add(name)
            node = list(node.values())
        for item in node if isinstance(node, list) else ():
            walk(item, ctes)

    walk(tree.get("statements"), frozenset())
    return found


def _transform_parts(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    parts = [*module_name.split("."), *attr.split(".")]
    if not sep or not all(p.isidentifier() for p in parts):
        raise ValueError(
            f"transform {spec!r} must look like 'module.path:function' "
            "(a (pyarrow.Table) -> pyarrow.Table callable)"
        )
    return module_name, attr


def resolve_transform(spec: str) -> Callable[..., Any]:
    """Import ``"module.path:attr"`` and return the callable it names.

    Raises ``ValueError`` when the form is wrong, the import fails or the object cannot be
    called; the original import error is chained.
    """
    module_name, attr = _transform_parts(spec)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"transform {spec!r} cannot be imported: {exc}") from exc
    if not callable(obj):
        raise ValueError(f"transform {spec!r} names a {type(obj).__name__}, not a callable")
    return obj


class Pipeline(BaseModel):
    """One ``[pipelines.NAME]`` table, validated and normalised; see DESIGN.md section 3.

    Build it with ``Pipeline.model_validate(table | {"name": key}, context=...)``; the context
    may hold ``base_dir`` (for relative paths), ``allow_chained_urls``, ``check_imports`` and
    ``local_roots`` (resolved folders local sources and sinks must stay in; absent: any).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    source: str
    format: Format | None = None  # None: each file's format from its name
    schedule: str | float | None = None
    sink: str
    sql: str | None = None
    transform: str | None = None
    partition_by: tuple[str, ...] = ()
    batch_bytes: Annotated[int, BeforeValidator(parse_size)] = DEFAULT_BATCH_BYTES
    compression: Compression = "zstd"
    compression_level: StrictInt | None = None
    # Plain csv/jsonl files of 2 x CELERAY_UNIT_BYTES or more are read as newline-aligned
    # byte ranges by several Ray tasks; turn off for CSV with newlines inside quoted values.
    split_large_files: StrictBool = True
    columns: dict[str, Annotated[str, AfterValidator(_canonical_type)]] | None = Field(
        default=None, alias="schema"
    )
    # [pipelines.NAME.ray_env]: pip requirements and env_vars (never secrets) of its Ray tasks.
    ray_env: RayEnv = Field(default_factory=RayEnv)

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
        url = _to_url(value, info, "source")
        _check_roots(url, info, "source")
        if "::" not in url and _glob_start(url) is None and url.endswith("/"):
            return url + "*"  # a folder: the files directly inside it
        return url

    @field_validator("format", "compression", mode="before")
    @classmethod
    def _lower(cls, value: Any, info: ValidationInfo) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("schedule", mode="before")
    @classmethod
    def _check_schedule(cls, value: Any) -> Any:
        return _schedule_value(value)

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, value: str, info: ValidationInfo) -> str:
        url = _to_url(value, info, "sink")
        _check_roots(url, info, "sink")
        if "::" in url:
            return url
        if _glob_start(url) is not None:
            raise ValueError(f"sink {value!r} must be a folder URL without glob characters")
        url = _strip_slash(url)
        source = info.data.get("source")
        if source and "::" not in source:
            root = _root_of(source)
            (sp, spath), (rp, rpath) = _split_url(url), _split_url(root)
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
        if "input" not in _sql_tables(value):
            raise ValueError(
                "sql does not read the table `input` (each batch's rows); "
                "write e.g. SELECT * FROM input"
            )
        return value

    @field_validator("transform")
    @classmethod
    def _check_transform(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if _context(info).get("check_imports"):
            resolve_transform(value)
        _transform_parts(value)
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

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: dict[str, str] | None, info: ValidationInfo) -> Any:
        if value and info.data.get("format") == "parquet":
            raise ValueError("schema applies to csv and jsonl only; parquet files carry types")
        if value and any(not c.strip() for c in value):
            raise ValueError("schema has an empty column name")
        return value

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
        return _root_of(self.source)

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
        }


_KEYS = sorted((f.alias or n) for n, f in Pipeline.model_fields.items() if n != "name")


_TOML_WORDS = {"a tuple": "an array", "a list": "an array", "a dictionary": "a table"}


def _show(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}  # fmt: skip
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{kinds.get(type(value), type(value).__name__)} {text}"


def _issue(pipeline: str, error: Mapping[str, Any]) -> PipelineIssue:
    loc = [str(p) for p in error["loc"]]
    key = "".join(p if i == 0 else (f"[{p}]" if p.isdigit() else f".{p}")
                  for i, p in enumerate(loc)) or None  # fmt: skip
    kind = error["type"]
    if kind == "value_error":
        message = str(error["ctx"]["error"])
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _KEYS, n=1)
        tip = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(_KEYS)}"
        message = f"unknown key {loc[-1]!r}; {tip}"
    elif kind == "literal_error":
        message = f"unknown {loc[-1]} {error['input']!r}: expected {error['ctx']['expected']}"
    else:  # "Input should be a valid string" -> "expected a string, got integer 3"
        expected = error["msg"].replace("Input should be ", "").replace("a valid ", "a ")
        expected = _TOML_WORDS.get(expected, expected)
        message = f"expected {expected}, got {_show(error['input'])}"
    return PipelineIssue(pipeline, None if key == "name" else key, message)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        why = (f"file not found: {path.absolute()} (CELERAY_PIPELINES sets which pipeline "
               "file is read; default ./pipelines.toml)")  # fmt: skip
    except OSError as exc:
        why = f"cannot read {path.absolute()}: {exc.strerror or exc}"
    except tomllib.TOMLDecodeError as exc:
        why = f"TOML syntax error: {exc}"
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text: {exc}"
    raise PipelineFileError(str(path), [PipelineIssue(None, None, why)])


_CACHE_LOCK = threading.Lock()
_CacheKey = tuple[Path, bool, tuple[str, ...] | None]
_CACHE: dict[_CacheKey, tuple[tuple[int, ...], dict[str, Pipeline] | PipelineFileError]] = {}


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def current_pipelines(
    path: str | Path,
    *,
    allow_chained_urls: bool = False,
    local_roots: Sequence[str] | None = None,
) -> dict[str, Pipeline]:
    """:func:`load_pipelines` of the file as it is now, parsed again only when it changed.

    The result is kept per process and path, keyed by the file's inode, size and times, so
    an edit is seen by the next call while unchanged files cost one ``stat`` (validating
    each ``sql`` through DuckDB's parser costs ~14 ms). A broken file raises
    :class:`PipelineFileError` every time until it is fixed. The keywords are those of
    :func:`load_pipelines`.
    """
    path = Path(path).absolute()
    roots = tuple(local_roots) if local_roots is not None else None
    key = (path, allow_chained_urls, roots)
    signature = _signature(path)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if signature is None or cached is None or cached[0] != signature:
        try:
            found: dict[str, Pipeline] | PipelineFileError = load_pipelines(
                path, allow_chained_urls=allow_chained_urls, local_roots=roots
            )
        except PipelineFileError as exc:
            found = exc
        cached = (signature or (), found)
        if signature is not None:
            with _CACHE_LOCK:
                _CACHE[key] = cached
    if isinstance(cached[1], PipelineFileError):
        raise PipelineFileError(cached[1].path, cached[1].issues)  # a fresh traceback
    return cached[1]


def load_pipelines(
    path: str | Path,
    *,
    allow_chained_urls: bool = False,
    check_imports: bool = False,
    local_roots: Sequence[str] | None = None,
) -> dict[str, Pipeline]:
    """Every pipeline in the file, by name, in file order.

    Raises :class:`PipelineFileError` listing every issue of every pipeline. A file without
    pipelines is valid (nothing scheduled). ``allow_chained_urls`` permits ``a::b`` fsspec
    URLs; ``check_imports`` imports each ``transform`` to check that it exists;
    ``local_roots`` (resolved folders, see :meth:`Settings.pipeline_rules`) confines local
    sources and sinks, None leaves them unchecked. The service always passes settings'.
    """
    path = Path(path)
    doc = _read(path)
    issues = [PipelineIssue(None, None, f"unknown top-level key {k!r}; expected [pipelines.NAME]")
              for k in doc if k != "pipelines"]  # fmt: skip
    tables = doc.get("pipelines", {})
    if not isinstance(tables, dict):
        issues.append(PipelineIssue(None, None, "'pipelines' must be a table of tables"))
        tables = {}
    context = {"base_dir": path.absolute().parent, "allow_chained_urls": allow_chained_urls,
               "check_imports": check_imports, "local_roots": local_roots}  # fmt: skip
    pipelines: dict[str, Pipeline] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            issues.append(PipelineIssue(name, None, "must be a table: [pipelines.NAME]"))
            continue
        if "name" in table:
            issues.append(PipelineIssue(name, "name", "unknown key: the table key is the name"))
            continue
        try:
            pipelines[name] = Pipeline.model_validate({**table, "name": name}, context=context)
        except ValidationError as exc:
            issues.extend(_issue(name, e) for e in exc.errors(include_url=False))
    if issues:
        raise PipelineFileError(str(path), issues)
    return pipelines


def validate_file(
    path: str | Path,
    *,
    allow_chained_urls: bool = False,
    check_imports: bool = False,
    local_roots: Sequence[str] | None = None,
) -> list[PipelineIssue]:
    """Every issue in the pipeline file, as :func:`load_pipelines` finds them; empty = valid."""
    try:
        load_pipelines(path, allow_chained_urls=allow_chained_urls, check_imports=check_imports,
                       local_roots=local_roots)  # fmt: skip
    except PipelineFileError as exc:
        return list(exc.issues)
    return []


def get_pipeline(pipelines: Mapping[str, Pipeline], name: str) -> Pipeline:
    """The pipeline called ``name``; :class:`UnknownPipelineError` lists the known ones."""
    try:
        return pipelines[name]
    except KeyError:
        raise UnknownPipelineError(name, sorted(pipelines)) from None


def format_issues(issues: Iterable[PipelineIssue]) -> str:
    """One line per issue, ``pipelines.NAME.KEY: message``, for the CLI."""
    return "\n".join(str(i) for i in issues)
