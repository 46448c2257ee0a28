"""Every issue of a pipeline file as a list, for tests that look at each one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from celeray.errors import PipelineFileError, PipelineIssue
from celeray.pipelines import load_pipelines

__all__ = ["validate_file"]


def validate_file(
    path: str | Path,
    *,
    allow_chained_urls: bool = False,
    local_roots: Sequence[str] | None = None,
) -> list[PipelineIssue]:
    """Every issue :func:`celeray.pipelines.load_pipelines` finds; empty when the file is valid."""
    try:
        load_pipelines(path, allow_chained_urls=allow_chained_urls, local_roots=local_roots)
    except PipelineFileError as exc:
        return list(exc.issues)
    return []
