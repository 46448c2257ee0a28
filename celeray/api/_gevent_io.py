"""fsspec's event loop on a native thread of the API's gevent worker.

fsspec's async file systems (s3fs) run every call on one event loop in a thread of
fsspec's own, and a blocking call waits for it on a ``threading.Event``. Under gevent two
things go wrong, each seen in the served API:

- made after the patch, fsspec's "thread" is a greenlet of the worker's own thread, whose
  running loop every request then sees: each S3 read fails ("Calling sync() from within a
  running loop");
- importing fsspec before the patch (to get a real thread) leaves the native locks of the
  modules it imports, ``concurrent.futures.thread``'s among them: a greenlet that holds one
  while it yields blocks the worker for good (health checks hung, then every request).

So the loop is made before the patch (asyncio only: its selector a native epoll), its
thread started after the patch with the interpreter's own ``start_new_thread`` (patched
``threading.Thread.start`` waits on a gevent event from the new thread, which blocks the
hub), and fsspec, imported after the patch, is handed that loop. A request's wait on the
(patched) event yields to other greenlets; the loop thread's ``set`` wakes it.

The loop's default executor (``asyncio.to_thread``: aiobotocore makes each client's SSL
context there, aiohttp resolves host names there) runs each call on a native thread too.
Python's own pool starts its threads with the patched ``start_new_thread``: they became
greenlets of a hub in the loop's thread, which never runs them again once the loop's
call returns, and at the worker's exit ``concurrent.futures`` joins them: the worker
hung until gunicorn killed it (30 s after every stop of an API that had read S3).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

__all__ = ["hand_loop_to_fsspec", "native_loop"]


class _NativeThreads(concurrent.futures.ThreadPoolExecutor):
    """An executor that runs each call on a native thread of its own, never joined.

    A ``ThreadPoolExecutor`` by type only, as ``loop.set_default_executor`` asks: none of
    its pool is used. A thread per call is enough for the loop's few blocking calls (one
    SSL context per S3 client, a name lookup per new host) and leaves nothing to join.
    """

    def __init__(self, start_new_thread: Callable[..., Any]) -> None:
        super().__init__(max_workers=1)
        self._start_native = start_new_thread

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:  # fmt: skip
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting coroutine, as the pool does
                future.set_exception(exc)

        self._start_native(run, ())
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop: each call's thread ends with the call."""


def native_loop() -> asyncio.AbstractEventLoop:
    """A new event loop with the interpreter's own selector: call before gevent patches."""
    return asyncio.new_event_loop()


def hand_loop_to_fsspec(loop: asyncio.AbstractEventLoop) -> None:
    """Run ``loop`` on a native thread and make it fsspec's: call after gevent patches."""
    import fsspec.asyn
    from gevent.monkey import get_original

    start_new_thread = get_original("_thread", "start_new_thread")
    loop.set_default_executor(_NativeThreads(start_new_thread))
    start_new_thread(loop.run_forever, ())
    # fsspec.asyn.get_loop() makes its loop only while this slot is empty.
    fsspec.asyn.loop[0] = loop
