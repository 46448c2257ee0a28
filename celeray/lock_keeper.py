"""One thread per worker process that keeps the run locks of its running batches alive.

A batch being transformed holds its run's lock (:meth:`celeray.runstate.RunStore.hold`)
every ``interval`` seconds, so a run whose tasks run long keeps it while a dead run's
lock frees within its TTL. One thread serves every batch of the process: a batch only
registers and unregisters, instead of starting and joining a thread of its own (two
thread hand-offs on each batch's critical path, 0.5-1.5 ms on a loaded machine).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis.exceptions

from celeray.runstate import RunStore

__all__ = ["keep_lock"]

log = logging.getLogger(__name__)

_mutex = threading.Lock()  # guards _held and _thread; held while a lock is renewed
_held: dict[int, tuple[str, str, threading.Event]] = {}
_ids = itertools.count()
_thread: threading.Thread | None = None


@contextmanager
def keep_lock(
    pipeline: str, run_id: str, *, store: Callable[[], RunStore], interval: float
) -> Iterator[threading.Event]:
    """Keep ``run_id``'s lock on ``pipeline`` alive while the block runs.

    Yields an event that is set when a renewal finds the lock taken by a newer run. The
    first renewal comes within ``interval`` seconds (the caller holds the lock on entry).
    No renewal happens after the block is left: a renewal in progress finishes first,
    since it runs under the same mutex (so a run finalized just after cannot be locked
    again by its own last batch). ``store`` and ``interval`` are taken from the first
    caller of the process: the thread serves every later one with them.
    """
    global _thread
    lost = threading.Event()
    key = next(_ids)
    with _mutex:
        _held[key] = (pipeline, run_id, lost)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_renew_forever, args=(store, interval),
                                       name="run-lock-keeper", daemon=True)
            _thread.start()
    try:
        yield lost
    finally:
        with _mutex:
            _held.pop(key, None)


def _renew_forever(store: Callable[[], RunStore], interval: float) -> None:
    tick = threading.Event()  # never set: a sleep that is not a busy loop
    while True:
        tick.wait(interval)
        with _mutex:
            keys = list(_held)
        for key in keys:
            _renew(store, key)


def _renew(store: Callable[[], RunStore], key: int) -> None:
    with _mutex:
        found = _held.get(key)
        if found is None:  # its batch ended since the list was taken
            return
        pipeline, run_id, lost = found
        try:
            if not store().hold(pipeline, run_id):
                lost.set()
        except redis.exceptions.RedisError:
            log.warning("run %s: lock renewal failed; will retry", run_id)
        except Exception:  # the thread serves every batch: it must not die
            log.exception("run %s: lock renewal failed; will retry", run_id)
