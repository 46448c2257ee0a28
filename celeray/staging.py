"""Staging: copy inputs Ray workers cannot read in place, and enforce the file-size cap."""

from __future__ import annotations

from typing import Any

from celeray import storage
from celeray.errors import InputTooLargeError, StorageError, TransientIOError
from celeray.settings import Settings
from celeray.sizes import format_size

__all__ = ["stage_files"]

_CHUNK = 4 * 1024 * 1024


def _copy(src_url: str, dst_url: str, cap: int) -> None:
    fs_src, src = storage.open_fs(src_url)
    fs_dst, dst = storage.open_fs(dst_url)
    if storage.is_local(fs_dst):  # object stores have no folders (and would make buckets)
        fs_dst.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
    copied = 0
    with fs_src.open(src, "rb") as fin, fs_dst.open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            copied += len(chunk)
            if copied > cap:
                raise InputTooLargeError(
                    f"larger than CELERAY_MAX_FILE_BYTES ({format_size(cap)}) while staging",
                    url=src_url,
                )
            fout.write(chunk)


def stage_files(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``job`` with staged copies made and over-sized files moved to ``prequarantined``.

    Nothing is loaded into a message: files are copied stream to stream. Each file's
    ``read_url`` (set by :func:`celeray.runs.staged_job`) says where Ray reads it.
    """
    cap = settings.max_file_bytes
    prequarantined: dict[str, dict[str, Any]] = dict(job.get("prequarantined", {}))
    for f in job["files"]:
        if f["size"] > cap:
            err = InputTooLargeError(
                f"{format_size(f['size'])} is over CELERAY_MAX_FILE_BYTES ({format_size(cap)})",
                url=f["url"],
            )
            prequarantined[f["url"]] = err.record()
            continue
        if f["read_url"] == f["url"]:
            continue
        try:
            _copy(f["url"], f["read_url"], cap)
        except InputTooLargeError as exc:
            prequarantined[f["url"]] = exc.record()
        except FileNotFoundError as exc:
            raise StorageError(f"{f['url']} vanished before staging: {exc}") from exc
        except (ConnectionError, TimeoutError) as exc:
            raise TransientIOError(f"staging {f['url']}: {exc}") from exc
    return {**job, "prequarantined": prequarantined}
