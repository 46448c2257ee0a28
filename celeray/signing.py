"""Signed task messages: Celery's ``auth`` serializer, set up from celeray's settings.

Every process that sends or runs tasks (workers, beat, the API, the CLI) signs each task
message it sends with the stack's private key (RSA-PSS over the JSON body) and a worker
accepts only task messages whose signature verifies against a certificate of its cert
store. A process that can write to Redis but holds no key cannot make a worker act: its
message is refused, with the reason in the worker's log, before any task code runs.

What stays unsigned, and why (see ``celery.security.setup_security`` and
``celery.app.control``):

- Results stay JSON in the backend (``result_serializer``): the API and Flower read them.
- Events stay JSON (``event_serializer``): Flower follows tasks and workers without a key.
- Remote control (pidbox: ping, inspect, shutdown, revoke...) stays JSON through
  :class:`JsonControl`, since Celery would otherwise sign it with the task serializer and
  Flower could not inspect workers without the key. A control message runs no task code and
  changes no sink or source; what it can do (stop a worker, revoke a task) someone with
  Redis access can do anyway by emptying the queues.

A monitor (``CELERAY_MONITOR_ONLY``, set for Flower) holds no key: what it sends is plain
JSON, which every worker refuses. The key is read once per process: Celery's serializer
registry is global, so a second, different key pair in one process is refused.

Only the message *body* is signed, not Celery's headers, among them the task name and id.
So each sender stamps the task name and id into the signed body (``embed``, through
``before_task_publish``) and a worker's requests (:class:`BoundRequest`) refuse a body whose
stamp is not the name and id its headers give: a copied signed body cannot be sent as
another task. The same message sent again is a redelivery, which celeray's tasks handle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.app.control import Control
from celery.exceptions import InvalidTaskError, SecurityError
from celery.worker.request import Request
from kombu.serialization import registry

from celeray.errors import ConfigError
from celeray.settings import Settings

__all__ = [
    "AUTH", "STAMP", "BoundRequest", "JsonControl", "KeyMaterial", "SigningError", "check",
    "configure", "key_material",
]

AUTH = "auth"  # Celery's name of its signing serializer (content type application/data)
_MAKE_IT = (
    "run `celeray keys` to make a key pair there (`celeray up` does it on first start), or "
    "copy the stack's signing key and certificate to this host"
)

STAMP = "celeray_signed_for"  # key in the signed body's embed: [task name, task id]
_TEXT_REFUSED = "celeray-refused-text"  # a decoder name of ours for application/text
_lock = threading.Lock()
_loaded: KeyMaterial | None = None  # what this process's 'auth' serializer signs with


class SigningError(ConfigError):
    """The signing key material is missing, unreadable, mismatched or expired."""


@dataclass(frozen=True)
class KeyMaterial:
    """Where a process's signing key, its certificate and the trusted certificates are."""

    key: Path
    certificate: Path
    cert_store: Path
    digest: str


class JsonControl(Control):
    """Celery's remote control, kept in JSON whatever the task serializer.

    Celery's ``Control`` uses ``task_serializer`` and ``accept_content`` for its mailbox, so
    with signing on, a process without the key could neither ping nor inspect a worker.
    """

    def __init__(self, app: Any = None) -> None:
        super().__init__(app)
        self.mailbox.serializer = "json"
        self.mailbox.accept = ["json"]


