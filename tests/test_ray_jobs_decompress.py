"""ray_jobs.decompress: codec detection, streaming caps, corrupt and truncated data."""

from __future__ import annotations

import gzip
import os
import resource
import time
from pathlib import Path

import pytest
import zstandard

from celeray.errors import (
    DecompressionError,
    EmptyInputError,
    InputTooLargeError,
    StorageError,
)
from ray_jobs.decompress import codec_from_name, open_input, strip_codec_suffix
from tests._plans import MiB, limits

LIMITS = limits(64 * MiB, 1 * MiB)
CSV = b"a,b\n" + b"".join(b"%d,value-%d\n" % (i, i * 7919 % 1000) for i in range(20000))


def put(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


def read_all(url: str, **limits: int) -> bytes:
    with open_input(url, limits={**LIMITS, **limits}) as stream:
        return stream.read()


def zstd(data: bytes, **kwargs: object) -> bytes:
    return zstandard.ZstdCompressor(**kwargs).compress(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("a.csv", lambda d: d),
        ("a.csv.zst", zstd),
        ("a.csv.zstd", zstd),
        ("a.csv.gz", gzip.compress),
        ("a.csv.gzip", gzip.compress),
        ("no-suffix-but-zstd.csv", zstd),  # the magic bytes decide
        ("no-suffix-but-gzip.csv", gzip.compress),
    ],
)
def test_round_trip(tmp_path: Path, name: str, encode) -> None:
    assert read_all(put(tmp_path, name, encode(CSV))) == CSV


def test_concatenated_frames_and_members(tmp_path: Path) -> None:
    half = len(CSV) // 2
    zst = zstd(CSV[:half]) + zstd(CSV[half:], write_content_size=False)
    gz = gzip.compress(CSV[:half]) + gzip.compress(CSV[half:])
    assert read_all(put(tmp_path, "two.csv.zst", zst)) == CSV
    assert read_all(put(tmp_path, "two.csv.gz", gz)) == CSV


def test_streamed_zstd_without_content_size(tmp_path: Path) -> None:
    obj = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    chunks = [obj.compress(CSV[i : i + 4096]) for i in range(0, len(CSV), 4096)]
    chunks.append(obj.flush())
    assert read_all(put(tmp_path, "streamed.csv.zst", b"".join(chunks))) == CSV


def test_skippable_frames(tmp_path: Path) -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"meta!"
    data = skippable + zstd(CSV) + skippable
    assert read_all(put(tmp_path, "skip.csv.zst", data)) == CSV
    with pytest.raises(DecompressionError, match="truncated"):
        read_all(put(tmp_path, "skipcut.csv.zst", data[:-2]))


@pytest.mark.parametrize(
    ("name", "data", "claimed"),
    [
        ("plain.csv.zst", CSV, "zstd"),
        ("plain.csv.gz", CSV, "gzip"),
        ("zstd.csv.gz", zstd(CSV), "gzip"),
        ("gzip.csv.zst", gzip.compress(CSV), "zstd"),
    ],
)
def test_name_and_magic_disagree(tmp_path: Path, name: str, data: bytes, claimed: str) -> None:
    url = put(tmp_path, name, data)
    with pytest.raises(DecompressionError, match=f"name says {claimed} but the content is not"):
        read_all(url)
    try:
        read_all(url)
    except DecompressionError as exc:
        assert exc.url == url
        assert exc.record()["kind"] == "decompression"


def test_corrupt_zstd(tmp_path: Path) -> None:
    data = bytearray(zstd(os.urandom(200_000) + CSV, write_checksum=True))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    url = put(tmp_path, "corrupt.csv.zst", bytes(data))
    with pytest.raises(DecompressionError) as info:
        read_all(url)
    assert info.value.url == url


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_zstd(tmp_path: Path, keep: float) -> None:
    data = zstd(CSV)
    url = put(tmp_path, "cut.csv.zst", data[: int(len(data) * keep)])
    with pytest.raises(DecompressionError, match="truncated zstd data") as info:
        read_all(url)
    assert info.value.url == url


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(CSV)
    url = put(tmp_path, "cut.csv.gz", data[: len(data) - 10])
    with pytest.raises(DecompressionError, match="truncated gzip") as info:
        read_all(url)
    assert info.value.url == url


