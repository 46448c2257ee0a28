"""gunicorn's settings for the celeray API, in one place.

supervisor, compose and the tests all run::

    gunicorn -c python:celeray.api.gunicorn_conf --bind ADDRESS:PORT "celeray.api:create_app()"

The address is the deploy's (loopback under supervisor, every interface in a container);
everything else is here. gunicorn reads the module-level names that match its settings.

Slow clients (slowloris): with gunicorn's sync workers two sockets sending one header line
every few seconds held both workers, and the API answered nobody. Measured on loopback
(``python -m tests._slowloris --clients N --seconds 20 -- <server>``: N sockets each send
one header line every 2 s while a token holder triggers once a second):

    =========================  ======================  =================================
    server                     slow clients            token holder's trigger
    =========================  ======================  =================================
    sync, 2 workers            2 (a line every 5 s)    no answer in 20 s
    sync, 2 workers            8                       no answer in 20 s
    gthread, 2 x 4 threads     8                       no answer in 20 s
    waitress (its defaults)    512                     no answer in 20 s (100 connections)
    gevent, 2 workers          8 / 64 / 512 / 1900     median 4-6 ms, max 8-266 ms
    =========================  ======================  =================================

gevent wins twice: a connection is a greenlet, not a process or a thread; and its worker
reads each request head under a ``gevent.Timeout`` of ``keepalive`` seconds, so a client
that has not sent a whole head by then is dropped and must start over (1900 slow sockets
were dropped and reopened 12,063 times in 20 s; the trigger still answered).
"""

from __future__ import annotations

from typing import Any

# A slow client holds a greenlet, not the process; its own error pages are JSON.
worker_class = "celeray.api.gunicorn_worker.JsonErrorGeventWorker"
# Two processes, as before: one may be restarting (or busy in C code) while the other answers.
workers = 2
# gunicorn's default, stated because it is the budget for open sockets, slow ones included:
# 1000 per process. A greenlet and a socket cost a few KiB each.
worker_connections = 1000
# gunicorn's default, stated because it is load-bearing: the gevent worker reads every
# request head within this many seconds or closes the connection (and drops an idle
# kept-alive one after it). 0 would turn keep-alive off and with it that deadline.
keepalive = 2
# gunicorn's control socket is one per user: two stacks on one machine would share it.
control_socket_disable = True
# gunicorn's own request limits (its defaults), named because the tests hold the JSON
# answers to them: a request line over 4094 bytes is 414, more than 100 header fields or
# one over 8190 bytes is 431.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


def post_worker_init(worker: Any) -> None:
    """Each API process reads the pipeline file and loads its signing key once, before its
    first request.

    A trigger validates the file, and a pipeline's ``sql`` goes through DuckDB's parser:
    the first time in a process that imports DuckDB (see
    :func:`celeray.pipelines.read_ahead`), which would land on a user's first trigger.
    A file without ``sql`` imports nothing; a broken one is left for the request to report.
    The Celery client that sends the trigger's task loads and validates the RSA key (~0.1 s
    of CPU for 3072 bits); it connects to nothing until a request sends. A key that fails
    validation (``SigningError``) stops the worker from booting, as ``create_app``'s check
    of the key material does for a missing file: the API does not start without a key
    that signs.
    """
    from celeray.api._connections import EXTENSION
    from celeray.pipelines import read_ahead

    connections = worker.wsgi.extensions[EXTENSION]
    settings = connections.settings  # the app's own, as its requests
    found = read_ahead(settings.pipelines, **settings.pipeline_rules())
    worker.log.info("pipeline file %s read before the first request: %s", settings.pipelines,
                    f"{found} pipeline(s)" if found >= 0 else "not now, left to the requests")
    connections.client  # noqa: B018 (made now, not on the first trigger)
    worker.log.info("signing key loaded before the first request")
