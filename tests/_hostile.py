"""Hostile input files, made small on disk: bombs, forged headers, wide and long lines.

Shared by the ray_jobs-level tests and the end-to-end one. Each maker returns bytes;
:func:`long_line_zst` streams its file to disk instead.
"""

from __future__ import annotations

import gzip
import io
import random
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

__all__ = [
    "GiB",
    "MiB",
    "forged_zstd",
    "gzip_bomb",
    "long_line_zst",
    "parquet_bytes",
    "random_bytes",
    "truncated",
    "wide_csv",
    "wide_window_zstd",
    "zstd_bomb",
]

MiB = 1024**2
GiB = 1024**3
_PIECE = 64 * MiB  # one frame or member of a bomb; the bomb repeats it


def zstd_bomb(total: int, *, head: bytes = b"a,b\n1,2\n", filler: bytes = b"\n") -> bytes:
    """``head``, then ``filler`` repeated to ``total`` bytes, as zstd frames without a size.

    One frame of 64 MiB is compressed once (~2 KiB for blank lines) and repeated, so a
    10 GiB bomb costs a fraction of a second and ~300 KiB of disk.
    """
    c = zstandard.ZstdCompressor(level=3, write_content_size=False)
    piece = c.compress(filler * (_PIECE // len(filler)))
    return c.compress(head) + piece * max(1, total // _PIECE)


def gzip_bomb(total: int, *, head: bytes = b"a,b\n1,2\n", filler: bytes = b"\n") -> bytes:
    """Like :func:`zstd_bomb`, as gzip members (~1000:1, so 1 GiB is ~1 MiB of disk)."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = co.compress(filler * (_PIECE // len(filler))) + co.flush()
    return gzip.compress(head) + piece * max(1, total // _PIECE)


def forged_zstd(declared: int = 100 * GiB, data: bytes = b"a,b\n1,2\n") -> bytes:
    """A real little zstd frame whose header is rewritten to declare ``declared`` bytes."""
    frame = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False).compress(data)
    assert frame[4] == 0x00  # FHD: no content size, not single segment, no checksum
    # FHD 0xC0: an 8-byte content size follows the window descriptor (frame[5]).
    return frame[:4] + bytes([0xC0]) + frame[5:6] + declared.to_bytes(8, "little") + frame[6:]


def wide_window_zstd(window_log: int = 31, data: bytes = b"a,b\n1,2\n") -> bytes:
    """A zstd frame whose header asks for a ``2**window_log`` byte window (2 GiB default)."""
    obj = zstandard.ZstdCompressor(write_checksum=False).compressobj()  # no size: streamed
    frame = obj.compress(data) + obj.flush()
    assert frame[4] & 0x20 == 0  # not single segment: frame[5] is the window descriptor
    return frame[:5] + bytes([(window_log - 10) << 3]) + frame[6:]


def wide_csv(columns: int) -> bytes:
    """A CSV whose header names ``columns`` columns, and one row.

    The names are one letter (repeated), so a million columns make a 2 MB header: under
    the default max_row_bytes, for the column cap to catch.
    """
    line = ",".join("c" * columns).encode() + b"\n"
    return line + line.replace(b"c", b"1")


def long_line_zst(path: Path, line_bytes: int, *, head: bytes = b"a,b\n1,") -> Path:
    """Write ``head`` and a line of ``line_bytes`` bytes as a small .zst file (streamed)."""
    chunk = b"x" * (16 * MiB)
    obj = zstandard.ZstdCompressor(level=1).compressobj()
    with open(path, "wb") as f:
        f.write(obj.compress(head))
        left = line_bytes
        while left > 0:
            f.write(obj.compress(chunk[: min(left, len(chunk))]))
            left -= len(chunk)
        f.write(obj.compress(b"\n"))
        f.write(obj.flush())
    return path


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` of ``data``."""
    return data[: int(len(data) * keep)]


def random_bytes(n: int = 4096, seed: int = 5) -> bytes:
    """``n`` reproducible random bytes."""
    return random.Random(seed).randbytes(n)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
