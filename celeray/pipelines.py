"""The pipeline file (``pipelines.toml``): one validated, frozen :class:`Pipeline` per table.

Loading reports every problem of every pipeline at once, each as a :class:`PipelineIssue`
with its pipeline and key; :func:`current_pipelines` reads the file again only when it
changed. The model of one table is :mod:`celeray.pipeline_spec`; its names are exported
here too, so ``celeray.pipelines`` is the one import path of both.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from celeray._pipeline_checks import show_value
from celeray.errors import PipelineFileError, PipelineIssue, UnknownPipelineError
from celeray.pipeline_spec import Pipeline, ScheduleSpec

__all__ = [
    "Pipeline",
    "ScheduleSpec",
    "current_pipelines",
    "format_issues",
    "get_pipeline",
    "load_pipelines",
    "read_ahead",
]

log = logging.getLogger(__name__)

_KEYS = sorted((f.alias or n) for n, f in Pipeline.model_fields.items() if n != "name")
_TOML_WORDS = {"a tuple": "an array", "a list": "an array", "a dictionary": "a table"}


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
        if expected.startswith(("a a", "a e", "a i", "a o", "a u")):  # "an integer"
            expected = "an" + expected[1:]
        message = f"expected {expected}, got {show_value(error['input'])}"
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


def read_ahead(path: str | Path, **rules: Any) -> int:
    """Read and validate the pipeline file into this process's cache before its first use;
    how many pipelines it holds, or -1 when it cannot be read now.

    A pipeline with ``sql`` has it parsed by DuckDB's parser: the first time in a process
    that imports DuckDB and opens its first database, several times a later parse (figures
    in ``bench/RESULTS.md``), so a server process does it when it starts rather than in its
    first request or task. A file without ``sql`` imports nothing more. A missing or broken file
    is logged at INFO and left for the first use, which says what is wrong; this never
    raises. ``rules``: the keywords of :func:`current_pipelines`.
    """
    try:
        return len(current_pipelines(path, **rules))
    except Exception as exc:  # a read ahead never stops a server; the first use reports it
        log.info("pipeline file %s not read ahead (pid %d): %s", path, os.getpid(), exc)
        return -1


def load_pipelines(
    path: str | Path,
    *,
    allow_chained_urls: bool = False,
    local_roots: Sequence[str] | None = None,
) -> dict[str, Pipeline]:
    """Every pipeline in the file, by name, in file order.

    Raises :class:`PipelineFileError` listing every issue of every pipeline. A file without
    pipelines is valid (nothing scheduled). ``allow_chained_urls`` permits ``a::b`` fsspec
    URLs; ``local_roots`` (resolved folders, see :meth:`Settings.pipeline_rules`) confines local
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
               "local_roots": local_roots}  # fmt: skip
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


def get_pipeline(pipelines: Mapping[str, Pipeline], name: str) -> Pipeline:
    """The pipeline called ``name``; :class:`UnknownPipelineError` lists the known ones."""
    try:
        return pipelines[name]
    except KeyError:
        raise UnknownPipelineError(name, sorted(pipelines)) from None


def format_issues(issues: Iterable[PipelineIssue]) -> str:
    """One line per issue, ``pipelines.NAME.KEY: message``, for the CLI."""
    return "\n".join(str(i) for i in issues)