def test_gzip_with_bad_crc(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(CSV))
    data[-8] ^= 0xFF  # the CRC32 of the trailer
    with pytest.raises(DecompressionError, match="corrupt gzip"):
        read_all(put(tmp_path, "crc.csv.gz", bytes(data)))


def test_zero_byte_file(tmp_path: Path) -> None:
    url = put(tmp_path, "empty.csv.zst", b"")
    with pytest.raises(EmptyInputError) as info:
        read_all(url)
    assert info.value.url == url


def test_compressed_nothing_is_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError, match="decompresses to nothing"):
        read_all(put(tmp_path, "nothing.csv.zst", zstd(b"")))


def test_forged_content_size_is_refused_without_allocating(tmp_path: Path) -> None:
    # A small real frame whose header is rewritten to declare 100 GiB of content.
    frame = zstd(CSV, write_content_size=False, write_checksum=False)
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and frame[4] == 0x00  # FHD: no size, no checksum
    forged = frame[:4] + bytes([0xC0]) + frame[5:6] + (100 * 1024**3).to_bytes(8, "little")
    forged += frame[6:]
    assert zstandard.get_frame_parameters(forged).content_size == 100 * 1024**3
    url = put(tmp_path, "forged.csv.zst", forged)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(InputTooLargeError, match=r"declares 100\.0 GiB") as info:
        read_all(url, max_decompressed_bytes=1 * MiB)
    assert time.monotonic() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB
    assert info.value.url == url
    assert "max_decompressed_bytes" in info.value.message


def test_zstd_bomb_without_declared_size_stops_at_the_cap(tmp_path: Path) -> None:
    bomb = zstd(bytes(256 * MiB), write_content_size=False)
    assert len(bomb) < 64 * 1024
    url = put(tmp_path, "bomb.csv.zst", bomb)
    with pytest.raises(InputTooLargeError, match=r"max_decompressed_bytes") as info:
        read_all(url, max_decompressed_bytes=4 * MiB)
    assert "4.0 MiB" in info.value.message
    assert info.value.url == url


def test_gzip_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    bomb = gzip.compress(bytes(64 * MiB), compresslevel=9)
    with pytest.raises(InputTooLargeError, match="max_decompressed_bytes"):
        read_all(put(tmp_path, "bomb.csv.gz", bomb), max_decompressed_bytes=2 * MiB)


def test_zstd_window_over_the_cap(tmp_path: Path) -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()  # size unknown
    data = obj.compress(CSV) + obj.flush()
    assert zstandard.get_frame_parameters(data).window_size == 16 * MiB
    with pytest.raises(InputTooLargeError, match="zstd_max_window_bytes"):
        read_all(put(tmp_path, "wide.csv.zst", data), zstd_max_window_bytes=1 * MiB)


def test_raw_file_over_max_file_bytes(tmp_path: Path) -> None:
    url = put(tmp_path, "big.csv.zst", zstd(CSV))
    with pytest.raises(InputTooLargeError, match="max_file_bytes") as info:
        read_all(url, max_file_bytes=100)
    assert info.value.url == url


def test_plain_file_over_max_decompressed_bytes(tmp_path: Path) -> None:
    with pytest.raises(InputTooLargeError, match="max_decompressed_bytes"):
        read_all(put(tmp_path, "big.csv", CSV), max_decompressed_bytes=1000)


def test_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such file"):
        read_all((tmp_path / "absent.csv").as_uri())


def test_names() -> None:
    assert codec_from_name("s3://b/x.csv.ZST") == "zstd"
    assert codec_from_name("x.csv.gz?versionId=3") == "gzip"
    assert codec_from_name("x.csv") is None
    assert strip_codec_suffix("file:///a/b/c.jsonl.gz") == "c.jsonl"
    assert strip_codec_suffix("c.parquet") == "c.parquet"
