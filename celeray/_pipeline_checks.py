"""Private checks of single fields of a pipeline table, for :mod:`celeray.pipeline_spec`.

URLs (plain paths to ``file://``, chains, local roots, glob roots), cron and interval
schedules and column type names; SQL has its own module, :mod:`celeray.sql_policy`, a
transform's spec :mod:`celeray.transform_ref`. Each raises ``ValueError`` with the message
users see; the model adds the pipeline and key. Celery is imported only by the check that
uses it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

from celeray.arrow_types import arrow_type
from celeray.errors import UncheckableURLError
from celeray.roots import local_target, outside

__all__ = [
    "GLOB_CHARS",
    "canonical_type",
    "check_roots",
    "context_of",
    "glob_start",
    "root_of",
    "schedule_value",
    "show_value",
    "split_url",
    "strip_slash",
    "to_url",
]


# The five cron fields in order, with celery's crontab_parser (max_, min_) bounds.
_CRON = (("minute", 60, 0), ("hour", 24, 0), ("day-of-month", 31, 1), ("month", 12, 1),
         ("day-of-week", 7, 0))  # fmt: skip
# What a field's values repeat with: a step past a field's end fires once per this.
_CRON_WRAP = {"minute": "hour", "hour": "day", "day-of-month": "month", "month": "year",
              "day-of-week": "week"}  # fmt: skip
GLOB_CHARS = "*?["  # what fsspec's glob expands (the same set celeray.storage uses)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SAME_FS = {"local": "file", "s3a": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
_INPUT_EXT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
              ".pq": "parquet"}  # fmt: skip
_COMPRESSED_EXT = (".zst", ".zstd", ".gz", ".gzip")


def context_of(info: ValidationInfo) -> dict[str, Any]:
    """The validation context (``base_dir``, ``local_roots``...), empty when none was given."""
    return info.context if isinstance(info.context, dict) else {}


def split_url(url: str) -> tuple[str, str]:
    """``(protocol, rest)`` with fsspec's aliases of one file system folded together."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    return _SAME_FS.get(scheme, scheme), rest


def to_url(value: str, info: ValidationInfo, key: str) -> str:
    """``value`` as a URL: plain paths become ``file://`` URLs of absolute paths."""
    if not value.strip():
        raise ValueError(f"{key} must not be empty")
    if "::" in value:
        if not context_of(info).get("allow_chained_urls"):
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
            path = Path(context_of(info).get("base_dir") or Path.cwd()) / path
        return "file://" + os.path.normpath(path).rstrip("/") + trailing
    protocol, rest = split_url(value)
    if protocol == "file" and not rest.startswith("/"):
        raise ValueError(
            f"{value!r}: a file URL needs an absolute path (file:///srv/data, three slashes); "
            "a plain path without file:// is taken relative to the pipeline file"
        )
    return value


def check_roots(url: str, info: ValidationInfo, key: str) -> None:
    """Refuse a ``url`` that reads or writes local files outside the context's local roots.

    The local part is the one fsspec opens (:func:`celeray.roots.local_target`): the URL's
    own path, or in a chain an archive's own file or a cache's target; a URL whose local
    reads cannot be told is refused. Where the path has glob chars, the folder before the
    first one must resolve inside a root and the glob may not climb out with ``..``; a source
    is checked by its root folder (see :func:`root_of`), an archive by its own file. What a
    source finds is checked again, file by file, when it is listed.
    """
    roots = context_of(info).get("local_roots")
    if roots is None:
        return
    allowed = (
        f"the allowed local roots ({', '.join(roots) or 'none'}); CELERAY_LOCAL_ROOTS lists "
        "the folders local sources and sinks may use"
    )
    try:
        target = local_target(url)
    except UncheckableURLError as exc:
        raise ValueError(f"{key} {url!r} cannot be checked against {allowed}: {exc}") from None
    if target is None:
        return
    path, archive = target
    local = "file://" + path
    start = glob_start(local)
    if start is not None and ".." in local[start:].split("/"):
        raise ValueError(f"{key} {url!r}: '..' after a glob character is not allowed")
    by_folder = start is not None or (key == "source" and not archive)
    resolved = outside(root_of(local) if by_folder else local, roots)
    if resolved is not None:
        what = " (the archive it reads)" if archive else ""
        raise ValueError(f"{key} {url!r} resolves to {resolved}{what}, outside {allowed}")


def strip_slash(url: str) -> str:
    stripped = url.rstrip("/")
    return url if stripped.endswith(":") else stripped


def glob_start(url: str) -> int | None:
    found = [i for i in (url.find(c, url.find("://") + 3) for c in GLOB_CHARS) if i >= 0]
    return min(found) if found else None


def _format_of_name(url: str) -> str | None:
    name = url.rstrip("/").rpartition("/")[2].lower()
    for ext in _COMPRESSED_EXT:
        name = name.removesuffix(ext)
    return _INPUT_EXT.get(os.path.splitext(name)[1])


def root_of(url: str) -> str:
    """The folder URL before the first glob char; see ``Pipeline.source_root``."""
    start = glob_start(url)
    if start is None and _format_of_name(url) is None:
        return strip_slash(url)  # no glob, no data file name: a folder
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
        for piece in part.split(","):
            step = piece.partition("/")[2]
            if step.isdigit() and int(step) > max_:  # cron cannot step over a field's end
                raise ValueError(
                    f"bad cron {spec!r}: {label} field {part!r}: a step of {step} is more than "
                    f"the field's {max_} values, so it would fire only once per "
                    f"{_CRON_WRAP[label]}; for a period that long write a number of seconds"
                )
    return " ".join(parts)


def schedule_value(value: Any) -> str | float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_cron(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"schedule of {value!r} seconds: must be a number greater than 0")
        return float(value)
    raise ValueError(
        f"schedule must be a cron string or a number of seconds, got {show_value(value)}"
    )


def canonical_type(name: str) -> str:
    """Column type ``name`` as pyarrow spells it; ``ValueError`` for an unknown one."""
    return str(arrow_type(name))


def show_value(value: Any) -> str:
    """``value`` with its TOML kind, shortened for a message: ``integer 3``."""
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}  # fmt: skip
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{kinds.get(type(value), type(value).__name__)} {text}"

