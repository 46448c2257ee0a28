"""glibc malloc settings for the processes that convert files (Ray workers).

Each read hands pyarrow a fresh ``bytes`` of up to ``max_row_bytes`` (4 MiB) of text.
glibc serves such blocks with ``mmap`` and gives them back with ``munmap`` (or trims them
off the heap's top), so every read of every file faulted its pages in again: ~4,000
minor faults and 11-14 ms of kernel time per 10.7 MB ``.csv.zst`` file, 9% of a unit's
CPU. With a fixed mmap threshold above those blocks and a trim threshold that keeps that
much freed memory, the next read reuses the same pages: ~200 faults and ~4 ms.

pyarrow's own buffers come from its memory pool (mimalloc or jemalloc), which keeps its
memory anyway; this is about everything else (Python's objects, the codecs' contexts).
A process started with ``GLIBC_TUNABLES`` or ``MALLOC_*`` settings of its own keeps them,
and on a C library without ``mallopt`` (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
# Blocks under 32 MiB (glibc's own ceiling for its sliding threshold) come from the heap:
# the 4 MiB read buffers, the codecs' contexts.
MMAP_THRESHOLD = 32 * 1024**2
# Up to 32 MiB of freed memory at the heap's top stays with the process for the next
# read instead of going back to the kernel: a worker holds at most that much more.
TRIM_THRESHOLD = 32 * 1024**2
_OWN_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_lock = threading.Lock()
_done: bool | None = None


def tune_malloc() -> bool:
    """Set the thresholds once per process; whether they are in force (False: left alone)."""
    global _done
    with _lock:
        if _done is None:
            _done = _apply()
        return _done


def _apply() -> bool:
    if any(os.environ.get(name) for name in _OWN_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.warning("mallopt refused the thresholds; reads keep faulting their pages in")
    return done
