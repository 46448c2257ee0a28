"""Open an input file as a stream of its decompressed bytes (zstd, gzip or plain).

The codec is decided by the file's first bytes (zstd ``28 B5 2F FD`` or a zstd skippable
frame, gzip ``1F 8B``); a name ending in ``.zst``/``.zstd``/``.gz``/``.gzip`` must agree
with them. Decompression is always streamed and counted, never one-shot: a frame that
declares (or inflates to) more than ``max_decompressed_bytes`` stops with
``InputTooLargeError`` after at most one read buffer of output. A file can also be
opened as one byte range of its lines (:mod:`ray_jobs._line_range`): of the file itself
when it is plain, of its decompressed text when the range says it is compressed (the
text before the range is then decompressed and dropped, with the same caps). Local
files are opened by :mod:`ray_jobs._open_local`, which checks the opened file against the
roots and the listing; other URLs through fsspec.
"""

from __future__ import annotations

import gzip
import io
import posixpath
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, BinaryIO, cast

import zstandard
from fsspec.implementations.local import LocalFileSystem

from celeray import fsoptions
from celeray.errors import (
    DecompressionError,
    EmptyInputError,
    InputTooLargeError,
    StorageError,
)
from celeray.sizes import format_size
from ray_jobs._line_range import ByteRange, LineRangeReader, SplitRefused
from ray_jobs._open_local import LocalCheck, open_local
from ray_jobs._streams import CappedReader, CountingSource
from ray_jobs._zstd_frames import ZSTD_MAGIC, FrameTracker, is_skippable_magic

__all__ = ["codec_from_name", "open_input", "strip_codec_suffix"]

GZIP_MAGIC = b"\x1f\x8b"
READ_BUFFER = 1024 * 1024  # decompressed bytes handed out per read; bounds overshoot
_SUFFIXES = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip", ".gzip": "gzip"}


def codec_from_name(name: str) -> str | None:
    """``"zstd"``, ``"gzip"`` or ``None`` as the file name's last suffix claims."""
    _, ext = posixpath.splitext(_path_of(name).lower())
    return _SUFFIXES.get(ext)


def strip_codec_suffix(name: str) -> str:
    """``name`` without its path, query and compression suffix: ``a/b.csv.zst`` → ``b.csv``."""
    base = posixpath.basename(_path_of(name))
    stem, ext = posixpath.splitext(base)
    return stem if ext.lower() in _SUFFIXES else base


