"""A batch as the worker resolves it: from a message that names it, to the work it means.

A :class:`~celeray.messages.BatchMessage` names a pipeline, a run, a batch and its inputs.
:func:`resolve` checks those names against the worker's own pipeline file and settings and
derives everything else from them: the sink, where inputs are staged and outputs written,
the Ray plan (SQL, transform, ``ray_env``, schema, limits, roots), and which inputs are
quarantined before any read (outside the local roots, over the size cap). A message whose
pipeline is unknown, whose inputs the pipeline's source does not name, or whose batch id
is not the one its inputs give is refused with :class:`MessageRefusedError`, before
anything is read, written or counted.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fsspec.utils import glob_translate

from celeray import storage
from celeray.errors import (
    InputTooLargeError,
    MessageRefusedError,
    StorageError,
    UnknownPipelineError,
)
from celeray.ledger import Ledger, batch_id_for
from celeray.messages import BatchMessage, parse_batch
from celeray.pipelines import Pipeline, current_pipelines, get_pipeline
from celeray.planner import needs_staging
from celeray.roots import outside_roots
from celeray.settings import Settings
from celeray.sizes import format_size
from celeray.table_format import DELTA
from celeray.table_format import resolve as resolve_format

__all__ = [
    "STAGED_MANIFEST",
    "ResolvedBatch",
    "in_source",
    "is_parquet",
    "ray_plan",
    "resolve",
    "with_staged",
]

# Written by stage_batch into the batch's input staging folder: which inputs it could not
# stage (over the size cap while copying). Read by the transform from the folder the worker
# derives, never from a message.
STAGED_MANIFEST = "_staged.json"
PARQUET_NAMES = (".parquet", ".pq")


@dataclass(frozen=True)
class ResolvedBatch:
    """One batch, everything about it derived by this worker (see the module docstring)."""

    message: BatchMessage
    pipeline: Pipeline
    # Each input with ``read_url``: where Ray reads it (its own URL, or its staged copy).
    files: list[dict[str, Any]]
    staging_url: str  # copies of inputs Ray cannot read in place (http, sftp, ...)
    # Where its Ray tasks write: a Parquet sink's batch into the ledger's staging folder
    # (moved into place at the commit), a Delta sink's into the table itself (published by
    # the Delta commit; see celeray.delta_table).
    out_url: str
    plan: dict[str, Any]  # what every Ray task of the batch gets
    prequarantined: dict[str, dict[str, Any]] = field(default_factory=dict)
    table_format: str = "parquet"  # celeray.table_format: "delta" | "parquet"

    @property
    def is_delta(self) -> bool:
        """Whether the batch goes into a Delta table."""
        return self.table_format == DELTA

    @property
    def run_id(self) -> str:
        return self.message["run_id"]

    @property
    def batch_id(self) -> str:
        return self.message["batch_id"]

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self.pipeline.name

    @property
    def sink(self) -> str:
        return self.pipeline.sink

    @property
    def needs_staging(self) -> bool:
        """Whether some input must be copied by ``stage_batch`` before Ray can read it."""
        return any(needs_staging(f["url"]) for f in self.message["files"])

    @property
    def readable(self) -> list[dict[str, Any]]:
        """The inputs Ray reads: those not quarantined before the read."""
        return [f for f in self.files if f["url"] not in self.prequarantined]


def in_source(source: str, url: str) -> bool:
    """Whether listing ``source`` (:func:`celeray.storage.list_source`) can name ``url``.

    ``url`` is read as a path of the source's own file system and must be written as the
    listing writes it back (so another protocol, a chain or a cache in front is not), with
    no ``..`` and no hidden name; that path must match the source's glob, be the source's
    one file, or lie directly in the source's folder.
    """
    matcher = _matcher(source)
    return matcher is not None and matcher(url)


@functools.lru_cache(maxsize=256)
def _matcher(source: str) -> Callable[[str], bool] | None:
    """:func:`in_source` for one source, its file system and glob made once per process
    (about half the cost of resolving a batch of many files otherwise)."""
    try:
        fs, src_path = storage.open_fs(source)
    except StorageError:
        return None
    glob = (re.compile(glob_translate(src_path))
            if any(c in src_path for c in storage.GLOB_CHARS) else None)  # fmt: skip
    folder = src_path.rstrip("/")

    def named(url: str) -> bool:
        try:
            path = fs._strip_protocol(url)
        except (ValueError, TypeError):
            return False
        if not isinstance(path, str) or fs.unstrip_protocol(path) != url:
            return False
        parts = path.split("/")
        if ".." in parts or "." in parts or parts[-1].startswith(("_", ".")):
            return False
        if glob is not None:
            return glob.fullmatch(path) is not None
        return path == folder or posixpath.dirname(path) == folder

    return named


def is_parquet(url: str, fmt: str | None) -> bool:
    """Whether ``url`` is read as Parquet: the pipeline's format, else the file's name."""
    if fmt is not None:
        return fmt == "parquet"
    name = url.split("?", 1)[0].lower()
    for suffix in (".zst", ".zstd", ".gz", ".gzip"):
        name = name.removesuffix(suffix)
    return name.endswith(PARQUET_NAMES)


def ray_plan(pipeline: Pipeline, settings: Settings) -> dict[str, Any]:
    """What every Ray task of ``pipeline``'s batches gets, from the pipeline and settings."""
    return {
        **pipeline.to_plan(),
        "limits": settings.limits(),
        "local_roots": settings.read_roots(),  # Ray tasks refuse local reads outside these
        # Never secrets in a plan: each Ray node builds its storage options (endpoint,
        # region) from its own environment and botocore finds its AWS_* credentials there.
        "storage_options": None,
        "threads": 1,  # each Ray task has one CPU; its pyarrow and DuckDB get one thread
    }


