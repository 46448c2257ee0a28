"""Celery configuration shared by the workers (``tasks``) and the senders (CLI, API).

The CLI and the API send tasks by name through :func:`make_client`; they never import the
``tasks`` package, so they need neither Ray nor the task code. Both sign what they send
(:mod:`celeray.signing`): :func:`make_client` refuses to start without the key.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celeray.broker import amqp_ssl, broker_kind, task_queues, transport_options
from celeray.redis_tls import celery_ssl
from celeray.settings import Settings

__all__ = ["CONTROL_CLS", "IO_QUEUE", "RAY_QUEUE", "TASK_NAMES", "celery_config", "make_client"]

CONTROL_CLS = "celeray.signing:JsonControl"  # remote control stays JSON (see celeray.signing)

IO_QUEUE = "io"  # light I/O: listing, staging, commits (prefork pool)
RAY_QUEUE = "ray"  # drives Ray (threads pool: ray.init is unsafe in prefork children)

TASK_NAMES = {
    "start_run": "tasks.start_run",
    "stage_batch": "tasks.stage_batch",
    "transform_batch": "tasks.transform_batch",
    "commit_batch": "tasks.commit_batch",
    "watch_run": "tasks.watch_run",
    "ray_status": "tasks.ray_status",
    "reconcile": "tasks.reconcile",
    "compact": "tasks.compact",  # table maintenance: on the ray queue (tasks.maintain)
    "vacuum": "tasks.vacuum",
    "maintain": "tasks.maintain",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``; see the comment on each for why.

    The broker's part differs between Redis and RabbitMQ (:mod:`celeray.broker`); the
    result backend is Redis either way.
    """
    kind = broker_kind(settings.broker_url)
    visibility = settings.effective_visibility_timeout
    tls = {  # rediss:// and amqps:// URLs: verify the server (CELERAY_*_TLS_* files, else
        # the system's CAs)
        "broker_use_ssl": (celery_ssl(settings, settings.broker_url) if kind == "redis"
                           else amqp_ssl(settings, settings.broker_url)),
        "redis_backend_use_ssl": celery_ssl(settings, settings.result_backend),
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        **{k: v for k, v in tls.items() if v is not None},
        "broker_transport_options": transport_options(settings),
        "result_backend_transport_options": {"visibility_timeout": visibility},
        **(_amqp_config() if kind == "amqp" else {}),
        "broker_connection_retry_on_startup": True,
        # JSON only: messages carry URLs, ids and small dicts; pickle would run code. Task
        # messages are JSON signed by celeray.signing.configure (serializer "auth"), which
        # sets task_serializer and accept_content; results and events stay plain JSON.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": task_queues(kind, (IO_QUEUE, RAY_QUEUE)),
        "task_default_queue": IO_QUEUE,
        "task_routes": {
            TASK_NAMES["start_run"]: {"queue": IO_QUEUE},
            TASK_NAMES["stage_batch"]: {"queue": IO_QUEUE},
            TASK_NAMES["transform_batch"]: {"queue": RAY_QUEUE},
            TASK_NAMES["commit_batch"]: {"queue": IO_QUEUE},
            TASK_NAMES["watch_run"]: {"queue": IO_QUEUE},
            TASK_NAMES["ray_status"]: {"queue": RAY_QUEUE},
            TASK_NAMES["reconcile"]: {"queue": IO_QUEUE},
            TASK_NAMES["compact"]: {"queue": RAY_QUEUE},
            TASK_NAMES["vacuum"]: {"queue": RAY_QUEUE},
            TASK_NAMES["maintain"]: {"queue": RAY_QUEUE},
        },
        # Ack after the task ends, and give the message back when its worker dies, so a
        # SIGKILL mid-task means redelivery instead of loss.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a long task must not sit on a queued one
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(1, int(settings.task_time_limit * 0.9)),
        "result_expires": settings.result_expires,
        "result_extended": True,  # name and args in the backend, for Flower and the API
        "task_track_started": True,
        "worker_send_task_events": True,  # Flower shows every run's tasks by name
        "task_send_sent_event": True,
        # celery#7185: crashes the worker on a Redis restart; leave it off. On RabbitMQ a
        # lost connection gives a running task's message back at once: the batch lease
        # (celeray.batch) keeps a second start from running it beside the first.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        # ray.init needs real stdout/stderr file descriptors, not Celery's LoggingProxy.
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
    }


def _amqp_config() -> dict[str, Any]:
    """What a RabbitMQ broker needs besides its queues (:func:`celeray.broker.task_queues`)."""
    return {
        # Quorum queues refuse a channel-wide (global) prefetch: Celery sees the quorum
        # queues and uses a per-consumer one instead (its default, said here on purpose).
        "worker_detect_quorum_queues": True,
        # Countdowns (the run watchdog's, a busy batch's retry) wait in RabbitMQ's delayed
        # delivery queues, not in a worker's prefetch, where a quorum queue's per-consumer
        # prefetch would hold a worker slot until the countdown ends. Quorum: they survive
        # a restart like the task queues.
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def make_client(settings: Settings) -> Celery:
    """A Celery app that can send celeray's tasks by name, signed, and read their results.

    Raises :class:`celeray.signing.SigningError` when the signing key material is missing.
    """
    from celeray.signing import configure

    app = Celery("celeray-client", control=CONTROL_CLS)
    app.conf.update(celery_config(settings))
    configure(app, settings)
    return app
