"""Which broker a URL names (Redis or RabbitMQ), and what celeray does differently on each.

The broker carries task messages only. Results, run records, locks and delivery counts stay
on Redis whatever the broker (``CELERAY_RESULT_BACKEND`` / ``CELERAY_STATE_URL``), so the
rest of celeray is the same on both. What differs, and why, is in ``docs/brokers.md``:

- Redis: ``visibility_timeout`` decides when a delivered, unacknowledged message is given
  to another worker; kombu restores such messages itself, every ``unacked_restore_interval``.
- RabbitMQ: a message comes back as soon as the connection of the worker holding it closes;
  the server's ``consumer_timeout`` (rabbitmq.conf) closes a channel that holds one longer.
  The queues are quorum queues (replicated, durable, persistent messages) with a delivery
  limit; countdowns travel through Celery's native delayed delivery (topic exchanges), since
  a quorum queue cannot let a worker hold an ETA message without blocking a slot.

Nothing here imports kombu at module level: settings (which Ray nodes without Celery
read) ask :func:`broker_kind`. Also here: the probes the API's health and metrics use on a
RabbitMQ broker (a connection and a passive queue declare, each bounded by a timeout).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from kombu import Queue

    from celeray.settings import Settings

__all__ = [
    "AMQP_SCHEMES",
    "QUORUM_DELIVERY_LIMIT",
    "REDIS_SCHEMES",
    "BrokerKind",
    "amqp_queue_depths",
    "amqp_ssl",
    "broker_kind",
    "is_amqp",
    "task_queues",
    "transport_options",
]

BrokerKind = Literal["redis", "amqp"]
REDIS_SCHEMES = ("redis", "rediss")
AMQP_SCHEMES = ("amqp", "amqps")
# Deliveries of one message a quorum queue allows before it drops the message. A fixed
# number, not a setting: a queue's arguments cannot change once it exists (a worker
# declaring it with other ones is refused with PRECONDITION_FAILED). It is the backstop
# behind celeray's own count (CELERAY_MAX_DELIVERIES, which must stay below it and
# quarantines the batch with its reason first); a message dropped here is found again by
# the reconciliation pass, as a message lost on Redis is. RabbitMQ 4's own default is 20.
QUORUM_DELIVERY_LIMIT = 10
# Kombu scans Redis for unacked messages to restore every interval x throttle seconds;
# its defaults (10 s x 10) would add 100 s to every redelivery after a worker dies.
MAX_RESTORE_INTERVAL = 10


def broker_kind(url: str) -> BrokerKind:
    """``"redis"`` or ``"amqp"`` for a broker URL; ValueError for any other scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme in AMQP_SCHEMES:
        return "amqp"
    raise ValueError(
        f"a broker URL must start with {', '.join(s + '://' for s in REDIS_SCHEMES + AMQP_SCHEMES)}"
        f", not {scheme + '://' if scheme else 'no scheme'}"
    )


def is_amqp(url: str) -> bool:
    """Whether ``url`` names a RabbitMQ (AMQP 0-9-1) broker."""
    return broker_kind(url) == "amqp"


def transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_transport_options`` for the configured broker."""
    if is_amqp(settings.broker_url):
        # The server confirms every publish: a send returns only once RabbitMQ holds the
        # message (a trigger answered 202 is queued, not in a socket buffer).
        return {"confirm_publish": True}
    visibility = settings.effective_visibility_timeout
    return {
        "visibility_timeout": visibility,  # above the hard limit: no redelivery mid-task
        "unacked_restore_interval": max(1, min(MAX_RESTORE_INTERVAL, visibility // 10)),
        "unacked_restore_throttle": 1,
    }


def task_queues(kind: BrokerKind, names: tuple[str, ...]) -> tuple[Queue, ...]:
    """The queues ``names`` as declared on a broker of ``kind``.

    Redis: plain queues, as kombu keeps them (lists). RabbitMQ: durable quorum queues with
    :data:`QUORUM_DELIVERY_LIMIT`, each on a topic exchange of its own name: Celery's native
    delayed delivery (how countdowns work with quorum queues) routes through topic
    exchanges and skips direct ones.
    """
    from kombu import Exchange, Queue

    if kind == "redis":
        return tuple(Queue(name) for name in names)
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
    return tuple(
        Queue(name, Exchange(name, type="topic", durable=True), routing_key=name,
              durable=True, queue_arguments=arguments)
        for name in names
    )  # fmt: skip


def amqp_ssl(settings: Settings, url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for an ``amqps://`` URL (verify the server, against
    ``CELERAY_AMQP_TLS_CA_FILE`` or the system's CAs); None for any other URL."""
    if urlsplit(url).scheme.lower() != "amqps":
        return None
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    found = {"ca_certs": settings.amqp_tls_ca_file, "certfile": settings.amqp_tls_cert_file,
             "keyfile": settings.amqp_tls_key_file}  # fmt: skip
    options.update({k: str(v) for k, v in found.items() if v is not None})
    return options


def _connection(settings: Settings, timeout: float) -> Any:
    from kombu import Connection

    return Connection(
        settings.broker_url,
        ssl=amqp_ssl(settings, settings.broker_url) or False,
        connect_timeout=timeout,
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )


def amqp_queue_depths(settings: Settings, names: tuple[str, ...],
                      timeout: float = 1.0) -> dict[str, int]:  # fmt: skip
    """Messages ready in each queue of ``names`` on the RabbitMQ broker, by a passive
    declare (which creates nothing); a queue not declared yet counts 0.

    Delivered, unacknowledged messages are not counted: AMQP does not tell them (the
    management API does). Raises what the connection raises when RabbitMQ is unreachable;
    an empty ``names`` only connects, so it is the health check's ping.
    """
    from amqp.exceptions import NotFound

    depths: dict[str, int] = {}
    with _connection(settings, timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        for name in names:
            channel = conn.channel()
            try:
                ok = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(ok.message_count)
            except NotFound:  # the channel is closed by the server; the connection lives
                depths[name] = 0
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return depths

