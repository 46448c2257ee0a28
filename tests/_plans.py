"""Plans and input caps for the ray_jobs tests: what ``process_unit`` receives."""

from pathlib import Path
from typing import Any

MiB = 1024**2


def limits(max_bytes: int = 256 * MiB, max_row_bytes: int = 64 * 1024) -> dict[str, int]:
    """Caps small enough to test, with zstd's own default window limit."""
    return {
        "max_file_bytes": max_bytes,
        "max_decompressed_bytes": max_bytes,
        "max_row_bytes": max_row_bytes,
        "zstd_max_window_bytes": 128 * MiB,
        "max_columns": 10_000,
    }


def plan(limits: dict[str, int], **overrides: Any) -> dict[str, Any]:
    """A plan as ``Pipeline.to_plan`` plus settings make it: no SQL, zstd, one thread."""
    return {
        "pipeline": "p",
        "format": None,
        "schema": None,
        "sql": None,
        "transform": None,
        "partition_by": [],
        "compression": "zstd",
        "compression_level": None,
        "limits": limits,
        "storage_options": None,
        "threads": 1,
        **overrides,
    }


def pipeline_file(tmp_path: Path, source: str, sink: str = "lake/p") -> Path:
    """``tmp_path/allowed/pipelines.toml`` with one pipeline ``p`` of ``source`` and ``sink``."""
    path = tmp_path / "allowed" / "pipelines.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[pipelines.p]\nsource = "{source}"\nsink = "{sink}"\n')
    return path
