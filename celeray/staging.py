"""Staging: copy inputs Ray workers cannot read in place, and enforce the file-size cap.

``stage_batch`` copies each such input of a batch into the batch's own staging folder
(derived by the worker, :mod:`celeray.batch`) and writes there which inputs it could not
stage, in :data:`celeray.batch.STAGED_MANIFEST`; the transform reads that manifest from the
same derived folder. Local copies are readable by their owner only.
"""

from __future__ import annotations

import os
from typing import Any

from celeray import storage
from celeray.batch import STAGED_MANIFEST, ResolvedBatch, with_staged
from celeray.errors import InputTooLargeError, StorageError, TransientIOError
from celeray.settings import Settings
from celeray.sizes import format_size

__all__ = ["load_staged", "stage_files"]

_CHUNK = 4 * 1024 * 1024
PRIVATE_FILE = 0o600  # staged copies may hold anything a source holds: owner only
PRIVATE_DIR = 0o700


def _copy(src_url: str, dst_url: str, cap: int) -> None:
    fs_src, src = storage.open_fs(src_url)
    fs_dst, dst = storage.open_fs(dst_url)
    local = storage.is_local(fs_dst)
    if local:  # object stores have no folders (and would make buckets)
        folder = dst.rsplit("/", 1)[0]
        fs_dst.makedirs(folder, exist_ok=True)
        os.chmod(folder, PRIVATE_DIR)
    copied = 0
    with fs_src.open(src, "rb") as fin, fs_dst.open(dst, "wb") as fout:
        if local:
            os.chmod(dst, PRIVATE_FILE)  # before a byte is written
        while chunk := fin.read(_CHUNK):
            copied += len(chunk)
            if copied > cap:
                raise InputTooLargeError(
                    f"larger than CELERAY_MAX_FILE_BYTES ({format_size(cap)}) while staging",
                    url=src_url,
                )
            fout.write(chunk)


def stage_files(batch: ResolvedBatch, settings: Settings) -> None:
    """Copy the inputs of ``batch`` that Ray cannot read in place; record those refused.

    Nothing is loaded into a message: files are copied stream to stream. Inputs already
    quarantined (outside the roots, over the cap as listed) are not copied.
    """
    cap = settings.max_file_bytes
    refused: dict[str, dict[str, Any]] = {}
    for f in batch.readable:
        if f["read_url"] == f["url"]:
            continue
        try:
            _copy(f["url"], f["read_url"], cap)
        except InputTooLargeError as exc:
            refused[f["url"]] = exc.record()
        except FileNotFoundError as exc:
            raise StorageError(f"{f['url']} vanished before staging: {exc}") from exc
        except (ConnectionError, TimeoutError) as exc:
            raise TransientIOError(f"staging {f['url']}: {exc}") from exc
    storage.atomic_write_json(storage.join(batch.staging_url, STAGED_MANIFEST), refused)


def load_staged(batch: ResolvedBatch) -> ResolvedBatch:
    """``batch`` with what ``stage_batch`` refused quarantined, read from its manifest.

    A batch with inputs to stage whose manifest is missing was never staged (its staging
    was skipped or lost): that fails the batch instead of reading copies that are not there.
    """
    if not batch.needs_staging:
        return batch
    url = storage.join(batch.staging_url, STAGED_MANIFEST)
    try:
        refused = storage.read_json(url)
    except FileNotFoundError:
        raise StorageError(
            f"batch {batch.batch_id} has inputs to stage but no staging record at {url}: "
            "it was not staged; its files stay uncommitted for the next run"
        ) from None
    if not isinstance(refused, dict):
        raise StorageError(f"staging record {url} is not a JSON object")
    return with_staged(batch, refused)
