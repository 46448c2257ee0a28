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
"""

from __future__ import annotations

import asyncio

__all__ = ["hand_loop_to_fsspec", "native_loop"]


def native_loop() -> asyncio.AbstractEventLoop:
    """A new event loop with the interpreter's own selector: call before gevent patches."""
    return asyncio.new_event_loop()


def hand_loop_to_fsspec(loop: asyncio.AbstractEventLoop) -> None:
    """Run ``loop`` on a native thread and make it fsspec's: call after gevent patches."""
    import fsspec.asyn
    from gevent.monkey import get_original

    start_new_thread = get_original("_thread", "start_new_thread")
    start_new_thread(loop.run_forever, ())
    # fsspec.asyn.get_loop() makes its loop only while this slot is empty.
    fsspec.asyn.loop[0] = loop
