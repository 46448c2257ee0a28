"""The API process's connections, made once on first use and kept on the Flask app.

Every connection gets short timeouts: a request must answer (503) while Redis (or a
RabbitMQ broker) is down, not
hang until the WSGI server kills its worker. Nothing here connects at import or in
``create_app``, so a forking server forks before any socket exists.

Under gunicorn the requests of one process are gevent greenlets (``gunicorn_conf.py``).
gevent patches ``socket``, ``select``, ``threading`` and ``time`` in the worker before the
app is imported (so no ``--preload``), which makes redis-py's sockets and pool lock, kombu's
publish and broadcast waits, Celery's result polling and the lock below cooperative: a
request waiting on Redis or on the workers' broadcast yields to the others.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from flask import current_app

from celeray.broker import is_amqp
from celeray.celeryconfig import make_client
from celeray.pipelines import Pipeline, current_pipelines
from celeray.redis_tls import redis_client
from celeray.runstate import RunStore
from celeray.settings import Settings

__all__ = ["EXTENSION", "Connections", "conns"]

EXTENSION = "celeray"
CONNECT_TIMEOUT = 2.0  # seconds to open a socket to Redis; a local one takes microseconds
SOCKET_TIMEOUT = 5.0  # seconds one Redis command may take before the request gives up
PING_TIMEOUT = 1.0  # the health check's pings and the metrics' LLENs
# The API's own Celery client: give up publishing after about a second, not Celery's
# default of retrying for as long as the broker stays away.
_CLIENT_CONF: dict[str, Any] = {
    "broker_connection_timeout": CONNECT_TIMEOUT,
    "broker_connection_max_retries": 1,
    "task_publish_retry_policy": {
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
    "redis_socket_connect_timeout": CONNECT_TIMEOUT,
    "redis_socket_timeout": SOCKET_TIMEOUT,
    # One result backend (and its connection pool) for the process. Celery keeps a backend
    # per thread otherwise, and under gevent every request is a "thread": each run poll
    # made a backend and a new Redis connection (HELLO, AUTH, SELECT; a TLS handshake on
    # rediss://). The API only reads and writes metas, never waits on a result's pub/sub.
    "result_backend_thread_safe": True,
}


class Connections:
    """The RunStore, the Celery client and Redis clients of one API process.

    ``store`` and ``client`` may be given (tests); otherwise they are made from ``settings``
    on first use. All members are safe to share between the request threads or greenlets.
    """

    def __init__(self, settings: Settings, *, store: RunStore | None, client: Any) -> None:
        self.settings = settings
        self._store = store
        self._client = client
        self._redis: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> RunStore:
        """Run locks and records, on ``settings.effective_state_url``."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = RunStore.from_settings(
                        self.settings,
                        socket_connect_timeout=CONNECT_TIMEOUT,
                        socket_timeout=SOCKET_TIMEOUT,
                    )
        return self._store

    @property
    def client(self) -> Any:
        """The Celery client that sends tasks by name and reads results."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = make_client(self.settings)
                    transport = dict(client.conf.broker_transport_options or {})
                    if is_amqp(self.settings.broker_url):  # py-amqp's names for the same
                        transport.update(read_timeout=SOCKET_TIMEOUT,
                                         write_timeout=SOCKET_TIMEOUT)  # fmt: skip
                    else:
                        transport.update(socket_connect_timeout=CONNECT_TIMEOUT,
                                         socket_timeout=SOCKET_TIMEOUT)  # fmt: skip
                    client.conf.update(_CLIENT_CONF, broker_transport_options=transport)
                    self._client = client
        return self._client

    def quick_redis(self, url: str) -> redis.Redis:
        """A client of the Redis at ``url`` whose every call gives up within about a second."""
        with self._lock:
            if url not in self._redis:
                self._redis[url] = redis_client(
                    self.settings,
                    url,
                    socket_connect_timeout=PING_TIMEOUT,
                    socket_timeout=PING_TIMEOUT,
                    retry_on_timeout=False,
                )
            return self._redis[url]

    def pipelines(self) -> dict[str, Pipeline]:
        """The pipeline file as it is now; raises PipelineFileError listing its problems.

        The file is parsed again whenever its size, times or inode change, so an edit is
        seen by the next request without parsing (and starting DuckDB) on every one.
        """
        return current_pipelines(self.settings.pipelines, **self.settings.pipeline_rules())



def conns() -> Connections:
    """The connections of the app handling the current request."""
    found: Connections = current_app.extensions[EXTENSION]
    return found
