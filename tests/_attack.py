"""What an attacker with broker access sends: raw kombu envelopes, signed or not.

Shared by the signing tests and the replay of issue 12's table (tests/test_attacks.py).
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import redis

from celeray.celeryconfig import celery_config
from celeray.settings import Settings

__all__ = [
    "EMBED",
    "attacker_serializer",
    "body",
    "key_holder_serializer",
    "push",
    "queue_of",
    "queued",
    "signed",
]

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def queue_of(task: str) -> str:
    """The queue celeray routes ``task`` to."""
    return str(celery_config(Settings())["task_routes"][task]["queue"])


def push(broker: redis.Redis | str, task: str, payload: bytes, content_type: str | None,
         task_id: str | None = None) -> str:  # fmt: skip
    """Put one task message (Celery's protocol 2) into the task's queue, as anyone who can
    write to the broker can; returns its task id.

    ``broker``: a Redis client (LPUSH of kombu's envelope) or a broker URL (``redis://``
    as before, or ``amqp://``: a raw ``basic_publish`` to the queue, no kombu serializer).
    """
    task_id = task_id or str(uuid.uuid4())
    queue = queue_of(task)
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
               "parent_id": None, "group": None, "retries": 0, "eta": None,
               "expires": None, "timelimit": [None, None], "origin": "attacker@host",
               "argsrepr": "", "kwargsrepr": "", "ignore_result": None}  # fmt: skip
    if isinstance(broker, str) and broker.startswith(("amqp://", "amqps://")):
        _publish_amqp(broker, queue, payload, content_type, headers, task_id)
        return task_id
    client = redis.Redis.from_url(broker) if isinstance(broker, str) else broker
    message = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": headers,
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }  # fmt: skip
    client.lpush(queue, json.dumps(message))
    return task_id


def _publish_amqp(url: str, queue: str, payload: bytes, content_type: str | None,
                  headers: dict[str, Any], task_id: str) -> None:  # fmt: skip
    """One raw message on the default exchange, routed to ``queue`` (declared by the
    workers: a quorum queue), with the properties a Celery sender sets."""
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.default_channel
        message = channel.prepare_message(
            payload, 0, content_type, "utf-8", headers,
            {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2})
        channel.basic_publish(message, exchange="", routing_key=queue)


def queued(settings: Settings, queue: str) -> int:
    """Messages waiting in ``queue`` on ``settings``' broker (Redis or RabbitMQ)."""
    from celeray.broker import amqp_queue_depths, is_amqp

    if is_amqp(settings.broker_url):
        return amqp_queue_depths(settings, (queue,))[queue]
    return int(redis.Redis.from_url(settings.broker_url).llen(queue))


def body(args: list[Any], kwargs: dict[str, Any]) -> bytes:
    """An unsigned JSON task body."""
    return json.dumps([args, kwargs, EMBED]).encode()


def signed(serializer: Any, args: list[Any], kwargs: dict[str, Any],
           stamp: list[str] | None = None) -> bytes:  # fmt: skip
    """A task body signed by ``serializer`` (content type ``application/data``); ``stamp``:
    the [task name, id] it is for, as celeray's senders add (:mod:`celeray.signing`)."""
    from celeray.signing import STAMP

    embed = {**EMBED, **({STAMP: stamp} if stamp else {})}
    return str(serializer.serialize([args, kwargs, embed])).encode()


def attacker_serializer(claim_id_of: Path | None = None) -> Any:
    """Celery's own signing serializer with a key pair the attacker made themself.

    ``claim_id_of``: a certificate whose id (issuer and serial) the attacker's certificate
    copies, so the message names a signer the workers trust.
    """
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    serial = x509.random_serial_number()
    if claim_id_of:
        trusted = x509.load_pem_x509_certificate(claim_id_of.read_bytes())
        name, serial = trusted.issuer, trusted.serial_number
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SecureSerializer(PrivateKey(key_pem), Certificate(cert.public_bytes(
        serialization.Encoding.PEM).decode()), None, "sha256")


def key_holder_serializer(key: Path, certificate: Path) -> Any:
    """The serializer a holder of the stack's key signs with (a sender, a worker, or an
    insider): what it signs passes the signature check, so only the task's own checks of
    what the message names stand between it and the sink."""
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    return SecureSerializer(PrivateKey(key.read_text()), Certificate(certificate.read_text()),
                            None, "sha256")