@contextmanager
def open_input(
    url: str,
    *,
    limits: dict[str, int],
    storage_options: dict[str, Any] | None = None,
    byte_range: ByteRange | None = None,
    check: LocalCheck | None = None,
) -> Iterator[BinaryIO]:
    """Open ``url`` and yield a binary stream of its decompressed content.

    Uses ``limits``' ``max_file_bytes``, ``max_decompressed_bytes`` and
    ``zstd_max_window_bytes``. A plain file comes back as its own (seekable) file
    object; a compressed one as a forward-only buffered stream. Errors about the content
    are ``InputError`` subclasses carrying ``url`` (``EmptyInputError``,
    ``InputTooLargeError``, ``DecompressionError``), raised here or while reading; a file
    that does not exist raises ``StorageError``.

    A local file is opened by :func:`~ray_jobs._open_local.open_local` with ``check``
    (default: no roots, no fingerprint), which refuses it with an ``InputError`` when it
    lies outside the roots, is hard-linked or changed since it was listed; other URLs
    through fsspec.

    With ``byte_range`` the stream is a :class:`~ray_jobs._line_range.LineRangeReader`
    over just the lines of that range. ``SplitRefused`` (``head=True``) is raised instead
    when the content is compressed and the range is of a plain file, or the other way
    round, or when the file's size is no longer the one the range was planned with.
    """
    max_file = int(limits["max_file_bytes"])
    max_out = int(limits["max_decompressed_bytes"])
    fs, path = fsoptions.url_to_fs(url, storage_options)
    with ExitStack() as stack:
        size: int | None
        if isinstance(fs, LocalFileSystem) and "::" not in url:
            local, st = open_local(path, url=url, check=check or LocalCheck())
            raw: Any = stack.enter_context(local)
            size = st.st_size
        else:
            size = _size_of(fs, path, url)
            raw = None
        if size == 0:
            raise EmptyInputError("the file is empty (0 bytes)", url=url)
        if size is not None and size > max_file:
            raise InputTooLargeError(
                f"the file has {format_size(size)}, over the cap of {format_size(max_file)} "
                "(max_file_bytes)",
                url=url,
            )
        if raw is None:
            raw = stack.enter_context(fs.open(path, "rb"))
        magic = raw.read(4)
        raw.seek(0)
        codec = _codec_from_magic(magic)
        claimed = codec_from_name(path)
        if claimed is not None and codec != claimed:
            raise DecompressionError(
                f"name says {claimed} but the content is not {claimed} data "
                f"(first bytes: {magic.hex(' ') or 'none'})",
                url=url,
            )
        if codec is None and size is not None and size > max_out:
            raise InputTooLargeError(
                f"the file has {format_size(size)}, over the cap of "
                f"{format_size(max_out)} (max_decompressed_bytes)",
                url=url,
            )
        if byte_range is not None:
            _check_range(byte_range, codec, size)
            if codec is not None:
                raw = _decoded(raw, codec, url=url, limits=limits, max_file=max_file)
            yield cast(BinaryIO, LineRangeReader(raw, byte_range))
            return
        if codec is None and size is not None:
            yield cast(BinaryIO, raw)
            return
        yield _decoded(raw, codec or "none", url=url, limits=limits, max_file=max_file)


def _decoded(raw: Any, codec: str, *, url: str, limits: dict[str, int], max_file: int) -> BinaryIO:
    max_out = int(limits["max_decompressed_bytes"])
    at_end = None
    inner: Any
    if codec == "zstd":
        tracker = FrameTracker(
            url=url, max_content=max_out, max_window=int(limits["zstd_max_window_bytes"])
        )
        source = CountingSource(raw, url=url, max_bytes=max_file, feed=tracker.feed)
        inner = zstandard.ZstdDecompressor(
            max_window_size=int(limits["zstd_max_window_bytes"])
        ).stream_reader(cast(Any, source), read_across_frames=True, closefd=False)

        def at_end() -> None:
            if not tracker.complete:
                raise DecompressionError(
                    f"truncated zstd data: the file ends inside a frame ({tracker.where}) "
                    f"after {format_size(source.count)} of compressed input",
                    url=url,
                )

    elif codec == "gzip":
        source = CountingSource(raw, url=url, max_bytes=max_file)
        inner = gzip.GzipFile(fileobj=cast(Any, source), mode="rb")
    else:
        inner = CountingSource(raw, url=url, max_bytes=max_file)
    capped = CappedReader(inner, url=url, codec=codec, max_bytes=max_out, at_end=at_end)
    return cast(BinaryIO, io.BufferedReader(capped, buffer_size=READ_BUFFER))


def _check_range(span: ByteRange, codec: str | None, size: int | None) -> None:
    """Refuse (for every range alike) a range the file's content or size does not fit."""
    if span.compressed is None and codec is not None:
        raise SplitRefused(f"the content is {codec} data", head=True)
    if span.compressed is not None and codec is None:
        raise SplitRefused("the content is not compressed", head=True)
    listed = span.size if span.compressed is None else span.compressed
    if size != listed:
        raise SplitRefused(
            f"the file has {size} bytes, not the {listed} it was listed with", head=True
        )


def _codec_from_magic(magic: bytes) -> str | None:
    if magic.startswith(ZSTD_MAGIC) or is_skippable_magic(magic):
        return "zstd"
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    return None


def _size_of(fs: Any, path: str, url: str) -> int | None:
    try:
        size = fs.size(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: no such file") from exc
    return None if size is None else int(size)


def _path_of(name: str) -> str:
    return name.split("?", 1)[0].split("#", 1)[0]