def _load_pipeline(name: str, settings: Settings) -> Pipeline:
    try:
        return get_pipeline(
            current_pipelines(settings.pipelines, **settings.pipeline_rules()), name
        )
    except UnknownPipelineError as exc:
        raise MessageRefusedError(
            f"pipeline: {exc} (in this worker's pipeline file {settings.pipelines})"
        ) from None


def _prequarantined(message: BatchMessage, settings: Settings) -> dict[str, dict[str, Any]]:
    """Inputs quarantined before any read: outside the local roots, or over the size cap."""
    found = outside_roots((f["url"] for f in message["files"]), settings.local_roots_for())
    cap = settings.max_file_bytes
    for f in message["files"]:
        if f["url"] not in found and f["size"] > cap:
            found[f["url"]] = InputTooLargeError(
                f"{format_size(f['size'])} is over CELERAY_MAX_FILE_BYTES ({format_size(cap)})",
                url=f["url"],
            ).record()
    return found


def with_staged(batch: ResolvedBatch, refused: dict[str, dict[str, Any]]) -> ResolvedBatch:
    """``batch`` with the inputs ``stage_batch`` could not stage quarantined too.

    ``refused`` comes from the manifest in the batch's own staging folder; it can only add
    quarantine records for inputs of this batch.
    """
    urls = {f["url"] for f in batch.message["files"]}
    extra = {u: r for u, r in refused.items() if u in urls and u not in batch.prequarantined}
    return replace(batch, prequarantined={**batch.prequarantined, **extra})


def resolve(raw: Any, settings: Settings) -> ResolvedBatch:
    """The batch ``raw`` (a message as received) names, or :class:`MessageRefusedError`."""
    message = parse_batch(raw)
    pipeline = _load_pipeline(message["pipeline"], settings)
    for i, f in enumerate(message["files"]):
        if not in_source(pipeline.source, f["url"]):
            raise MessageRefusedError(
                f"files[{i}].url: {f['url'][:200]!r} is not named by pipeline "
                f"{pipeline.name!r}'s source {pipeline.source!r}"
            )
    expected = batch_id_for(pipeline.name, [dict(f) for f in message["files"]])
    if message["batch_id"] != expected:
        raise MessageRefusedError(
            f"batch_id: {message['batch_id']!r} is not the id its inputs give ({expected})"
        )
    staging_url = storage.join(settings.effective_staging_url, pipeline.name, message["batch_id"])
    files = []
    for i, f in enumerate(message["files"]):
        read_url = f["url"]
        if needs_staging(f["url"]):
            name = f["url"].rstrip("/").rsplit("/", 1)[-1]
            read_url = storage.join(staging_url, f"{i:05d}-{name}")
        files.append({**f, "read_url": read_url})
    table_format = resolve_format(pipeline.table_format, pipeline.sink)
    plan = {**ray_plan(pipeline, settings), "table_format": table_format}
    delta = table_format == DELTA
    return ResolvedBatch(
        message=message,
        pipeline=pipeline,
        files=files,
        staging_url=staging_url,
        out_url=pipeline.sink if delta else Ledger(pipeline.sink).staging_url(message["batch_id"]),
        plan=plan,
        prequarantined=_prequarantined(message, settings),
        table_format=table_format,
    )