class BoundRequest(Request):
    """A worker's request that refuses a signed body stamped for another task name or id.

    Raised from here, :class:`InvalidTaskError` makes Celery log "Received invalid task
    message" with the reason and drop the message before anything runs.
    """

    def __init__(self, message: Any, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        body = kwargs.get("body") if kwargs.get("decoded") else message.payload
        embed = body[2] if isinstance(body, list | tuple) and len(body) == 3 else None
        stamp = embed.get(STAMP) if isinstance(embed, dict) else None
        if stamp != [self._type, self.id]:
            raise InvalidTaskError(
                f"refused {self._type}[{self.id}]: its signed body is stamped for {stamp!r}, "
                "not for this task name and id (a copied body, or an unsigned sender)"
            )


def _stamp(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """``before_task_publish``: put the task name and id into the body that gets signed."""
    if isinstance(body, tuple | list) and len(body) == 3 and isinstance(body[2], dict) \
            and isinstance(headers, dict):
        body[2][STAMP] = [headers.get("task"), headers.get("id")]


def _bind_requests(sender: Any = None, **_: Any) -> None:
    """``on_after_finalize``: every task of the app checks the stamp of what it receives."""
    for task in sender.tasks.values():
        task.Request = f"{__name__}:BoundRequest"


def key_material(settings: Settings) -> KeyMaterial:
    """The paths the settings name (defaults under ``$CELERAY_HOME``)."""
    return KeyMaterial(
        key=settings.effective_signing_key,
        certificate=settings.effective_signing_certificate,
        cert_store=settings.effective_signing_cert_store,
        digest=settings.signing_digest,
    )


def configure(app: Celery, settings: Settings) -> None:
    """Make ``app`` sign every task message it sends and accept only signed ones.

    Raises :class:`SigningError` naming the setting and file that is missing or wrong, and
    how to make it, unless ``settings.monitor_only`` (then nothing is signed or loaded, and
    a worker of that app refuses every task).
    """
    # Accept only signed task messages, always: a monitor's worker refuses everything.
    app.conf.update(accept_content=[AUTH], result_accept_content=["json"])
    _refuse_raw_text()
    if settings.monitor_only:
        app.conf.update(task_serializer="json")  # unsigned: every worker refuses it
        _refuse_unverifiable()
        return
    material = key_material(settings)
    check(material)
    app.conf.update(
        task_serializer=AUTH,
        security_key=str(material.key),
        security_certificate=str(material.certificate),
        security_cert_store=str(material.cert_store),
        security_digest=material.digest,
    )
    signals.before_task_publish.connect(_stamp, weak=False, dispatch_uid=STAMP)
    app.on_after_finalize.connect(_bind_requests, weak=False)
    global _loaded
    with _lock:
        if _loaded is not None and _loaded != material:
            raise SigningError(
                f"this process already signs with {_loaded.key}; Celery's serializers are "
                f"global, so it cannot also sign with {material.key} (one key pair per process)"
            )
        if _loaded is None:
            # json stays decodable for results, events and control (each has its own accept);
            # auth is registered after this list is applied, so it is enabled too. Celery's
            # load of the key is the one that validates it (see check).
            try:
                app.setup_security(allowed_serializers=["json"])
            except SecurityError as exc:
                raise SigningError(f"the signing key {material.key} is not a usable RSA "
                                   f"key: {exc}; {_MAKE_IT}") from exc  # fmt: skip
            _loaded = material


def check(material: KeyMaterial) -> None:
    """Refuse, with what to do, key material that would sign nothing a worker accepts."""
    from celery.security.certificate import Certificate, FSCertStore
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    what = {material.key: "CELERAY_SIGNING_KEY", material.certificate:
            "CELERAY_SIGNING_CERTIFICATE", material.cert_store: "CELERAY_SIGNING_CERT_STORE"}
    for path, setting in what.items():
        if not path.exists():
            raise SigningError(
                f"no {setting.removeprefix('CELERAY_').lower().replace('_', ' ')} at {path} "
                f"({setting}); a process that sends or runs celeray's tasks signs them: {_MAKE_IT}"
            )
    try:
        # Not validated here: validating an RSA-3072 key costs ~90 ms of CPU, and Celery's
        # own load of it for signing (configure) validates it again. This copy only says
        # what is wrong; it never signs.
        key = load_pem_private_key(material.key.read_bytes(), password=None,
                                   unsafe_skip_rsa_key_validation=True)
        cert = Certificate(material.certificate.read_text())
        store = FSCertStore(str(material.cert_store))
    except (OSError, ValueError, TypeError, SecurityError) as exc:
        raise SigningError(f"unusable signing key material ({material.key}, "
                           f"{material.certificate}, {material.cert_store}): {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"{material.key} is not an RSA key: Celery signs with RSA only")
    if cert.has_expired():
        raise SigningError(f"the signing certificate {material.certificate} has expired: "
                           f"delete it and run `celeray keys` to make a new one from the key")
    if key.public_key().public_numbers() != cert.get_pubkey().public_numbers():
        raise SigningError(f"the signing certificate {material.certificate} is not the one of "
                           f"the key {material.key}: workers would refuse every message")
    try:
        store[cert.get_id()]
    except SecurityError:
        raise SigningError(
            f"the cert store {material.cert_store} (CELERAY_SIGNING_CERT_STORE) does not hold "
            f"the certificate {material.certificate}: this stack's own messages would be "
            "refused; put the certificate in it"
        ) from None


def _refuse_raw_text() -> None:
    """Refuse ``application/text`` bodies, which kombu trusts whatever the accept list.

    Such a body reaches Celery's worker undecoded; seen here: a pushed task message with
    that content type stopped the worker ("Unrecoverable error: ValueError"), and as the
    message went back to the queue, every restart stopped again. Refused, it is logged and
    dropped like any other unsigned message.
    """
    if _TEXT_REFUSED in registry.name_to_type:
        return

    def refuse(_data: Any) -> Any:
        raise SigningError("an application/text message body is not a signed task message")

    registry.register(_TEXT_REFUSED, None, refuse, content_type="application/text",
                      content_encoding="utf-8")


def _refuse_unverifiable() -> None:
    """In a monitor, decode no signed message: it holds no certificate to check one with."""
    if _loaded is not None or AUTH in registry.name_to_type:
        return

    def refuse(_data: Any) -> Any:
        raise SigningError("this process is monitor-only (CELERAY_MONITOR_ONLY): it holds no "
                           "key and verifies no message, so it runs no task")

    registry.register(AUTH, None, refuse, content_type="application/data",
                      content_encoding="utf-8")
