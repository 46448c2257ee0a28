"""The API's gunicorn worker: gevent's, with gunicorn's own error answers in JSON.

gunicorn answers what it refuses before the app sees it (a bad request line 400, a URI
over ``limit_request_line`` 414, too many or too large header fields 431, an app that
failed 500) with an HTML page. This worker answers them ``{"error": "..."}`` as
application/json, the shape of every error the app itself gives (``celeray/api/_errors.py``),
so a client parses one kind of error whatever refused its request.

How: gunicorn's ``Worker.handle_error`` picks the status and the message and then calls
``gunicorn.util.write_error``; this worker puts :func:`write_json_error` in its place, in
the worker process only, before it serves anything. The status table stays gunicorn's.

This module is imported by gunicorn's master (to check the worker class) before it forks,
so it imports nothing of the app: see ``celeray/api/__init__.py``.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from celeray.api import _gevent_io

__all__ = ["MAX_ECHO", "JsonErrorGeventWorker", "error_message", "write_json_error"]

MAX_ECHO = 200  # characters of gunicorn's message kept: it may quote what the client sent
_INTERNAL = "internal server error; the API's log has the details"  # the app's own 500 text


def error_message(status: int, reason: str, mesg: str) -> str:
    """The JSON ``error`` text for gunicorn's ``status``, ``reason`` and message."""
    if status >= 500 and not mesg:
        return _INTERNAL
    text = reason.lower()
    if mesg:
        text = f"{text}: {mesg[:MAX_ECHO]}"
    return text


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Send gunicorn's error answer as JSON; the signature of ``gunicorn.util.write_error``."""
    body = json.dumps({"error": error_message(status_int, reason, mesg)}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorGeventWorker(GeventWorker):
    """gunicorn's gevent worker whose own error answers are JSON.

    Why gevent: each connection is a greenlet, so a slow client holds a greenlet (up to
    ``worker_connections`` per process), not the process as a sync worker or a thread as
    gthread does; and gevent's worker reads every request head under a deadline of
    ``keepalive`` seconds, so a client that trickles its headers is dropped (see
    ``celeray/api/gunicorn_conf.py``).
    """

    def init_process(self) -> None:
        util.write_error = write_json_error
        self._io_loop = _gevent_io.native_loop()  # before the patch: see _gevent_io
        super().init_process()  # patch(), then serve

    def patch(self) -> None:
        super().patch()
        _gevent_io.hand_loop_to_fsspec(self._io_loop)
